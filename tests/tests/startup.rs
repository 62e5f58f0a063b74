//! Workers that cannot start end the run with a clear message and status 2, quickly, never a
//! respawn loop.

use std::time::Duration;

use crate::util::Run;

const JOBS: &str = "{\"task\": \"echo\", \"input\": 1}\n{\"task\": \"echo\", \"input\": 2}\n";

fn with_fault(mode: &str, extra: &[&str]) -> crate::util::Output {
    Run::corral_faulty(["run", "-j", "2"])
        .args(extra)
        .env("CORRAL_FAULT_START", mode)
        .stdin(JOBS)
        .deadline(Duration::from_secs(30))
        .output()
}

#[test]
fn a_missing_worker_binary_exits_2_naming_the_path_within_5_seconds() {
    let out = Run::corral(["run", "--worker", "/nonexistent/corral-worker-x"])
        .stdin(JOBS)
        .deadline(Duration::from_secs(5))
        .output();
    out.expect_code(2);
    assert!(
        out.stderr.contains("/nonexistent/corral-worker-x"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("not found"), "{}", out.stderr);
    assert_eq!(out.stdout, "");
}

#[test]
fn a_worker_that_exits_before_hello_stops_the_run() {
    let out = with_fault("exit", &[]);
    out.expect_code(2);
    assert!(
        out.stderr
            .contains("exited with status 3 before saying hello"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("3 times in a row"), "{}", out.stderr);
}

#[test]
fn a_worker_that_never_says_hello_stops_the_run() {
    let out = with_fault("hang", &["--start-timeout", "200ms"]);
    out.expect_code(2);
    assert!(
        out.stderr.contains("did not say hello within 200ms"),
        "{}",
        out.stderr
    );
}

#[test]
fn a_wrong_protocol_version_stops_the_run_at_once() {
    let out = with_fault("bad-version", &[]);
    out.expect_code(2);
    assert!(out.stderr.contains("protocol version"), "{}", out.stderr);
}

#[test]
fn a_wrong_nonce_stops_the_run_at_once() {
    let out = with_fault("bad-nonce", &[]);
    out.expect_code(2);
    assert!(out.stderr.contains("wrong nonce"), "{}", out.stderr);
}

#[test]
fn a_worker_that_sends_garbage_is_killed_and_a_broken_worker_ends_the_run() {
    let out = with_fault("garbage", &[]);
    out.expect_code(2);
    assert!(out.stderr.contains("malformed message"), "{}", out.stderr);
    assert!(out.stderr.contains("3 times in a row"), "{}", out.stderr);
}
