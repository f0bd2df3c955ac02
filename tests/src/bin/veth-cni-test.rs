//! `veth-cni` itself, built inside this package so the integration tests
//! can run the plugin as a runtime does (`target/<profile>/veth-cni-test`,
//! see `veth_tests::cni::plugin_bin`).
fn main() {
    veth_userspace::cni::main()
}
