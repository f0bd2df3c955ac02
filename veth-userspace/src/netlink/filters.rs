//! The BPF filters under a link's `clsact` hooks, as the kernel reports
//! them (what `tc filter show dev X ingress` lists): where a runtime
//! endpoint's programs are attached ([`crate::model::TcAttach::Clsact`]).

use futures::TryStreamExt;
use rtnetlink::packet_route::tc::{TcAttribute, TcFilterBpfOption, TcOption};

use super::Host;

impl Host {
    /// The ids of the programs of every BPF filter at the ingress (or
    /// egress) hook of link `ifindex`; none if it has no `clsact` qdisc
    /// (the kernel refuses the dump then) or is gone.
    pub async fn bpf_filter_programs(&self, ifindex: u32, ingress: bool) -> Vec<u32> {
        let request = self.handle().traffic_filter(ifindex as i32).get();
        let request = if ingress {
            request.ingress()
        } else {
            request.egress()
        };
        let Ok(messages) = request.execute().try_collect::<Vec<_>>().await else {
            return Vec::new();
        };
        messages
            .iter()
            .flat_map(|m| &m.attributes)
            .filter_map(|a| match a {
                TcAttribute::Options(options) => Some(options),
                _ => None,
            })
            .flatten()
            .filter_map(|o| match o {
                TcOption::Bpf(TcFilterBpfOption::ProgId(id)) => Some(*id),
                _ => None,
            })
            .collect()
    }
}
