//! Checks `up` makes against the host before it creates anything: a
//! topology's pod ranges must not overlap another topology that is up, nor
//! an address or a route the host already has (its own subnet, a VPN's
//! range, a bridge of another CNI...). Pods there would be unreachable, or
//! would take over traffic that belongs to someone else.
//!
//! What the topology itself made when it is already up (its node
//! addresses, host routes, bridge, blackhole routes) is not a clash: `up`
//! converges over it.

use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv6Addr},
};

use anyhow::Result;
use ipnet::IpNet;
use rtnetlink::packet_route::route::RouteType;

use crate::{
    model::{ModelError, Topology},
    netlink::{
        inspect::{self, HostAddress, HostRoute, TABLE_LOCAL},
        Host,
    },
    state::{recorded_topologies, Ledger, StateDir},
};

/// Refuses `topology` if its ranges overlap another topology that is up,
/// or an address or route of the host that is not the topology's own.
/// Reads only; run it before anything is created.
pub async fn check(host: &Host, topology: &Topology) -> Result<()> {
    for name in recorded_topologies()? {
        if name == topology.name {
            continue;
        }
        // One that cannot be read is reported by `status`; its addresses
        // and routes are still found in the kernel below.
        if let Ok(Some(other)) = StateDir::new(&name).load() {
            if let Some(clash) = topology.address_clash(&other) {
                return Err(clash.into());
            }
        }
    }
    let state = StateDir::new(&topology.name);
    let own = if state.exists() {
        // A runtime's endpoints' host routes are the network's own too.
        let recorded = state
            .load()
            .ok()
            .flatten()
            .map(crate::endpoint::with_endpoints);
        let mut own = Own::of(topology, recorded.as_ref());
        // What its ledger records is its own whatever it is called now
        // (a renamed veth); an unreadable ledger adds nothing.
        if let Ok(Some(ledger)) = Ledger::load(&state) {
            own.add_ledger(&ledger);
        }
        own
    } else {
        Own::default()
    };
    let addresses = inspect::addresses(host).await?;
    let routes = inspect::routes(host).await?;
    match host_clash(topology, &own, &addresses, &routes) {
        Some(clash) => Err(clash.into()),
        None => Ok(()),
    }
}

/// What of the host belongs to the topology being brought up: only when
/// it is recorded (state is written before `up` makes anything, so a
/// crashed `up` is recorded too). A name prefix alone is no proof.
#[derive(Debug, Default)]
pub struct Own {
    /// Interfaces whose names start with this (`demo-`).
    link_prefix: Option<String>,
    /// Bridges of the topology named outside the prefix (`cni0`).
    bridges: BTreeSet<String>,
    /// The label of its IPv4 node address on lo.
    lo_label: Option<String>,
    /// Its IPv6 node addresses on lo (they carry no label).
    lo_v6: BTreeSet<Ipv6Addr>,
    /// Pod ranges whose blackhole or unreachable routes are its own.
    ranges: BTreeSet<IpNet>,
    /// Links its ledger records, by ifindex.
    ifindexes: BTreeSet<u32>,
    /// Addresses its ledger records.
    addresses: BTreeSet<(IpAddr, u8)>,
}

impl Own {
    /// What topology `new` owns, given what it was recorded with (`None`
    /// when the record cannot be read).
    pub fn of(new: &Topology, recorded: Option<&Topology>) -> Own {
        let mut own = Own {
            link_prefix: Some(new.object_prefix()),
            lo_label: Some(new.host_address_label.clone()),
            ..Own::default()
        };
        // The new description's bridge is ours only by the prefix: a
        // bridge named outside it is ours once recorded.
        let recorded_or_new = recorded.unwrap_or(new);
        own.bridges.insert(recorded_or_new.bridge.clone());
        own.lo_v6.extend(recorded_or_new.host_address6);
        for t in [Some(new), recorded].into_iter().flatten() {
            own.ranges.insert(IpNet::V4(t.pod_cidr));
            own.ranges.extend(t.pod_cidr6.map(IpNet::V6));
        }
        own
    }

    /// Adds what the topology's ledger records as made by it.
    pub fn add_ledger(&mut self, ledger: &Ledger) {
        self.ifindexes
            .extend(ledger.links.values().filter_map(|l| l.ifindex));
        self.addresses
            .extend(ledger.addresses.iter().map(|a| (a.address, a.prefix_len)));
        self.ranges.extend(ledger.unreachable.iter().copied());
    }

    fn link(&self, name: &str, ifindex: u32) -> bool {
        self.link_prefix
            .as_deref()
            .is_some_and(|p| name.starts_with(p))
            || self.bridges.contains(name)
            || self.ifindexes.contains(&ifindex)
    }

    fn address(&self, a: &HostAddress) -> bool {
        if self.addresses.contains(&(a.address, a.prefix_len)) {
            return true;
        }
        if a.ifname == "lo" {
            return match a.address {
                IpAddr::V4(_) => a.label.is_some() && a.label == self.lo_label,
                IpAddr::V6(v6) => self.lo_v6.contains(&v6),
            };
        }
        self.link(&a.ifname, a.ifindex)
    }

    fn route(&self, r: &HostRoute) -> bool {
        // The kernel shows IPv6 reject routes on lo: their devices say
        // nothing of whose they are.
        if matches!(
            r.kind,
            RouteType::BlackHole | RouteType::Unreachable | RouteType::Prohibit
        ) {
            return self.ranges.contains(&r.destination);
        }
        !r.devices.is_empty()
            && r.devices
                .iter()
                .zip(&r.ifindexes)
                .all(|(d, &i)| self.link(d, i))
    }
}

/// Whether `route` says something of its own about where addresses go:
/// default routes cover everything (pods are more specific), broadcast and
/// multicast entries and the local table's single addresses mirror
/// addresses, which are checked as such.
fn relevant(route: &HostRoute) -> bool {
    let full_length = route.destination.prefix_len() == route.destination.max_prefix_len();
    route.destination.prefix_len() > 0
        && !matches!(route.kind, RouteType::Broadcast | RouteType::Multicast)
        && !(route.table == TABLE_LOCAL && full_length)
}

/// Whether `route` is one the kernel adds for an address (its prefix
/// route, or the route to itself, on its interface): addresses are
/// checked as such, with their owners.
fn of_an_address(route: &HostRoute, addresses: &[HostAddress]) -> bool {
    addresses.iter().any(|a| {
        let on_its_interface = route.devices.contains(&a.ifname);
        let prefix = IpNet::new(a.address, a.prefix_len).map(|n| n.trunc());
        let itself = IpNet::from(a.address);
        on_its_interface && (prefix == Ok(route.destination) || itself == route.destination)
    })
}

/// The first overlap of the topology's ranges with what the host has and
/// the topology does not own.
pub fn host_clash(
    topology: &Topology,
    own: &Own,
    addresses: &[HostAddress],
    routes: &[HostRoute],
) -> Option<ModelError> {
    let mut ranges = vec![("pod_cidr", IpNet::V4(topology.pod_cidr))];
    ranges.extend(topology.pod_cidr6.map(|c| ("pod_cidr6", IpNet::V6(c))));
    let fix = |field: &str| {
        format!(
            "pick a {field} the host does not use (see `ip addr` and `ip route show table all`), \
             or remove what is there if it is a leftover"
        )
    };
    for &(field, range) in &ranges {
        for a in addresses.iter().filter(|a| !own.address(a)) {
            let Ok(net) = IpNet::new(a.address, a.prefix_len) else {
                continue;
            };
            if overlaps(range, net.trunc()) {
                return Some(ModelError {
                    field: field.to_string(),
                    message: format!(
                        "{range} overlaps the address {}/{} that interface {:?} already has on \
                         this host; pods there would be unreachable or take the host's own \
                         traffic: {}",
                        a.address,
                        a.prefix_len,
                        a.ifname,
                        fix(field)
                    ),
                });
            }
        }
    }
    for &(field, range) in &ranges {
        let routes = routes
            .iter()
            .filter(|r| relevant(r) && !own.route(r) && !of_an_address(r, addresses));
        for r in routes {
            if overlaps(range, r.destination) {
                return Some(ModelError {
                    field: field.to_string(),
                    message: format!(
                        "{range} overlaps the route `{}` this host already has; pods there would \
                         take traffic that goes elsewhere, or be unreachable: {}",
                        r.describe(),
                        fix(field)
                    ),
                });
            }
        }
    }
    None
}

/// Whether two prefixes of the same family share an address.
fn overlaps(a: IpNet, b: IpNet) -> bool {
    match (a, b) {
        (IpNet::V4(a), IpNet::V4(b)) => crate::model::overlaps4(a, b),
        (IpNet::V6(a), IpNet::V6(b)) => crate::model::overlaps6(a, b),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netlink::inspect::TABLE_MAIN;

    fn topology(text: &str) -> Topology {
        Topology::from_toml(text).unwrap()
    }

    const T: &str = "name = \"lab\"\npod_cidr = \"10.201.0.0/24\"\npod_cidr6 = \"fd00:201::/64\"\n\
                     [[pods]]\nname = \"a\"\n";

    fn address(ifname: &str, cidr: &str, label: Option<&str>) -> HostAddress {
        let net: IpNet = cidr.parse().unwrap();
        HostAddress {
            ifindex: 9,
            ifname: ifname.into(),
            address: net.addr(),
            prefix_len: net.prefix_len(),
            label: label.map(str::to_string),
        }
    }

    fn route(dst: &str, table: u32, kind: RouteType, devices: &[&str]) -> HostRoute {
        HostRoute {
            destination: dst.parse().unwrap(),
            table,
            kind,
            devices: devices.iter().map(|d| d.to_string()).collect(),
            // Distinct from the addresses' 9, and from the ledger's below.
            ifindexes: vec![1; devices.len()],
        }
    }

    /// What a host with eth0 in 192.0.2.0/24 has.
    fn usual_host() -> (Vec<HostAddress>, Vec<HostRoute>) {
        let addresses = vec![
            address("lo", "127.0.0.1/8", Some("lo")),
            address("lo", "::1/128", None),
            address("eth0", "192.0.2.2/24", Some("eth0")),
            address("eth0", "fd00::2/64", None),
            address("eth0", "fe80::1/64", None),
        ];
        let routes = vec![
            route("0.0.0.0/0", TABLE_MAIN, RouteType::Unicast, &["eth0"]),
            route("::/0", TABLE_MAIN, RouteType::Unicast, &["eth0"]),
            route("192.0.2.0/24", TABLE_MAIN, RouteType::Unicast, &["eth0"]),
            route("fd00::/64", TABLE_MAIN, RouteType::Unicast, &["eth0"]),
            route("fe80::/64", TABLE_MAIN, RouteType::Unicast, &["eth0"]),
            route("127.0.0.0/8", TABLE_LOCAL, RouteType::Local, &["lo"]),
            route("192.0.2.2/32", TABLE_LOCAL, RouteType::Local, &["eth0"]),
            route(
                "192.0.2.255/32",
                TABLE_LOCAL,
                RouteType::Broadcast,
                &["eth0"],
            ),
            route("fd00::/128", TABLE_LOCAL, RouteType::Anycast, &["eth0"]),
            route("ff00::/8", TABLE_LOCAL, RouteType::Multicast, &["eth0"]),
        ];
        (addresses, routes)
    }

    #[test]
    fn a_usual_host_does_not_clash_with_a_private_range() {
        let (addresses, routes) = usual_host();
        assert_eq!(
            host_clash(&topology(T), &Own::default(), &addresses, &routes),
            None
        );
    }

    #[test]
    fn the_hosts_own_subnet_is_a_clash_naming_address_and_interface() {
        let (addresses, routes) = usual_host();
        let t = topology("name = \"lab\"\npod_cidr = \"192.0.2.0/25\"\n");
        let err = host_clash(&t, &Own::default(), &addresses, &routes).unwrap();
        assert_eq!(err.field, "pod_cidr");
        assert!(
            err.message
                .contains("the address 192.0.2.2/24 that interface \"eth0\""),
            "{err}"
        );
        assert!(err.message.contains("pick a pod_cidr"), "{err}");
    }

    #[test]
    fn routes_inside_or_around_the_range_clash() {
        let (addresses, mut routes) = usual_host();
        routes.push(route("10.201.0.128/25", 52, RouteType::Unicast, &["wg0"]));
        let err = host_clash(&topology(T), &Own::default(), &addresses, &routes).unwrap();
        assert_eq!(err.field, "pod_cidr");
        assert!(
            err.message.contains("`10.201.0.128/25 dev wg0 table 52`"),
            "{err}"
        );

        let (addresses, mut routes) = usual_host();
        routes.push(route(
            "fd00:200::/23",
            TABLE_MAIN,
            RouteType::BlackHole,
            &[],
        ));
        let err = host_clash(&topology(T), &Own::default(), &addresses, &routes).unwrap();
        assert_eq!(err.field, "pod_cidr6");
        assert!(err.message.contains("`blackhole fd00:200::/23`"), "{err}");
    }

    #[test]
    fn an_address_in_the_range_on_loopback_clashes_unless_the_topology_owns_it() {
        let t = topology(T);
        let (mut addresses, routes) = usual_host();
        addresses.push(address("lo", "fd00:201::1/128", None));
        let err = host_clash(&t, &Own::default(), &addresses, &routes).unwrap();
        assert_eq!(err.field, "pod_cidr6");
        assert!(err.message.contains("interface \"lo\""), "{err}");
        assert_eq!(
            host_clash(&t, &Own::of(&t, Some(&t)), &addresses, &routes),
            None
        );
    }

    #[test]
    fn what_the_topology_made_when_up_is_not_a_clash() {
        for text in [
            T.to_string(),
            T.replace("name = \"lab\"\n", "name = \"lab\"\nmode = \"bridge\"\n"),
            T.replace(
                "name = \"lab\"\n",
                "name = \"lab\"\nmode = \"bridge\"\nbridge = \"cni0\"\n",
            ),
        ] {
            let t = topology(&text);
            let (mut addresses, mut routes) = usual_host();
            // Routed modes: node addresses on lo, a route per pod.
            addresses.push(address("lo", "10.201.0.1/32", Some("lo:lab")));
            addresses.push(address("lo", "fd00:201::1/128", None));
            routes.push(route(
                "fd00:201::1/128",
                TABLE_MAIN,
                RouteType::Unicast,
                &["lo"],
            ));
            routes.push(route(
                "10.201.0.2/32",
                TABLE_MAIN,
                RouteType::Unicast,
                &["lab-a"],
            ));
            routes.push(route(
                "fd00:201::2/128",
                TABLE_MAIN,
                RouteType::Unicast,
                &["lab-a"],
            ));
            routes.push(route(
                "10.201.0.1/32",
                TABLE_LOCAL,
                RouteType::Local,
                &["lo"],
            ));
            // Mode bridge: the bridge holds them with the prefix.
            addresses.push(address(&t.bridge, "10.201.0.1/24", Some(&t.bridge)));
            addresses.push(address(&t.bridge, "fd00:201::1/64", None));
            routes.push(route(
                "10.201.0.0/24",
                TABLE_MAIN,
                RouteType::Unicast,
                &[&t.bridge],
            ));
            routes.push(route(
                "fd00:201::/64",
                TABLE_MAIN,
                RouteType::Unicast,
                &[&t.bridge],
            ));
            // Blackhole routes for the ranges.
            routes.push(route(
                "10.201.0.0/24",
                TABLE_MAIN,
                RouteType::BlackHole,
                &[],
            ));
            routes.push(route(
                "fd00:201::/64",
                TABLE_MAIN,
                RouteType::Unreachable,
                &["lo"],
            ));
            let own = Own::of(&t, Some(&t));
            assert_eq!(host_clash(&t, &own, &addresses, &routes), None, "{text}");
            // Unreadable record: the new description stands in for it.
            let own = Own::of(&t, None);
            assert_eq!(host_clash(&t, &own, &addresses, &routes), None, "{text}");
            // Not recorded: the same objects are someone else's.
            assert!(host_clash(&t, &Own::default(), &addresses, &routes).is_some());
        }
    }

    #[test]
    fn a_renumbered_topology_may_overlap_its_own_old_range() {
        let old = topology(T);
        let new = topology(&T.replace("10.201.0.0/24", "10.201.0.0/23"));
        let (mut addresses, mut routes) = usual_host();
        addresses.push(address("lo", "10.201.0.1/32", Some("lo:lab")));
        routes.push(route(
            "10.201.0.2/32",
            TABLE_MAIN,
            RouteType::Unicast,
            &["lab-a"],
        ));
        routes.push(route(
            "10.201.0.0/24",
            TABLE_MAIN,
            RouteType::BlackHole,
            &[],
        ));
        let own = Own::of(&new, Some(&old));
        assert_eq!(host_clash(&new, &own, &addresses, &routes), None);
    }

    #[test]
    fn a_renamed_link_and_addresses_its_ledger_records_are_its_own() {
        let t = topology(T);
        let (mut addresses, mut routes) = usual_host();
        let mut renamed = route("10.201.0.2/32", TABLE_MAIN, RouteType::Unicast, &["x"]);
        renamed.ifindexes = vec![42];
        routes.push(renamed);
        addresses.push(address("lo", "fd00:201::1/128", None));
        let mut own = Own::of(&t, Some(&t));
        own.lo_v6.clear();
        assert!(host_clash(&t, &own, &addresses, &routes).is_some());
        let mut ledger = Ledger::default();
        ledger.links.insert(
            "lab-a".into(),
            crate::state::LedgerLink {
                kind: "veth".into(),
                ifindex: Some(42),
                mac: None,
            },
        );
        ledger.addresses.insert(crate::state::LedgerAddress {
            device: "lo".into(),
            address: "fd00:201::1".parse().unwrap(),
            prefix_len: 128,
        });
        own.add_ledger(&ledger);
        assert_eq!(host_clash(&t, &own, &addresses, &routes), None);
    }

    #[test]
    fn a_foreign_bridge_or_prefix_lookalike_is_not_owned() {
        let t = topology(T);
        let (mut addresses, routes) = usual_host();
        // flannel's cni0 in the range; the topology's bridge is lab-br.
        addresses.push(address("cni0", "10.201.0.1/24", Some("cni0")));
        let err = host_clash(&t, &Own::of(&t, Some(&t)), &addresses, &routes).unwrap();
        assert!(err.message.contains("\"cni0\""), "{err}");
        // Someone else's label on lo.
        let (mut addresses, routes) = usual_host();
        addresses.push(address("lo", "10.201.0.1/32", Some("lo:other")));
        assert!(host_clash(&t, &Own::of(&t, Some(&t)), &addresses, &routes).is_some());
    }
}
