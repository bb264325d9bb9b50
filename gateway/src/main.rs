//! `lookout`: thin entry point. Flags are parsed in `cli`, and every
//! subcommand runs library code (`lookout_gateway::commands`).

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
