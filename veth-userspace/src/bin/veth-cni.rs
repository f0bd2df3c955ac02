//! `veth-cni`: the CNI plugin. Container runtimes run it with the `CNI_*`
//! variables and the network configuration on stdin; everything is in the
//! library ([`veth_userspace::cni::main`] over [`veth_cni_protocol::run`]).

fn main() {
    veth_userspace::cni::main()
}
