//! Operating a run: signals, resume after interruption or SIGKILL, ordering, halting, limits,
//! progress and stats.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::util::{
    ChildGuard, Lcg, Run, alive, bin, children_of, fault_worker, read_results, signal, square_jobs,
    temp_dir, wait_for, wait_for_workers, write_jobs,
};

/// Asserts that `results` answer jobs 0..n exactly once each, all correct squares.
fn assert_exactly_once_squares(results: &[Value], n: u64) {
    let mut seen: HashMap<u64, &Value> = HashMap::new();
    for result in results {
        let id = result["id"]
            .as_u64()
            .unwrap_or_else(|| panic!("no id: {result}"));
        assert!(seen.insert(id, result).is_none(), "id {id} appears twice");
        assert_eq!(result["ok"], true, "{result}");
        assert_eq!(result["output"].as_u64(), Some(id * id), "{result}");
    }
    assert_eq!(seen.len() as u64, n, "every id has a result");
}

fn line_count(path: &Path) -> usize {
    std::fs::read(path)
        .map(|b| b.iter().filter(|&&c| c == b'\n').count())
        .unwrap_or(0)
}

#[test]
fn sigterm_drains_with_status_143_and_resume_completes_each_id_once() {
    let dir = temp_dir();
    let n = 100_000;
    let jobs = write_jobs(dir.path(), "jobs.jsonl", square_jobs(n, 20));
    let results = dir.path().join("results.jsonl");
    let args = [
        "run".as_ref(),
        "-j".as_ref(),
        "2".as_ref(),
        jobs.as_os_str(),
        "-o".as_ref(),
        results.as_os_str(),
    ];
    let running = Run::corral_faulty(args).start(dir.path());
    wait_for(Duration::from_secs(30), || {
        (line_count(&results) > 1000).then_some(())
    })
    .expect("results start flowing");
    signal(running.pid(), libc::SIGTERM);
    let out = running.wait(Duration::from_secs(30));
    out.expect_code(143);
    assert!(
        out.stderr.contains("stopped by SIGTERM") && out.stderr.contains("--resume"),
        "{}",
        out.stderr
    );
    let first = read_results(&results);
    assert!(first.len() < n as usize, "the run was interrupted");
    let out = Run::corral_faulty(args).args(["--resume"]).output();
    out.expect_code(0);
    assert_exactly_once_squares(&read_results(&results), n);
}

#[test]
fn sigkill_at_random_moments_then_resume_gives_each_id_exactly_once() {
    let dir = temp_dir();
    let n = 30_000;
    // 200 µs a job on 2 workers: a run killed within 140 ms answers at most 1,400 jobs, so
    // the 20 kills all come before the end, however fast the machine.
    let jobs = write_jobs(dir.path(), "jobs.jsonl", square_jobs(n, 200));
    let results = dir.path().join("results.jsonl");
    let args = [
        "run".as_ref(),
        "-j".as_ref(),
        "2".as_ref(),
        jobs.as_os_str(),
        "-o".as_ref(),
        results.as_os_str(),
        "--resume".as_ref(),
    ];
    let mut rng = Lcg(99);
    for _ in 0..20 {
        let running = Run::corral_faulty(args).start(dir.path());
        std::thread::sleep(Duration::from_millis(20 + rng.below(120)));
        let workers = children_of(running.pid());
        signal(running.pid(), libc::SIGKILL);
        running.wait(Duration::from_secs(10));
        let gone = wait_for(Duration::from_secs(2), || {
            workers.iter().all(|&w| !alive(w)).then_some(())
        });
        assert!(gone.is_some(), "workers outlived a SIGKILLed supervisor");
    }
    let partial = std::fs::read_to_string(&results).unwrap();
    assert!(
        partial.lines().count() < n as usize,
        "the kills came before the end"
    );
    let out = Run::corral_faulty(args).output();
    out.expect_code(0);
    assert_exactly_once_squares(&read_results(&results), n);
}

#[test]
fn a_closed_stdout_ends_the_run_quietly() {
    let dir = temp_dir();
    let jobs = write_jobs(dir.path(), "jobs.jsonl", square_jobs(200_000, 0));
    let worker = fault_worker();
    let mut child = ChildGuard(
        Command::new(bin("corral"))
            .args([
                "run".as_ref(),
                "--worker".as_ref(),
                worker.as_os_str(),
                jobs.as_os_str(),
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut stdout = BufReader::new(child.0.stdout.take().unwrap());
    let mut first = String::new();
    stdout.read_line(&mut first).unwrap();
    assert!(first.starts_with('{'), "{first}");
    drop(stdout);
    let status =
        wait_for(Duration::from_secs(20), || child.0.try_wait().unwrap()).expect("corral ends");
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.0.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(0), "stderr: {stderr}");
    assert_eq!(stderr, "", "no error message");
}

#[test]
fn keep_order_writes_results_in_input_order() {
    let mut rng = Lcg(5);
    let lines: Vec<String> = (0..3000)
        .map(|i| {
            let spin = if rng.below(50) == 0 {
                3000
            } else {
                rng.below(100)
            };
            format!(r#"{{"id": {i}, "task": "square", "input": {{"n": {i}, "spin_us": {spin}}}}}"#)
        })
        .collect();
    let out = Run::corral_faulty(["run", "-j", "2", "--keep-order", "--order-window", "64"])
        .stdin(lines.join("\n"))
        .output();
    out.expect_code(0);
    let ids: Vec<u64> = out
        .results()
        .iter()
        .map(|r| r["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, (0..3000).collect::<Vec<u64>>());
}

#[test]
fn a_slow_head_under_keep_order_holds_the_reader_back_without_wedging_it() {
    // A slow first job, then about 6 MB of lines with a meta each: the results held back
    // behind the slow job keep their lines' blocks alive, many more than the input ring holds,
    // so the reader waits for blocks while the head runs, and must go on once it is answered.
    const JOBS: u64 = 40_000;
    let pad = "p".repeat(100);
    let mut lines =
        vec![r#"{"id": 0, "task": "square", "input": {"n": 0, "spin_us": 300000}}"#.to_owned()];
    lines.extend((1..=JOBS).map(|i| {
        format!(r#"{{"id": {i}, "task": "square", "input": {{"n": {i}}}, "meta": "{pad}"}}"#)
    }));
    let out = Run::corral_faulty(["run", "-j", "2", "--keep-order"])
        .stdin(lines.join("\n"))
        .output();
    out.expect_code(0);
    let results = out.results();
    let ids: Vec<u64> = results.iter().map(|r| r["id"].as_u64().unwrap()).collect();
    assert_eq!(ids, (0..=JOBS).collect::<Vec<u64>>());
    assert!(results[1..].iter().all(|r| r["meta"] == pad.as_str()));
}

#[test]
fn halt_stops_after_failures() {
    // Far more jobs than the queue and the batches in flight can hold (about 9,000 at the
    // defaults), so that a halt always leaves some unrun, however fast the workers are.
    const JOBS: usize = 50_000;
    let lines: Vec<String> = (0..JOBS)
        .map(|i| format!(r#"{{"id": {i}, "task": "fail", "input": "no"}}"#))
        .collect();
    for (rule, expected) in [
        ("now,fail=5", "--halt now,fail=5"),
        ("soon,fail=50%", "--halt soon,fail=50%"),
    ] {
        let out = Run::corral_faulty(["run", "-j", "2", "--halt", rule])
            .stdin(lines.join("\n"))
            .output();
        out.expect_code(1);
        assert!(
            out.stderr.contains(expected) && out.stderr.contains("halted after"),
            "{}",
            out.stderr
        );
        let results = out.results();
        assert!(
            !results.is_empty() && results.len() < JOBS,
            "{} results",
            results.len()
        );
        assert!(results.iter().all(|r| r["error"]["kind"] == "task_error"));
    }
}

#[test]
fn max_rss_recycles_a_leaking_worker_and_stats_count_it() {
    let dir = temp_dir();
    let stats = dir.path().join("stats.json");
    let lines: Vec<String> = (0..40)
        .map(|i| format!(r#"{{"id": {i}, "task": "leak", "input": 8}}"#))
        .collect();
    let out = Run::corral_faulty(["run", "-j", "1", "--max-rss", "48MiB", "-v"])
        .args(["--stats".as_ref(), stats.as_os_str()])
        .stdin(lines.join("\n"))
        .output();
    out.expect_code(0);
    assert_eq!(out.results().len(), 40);
    let pids: std::collections::HashSet<u64> = out
        .results()
        .iter()
        .map(|r| r["worker"].as_u64().unwrap())
        .collect();
    assert!(pids.len() >= 3, "leaking workers were replaced: {pids:?}");
    assert!(
        out.stderr.contains("recycling worker") && out.stderr.contains("--max-rss"),
        "{}",
        out.stderr
    );
    let stats: Value = serde_json::from_str(&std::fs::read_to_string(&stats).unwrap()).unwrap();
    assert_eq!(stats["end"], "completed");
    assert_eq!(stats["ok"], 40);
    assert!(stats["recycled"].as_u64().unwrap() >= 2, "{stats}");
    assert_eq!(stats["restarts"], 0, "recycling is not restarting");
}

#[test]
fn max_jobs_per_worker_recycles_workers() {
    let lines: Vec<String> = square_jobs(100, 0).collect();
    let out = Run::corral_faulty(["run", "-j", "1", "--max-jobs-per-worker", "10"])
        .stdin(lines.join("\n"))
        .output();
    out.expect_code(0);
    let mut per_worker: HashMap<u64, u32> = HashMap::new();
    for result in out.results() {
        *per_worker
            .entry(result["worker"].as_u64().unwrap())
            .or_default() += 1;
    }
    assert_eq!(per_worker.len(), 10, "{per_worker:?}");
    assert!(per_worker.values().all(|&n| n == 10));
}

#[test]
fn a_job_past_the_memory_limit_fails_as_crashed_naming_the_limit() {
    let lines = [
        r#"{"id": "big", "task": "alloc", "input": 1024}"#,
        r#"{"id": "small", "task": "alloc", "input": 1}"#,
        r#"{"id": "echo", "task": "echo", "input": 1}"#,
    ];
    let out = Run::corral_faulty([
        "run",
        "-j",
        "1",
        "--retries",
        "0",
        "--memory-limit",
        "256MiB",
    ])
    .stdin(lines.join("\n"))
    .output();
    out.expect_code(1);
    let results = out.results_by_id();
    let big = &results["\"big\""];
    assert_eq!(big["error"]["kind"], "crashed", "{big}");
    assert!(
        big["error"]["message"]
            .as_str()
            .unwrap()
            .contains("--memory-limit 256.0 MiB"),
        "{big}"
    );
    assert_eq!(results["\"small\""]["output"], 1);
    assert_eq!(results["\"echo\""]["output"], 1);
}

#[test]
fn terminal_sigint_reaches_only_the_supervisor_which_drains() {
    // Like Ctrl-C in a terminal: SIGINT to corral's whole foreground process group.
    let dir = temp_dir();
    let jobs = write_jobs(dir.path(), "jobs.jsonl", square_jobs(20, 300_000));
    let worker = fault_worker();
    let mut command = Command::new(bin("corral"));
    command
        .args([
            "run".as_ref(),
            "-j".as_ref(),
            "2".as_ref(),
            "--worker".as_ref(),
            worker.as_os_str(),
            jobs.as_os_str(),
        ])
        .stdout(std::fs::File::create(dir.path().join("out")).unwrap())
        .stderr(std::fs::File::create(dir.path().join("err")).unwrap())
        .process_group(0);
    let mut child = ChildGuard(command.spawn().unwrap());
    let pid = child.0.id();
    wait_for(Duration::from_secs(10), || {
        (children_of(pid).len() == 2).then_some(())
    })
    .expect("workers start");
    std::thread::sleep(Duration::from_millis(100));
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(-(pid as i32), libc::SIGINT) };
    let status =
        wait_for(Duration::from_secs(20), || child.0.try_wait().unwrap()).expect("corral ends");
    let stderr = std::fs::read_to_string(dir.path().join("err")).unwrap();
    assert_eq!(status.code(), Some(130), "{stderr}");
    let results = read_results(&dir.path().join("out"));
    assert!(!results.is_empty(), "the jobs in flight finished: {stderr}");
    assert!(
        results.iter().all(|r| r["ok"] == true),
        "no worker was interrupted: {results:?}"
    );
    assert!(results.len() < 20);
}

#[test]
fn a_second_signal_or_the_end_of_grace_kills_the_workers_at_once() {
    let dir = temp_dir();
    let jobs = write_jobs(dir.path(), "jobs.jsonl", square_jobs(10, 30_000_000));
    for (grace, signals) in [("1h", 2), ("200ms", 1)] {
        let running = Run::corral_faulty(["run", "-j", "2", "--grace", grace])
            .args([jobs.as_os_str()])
            .start(dir.path());
        let pid = running.pid();
        let workers = wait_for_workers(pid, 2);
        std::thread::sleep(Duration::from_millis(100));
        for _ in 0..signals {
            signal(pid, libc::SIGTERM);
            std::thread::sleep(Duration::from_millis(50));
        }
        let out = running.wait(Duration::from_secs(5));
        out.expect_code(143);
        assert_eq!(out.stdout, "", "no job finished");
        let gone = wait_for(Duration::from_secs(2), || {
            workers.iter().all(|&w| !alive(w)).then_some(())
        });
        assert!(gone.is_some(), "workers survived");
    }
}

#[test]
fn json_logs_are_one_object_per_line() {
    let out = Run::corral_faulty(["run", "-v", "--log-format", "json", "--retries", "0"])
        .stdin("{\"task\": \"abort\"}\n{\"task\": \"echo\", \"input\": 2}\n")
        .output();
    out.expect_code(1);
    let logs: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| !l.starts_with("corral:"))
        .collect();
    assert!(!logs.is_empty());
    for line in logs {
        let value: Value =
            serde_json::from_str(line).unwrap_or_else(|e| out.fail(&format!("{line:?}: {e}")));
        assert!(value.get("level").is_some(), "{line}");
    }
    assert!(out.stderr.contains("worker started"));
    assert!(out.stderr.contains("crashed worker"));
}

#[test]
fn a_resume_that_completes_a_file_holding_failures_exits_1() {
    let dir = temp_dir();
    let line = |i: u64, task: &str| format!(r#"{{"id": {i}, "task": "{task}", "input": [{i}]}}"#);
    // The first run got as far as three jobs, one of which failed.
    let head = write_jobs(
        dir.path(),
        "head.jsonl",
        [
            line(1, "sum_squares"),
            line(2, "no_such_task"),
            line(3, "sum_squares"),
        ],
    );
    let all = write_jobs(
        dir.path(),
        "all.jsonl",
        (1..=6).map(|i| {
            line(
                i,
                if i == 2 {
                    "no_such_task"
                } else {
                    "sum_squares"
                },
            )
        }),
    );
    let results = dir.path().join("results.jsonl");
    Run::corral([
        "run".as_ref(),
        head.as_os_str(),
        "-o".as_ref(),
        results.as_os_str(),
    ])
    .output()
    .expect_code(1);
    // The rest succeeds, but the file the run completes holds a failure: status 1, said so.
    let out = Run::corral([
        "run".as_ref(),
        all.as_os_str(),
        "-o".as_ref(),
        results.as_os_str(),
        "--resume".as_ref(),
    ])
    .output();
    out.expect_code(1);
    assert!(
        out.stderr
            .contains("also holds 1 failure from earlier runs"),
        "{}",
        out.stderr
    );
    // What was skipped is said, and what ran.
    assert!(
        out.stderr
            .contains(": 3 jobs already have a result there, and are not run again"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("corral: 3 jobs: 3 ok, 0 failed"),
        "{}",
        out.stderr
    );
    assert_eq!(line_count(&results), 6);
    // A file without failures completes with 0.
    std::fs::remove_file(&results).unwrap();
    let ok = write_jobs(
        dir.path(),
        "ok.jsonl",
        (1..=3).map(|i| line(i, "sum_squares")),
    );
    for resume in [false, true] {
        let mut args = vec![
            "run".as_ref(),
            ok.as_os_str(),
            "-o".as_ref(),
            results.as_os_str(),
        ];
        if resume {
            args.push("--resume".as_ref());
        }
        Run::corral(args).output().expect_code(0);
    }
}

#[test]
fn sigterm_while_workers_are_starting_ends_the_run_without_waiting_the_grace() {
    let dir = temp_dir();
    let jobs = write_jobs(dir.path(), "jobs.jsonl", square_jobs(10, 0));
    // Workers that never say hello: nothing is in flight, so nothing is worth waiting for.
    let running = Run::corral([
        "run".as_ref(),
        "-j".as_ref(),
        "2".as_ref(),
        "--grace".as_ref(),
        "60s".as_ref(),
        "--worker-cmd".as_ref(),
        "sleep 600".as_ref(),
        jobs.as_os_str(),
    ])
    .start(dir.path());
    let workers = wait_for_workers(running.pid(), 2);
    signal(running.pid(), libc::SIGTERM);
    let out = running.wait(Duration::from_secs(10));
    out.expect_code(143);
    assert!(out.stderr.contains("stopped by SIGTERM"), "{}", out.stderr);
    let gone = wait_for(Duration::from_secs(2), || {
        workers.iter().all(|&w| !alive(w)).then_some(())
    });
    assert!(gone.is_some(), "the starting workers were left behind");
}

#[test]
fn progress_into_a_pipe_is_a_plain_line_that_comes_even_while_jobs_stall() {
    // --progress with stderr not a terminal: a line after a second, and every few seconds,
    // whether or not results come.
    let out = Run::corral(["run", "-j", "1", "--progress"])
        .stdin(r#"{"id":1,"task":"spin","input":1600}"#)
        .output();
    out.expect_code(0);
    let line = out
        .stderr
        .lines()
        .find(|l| l.starts_with("corral: progress: "))
        .unwrap_or_else(|| panic!("no progress line: {}", out.stderr));
    assert!(
        line.contains("0/1 jobs") && line.contains("0 failed"),
        "{line}"
    );
}
