//! Regression tests for faults a hostile user or a broken worker can cause: each must end in a
//! defined outcome (no hang, no panic, no lost or doubled result, no process left behind).
//! The item numbers are those of the list of faults in the hardening issue.

use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::util::{
    ChildGuard, Output, Run, Running, alive, all_children_of, bin, children_of, fault_worker,
    is_keeper, keeper_of, process_state, read_results, signal, square_jobs, temp_dir, wait_for,
    wait_for_workers, write_jobs,
};

fn stats(path: &std::path::Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).expect("stats written")).unwrap()
}

fn peak_mib(stats: &Value) -> f64 {
    stats["peak_rss_bytes"].as_f64().expect("peak known") / (1 << 20) as f64
}

/// Item 1: A worker that connects and then says nothing is killed at the start timeout.
#[test]
fn a_worker_that_connects_but_never_says_hello_is_killed_at_the_timeout() {
    let started = Instant::now();
    let out = Run::corral_faulty(["run", "-j", "2", "--start-timeout", "200ms"])
        .env("CORRAL_FAULT_START", "connect-silent")
        .stdin("{\"task\": \"echo\", \"input\": 1}\n")
        .deadline(Duration::from_secs(20))
        .output();
    out.expect_code(2);
    assert!(
        out.stderr.contains("did not say hello within 200ms"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("3 times in a row"), "{}", out.stderr);
    assert!(started.elapsed() < Duration::from_secs(10));
}

/// Bytes waiting to be read in the pipe `fd`.
fn bytes_waiting(fd: std::os::fd::RawFd) -> usize {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int through the pointer, which points at `n`.
    let rc = unsafe { libc::ioctl(fd, libc::FIONREAD, &mut n) };
    if rc == 0 { n as usize } else { 0 }
}

/// Item 2: A reader of the results that stops reading does not freeze the run: a stop signal and
/// the grace period still end it, and what could not be written is said.
#[test]
fn a_stalled_stdout_does_not_freeze_signals_or_the_grace_period() {
    let dir = temp_dir();
    let jobs = write_jobs(dir.path(), "jobs.jsonl", square_jobs(300_000, 0));
    let worker = fault_worker();
    // stdout is a pipe nobody reads: it fills after 64 KiB.
    let mut child = ChildGuard(
        Command::new(bin("corral"))
            .args(["run", "-j", "2", "--grace", "500ms", "--worker"])
            .arg(&worker)
            .arg(&jobs)
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(dir.path().join("err")).unwrap())
            .spawn()
            .unwrap(),
    );
    let pid = child.0.id();
    wait_for_workers(pid, 2);
    // The pipe is full and the workers idle once the backlog stops the input (idle workers
    // alone could also be workers still waiting for their first batch). A pipe is full once
    // its 16 pages are taken, which writes that end mid-page leave holding less than 64 KiB.
    let stdout = child.0.stdout.as_ref().unwrap().as_raw_fd();
    wait_for(Duration::from_secs(20), || {
        (bytes_waiting(stdout) >= 32 * 1024
            && children_of(pid)
                .iter()
                .all(|&w| process_state(w) == Some('S')))
        .then_some(())
    })
    .expect("workers go idle behind the stalled output");
    let stopped = Instant::now();
    signal(pid, libc::SIGTERM);
    let status = wait_for(Duration::from_secs(10), || child.0.try_wait().unwrap())
        .expect("corral ends within the grace period although nobody reads its output");
    let stderr = std::fs::read_to_string(dir.path().join("err")).unwrap();
    assert_eq!(status.code(), Some(143), "{stderr}");
    assert!(stopped.elapsed() < Duration::from_secs(5), "{stderr}");
    assert!(stderr.contains("results could not be written"), "{stderr}");
}

/// Item 3: A batch that cannot be sent (the worker closed its channel but lives on) gets the worker
/// killed instead of leaving it holding the batch forever.
#[test]
fn a_worker_that_cannot_be_sent_its_batch_is_killed_not_waited_for() {
    let out = Run::corral_faulty(["run", "-j", "1"])
        .env("CORRAL_FAULT_START", "drop-inbox")
        .stdin("{\"task\": \"echo\", \"input\": 1}\n")
        .deadline(Duration::from_secs(20))
        .output();
    out.expect_code(2);
    assert!(out.stderr.contains("cannot send a batch"), "{}", out.stderr);
}

/// Item 4: A worker that dies right after its hello is a start-up failure, never a panic.
#[test]
fn workers_that_die_right_after_hello_end_the_run_with_status_2_every_time() {
    for _ in 0..15 {
        let out = Run::corral_faulty(["run", "-j", "8"])
            .env("CORRAL_FAULT_START", "hello-then-exit")
            .stdin("{\"task\": \"echo\", \"input\": 1}\n")
            .deadline(Duration::from_secs(20))
            .output();
        out.expect_code(2);
        assert!(!out.stderr.contains("panicked"), "{}", out.stderr);
    }
}

/// Item 5: A closed stderr (a pipe whose reader is gone) costs the logs, not the run.
#[test]
fn a_closed_stderr_does_not_take_the_run_down() {
    let dir = temp_dir();
    let results = dir.path().join("results.jsonl");
    let worker = fault_worker();
    let print = "{\"id\": \"p\", \"task\": \"print\", \"input\": \"hi\"}".to_owned();
    let jobs = write_jobs(
        dir.path(),
        "jobs.jsonl",
        // 100 µs a job: the run lasts long enough for the hangup to come in the middle.
        square_jobs(2_000, 100).chain([print]),
    );
    for (extra, signal_it) in [(None, false), (Some("--progress"), false), (None, true)] {
        let mut command = Command::new(bin("corral"));
        command
            .args(["run", "-vv", "-j", "2", "--worker"])
            .arg(&worker)
            .arg("-o")
            .args([&results, &jobs])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if signal_it {
            // A hangup while stderr is gone, as when a terminal closes.
            command.arg("--keep-order");
        }
        let mut child = ChildGuard(command.spawn().unwrap());
        drop(child.0.stderr.take());
        if signal_it {
            wait_for_workers(child.0.id(), 2);
            signal(child.0.id(), libc::SIGHUP);
        }
        let status =
            wait_for(Duration::from_secs(30), || child.0.try_wait().unwrap()).expect("corral ends");
        let written = read_results(&results);
        if signal_it {
            assert_eq!(status.code(), Some(129));
            assert!(written.iter().all(|r| r["ok"] == true));
        } else {
            assert_eq!(status.code(), Some(0), "{extra:?}");
            assert_eq!(written.len(), 2_001);
        }
    }
}

/// Item 6: A `--max-job-bytes` past what a batch can carry is a usage error, not a panic later.
#[test]
fn a_max_job_bytes_over_the_limit_is_a_usage_error() {
    let out = Run::corral(["run", "--max-job-bytes", "5GiB"])
        .stdin("")
        .output();
    out.expect_code(2);
    assert!(out.stderr.contains("1.0 GiB"), "{}", out.stderr);
}

/// Item 7: Stopping at once under `--keep-order` still writes the results that were complete.
#[test]
fn a_second_signal_under_keep_order_writes_the_results_held_for_ordering() {
    let dir = temp_dir();
    let head = "{\"id\": 0, \"task\": \"square\", \"input\": {\"n\": 0, \"spin_us\": 60000000}}";
    let rest = (1..=3_000u64)
        .map(|i| format!(r#"{{"id": {i}, "task": "square", "input": {{"n": {i}}}}}"#));
    let jobs = write_jobs(
        dir.path(),
        "jobs.jsonl",
        std::iter::once(head.to_owned()).chain(rest),
    );
    let running = Run::corral_faulty(["run", "-j", "2", "--keep-order"])
        .args([jobs.as_os_str()])
        .start(dir.path());
    let pid = running.pid();
    let workers = wait_for_workers(pid, 2);
    // The head job keeps one worker busy; the other runs the rest and then waits.
    wait_for(Duration::from_secs(20), || {
        let states: Vec<_> = workers.iter().map(|&w| process_state(w)).collect();
        (states.contains(&Some('R')) && states.contains(&Some('S'))).then_some(())
    })
    .expect("one worker idle");
    std::thread::sleep(Duration::from_millis(100));
    signal(pid, libc::SIGTERM);
    std::thread::sleep(Duration::from_millis(50));
    signal(pid, libc::SIGTERM);
    let out = running.wait(Duration::from_secs(10));
    out.expect_code(143);
    let results = out.results();
    assert!(
        results.len() >= 2_900,
        "{} written: {}",
        results.len(),
        out.stderr
    );
    let ids: Vec<u64> = results.iter().map(|r| r["id"].as_u64().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "still in input order");
    assert!(!ids.contains(&0), "the head never finished");
    let not_run: u64 = out
        .stderr
        .split("corral: stopped by SIGTERM; ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| out.fail("the not-run count is said"));
    assert_eq!(results.len() as u64 + not_run, 3_001, "{}", out.stderr);
}

/// Item 8: Rejected lines behind a slow head under `--keep-order` are bounded by the window.
#[test]
fn keep_order_bounds_rejected_lines_behind_a_slow_head() {
    let dir = temp_dir();
    let head = "{\"id\": 0, \"task\": \"square\", \"input\": {\"n\": 3, \"spin_us\": 1500000}}";
    let bad = (0..200_000).map(|i| format!("not json {i} {}", "x".repeat(100)));
    let jobs = write_jobs(
        dir.path(),
        "jobs.jsonl",
        std::iter::once(head.to_owned()).chain(bad),
    );
    let stats_path = dir.path().join("stats.json");
    let out = Run::corral_faulty(["run", "-j", "2", "--keep-order"])
        .args(["--stats".as_ref(), stats_path.as_os_str(), jobs.as_os_str()])
        .output();
    out.expect_code(1);
    let results = out.results();
    assert_eq!(results.len(), 200_001);
    assert_eq!(results[0]["output"], 9);
    let peak = peak_mib(&stats(&stats_path));
    assert!(peak < 40.0, "peak {peak:.1} MiB");
}

/// Item 9 and 10: `--resume` reads back every id corral wrote, compared as written.
#[test]
fn resume_reads_back_any_id_it_wrote_and_tells_big_numbers_apart() {
    let dir = temp_dir();
    let results = dir.path().join("results.jsonl");
    let ids = [
        "1e400",
        "\"\\ud800\"",
        "\"\\u0061\"",
        "18446744073709551616",
        "-0",
    ];
    let line =
        |id: &str| format!("{{\"id\": {id}, \"task\": \"echo\", \"input\": 1, \"meta\": 1e999}}");
    let first = write_jobs(dir.path(), "first.jsonl", ids.iter().map(|id| line(id)));
    let run = |jobs: &std::path::Path| {
        Run::corral_faulty([
            "run".as_ref(),
            "-o".as_ref(),
            results.as_os_str(),
            "--resume".as_ref(),
        ])
        .args([jobs])
        .output()
    };
    // serde_json's Value cannot hold every id corral writes: count lines.
    let lines = || std::fs::read_to_string(&results).unwrap().lines().count();
    run(&first).expect_code(0);
    assert_eq!(lines(), 5);
    // Again: everything is finished, nothing torn, nothing run twice.
    let again = run(&first);
    again.expect_code(0);
    assert!(!again.stderr.contains("torn"), "{}", again.stderr);
    assert_eq!(lines(), 5);
    // A number that rounds to the same float as a finished one is another id; "a" is "\u0061".
    let second = write_jobs(
        dir.path(),
        "second.jsonl",
        ["18446744073709551617", "\"a\"", "18446744073709551616"]
            .iter()
            .map(|id| line(id)),
    );
    run(&second).expect_code(0);
    let text = std::fs::read_to_string(&results).unwrap();
    assert_eq!(text.lines().count(), 6, "{text}");
    assert!(
        text.lines()
            .last()
            .unwrap()
            .starts_with("{\"id\":18446744073709551617,")
    );
}

/// Item 11: A second run on a results file another run is writing is refused.
#[test]
fn a_second_run_on_the_same_results_file_is_refused() {
    let dir = temp_dir();
    let results = dir.path().join("results.jsonl");
    let jobs = write_jobs(dir.path(), "jobs.jsonl", square_jobs(50, 100_000));
    let args = [
        "run".as_ref(),
        jobs.as_os_str(),
        "-o".as_ref(),
        results.as_os_str(),
        "-j".as_ref(),
        "1".as_ref(),
        "--resume".as_ref(),
    ];
    let first_dir = dir.path().join("first");
    std::fs::create_dir(&first_dir).unwrap();
    let first = Run::corral_faulty(args).start(&first_dir);
    wait_for_workers(first.pid(), 1);
    let second = Run::corral_faulty(args).output();
    second.expect_code(2);
    assert!(
        second
            .stderr
            .contains("being written by another corral run"),
        "{}",
        second.stderr
    );
    assert_eq!(second.stdout, "");
    let plain = Run::corral_faulty(&args[..6]).output();
    plain.expect_code(2);
    signal(first.pid(), libc::SIGTERM);
    let out = first.wait(Duration::from_secs(30));
    out.expect_code(143);
    for result in read_results(&results) {
        assert_eq!(
            result["ok"], true,
            "the file was not truncated by the refused runs"
        );
    }
}

/// Item 12: `-o` naming an input file is refused before anything is truncated.
#[test]
fn an_output_that_is_an_input_is_refused_and_left_alone() {
    let dir = temp_dir();
    let jobs = write_jobs(dir.path(), "jobs.jsonl", square_jobs(10, 0));
    let before = std::fs::read_to_string(&jobs).unwrap();
    for resume in [false, true] {
        let out = Run::corral_faulty([
            "run".as_ref(),
            jobs.as_os_str(),
            "-o".as_ref(),
            jobs.as_os_str(),
        ])
        .args(resume.then_some("--resume"))
        .output();
        out.expect_code(2);
        assert!(out.stderr.contains("is also the input"), "{}", out.stderr);
        assert_eq!(std::fs::read_to_string(&jobs).unwrap(), before);
    }
}

/// Item 13: Resuming a large complete results file holds a fixed, small amount per id.
#[test]
fn resuming_a_complete_file_costs_little_memory_per_id() {
    let dir = temp_dir();
    let n = 200_000;
    let jobs = write_jobs(
        dir.path(),
        "jobs.jsonl",
        (0..n)
            .map(|i| format!(r#"{{"id": "job-{i:032}", "task": "square", "input": {{"n": 1}}}}"#)),
    );
    let results = dir.path().join("results.jsonl");
    let stats_path = dir.path().join("stats.json");
    let args = [
        "run".as_ref(),
        jobs.as_os_str(),
        "-o".as_ref(),
        results.as_os_str(),
        "--resume".as_ref(),
        "--stats".as_ref(),
        stats_path.as_os_str(),
    ];
    Run::corral_faulty(args).output().expect_code(0);
    Run::corral_faulty(args).output().expect_code(0);
    let stats = stats(&stats_path);
    assert_eq!(stats["jobs"], 0, "everything was finished");
    assert_eq!(read_results(&results).len(), n);
    let peak = peak_mib(&stats);
    // 200,000 ids of 38 bytes: about 10 MiB of digests and lines seen.
    assert!(peak < 40.0, "peak {peak:.1} MiB");
}

/// Item 14: A worker that prints a huge line without a newline costs bounded memory.
#[test]
fn a_huge_output_line_from_a_worker_is_cut_not_kept() {
    let dir = temp_dir();
    let stats_path = dir.path().join("stats.json");
    let out = Run::corral_faulty(["run", "-q"])
        .args(["--stats".as_ref(), stats_path.as_os_str()])
        .stdin("{\"id\": 1, \"task\": \"print_long\", \"input\": 96}\n")
        .output();
    out.expect_code(0);
    assert_eq!(out.results()[0]["output"], 96);
    let peak = peak_mib(&stats(&stats_path));
    assert!(peak < 48.0, "peak {peak:.1} MiB for a 96 MiB line");
    let out = Run::corral_faulty(["run"])
        .stdin("{\"id\": 1, \"task\": \"print_long\", \"input\": 1}\n")
        .output();
    assert!(
        out.stderr.contains("more bytes of this line not logged"),
        "{}",
        out.stderr
    );
}

/// A one-worker run whose job has started a child that hangs: the run, and the child's pid.
fn run_with_a_worker_child(dir: &Path) -> (Running, u32) {
    let pidfile = dir.join("child.pid");
    let job = format!(
        "{{\"task\": \"hang\", \"input\": {{\"pidfile\": {:?}}}}}",
        pidfile.display().to_string()
    );
    let jobs = write_jobs(dir, "jobs.jsonl", [job]);
    let running = Run::corral_faulty(["run", "-j", "1"])
        .args([jobs.as_os_str()])
        .start(dir);
    let child: u32 = wait_for(Duration::from_secs(10), || {
        std::fs::read_to_string(&pidfile).ok()?.trim().parse().ok()
    })
    .expect("the job started its child");
    (running, child)
}

/// Item 15: SIGKILL of corral takes its workers' children down too (through the keeper).
#[test]
fn sigkill_of_corral_leaves_no_child_of_a_worker_behind() {
    let dir = temp_dir();
    let (running, child) = run_with_a_worker_child(dir.path());
    let keeper = keeper_of(running.pid());
    signal(running.pid(), libc::SIGKILL);
    running.wait(Duration::from_secs(5));
    let gone = wait_for(Duration::from_secs(2), || {
        (!alive(child) && !alive(keeper)).then_some(())
    });
    if gone.is_none() {
        signal(child, libc::SIGKILL);
    }
    assert!(
        gone.is_some(),
        "the worker's child {child} (or the keeper) outlived corral"
    );
}

/// A keeper that dies while corral runs is replaced and told every group, so a later SIGKILL
/// of corral still takes the workers' children.
#[test]
fn a_keeper_killed_mid_run_is_replaced_and_still_takes_the_children() {
    let dir = temp_dir();
    let (running, child) = run_with_a_worker_child(dir.path());
    let first = keeper_of(running.pid());
    signal(first, libc::SIGKILL);
    let second = wait_for(Duration::from_secs(10), || {
        all_children_of(running.pid())
            .into_iter()
            .find(|&pid| pid != first && is_keeper(pid))
    })
    .expect("another keeper started");
    signal(running.pid(), libc::SIGKILL);
    let out = running.wait(Duration::from_secs(5));
    let gone = wait_for(Duration::from_secs(2), || {
        (!alive(child) && !alive(second)).then_some(())
    });
    if gone.is_none() {
        signal(child, libc::SIGKILL);
    }
    assert!(
        gone.is_some(),
        "the worker's child {child} outlived corral after its keeper was replaced"
    );
    assert!(
        out.stderr
            .contains("started another, and told it the 1 worker groups"),
        "the log says so: {}",
        out.stderr
    );
}

/// Item 16: A child that left its worker's process group does not keep the worker's log pipes
/// open in corral after the worker is gone: once reaped, corral holds none of the pipes the
/// escaped children still write to.
#[test]
fn an_escaped_child_does_not_keep_log_readers_alive() {
    use std::collections::HashSet;
    let dir = temp_dir();
    let escapes = 5;
    let lines = (0..escapes)
        .map(|i| {
            let pidfile = dir.path().join(format!("escaped-{i}.pid"));
            format!(
                "{{\"id\": {i}, \"task\": \"escape\", \"input\": {{\"pidfile\": {:?}}}}}",
                pidfile.display().to_string()
            )
        })
        .chain(["{\"id\": \"last\", \"task\": \"square\", \"input\": {\"n\": 2, \"spin_us\": 30000000}}".into()]);
    let jobs = write_jobs(dir.path(), "jobs.jsonl", lines);
    let running = Run::corral_faulty(["run", "-j", "1", "--timeout", "200ms", "--retries", "0"])
        .args([jobs.as_os_str()])
        .start(dir.path());
    let pid = running.pid();
    // The pipes each escaped child holds (its inherited stdout and stderr), taken as soon as
    // it is there: where corral can make a cgroup, the child dies with its worker, and with it
    // the pipes, which is then the end the test wants.
    let pipes = |pid: u32| -> HashSet<String> {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .map(|fds| {
                fds.flatten()
                    .filter_map(|fd| std::fs::read_link(fd.path()).ok())
                    .map(|link| link.display().to_string())
                    .filter(|link| link.starts_with("pipe:"))
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut escaped_pipes = HashSet::new();
    let escaped: Vec<u32> = (0..escapes)
        .map(|i| {
            let pidfile = dir.path().join(format!("escaped-{i}.pid"));
            let child = wait_for(Duration::from_secs(20), || {
                std::fs::read_to_string(&pidfile).ok()?.trim().parse().ok()
            })
            .expect("each escape job started its child");
            escaped_pipes.extend(pipes(child));
            child
        })
        .collect();
    let held = || pipes(pid).intersection(&escaped_pipes).count();
    let settled = wait_for(Duration::from_secs(10), || (held() == 0).then_some(()));
    let still = held();
    signal(pid, libc::SIGKILL);
    let _ = running.wait(Duration::from_secs(5));
    for &child in &escaped {
        // They escaped every group corral knows: only a cgroup would hold them.
        signal(child, libc::SIGKILL);
    }
    assert!(
        settled.is_some(),
        "corral still holds {still} pipes of escaped children"
    );
}

/// Where this machine's cgroup2 hierarchy is, when these tests may make cgroups in it (root).
fn cgroup2_for_tests() -> Option<std::path::PathBuf> {
    // SAFETY: getuid has no preconditions.
    if unsafe { libc::getuid() } != 0 {
        return None;
    }
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().find_map(|line| {
        let (before, after) = line.split_once(" - ")?;
        (after.starts_with("cgroup2 ")).then(|| before.split(' ').nth(4).map(Into::into))?
    })
}

/// Hardening item 17: where corral can make a cgroup, a child that left its worker's process
/// group (`setsid`) dies with the worker: at a timeout, and by the keeper when corral is
/// SIGKILLed.
#[test]
fn an_escaped_child_dies_with_its_worker_where_a_cgroup_can_be_made() {
    let Some(mount) = cgroup2_for_tests() else {
        eprintln!("skipped: needs root and a cgroup2 hierarchy, for corral to make a cgroup");
        return;
    };
    let escape = |dir: &Path| {
        let pidfile = dir.join("escaped.pid");
        let job = format!(
            "{{\"task\": \"escape\", \"input\": {{\"pidfile\": {:?}}}}}",
            pidfile.display().to_string()
        );
        (write_jobs(dir, "jobs.jsonl", [job]), pidfile)
    };
    let escaped_pid = |pidfile: &Path| -> u32 {
        wait_for(Duration::from_secs(10), || {
            std::fs::read_to_string(pidfile).ok()?.trim().parse().ok()
        })
        .expect("the job started its child")
    };
    let dies = |child: u32| {
        let gone = wait_for(Duration::from_secs(3), || (!alive(child)).then_some(()));
        if gone.is_none() {
            signal(child, libc::SIGKILL);
        }
        gone.is_some()
    };
    // A timeout.
    let dir = temp_dir();
    let (jobs, pidfile) = escape(dir.path());
    let running = Run::corral_faulty(["run", "-j", "1", "--timeout", "500ms", "--retries", "0"])
        .args([jobs.as_os_str()])
        .start(dir.path());
    let run_cgroup = mount.join(format!("corral-{}", running.pid()));
    let child = escaped_pid(&pidfile);
    assert!(
        run_cgroup.exists(),
        "corral made no cgroup at {}",
        run_cgroup.display()
    );
    let out = running.wait(Duration::from_secs(20));
    out.expect_code(1);
    assert!(
        dies(child),
        "the escaped child {child} outlived its timed-out worker"
    );
    assert!(!run_cgroup.exists(), "the run's cgroup is left behind");
    // A SIGKILL of corral: the keeper kills the run's cgroup.
    let dir = temp_dir();
    let (jobs, pidfile) = escape(dir.path());
    let running = Run::corral_faulty(["run", "-j", "1"])
        .args([jobs.as_os_str()])
        .start(dir.path());
    let child = escaped_pid(&pidfile);
    signal(running.pid(), libc::SIGKILL);
    let _ = running.wait(Duration::from_secs(5));
    assert!(
        dies(child),
        "the escaped child {child} outlived a SIGKILLed corral"
    );
}

/// Item 17: One worker that never says hello does not hold back the start of the others.
#[test]
fn a_silent_worker_does_not_delay_the_others() {
    let dir = temp_dir();
    let token = dir.path().join("first");
    let started = Instant::now();
    let running = Run::corral_faulty(["run", "-j", "2", "--start-timeout", "3s"])
        .args([write_jobs(dir.path(), "jobs.jsonl", square_jobs(100, 0)).as_os_str()])
        .env(
            "CORRAL_FAULT_START",
            &format!("first-hangs:{}", token.display()),
        )
        .start(dir.path());
    let all_done = wait_for(Duration::from_secs(20), || {
        let out = std::fs::read_to_string(dir.path().join("stdout")).ok()?;
        (out.lines().count() == 100).then(|| started.elapsed())
    })
    .expect("the results come");
    assert!(
        all_done < Duration::from_millis(2_500),
        "results took {all_done:?}: the second worker waited for the first's timeout"
    );
    running.wait(Duration::from_secs(20)).expect_code(0);
}

/// An unwritable `--stats` path is found before any job runs.
#[test]
fn an_unwritable_stats_path_is_refused_before_the_run() {
    let out = Run::corral_faulty(["run", "--stats", "/nonexistent/dir/stats.json"])
        .stdin("{\"task\": \"echo\", \"input\": 1}\n")
        .output();
    out.expect_code(2);
    assert_eq!(out.stdout, "", "no job ran");
    assert!(out.stderr.contains("--stats"), "{}", out.stderr);
}

/// After a write error, the summary counts only the results written.
#[test]
fn after_a_write_error_the_summary_counts_only_what_was_written() {
    let out = Run::corral_faulty(["run", "-o", "/dev/full"])
        .stdin(square_jobs(100, 0).map(|l| l + "\n").collect::<String>())
        .output();
    out.expect_code(2);
    assert!(
        out.stderr.contains("No space left on device")
            && out.stderr.contains("results were not written"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("corral: 0 jobs"), "{}", out.stderr);
}

/// Crashes blamed on their job are bounded by that job's retries, not the restart budget.
#[test]
fn many_crashing_jobs_fail_alone_without_ending_the_run() {
    let lines = (0..1_000).map(|i| {
        if i % 5 == 0 {
            format!("{{\"id\": {i}, \"task\": \"segfault\"}}")
        } else {
            format!("{{\"id\": {i}, \"task\": \"echo\", \"input\": {i}}}")
        }
    });
    let out = Run::corral_faulty(["run", "-j", "2", "--retries", "1"])
        .stdin(lines.map(|l| l + "\n").collect::<String>())
        .output();
    out.expect_code(1);
    let results = out.results_by_id();
    assert_eq!(results.len(), 1_000);
    let crashed = results
        .values()
        .filter(|r| r["error"]["kind"] == "crashed")
        .count();
    assert_eq!(crashed, 200, "{}", out.stderr);
}

/// An input that opens but cannot be read is reported once.
#[test]
fn an_input_read_error_is_said_once() {
    let dir = temp_dir();
    let out: Output = Run::corral_faulty(["run".as_ref(), dir.path().as_os_str()]).output();
    out.expect_code(2);
    assert_eq!(
        out.stderr.matches("cannot read").count(),
        1,
        "{}",
        out.stderr
    );
}
