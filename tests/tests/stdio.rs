//! Workers in any language, over the stdio transport: Python workers on the corral.worker
//! helper, a hand-written one that breaks the protocol, and the Rust library speaking stdio.
//! Supervision must be exactly the native one.

use std::time::Duration;

use corral_protocol::byte_string;
use serde_json::Value;
use serde_json::value::RawValue;

use crate::util::{
    Run, alive, bin, kill_workers_until_exit, python_worker, signal, temp_dir, wait_for,
    wait_for_workers, write_jobs,
};

fn square_lines(n: u64, task: &str) -> impl Iterator<Item = String> {
    let task = task.to_owned();
    (0..n).map(move |i| format!(r#"{{"id": {i}, "task": "{task}", "input": {i}}}"#))
}

#[test]
fn a_python_worker_runs_ten_thousand_jobs_exactly_once_despite_its_prints() {
    let dir = temp_dir();
    let jobs = write_jobs(dir.path(), "jobs.jsonl", square_lines(10_000, "square"));
    let out = Run::corral_python("py_worker", ["run", "-j", "2"])
        .args([jobs.as_os_str()])
        .output();
    out.expect_code(0);
    let results = out.results();
    assert_eq!(results.len(), 10_000, "one result per job");
    let by_id = out.results_by_id();
    assert_eq!(by_id.len(), 10_000, "no id twice");
    for i in 0..10_000i64 {
        let result = &by_id[&i.to_string()];
        if result["output"] != i * i || result["attempts"] != 1 {
            out.fail(&format!("job {i}: {result}"));
        }
    }
    assert!(
        out.stderr.contains("worker stderr: squaring 17"),
        "a print() of user code goes to the log:\n{}",
        out.stderr
    );
}

#[test]
fn the_initializer_runs_once_per_worker_before_any_job() {
    let jobs: Vec<String> = (0..200)
        .map(|i| format!(r#"{{"id": {i}, "task": "whoami"}}"#))
        .collect();
    let out = Run::corral_python("py_worker", ["run", "-j", "2"])
        .stdin(jobs.join("\n"))
        .output();
    out.expect_code(0);
    for result in out.results() {
        let me = &result["output"];
        assert_eq!(me["tag"], "ready", "{result}");
        assert_eq!(me["calls"], 1, "{result}");
        assert_eq!(me["initialized_by"], me["pid"], "{result}");
        assert_eq!(me["pid"], result["worker"], "{result}");
        let slot = me["slot"].as_str().unwrap();
        assert!(slot == "1" || slot == "2", "{result}");
    }
}

#[test]
fn python_workers_killed_at_random_during_fifty_thousand_jobs_lose_nothing() {
    let dir = temp_dir();
    let lines = (0..50_000u64)
        .map(|i| format!(r#"{{"id": {i}, "task": "spin_square", "input": [{i}, 40]}}"#));
    let jobs = write_jobs(dir.path(), "jobs.jsonl", lines);
    let running = Run::corral_python("py_worker", ["run", "-j", "2", "--retries", "50"])
        .args([jobs.as_os_str()])
        .start(dir.path());
    let supervisor = running.pid();
    let kills = kill_workers_until_exit(supervisor, 11, 50, 100);
    let out = running.wait(Duration::from_secs(120));
    out.expect_code(0);
    let results = out.results();
    assert_eq!(results.len(), 50_000, "one result line per job");
    let by_id = out.results_by_id();
    assert_eq!(by_id.len(), 50_000, "every id once");
    for i in 0..50_000i64 {
        let result = &by_id[&i.to_string()];
        if result["ok"] != true || result["output"] != i * i {
            out.fail(&format!("job {i}: {result}"));
        }
    }
    assert!(kills >= 5, "too few kills during the run ({kills})");
    eprintln!("{kills} Python workers killed");
}

#[test]
fn a_raising_task_is_a_task_error_with_the_python_type_and_message() {
    let out = Run::corral_python("py_worker", ["run", "-j", "1"])
        .stdin(r#"{"id": "x", "task": "fail", "input": "the disk is full"}"#)
        .output();
    out.expect_code(1);
    let result = &out.results()[0];
    assert_eq!(result["ok"], false);
    assert_eq!(result["error"]["kind"], "task_error", "{result}");
    assert_eq!(result["error"]["type"], "ValueError", "{result}");
    assert_eq!(result["error"]["message"], "the disk is full", "{result}");
    assert_eq!(result["attempts"], 1, "task errors are not retried");
    assert!(
        out.stderr.contains("Traceback") && out.stderr.contains("raise ValueError"),
        "the traceback is in the log:\n{}",
        out.stderr
    );
}

#[test]
fn a_python_worker_gets_and_gives_back_the_bytes_of_lines_that_are_not_utf8() {
    #[derive(serde::Deserialize)]
    struct Answer<'a> {
        ok: bool,
        #[serde(borrow)]
        input: &'a RawValue,
        output: Option<&'a RawValue>,
        error: Option<&'a RawValue>,
    }
    let bytes = |raw: &RawValue| byte_string::decode(raw.get().as_bytes()).unwrap();
    for task in ["fsbytes", "echo", "fail"] {
        let out = Run::corral_python("py_worker", ["run", "-j", "1", "--lines", "--task", task])
            .stdin(&b"caf\xe9.txt\n"[..])
            .output();
        let line = out
            .stdout
            .lines()
            .next()
            .unwrap_or_else(|| out.fail("no result"));
        let answer: Answer = serde_json::from_str(line).unwrap();
        assert_eq!(bytes(answer.input), b"caf\xe9.txt", "{line}");
        match task {
            "fsbytes" => assert_eq!(
                answer.output.unwrap().get(),
                "[99,97,102,233,46,116,120,116]"
            ),
            "echo" => assert_eq!(bytes(answer.output.unwrap()), b"caf\xe9.txt", "{line}"),
            _ => {
                assert!(!answer.ok, "{line}");
                let error = answer.error.unwrap().get();
                // A message is text: the byte that is not UTF-8 is U+FFFD there.
                assert!(error.contains("\"message\":\"caf\u{fffd}.txt\""), "{line}");
            }
        }
        out.expect_code(if task == "fail" { 1 } else { 0 });
    }
}

#[test]
fn a_worker_that_prints_garbage_is_replaced_and_the_job_retried() {
    let dir = temp_dir();
    let marker = dir.path().join("printed");
    let mut lines: Vec<String> = (0..50)
        .map(|i| format!(r#"{{"id": {i}, "task": "square", "input": {i}}}"#))
        .collect();
    lines.insert(
        20,
        r#"{"id": "g", "task": "square", "input": "garbage"}"#.into(),
    );
    let out = Run::corral([
        "run",
        "-j",
        "1",
        "--worker-cmd",
        &python_worker("raw_worker"),
    ])
    .env("RAW_MARKER", &marker.display().to_string())
    .stdin(lines.join("\n"))
    .output();
    out.expect_code(0);
    let by_id = out.results_by_id();
    assert_eq!(by_id.len(), 51);
    let g = &by_id["\"g\""];
    assert_eq!(g["ok"], true, "{g}");
    assert_eq!(g["attempts"], 2, "retried once: {g}");
    for i in 0..50i64 {
        assert_eq!(by_id[&i.to_string()]["output"], i * i);
    }
    // The answers given before the stray line stand: no job before it ran twice.
    let first = &by_id["0"]["worker"];
    for i in 0..20i64 {
        assert_eq!(&by_id[&i.to_string()]["worker"], first, "job {i} ran again");
    }
    assert_ne!(&g["worker"], first, "a replacement ran the job again");
    assert!(
        out.stderr.contains("debug: about to answer") && out.stderr.contains("not a response"),
        "the log says what it printed:\n{}",
        out.stderr
    );
}

#[test]
fn a_worker_answering_the_wrong_id_is_a_violation_not_a_result() {
    let out = Run::corral([
        "run",
        "-j",
        "1",
        "--retries",
        "1",
        "--worker-cmd",
        &python_worker("raw_worker"),
    ])
    .env("RAW_FAULT", "wrong-id")
    .stdin(r#"{"id": 1, "task": "square", "input": 3}"#)
    .output();
    out.expect_code(1);
    let result = &out.results()[0];
    assert_eq!(result["error"]["kind"], "crashed", "{result}");
    assert!(
        result["error"]["message"]
            .as_str()
            .unwrap()
            .contains("answered id \"not-the-id\" where 1 was next"),
        "{result}"
    );
}

#[test]
fn sigkill_of_corral_leaves_no_python_worker_alive_after_a_second() {
    let dir = temp_dir();
    // Jobs that keep the workers busy: they are not reading stdin, so its end does not stop
    // them; only the death signal does.
    let lines = (0..100u64)
        .map(|i| format!(r#"{{"id": {i}, "task": "spin_square", "input": [{i}, 30000000]}}"#));
    let jobs = write_jobs(dir.path(), "jobs.jsonl", lines);
    let running = Run::corral_python("py_worker", ["run", "-j", "2"])
        .args([jobs.as_os_str()])
        .start(dir.path());
    let supervisor = running.pid();
    let workers = wait_for_workers(supervisor, 2);
    // Wait until both have said hello and taken a job (their CPU time grows).
    let busy = wait_for(Duration::from_secs(20), || {
        let stderr = std::fs::read_to_string(dir.path().join("stderr")).unwrap_or_default();
        (stderr.matches("worker started").count() >= 2 || cpu_ticks(&workers) > 20).then_some(())
    });
    assert!(busy.is_some(), "the Python workers did not start");
    signal(supervisor, libc::SIGKILL);
    let out = running.wait(Duration::from_secs(5));
    assert_eq!(out.status.code(), None, "killed by a signal");
    let gone = wait_for(Duration::from_secs(1), || {
        workers.iter().all(|&pid| !alive(pid)).then_some(())
    });
    assert!(
        gone.is_some(),
        "Python workers {workers:?} outlived corral by more than a second"
    );
}

/// User plus system CPU time of these processes, in clock ticks.
fn cpu_ticks(pids: &[u32]) -> u64 {
    pids.iter()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/stat")).ok())
        .map(|stat| {
            stat[stat.rfind(')').unwrap() + 1..]
                .split_whitespace()
                .skip(11)
                .take(2)
                .filter_map(|t| t.parse::<u64>().ok())
                .sum::<u64>()
        })
        .sum()
}

#[test]
fn a_timeout_kills_the_python_worker_with_its_children() {
    let dir = temp_dir();
    let pidfile = dir.path().join("child.pid");
    let jobs = format!(
        "{{\"id\": \"h\", \"task\": \"hang\", \"input\": {}}}\n{{\"id\": 1, \"task\": \"square\", \"input\": 4}}",
        Value::from(pidfile.display().to_string())
    );
    let out = Run::corral_python(
        "py_worker",
        ["run", "-j", "1", "--timeout", "2s", "--retries", "0"],
    )
    .stdin(jobs)
    .output();
    out.expect_code(1);
    let by_id = out.results_by_id();
    assert_eq!(
        by_id["\"h\""]["error"]["kind"], "timeout",
        "{}",
        by_id["\"h\""]
    );
    assert_eq!(by_id["1"]["output"], 16);
    let child: u32 = std::fs::read_to_string(&pidfile)
        .expect("the task started its child")
        .trim()
        .parse()
        .unwrap();
    let gone = wait_for(Duration::from_secs(2), || (!alive(child)).then_some(()));
    assert!(gone.is_some(), "the hanging task's child {child} survived");
}

#[test]
fn start_up_failures_of_stdio_workers_are_configuration_errors() {
    for (fault, expected) in [
        (
            "bad-hello",
            "printed \"starting up...\" where its hello was expected",
        ),
        ("bad-version", "speaks stdio protocol version 99"),
    ] {
        let out = Run::corral(["run", "--worker-cmd", &python_worker("raw_worker")])
            .env("RAW_FAULT", fault)
            .stdin(r#"{"task": "square", "input": 2}"#)
            .output();
        out.expect_code(2);
        assert!(out.stderr.contains(expected), "{fault}:\n{}", out.stderr);
    }
    let out = Run::corral(["run", "--worker-cmd", "no-such-program --flag"])
        .stdin(r#"{"task": "square", "input": 2}"#)
        .output();
    out.expect_code(2);
    assert!(
        out.stderr
            .contains("worker binary no-such-program not found"),
        "{}",
        out.stderr
    );
    let out = Run::corral(["run", "--worker-cmd", "python3 'unclosed"])
        .stdin(r#"{"task": "square", "input": 2}"#)
        .output();
    out.expect_code(2);
    assert!(
        out.stderr.contains("cannot split --worker-cmd"),
        "{}",
        out.stderr
    );
}

#[test]
fn the_rust_worker_library_speaks_stdio_too() {
    let jobs: Vec<String> = (0..1000)
        .map(|i| format!(r#"{{"id": "j{i}", "task": "sum_squares", "input": [{i}, 1]}}"#))
        .chain([r#"{"id": "bad", "task": "sum_squares", "input": "x"}"#.to_owned()])
        .collect();
    let worker = shell_words::join([bin("corral-worker").display().to_string()]);
    let out = Run::corral(["run", "-j", "2", "--worker-cmd", &worker])
        .stdin(jobs.join("\n"))
        .output();
    out.expect_code(1);
    let by_id = out.results_by_id();
    assert_eq!(by_id.len(), 1001);
    for i in 0..1000i64 {
        assert_eq!(by_id[&format!("\"j{i}\"")]["output"], i * i + 1);
    }
    let bad = &by_id["\"bad\""];
    assert_eq!(bad["error"]["type"], "BadInput", "{bad}");
}

#[test]
fn a_poison_pill_in_a_python_worker_fails_alone_after_its_retries() {
    let mut lines: Vec<String> = (0..100)
        .map(|i| format!(r#"{{"id": {i}, "task": "poison", "input": {i}}}"#))
        .collect();
    lines.insert(
        50,
        r#"{"id": "p", "task": "poison", "input": "poison"}"#.into(),
    );
    let out = Run::corral_python("py_worker", ["run", "-j", "2", "--retries", "2"])
        .stdin(lines.join("\n"))
        .output();
    out.expect_code(1);
    let by_id = out.results_by_id();
    assert_eq!(by_id.len(), 101);
    let pill = &by_id["\"p\""];
    assert_eq!(pill["error"]["kind"], "crashed", "{pill}");
    assert_eq!(pill["error"]["signal"], "SIGABRT", "{pill}");
    assert_eq!(pill["attempts"], 3, "{pill}");
    for i in 0..100i64 {
        assert_eq!(by_id[&i.to_string()]["output"], i * i);
    }
}

#[test]
fn python_workers_are_recycled_by_closing_their_stdin() {
    let dir = temp_dir();
    let jobs = write_jobs(dir.path(), "jobs.jsonl", square_lines(1_000, "square"));
    let out = Run::corral_python(
        "py_worker",
        ["run", "-j", "2", "--max-jobs-per-worker", "300"],
    )
    .args([jobs.as_os_str()])
    .output();
    out.expect_code(0);
    let results = out.results();
    assert_eq!(results.len(), 1_000);
    let mut pids: Vec<u64> = results
        .iter()
        .map(|r| r["worker"].as_u64().unwrap())
        .collect();
    pids.sort_unstable();
    pids.dedup();
    assert!(
        pids.len() >= 4,
        "1,000 jobs at most 300 per worker need 4 workers: {pids:?}"
    );
    assert!(
        !out.stderr.contains("was killed by"),
        "recycled workers exit on their own:\n{}",
        out.stderr
    );
}

#[test]
fn a_worker_that_ignores_the_end_of_its_input_is_killed_after_the_exit_grace() {
    let started = std::time::Instant::now();
    let out = Run::corral([
        "run",
        "-j",
        "2",
        "--exit-grace",
        "300ms",
        "--worker-cmd",
        &python_worker("raw_worker"),
    ])
    .env("RAW_FAULT", "ignore-eof")
    .stdin(square_lines(20, "square").collect::<Vec<_>>().join("\n"))
    .output();
    out.expect_code(0);
    assert_eq!(out.results().len(), 20);
    assert!(
        out.stderr
            .contains("did not exit within 300ms of the end of its input"),
        "the log says why it was killed:\n{}",
        out.stderr
    );
    assert!(started.elapsed() < Duration::from_secs(20), "the run ended");
    for pid in out.results().iter().map(|r| r["worker"].as_u64().unwrap()) {
        assert!(!alive(pid as u32), "worker {pid} outlived the run");
    }

    // Recycled after every job: replacements wait for the lingering ones, which never pile up.
    let out = Run::corral([
        "run",
        "-j",
        "2",
        "--exit-grace",
        "300ms",
        "--max-jobs-per-worker",
        "1",
        "--worker-cmd",
        &python_worker("raw_worker"),
    ])
    .env("RAW_FAULT", "ignore-eof")
    .stdin(square_lines(8, "square").collect::<Vec<_>>().join("\n"))
    .output();
    out.expect_code(0);
    let results = out.results();
    assert_eq!(results.len(), 8);
    let mut pids: Vec<u64> = results
        .iter()
        .map(|r| r["worker"].as_u64().unwrap())
        .collect();
    pids.sort_unstable();
    pids.dedup();
    assert_eq!(pids.len(), 8, "one worker per job");
    for pid in pids {
        assert!(!alive(pid as u32), "worker {pid} outlived the run");
    }
}
