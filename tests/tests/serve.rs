//! `corral serve` with its clients `corral submit` and `corral status`: many clients on one
//! pool, each getting exactly its own results; clients that vanish; a service stopped, killed
//! or reloaded under load; who may connect; the limits; and the systemd protocols, with a
//! real datagram socket as NOTIFY_SOCKET and socket activation by systemd-socket-activate.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::util::*;

/// A service running in the background; killed if dropped while still running.
struct Service {
    running: Running,
    socket: PathBuf,
}

impl Service {
    /// `corral serve --socket DIR/corral.sock` with these arguments, once it answers.
    fn start<S: AsRef<std::ffi::OsStr>>(dir: &Path, args: impl IntoIterator<Item = S>) -> Service {
        let socket = dir.join("corral.sock");
        let log = dir.join("service");
        std::fs::create_dir_all(&log).unwrap();
        let running = Run::corral(["serve", "--socket"])
            .args([&socket])
            .args(args)
            .start(&log);
        let service = Service { running, socket };
        service.wait_until_serving();
        service
    }

    fn wait_until_serving(&self) {
        wait_for(Duration::from_secs(20), || {
            self.status().filter(|s| s["ready"].as_u64() >= Some(1))
        })
        .unwrap_or_else(|| panic!("the service did not start: {}", self.log()));
    }

    fn pid(&self) -> u32 {
        self.running.pid()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.socket.with_file_name("service").join("stderr"))
            .unwrap_or_default()
    }

    /// `corral status --json`, if the service answers.
    fn status(&self) -> Option<Value> {
        let out = Run::corral(["status", "--json", "--socket"])
            .args([&self.socket])
            .deadline(Duration::from_secs(20))
            .output();
        if !out.status.success() {
            return None;
        }
        serde_json::from_str(out.stdout.trim()).ok()
    }

    fn submit<S: AsRef<std::ffi::OsStr>>(&self, args: impl IntoIterator<Item = S>) -> Run {
        Run::corral(["submit", "--socket"])
            .args([&self.socket])
            .args(args)
    }

    /// Sends SIGTERM and waits for a clean exit.
    fn stop(self) -> Output {
        signal(self.pid(), libc::SIGTERM);
        let out = self.running.wait(Duration::from_secs(30));
        out.expect_code(0);
        out
    }
}

/// Job lines of the built-in `sum_squares` task, ids `{tag}-0` and on.
fn tagged_jobs(tag: &str, n: u64) -> impl Iterator<Item = String> + '_ {
    (0..n).map(move |i| format!(r#"{{"id":"{tag}-{i}","task":"sum_squares","input":[{i},2,3]}}"#))
}

/// The ids of result lines, with how often each came.
fn id_counts(results: &[Value]) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for r in results {
        let id = match &r["id"] {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        *counts.entry(id).or_insert(0) += 1;
    }
    counts
}

fn assert_each_once(results: &[Value], ids: impl IntoIterator<Item = String>, who: &str) {
    let counts = id_counts(results);
    let ids: Vec<String> = ids.into_iter().collect();
    for id in &ids {
        assert_eq!(counts.get(id), Some(&1), "{who}: result of {id}");
    }
    assert_eq!(
        results.len(),
        ids.len(),
        "{who}: results of other jobs came"
    );
}

#[test]
fn many_clients_at_once_each_get_exactly_their_own_results() {
    let dir = temp_dir();
    let service = Service::start(dir.path(), ["-j", "2"]);
    let clients: Vec<(String, PathBuf)> = (0..8)
        .map(|c| {
            let tag = format!("c{c}");
            let jobs = write_jobs(
                dir.path(),
                &format!("{tag}.jsonl"),
                tagged_jobs(&tag, 2_000),
            );
            (tag, jobs)
        })
        .collect();
    let outputs: Vec<(String, Output)> = std::thread::scope(|scope| {
        let handles: Vec<_> = clients
            .iter()
            .map(|(tag, jobs)| {
                let run = service.submit([jobs]);
                scope.spawn(move || (tag.clone(), run.output()))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (tag, out) in &outputs {
        out.expect_code(0);
        assert_each_once(
            &out.results(),
            tagged_jobs(tag, 2_000)
                .enumerate()
                .map(|(i, _)| format!("{tag}-{i}")),
            tag,
        );
        assert!(
            out.stderr.contains("2000 jobs: 2000 ok, 0 failed"),
            "{}",
            out.stderr
        );
    }
    let status = service.status().expect("status answers");
    assert_eq!(status["workers"].as_array().unwrap().len(), 2);
    assert!(status["workers"][0]["pid"].as_u64().unwrap() > 0);
    assert_eq!(status["answered"], 16_000);
    assert_eq!(status["queued"], 0);
    service.stop();
}

#[test]
fn submit_matches_run_on_the_same_hostile_input() {
    let dir = temp_dir();
    let service = Service::start(dir.path(), ["-j", "2"]);
    let lines = [
        r#"{"id": 1, "task": "sum_squares", "input": [1, 2]}"#,
        "not json",
        "",
        r#"{"task": "sum_squares", "input": [3]}"#,
        r#"{"id": "x", "task": "nope"}"#,
        "{\"id\": \"crlf\", \"task\": \"sum_squares\", \"input\": [2]}\r",
        r#"{"id": "ü", "task": "sum_squares", "input": [1], "meta": {"k": [1]}}"#,
        r#"{"id": {"bad": 1}, "task": "sum_squares"}"#,
    ];
    let jobs = write_jobs(
        dir.path(),
        "jobs.jsonl",
        lines.iter().map(|l| l.to_string()),
    );
    // A file without its last newline, then another: the second starts a line of its own.
    let tail = dir.path().join("tail.jsonl");
    std::fs::write(&tail, r#"{"task": "sum_squares", "input": [5]}"#).unwrap();
    let more = write_jobs(
        dir.path(),
        "more.jsonl",
        [r#"{"task":"sum_squares","input":[6]}"#.to_string()],
    );
    let ran = Run::corral(["run", "-j", "2"])
        .args([&jobs, &tail, &more])
        .output();
    let submitted = service.submit([&jobs, &tail, &more]).output();
    assert_eq!(
        ran.status.code(),
        submitted.status.code(),
        "{}",
        submitted.stderr
    );
    assert_eq!(comparable(ran.results()), comparable(submitted.results()));
    assert_eq!(submitted.results().len(), 9);
    service.stop();
}

#[test]
fn submit_resume_reports_a_repeated_id_as_run_resume_does() {
    let dir = temp_dir();
    let service = Service::start(dir.path(), ["-j", "1"]);
    let jobs = write_jobs(
        dir.path(),
        "jobs.jsonl",
        ["a", "b", "a", "c"]
            .map(|id| format!(r#"{{"id":"{id}","task":"sum_squares","input":[2]}}"#)),
    );
    let ran_out = dir.path().join("ran.jsonl");
    let submitted_out = dir.path().join("submitted.jsonl");
    let ran = Run::corral(["run", "--resume", "-o"])
        .args([&ran_out, &jobs])
        .output();
    let resume = || {
        let args = [
            "--resume".as_ref(),
            "-o".as_ref(),
            submitted_out.as_os_str(),
            jobs.as_os_str(),
        ];
        service.submit(args).output()
    };
    let submitted = resume();
    assert_eq!(ran.status.code(), Some(1), "{}", ran.stderr);
    assert_eq!(submitted.status.code(), Some(1), "{}", submitted.stderr);
    assert_eq!(
        comparable(read_results(&ran_out)),
        comparable(read_results(&submitted_out))
    );
    assert!(
        submitted.stderr.contains("4 jobs: 3 ok, 1 failed"),
        "{}",
        submitted.stderr
    );
    // Resumed again, nothing is left to run, and the duplicate is not reported twice; the
    // status still describes the file, which holds its failure, as run's does.
    let again = resume();
    again.expect_code(1);
    assert!(
        again
            .stderr
            .contains("also holds 1 failure from earlier runs"),
        "{}",
        again.stderr
    );
    assert_eq!(read_results(&submitted_out).len(), 4);
    Run::corral(["run", "--resume", "-o"])
        .args([&ran_out, &jobs])
        .output()
        .expect_code(1);
    service.stop();
}

#[test]
fn a_client_that_goes_away_loses_its_queued_jobs_and_nobody_else_is_disturbed() {
    let dir = temp_dir();
    let service = Service::start(
        dir.path(),
        ["-j", "2", "--worker", fault_worker().to_str().unwrap()],
    );
    // 4,000 jobs of 5 ms: 10 s of work on two workers, if it all ran.
    let mut quitter = UnixStream::connect(&service.socket).unwrap();
    let mut lines = String::new();
    for line in square_jobs(4_000, 5_000) {
        lines.push_str(&line);
        lines.push('\n');
    }
    let writer = {
        let mut stream = quitter.try_clone().unwrap();
        std::thread::spawn(move || {
            let _ = stream.write_all(lines.as_bytes());
        })
    };
    let mut first = String::new();
    BufReader::new(&mut quitter).read_line(&mut first).unwrap();
    assert!(first.contains("\"ok\":true"), "{first}");
    drop(quitter);
    let _ = writer.join();
    // Another client is served at once and in full.
    let started = Instant::now();
    let other_jobs: Vec<String> = (0..200)
        .map(|i| format!(r#"{{"id":"b-{i}","task":"square","input":{{"n":{i},"spin_us":0}}}}"#))
        .collect();
    let other = service
        .submit::<&str>([])
        .stdin(other_jobs.join("\n"))
        .output();
    other.expect_code(0);
    assert_each_once(&other.results(), (0..200).map(|i| format!("b-{i}")), "b");
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "the other client waited {:?}",
        started.elapsed()
    );
    let status = wait_for(Duration::from_secs(10), || {
        service
            .status()
            .filter(|s| s["queued"] == 0 && s["outstanding"] == 0)
    })
    .expect("the queue of the client gone is dropped");
    let answered = status["answered"].as_u64().unwrap();
    assert!(
        answered < 2_000,
        "{answered} jobs ran for a client that was gone"
    );
    service.stop();
}

#[test]
fn clients_that_never_read_their_results_do_not_hold_back_the_others() {
    let dir = temp_dir();
    let service = Service::start(dir.path(), ["-j", "2"]);
    // Six clients write 12,000 jobs each and never read: their results fill their sockets,
    // then their credit (4,096 each), over 24,000 results waiting in all, past what the
    // engine holds for every sink together.
    let stalled: Vec<UnixStream> = (0..6)
        .map(|c| {
            let stream = UnixStream::connect(&service.socket).unwrap();
            let mut writer = stream.try_clone().unwrap();
            let lines: String = tagged_jobs(&format!("s{c}"), 12_000)
                .map(|l| l + "\n")
                .collect();
            std::thread::spawn(move || {
                let _ = writer.write_all(lines.as_bytes());
            });
            stream
        })
        .collect();
    wait_for(Duration::from_secs(20), || {
        let status = service.status()?;
        let waiting: u64 = status["clients"]
            .as_array()?
            .iter()
            .map(|c| c["results_waiting"].as_u64().unwrap_or(0))
            .sum();
        (waiting > 16_384).then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "the stalled clients' results did not pile up: {:?}",
            service.status()
        )
    });
    let other = service
        .submit::<&str>([])
        .stdin(tagged_jobs("b", 500).collect::<Vec<_>>().join("\n"))
        .deadline(Duration::from_secs(30))
        .output();
    other.expect_code(0);
    assert_each_once(&other.results(), (0..500).map(|i| format!("b-{i}")), "b");
    drop(stalled);
    service.stop();
}

#[test]
fn a_stopped_service_tells_its_client_and_resume_finishes_every_job_once() {
    let dir = temp_dir();
    let worker = fault_worker();
    let args = [
        "-j".as_ref(),
        "2".as_ref(),
        "--worker".as_ref(),
        worker.as_os_str(),
    ];
    let service = Service::start(dir.path(), args);
    let jobs = write_jobs(dir.path(), "jobs.jsonl", square_jobs(3_000, 2_000));
    let out = dir.path().join("results.jsonl");
    let client = service
        .submit([jobs.as_path(), Path::new("-o"), &out])
        .start(&client_dir(dir.path()));
    wait_for(Duration::from_secs(20), || {
        (lines_in(&out) > 300).then_some(())
    })
    .expect("results come");
    let stopped = service.stop();
    assert!(stopped.stderr.contains("SIGTERM"), "{}", stopped.stderr);
    let first = client.wait(Duration::from_secs(30));
    first.expect_code(75);
    assert!(first.stderr.contains("--resume"), "{}", first.stderr);
    let partial = read_results(&out).len();
    assert!(
        partial < 3_000,
        "the stop came too late to test anything ({partial})"
    );

    let service = Service::start(dir.path(), args);
    let resumed = service
        .submit([jobs.as_path(), Path::new("-o"), &out, Path::new("--resume")])
        .output();
    resumed.expect_code(0);
    assert_each_once(
        &read_results(&out),
        (0..3_000).map(|i| i.to_string()),
        "resumed",
    );
    service.stop();
}

#[test]
fn a_killed_service_is_reported_and_resume_on_its_successor_finishes() {
    let dir = temp_dir();
    let worker = fault_worker();
    let args = [
        "-j".as_ref(),
        "2".as_ref(),
        "--worker".as_ref(),
        worker.as_os_str(),
    ];
    let service = Service::start(dir.path(), args);
    let jobs = write_jobs(dir.path(), "jobs.jsonl", square_jobs(3_000, 2_000));
    let out = dir.path().join("results.jsonl");
    let client = service
        .submit([jobs.as_path(), Path::new("-o"), &out])
        .start(&client_dir(dir.path()));
    wait_for(Duration::from_secs(20), || {
        (lines_in(&out) > 300).then_some(())
    })
    .expect("results come");
    let workers = children_of(service.pid());
    signal(service.pid(), libc::SIGKILL);
    let lost = client.wait(Duration::from_secs(30));
    lost.expect_code(75);
    assert!(lost.stderr.contains("lost"), "{}", lost.stderr);
    // Its workers go with it.
    for pid in workers {
        wait_for(Duration::from_secs(10), || (!alive(pid)).then_some(()))
            .unwrap_or_else(|| panic!("worker {pid} outlived its service"));
    }
    drop(service);
    let service = Service::start(dir.path(), args);
    let resumed = service
        .submit([jobs.as_path(), Path::new("-o"), &out, Path::new("--resume")])
        .output();
    resumed.expect_code(0);
    assert_each_once(
        &read_results(&out),
        (0..3_000).map(|i| i.to_string()),
        "resumed",
    );
    service.stop();
}

#[test]
fn worker_crashes_and_a_reload_during_a_multi_client_run_lose_nothing() {
    let dir = temp_dir();
    let config = dir.path().join("corral.toml");
    std::fs::write(&config, "workers = 2\n").unwrap();
    let service = Service::start(
        dir.path(),
        [
            "--config",
            config.to_str().unwrap(),
            "--worker",
            fault_worker().to_str().unwrap(),
            "--retries",
            "10",
        ],
    );
    let pid = service.pid();
    let files: Vec<PathBuf> = (0..4)
        .map(|c| {
            let lines = (0..1_500).map(move |i| {
                format!(r#"{{"id":"c{c}-{i}","task":"square","input":{{"n":{i},"spin_us":1000}}}}"#)
            });
            write_jobs(dir.path(), &format!("c{c}.jsonl"), lines)
        })
        .collect();
    let outputs: Vec<Output> = std::thread::scope(|scope| {
        let handles: Vec<_> = files
            .iter()
            .map(|file| {
                let run = service.submit([file]);
                scope.spawn(move || run.output())
            })
            .collect();
        scope.spawn(move || {
            let mut rng = Lcg(7);
            for round in 0..6 {
                std::thread::sleep(Duration::from_millis(150 + rng.below(100)));
                let workers = children_of(pid);
                if let Some(&victim) = workers.get(rng.below(workers.len().max(1) as u64) as usize)
                {
                    signal(victim, libc::SIGKILL);
                }
                if round == 2 {
                    std::fs::write(&config, "workers = 3\nallow_task = [\"square\"]\n").unwrap();
                    signal(pid, libc::SIGHUP);
                }
            }
        });
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (c, out) in outputs.iter().enumerate() {
        out.expect_code(0);
        assert_each_once(
            &out.results(),
            (0..1_500).map(|i| format!("c{c}-{i}")),
            &format!("c{c}"),
        );
    }
    let status = wait_for(Duration::from_secs(10), || {
        service
            .status()
            .filter(|s| s["workers"].as_array().unwrap().len() == 3)
    })
    .unwrap_or_else(|| {
        panic!(
            "the reload did not take the pool to 3 workers: {}",
            service.log()
        )
    });
    assert!(status["restarts"].as_u64().unwrap() >= 1, "{status}");
    // Each worker shows its slot, and how often a worker of its slot was replaced.
    let workers = status["workers"].as_array().unwrap();
    let mut slots: Vec<u64> = workers
        .iter()
        .map(|w| w["slot"].as_u64().unwrap())
        .collect();
    slots.sort_unstable();
    assert_eq!(slots, [1, 2, 3], "{status}");
    let by_slot: u64 = workers
        .iter()
        .map(|w| w["restarts"].as_u64().unwrap())
        .sum();
    assert!(by_slot >= 1, "{status}");
    // The reloaded policy holds for the clients that follow.
    let refused = service
        .submit::<&str>([])
        .stdin(r#"{"id": 1, "task": "echo", "input": 1}"#)
        .output();
    refused.expect_code(1);
    let result = &refused.results()[0];
    assert_eq!(result["error"]["kind"], "unknown_task", "{result}");
    assert!(
        result["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not allowed")
    );
    assert!(service.log().contains("SIGHUP: read"), "{}", service.log());
    service.stop();
}

#[test]
fn the_limits_each_have_a_clear_error() {
    let dir = temp_dir();
    let service = Service::start(
        dir.path(),
        [
            "-j",
            "1",
            "--max-connections",
            "1",
            "--max-job-bytes",
            "100",
            "--max-client-jobs",
            "3",
        ],
    );
    // A line over the limit gets its too_large result; the others run, three at a time at most.
    let long = format!(
        r#"{{"id":"long","task":"sum_squares","input":[{}]}}"#,
        vec!["1"; 60].join(",")
    );
    let lines: Vec<String> = tagged_jobs("ok", 20).chain([long]).collect();
    let out = service.submit::<&str>([]).stdin(lines.join("\n")).output();
    out.expect_code(1);
    let results = out.results();
    assert_eq!(results.len(), 21);
    let long = results
        .iter()
        .find(|r| r["line"] == 21)
        .expect("the long line's result");
    assert_eq!(long["error"]["kind"], "too_large", "{long}");
    // One connection at a time: a second one is refused with the reason.
    // A connection counts once it has said hello (or sent its first job line).
    let mut held = UnixStream::connect(&service.socket).unwrap();
    held.write_all(b"{\"corral\":\"submit\"}\n").unwrap();
    wait_for(Duration::from_secs(10), || {
        (service_connections(&service.socket) == Some(1)).then_some(())
    })
    .expect("the held connection counts");
    let refused = service.submit::<&str>([]).stdin("{}").output();
    refused.expect_code(2);
    assert!(
        refused.stderr.contains("too many connections"),
        "{}",
        refused.stderr
    );
    drop(held);
    service.stop();
}

/// Lines in a file so far (0 while it does not exist).
fn lines_in(path: &Path) -> usize {
    std::fs::read(path).map_or(0, |bytes| bytes.iter().filter(|&&b| b == b'\n').count())
}

/// A directory for a background client's stdout and stderr.
fn client_dir(dir: &Path) -> PathBuf {
    let path = dir.join("client");
    std::fs::create_dir_all(&path).unwrap();
    path
}

/// The pid of the service answering on `socket`, as a status request sees it.
fn service_pid(socket: &Path) -> Option<u64> {
    let mut stream = UnixStream::connect(socket).ok()?;
    stream.write_all(b"{\"corral\":\"status\"}\n").ok()?;
    let mut line = String::new();
    stream.read_to_string(&mut line).ok()?;
    let value: Value = serde_json::from_str(line.trim()).ok()?;
    value["pid"].as_u64()
}

/// Job connections open, as a status request sees them.
fn service_connections(socket: &Path) -> Option<u64> {
    let mut stream = UnixStream::connect(socket).ok()?;
    stream.write_all(b"{\"corral\":\"status\"}\n").ok()?;
    let mut line = String::new();
    stream.read_to_string(&mut line).ok()?;
    let value: Value = serde_json::from_str(line.trim()).ok()?;
    value["connections"].as_u64()
}

/// A service that other users can reach (its socket 0666 in a 0755 directory), so that its
/// credentials check is what admits or refuses them; `None`, with a message, unless root.
fn open_to_others<S: AsRef<std::ffi::OsStr>>(
    dir: &Path,
    args: impl IntoIterator<Item = S>,
) -> Option<Service> {
    // SAFETY: getuid has no preconditions.
    if unsafe { libc::getuid() } != 0 {
        eprintln!("skipped: needs root, to connect as another user");
        return None;
    }
    std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let service = Service::start(dir, args);
    std::fs::set_permissions(
        &service.socket,
        std::os::unix::fs::PermissionsExt::from_mode(0o666),
    )
    .unwrap();
    Some(service)
}

/// `corral ARGS --socket SOCKET` as user `uid`, with `input` on its stdin.
fn corral_as(uid: u32, args: &[&str], socket: &Path, input: &str) -> std::process::Output {
    use std::os::unix::process::CommandExt;
    let mut child = std::process::Command::new(bin("corral"))
        .args(args)
        .arg("--socket")
        .arg(socket)
        .uid(uid)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn a_user_not_allowed_is_refused_by_its_credentials() {
    let dir = temp_dir();
    // nobody must reach the socket for the credentials to be what stops it.
    let Some(service) = open_to_others(dir.path(), ["-j", "1", "--allow-uid", "65533"]) else {
        return;
    };
    let job = r#"{"id":1,"task":"sum_squares","input":[2]}"#;
    let as_nobody = |uid: u32| corral_as(uid, &["submit"], &service.socket, job);
    let refused = as_nobody(65534);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("uid 65534") && stderr.contains("may not use"),
        "{stderr}"
    );
    assert!(refused.stdout.is_empty());
    assert!(service.log().contains("refused"), "{}", service.log());
    let allowed = as_nobody(65533);
    assert_eq!(
        allowed.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&allowed.stderr)
    );
    // A member of an allowed group is let in by its supplementary group (SO_PEERGROUPS).
    let setpriv = Path::new("/usr/bin/setpriv");
    if setpriv.exists() {
        let service = Service::start(
            &dir.path().join("by-group"),
            ["-j", "1", "--allow-gid", "4242"],
        );
        std::fs::set_permissions(
            &service.socket,
            std::os::unix::fs::PermissionsExt::from_mode(0o666),
        )
        .unwrap();
        let run = |groups: &str| {
            Run::program(setpriv)
                .args([
                    "--reuid=65534",
                    "--regid=65534",
                    &format!("--groups={groups}"),
                ])
                .args([bin("corral").as_os_str()])
                .args([
                    "submit".as_ref(),
                    "--socket".as_ref(),
                    service.socket.as_os_str(),
                ])
                .stdin(r#"{"id":1,"task":"sum_squares","input":[2]}"#)
                .output()
        };
        run("4242,100").expect_code(0);
        let refused = run("100");
        refused.expect_code(2);
        assert!(refused.stderr.contains("may not use"), "{}", refused.stderr);
        service.stop();
    }
    service.stop();
}

#[test]
fn notify_socket_hears_ready_after_hello_the_watchdog_and_stopping() {
    let dir = temp_dir();
    let notify_path = dir.path().join("notify");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let socket = dir.path().join("corral.sock");
    let log = dir.path().join("log");
    std::fs::create_dir_all(&log).unwrap();
    let config = dir.path().join("corral.toml");
    std::fs::write(&config, "workers = 2\n").unwrap();
    let running = Run::corral(["serve", "--socket"])
        .args([&socket])
        .args(["--config".as_ref(), config.as_os_str()])
        .env("NOTIFY_SOCKET", notify_path.to_str().unwrap())
        .env("WATCHDOG_USEC", "400000")
        .start(&log);
    let pid = running.pid();
    let mut buf = [0u8; 4096];
    let mut next = || {
        let n = notify.recv(&mut buf).expect("a notification within 20 s");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    // READY=1 only once both workers have said hello.
    while !next().contains("READY=1") {}
    let ready_workers = children_of(pid).len();
    assert_eq!(ready_workers, 2, "READY=1 before the workers were up");
    // The watchdog at half the period: 200 ms (and STATUS= beside it).
    let mut pings = Vec::new();
    let mut status = None;
    while pings.len() < 5 {
        let message = next();
        if message.contains("WATCHDOG=1") {
            pings.push(Instant::now());
        }
        if let Some(line) = message.lines().find_map(|l| l.strip_prefix("STATUS=")) {
            status = Some(line.to_owned());
        }
    }
    let gaps: Vec<Duration> = pings.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(
        gaps.iter().all(|g| *g < Duration::from_millis(390)),
        "{gaps:?}"
    );
    assert!(status.unwrap().contains("workers"));
    // SIGHUP: RELOADING=1 (with the time systemd 253 asks for), then READY=1 again.
    signal(pid, libc::SIGHUP);
    let reloading = loop {
        let message = next();
        if message.contains("RELOADING=1") {
            break message;
        }
    };
    assert!(reloading.contains("MONOTONIC_USEC="), "{reloading}");
    while !next().contains("READY=1") {}
    signal(pid, libc::SIGTERM);
    loop {
        if next().contains("STOPPING=1") {
            break;
        }
    }
    running.wait(Duration::from_secs(20)).expect_code(0);
    assert!(!socket.exists(), "the socket file is removed");
}

#[test]
fn socket_activation_through_systemd_socket_activate() {
    let Some(activate) = [
        "/usr/bin/systemd-socket-activate",
        "/bin/systemd-socket-activate",
    ]
    .into_iter()
    .map(PathBuf::from)
    .find(|p| p.exists()) else {
        panic!("systemd-socket-activate is missing: install Debian's systemd package");
    };
    let dir = temp_dir();
    let socket = dir.path().join("activated.sock");
    let log = dir.path().join("log");
    std::fs::create_dir_all(&log).unwrap();
    let running = Run::program(&activate)
        .args([
            "-l".as_ref(),
            socket.as_os_str(),
            "--fdname=corral".as_ref(),
        ])
        .args([bin("corral").as_os_str()])
        .args(["serve", "-j", "1"])
        .start(&log);
    wait_for(Duration::from_secs(10), || socket.exists().then_some(()))
        .expect("systemd-socket-activate listens");
    // No service runs until the first client comes.
    assert!(all_children_of(running.pid()).is_empty());
    let out = Run::corral(["submit", "--socket"])
        .args([&socket])
        .stdin(tagged_jobs("a", 100).collect::<Vec<_>>().join("\n"))
        .output();
    out.expect_code(0);
    assert_each_once(
        &out.results(),
        (0..100).map(|i| format!("a-{i}")),
        "activated",
    );
    // systemd-socket-activate execs the service in its own process.
    assert!(
        std::fs::read_to_string(format!("/proc/{}/cmdline", running.pid()))
            .unwrap()
            .contains("serve")
    );
    signal(running.pid(), libc::SIGTERM);
    running.wait(Duration::from_secs(20)).expect_code(0);
}

#[test]
fn a_service_with_nothing_to_listen_on_says_so() {
    let out = Run::corral(["serve", "-j", "1"]).output();
    out.expect_code(2);
    assert!(out.stderr.contains("LISTEN_FDS"), "{}", out.stderr);
    let dir = temp_dir();
    let bad = dir.path().join("config.toml");
    std::fs::write(&bad, "wrokers = 2\n").unwrap();
    let out = Run::corral(["serve", "--socket"])
        .args([dir.path().join("s.sock")])
        .args(["--config".as_ref(), bad.as_os_str()])
        .output();
    out.expect_code(2);
    assert!(out.stderr.contains("wrokers"), "{}", out.stderr);
    let out = Run::corral(["submit", "--socket"])
        .args([dir.path().join("nobody.sock")])
        .stdin("{}")
        .output();
    out.expect_code(75);
    assert!(
        out.stderr.contains("cannot reach the corral service"),
        "{}",
        out.stderr
    );
}

/// The line a connection is told before it is closed, read within `wait`.
fn told(stream: &mut UnixStream, wait: Duration) -> String {
    stream.set_read_timeout(Some(wait)).unwrap();
    let mut text = String::new();
    let _ = stream.read_to_string(&mut text);
    text
}

#[test]
fn idle_connections_of_one_user_lock_out_neither_other_users_nor_itself_for_long() {
    let dir = temp_dir();
    let Some(service) = open_to_others(
        dir.path(),
        [
            "-j",
            "1",
            "--allow-uid",
            "65533",
            "--max-connections",
            "8",
            "--max-user-connections",
            "3",
            "--first-line-timeout",
            "1s",
        ],
    ) else {
        return;
    };
    // Root holds five connections without a line (one sends half a line): its three job
    // connections and the two more any user may have for status requests.
    let mut idle: Vec<UnixStream> = (0..5)
        .map(|_| UnixStream::connect(&service.socket).unwrap())
        .collect();
    idle[0].write_all(b"{\"id\":1,\"task\"").unwrap();
    // A sixth of root's is refused, saying why.
    let mut fourth = UnixStream::connect(&service.socket).unwrap();
    let refusal = told(&mut fourth, Duration::from_secs(5));
    assert!(
        refusal.contains("too many connections from uid 0"),
        "{refusal}"
    );
    // Another user is served, and can ask for the status, meanwhile.
    let as_other = |args: &[&str], input: &str| corral_as(65533, args, &service.socket, input);
    let submitted = as_other(&["submit"], r#"{"id":1,"task":"sum_squares","input":[2]}"#);
    assert_eq!(
        submitted.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&submitted.stderr)
    );
    let status = as_other(&["status"], "");
    assert_eq!(status.status.code(), Some(0));
    // The idle ones are closed once the first-line deadline passes, each told why.
    for stream in &mut idle {
        let said = told(stream, Duration::from_secs(10));
        assert!(said.contains("no line within 1s"), "{said}");
    }
    // Root's connections are free again (once each refusal has been read out).
    let served = wait_for(Duration::from_secs(10), || {
        let out = service
            .submit(["-"])
            .stdin(r#"{"id":1,"task":"sum_squares","input":[2]}"#)
            .output();
        out.status.success().then_some(())
    });
    assert!(served.is_some(), "root is served again: {}", service.log());
    // Refusals are logged, at most once a second, and never tell the allow list.
    assert!(
        !refusal.contains("65533"),
        "the allow list is not told: {refusal}"
    );
    service.stop();
}

#[test]
fn a_draining_service_leaves_the_socket_of_the_service_that_took_its_path() {
    let dir = temp_dir();
    let first = Service::start(dir.path(), ["-j", "1", "--grace", "30s"]);
    // A client whose jobs keep the first service draining for a while.
    let client_dir = dir.path().join("client");
    std::fs::create_dir_all(&client_dir).unwrap();
    let jobs = write_jobs(
        &client_dir,
        "jobs.jsonl",
        [r#"{"id":1,"task":"spin","input":1500}"#.to_owned()],
    );
    let client = first.submit([&jobs]).start(&client_dir);
    wait_for(Duration::from_secs(10), || {
        first
            .status()
            .filter(|s| s["clients"].as_array().is_some_and(|c| !c.is_empty()))
    })
    .expect("the client is connected");
    // corral status names the running job and how long it has run.
    let busy = wait_for(Duration::from_secs(10), || {
        first.status().filter(|s| s["workers"][0]["current"] == "1")
    })
    .expect("the status names the running job");
    assert!(
        busy["workers"][0]["current_secs"].as_f64().is_some(),
        "{busy}"
    );
    signal(first.pid(), libc::SIGTERM);
    // The successor binds the path as soon as the first stops listening.
    let second_dir = dir.path().join("second");
    std::fs::create_dir_all(&second_dir).unwrap();
    let socket = first.socket.clone();
    let mut attempt = 0;
    let second = wait_for(Duration::from_secs(10), || {
        attempt += 1;
        let log = second_dir.join(format!("log-{attempt}"));
        std::fs::create_dir_all(&log).unwrap();
        let out = Run::corral(["serve", "--socket"])
            .args([&socket])
            .args(["-j", "1"])
            .start(&log);
        // Up once it is the one that answers on the path, not the first still listening.
        let up = wait_for(Duration::from_secs(5), || {
            (service_pid(&socket) == Some(u64::from(out.pid()))).then_some(())
        });
        if up.is_some() && alive(out.pid()) {
            Some(out)
        } else {
            signal(out.pid(), libc::SIGKILL);
            let _ = out.wait(Duration::from_secs(5));
            None
        }
    })
    .expect("the successor starts on the path");
    let out = first.running.wait(Duration::from_secs(30));
    out.expect_code(0);
    client.wait(Duration::from_secs(30)).expect_code(0);
    assert!(
        socket.exists(),
        "the draining service removed its successor's socket"
    );
    assert!(
        service_connections(&socket).is_some(),
        "the successor still answers"
    );
    signal(second.pid(), libc::SIGTERM);
    second.wait(Duration::from_secs(30)).expect_code(0);
}

#[test]
fn submit_to_a_socket_it_may_not_open_is_a_usage_error_not_try_again() {
    // SAFETY: getuid has no preconditions.
    if unsafe { libc::getuid() } != 0 {
        eprintln!("skipped: needs root, to connect as another user");
        return;
    }
    let dir = temp_dir();
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let service = Service::start(dir.path(), ["-j", "1"]);
    // The socket is 0660 root:root: nobody may not open it.
    let setpriv = Path::new("/usr/bin/setpriv");
    if !setpriv.exists() {
        eprintln!("skipped: needs setpriv, to drop every group");
        service.stop();
        return;
    }
    let out = Run::program(setpriv)
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .args([bin("corral").as_os_str()])
        .args([
            "submit".as_ref(),
            "--socket".as_ref(),
            service.socket.as_os_str(),
        ])
        .stdin("")
        .output();
    out.expect_code(2);
    assert!(out.stderr.contains("Permission denied"), "{}", out.stderr);
    service.stop();
}

#[test]
fn a_client_naming_thousands_of_tasks_leaves_the_names_of_others_alone() {
    let dir = temp_dir();
    let service = Service::start(dir.path(), ["-j", "1"]);
    // More distinct names than a run's table holds, none of them served.
    let flood: Vec<String> = (0..10_050)
        .map(|i| format!(r#"{{"id":{i},"task":"t{i}","input":[1]}}"#))
        .collect();
    let out = service.submit::<&str>([]).stdin(flood.join("\n")).output();
    out.expect_code(1);
    let results = out.results();
    assert_eq!(results.len(), 10_050);
    assert!(
        results.iter().all(|r| r["error"]["kind"] == "unknown_task"
            && r["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("sum_squares"))),
        "{}",
        results[10_049]
    );
    // Another client, naming a task for the first time in the service's life, is served.
    let out = service
        .submit::<&str>([])
        .stdin(r#"{"id":1,"task":"primes","input":10}"#)
        .output();
    out.expect_code(0);
    assert_eq!(out.results()[0]["ok"], true, "{}", out.stdout);
    service.stop();
}

#[test]
fn the_service_reads_no_file_for_a_client_nor_tells_which_exist() {
    let dir = temp_dir();
    let service = Service::start(dir.path(), ["-j", "1"]);
    let there = dir.path().join("secret");
    std::fs::write(&there, "abc").unwrap();
    let lines = [
        format!(
            r#"{{"id":1,"task":"sha256","input":{:?}}}"#,
            there.display().to_string()
        ),
        r#"{"id":2,"task":"sha256","input":"/no/such/file"}"#.to_owned(),
        r#"{"id":3,"task":"sha256","input":{"text":"abc"}}"#.to_owned(),
    ];
    let out = service.submit::<&str>([]).stdin(lines.join("\n")).output();
    out.expect_code(1);
    let by_id = out.results_by_id();
    let (existing, missing) = (&by_id["1"], &by_id["2"]);
    assert_eq!(existing["ok"], false, "{existing}");
    assert!(
        existing["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("reads no file")),
        "{existing}"
    );
    assert_eq!(
        existing["error"], missing["error"],
        "an existing file and a missing one look the same"
    );
    assert_eq!(
        by_id["3"]["output"],
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
    // corral run, as the user itself, still hashes files.
    let out = Run::corral(["run"]).stdin(lines[0].clone()).output();
    out.expect_code(0);
    service.stop();
}

#[test]
fn a_one_job_client_is_answered_while_a_big_client_runs() {
    let dir = temp_dir();
    let service = Service::start(dir.path(), ["-j", "2"]);
    let small = || {
        service
            .submit::<&str>([])
            .stdin(r#"{"id":1,"task":"sum_squares","input":[1]}"#)
            .output()
    };
    // sum_squares is measured fast first: batches for it may then be large.
    small().expect_code(0);
    let big_dir = dir.path().join("big");
    std::fs::create_dir_all(&big_dir).unwrap();
    let jobs = write_jobs(
        &big_dir,
        "jobs.jsonl",
        (0..2_000).map(|i| format!(r#"{{"id":{i},"task":"spin","input":5}}"#)),
    );
    let big = service.submit([&jobs]).start(&big_dir);
    wait_for(Duration::from_secs(10), || {
        service
            .status()
            .filter(|s| s["queued"].as_u64().is_some_and(|q| q > 100))
    })
    .expect("the big client's jobs are queued");
    // The small client's job goes in its own batch, in its turn: it is answered while the
    // big client still has seconds of work queued, not after it.
    small().expect_code(0);
    let status = service.status().expect("the service answers");
    assert!(
        status["queued"].as_u64().is_some_and(|q| q > 0) && alive(big.pid()),
        "the small client waited for the big one: {status}"
    );
    signal(big.pid(), libc::SIGKILL);
    let _ = big.wait(Duration::from_secs(10));
    service.stop();
}
