//! The `sdnlinkd` binary: everything lives in the library.
fn main() -> std::process::ExitCode {
    sdnlinkd::cli::main()
}
