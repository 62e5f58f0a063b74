//! `corral mux`, the engine of a library's pool: many calls on one pipe, each answered in
//! full, one cancelled after its end dropping its queued jobs, and workers that cannot start
//! reported on the pipe.

use std::collections::HashMap;
use std::fmt::Write;

use crate::util::Run;

fn call(number: u64, lines: &str) -> String {
    format!("{{\"corral\":\"call\",\"call\":{number}}}\n{lines}")
}

fn jobs(call: u64, n: u64, task: &str, input: &str) -> String {
    (0..n).fold(String::new(), |mut out, i| {
        let id = (call << 32) + i;
        let _ = writeln!(out, "{{\"id\":{id},\"task\":\"{task}\",\"input\":{input}}}");
        out
    })
}

#[test]
fn calls_interleaved_on_one_pipe_each_get_exactly_their_results() {
    let mut input = String::new();
    // Lines before any call line are call 0's.
    input += &jobs(0, 3, "sum_squares", "[2]");
    for round in 0..20 {
        for number in 1..=5 {
            let first = (number << 32) + round * 10;
            let lines: String = (first..first + 10)
                .map(|id| format!("{{\"id\":{id},\"task\":\"sum_squares\",\"input\":[3]}}\n"))
                .collect();
            input += &call(number, &lines);
        }
    }
    for number in 1..=5 {
        input += &format!("{{\"corral\":\"end\",\"call\":{number}}}\n");
    }
    input += &call(6, "not json\n");
    let out = Run::corral(["mux", "-j", "2"]).stdin(input).output();
    out.expect_code(0);
    let mut per_call: HashMap<u64, Vec<u64>> = HashMap::new();
    let mut rejected = 0;
    for result in out.results() {
        match result["id"].as_u64() {
            Some(id) => {
                assert_eq!(result["ok"], true, "{result}");
                per_call.entry(id >> 32).or_default().push(id & 0xffff_ffff);
            }
            None => {
                assert_eq!(result["error"]["kind"], "bad_input", "{result}");
                rejected += 1;
            }
        }
    }
    assert_eq!(rejected, 1);
    assert_eq!(per_call.remove(&0).map(|ids| ids.len()), Some(3));
    for number in 1..=5 {
        let mut ids = per_call.remove(&number).expect("every call answered");
        ids.sort_unstable();
        assert_eq!(ids, (0..200).collect::<Vec<_>>(), "call {number}");
    }
}

#[test]
fn a_call_cancelled_after_its_end_drops_its_queued_jobs() {
    let mut input = call(1, &jobs(1, 200, "spin", "50"));
    input += "{\"corral\":\"end\",\"call\":1}\n";
    input += "{\"corral\":\"cancel\",\"call\":1}\n";
    input += &call(2, &jobs(2, 1, "sum_squares", "[4]"));
    input += "{\"corral\":\"end\",\"call\":2}\n";
    let out = Run::corral(["mux", "-j", "1"]).stdin(input).output();
    out.expect_code(0);
    let results = out.results();
    let cancelled = results
        .iter()
        .filter(|r| r["id"].as_u64().is_some_and(|id| id >> 32 == 1))
        .count();
    assert!(
        cancelled < 200,
        "the cancelled call ran all its {cancelled} jobs"
    );
    assert!(
        results
            .iter()
            .any(|r| r["id"] == 2u64 << 32 && r["output"] == 16),
        "the other call is answered"
    );
}

#[test]
fn workers_that_cannot_start_are_said_on_the_pipe_with_status_2() {
    let out = Run::corral(["mux", "-j", "1", "--worker", "/nonexistent/worker"])
        .stdin(call(1, &jobs(1, 1, "sum_squares", "[1]")))
        .output();
    out.expect_code(2);
    let last = out.stdout.lines().last().expect("a line").to_owned();
    let said: serde_json::Value = serde_json::from_str(&last).expect("JSON");
    assert_eq!(said["corral"], "error", "{last}");
    assert!(
        said["message"].as_str().unwrap().contains("not found"),
        "{last}"
    );
}
