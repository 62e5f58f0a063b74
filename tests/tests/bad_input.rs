//! Bad input: every bad line gets its own error result with its line number, and the run goes
//! on.

use crate::util::Run;

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
