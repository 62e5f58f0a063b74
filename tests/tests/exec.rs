//! `corral run --exec`: a command per job inside the built-in workers, with GNU parallel's
//! placeholders, supervised like any job (timeouts kill the command's whole group), and never
//! run unless --exec was given on the command line.

use std::time::Duration;

use corral_protocol::byte_string;
use serde_json::Value;
use serde_json::value::RawValue;

use crate::util::{Run, alive, temp_dir, wait_for};

fn stdout_of(result: &Value) -> &str {
    result["output"]["stdout"]
        .as_str()
        .unwrap_or_else(|| panic!("no stdout: {result}"))
}

#[test]
fn every_placeholder_is_replaced_and_each_result_carries_its_line() {
    let out = Run::corral([
        "run",
        "-j",
        "2",
        "--keep-order",
        "--lines",
        "--exec",
        "printf '%s|' {} {.} {/} {//} {/.} {#} {%}",
    ])
    .stdin("dir/sub/a.tar.gz\nplain\n/abs/x.c\n")
    .output();
    out.expect_code(0);
    let results = out.results();
    assert_eq!(results.len(), 3);
    let expected = [
        (
            "dir/sub/a.tar.gz",
            "dir/sub/a.tar.gz|dir/sub/a.tar|a.tar.gz|dir/sub|a.tar|1|",
        ),
        ("plain", "plain|plain|plain|.|plain|2|"),
        ("/abs/x.c", "/abs/x.c|/abs/x|x.c|/abs|x|3|"),
    ];
    for (result, (line, printed)) in results.iter().zip(expected) {
        assert_eq!(result["input"], line, "{result}");
        let stdout = stdout_of(result);
        assert!(stdout.starts_with(printed), "{line}: {stdout}");
        let slot = stdout.trim_end_matches('|').rsplit('|').next().unwrap();
        assert!(slot == "1" || slot == "2", "worker slot {slot}");
        assert_eq!(result["output"]["status"], 0);
    }
}

#[test]
fn columns_come_from_colsep_and_a_command_without_placeholders_gets_the_input_last() {
    let out = Run::corral([
        "run",
        "-j",
        "1",
        "--lines",
        "--colsep",
        ",",
        "--exec",
        "echo {2}-{1}",
    ])
    .stdin("a,b\nc,d\n")
    .output();
    out.expect_code(0);
    let outputs: Vec<String> = out
        .results()
        .iter()
        .map(|r| stdout_of(r).to_owned())
        .collect();
    assert!(
        outputs.contains(&"b-a\n".to_owned()) && outputs.contains(&"d-c\n".to_owned()),
        "{outputs:?}"
    );

    let out = Run::corral(["run", "--lines", "--exec", "echo first"])
        .stdin("it's one argument\n")
        .output();
    out.expect_code(0);
    assert_eq!(stdout_of(&out.results()[0]), "first it's one argument\n");
}

#[test]
fn without_shell_no_shell_runs_and_with_it_replacements_are_quoted() {
    let line = "a b; echo injected";
    let out = Run::corral(["run", "--lines", "--exec", "echo {}"])
        .stdin(format!("{line}\n"))
        .output();
    out.expect_code(0);
    assert_eq!(stdout_of(&out.results()[0]), format!("{line}\n"));
    let out = Run::corral([
        "run",
        "--lines",
        "--shell",
        "--exec",
        "echo {} | tr a-z A-Z",
    ])
    .stdin(format!("{line}\n"))
    .output();
    out.expect_code(0);
    assert_eq!(stdout_of(&out.results()[0]), "A B; ECHO INJECTED\n");
}

#[test]
fn with_shell_no_quotes_around_a_placeholder_let_a_line_run_as_code() {
    // People quote placeholders by habit; with the values passed as positional parameters,
    // no quoting in the template can reopen one.
    let dir = temp_dir();
    let witness = dir.path().join("ran");
    let w = witness.display();
    let lines = [
        format!("$(touch {w})"),
        format!("`touch {w}`"),
        format!("'; touch {w}; '"),
        format!("\"; touch {w}; \""),
    ];
    let input: String = lines.iter().map(|line| format!("{line}\n")).collect();
    for template in [
        "printf '[%s]' {}",
        "printf '[%s]' \"{}\"",
        "printf '[%s]' '{}'",
        "printf '[%s]' \"$(printf %s {})\"",
        "printf '[%s]' \"{.}\"",
        "printf '[%s]' '{1}'",
    ] {
        let out = Run::corral([
            "run",
            "--keep-order",
            "--lines",
            "--shell",
            "--exec",
            template,
        ])
        .stdin(input.clone())
        .output();
        out.expect_code(0);
        assert!(!witness.exists(), "{template}: a line ran as code");
        for (result, line) in out.results().iter().zip(&lines) {
            let printed = stdout_of(result);
            if template.contains("{.}") {
                assert!(
                    printed.starts_with('[') && printed.ends_with(']'),
                    "{printed}"
                );
            } else {
                assert_eq!(printed, format!("[{line}]"), "{template}");
            }
        }
    }
}

#[test]
fn a_failing_command_is_a_task_error_with_its_status_and_output() {
    let out = Run::corral([
        "run",
        "--lines",
        "--shell",
        "--exec",
        "echo out; echo err >&2; exit {}",
    ])
    .stdin("3\n")
    .output();
    out.expect_code(1);
    let result = &out.results()[0];
    assert_eq!(result["error"]["kind"], "task_error", "{result}");
    assert_eq!(result["error"]["type"], "exit_status", "{result}");
    assert_eq!(
        result["error"]["message"], "sh exited with status 3",
        "{result}"
    );
    assert_eq!(result["output"]["status"], 3, "{result}");
    assert_eq!(result["output"]["stdout"], "out\n", "{result}");
    assert_eq!(result["output"]["stderr"], "err\n", "{result}");
    assert_eq!(result["attempts"], 1, "a failed command is not retried");

    let out = Run::corral(["run", "--lines", "--shell", "--exec", "kill -TERM $$"])
        .stdin("x\n")
        .output();
    out.expect_code(1);
    let result = &out.results()[0];
    assert_eq!(result["error"]["type"], "signal", "{result}");
    assert_eq!(result["output"]["signal"], "SIGTERM", "{result}");
}

#[test]
fn output_is_capped_or_written_to_files() {
    let out = Run::corral(["run", "--lines", "--capture", "10", "--exec", "seq"])
        .stdin("1000\n")
        .output();
    out.expect_code(0);
    let ran = &out.results()[0]["output"];
    assert_eq!(ran["stdout"], "1\n2\n3\n4\n5\n", "{ran}");
    let total: usize = (1..=1000).map(|n: u32| n.to_string().len() + 1).sum();
    assert_eq!(ran["stdout_cut"], total - 10, "{ran}");

    let dir = temp_dir();
    let files = dir.path().join("out");
    let out = Run::corral([
        "run",
        "--lines",
        "--shell",
        "--exec",
        "echo {}; echo e{} >&2",
    ])
    .args(["--output-dir".as_ref(), files.as_os_str()])
    .stdin("a\nb\n")
    .output();
    out.expect_code(0);
    assert_eq!(std::fs::read_to_string(files.join("2.out")).unwrap(), "b\n");
    assert_eq!(
        std::fs::read_to_string(files.join("1.err")).unwrap(),
        "ea\n"
    );
    for result in out.results() {
        assert!(
            result["output"]["stdout_file"]
                .as_str()
                .unwrap()
                .ends_with(".out"),
            "{result}"
        );
        assert!(result["output"].get("stdout").is_none(), "{result}");
    }
}

#[test]
fn a_command_hanging_past_the_timeout_is_killed_with_its_children() {
    let dir = temp_dir();
    let pidfile = dir.path().join("sleep.pid");
    let out = Run::corral([
        "run",
        "--lines",
        "--timeout",
        "500ms",
        "--retries",
        "0",
        "--shell",
        "--exec",
        "sleep 1000 & echo $! > {}; wait",
    ])
    .stdin(format!("{}\n", pidfile.display()))
    .deadline(Duration::from_secs(30))
    .output();
    out.expect_code(1);
    let result = &out.results()[0];
    assert_eq!(result["error"]["kind"], "timeout", "{result}");
    let sleeper: u32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let gone = wait_for(Duration::from_secs(2), || (!alive(sleeper)).then_some(()));
    assert!(
        gone.is_some(),
        "the command's child {sleeper} survived the timeout"
    );
}

#[test]
fn exec_jobs_are_refused_without_exec_on_the_command_line() {
    let dir = temp_dir();
    let victim = dir.path().join("victim");
    std::fs::write(&victim, "still here").unwrap();
    let job =
        serde_json::json!({"id": "evil", "task": "exec", "input": victim.display().to_string()});
    let out = Run::corral(["run"]).stdin(job.to_string()).output();
    out.expect_code(1);
    let result = &out.results()[0];
    assert_eq!(result["error"]["kind"], "unknown_task", "{result}");
    assert!(
        result["error"]["message"]
            .as_str()
            .unwrap()
            .contains("--exec"),
        "{result}"
    );
    assert!(victim.exists());
    // Nor does a job line name a program of its own when --exec is given: it names inputs.
    let out = Run::corral(["run", "--exec", "cat"])
        .stdin(job.to_string())
        .output();
    out.expect_code(0);
    assert_eq!(out.results()[0]["output"]["stdout"], "still here");
}

#[test]
fn a_missing_program_is_a_configuration_error() {
    let out = Run::corral(["run", "--lines", "--exec", "no-such-tool {}"])
        .stdin("x\n")
        .output();
    out.expect_code(2);
    assert!(
        out.stderr.contains("program \"no-such-tool\" not found"),
        "{}",
        out.stderr
    );
    let out = Run::corral(["run", "--lines"]).stdin("x\n").output();
    out.expect_code(2);
    assert!(
        out.stderr.contains("--lines needs --task"),
        "{}",
        out.stderr
    );
}

#[test]
fn n_slow_jobs_on_n_workers_run_one_per_worker() {
    // The first worker ready must not take a second job while the others are starting: four
    // half-second commands on four workers take half a second, not one.
    let out = Run::corral([
        "run",
        "-j",
        "4",
        "--lines",
        "--shell",
        "--exec",
        "sleep 0.5 # {}",
    ])
    .stdin("1\n2\n3\n4\n")
    .output();
    out.expect_code(0);
    let mut workers: Vec<u64> = out
        .results()
        .iter()
        .map(|r| r["worker"].as_u64().unwrap())
        .collect();
    workers.sort_unstable();
    workers.dedup();
    assert_eq!(workers.len(), 4, "one job per worker: {workers:?}");
}

/// Lines whose placeholders GNU parallel has views on: dot-files, trailing and doubled
/// slashes, extensions, quotes and shell syntax, spaces, empty and missing columns.
const TRICKY: &[&str] = &[
    ".bashrc",
    "dir/.hidden",
    "dir/sub/",
    "a//b",
    "//x",
    "dir//sub/f.c",
    "/",
    "a.",
    ".",
    "..",
    "x/..",
    "a b.tar.gz",
    "it's",
    "say \"hi\"",
    "$(touch x)",
    "back\\slash",
    "tab\there",
    "ümlaut/ß.txt",
    "a,b",
    "a,,b",
    ",lead",
    "trail,",
    "x,y,z",
    "only",
    "d/e.f,g/h.i",
    "-n",
];

/// What GNU parallel prints for `printf '[%s]\n' WORDS` over `TRICKY`, in order.
fn gnu_parallel(colsep: bool, words: &str) -> Option<String> {
    let out = gnu_parallel_of(TRICKY.join("\n").as_bytes(), colsep, words)?;
    Some(String::from_utf8(out).unwrap())
}

/// What GNU parallel prints for `printf '[%s]\n' WORDS` over the lines `input`, in order.
fn gnu_parallel_of(input: &[u8], colsep: bool, words: &str) -> Option<Vec<u8>> {
    let which = std::process::Command::new("parallel")
        .arg("--version")
        .output()
        .ok()?;
    if !which.status.success() {
        return None;
    }
    let mut command = std::process::Command::new("parallel");
    command.args(["-k", "--will-cite", "-j", "1"]);
    if colsep {
        command.args(["--colsep", ","]);
    }
    command.arg(format!("printf '[%s]\\n' {words}"));
    let mut child = command
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .ok()?;
    use std::io::Write;
    child.stdin.take().unwrap().write_all(input).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "GNU parallel failed");
    Some(out.stdout)
}

/// What corral prints for the same, with or without --shell.
fn corral_prints(colsep: bool, shell: bool, words: &str) -> String {
    let template = format!("printf '[%s]\\n' {words}");
    let mut args = vec![
        "run",
        "-j",
        "1",
        "--keep-order",
        "--lines",
        "--exec",
        &template,
    ];
    if colsep {
        args.extend(["--colsep", ","]);
    }
    if shell {
        args.push("--shell");
    }
    let out = Run::corral(args).stdin(TRICKY.join("\n") + "\n").output();
    out.expect_code(0);
    out.results()
        .iter()
        .map(|r| stdout_of(r).to_owned())
        .collect()
}

#[test]
fn placeholders_give_the_same_commands_as_gnu_parallel_side_by_side() {
    let cases = [
        (false, "{} {.} {/} {//} {/.} x{}y {1} {-1} {2} X{2}Y"),
        (
            true,
            "{} {1} {2} {3} {1.} {1/} {1//} {1/.} {-1} {2.} X{3}Y {.} {/} {//} {/.} x{}y {3}{3}",
        ),
        // Without a placeholder the input goes last: with columns, a word each.
        (true, ""),
        (false, ""),
    ];
    for (colsep, words) in cases {
        let Some(gnu) = gnu_parallel(colsep, words) else {
            eprintln!("skipped: GNU parallel is not installed (scripts/test installs it)");
            return;
        };
        for shell in [false, true] {
            let ours = corral_prints(colsep, shell, words);
            assert_eq!(
                ours, gnu,
                "colsep {colsep}, --shell {shell}, template {words:?}"
            );
        }
    }
}

#[test]
fn lines_that_are_not_utf8_pass_through_as_gnu_parallel_passes_them() {
    // Legal file names that are not UTF-8, alone, in paths, cut in a character, in columns.
    let lines: &[&[u8]] = &[
        b"caf\xe9.txt",
        b"dir/\xff\xfe/x.c",
        b"\xc3",
        b"ok \xc3\xa9",
        b"a\xff,b\xfe.d/e",
        b".\x80",
    ];
    let input = lines.join(&b'\n');
    let dir = temp_dir();
    let cases = [
        (false, "{} {.} {/} {//} {/.}"),
        (true, "{} {1} {2} {1.} {2/} {-1}"),
    ];
    for (colsep, words) in cases {
        let Some(gnu) = gnu_parallel_of(&input, colsep, words) else {
            eprintln!("skipped: GNU parallel is not installed (scripts/test installs it)");
            return;
        };
        for shell in [false, true] {
            let template = format!("printf '[%s]\\n' {words}");
            let results = dir.path().join(format!("{colsep}-{shell}.jsonl"));
            let mut args = vec![
                "run",
                "-j",
                "2",
                "--keep-order",
                "--lines",
                "--exec",
                &template,
            ];
            let results_arg = results.to_str().unwrap();
            args.extend(["-o", results_arg]);
            if colsep {
                args.extend(["--colsep", ","]);
            }
            if shell {
                args.push("--shell");
            }
            let mut stdin = input.clone();
            stdin.push(b'\n');
            Run::corral(args).stdin(stdin).output().expect_code(0);
            // The lines and the command's output come back byte for byte, each a JSON string
            // whose other bytes are lone surrogates, as Python's surrogateescape writes them.
            let mut printed = Vec::new();
            let text = std::fs::read_to_string(&results).unwrap();
            for (line, result) in lines.iter().zip(text.lines()) {
                #[derive(serde::Deserialize)]
                struct Ran<'a> {
                    #[serde(borrow)]
                    input: &'a RawValue,
                    output: Output<'a>,
                }
                #[derive(serde::Deserialize)]
                struct Output<'a> {
                    #[serde(borrow)]
                    stdout: &'a RawValue,
                }
                let ran: Ran = serde_json::from_str(result).unwrap();
                let decode = |raw: &RawValue| byte_string::decode(raw.get().as_bytes()).unwrap();
                assert_eq!(decode(ran.input), *line, "{result}");
                printed.extend(decode(ran.output.stdout));
            }
            assert_eq!(text.lines().count(), lines.len());
            assert_eq!(
                String::from_utf8_lossy(&printed),
                String::from_utf8_lossy(&gnu),
                "colsep {colsep}, --shell {shell}"
            );
            assert_eq!(printed, gnu, "colsep {colsep}, --shell {shell}");
        }
    }
}
