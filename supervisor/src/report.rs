//! `corral report`: one self-contained HTML page (inline SVG and CSS, no script, nothing
//! fetched) from a joblog in GNU parallel's format (`--joblog`) and, if given, the run's
//! `--stats`: the jobs on a timeline, throughput over time, the distribution of job times,
//! outcomes and failures by kind, and the slowest jobs.
//!
//! The joblog is read twice and never held: the first pass takes the counts, the time span,
//! the histogram and the slowest jobs; the second, knowing the span, the throughput and the
//! time busy in each of [`COLUMNS`] slices of it. Up to [`JOBS_DRAWN`] jobs each get a bar of
//! their own on the timeline, in rows assigned as workers would have run them; past that the
//! timeline shows how many workers were busy in each slice. Memory and the page's size are
//! bounded whatever the number of jobs.

use std::cmp::Reverse;
use std::fs::File;
use std::io::{self, BufRead, BufReader};
use std::path::Path;

use anyhow::{Context, bail};

use crate::joblog::HEADER;

mod html;
mod summary;

use summary::{
    COLUMNS, COMMAND_CHARS, DECADES, JOBS_DRAWN, PER_DECADE, SLOWEST, Slow, Summary, Timeline,
    bucket, span_of,
};

/// One joblog line.
#[derive(Debug, Clone, PartialEq)]
struct Entry<'a> {
    seq: u64,
    start: f64,
    runtime: f64,
    exitval: i64,
    signal: i64,
    command: &'a str,
}

impl Entry<'_> {
    fn parse(line: &str) -> Option<Entry<'_>> {
        let mut fields = line.splitn(9, '\t');
        let mut next = || fields.next();
        let seq = next()?.trim().parse().ok()?;
        let _host = next()?;
        let start: f64 = next()?.trim().parse().ok()?;
        let runtime: f64 = next()?.trim().parse().ok()?;
        let (_send, _receive) = (next()?, next()?);
        let exitval = next()?.trim().parse().ok()?;
        let signal = next()?.trim().parse().ok()?;
        let command = next().unwrap_or("");
        (start.is_finite() && runtime.is_finite() && runtime >= 0.0).then_some(Entry {
            seq,
            start,
            runtime,
            exitval,
            signal,
            command,
        })
    }

    fn end(&self) -> f64 {
        self.start + self.runtime
    }

    fn ok(&self) -> bool {
        self.exitval == 0 && self.signal == 0
    }

    /// How it ended, as the outcome table says it.
    fn outcome(&self) -> String {
        match (self.exitval, self.signal) {
            (0, 0) => "ok".into(),
            (_, signal) if signal != 0 => format!("killed by signal {signal}"),
            (-1, _) => "never ran (bad line, unknown task, too large)".into(),
            (status, _) => format!("exit status {status}"),
        }
    }
}

/// Reads the lines of `path` (a joblog, its header checked) into `each`; the lines that are
/// not joblog lines are counted.
fn read_joblog(path: &Path, mut each: impl FnMut(&Entry<'_>)) -> anyhow::Result<u64> {
    let file = File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let mut line = String::new();
    let read = |reader: &mut BufReader<File>, line: &mut String| -> anyhow::Result<bool> {
        line.clear();
        match reader.read_line(line) {
            Ok(n) => Ok(n > 0),
            Err(err) if err.kind() == io::ErrorKind::InvalidData => {
                bail!("{} is not text (UTF-8): not a joblog", path.display())
            }
            Err(err) => Err(err).with_context(|| format!("cannot read {}", path.display())),
        }
    };
    if !read(&mut reader, &mut line)? || line.trim_end() != HEADER.trim_end() {
        bail!(
            "{} is not a joblog: its first line should be the header {:?} (corral run --joblog FILE, or GNU parallel's --joblog, writes one)",
            path.display(),
            HEADER.trim_end()
        );
    }
    let mut unreadable = 0;
    while read(&mut reader, &mut line)? {
        match Entry::parse(line.trim_end_matches(['\n', '\r'])) {
            Some(entry) => each(&entry),
            None if line.trim().is_empty() => {}
            None => unreadable += 1,
        }
    }
    Ok(unreadable)
}

fn first_pass(path: &Path) -> anyhow::Result<Summary> {
    let mut summary = Summary {
        first_start: f64::INFINITY,
        last_end: f64::NEG_INFINITY,
        histogram: vec![0; PER_DECADE * DECADES + 2],
        ..Summary::default()
    };
    summary.unreadable = read_joblog(path, |entry| {
        summary.jobs += 1;
        summary.ok += u64::from(entry.ok());
        summary.first_start = summary.first_start.min(entry.start);
        summary.last_end = summary.last_end.max(entry.end());
        summary.runtime_total += entry.runtime;
        *summary.outcomes.entry(entry.outcome()).or_default() += 1;
        summary.histogram[bucket(entry.runtime)] += 1;
        let slower = summary
            .slowest
            .peek()
            .is_none_or(|Reverse(min)| entry.runtime > min.runtime);
        if summary.slowest.len() < SLOWEST || slower {
            summary.slowest.push(Reverse(Slow {
                runtime: entry.runtime,
                seq: entry.seq,
                outcome: entry.outcome(),
                command: entry.command.chars().take(COMMAND_CHARS).collect(),
            }));
            if summary.slowest.len() > SLOWEST {
                summary.slowest.pop();
            }
        }
    })?;
    Ok(summary)
}

fn second_pass(path: &Path, summary: &Summary) -> anyhow::Result<Timeline> {
    let (t0, span) = span_of(summary);
    let width = span / COLUMNS as f64;
    let mut timeline = Timeline {
        finished: vec![0; COLUMNS],
        busy: vec![0.0; COLUMNS],
        jobs: (summary.jobs as usize <= JOBS_DRAWN).then(Vec::new),
    };
    let column = |t: f64| (((t - t0) / width).floor().max(0.0) as usize).min(COLUMNS - 1);
    read_joblog(path, |entry| {
        timeline.finished[column(entry.end())] += 1;
        let (first, last) = (column(entry.start), column(entry.end()));
        for c in first..=last {
            let from = entry.start.max(t0 + c as f64 * width);
            let to = entry.end().min(t0 + (c + 1) as f64 * width);
            timeline.busy[c] += (to - from).max(0.0);
        }
        if let Some(jobs) = &mut timeline.jobs {
            jobs.push((entry.start, entry.end(), entry.ok(), entry.seq));
        }
    })?;
    Ok(timeline)
}

/// Builds the report of `joblog` (and `stats`, the run's `--stats` file) and writes it to
/// `out`.
///
/// # Errors
///
/// If a file cannot be read, is not what it should be, or the page cannot be written.
pub fn build(joblog: &Path, stats: Option<&Path>, out: &mut dyn io::Write) -> anyhow::Result<()> {
    let stats = stats
        .map(|path| -> anyhow::Result<serde_json::Value> {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            serde_json::from_str(&text).with_context(|| {
                format!(
                    "{} is not a --stats file (JSON): cannot read it",
                    path.display()
                )
            })
        })
        .transpose()?;
    let summary = first_pass(joblog)?;
    let timeline = second_pass(joblog, &summary)?;
    let name = joblog.display().to_string();
    let page = html::page(&name, &summary, timeline, stats.as_ref());
    out.write_all(page.as_bytes())
        .context("cannot write the report")?;
    out.flush().context("cannot write the report")
}

#[cfg(test)]
mod tests {
    use super::summary::{assign_rows, bucket_floor};
    use super::*;

    fn joblog(lines: &[&str]) -> tempfile::NamedTempFile {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        use std::io::Write;
        file.write_all(HEADER.as_bytes()).unwrap();
        for line in lines {
            writeln!(file, "{line}").unwrap();
        }
        file
    }

    #[test]
    fn lines_are_read_as_parallel_writes_them_and_others_are_counted() {
        let entry =
            Entry::parse("7\t:\t1700000000.250\t     1.500\t0\t6\t3\t0\tsh -c 'x\ty'").unwrap();
        assert_eq!(entry.seq, 7);
        assert_eq!(entry.start, 1_700_000_000.25);
        assert_eq!(entry.runtime, 1.5);
        assert_eq!(entry.command, "sh -c 'x\ty'");
        assert_eq!(entry.outcome(), "exit status 3");
        assert!(Entry::parse("7\t:\tsoon\t1\t0\t0\t0\t0\tx").is_none());
        let file = joblog(&["1\t:\t10.000\t     1.000\t0\t0\t0\t0\ta", "garbage"]);
        let summary = first_pass(file.path()).unwrap();
        assert_eq!((summary.jobs, summary.unreadable), (1, 1));
    }

    #[test]
    fn a_file_without_the_header_is_refused() {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        use std::io::Write;
        writeln!(file, "{{\"id\": 1}}").unwrap();
        let err = build(file.path(), None, &mut Vec::new()).unwrap_err();
        assert!(err.to_string().contains("is not a joblog"), "{err}");
    }

    #[test]
    fn the_passes_count_time_throughput_and_the_slowest() {
        let file = joblog(&[
            "1\t:\t100.000\t     2.000\t0\t0\t0\t0\ta",
            "2\t:\t100.000\t     1.000\t0\t0\t1\t0\tb",
            "3\t:\t101.000\t     1.000\t0\t0\t0\t9\tc",
            "4\t:\t102.000\t     0.000\t0\t0\t-1\t0\t",
        ]);
        let summary = first_pass(file.path()).unwrap();
        assert_eq!((summary.jobs, summary.ok), (4, 1));
        assert_eq!((summary.first_start, summary.last_end), (100.0, 102.0));
        assert_eq!(summary.outcomes["ok"], 1);
        assert_eq!(summary.outcomes["exit status 1"], 1);
        assert_eq!(summary.outcomes["killed by signal 9"], 1);
        assert_eq!(summary.histogram[0], 1);
        assert_eq!(summary.histogram[bucket(1.0)], 2);
        let slowest = summary.slowest.clone().into_sorted_vec();
        assert_eq!(slowest[0].0.seq, 1, "the slowest first");
        let timeline = second_pass(file.path(), &summary).unwrap();
        assert_eq!(timeline.finished.iter().sum::<u64>(), 4);
        let busy: f64 = timeline.busy.iter().sum();
        assert!((busy - 4.0).abs() < 1e-6, "{busy}");
        let mut jobs = timeline.jobs.unwrap();
        let (rows, count) = assign_rows(&mut jobs);
        assert_eq!(count, 2, "two at once at most: {rows:?}");
    }

    #[test]
    fn histogram_buckets_grow_by_quarter_decades() {
        assert_eq!(bucket(0.0), 0);
        assert_eq!(bucket(0.000_9), 0);
        assert_eq!(bucket(1e-3), 1);
        assert_eq!(bucket(1.0), 1 + 3 * PER_DECADE);
        assert!(bucket_floor(bucket(0.3)) <= 0.3);
        assert_eq!(bucket(1e9), PER_DECADE * DECADES + 1);
    }
}
