//! The command a built-in worker runs per job with `corral run --exec`, as the supervisor hands
//! it over in the worker's environment. The `exec` task exists only in a worker given this.

use serde::{Deserialize, Serialize};

/// Environment variable holding the [`ExecSpec`], as JSON.
pub const ENV_EXEC: &str = "CORRAL_EXEC";

/// How each job's command is made and run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecSpec {
    /// The command's words, placeholders not yet replaced; with `shell`, `["sh", "-c", line]`.
    pub argv: Vec<String>,
    /// Whether replacements are shell-quoted (the command runs with `sh -c`).
    pub shell: bool,
    /// Where an input is cut into the columns `{1}`..`{n}`.
    pub colsep: Option<String>,
    /// Most bytes of each of stdout and stderr kept in a result.
    pub capture: u64,
    /// Where stdout and stderr go as files (`N.out`, `N.err`) instead of into results.
    pub output_dir: Option<String>,
    /// Whether the output also says the command that ran, quoted as a shell would read it
    /// (`command`), for `--joblog`.
    #[serde(default)]
    pub tell_command: bool,
}
