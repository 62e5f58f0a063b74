//! The one table of exit statuses. Every mode (`run`, `merge`, `serve`, `submit`, `status`,
//! `mux`) ends through it; the guide's table (docs/guide/results.md) says the same, and a test
//! holds them together.
//! Also [`say`], the `corral:` line a command's last words go out on.

use std::io::Write;
use std::process::ExitCode;

/// A `corral:` line on stderr. A closed or hung-up stderr must not end the run (`eprintln!`
/// would panic), so a failed write is ignored: the exit status still tells.
pub fn say(message: std::fmt::Arguments<'_>) {
    let _ = writeln!(std::io::stderr().lock(), "corral: {message}");
}

/// `n` of `noun` as a sentence says it: "1 job", "2 jobs" (the plural is the noun and an s).
pub fn count(n: u64, noun: &str) -> String {
    match n {
        1 => format!("1 {noun}"),
        n => format!("{n} {noun}s"),
    }
}

/// How a corral command ended, as its exit status says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// `0`: every job succeeded (`merge`: every job has exactly one result).
    Success,
    /// `1`: some jobs failed, or `--halt` stopped the run (`merge`: results are missing,
    /// duplicated or unknown).
    Failed,
    /// `2`: a usage or configuration error; running again as it is will not help.
    Usage,
    /// `75` (`EX_TEMPFAIL`): the service is not there, or stopped before every job had its
    /// result; run again (with `-o FILE --resume`, to finish).
    Unavailable,
    /// `128 + N`: stopped by signal N.
    Signal(i32),
}

impl Exit {
    /// The status number.
    pub fn code(self) -> u8 {
        match self {
            Exit::Success => 0,
            Exit::Failed => 1,
            Exit::Usage => 2,
            Exit::Unavailable => 75,
            Exit::Signal(signal) => 128u8.saturating_add(u8::try_from(signal).unwrap_or(127)),
        }
    }

    /// [`Exit::Failed`] if any job failed, else [`Exit::Success`].
    pub fn failed_if(failed: bool) -> Exit {
        if failed { Exit::Failed } else { Exit::Success }
    }
}

impl From<Exit> for ExitCode {
    fn from(exit: Exit) -> ExitCode {
        ExitCode::from(exit.code())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_of_a_thing_is_singular_and_any_other_count_plural() {
        assert_eq!(count(1, "job"), "1 job");
        assert_eq!(count(0, "job"), "0 jobs");
        assert_eq!(count(36, "result"), "36 results");
    }

    /// The guide's table of exit statuses names exactly the statuses of this one.
    #[test]
    fn the_guide_s_table_says_what_this_table_says() {
        let guide = include_str!("../../docs/guide/results.md");
        let table = guide
            .split("## Exit status")
            .nth(1)
            .expect("the guide has an exit status table");
        let documented: Vec<&str> = table
            .lines()
            .skip_while(|line| !line.starts_with('|'))
            .take_while(|line| line.starts_with('|'))
            .skip(2)
            .filter_map(|line| line.split('`').nth(1))
            .collect();
        let ours = [Exit::Success, Exit::Failed, Exit::Usage, Exit::Unavailable]
            .map(|exit| exit.code().to_string());
        let mut expected: Vec<&str> = ours.iter().map(String::as_str).collect();
        expected.push("128+N");
        assert_eq!(documented, expected);
        assert_eq!(Exit::Signal(2).code(), 130);
        assert_eq!(Exit::Signal(15).code(), 143);
    }
}
