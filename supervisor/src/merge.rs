//! `corral merge --jobs JOBS... RESULTS...`: the results of every shard of a run, checked
//! against its input. Each line of the job files that has a result in `corral run` (every line
//! but a blank one) must have exactly one result across the result files; the merge writes
//! each once, in the order the files hold them, and counts the missing, the duplicated, and
//! the results that answer no line of the input. Results are matched to lines as `--resume`
//! matches them: by id (as written, so `"a"` and `"\u0061"` are one), or by line number for a
//! line that was not a job, or was longer than the run's `--max-job-bytes` (its `too_large`
//! result names its line, whatever id it holds). A run of `--lines` read every line but a
//! blank one as a job whose id is its number.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::resume::{ResultDigest, Target, job_line_key, line_digest, result_target};

/// Line numbers named in a report line, at most.
const NAMED: usize = 10;

/// The job files of a run, and how the run read them.
#[derive(Debug, Clone)]
pub struct JobFiles {
    /// The files, in the order the run read them (line numbers count across them).
    pub paths: Vec<PathBuf>,
    /// The run's `--max-job-bytes`.
    pub max_line_bytes: u64,
    /// Whether the run had `--lines`.
    pub lines: bool,
}

/// What a merge found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct MergeReport {
    /// Job lines of the input (lines that have a result).
    pub jobs: u64,
    /// Results written.
    pub written: u64,
    /// Job lines without a result: how many, and the first few line numbers.
    pub missing: (u64, Vec<u64>),
    /// Job lines with more than one result: how many extra results, and the first few lines.
    pub duplicated: (u64, Vec<u64>),
    /// Results that answer no line of the input.
    pub unknown: u64,
    /// Lines of the result files that are not results (a torn last line is not counted).
    pub unreadable: u64,
    /// The first few of those: file and line number.
    pub unreadable_at: Vec<(PathBuf, u64)>,
    /// Lines of the input whose id an earlier line already had: their results cannot be told
    /// apart, so each such id must have as many results as lines.
    pub repeated_ids: u64,
}

impl MergeReport {
    /// Whether every job has exactly one result, and nothing else came.
    pub fn complete(&self) -> bool {
        self.missing.0 == 0 && self.duplicated.0 == 0 && self.unknown == 0 && self.unreadable == 0
    }
}

/// The input's job lines: how many results each line expects (0 for a blank line, or a line
/// whose id an earlier line has), and which line each id is on.
struct Expected {
    per_line: Vec<u32>,
    seen: Vec<u32>,
    by_id: HashMap<ResultDigest, u32>,
    repeated: u64,
}

fn read_jobs(files: &JobFiles) -> anyhow::Result<Expected> {
    let mut expected = Expected {
        per_line: Vec::new(),
        seen: Vec::new(),
        by_id: HashMap::new(),
        repeated: 0,
    };
    let mut line = Vec::new();
    for path in &files.paths {
        let mut reader = BufReader::with_capacity(
            256 * 1024,
            File::open(path).with_context(|| format!("cannot open {}", path.display()))?,
        );
        loop {
            line.clear();
            let n = reader
                .read_until(b'\n', &mut line)
                .with_context(|| format!("cannot read {}", path.display()))?;
            if n == 0 {
                break;
            }
            let number = expected.per_line.len() as u64 + 1;
            let index = u32::try_from(number - 1).context("more than 4 billion job lines")?;
            let key = if job_line_len(&line) > files.max_line_bytes {
                // Too large to be read as a job: its result names its line.
                Some(line_digest(number))
            } else {
                job_line_key(&line, number, files.lines)
            };
            let count = match key {
                None => 0,
                Some(key) if key == line_digest(number) => 1,
                Some(key) => match expected.by_id.get(&key) {
                    Some(&first) => {
                        expected.per_line[first as usize] += 1;
                        expected.repeated += 1;
                        0
                    }
                    None => {
                        expected.by_id.insert(key, index);
                        1
                    }
                },
            };
            expected.per_line.push(count);
        }
    }
    expected.seen = vec![0; expected.per_line.len()];
    Ok(expected)
}

/// A job line's length as `corral run` measures it against `--max-job-bytes`: without its
/// `\n` or `\r\n`.
fn job_line_len(line: &[u8]) -> u64 {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    line.len() as u64
}

/// Merges `results` (the shards' result files) against `jobs` into `out`.
pub fn merge(jobs: &JobFiles, results: &[PathBuf], out: impl Write) -> anyhow::Result<MergeReport> {
    let mut expected = read_jobs(jobs)?;
    let mut report = MergeReport {
        jobs: expected.per_line.iter().filter(|&&n| n > 0).count() as u64 + expected.repeated,
        repeated_ids: expected.repeated,
        ..MergeReport::default()
    };
    let mut out = io::BufWriter::with_capacity(256 * 1024, out);
    let mut line = Vec::new();
    for path in results {
        merge_file(path, &mut expected, &mut report, &mut out, &mut line)?;
    }
    out.flush().context("cannot write the merged results")?;
    for (index, (&want, &got)) in expected.per_line.iter().zip(&expected.seen).enumerate() {
        if got < want {
            report.missing.0 += u64::from(want - got);
            if report.missing.1.len() < NAMED {
                report.missing.1.push(index as u64 + 1);
            }
        }
    }
    Ok(report)
}

fn merge_file(
    path: &Path,
    expected: &mut Expected,
    report: &mut MergeReport,
    out: &mut impl Write,
    line: &mut Vec<u8>,
) -> anyhow::Result<()> {
    let mut reader = BufReader::with_capacity(
        256 * 1024,
        File::open(path).with_context(|| format!("cannot open {}", path.display()))?,
    );
    let mut number = 0;
    loop {
        line.clear();
        let n = reader
            .read_until(b'\n', line)
            .with_context(|| format!("cannot read {}", path.display()))?;
        if n == 0 {
            return Ok(());
        }
        number += 1;
        let whole = line.last() == Some(&b'\n');
        let text = line.trim_ascii_end();
        if text.is_empty() {
            continue;
        }
        let index = match result_target(text) {
            None if !whole => {
                // The torn last line of a shard killed mid-write: its job counts as missing.
                tracing::warn!("{}: a torn last line, ignored", path.display());
                return Ok(());
            }
            None => {
                report.unreadable += 1;
                if report.unreadable_at.len() < NAMED {
                    report.unreadable_at.push((path.to_owned(), number));
                }
                continue;
            }
            Some(Target::Id(id)) => expected.by_id.get(&id).copied(),
            Some(Target::Line(number)) => number
                .checked_sub(1)
                .and_then(|i| u32::try_from(i).ok())
                .filter(|&i| expected.per_line.get(i as usize).is_some_and(|&n| n > 0)),
        };
        let Some(index) = index else {
            report.unknown += 1;
            continue;
        };
        let i = index as usize;
        expected.seen[i] += 1;
        if expected.seen[i] > expected.per_line[i] {
            report.duplicated.0 += 1;
            if report.duplicated.1.len() < NAMED && !report.duplicated.1.contains(&(i as u64 + 1)) {
                report.duplicated.1.push(i as u64 + 1);
            }
            continue;
        }
        out.write_all(text)
            .and_then(|()| out.write_all(b"\n"))
            .context("cannot write the merged results")?;
        report.written += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(paths: &[PathBuf], max_line_bytes: u64) -> JobFiles {
        JobFiles {
            paths: paths.to_vec(),
            max_line_bytes,
            lines: false,
        }
    }

    fn files(dir: &Path, files: &[(&str, &str)]) -> Vec<PathBuf> {
        files
            .iter()
            .map(|(name, text)| {
                let path = dir.join(name);
                std::fs::write(&path, text).unwrap();
                path
            })
            .collect()
    }

    #[test]
    fn every_job_once_is_complete_whatever_the_shards_order() {
        let dir = tempfile::tempdir().unwrap();
        let jobs = files(
            dir.path(),
            &[(
                "jobs.jsonl",
                "{\"id\":\"a\",\"task\":\"t\"}\n\nnot json\n{\"task\":\"t\"}\n{\"id\":7,\"task\":\"t\"}",
            )],
        );
        let results = files(
            dir.path(),
            &[
                ("r1", "{\"id\":4,\"ok\":true}\n{\"line\":3,\"ok\":false}\n"),
                (
                    "r2",
                    "{\"id\":\"\\u0061\",\"ok\":true}\n{\"id\":7,\"ok\":true}\n",
                ),
            ],
        );
        let mut out = Vec::new();
        let report = merge(&run(&jobs, 1 << 20), &results, &mut out).unwrap();
        assert!(report.complete(), "{report:?}");
        assert_eq!((report.jobs, report.written), (4, 4));
        assert_eq!(String::from_utf8(out).unwrap().lines().count(), 4);
    }

    #[test]
    fn the_missing_the_duplicated_and_the_unknown_are_counted_with_their_lines() {
        let dir = tempfile::tempdir().unwrap();
        let jobs = files(
            dir.path(),
            &[
                ("a.jsonl", "{\"id\":1}\n{\"id\":2}\n"),
                // Line numbers go on across the files.
                ("b.jsonl", "{\"id\":3}\n{\"task\":\"t\"}\n"),
            ],
        );
        let results = files(
            dir.path(),
            &[
                (
                    "r1",
                    "{\"id\":1,\"ok\":true}\n{\"id\":1,\"ok\":true}\n{\"id\":9,\"ok\":true}\n",
                ),
                // Line 4 has no id: its result has id 4. A torn last line is not a result.
                ("r2", "{\"id\":4,\"ok\":true}\ngarbage\n{\"id\":3,\"ok\""),
            ],
        );
        let mut out = Vec::new();
        let report = merge(&run(&jobs, 1 << 20), &results, &mut out).unwrap();
        assert_eq!(report.missing, (2, vec![2, 3]));
        assert_eq!(report.duplicated, (1, vec![1]));
        assert_eq!((report.unknown, report.unreadable), (1, 1));
        assert_eq!(report.unreadable_at, [(results[1].clone(), 2)]);
        assert_eq!(report.written, 2);
        assert!(!report.complete());
    }

    #[test]
    fn a_repeated_id_needs_as_many_results_as_lines() {
        let dir = tempfile::tempdir().unwrap();
        let jobs = files(dir.path(), &[("j", "{\"id\":1}\n{\"id\":1}\n")]);
        let one = files(dir.path(), &[("r", "{\"id\":1,\"ok\":true}\n")]);
        let report = merge(&run(&jobs, 1 << 20), &one, io::sink()).unwrap();
        assert_eq!((report.repeated_ids, report.missing.0), (1, 1));
        let two = files(
            dir.path(),
            &[("r2", "{\"id\":1,\"ok\":true}\n{\"id\":1,\"ok\":true}\n")],
        );
        assert!(
            merge(&run(&jobs, 1 << 20), &two, io::sink())
                .unwrap()
                .complete()
        );
    }

    #[test]
    fn too_large_lines_are_keyed_by_line_whatever_id_they_hold() {
        // Two lines over --max-job-bytes with one id: corral run answers each by its line.
        let dir = tempfile::tempdir().unwrap();
        let big = format!(
            "{{\"id\":5,\"task\":\"t\",\"input\":\"{}\"}}",
            "x".repeat(100)
        );
        let jobs = files(
            dir.path(),
            &[(
                "j",
                &format!("{big}\r\n{{\"id\":1,\"task\":\"t\"}}\n{big}\n"),
            )],
        );
        let results = files(
            dir.path(),
            &[(
                "r",
                "{\"line\":1,\"ok\":false}\n{\"id\":1,\"ok\":true}\n{\"line\":3,\"ok\":false}\n",
            )],
        );
        let mut out = Vec::new();
        let report = merge(&run(&jobs, 64), &results, &mut out).unwrap();
        assert!(report.complete(), "{report:?}");
        assert_eq!(
            (report.jobs, report.written, report.repeated_ids),
            (3, 3, 0)
        );
        // Under a larger limit they are jobs with one id, and these results do not fit.
        let report = merge(&run(&jobs, 1 << 20), &results, io::sink()).unwrap();
        assert!(!report.complete());
    }

    #[test]
    fn a_run_of_lines_has_a_job_per_line_but_blank_ones_keyed_by_number() {
        let dir = tempfile::tempdir().unwrap();
        let jobs = files(dir.path(), &[("j", "")]);
        // Lines that look like jobs, or are not UTF-8, are lines all the same.
        std::fs::write(&jobs[0], b"{\"id\":\"a\"}\n\n\xe9x\nnot json\n").unwrap();
        let results = files(
            dir.path(),
            &[(
                "r",
                "{\"id\":4,\"ok\":true}\n{\"id\":1,\"ok\":true}\n{\"id\":3,\"ok\":true}\n",
            )],
        );
        let lines = JobFiles {
            lines: true,
            ..run(&jobs, 1 << 20)
        };
        let report = merge(&lines, &results, io::sink()).unwrap();
        assert!(report.complete(), "{report:?}");
        assert_eq!((report.jobs, report.written), (3, 3));
        // Read as job lines, the same results do not fit.
        let as_jobs = merge(&run(&jobs, 1 << 20), &results, io::sink()).unwrap();
        assert!(!as_jobs.complete());
    }
}
