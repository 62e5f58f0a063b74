//! What several commands share: their input files, their results file, and
//! `--exit-with-parent`.

use std::io::{self, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::exit::{Exit, count, say};
use crate::resume::FinishedKeys;
use crate::run::Source;

/// Where results go: the file `-o` names, or stdout.
pub(super) struct Results {
    pub(super) output: Box<dyn Write + Send>,
    /// With `--resume`, the jobs the file already answers.
    pub(super) finished: Option<FinishedKeys>,
    /// With `--resume`, the failures already in the file: final, and reported.
    pub(super) earlier_failed: u64,
}

impl Results {
    /// Opens `path` (stdout without one), truncated, or with `resume` read for what it
    /// already answers (which it says, unless `quiet`).
    pub(super) fn open(path: Option<&Path>, resume: bool, quiet: bool) -> anyhow::Result<Results> {
        let Some(path) = path else {
            return Ok(Results {
                output: Box::new(io::stdout()),
                finished: None,
                earlier_failed: 0,
            });
        };
        let (finished, file) = crate::resume::open_results(path, resume)?;
        if finished.dropped_torn_line {
            tracing::warn!(
                "{}: dropped a torn last line; its job runs again",
                path.display()
            );
        }
        if resume && !quiet {
            let done = finished.keys.len() as u64;
            say(format_args!(
                "resuming {}: {} already {} a result there, and {} not run again",
                path.display(),
                count(done, "job"),
                if done == 1 { "has" } else { "have" },
                if done == 1 { "is" } else { "are" },
            ));
        }
        Ok(Results {
            // Unbuffered: the result writer buffers, and knows what reached the file.
            output: Box::new(file),
            earlier_failed: if resume { finished.failed } else { 0 },
            finished: resume.then_some(finished.keys),
        })
    }
}

pub(super) fn sources(files: &[PathBuf]) -> anyhow::Result<Vec<Source>> {
    if files.is_empty() {
        return Ok(vec![Source::Stdin]);
    }
    files
        .iter()
        .map(|path| {
            if path.as_os_str() == "-" {
                return Ok(Source::Stdin);
            }
            // Fail before any worker starts when an input cannot be opened at all; the file
            // is read through this descriptor.
            Source::open(path).with_context(|| format!("cannot open {}", path.display()))
        })
        .collect()
}

/// Refuses an `-o` that is one of the input files: it would be truncated (or appended to)
/// before its jobs are read.
pub(super) fn refuse_input_as_output(sources: &[Source], output: &Path) -> anyhow::Result<()> {
    let Ok(out) = std::fs::metadata(output) else {
        return Ok(());
    };
    for source in sources {
        let same = match source {
            Source::File(_, Some(file)) => file.metadata().ok(),
            Source::File(path, None) => std::fs::metadata(path).ok(),
            Source::Stdin => std::fs::metadata("/dev/stdin").ok(),
        }
        .is_some_and(|input| input.dev() == out.dev() && input.ino() == out.ino());
        if same {
            let name = source.name();
            anyhow::bail!(
                "-o {} is also the input ({name}): its jobs would be overwritten before they are read",
                output.display()
            );
        }
    }
    Ok(())
}

/// How often `--exit-with-parent` looks for its parent.
const PARENT_CHECK: std::time::Duration = std::time::Duration::from_millis(100);

/// Exits the process (status 129, like a hang-up) once its parent is gone, removing `scratch`
/// first if given. Exiting is what a SIGKILL of corral does, and that is already safe: the
/// workers die with the spawner thread (their death signal) and the keeper kills their groups.
pub(super) fn exit_with_parent(scratch: Option<PathBuf>) {
    // SAFETY: getppid has no preconditions.
    let parent = unsafe { libc::getppid() };
    std::thread::Builder::new()
        .name("corral-parent".into())
        .spawn(move || {
            loop {
                std::thread::sleep(PARENT_CHECK);
                // SAFETY: as above.
                if unsafe { libc::getppid() } != parent {
                    say(format_args!(
                        "the process that started corral is gone: stopping"
                    ));
                    if let Some(dir) = &scratch {
                        let _ = std::fs::remove_dir_all(dir);
                    }
                    std::process::exit(Exit::Signal(libc::SIGHUP).code().into());
                }
            }
        })
        .expect("spawning a thread");
}
