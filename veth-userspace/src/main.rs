fn main() -> std::process::ExitCode {
    veth_userspace::cli::main()
}
