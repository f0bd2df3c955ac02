//! Source NAT for pods reaching beyond the node, as nf_tables rules sent
//! over netlink (NETLINK_NETFILTER), the way `nft` itself talks to the
//! kernel: one table `vethctl_<topology>` (family inet) with a postrouting
//! nat chain whose rules masquerade pod traffic leaving the pod network.
//!
//! The encoder is pure (unit-tested); [`apply`] sends one atomic batch.

use std::{
    io,
    net::IpAddr,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

use anyhow::{bail, Context, Result};

// linux/netlink.h, linux/netfilter/nfnetlink.h, nf_tables.h
const NETLINK_NETFILTER: i32 = 12;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_CREATE: u16 = 0x400;
const NLMSG_ERROR: u16 = 0x2;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFT_MSG_NEWTABLE: u16 = 0;
const NFT_MSG_GETTABLE: u16 = 1;
const NFT_MSG_DELTABLE: u16 = 2;
const NFT_MSG_NEWCHAIN: u16 = 3;
const NFT_MSG_NEWRULE: u16 = 6;
const NFPROTO_UNSPEC: u8 = 0;
const NFPROTO_INET: u8 = 1;
const NFPROTO_IPV4: u8 = 2;
const NFPROTO_IPV6: u8 = 10;
const NLA_F_NESTED: u16 = 0x8000;

const NFTA_TABLE_NAME: u16 = 1;
const NFTA_TABLE_USERDATA: u16 = 6;
/// `NFTNL_UDATA_TABLE_COMMENT`: how `nft` stores a table's comment.
const UDATA_TABLE_COMMENT: u8 = 0;
const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_CHAIN_HOOK: u16 = 4;
const NFTA_CHAIN_POLICY: u16 = 5;
const NFTA_CHAIN_TYPE: u16 = 7;
const NFTA_HOOK_HOOKNUM: u16 = 1;
const NFTA_HOOK_PRIORITY: u16 = 2;
const NF_INET_POST_ROUTING: u32 = 4;
/// `srcnat` priority.
const NF_IP_PRI_NAT_SRC: u32 = 100;
const NF_ACCEPT: u32 = 1;
const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;
const NFTA_META_DREG: u16 = 1;
const NFTA_META_KEY: u16 = 2;
const NFT_META_OIFNAME: u32 = 7;
const NFT_META_NFPROTO: u32 = 15;
const NFTA_CMP_SREG: u16 = 1;
const NFTA_CMP_OP: u16 = 2;
const NFTA_CMP_DATA: u16 = 3;
const NFT_CMP_EQ: u32 = 0;
const NFT_CMP_NEQ: u32 = 1;
const NFTA_DATA_VALUE: u16 = 1;
const NFTA_PAYLOAD_DREG: u16 = 1;
const NFTA_PAYLOAD_BASE: u16 = 2;
const NFTA_PAYLOAD_OFFSET: u16 = 3;
const NFTA_PAYLOAD_LEN: u16 = 4;
const NFT_PAYLOAD_NETWORK_HEADER: u32 = 1;
const NFTA_BITWISE_SREG: u16 = 1;
const NFTA_BITWISE_DREG: u16 = 2;
const NFTA_BITWISE_LEN: u16 = 3;
const NFTA_BITWISE_MASK: u16 = 4;
const NFTA_BITWISE_XOR: u16 = 5;
const NFT_REG_1: u32 = 1;

const CHAIN: &str = "postrouting";

/// What to masquerade: traffic from `network` to anywhere outside it,
/// leaving through an interface that is not one of the topology's (or only
/// through `uplink`, when given).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Masquerade {
    pub network: IpAddr,
    pub prefix_len: u8,
    /// Destinations reached with the pods' own source: `network` itself
    /// when `None`; a cluster's whole range on a node, so pods on other
    /// nodes see who talks to them.
    pub unmasked: Option<(IpAddr, u8)>,
}

/// The table of a topology.
pub fn table_name(topology: &str) -> String {
    format!("vethctl_{topology}")
}

/// The comment the table carries (`nft list table` shows it), marking it
/// as made by vethctl for `topology`.
pub fn table_comment(topology: &str) -> String {
    format!("vethctl:{topology}")
}

/// Replaces the topology's table with one masquerading `nets` (an empty
/// list removes it). `object_prefix` excludes the topology's own
/// interfaces; `uplink` restricts masquerade to that interface.
pub fn apply(
    topology: &str,
    object_prefix: &str,
    uplink: Option<&str>,
    nets: &[Masquerade],
) -> Result<()> {
    let batch = encode_batch(
        &table_name(topology),
        &table_comment(topology),
        object_prefix,
        uplink,
        nets,
    );
    send_batch(&batch).with_context(|| format!("writing nf_tables table {}", table_name(topology)))
}

/// Whether the topology's table exists.
pub fn table_exists(topology: &str) -> Result<bool> {
    get_table(topology, |_, _| {})
}

/// Whether the topology's table exists and carries its comment (the mark
/// [`apply`] gives it): the proof it is ours when no record says so.
pub fn table_is_ours(topology: &str) -> Result<bool> {
    let mut comment = None;
    let exists = get_table(topology, |type_, attrs| {
        if type_ == (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWTABLE {
            comment = attribute(attrs, NFTA_TABLE_USERDATA).and_then(userdata_comment);
        }
    })?;
    Ok(exists && comment.as_deref() == Some(table_comment(topology).as_bytes()))
}

/// Asks for the topology's table, handing the reply to `on_reply`; false
/// if there is none.
fn get_table(topology: &str, on_reply: impl FnMut(u16, &[u8])) -> Result<bool> {
    let mut request = Vec::new();
    message(
        &mut request,
        (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETTABLE,
        NLM_F_REQUEST | NLM_F_ACK,
        1,
        NFPROTO_INET,
        0,
        &attr_str(NFTA_TABLE_NAME, &table_name(topology)),
    );
    match exchange(&request, on_reply) {
        Ok(()) => Ok(true),
        Err(e)
            if e.downcast_ref::<io::Error>()
                .and_then(io::Error::raw_os_error)
                == Some(libc::ENOENT) =>
        {
            Ok(false)
        }
        Err(e) => {
            Err(e).with_context(|| format!("looking up nf_tables table {}", table_name(topology)))
        }
    }
}

/// The value of the first attribute of `kind` in `attrs`.
fn attribute(mut attrs: &[u8], kind: u16) -> Option<&[u8]> {
    while attrs.len() >= 4 {
        let len = usize::from(u16::from_ne_bytes([attrs[0], attrs[1]]));
        let type_ = u16::from_ne_bytes([attrs[2], attrs[3]]) & !(NLA_F_NESTED | 0x4000);
        if len < 4 || len > attrs.len() {
            return None;
        }
        if type_ == kind {
            return Some(&attrs[4..len]);
        }
        attrs = &attrs[len.next_multiple_of(4).min(attrs.len())..];
    }
    None
}

/// The comment in a table's user data (see [`table_userdata`]), without
/// its NUL.
fn userdata_comment(mut data: &[u8]) -> Option<Vec<u8>> {
    while data.len() >= 2 {
        let (kind, len) = (data[0], usize::from(data[1]));
        let value = data.get(2..2 + len)?;
        if kind == UDATA_TABLE_COMMENT {
            return Some(value.strip_suffix(&[0]).unwrap_or(value).to_vec());
        }
        data = &data[2 + len..];
    }
    None
}

/// Removes the topology's table (if any).
pub fn remove(topology: &str) -> Result<()> {
    apply(topology, "", None, &[])
}

/// nf_tables messages in one netlink batch, numbered in order.
struct Batch {
    out: Vec<u8>,
    seq: u32,
}

impl Batch {
    fn new() -> Batch {
        let mut batch = Batch {
            out: Vec::new(),
            seq: 1,
        };
        batch.push(
            NFNL_MSG_BATCH_BEGIN,
            NFPROTO_UNSPEC,
            NLM_F_REQUEST,
            Vec::new(),
        );
        batch
    }

    /// A message of `kind`: the batch markers are addressed to the
    /// nf_tables subsystem by their resource id, the others by their type.
    fn push(&mut self, kind: u16, family: u8, flags: u16, attrs: Vec<u8>) {
        let marker = kind == NFNL_MSG_BATCH_BEGIN || kind == NFNL_MSG_BATCH_END;
        let (type_, res_id) = if marker {
            (kind, NFNL_SUBSYS_NFTABLES)
        } else {
            ((NFNL_SUBSYS_NFTABLES << 8) | kind, 0)
        };
        message(
            &mut self.out,
            type_,
            flags,
            self.seq,
            family,
            res_id,
            &attrs,
        );
        self.seq += 1;
    }

    /// A message that creates an `inet` object.
    fn create(&mut self, kind: u16, attrs: Vec<u8>) {
        let flags = NLM_F_REQUEST | NLM_F_CREATE | NLM_F_ACK;
        self.push(kind, NFPROTO_INET, flags, attrs);
    }

    fn end(mut self) -> Vec<u8> {
        self.push(
            NFNL_MSG_BATCH_END,
            NFPROTO_UNSPEC,
            NLM_F_REQUEST,
            Vec::new(),
        );
        self.out
    }
}

/// One batch: create-if-missing then delete the table (so the delete never
/// fails), then, if there is anything to masquerade, create it afresh.
/// The kernel applies a batch atomically.
pub fn encode_batch(
    table: &str,
    comment: &str,
    object_prefix: &str,
    uplink: Option<&str>,
    nets: &[Masquerade],
) -> Vec<u8> {
    let mut batch = Batch::new();
    let table_attr = || attr_str(NFTA_TABLE_NAME, table);
    batch.create(NFT_MSG_NEWTABLE, table_attr());
    batch.push(
        NFT_MSG_DELTABLE,
        NFPROTO_INET,
        NLM_F_REQUEST | NLM_F_ACK,
        table_attr(),
    );
    if nets.is_empty() {
        return batch.end();
    }
    let mut commented = table_attr();
    commented.extend(attr(NFTA_TABLE_USERDATA, &table_userdata(comment)));
    batch.create(NFT_MSG_NEWTABLE, commented);
    batch.create(NFT_MSG_NEWCHAIN, nat_chain(table));
    for net in nets {
        let mut rule = attr_str(NFTA_RULE_TABLE, table);
        rule.extend(attr_str(NFTA_RULE_CHAIN, CHAIN));
        rule.extend(attr(
            NFTA_RULE_EXPRESSIONS | NLA_F_NESTED,
            &masquerade_expressions(net, object_prefix, uplink),
        ));
        batch.create(NFT_MSG_NEWRULE, rule);
    }
    batch.end()
}

/// The attributes of the table's source-NAT chain at postrouting.
fn nat_chain(table: &str) -> Vec<u8> {
    let mut chain = attr_str(NFTA_CHAIN_TABLE, table);
    chain.extend(attr_str(NFTA_CHAIN_NAME, CHAIN));
    let mut hook = attr_u32(NFTA_HOOK_HOOKNUM, NF_INET_POST_ROUTING);
    hook.extend(attr_u32(NFTA_HOOK_PRIORITY, NF_IP_PRI_NAT_SRC));
    chain.extend(attr(NFTA_CHAIN_HOOK | NLA_F_NESTED, &hook));
    chain.extend(attr_u32(NFTA_CHAIN_POLICY, NF_ACCEPT));
    chain.extend(attr_str(NFTA_CHAIN_TYPE, "nat"));
    chain
}

/// A table's user data as `nft` writes it: one comment TLV (type, length,
/// NUL-terminated text), cut to the 255 bytes a TLV can hold.
fn table_userdata(comment: &str) -> Vec<u8> {
    let mut text = comment.as_bytes()[..comment.len().min(254)].to_vec();
    text.push(0);
    let mut out = vec![UDATA_TABLE_COMMENT, text.len() as u8];
    out.extend(text);
    out
}

/// `meta nfproto X  <saddr> in net  <daddr> not in net  oifname ...  masquerade`
fn masquerade_expressions(net: &Masquerade, object_prefix: &str, uplink: Option<&str>) -> Vec<u8> {
    let (nfproto, saddr_offset, daddr_offset, network) = match net.network {
        IpAddr::V4(v4) => (NFPROTO_IPV4, 12, 16, v4.octets().to_vec()),
        IpAddr::V6(v6) => (NFPROTO_IPV6, 8, 24, v6.octets().to_vec()),
    };
    let mask = prefix_mask(network.len(), net.prefix_len);
    let (unmasked, unmasked_mask) = match net.unmasked {
        Some((IpAddr::V4(v4), len)) if network.len() == 4 => {
            (v4.octets().to_vec(), prefix_mask(4, len))
        }
        Some((IpAddr::V6(v6), len)) if network.len() == 16 => {
            (v6.octets().to_vec(), prefix_mask(16, len))
        }
        _ => (network.clone(), mask.clone()),
    };
    let mut exprs = Vec::new();
    exprs.extend(meta(NFT_META_NFPROTO));
    exprs.extend(cmp(NFT_CMP_EQ, &[nfproto]));
    for (offset, op, net, mask) in [
        (saddr_offset, NFT_CMP_EQ, &network, &mask),
        (daddr_offset, NFT_CMP_NEQ, &unmasked, &unmasked_mask),
    ] {
        exprs.extend(payload(offset, network.len() as u32));
        exprs.extend(bitwise(mask));
        exprs.extend(cmp(op, net));
    }
    exprs.extend(meta(NFT_META_OIFNAME));
    match uplink {
        // Exact name: the register holds it NUL-padded to IFNAMSIZ.
        Some(ifname) => {
            let mut name = ifname.as_bytes().to_vec();
            name.resize(16, 0);
            exprs.extend(cmp(NFT_CMP_EQ, &name));
        }
        // Prefix match, as `oifname != "demo-*"` compiles.
        None if !object_prefix.is_empty() => {
            exprs.extend(cmp(NFT_CMP_NEQ, object_prefix.as_bytes()))
        }
        None => {}
    }
    exprs.extend(expression("masq", &[]));
    exprs
}

fn prefix_mask(len: usize, prefix_len: u8) -> Vec<u8> {
    (0..len)
        .map(|i| {
            let bits = (i32::from(prefix_len) - 8 * i as i32).clamp(0, 8);
            if bits == 0 {
                0
            } else {
                0xffu8 << (8 - bits)
            }
        })
        .collect()
}

fn meta(key: u32) -> Vec<u8> {
    let mut data = attr_u32(NFTA_META_DREG, NFT_REG_1);
    data.extend(attr_u32(NFTA_META_KEY, key));
    expression("meta", &data)
}

fn cmp(op: u32, value: &[u8]) -> Vec<u8> {
    let mut data = attr_u32(NFTA_CMP_SREG, NFT_REG_1);
    data.extend(attr_u32(NFTA_CMP_OP, op));
    data.extend(attr(
        NFTA_CMP_DATA | NLA_F_NESTED,
        &attr(NFTA_DATA_VALUE, value),
    ));
    expression("cmp", &data)
}

fn payload(offset: u32, len: u32) -> Vec<u8> {
    let mut data = attr_u32(NFTA_PAYLOAD_DREG, NFT_REG_1);
    data.extend(attr_u32(NFTA_PAYLOAD_BASE, NFT_PAYLOAD_NETWORK_HEADER));
    data.extend(attr_u32(NFTA_PAYLOAD_OFFSET, offset));
    data.extend(attr_u32(NFTA_PAYLOAD_LEN, len));
    expression("payload", &data)
}

fn bitwise(mask: &[u8]) -> Vec<u8> {
    let mut data = attr_u32(NFTA_BITWISE_SREG, NFT_REG_1);
    data.extend(attr_u32(NFTA_BITWISE_DREG, NFT_REG_1));
    data.extend(attr_u32(NFTA_BITWISE_LEN, mask.len() as u32));
    data.extend(attr(
        NFTA_BITWISE_MASK | NLA_F_NESTED,
        &attr(NFTA_DATA_VALUE, mask),
    ));
    data.extend(attr(
        NFTA_BITWISE_XOR | NLA_F_NESTED,
        &attr(NFTA_DATA_VALUE, &vec![0; mask.len()]),
    ));
    expression("bitwise", &data)
}

fn expression(name: &str, data: &[u8]) -> Vec<u8> {
    let mut body = attr_str(NFTA_EXPR_NAME, name);
    if !data.is_empty() {
        body.extend(attr(NFTA_EXPR_DATA | NLA_F_NESTED, data));
    }
    attr(NFTA_LIST_ELEM | NLA_F_NESTED, &body)
}

/// A netlink attribute, padded to 4 bytes.
fn attr(kind: u16, value: &[u8]) -> Vec<u8> {
    let len = 4 + value.len();
    let mut out = Vec::with_capacity(len + 3);
    out.extend((len as u16).to_ne_bytes());
    out.extend(kind.to_ne_bytes());
    out.extend(value);
    out.resize(len.next_multiple_of(4), 0);
    out
}

fn attr_str(kind: u16, value: &str) -> Vec<u8> {
    let mut bytes = value.as_bytes().to_vec();
    bytes.push(0);
    attr(kind, &bytes)
}

/// nf_tables integers are big-endian.
fn attr_u32(kind: u16, value: u32) -> Vec<u8> {
    attr(kind, &value.to_be_bytes())
}

/// nlmsghdr + nfgenmsg + attributes.
fn message(
    out: &mut Vec<u8>,
    type_: u16,
    flags: u16,
    seq: u32,
    family: u8,
    res_id: u16,
    attrs: &[u8],
) {
    let len = 16 + 4 + attrs.len();
    out.extend((len as u32).to_ne_bytes());
    out.extend(type_.to_ne_bytes());
    out.extend(flags.to_ne_bytes());
    out.extend(seq.to_ne_bytes());
    out.extend(0u32.to_ne_bytes());
    out.extend([family, 0]);
    out.extend(res_id.to_be_bytes());
    out.extend(attrs);
}

/// Sends a batch and reads the acknowledgements of the messages that asked
/// for one; the first error is returned (and the kernel applied nothing).
fn send_batch(batch: &[u8]) -> Result<()> {
    exchange(batch, |_, _| {})
}

/// [`send_batch`], handing every other reply (its type and its attributes)
/// to `on_reply`.
fn exchange(batch: &[u8], mut on_reply: impl FnMut(u16, &[u8])) -> Result<()> {
    // SAFETY: plain socket(2); the fd is owned right away.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            NETLINK_NETFILTER,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error()).context("opening a netfilter netlink socket");
    }
    // SAFETY: fd is a fresh, valid descriptor that nothing else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // Never hang on a kernel that does not answer.
    let timeout = libc::timeval {
        tv_sec: 5,
        tv_usec: 0,
    };
    // SAFETY: setsockopt with a valid timeval.
    unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&timeout as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as u32,
        );
    }
    // SAFETY: sockaddr_nl zeroed is the kernel as peer.
    let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    addr.nl_family = libc::AF_NETLINK as u16;
    // SAFETY: sending our buffer to a valid sockaddr_nl.
    let sent = unsafe {
        libc::sendto(
            sock.as_raw_fd(),
            batch.as_ptr().cast(),
            batch.len(),
            0,
            (&addr as *const libc::sockaddr_nl).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as u32,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error()).context("sending the nf_tables batch");
    }
    let expected_acks = count_ack_requests(batch);
    let mut acks = 0;
    let mut buf = vec![0u8; 65536];
    while acks < expected_acks {
        // SAFETY: receiving into our buffer.
        let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error()).context("reading nf_tables acknowledgements");
        }
        let mut rest = &buf[..n as usize];
        while rest.len() >= 16 {
            let len = u32::from_ne_bytes(rest[0..4].try_into().unwrap()) as usize;
            let type_ = u16::from_ne_bytes(rest[4..6].try_into().unwrap());
            if len < 16 || len > rest.len() {
                bail!("malformed netlink reply");
            }
            if type_ == NLMSG_ERROR && len >= 20 {
                let code = i32::from_ne_bytes(rest[16..20].try_into().unwrap());
                if code != 0 {
                    return Err(io::Error::from_raw_os_error(-code)).context(
                        "the kernel refused the nf_tables batch (is nf_tables available?)",
                    );
                }
                acks += 1;
            } else if len >= 20 {
                on_reply(type_, &rest[20..len]);
            }
            rest = &rest[len.next_multiple_of(4).min(rest.len())..];
        }
    }
    Ok(())
}

fn count_ack_requests(batch: &[u8]) -> usize {
    let mut rest = batch;
    let mut n = 0;
    while rest.len() >= 16 {
        let len = u32::from_ne_bytes(rest[0..4].try_into().unwrap()) as usize;
        let flags = u16::from_ne_bytes(rest[6..8].try_into().unwrap());
        if flags & NLM_F_ACK != 0 {
            n += 1;
        }
        rest = &rest[len..];
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tables_comment_is_read_back_from_its_user_data() {
        let data = table_userdata(&table_comment("net1"));
        let mut attrs = attr_str(NFTA_TABLE_NAME, "vethctl_net1");
        attrs.extend(attr(NFTA_TABLE_USERDATA, &data));
        let found = attribute(&attrs, NFTA_TABLE_USERDATA).and_then(userdata_comment);
        assert_eq!(found.as_deref(), Some(b"vethctl:net1".as_slice()));
        assert_eq!(attribute(&attrs, 99), None);
        assert_eq!(userdata_comment(&[UDATA_TABLE_COMMENT, 9, b'x']), None);
    }

    #[test]
    fn masks_follow_the_prefix_length() {
        assert_eq!(prefix_mask(4, 24), [255, 255, 255, 0]);
        assert_eq!(prefix_mask(4, 20), [255, 255, 240, 0]);
        assert_eq!(prefix_mask(16, 64), [[255u8; 8], [0u8; 8]].concat());
    }

    #[test]
    fn attributes_are_padded_and_sized() {
        assert_eq!(attr(1, &[1, 2, 3]), [7, 0, 1, 0, 1, 2, 3, 0]);
        assert_eq!(attr_str(1, "ab"), [7, 0, 1, 0, b'a', b'b', 0, 0]);
        assert_eq!(attr_u32(2, 1), [8, 0, 2, 0, 0, 0, 0, 1]);
    }

    #[test]
    fn a_cluster_node_keeps_the_source_towards_the_whole_cluster_range() {
        let node = Masquerade {
            network: "10.244.1.0".parse().unwrap(),
            prefix_len: 24,
            unmasked: Some(("10.244.0.0".parse().unwrap(), 16)),
        };
        let exprs = masquerade_expressions(&node, "lab-", None);
        let contains = |needle: &[u8]| exprs.windows(needle.len()).any(|w| w == needle);
        // saddr & /24 == 10.244.1.0, daddr & /16 != 10.244.0.0
        assert!(contains(&cmp(NFT_CMP_EQ, &[10, 244, 1, 0])));
        assert!(contains(&bitwise(&[255, 255, 0, 0])));
        assert!(contains(&cmp(NFT_CMP_NEQ, &[10, 244, 0, 0])));
        assert!(!contains(&cmp(NFT_CMP_NEQ, &[10, 244, 1, 0])));
    }

    #[test]
    fn batch_replaces_the_table_atomically() {
        let nets = [Masquerade {
            network: "10.200.0.0".parse().unwrap(),
            prefix_len: 24,
            unmasked: None,
        }];
        let batch = encode_batch("vethctl_demo", "vethctl:demo", "demo-", None, &nets);
        let mut types = Vec::new();
        let mut rest = &batch[..];
        while !rest.is_empty() {
            let len = u32::from_ne_bytes(rest[0..4].try_into().unwrap()) as usize;
            types.push(u16::from_ne_bytes(rest[4..6].try_into().unwrap()));
            rest = &rest[len..];
        }
        let nft = |t: u16| (NFNL_SUBSYS_NFTABLES << 8) | t;
        assert_eq!(
            types,
            [
                NFNL_MSG_BATCH_BEGIN,
                nft(NFT_MSG_NEWTABLE),
                nft(NFT_MSG_DELTABLE),
                nft(NFT_MSG_NEWTABLE),
                nft(NFT_MSG_NEWCHAIN),
                nft(NFT_MSG_NEWRULE),
                NFNL_MSG_BATCH_END
            ]
        );
        assert_eq!(count_ack_requests(&batch), 5);
        let removal = encode_batch("vethctl_demo", "vethctl:demo", "", None, &[]);
        assert_eq!(count_ack_requests(&removal), 2);
        assert_eq!(
            table_userdata("vethctl:demo"),
            [&[0u8, 13][..], b"vethctl:demo\0"].concat()
        );
    }
}
