//! The man pages and shell completions, generated from the command-line definitions
//! (clap_mangen, clap_complete) so that they never disagree with `--help`. The Debian package
//! ships them; `corral generate DIR` writes them.

use std::io;
use std::path::Path;

use clap::CommandFactory;
use clap_complete::Shell;

use crate::cli::Cli;

/// Writes `DIR/man/corral.1`, a page per subcommand (`corral-serve.1`...), and
/// `DIR/completions/` for bash, zsh and fish.
pub fn generate(dir: &Path) -> io::Result<()> {
    let man = dir.join("man");
    let completions = dir.join("completions");
    std::fs::create_dir_all(&man)?;
    std::fs::create_dir_all(&completions)?;
    let mut command = Cli::command();
    command.build();
    clap_mangen::generate_to(command.clone(), &man)?;
    // Pages of `corral help ...` only repeat the others.
    for entry in std::fs::read_dir(&man)? {
        let path = entry?.path();
        if path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("corral-help"))
        {
            std::fs::remove_file(path)?;
        }
    }
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        clap_complete::generate_to(shell, &mut command, "corral", &completions)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_and_completions_cover_every_public_subcommand() {
        let dir = tempfile::tempdir().unwrap();
        generate(dir.path()).unwrap();
        for page in [
            "corral.1",
            "corral-run.1",
            "corral-serve.1",
            "corral-submit.1",
            "corral-status.1",
        ] {
            let text = std::fs::read_to_string(dir.path().join("man").join(page)).unwrap();
            assert!(text.contains(".TH"), "{page}");
        }
        let serve = std::fs::read_to_string(dir.path().join("man/corral-serve.1")).unwrap();
        assert!(serve.contains("allow\\-uid"), "the options are on the page");
        assert!(!dir.path().join("man/corral-help.1").exists());
        let bash = std::fs::read_to_string(dir.path().join("completions/corral.bash")).unwrap();
        assert!(bash.contains("submit") && bash.contains("--resume"));
        assert!(dir.path().join("completions/_corral").exists());
        assert!(dir.path().join("completions/corral.fish").exists());
    }
}
