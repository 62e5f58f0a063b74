//! What a run reports besides its results: `--joblog`, compared field by field with GNU
//! parallel's own joblog for the same commands, and `--metrics`, scraped while a run lasts.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use crate::util::{Run, signal, temp_dir, wait_for, write_jobs};

/// Joblog lines, keyed by Seq, each its 9 fields; the header is checked.
fn joblog(path: &Path) -> HashMap<u64, Vec<String>> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut lines = text.lines();
    assert_eq!(
        lines.next(),
        Some("Seq\tHost\tStarttime\tJobRuntime\tSend\tReceive\tExitval\tSignal\tCommand"),
        "{text}"
    );
    let mut by_seq = HashMap::new();
    for line in lines {
        let fields: Vec<String> = line.split('\t').map(str::to_owned).collect();
        assert_eq!(fields.len(), 9, "{line:?}");
        let seq = fields[0].parse().unwrap();
        assert!(by_seq.insert(seq, fields).is_none(), "Seq {seq} twice");
    }
    by_seq
}

/// Whether `text` is seconds with 3 decimals, as parallel writes them (`%.3f`, or `%10.3f`
/// for a runtime).
fn seconds(text: &str, width: Option<usize>) -> bool {
    let trimmed = text.trim_start();
    let (whole, decimals) = trimmed.split_once('.').unwrap_or(("", ""));
    width.is_none_or(|w| text.len() == w)
        && !whole.is_empty()
        && whole.bytes().all(|b| b.is_ascii_digit())
        && decimals.len() == 3
        && decimals.bytes().all(|b| b.is_ascii_digit())
}

#[test]
fn the_joblog_matches_gnu_parallel_s_field_by_field() {
    if std::process::Command::new("parallel")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("skipped: GNU parallel is not installed (.ci/run installs it)");
        return;
    }
    let dir = temp_dir();
    // Scripts that succeed, print, exit non-zero and are killed by a signal.
    let lines = "exit 0\necho hello\nexit 3\nkill -9 $$\nprintf 'a b c'\n";
    let template = "sh -c {}";
    let gnu_log = dir.path().join("parallel.joblog");
    let mut gnu = std::process::Command::new("parallel")
        .args(["--will-cite", "-j", "2", "--joblog"])
        .arg(&gnu_log)
        .arg(template)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    gnu.stdin
        .take()
        .unwrap()
        .write_all(lines.as_bytes())
        .unwrap();
    gnu.wait().unwrap();
    let ours_log = dir.path().join("corral.joblog");
    let out = Run::corral(["run", "-j", "2", "--lines", "--exec", template, "--joblog"])
        .args([&ours_log])
        .stdin(lines)
        .output();
    out.expect_code(1);
    assert_eq!(out.results().len(), 5);

    let (gnu, ours) = (joblog(&gnu_log), joblog(&ours_log));
    assert_eq!(gnu.len(), 5);
    assert_eq!(ours.len(), 5);
    for (seq, theirs) in &gnu {
        let mine = &ours[seq];
        // Host, Send, Receive, Exitval, Signal and Command are the same.
        assert_eq!(mine[1], theirs[1], "Host of {seq}");
        assert_eq!(mine[4..], theirs[4..], "Seq {seq}: {mine:?} vs {theirs:?}");
        // The times are written the same way, and are both of this minute.
        assert!(seconds(&mine[2], None), "Starttime {:?}", mine[2]);
        assert!(seconds(&mine[3], Some(10)), "JobRuntime {:?}", mine[3]);
        let (a, b): (f64, f64) = (mine[2].parse().unwrap(), theirs[2].parse().unwrap());
        assert!((a - b).abs() < 60.0, "Starttime {a} vs {b}");
    }
    assert_eq!(ours[&3][6], "3");
    assert_eq!(ours[&4][7], "9");
    assert_eq!(ours[&2][5], "6");
}

#[test]
fn the_joblog_of_job_lines_has_one_line_per_job_naming_its_task() {
    let dir = temp_dir();
    let mut lines: Vec<String> = (1..=3000)
        .map(|i| match i % 3 {
            0 => format!(r#"{{"id": {i}, "task": "primes", "input": 100}}"#),
            _ => format!(r#"{{"id": {i}, "task": "sum_squares", "input": [{i}]}}"#),
        })
        .collect();
    lines[9] = "not json".into();
    lines[19] = r#"{"task": "nope"}"#.into();
    lines.push(String::new());
    lines.push(r#"{"task": "sum_squares", "input": "x"}"#.into());
    let jobs = write_jobs(dir.path(), "jobs.jsonl", lines.clone());
    let log = dir.path().join("joblog");
    let out = Run::corral(["run", "-j", "2", "--joblog"])
        .args([&log, &jobs])
        .output();
    out.expect_code(1);
    let by_seq = joblog(&log);
    assert_eq!(out.results().len(), 3001);
    assert_eq!(by_seq.len(), 3001, "one joblog line per result line");
    for (seq, fields) in &by_seq {
        let line = &lines[(*seq - 1) as usize];
        let (exitval, command) = (&fields[6], &fields[8]);
        match *seq {
            10 | 20 => assert_eq!((exitval.as_str(), command.as_str()), ("-1", ""), "{seq}"),
            3002 => assert_eq!((exitval.as_str(), command.as_str()), ("1", "sum_squares")),
            _ => {
                assert_eq!(exitval, "0", "{seq}");
                assert!(line.contains(&format!("\"{command}\"")), "{seq}: {command}");
            }
        }
    }
}

#[test]
fn a_resumed_run_goes_on_with_the_joblog_after_its_last_whole_line() {
    let dir = temp_dir();
    let lines: Vec<String> = (1..=40)
        .map(|i| format!(r#"{{"id": {i}, "task": "sum_squares", "input": [{i}]}}"#))
        .collect();
    let first = write_jobs(dir.path(), "first.jsonl", lines[..15].to_vec());
    let all = write_jobs(dir.path(), "all.jsonl", lines);
    let log = dir.path().join("joblog");
    let results = dir.path().join("results.jsonl");
    Run::corral(["run", "-j", "2", "-o"])
        .args([&results, &first])
        .args(["--joblog".as_ref(), log.as_os_str()])
        .output()
        .expect_code(0);
    assert_eq!(joblog(&log).len(), 15);
    // As if a crash had torn the last line.
    let mut file = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
    file.write_all(b"16\t:\t1796646").unwrap();
    drop(file);

    Run::corral(["run", "-j", "2", "--resume", "-o"])
        .args([&results, &all])
        .args(["--joblog".as_ref(), log.as_os_str()])
        .output()
        .expect_code(0);
    // One header, the first run's 15 lines, then the other 25; the torn line is gone.
    let by_seq = joblog(&log);
    let mut seqs: Vec<u64> = by_seq.keys().copied().collect();
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=40).collect::<Vec<_>>());

    // A new joblog on --resume starts with its header: nothing was left to run.
    let fresh = dir.path().join("fresh.joblog");
    Run::corral(["run", "-j", "2", "--resume", "-o"])
        .args([&results, &all])
        .args(["--joblog".as_ref(), fresh.as_os_str()])
        .output()
        .expect_code(0);
    assert!(joblog(&fresh).is_empty());
}

/// The metrics served on `socket`, or `None` if nothing answers there.
fn scrape(socket: &Path) -> Option<String> {
    let mut stream = UnixStream::connect(socket).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: corral\r\n\r\n")
        .ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).ok()?;
    let (head, body) = answer.split_once("\r\n\r\n")?;
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
    assert!(head.contains("application/openmetrics-text"), "{head}");
    Some(body.to_owned())
}

/// The sum of the samples of `name` whose labels contain `labels`.
fn sample_sum(metrics: &str, name: &str, labels: &str) -> u64 {
    metrics
        .lines()
        .filter(|line| {
            line.starts_with(name)
                && matches!(line.as_bytes().get(name.len()), Some(b'{' | b' '))
                && line.contains(labels)
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

#[test]
fn a_run_serves_its_metrics_while_it_lasts_and_a_silent_client_does_not_stop_them() {
    let dir = temp_dir();
    // The slow job first: the first batch is one line, while the speed is not known.
    let mut lines = vec![r#"{"id": "slow", "task": "spin", "input": 4000}"#.to_owned()];
    lines.extend(
        (1..=40).map(|i| format!(r#"{{"id": {i}, "task": "sum_squares", "input": [{i}]}}"#)),
    );
    lines.push("not json".into());
    let jobs = write_jobs(dir.path(), "jobs.jsonl", lines);
    let socket = dir.path().join("metrics.sock");
    let running = Run::corral(["run", "-q", "-j", "2", "--metrics"])
        .args([&socket, &jobs])
        .start(dir.path());
    // A client that connects and says nothing holds the endpoint for its deadline at most.
    let silent = wait_for(Duration::from_secs(10), || {
        UnixStream::connect(&socket).ok()
    })
    .expect("the metrics socket appears");
    // Once the quick jobs are answered: every job read is counted or in flight (a quick one
    // may wait behind the slow one, in that worker's second batch).
    let metrics = wait_for(Duration::from_secs(20), || {
        let metrics = scrape(&socket)?;
        let counted = sample_sum(&metrics, "corral_jobs_total", "");
        let in_flight = sample_sum(&metrics, "corral_jobs_in_flight", "");
        (counted >= 39 && counted + in_flight == 42).then_some(metrics)
    })
    .expect("the quick jobs counted while the slow one runs");
    drop(silent);
    let ok = sample_sum(
        &metrics,
        "corral_jobs_total",
        r#"task="sum_squares",outcome="ok""#,
    );
    assert!(ok >= 38, "{metrics}");
    assert_eq!(
        sample_sum(&metrics, "corral_jobs_total", r#"outcome="bad_input""#),
        1
    );
    assert_eq!(
        sample_sum(
            &metrics,
            "corral_job_duration_seconds_count",
            r#"task="sum_squares""#
        ),
        ok
    );
    assert_eq!(sample_sum(&metrics, "corral_workers", r#"state="busy""#), 1);
    assert_eq!(sample_sum(&metrics, "corral_worker_starts_total", ""), 2);
    assert_eq!(sample_sum(&metrics, "corral_build_info", ""), 1);
    assert!(metrics.trim_end().ends_with("# EOF"), "{metrics}");
    let out = running.wait(Duration::from_secs(30));
    out.expect_code(1);
}

#[test]
fn a_metrics_address_that_cannot_be_served_is_an_error_before_anything_runs() {
    let out = Run::corral(["run", "--metrics", "not-an-address"])
        .stdin("{}\n")
        .output();
    out.expect_code(2);
    assert!(out.stderr.contains("HOST:PORT"), "{}", out.stderr);
    let dir = temp_dir();
    let taken = dir.path().join("file");
    std::fs::write(&taken, "not a socket").unwrap();
    let out = Run::corral(["run", "--metrics"])
        .args([&taken])
        .stdin("{}\n")
        .output();
    out.expect_code(2);
    assert!(
        out.stderr.contains("cannot serve --metrics"),
        "{}",
        out.stderr
    );
    assert_eq!(std::fs::read_to_string(&taken).unwrap(), "not a socket");
    assert!(out.stdout.is_empty());
}

#[test]
fn a_service_counts_its_clients_results_and_the_connections_it_refused() {
    let dir = temp_dir();
    let (socket, metrics) = (
        dir.path().join("corral.sock"),
        dir.path().join("metrics.sock"),
    );
    let log = dir.path().join("service");
    std::fs::create_dir_all(&log).unwrap();
    let service = Run::corral(["serve", "-j", "1", "--first-line-timeout", "200ms"])
        .arg_path("--socket", &socket)
        .arg_path("--metrics", &metrics)
        .start(&log);
    wait_for(Duration::from_secs(20), || {
        let now = scrape(&metrics)?;
        (sample_sum(&now, "corral_workers", r#"state="idle""#) == 1).then_some(())
    })
    .expect("the service's worker is ready");

    // A connection that says nothing, and one whose hello corral does not understand.
    let mut silent = UnixStream::connect(&socket).unwrap();
    silent
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut said = String::new();
    let _ = silent.read_to_string(&mut said);
    assert!(said.contains("no line within"), "{said}");
    let mut garbled = UnixStream::connect(&socket).unwrap();
    garbled.write_all(b"{\"corral\":\"dance\"}\n").unwrap();
    garbled
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let _ = garbled.read_to_string(&mut said);

    let jobs = write_jobs(
        dir.path(),
        "jobs.jsonl",
        (1..=25).map(|i| format!(r#"{{"id": {i}, "task": "sum_squares", "input": [{i}]}}"#)),
    );
    Run::corral(["submit", "-q"])
        .arg_path("--socket", &socket)
        .args([&jobs])
        .output()
        .expect_code(0);
    let uid = unsafe { libc::getuid() };
    let now = wait_for(Duration::from_secs(10), || {
        let now = scrape(&metrics)?;
        (sample_sum(&now, "corral_client_results_total", "") == 25).then_some(now)
    })
    .expect("the client's results counted");
    let by_uid = format!(r#"uid="{uid}""#);
    assert_eq!(sample_sum(&now, "corral_client_results_total", &by_uid), 25);
    assert_eq!(sample_sum(&now, "corral_jobs_total", r#"outcome="ok""#), 25);
    assert_eq!(
        sample_sum(&now, "corral_job_duration_seconds_count", ""),
        25
    );
    assert_eq!(sample_sum(&now, "corral_clients", ""), 0);
    let refused = |reason: &str| {
        sample_sum(
            &now,
            "corral_refusals_total",
            &format!(r#"reason="{reason}""#),
        )
    };
    assert_eq!(refused("first_line_timeout"), 1, "{now}");
    assert_eq!(refused("bad_hello"), 1, "{now}");
    signal(service.pid(), libc::SIGTERM);
    service.wait(Duration::from_secs(30)).expect_code(0);
}
