//! The `postledger` binary, built inside the tests package so that its end-to-end tests
//! can find it (`CARGO_BIN_EXE_*` names only the test package's own binaries).
fn main() -> std::process::ExitCode {
    api::cli::main()
}
