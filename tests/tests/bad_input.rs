//! Bad input: every bad line gets its own error result with its line number, and the run goes
//! on.

use std::collections::HashMap;

use crate::util::{Lcg, Run, temp_dir};

#[test]
fn malformed_unknown_and_oversized_lines_each_get_their_error_and_the_rest_succeed() {
    let big = format!(
        r#"{{"id": "big", "task": "sum_squares", "input": [{}]}}"#,
        vec!["1"; 200].join(",")
    );
    let lines = [
        r#"{"id": 1, "task": "sum_squares", "input": [1, 2]}"#.to_owned(),
        r#"{"id": 2, "task": "sum_squares", "input": [1, 2"#.to_owned(),
        r#"{"id": 3, "task": "no_such_task", "input": 1}"#.to_owned(),
        big,
        r#"{"id": 5, "input": [1]}"#.to_owned(),
        r#"{"id": [6], "task": "sum_squares"}"#.to_owned(),
        r#"{"id": 7, "task": "sum_squares", "input": "not an array"}"#.to_owned(),
        r#"{"id": 8, "task": "sum_squares", "input": [3]}"#.to_owned(),
    ];
    let out = Run::corral(["run", "--max-job-bytes", "200"])
        .stdin(lines.join("\n"))
        .output();
    out.expect_code(1);
    let results = out.results_by_id();
    assert_eq!(results.len(), 8, "one result per line");
    let kind = |key: &str| {
        results[key]["error"]["kind"]
            .as_str()
            .unwrap_or("ok")
            .to_owned()
    };
    assert_eq!(results["1"]["output"], 5);
    assert_eq!(kind("line 2"), "bad_input");
    assert!(
        results["line 2"]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("column")
    );
    assert_eq!(kind("3"), "unknown_task");
    assert_eq!(results["3"]["line"], 3);
    assert_eq!(kind("line 4"), "too_large");
    assert!(
        results["line 4"]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("--max-job-bytes")
    );
    assert_eq!(kind("5"), "bad_input", "no task and no --task");
    assert_eq!(
        kind("line 6"),
        "bad_input",
        "an id must be a string or a number"
    );
    assert_eq!(kind("7"), "bad_input", "input does not fit the task");
    assert_eq!(results["8"]["output"], 9);
    assert!(
        out.stderr.contains("8 jobs: 2 ok, 6 failed"),
        "{}",
        out.stderr
    );
}

#[test]
fn every_line_of_random_good_and_broken_lines_gets_exactly_one_result() {
    // Lines of many lengths, some longer than a read block, some broken by a byte, some not
    // UTF-8, some too long, some blank (blank lines get no result), with LF or CRLF endings.
    let mut rng = Lcg(4242);
    let pieces: &[u8] = b"{}[],:\"\\ \t0-e.\xff\x01";
    let mut text = Vec::new();
    let mut answered = 0;
    let mut intact: Vec<(u64, i64)> = Vec::new();
    for i in 0..6_000u64 {
        let count = match rng.below(100) {
            0 => 30_000, // about 150 KB: longer than the limit and than a read block
            1..=3 => 2_000,
            _ => 1 + rng.below(8),
        };
        let values: Vec<i64> = (0..count).map(|_| rng.below(2001) as i64 - 1000).collect();
        let mut line =
            format!(r#"{{"id": {i}, "task": "sum_squares", "input": {values:?}}}"#).into_bytes();
        match rng.below(10) {
            0 | 1 => {
                for _ in 0..1 + rng.below(2) {
                    let at = rng.below(line.len() as u64) as usize;
                    let piece = pieces[rng.below(pieces.len() as u64) as usize];
                    match rng.below(3) {
                        0 => drop(line.remove(at)),
                        1 => line.insert(at, piece),
                        _ => line[at] = piece,
                    }
                }
            }
            2 if rng.below(10) == 0 => line = b"   ".to_vec(),
            _ if count <= 2_000 => intact.push((i, values.iter().map(|v| v * v).sum())),
            _ => {}
        }
        if line.iter().any(|b| !b.is_ascii_whitespace()) {
            answered += 1;
        }
        text.extend_from_slice(&line);
        text.extend_from_slice(if rng.below(4) == 0 { b"\r\n" } else { b"\n" });
    }
    let out = Run::corral(["run", "-j", "2", "--max-job-bytes", "64KiB"])
        .stdin(text)
        .output();
    out.expect_code(1);
    let results = out.results();
    assert_eq!(
        results.len(),
        answered,
        "one result per line that is not blank"
    );
    let mut outputs: HashMap<u64, Vec<i64>> = HashMap::new();
    for result in &results {
        if let (Some(id), Some(output)) = (result["id"].as_u64(), result["output"].as_i64()) {
            outputs.entry(id).or_default().push(output);
        }
    }
    for (id, expected) in intact {
        assert!(
            outputs.get(&id).is_some_and(|o| o.contains(&expected)),
            "job {id}: expected output {expected}, got {:?}",
            outputs.get(&id)
        );
    }
    let kinds: HashMap<&str, usize> = results.iter().fold(HashMap::new(), |mut kinds, r| {
        *kinds
            .entry(r["error"]["kind"].as_str().unwrap_or("ok"))
            .or_default() += 1;
        kinds
    });
    for kind in ["ok", "bad_input", "too_large"] {
        assert!(
            kinds.get(kind).is_some_and(|&n| n > 0),
            "no {kind} result: {kinds:?}"
        );
    }
}

#[test]
fn an_unreadable_input_file_is_a_usage_error() {
    let out = Run::corral(["run", "/nonexistent/jobs.jsonl"]).output();
    out.expect_code(2);
    assert!(
        out.stderr.contains("/nonexistent/jobs.jsonl"),
        "{}",
        out.stderr
    );
}

#[test]
fn a_bad_flag_is_a_usage_error() {
    let out = Run::corral(["run", "--retries", "many"]).output();
    out.expect_code(2);
    assert!(out.stderr.contains("--retries"), "{}", out.stderr);
    let out = Run::corral(["run", "--timeout", "soon"]).output();
    out.expect_code(2);
    assert!(
        out.stderr.contains("30s"),
        "the error shows examples: {}",
        out.stderr
    );
}

/// `line` without the two fields that differ from run to run, the worker's pid and the time;
/// corral writes them as `,"worker":N` and `,"ms":X`, which cannot occur inside a string.
fn without_pid_and_time(line: &str) -> String {
    let mut out = line.to_owned();
    for field in [",\"worker\":", ",\"ms\":"] {
        if let Some(at) = out.find(field) {
            let value = &out[at + field.len()..];
            let len = value
                .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                .unwrap_or(value.len());
            out.replace_range(at..at + field.len() + len, "");
        }
    }
    out
}

#[test]
fn hostile_input_gets_the_same_results_byte_for_byte_however_its_lines_are_read() {
    let dir = crate::util::temp_dir();
    let mut rng = Lcg(99);
    // Two files: lines are numbered across them.
    let mut files = Vec::new();
    for (name, count) in [("a.jsonl", 4_000u64), ("b.jsonl", 2_500)] {
        let mut text = Vec::new();
        for i in 0..count {
            let line: Vec<u8> = match rng.below(18) {
                0 => b"{\"id\": 1, \"task\": \"sum_squares\", \"input\": [1, 2".to_vec(),
                1 => Vec::new(),
                2 => b" \t ".to_vec(),
                3 => format!("{{\"id\":\"\u{e9}t\u{e9}-{name}-{i}-\u{1F980}\",\"task\":\"sum_squares\",\"input\":[{i}]}}")
                    .into_bytes(),
                4 => format!("{{\"id\":\"u{name}{i}\",\"task\":\"no_such_task\",\"input\":1,\"meta\":[{i}]}}").into_bytes(),
                5 => format!("{{\"id\":\"m{name}{i}\",\"input\":[1]}}").into_bytes(),
                6 => format!("{{\"id\":{{\"n\":{i}}},\"task\":\"sum_squares\"}}").into_bytes(),
                7 => format!(
                    "{{\"task\":\"sum_squares\",\"input\":[{}]}}",
                    vec!["7"; 40 + rng.below(2) as usize * 30_000].join(",")
                )
                .into_bytes(),
                8 => b"{\"id\":\"\xff\xfe\",\"task\":\"sum_squares\",\"input\":[]}".to_vec(),
                9 => format!("{{\"id\":\"e{name}{i}\",\"task\":\"exec\",\"input\":[\"true\"]}}").into_bytes(),
                10 => format!("{{\"id\":\"s{name}{i}\",\"task\":\"sum_squares\",\"input\":[4000000000]}}").into_bytes(),
                11 => "\u{1F980} not json".as_bytes().to_vec(),
                // An input a task reads as the line is checked, then something wrong after it.
                12 => format!("{{\"id\":\"t{name}{i}\",\"task\":\"sum_squares\",\"input\":[{i}, 2] ,}}").into_bytes(),
                13 => format!("{{\"id\":\"d{name}{i}\",\"task\":\"sum_squares\",\"input\":[1],\"input\":[2]}}").into_bytes(),
                14 => format!("{{\"id\":\"a{name}{i}\",\"input\":[{i},-3],\"task\":\"sum_squares\"}} x").into_bytes(),
                15 => format!("{{\"id\":\"f{name}{i}\",\"task\":\"sum_squares\",\"input\":[{i},-3.5]}}").into_bytes(),
                _ => format!(
                    "{{\"id\":\"{name}{i}\",\"task\":\"sum_squares\",\"input\":[{},{}],\"meta\":{{\"k\":\"\u{e9}\"}}}}",
                    rng.below(1000),
                    rng.below(1000)
                )
                .into_bytes(),
            };
            text.extend_from_slice(&line);
            text.extend_from_slice(if rng.below(3) == 0 { b"\r\n" } else { b"\n" });
        }
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        files.push(path.display().to_string());
    }
    let run = |how: &[&str]| {
        let mut args = vec!["run", "-j", "2", "--max-job-bytes", "2KiB"];
        args.extend(how);
        args.extend(files.iter().map(String::as_str));
        let out = Run::corral(args).output();
        out.expect_code(1);
        let mut lines: Vec<String> = out.stdout.lines().map(without_pid_and_time).collect();
        lines.sort();
        lines
    };
    // The old way: every line parsed on the thread that reads the input.
    let serial = run(&["--parse-threads", "0"]);
    assert!(serial.len() > 5_000, "{} results", serial.len());
    for kind in ["bad_input", "too_large", "unknown_task", "task_error"] {
        assert!(
            serial
                .iter()
                .any(|l| l.contains(&format!("\"kind\":\"{kind}\""))),
            "no {kind} result"
        );
    }
    // Blocks of raw lines that the workers read (the usual way), and lines parsed by a pool
    // of threads (as under --keep-order, which only changes the order).
    for how in [&[][..], &["--parse-threads", "3", "--keep-order"]] {
        let other = run(how);
        assert_eq!(other.len(), serial.len(), "{how:?}");
        for (a, b) in serial.iter().zip(&other) {
            assert_eq!(a, b, "{how:?}");
        }
    }
}

#[test]
fn edges_of_the_command_line_each_have_one_clear_error() {
    let dir = temp_dir();
    let refused = |args: &[&str], says: &str| {
        let out = Run::corral(args.iter().copied()).stdin("x\n").output();
        out.expect_code(2);
        assert!(out.stderr.contains(says), "{args:?}: {}", out.stderr);
        out
    };
    refused(
        &["run", "--lines", "--colsep", "", "--exec", "echo {1}"],
        "an empty separator would cut nothing",
    );
    refused(
        &["run", "--lines", "--capture", "1GiB", "--exec", "echo"],
        "over the most a result can carry",
    );
    let plain = dir.path().join("not-executable");
    std::fs::write(&plain, "echo hi\n").unwrap();
    let template = format!("{} {{}}", plain.display());
    refused(
        &["run", "--lines", "--exec", &template],
        "is there but is not executable",
    );
    let out = refused(&["run", "-o", "/nonexistent/dir/x"], "/nonexistent/dir/x");
    assert_eq!(
        out.stderr.matches("No such file or directory").count(),
        1,
        "said once: {}",
        out.stderr
    );
    let config = dir.path().join("corral.toml");
    std::fs::write(&config, "workers = 0\n").unwrap();
    let socket = dir.path().join("corral.sock");
    refused(
        &[
            "serve",
            "--socket",
            socket.to_str().unwrap(),
            "--config",
            config.to_str().unwrap(),
        ],
        "a service needs at least one worker",
    );
}
