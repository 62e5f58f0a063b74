//! Supervision with the real binaries: crashes, kills from outside, poison pills, timeouts and
//! the death of the supervisor itself.

use std::time::Duration;

use crate::util::{
    Run, alive, kill_workers_until_exit, signal, square_jobs, temp_dir, wait_for, wait_for_workers,
    write_jobs,
};

#[test]
fn workers_killed_at_random_moments_lose_nothing_and_duplicate_nothing() {
    killed_at_random(2);
}

/// Workers past the first one per CPU have their answers read in the pool's receiver set,
/// not on a thread of their own: two more than CPUs, so that both ways are used at once.
#[test]
fn workers_whose_answers_share_one_thread_killed_at_random_lose_nothing() {
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    killed_at_random(cpus + 2);
}

fn killed_at_random(workers: usize) {
    let dir = temp_dir();
    let jobs = write_jobs(dir.path(), "jobs.jsonl", square_jobs(50_000, 40));
    // Generous retries: an outside kill blames the job that was running, and this test is about
    // exactly-once delivery, not the poison-pill limit.
    let workers = workers.to_string();
    let running = Run::corral_faulty(["run", "-j", &workers, "--retries", "50"])
        .args([jobs.as_os_str()])
        .start(dir.path());
    let supervisor = running.pid();
    let kills = kill_workers_until_exit(supervisor, 2024, 20, 60);
    let out = running.wait(Duration::from_secs(60));
    out.expect_code(0);
    let results = out.results_by_id();
    assert_eq!(results.len(), 50_000);
    for i in 0..50_000i64 {
        let result = &results[&i.to_string()];
        if result["ok"] != true || result["output"] != i * i {
            out.fail(&format!("job {i}: {result}"));
        }
    }
    assert!(
        kills >= 5,
        "the run was too short to kill workers during it ({kills} kills)"
    );
    let retried = results
        .values()
        .filter(|r| r["attempts"].as_u64() > Some(1))
        .count();
    eprintln!("{kills} kills, {retried} jobs retried");
}

#[test]
fn a_poison_pill_fails_after_one_plus_retries_attempts_and_everything_else_succeeds() {
    let mut lines: Vec<String> = square_jobs(200, 0).collect();
    lines.insert(
        100,
        r#"{"id": "poison", "task": "segfault", "input": null}"#.to_owned(),
    );
    let out = Run::corral_faulty(["run", "-j", "2", "--retries", "2"])
        .stdin(lines.join("\n"))
        .output();
    out.expect_code(1);
    let results = out.results_by_id();
    assert_eq!(results.len(), 201);
    let poison = &results["\"poison\""];
    assert_eq!(poison["ok"], false);
    assert_eq!(poison["error"]["kind"], "crashed");
    assert_eq!(poison["error"]["signal"], "SIGSEGV");
    assert_eq!(poison["attempts"], 3);
    for i in 0..200i64 {
        assert_eq!(results[&i.to_string()]["output"], i * i);
    }
}

#[test]
fn abort_and_exit_are_crashes_with_their_signal_or_status() {
    let jobs = "{\"id\": \"a\", \"task\": \"abort\"}\n{\"id\": \"e\", \"task\": \"exit\", \"input\": 7}\n{\"id\": \"ok\", \"task\": \"echo\", \"input\": 1}\n";
    let out = Run::corral_faulty(["run", "-j", "1", "--retries", "0"])
        .stdin(jobs)
        .output();
    out.expect_code(1);
    let results = out.results_by_id();
    assert_eq!(results["\"a\""]["error"]["kind"], "crashed");
    assert_eq!(results["\"a\""]["error"]["signal"], "SIGABRT");
    assert_eq!(results["\"e\""]["error"]["kind"], "crashed");
    assert_eq!(results["\"e\""]["error"]["exit_code"], 7);
    assert_eq!(results["\"ok\""]["output"], 1);
}

#[test]
fn a_hanging_job_times_out_and_its_workers_children_are_gone_too() {
    let dir = temp_dir();
    let pidfile = dir.path().join("child.pid");
    let jobs = format!(
        "{{\"id\": \"hang\", \"task\": \"hang\", \"input\": {{\"pidfile\": {:?}}}}}\n{}\n",
        pidfile.display().to_string(),
        square_jobs(20, 0).collect::<Vec<_>>().join("\n")
    );
    let out = Run::corral_faulty(["run", "-j", "2", "--timeout", "300ms", "--retries", "0"])
        .stdin(jobs)
        .deadline(Duration::from_secs(30))
        .output();
    out.expect_code(1);
    let results = out.results_by_id();
    assert_eq!(results.len(), 21);
    let hang = &results["\"hang\""];
    assert_eq!(hang["error"]["kind"], "timeout", "{hang}");
    assert!(hang["error"]["message"].as_str().unwrap().contains("300ms"));
    for i in 0..20i64 {
        assert_eq!(results[&i.to_string()]["output"], i * i);
    }
    let child: u32 = std::fs::read_to_string(&pidfile)
        .expect("the task started its child")
        .trim()
        .parse()
        .unwrap();
    let gone = wait_for(Duration::from_secs(2), || (!alive(child)).then_some(()));
    assert!(
        gone.is_some(),
        "the hanging job's child process {child} survived"
    );
}

#[test]
fn sigkill_of_the_supervisor_leaves_no_worker_behind() {
    let dir = temp_dir();
    let jobs = write_jobs(dir.path(), "jobs.jsonl", square_jobs(100_000, 1000));
    let running = Run::corral_faulty(["run", "-j", "2"])
        .args([jobs.as_os_str()])
        .start(dir.path());
    let supervisor = running.pid();
    let workers = wait_for_workers(supervisor, 2);
    for &pid in &workers {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let pgrp = stat[stat.rfind(')').unwrap() + 1..]
            .split_whitespace()
            .nth(2)
            .unwrap()
            .to_owned();
        assert_eq!(
            pgrp,
            pid.to_string(),
            "each worker leads its own process group"
        );
    }
    signal(supervisor, libc::SIGKILL);
    let out = running.wait(Duration::from_secs(5));
    assert_eq!(out.status.code(), None, "killed by a signal");
    let gone = wait_for(Duration::from_secs(1), || {
        workers.iter().all(|&pid| !alive(pid)).then_some(())
    });
    assert!(
        gone.is_some(),
        "workers {workers:?} outlived the supervisor by more than a second"
    );
}
