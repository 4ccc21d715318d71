//! `stagely`: the appliance and its admin CLI.

fn main() -> std::process::ExitCode {
    stagely::cli::main()
}
