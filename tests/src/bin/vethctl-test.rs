//! `vethctl` itself, built inside this package so the integration tests can
//! run it as a separate process (`CARGO_BIN_EXE_vethctl-test`), e.g. to kill
//! it halfway through `up`.
fn main() -> std::process::ExitCode {
    veth_userspace::cli::main()
}
