//! The `ferry` binary: a thin shell over `ferry_control::cli`.
fn main() -> std::process::ExitCode {
    control::cli::main()
}
