//! `corral run` on healthy jobs: exactly one correct result per job, records as documented.

use crate::util::{Lcg, Run, bin, temp_dir, write_jobs};

fn sum_squares(values: &[i64]) -> i64 {
    values.iter().map(|v| v * v).sum()
}

#[test]
fn ten_thousand_jobs_give_ten_thousand_correct_results() {
    let dir = temp_dir();
    let mut rng = Lcg(7);
    let inputs: Vec<Vec<i64>> = (0..10_000)
        .map(|_| (0..8).map(|_| rng.below(2001) as i64 - 1000).collect())
        .collect();
    let jobs = write_jobs(
        dir.path(),
        "jobs.jsonl",
        inputs.iter().enumerate().map(|(i, input)| {
            format!(r#"{{"id": "job-{i}", "task": "sum_squares", "input": {input:?}, "meta": {{"i": {i}}}}}"#)
        }),
    );
    let out = Run::corral(["run", "-j", "2"])
        .stdin(std::fs::read(&jobs).unwrap())
        .output();
    out.expect_code(0);
    let results = out.results_by_id();
    assert_eq!(results.len(), 10_000);
    for (i, input) in inputs.iter().enumerate() {
        let result = &results[&format!("\"job-{i}\"")];
        assert_eq!(result["ok"], true, "{result}");
        assert_eq!(result["output"], sum_squares(input), "{result}");
        assert_eq!(result["attempts"], 1);
        assert_eq!(result["meta"]["i"], i, "meta is echoed");
        assert!(result["worker"].as_u64().unwrap() > 0);
        assert!(result["ms"].as_f64().unwrap() >= 0.0);
    }
    assert!(
        out.stderr.contains("10000 jobs: 10000 ok, 0 failed"),
        "{}",
        out.stderr
    );
}

#[test]
fn files_are_read_in_order_with_ids_defaulting_to_line_numbers_and_output_to_a_file() {
    let dir = temp_dir();
    let first = write_jobs(
        dir.path(),
        "a.jsonl",
        [r#"{"input": [1, 2]}"#.to_owned(), String::new()],
    );
    let second = write_jobs(dir.path(), "b.jsonl", [r#"{"input": [3]}"#.to_owned()]);
    let results = dir.path().join("results.jsonl");
    let out = Run::corral(["run", "--task", "sum_squares", "-o"])
        .args([results.as_os_str(), first.as_os_str(), second.as_os_str()])
        .output();
    out.expect_code(0);
    assert_eq!(out.stdout, "", "results go to the file");
    let text = std::fs::read_to_string(&results).unwrap();
    let mut outputs: Vec<(u64, i64)> = text
        .lines()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap())
        .map(|r| (r["id"].as_u64().unwrap(), r["output"].as_i64().unwrap()))
        .collect();
    outputs.sort();
    assert_eq!(
        outputs,
        [(1, 5), (3, 9)],
        "line 2 of the first file is blank and counted"
    );
}

#[test]
fn crlf_line_endings_and_blank_lines_work() {
    let input = "{\"id\":1,\"task\":\"sum_squares\",\"input\":[2]}\r\n\r\n   \r\n{\"id\":2,\"task\":\"primes\",\"input\":100}\r\n";
    let out = Run::corral(["run"]).stdin(input).output();
    out.expect_code(0);
    let results = out.results_by_id();
    assert_eq!(results.len(), 2);
    assert_eq!(results["1"]["output"], 4);
    assert_eq!(results["2"]["output"], 25);
}

#[test]
fn lines_mode_hashes_each_path() {
    let dir = temp_dir();
    let a = dir.path().join("a.txt");
    std::fs::write(&a, "abc").unwrap();
    let input = format!("{}\n/nonexistent/corral-file\n", a.display());
    let out = Run::corral(["run", "--lines", "--task", "sha256"])
        .stdin(input)
        .output();
    out.expect_code(1);
    let results = out.results_by_id();
    assert_eq!(
        results["1"]["output"],
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
    assert_eq!(results["2"]["error"]["kind"], "task_error");
    assert!(
        results["2"]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("/nonexistent/corral-file")
    );
}

#[test]
fn task_errors_and_panics_are_results_and_the_worker_keeps_serving() {
    let jobs = [
        r#"{"id": 1, "task": "panic", "input": "boom"}"#,
        r#"{"id": 2, "task": "fail", "input": "no luck"}"#,
        r#"{"id": 3, "task": "square", "input": {"n": 3}}"#,
        r#"{"id": 4, "task": "square", "input": "not an object"}"#,
        r#"{"id": 5, "task": "print", "input": "to stdout"}"#,
    ]
    .join("\n");
    let out = Run::corral_faulty(["run", "-j", "1"]).stdin(jobs).output();
    out.expect_code(1);
    let results = out.results_by_id();
    assert_eq!(
        results.len(),
        5,
        "the forged line the worker printed is not a result"
    );
    assert_eq!(results["1"]["error"]["kind"], "panic");
    assert_eq!(results["1"]["error"]["message"], "boom");
    assert_eq!(results["2"]["error"]["kind"], "task_error");
    assert_eq!(results["2"]["error"]["message"], "no luck");
    assert_eq!(results["3"]["output"], 9);
    assert_eq!(results["4"]["error"]["kind"], "bad_input");
    assert_eq!(results["5"]["output"], "to stdout");
    let pids: std::collections::HashSet<u64> = results
        .values()
        .map(|r| r["worker"].as_u64().unwrap())
        .collect();
    assert_eq!(pids.len(), 1, "one worker served every job: {pids:?}");
    let pid = pids.iter().next().unwrap();
    for logged in [
        "worker stdout: to stdout",
        "worker stderr: note on stderr: to stdout",
    ] {
        let line = out.stderr.lines().find(|l| l.contains(logged));
        let line = line.unwrap_or_else(|| out.fail(&format!("{logged:?} is not logged")));
        assert!(
            line.contains(&format!("pid={pid}")),
            "logged with the worker's pid: {line}"
        );
    }
}

#[test]
fn help_explains_the_flags_with_examples() {
    let out = Run::corral(["run", "--help"]).output();
    out.expect_code(0);
    for needle in [
        "--timeout",
        "--retries",
        "--worker",
        "--max-job-bytes",
        "-j",
        "Examples:",
        "Exit status",
    ] {
        assert!(
            out.stdout.contains(needle),
            "--help lacks {needle}:\n{}",
            out.stdout
        );
    }
}

#[test]
fn a_worker_run_by_hand_explains_itself() {
    let out = Run::program(&bin("corral-worker")).output();
    out.expect_code(2);
    assert!(out.stderr.contains("corral run --worker"), "{}", out.stderr);
    assert!(out.stderr.contains("sum_squares"), "{}", out.stderr);
}

#[test]
fn a_worker_whose_supervisor_is_gone_exits_at_once() {
    // Started as if by a supervisor that is not (or no longer) its parent: it must not linger.
    let out = Run::program(&bin("corral-worker"))
        .env("CORRAL_BOOTSTRAP", "/nonexistent/socket")
        .env("CORRAL_NONCE", "0000000000000001")
        .env("CORRAL_SUPERVISOR_PID", "1")
        .deadline(std::time::Duration::from_secs(10))
        .output();
    out.expect_code(2);
    assert!(
        out.stderr.contains("supervisor (pid 1) is gone"),
        "{}",
        out.stderr
    );
}

#[test]
fn a_named_pipe_given_as_input_is_opened_once_and_read_to_its_end() {
    // `mkfifo p; producer > p & corral run p`: a check that opened and closed the pipe first
    // killed the producer with SIGPIPE and left corral waiting for a writer forever.
    let dir = temp_dir();
    let fifo = dir.path().join("jobs.fifo");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("mkfifo runs");
    assert!(made.success());
    let n = 300_000;
    let producer = {
        let fifo = fifo.clone();
        std::thread::spawn(move || -> std::io::Result<u64> {
            use std::io::Write;
            let mut out = std::io::BufWriter::new(std::fs::File::create(&fifo)?);
            for i in 0..n {
                writeln!(
                    out,
                    r#"{{"id": {i}, "task": "sum_squares", "input": [{i}]}}"#
                )?;
            }
            out.flush()?;
            Ok(n)
        })
    };
    let out = Run::corral([
        "run".as_ref(),
        "-j".as_ref(),
        "2".as_ref(),
        fifo.as_os_str(),
    ])
    .deadline(std::time::Duration::from_secs(60))
    .output();
    out.expect_code(0);
    assert_eq!(
        producer
            .join()
            .unwrap()
            .expect("the producer wrote every line"),
        n
    );
    let results = out.results();
    assert_eq!(results.len(), n as usize);
    let mut ids: Vec<u64> = results.iter().map(|r| r["id"].as_u64().unwrap()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), n as usize, "every line once");
}

#[test]
fn a_run_of_one_job_says_job_not_jobs() {
    let out = Run::corral(["run", "-j", "1"])
        .stdin("{\"task\": \"sum_squares\", \"input\": [1]}\n")
        .output();
    out.expect_code(0);
    assert!(
        out.stderr
            .contains("corral: 1 job: 1 ok, 0 failed; 0 restarts, 0 recycled"),
        "{}",
        out.stderr
    );
}
