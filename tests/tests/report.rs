//! `corral report`: the page of a real run, opened in headless Chromium (its rendered DOM must
//! hold the timeline and the histogram; a screenshot is kept in target/test-artifacts), and
//! the size of the page of a 10-million-job run.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::util::{Run, bin_dir, temp_dir, write_jobs};

/// Chromium, headless, with the flags this machine's closed network needs.
fn chromium(profile: &Path) -> Option<Command> {
    let found = Command::new("chromium")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        return None;
    }
    let mut command = Command::new("chromium");
    command
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .stdin(Stdio::null())
        .stderr(Stdio::null());
    Some(command)
}

/// Runs `command` to its end within a deadline (Chromium can hang on a broken setup).
fn output_within(mut command: Command, deadline: Duration) -> std::process::Output {
    let child = command.stdout(Stdio::piped()).spawn().unwrap();
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(deadline) {
        Ok(output) => output.unwrap(),
        Err(_) => {
            // Its own pid, then nothing of it is left (Chromium's children follow it).
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            panic!("chromium did not finish within {deadline:?}");
        }
    }
}

#[test]
fn the_report_of_a_real_run_renders_its_timeline_and_histogram_in_chromium() {
    let dir = temp_dir();
    let lines = (1..=600).map(|i| match i % 50 {
        0 => format!(r#"{{"id": {i}, "task": "sum_squares", "input": "not a list"}}"#),
        n if n % 3 == 0 => format!(r#"{{"id": {i}, "task": "spin", "input": {}}}"#, n % 7),
        _ => format!(r#"{{"id": {i}, "task": "primes", "input": {}}}"#, 1000 * i),
    });
    let jobs = write_jobs(dir.path(), "jobs.jsonl", lines);
    let (joblog, stats) = (dir.path().join("joblog"), dir.path().join("stats.json"));
    let out = Run::corral(["run", "-q", "-j", "2", "--joblog"])
        .args([&joblog])
        .arg_path("--stats", &stats)
        .args([&jobs])
        .output();
    out.expect_code(1);
    let page = dir.path().join("report.html");
    Run::corral(["report"])
        .args([&joblog])
        .arg_path("--stats", &stats)
        .arg_path("-o", &page)
        .output()
        .expect_code(0);
    let html = std::fs::read_to_string(&page).unwrap();
    // Self-contained: nothing is fetched.
    for outside in ["<script", "http://", "https://", "<link", "@import", "url("] {
        assert!(!html.contains(outside), "the page holds {outside:?}");
    }

    let profile = dir.path().join("chromium-profile");
    let Some(mut dump) = chromium(&profile) else {
        eprintln!("skipped: chromium is not installed (.ci/run installs it)");
        return;
    };
    dump.arg("--dump-dom")
        .arg(format!("file://{}", page.display()));
    let dom = output_within(dump, Duration::from_secs(60));
    let dom = String::from_utf8_lossy(&dom.stdout);
    for id in ["timeline", "histogram", "throughput"] {
        let at = dom
            .find(&format!("<svg id=\"{id}\""))
            .unwrap_or_else(|| panic!("no {id} in the rendered page:\n{dom}"));
        let figure = &dom[at..at + dom[at..].find("</svg>").unwrap()];
        assert!(figure.contains("<rect"), "{id} is empty: {figure}");
    }
    // 600 jobs: each has its bar on the timeline, green or red.
    let timeline = &dom[dom.find("<svg id=\"timeline\"").unwrap()..];
    let timeline = &timeline[..timeline.find("</svg>").unwrap()];
    assert_eq!(timeline.matches("<rect").count(), 600);
    assert_eq!(
        timeline.matches("#d0453c").count(),
        12,
        "the 12 failures in red"
    );
    assert!(
        dom.contains("<td>bad_input</td>"),
        "failures by kind from --stats"
    );

    let artifacts = bin_dir().join("../test-artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let screenshot = artifacts.join("report.png");
    let _ = std::fs::remove_file(&screenshot);
    let mut shoot = chromium(&profile).unwrap();
    shoot
        .arg("--window-size=1100,1400")
        .arg(format!("--screenshot={}", screenshot.display()))
        .arg(format!("file://{}", page.display()));
    output_within(shoot, Duration::from_secs(60));
    let png = std::fs::read(&screenshot).expect("a screenshot");
    assert!(png.starts_with(b"\x89PNG"), "not a PNG");
    assert!(
        png.len() > 10_000,
        "a blank screenshot? {} bytes",
        png.len()
    );
}

#[test]
fn the_report_of_ten_million_jobs_stays_small() {
    let dir = temp_dir();
    let input = dir.path().join("jobs.jsonl");
    {
        let mut file = std::io::BufWriter::new(std::fs::File::create(&input).unwrap());
        for i in 0..10_000_000u64 {
            writeln!(file, r#"{{"task":"sum_squares","input":[{}]}}"#, i % 1000).unwrap();
        }
    }
    let joblog = dir.path().join("joblog");
    Run::corral(["run", "-q", "-j", "2", "-o", "/dev/null"])
        .arg_path("--joblog", &joblog)
        .args([&input])
        .deadline(Duration::from_secs(300))
        .output()
        .expect_code(0);
    let page = dir.path().join("report.html");
    let out = Run::corral(["report"])
        .args([&joblog])
        .arg_path("-o", &page)
        .deadline(Duration::from_secs(300))
        .output();
    out.expect_code(0);
    let html = std::fs::read_to_string(&page).unwrap();
    assert!(html.contains("<b>10,000,000</b>jobs"), "{html}");
    assert!(html.contains("too many to draw one by one"));
    assert!(
        html.len() < 512 * 1024,
        "the page of 10M jobs is {} bytes",
        html.len()
    );
}

#[test]
fn a_file_that_is_no_joblog_is_refused_and_no_page_is_written() {
    let dir = temp_dir();
    let jobs = write_jobs(dir.path(), "jobs.jsonl", [r#"{"id": 1}"#.to_owned()]);
    let page = dir.path().join("report.html");
    let out = Run::corral(["report"])
        .args([&jobs])
        .arg_path("-o", &page)
        .output();
    out.expect_code(2);
    assert!(out.stderr.contains("is not a joblog"), "{}", out.stderr);
    assert!(!page.exists());
    let out = Run::corral(["report", "/nonexistent/joblog"]).output();
    out.expect_code(2);
    assert!(
        out.stderr.contains("cannot read /nonexistent/joblog"),
        "{}",
        out.stderr
    );
}
