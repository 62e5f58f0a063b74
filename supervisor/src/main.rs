//! `corral`: the command-line entry point; the commands, and the exit statuses they end with,
//! are [`corral::cmd`].

fn main() -> std::process::ExitCode {
    corral::cmd::main()
}
