//! The helper layer of the integration tests: find the real binaries, run them in a temp dir,
//! parse their results, inspect and clean up processes, and wait on conditions with deadlines.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The directory holding the workspace's binaries (`target/debug` next to the test binary's
/// `deps/`).
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    exe.parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps/<test>")
        .to_path_buf()
}

/// A binary of the workspace, which must have been built from the current sources:
/// `cargo test` builds only this package's binaries, so `scripts/test` builds the others first.
/// The sources are the ones cargo lists in the binary's dep-info file (`NAME.d`), so a change
/// that only touches `#[cfg(test)]` code, which the binary does not contain, is not one.
pub fn bin(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    let hint = "build the workspace binaries first: `cargo build --workspace --bins`, as scripts/test does";
    let built = std::fs::metadata(&path)
        .and_then(|m| m.modified())
        .unwrap_or_else(|_| panic!("{} is missing: {hint}", path.display()));
    let deps = std::fs::read_to_string(bin_dir().join(format!("{name}.d"))).unwrap_or_default();
    let sources = deps
        .split_once(": ")
        .map_or("", |(_, sources)| sources)
        .split_whitespace();
    for source in sources {
        let modified = std::fs::metadata(source).and_then(|m| m.modified());
        if let Ok(modified) = modified {
            assert!(
                modified <= built,
                "{} is older than {source}: {hint}",
                path.display()
            );
        }
    }
    path
}

/// The fault-injection worker, built with this package.
pub fn fault_worker() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_corral-fault-worker"))
}

/// Until `supervisor` exits, SIGKILLs one of its workers (chosen by `seed`) after every pause
/// of `pause` plus up to `jitter` milliseconds; returns how many it killed.
pub fn kill_workers_until_exit(supervisor: u32, seed: u64, pause: u64, jitter: u64) -> u32 {
    let mut rng = Lcg(seed);
    let mut kills = 0;
    while process_state(supervisor).is_some_and(|s| s != 'Z') {
        std::thread::sleep(Duration::from_millis(pause + rng.below(jitter)));
        let workers = children_of(supervisor);
        if let Some(&victim) = workers.get(rng.below(workers.len().max(1) as u64) as usize) {
            signal(victim, libc::SIGKILL);
            kills += 1;
        }
    }
    kills
}

/// The command line of a test worker in Python (`tests/workers/NAME.py`), for `--worker-cmd`.
pub fn python_worker(name: &str) -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("workers")
        .join(format!("{name}.py"));
    shell_words::join(["python3", "-u", &script.display().to_string()])
}

/// The directory of the `corral` Python package (its `corral.worker` helper), for `PYTHONPATH`.
pub fn python_helper_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .join("python")
}

/// What a finished command left behind.
pub struct Output {
    pub command: String,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    /// Panics with everything known about the command.
    pub fn fail(&self, why: &str) -> ! {
        panic!(
            "{why}\ncommand: {}\nstatus: {}\nstdout ({} bytes):\n{}\nstderr:\n{}",
            self.command,
            self.status,
            self.stdout.len(),
            tail(&self.stdout, 4000),
            tail(&self.stderr, 4000)
        )
    }

    /// Asserts the exit code.
    pub fn expect_code(&self, code: i32) -> &Output {
        if self.status.code() != Some(code) {
            self.fail(&format!("expected exit status {code}"));
        }
        self
    }

    /// Result lines, parsed; every line must be a JSON object.
    pub fn results(&self) -> Vec<Value> {
        self.stdout
            .lines()
            .map(|line| match serde_json::from_str::<Value>(line) {
                Ok(value) if value.is_object() => value,
                _ => self.fail(&format!("not a result line: {line:?}")),
            })
            .collect()
    }

    /// Results keyed by id, asserting each id appears once.
    pub fn results_by_id(&self) -> HashMap<String, Value> {
        let mut by_id = HashMap::new();
        for result in self.results() {
            let id = result
                .get("id")
                .map(|v| v.to_string())
                .unwrap_or_else(|| format!("line {}", result["line"]));
            if by_id.insert(id.clone(), result).is_some() {
                self.fail(&format!("id {id} has more than one result"));
            }
        }
        by_id
    }
}

fn tail(text: &str, max: usize) -> &str {
    let mut start = text.len().saturating_sub(max);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

/// A command under construction, run with a deadline.
pub struct Run {
    command: Command,
    stdin: Option<Vec<u8>>,
    deadline: Duration,
}

impl Run {
    /// `corral` with these arguments.
    pub fn corral<S: AsRef<std::ffi::OsStr>>(args: impl IntoIterator<Item = S>) -> Run {
        let mut command = Command::new(bin("corral"));
        command.args(args);
        Run {
            command,
            stdin: None,
            deadline: Duration::from_secs(120),
        }
    }

    /// `corral` with these arguments and `--worker` naming the fault-injection worker.
    pub fn corral_faulty<S: AsRef<std::ffi::OsStr>>(args: impl IntoIterator<Item = S>) -> Run {
        Run::corral(args).args(["--worker".as_ref(), fault_worker().as_os_str()])
    }

    /// `corral` with these arguments and `--worker-cmd` naming a Python test worker, which
    /// finds the helper on `PYTHONPATH`.
    pub fn corral_python<S: AsRef<std::ffi::OsStr>>(
        worker: &str,
        args: impl IntoIterator<Item = S>,
    ) -> Run {
        Run::corral(args)
            .args(["--worker-cmd", &python_worker(worker)])
            .env("PYTHONPATH", &python_helper_dir().display().to_string())
    }

    /// Any program.
    pub fn program(path: &Path) -> Run {
        Run {
            command: Command::new(path),
            stdin: None,
            deadline: Duration::from_secs(120),
        }
    }

    /// Adds arguments.
    pub fn args<S: AsRef<std::ffi::OsStr>>(mut self, args: impl IntoIterator<Item = S>) -> Run {
        self.command.args(args);
        self
    }

    /// Adds a flag and the path it takes.
    pub fn arg_path(mut self, flag: &str, path: &Path) -> Run {
        self.command.arg(flag).arg(path);
        self
    }

    /// Feeds this on stdin.
    pub fn stdin(mut self, data: impl Into<Vec<u8>>) -> Run {
        self.stdin = Some(data.into());
        self
    }

    /// Sets an environment variable.
    pub fn env(mut self, key: &str, value: &str) -> Run {
        self.command.env(key, value);
        self
    }

    /// Kills the command if it runs longer than this.
    pub fn deadline(mut self, deadline: Duration) -> Run {
        self.deadline = deadline;
        self
    }

    /// Runs to completion (or the deadline) and collects everything.
    pub fn output(mut self) -> Output {
        let description = format!("{:?}", self.command);
        self.command.stdin(if self.stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        });
        self.command.stdout(Stdio::piped()).stderr(Stdio::piped());
        let started = Instant::now();
        let mut child = ChildGuard(
            self.command
                .spawn()
                .unwrap_or_else(|e| panic!("cannot run {description}: {e}")),
        );
        let writer = self.stdin.take().map(|data| {
            let mut stdin = child.0.stdin.take().expect("piped stdin");
            std::thread::spawn(move || {
                let _ = stdin.write_all(&data);
            })
        });
        let stdout = read_in_background(child.0.stdout.take().expect("piped stdout"));
        let stderr = read_in_background(child.0.stderr.take().expect("piped stderr"));
        let status = loop {
            if let Some(status) = child.0.try_wait().expect("try_wait") {
                break status;
            }
            if started.elapsed() > self.deadline {
                let _ = child.0.kill();
                let status = child.0.wait().expect("wait");
                let output = Output {
                    command: description,
                    status,
                    stdout: stdout.join().unwrap(),
                    stderr: stderr.join().unwrap(),
                };
                output.fail(&format!("still running after {:?}", self.deadline));
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        if let Some(writer) = writer {
            writer.join().unwrap();
        }
        Output {
            command: description,
            status,
            stdout: stdout.join().unwrap(),
            stderr: stderr.join().unwrap(),
        }
    }

    /// Starts the command with stdout and stderr going to files in `dir`, for tests that act
    /// on it while it runs.
    pub fn start(mut self, dir: &Path) -> Running {
        let stdout = std::fs::File::create(dir.join("stdout")).unwrap();
        let stderr = std::fs::File::create(dir.join("stderr")).unwrap();
        self.command
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr);
        let description = format!("{:?}", self.command);
        let child = self
            .command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {description}: {e}"));
        Running {
            child: ChildGuard(child),
            dir: dir.to_path_buf(),
            description,
        }
    }
}

/// A command running in the background; killed if dropped while still running.
pub struct Running {
    pub child: ChildGuard,
    dir: PathBuf,
    description: String,
}

impl Running {
    pub fn pid(&self) -> u32 {
        self.child.0.id()
    }

    /// Waits for the command to end, up to `deadline`.
    pub fn wait(mut self, deadline: Duration) -> Output {
        let status = wait_for(deadline, || self.child.0.try_wait().expect("try_wait"));
        let status = status.unwrap_or_else(|| {
            let _ = self.child.0.kill();
            let status = self.child.0.wait().unwrap();
            self.output(status)
                .fail(&format!("still running after {deadline:?}"))
        });
        self.output(status)
    }

    fn output(&self, status: ExitStatus) -> Output {
        Output {
            command: self.description.clone(),
            status,
            stdout: std::fs::read_to_string(self.dir.join("stdout")).unwrap_or_default(),
            stderr: std::fs::read_to_string(self.dir.join("stderr")).unwrap_or_default(),
        }
    }
}

/// Kills and reaps its child when dropped, so a failing test leaves nothing behind.
pub struct ChildGuard(pub Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn read_in_background(
    mut reader: impl std::io::Read + Send + 'static,
) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = reader.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

/// Polls `check` until it returns `Some` or `deadline` passes.
pub fn wait_for<T>(deadline: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let start = Instant::now();
    loop {
        if let Some(value) = check() {
            return Some(value);
        }
        if start.elapsed() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The pids of `parent`'s `n` workers, once it has that many children and each has exec'd (10 s
/// at most).
pub fn wait_for_workers(parent: u32, n: usize) -> Vec<u32> {
    let own = std::fs::read(format!("/proc/{parent}/cmdline")).unwrap_or_default();
    wait_for(Duration::from_secs(10), || {
        let workers = children_of(parent);
        // A child between its fork and its exec still shows corral's own command line (and
        // corral's process group): it is not a worker yet.
        let execed = workers.iter().all(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|cmdline| cmdline != own)
        });
        (workers.len() == n && execed).then_some(workers)
    })
    .unwrap_or_else(|| panic!("{n} workers of {parent} did not start"))
}

/// The state letter of a process (`R`, `S`, `Z`...), or `None` when it does not exist.
pub fn process_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain spaces: the state follows the last ')'.
    stat[stat.rfind(')')? + 1..].trim_start().chars().next()
}

/// Whether a process exists and is not a zombie.
pub fn alive(pid: u32) -> bool {
    matches!(process_state(pid), Some(state) if state != 'Z' && state != 'X')
}

/// Whether `pid` is a run's keeper (`corral keeper`), the one child of corral that is not a
/// worker.
pub fn is_keeper(pid: u32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .is_ok_and(|cmdline| cmdline.split(|&b| b == 0).nth(1) == Some(&b"keeper"[..]))
}

/// The pid of `parent`'s keeper, once it has one (10 s at most).
pub fn keeper_of(parent: u32) -> u32 {
    wait_for(Duration::from_secs(10), || {
        all_children_of(parent)
            .into_iter()
            .find(|&pid| is_keeper(pid))
    })
    .unwrap_or_else(|| panic!("{parent} started no keeper"))
}

/// Pids of the live workers of a corral `parent` (its children but its keeper), from `/proc`.
pub fn children_of(parent: u32) -> Vec<u32> {
    let mut children = all_children_of(parent);
    children.retain(|&pid| !is_keeper(pid));
    children
}

/// Pids of the live children of `parent`, from `/proc`.
pub fn all_children_of(parent: u32) -> Vec<u32> {
    let mut children = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return children;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some(after) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
            continue;
        };
        let fields: Vec<&str> = after.split_whitespace().collect();
        if fields.get(1).and_then(|p| p.parse::<u32>().ok()) == Some(parent) && fields[0] != "Z" {
            children.push(pid);
        }
    }
    children
}

/// Sends a signal; a process that is already gone is fine.
pub fn signal(pid: u32, signal: i32) {
    // SAFETY: kill has no memory-safety preconditions.
    unsafe {
        libc::kill(pid as libc::pid_t, signal);
    }
}

/// A temp dir for one test.
pub fn temp_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("corral-test-")
        .tempdir()
        .expect("temp dir")
}

/// Reads a results file: every line must be a well-formed result.
pub fn read_results(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap();
    text.lines()
        .map(|line| {
            serde_json::from_str::<Value>(line)
                .unwrap_or_else(|e| panic!("malformed line {line:?}: {e}"))
        })
        .collect()
}

/// Writes job lines to a file in `dir`.
pub fn write_jobs(dir: &Path, name: &str, lines: impl IntoIterator<Item = String>) -> PathBuf {
    let path = dir.join(name);
    let mut text = String::new();
    for line in lines {
        text.push_str(&line);
        text.push('\n');
    }
    std::fs::write(&path, text).unwrap();
    path
}

/// Job lines for the fault worker's `square` task: ids 0..n, each spinning `spin_us` first.
pub fn square_jobs(n: u64, spin_us: u64) -> impl Iterator<Item = String> {
    (0..n).map(move |i| {
        format!(r#"{{"id": {i}, "task": "square", "input": {{"n": {i}, "spin_us": {spin_us}}}}}"#)
    })
}

/// A small deterministic pseudo-random sequence, so failures can be reproduced.
pub struct Lcg(pub u64);

impl Lcg {
    pub fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Result lines without the fields that differ between runs of the same jobs (the worker's
/// pid, the time), sorted: for comparing two ways of running them.
pub fn comparable(results: Vec<Value>) -> Vec<String> {
    let mut lines: Vec<String> = results
        .into_iter()
        .map(|mut r| {
            let o = r.as_object_mut().expect("a result is an object");
            o.remove("worker");
            o.remove("ms");
            r.to_string()
        })
        .collect();
    lines.sort();
    lines
}
