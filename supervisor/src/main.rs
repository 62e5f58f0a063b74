//! `corral`: the command-line entry point; the commands are [`corral::cmd`], and the exit
//! statuses they end with are [`corral::exit::Exit`].

fn main() -> std::process::ExitCode {
    corral::cmd::main()
}
