//! The `exec` task of the built-in worker: one command per job (`corral run --exec`), made from
//! a template with GNU parallel's placeholders, run in the worker's own process group (so a
//! timeout's kill of the group takes the command and its children too), its output captured
//! up to a cap or written to files.
//!
//! The task exists only in a worker whose environment holds an [`ExecSpec`]
//! ([`corral_protocol::exec::ENV_EXEC`]), which only `corral run --exec` puts there.

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use corral_protocol::exec::{ENV_EXEC, ExecSpec};
use serde::Serialize;

use crate::TaskFailure;

/// How often a command that has exited but whose output pipes are still held open (by a
/// child it left running) is noticed.
const EXIT_CHECK: Duration = Duration::from_millis(50);

/// The spec in this process's environment, if any; a malformed one is an error.
pub fn spec_from_env() -> Result<Option<ExecSpec>, String> {
    match std::env::var(ENV_EXEC) {
        Err(_) => Ok(None),
        Ok(text) => serde_json::from_str(&text)
            .map(Some)
            .map_err(|err| format!("{ENV_EXEC} is not a command spec: {err}")),
    }
}

/// One job: its number (`{#}`) and its input, a string or an array of column strings.
#[derive(serde::Deserialize)]
struct ExecJob(u64, Arg);

#[derive(serde::Deserialize)]
#[serde(untagged)]
enum Arg {
    Line(String),
    Columns(Vec<String>),
}

/// What a command did, as its result's output.
#[derive(Serialize)]
struct Ran {
    status: Option<i32>,
    signal: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stdout: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stderr: Option<String>,
    /// Bytes of stdout past the cap, not kept.
    #[serde(skip_serializing_if = "is_zero")]
    stdout_cut: u64,
    #[serde(skip_serializing_if = "is_zero")]
    stderr_cut: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    stdout_file: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stderr_file: Option<String>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Runs the job's command and writes what it did to `out`. A command that exits non-zero or
/// is killed by a signal fails as `exit_status` or `signal`, with the same output.
pub fn run(
    spec: &ExecSpec,
    slot: &str,
    input: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), TaskFailure> {
    let ExecJob(number, arg) = serde_json::from_slice(input).map_err(|err| {
        TaskFailure::BadInput(format!(
            "an exec job's input is a string or an array of strings: {err}"
        ))
    })?;
    let columns = match (&arg, &spec.colsep) {
        (Arg::Line(line), Some(sep)) => line.split(sep.as_str()).map(str::to_owned).collect(),
        (Arg::Line(line), None) => vec![line.clone()],
        (Arg::Columns(columns), _) => columns.clone(),
    };
    let whole = match arg {
        Arg::Line(line) => line,
        Arg::Columns(columns) => columns.join(" "),
    };
    let values = Values {
        whole: &whole,
        columns: &columns,
        number,
        slot,
    };
    let argv = expand(&spec.argv, &values, spec.shell);
    let (program, args) = argv
        .split_first()
        .expect("the supervisor checked --exec is not empty");

    let mut command = Command::new(program);
    command.args(args).stdin(Stdio::null());
    let files = match &spec.output_dir {
        Some(dir) => {
            let out_path = format!("{dir}/{number}.out");
            let err_path = format!("{dir}/{number}.err");
            let open = |path: &str| {
                File::create(path)
                    .map_err(|err| TaskFailure::TaskError(format!("cannot create {path}: {err}")))
            };
            command.stdout(open(&out_path)?).stderr(open(&err_path)?);
            Some((out_path, err_path))
        }
        None => {
            command.stdout(Stdio::piped()).stderr(Stdio::piped());
            None
        }
    };
    let mut child = command.spawn().map_err(|err| {
        TaskFailure::TaskError(match err.kind() {
            io::ErrorKind::NotFound => format!("cannot run {program}: not found"),
            _ => format!("cannot run {program}: {err}"),
        })
    })?;
    let (status, captured) = match files {
        Some(_) => (wait(&mut child), None),
        None => {
            let captured = capture(&mut child, spec.capture as usize);
            (wait(&mut child), Some(captured))
        }
    };
    let status = status
        .map_err(|err| TaskFailure::TaskError(format!("cannot wait for {program}: {err}")))?;
    let signal = status.signal().map(signal_name);
    let mut ran = Ran {
        status: status.code(),
        signal: signal.clone(),
        stdout: None,
        stderr: None,
        stdout_cut: 0,
        stderr_cut: 0,
        stdout_file: None,
        stderr_file: None,
    };
    if let Some([stdout, stderr]) = captured {
        ran.stdout = Some(String::from_utf8_lossy(&stdout.kept).into_owned());
        ran.stderr = Some(String::from_utf8_lossy(&stderr.kept).into_owned());
        ran.stdout_cut = stdout.cut;
        ran.stderr_cut = stderr.cut;
    }
    if let Some((stdout, stderr)) = files {
        ran.stdout_file = Some(stdout);
        ran.stderr_file = Some(stderr);
    }
    serde_json::to_writer(&mut *out, &ran).expect("writing to a Vec cannot fail");
    match (status.code(), signal) {
        (Some(0), _) => Ok(()),
        (Some(code), _) => Err(TaskFailure::Described {
            error_type: "exit_status".into(),
            message: format!("{program} exited with status {code}"),
        }),
        (None, signal) => Err(TaskFailure::Described {
            error_type: "signal".into(),
            message: format!(
                "{program} was killed by {}",
                signal.as_deref().unwrap_or("a signal")
            ),
        }),
    }
}

fn wait(child: &mut Child) -> io::Result<ExitStatus> {
    loop {
        match child.wait() {
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

fn signal_name(signal: i32) -> String {
    match signal {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGALRM => "SIGALRM",
        libc::SIGTERM => "SIGTERM",
        libc::SIGUSR1 => "SIGUSR1",
        libc::SIGUSR2 => "SIGUSR2",
        libc::SIGXCPU => "SIGXCPU",
        libc::SIGXFSZ => "SIGXFSZ",
        other => return format!("signal {other}"),
    }
    .to_owned()
}

/// The start of one output stream, and how much more there was.
#[derive(Default)]
struct Captured {
    kept: Vec<u8>,
    cut: u64,
}

/// Reads the child's stdout and stderr together, keeping at most `cap` bytes of each, until
/// both close or the child has exited and what it left is read.
fn capture(child: &mut Child, cap: usize) -> [Captured; 2] {
    let mut captured = [Captured::default(), Captured::default()];
    let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
        return captured;
    };
    let mut pipes: [Option<Box<dyn ReadFd>>; 2] = [Some(Box::new(stdout)), Some(Box::new(stderr))];
    for pipe in pipes.iter().flatten() {
        set_nonblocking(pipe.as_fd());
    }
    let mut exited = false;
    let mut buf = [0u8; 16 * 1024];
    loop {
        let open: Vec<usize> = (0..2).filter(|&i| pipes[i].is_some()).collect();
        if open.is_empty() {
            return captured;
        }
        if !exited {
            let fds: Vec<BorrowedFd<'_>> = open
                .iter()
                .map(|&i| pipes[i].as_ref().expect("open").as_fd())
                .collect();
            if !poll(&fds, EXIT_CHECK) && matches!(child.try_wait(), Ok(Some(_))) {
                // Nothing to read for a while, and the command is gone: what holds its pipes
                // open is something it left running. One more pass reads what is there.
                exited = true;
            }
        }
        for &i in &open {
            loop {
                let pipe = pipes[i].as_mut().expect("open");
                match pipe.read(&mut buf) {
                    Ok(0) => {
                        pipes[i] = None;
                        break;
                    }
                    Ok(n) => {
                        let stream = &mut captured[i];
                        let room = cap.saturating_sub(stream.kept.len()).min(n);
                        stream.kept.extend_from_slice(&buf[..room]);
                        stream.cut += (n - room) as u64;
                    }
                    Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                    Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                        if exited {
                            // Held open by something the command left behind: stop here.
                            pipes[i] = None;
                        }
                        break;
                    }
                    Err(_) => {
                        pipes[i] = None;
                        break;
                    }
                }
            }
        }
    }
}

trait ReadFd: Read + AsFd {}
impl<T: Read + AsFd> ReadFd for T {}

fn set_nonblocking(fd: BorrowedFd<'_>) {
    // SAFETY: fcntl on a file descriptor owned by the caller; no memory is involved.
    unsafe {
        let flags = libc::fcntl(fd.as_raw_fd(), libc::F_GETFL);
        libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK);
    }
}

/// Waits until one of `fds` is readable or closed, at most `timeout`; false if none was.
fn poll(fds: &[BorrowedFd<'_>], timeout: Duration) -> bool {
    let mut polls: Vec<libc::pollfd> = fds
        .iter()
        .map(|fd| libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    // SAFETY: `polls` is a valid array of `polls.len()` pollfd structs whose fds are borrowed
    // for the call. An interrupted poll returns early (-1), which counts as nothing ready.
    let ready = unsafe {
        libc::poll(
            polls.as_mut_ptr(),
            polls.len() as libc::nfds_t,
            timeout.as_millis() as libc::c_int,
        )
    };
    ready > 0
}

/// What the placeholders of one job stand for.
pub struct Values<'a> {
    /// The whole input: `{}` and the path forms.
    pub whole: &'a str,
    /// The columns: `{1}`..`{n}`.
    pub columns: &'a [String],
    /// The job number: `{#}`.
    pub number: u64,
    /// The worker slot: `{%}`.
    pub slot: &'a str,
}

/// The command's words with every placeholder replaced. Without any placeholder the input is
/// added as the last argument, as GNU parallel does. With `shell` the template is
/// `["sh", "-c", script]`, and every value goes to `sh` as a positional parameter, never as
/// script text.
pub fn expand(template: &[String], values: &Values<'_>, shell: bool) -> Vec<String> {
    if shell && let [sh, dash_c, script] = template {
        return shell_command(sh, dash_c, script, values);
    }
    let mut found = false;
    let mut argv: Vec<String> = template
        .iter()
        .map(|word| replace(word, values, &mut found))
        .collect();
    if !found {
        argv.push(values.whole.to_owned());
    }
    argv
}

fn replace(word: &str, values: &Values<'_>, found: &mut bool) -> String {
    let mut out = String::with_capacity(word.len());
    let mut rest = word;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        match placeholder_at(&rest[open..], values) {
            Some((value, len)) => {
                *found = true;
                out.push_str(&value);
                rest = &rest[open + len..];
            }
            None => {
                out.push('{');
                rest = &rest[open + 1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// The placeholder `text` starts with: its value and its length in bytes.
fn placeholder_at(text: &str, values: &Values<'_>) -> Option<(String, usize)> {
    let close = text.find('}')?;
    Some((placeholder(&text[1..close], values)?, close + 1))
}

/// Where a shell script's lexer stands: what quotes or substitution it is inside.
#[derive(Clone, Copy, PartialEq)]
enum Quoting {
    /// Not quoted (at the top, or inside `$(...)` with this many open parentheses).
    Plain(u32),
    Single,
    Double,
    Backtick,
}

/// `sh -c SCRIPT sh VALUE...`: every placeholder in the script becomes a reference to a
/// positional parameter (`"${1}"`, `${1}` inside double quotes, `'"${1}"'` inside single
/// quotes) and its value that parameter. A value is never part of the script's text, so no
/// quoting in the template, not even quotes around the placeholder, can make the shell read a
/// value as code; the lexer's only task is to keep each value one word.
fn shell_command(sh: &str, dash_c: &str, script: &str, values: &Values<'_>) -> Vec<String> {
    let mut out = String::with_capacity(script.len() + 16);
    let mut parameters: Vec<String> = Vec::new();
    let mut stack = vec![Quoting::Plain(0)];
    let mut rest = script;
    while let Some(c) = rest.chars().next() {
        let quoting = *stack.last().expect("the bottom is never popped");
        if c == '{'
            && let Some((value, len)) = placeholder_at(rest, values)
        {
            parameters.push(value);
            let n = parameters.len();
            match quoting {
                Quoting::Double => out.push_str(&format!("${{{n}}}")),
                Quoting::Single => out.push_str(&format!("'\"${{{n}}}\"'")),
                Quoting::Plain(_) | Quoting::Backtick => out.push_str(&format!("\"${{{n}}}\"")),
            }
            rest = &rest[len..];
            continue;
        }
        let mut taken = c.len_utf8();
        match (quoting, c) {
            (Quoting::Single, '\'') | (Quoting::Double, '"') | (Quoting::Backtick, '`') => {
                stack.pop();
            }
            (Quoting::Single, _) => {}
            // A backslash quotes the next character (outside single quotes).
            (_, '\\') => taken += rest[1..].chars().next().map_or(0, char::len_utf8),
            (_, '$') if rest[1..].starts_with('(') => {
                stack.push(Quoting::Plain(0));
                taken += 1;
            }
            (_, '`') => stack.push(Quoting::Backtick),
            (Quoting::Double, _) => {}
            (_, '\'') => stack.push(Quoting::Single),
            (_, '"') => stack.push(Quoting::Double),
            (Quoting::Plain(depth), '(') if stack.len() > 1 => {
                *stack.last_mut().expect("not empty") = Quoting::Plain(depth + 1);
            }
            (Quoting::Plain(0), ')') if stack.len() > 1 => {
                stack.pop();
            }
            (Quoting::Plain(depth), ')') if stack.len() > 1 => {
                *stack.last_mut().expect("not empty") = Quoting::Plain(depth - 1);
            }
            _ => {}
        }
        out.push_str(&rest[..taken]);
        rest = &rest[taken..];
    }
    if parameters.is_empty() {
        // No placeholder: the input is the last word.
        parameters.push(values.whole.to_owned());
        out.push_str(" \"${1}\"");
    }
    let mut argv = vec![sh.to_owned(), dash_c.to_owned(), out, sh.to_owned()];
    argv.extend(parameters);
    argv
}

/// The value of placeholder `{name}`; `None` when `name` is not one (the braces stay as
/// they are, so that `awk '{print}'` survives).
fn placeholder(name: &str, values: &Values<'_>) -> Option<String> {
    let whole = values.whole;
    let base = whole.rsplit_once('/').map_or(whole, |(_, base)| base);
    let no_ext = |s: &str| -> String {
        // An extension is a dot after the last slash, not at the start of the name.
        let name_start = s.rfind('/').map_or(0, |i| i + 1);
        match s[name_start..].rfind('.') {
            Some(dot) if dot > 0 => s[..name_start + dot].to_owned(),
            _ => s.to_owned(),
        }
    };
    Some(match name {
        "" => whole.to_owned(),
        "." => no_ext(whole),
        "/" => base.to_owned(),
        "//" => match whole.rsplit_once('/') {
            Some(("", _)) => "/".to_owned(),
            Some((dir, _)) => dir.to_owned(),
            None => ".".to_owned(),
        },
        "/." => no_ext(base),
        "#" => values.number.to_string(),
        "%" => values.slot.to_owned(),
        digits if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) => {
            let n: usize = digits.parse().ok()?;
            values
                .columns
                .get(n.checked_sub(1)?)
                .cloned()
                .unwrap_or_default()
        }
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(template: &[&str], whole: &str, shell: bool) -> Vec<String> {
        let template: Vec<String> = template.iter().map(|s| s.to_string()).collect();
        let columns: Vec<String> = whole.split(',').map(str::to_owned).collect();
        let values = Values {
            whole,
            columns: &columns,
            number: 7,
            slot: "2",
        };
        expand(&template, &values, shell)
    }

    #[test]
    fn placeholders_are_replaced_as_gnu_parallel_does() {
        let got = words(
            &["x", "{}", "{.}", "{/}", "{//}", "{/.}", "{#}", "{%}"],
            "dir/sub/a.tar.gz",
            false,
        );
        assert_eq!(
            got,
            [
                "x",
                "dir/sub/a.tar.gz",
                "dir/sub/a.tar",
                "a.tar.gz",
                "dir/sub",
                "a.tar",
                "7",
                "2"
            ]
        );
        assert_eq!(words(&["{//}", "{.}", "{/.}"], "a", false), [".", "a", "a"]);
        assert_eq!(words(&["{//}"], "/a", false), ["/"]);
        assert_eq!(words(&["{.}"], "d.x/.hidden", false), ["d.x/.hidden"]);
    }

    #[test]
    fn columns_prefixes_and_unknown_braces() {
        assert_eq!(
            words(&["cp", "{1}", "out/{2}.bak", "{3}", "{0}"], "a,b", false),
            ["cp", "a", "out/b.bak", "", "{0}"]
        );
        assert_eq!(
            words(&["awk", "{print}"], "f", false),
            ["awk", "{print}", "f"]
        );
    }

    #[test]
    fn without_placeholders_the_input_is_the_last_argument() {
        assert_eq!(
            words(&["sha256sum"], "my file", false),
            ["sha256sum", "my file"]
        );
        assert_eq!(
            words(&["sh", "-c", "wc -c"], "it's", true),
            ["sh", "-c", "wc -c \"${1}\"", "sh", "it's"]
        );
    }

    #[test]
    fn with_shell_values_are_positional_parameters_quoted_for_where_they_stand() {
        assert_eq!(
            words(&["sh", "-c", "echo {} > {.}.txt"], "a b;rm x.c", true),
            [
                "sh",
                "-c",
                "echo \"${1}\" > \"${2}\".txt",
                "sh",
                "a b;rm x.c",
                "a b;rm x"
            ]
        );
        let script = |template: &str| words(&["sh", "-c", template], "v", true)[2].clone();
        assert_eq!(script("echo \"{}\""), "echo \"${1}\"");
        assert_eq!(script("echo '{}'"), "echo ''\"${1}\"''");
        assert_eq!(script("echo \"it's {/}\""), "echo \"it's ${1}\"");
        assert_eq!(
            script("echo \"$(basename {})\""),
            "echo \"$(basename \"${1}\")\""
        );
        assert_eq!(script("echo `echo '{}'`"), "echo `echo ''\"${1}\"''`");
        assert_eq!(script("echo $((1+2)) {}"), "echo $((1+2)) \"${1}\"");
        assert_eq!(script("echo \\'{}"), "echo \\'\"${1}\"");
        assert_eq!(script("awk '{print}' {}"), "awk '{print}' \"${1}\"");
    }

    /// What `sh` prints for `printf '[%s]'` of the template's replacements.
    fn shell_prints(template: &str, whole: &str) -> String {
        let argv = words(&["sh", "-c", template], whole, true);
        let out = Command::new(&argv[0])
            .args(&argv[1..])
            .output()
            .expect("sh runs");
        assert!(out.status.success(), "{argv:?}: {out:?}");
        String::from_utf8(out.stdout).unwrap()
    }

    #[test]
    fn no_quoting_around_a_placeholder_lets_the_shell_read_a_value_as_code() {
        let dir = std::env::temp_dir().join(format!("corral-exec-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let witness = dir.join("ran");
        let w = witness.display();
        let hostile = [
            format!("$(touch {w})"),
            format!("`touch {w}`"),
            format!("'; touch {w}; '"),
            format!("\"; touch {w}; \""),
            format!("x\"$(touch {w})\"y"),
            format!("a b\\\" ;touch {w} #"),
        ];
        let forms = ["{}", "{.}", "{/}", "{//}", "{/.}", "{1}"];
        for value in &hostile {
            for form in forms {
                for template in [
                    format!("printf '[%s]' {form}"),
                    format!("printf '[%s]' \"{form}\""),
                    format!("printf '[%s]' '{form}'"),
                    format!("printf '[%s]' \"$(printf %s {form})\""),
                    format!("printf '[%s]' `printf %s '{form}'`"),
                ] {
                    let expected = shell_prints(&format!("printf '[%s]' {form}"), value);
                    let printed = shell_prints(&template, value);
                    assert!(!witness.exists(), "{template} with {value:?} ran code");
                    if !template.contains('`') {
                        assert_eq!(printed, expected, "{template} with {value:?}");
                    }
                }
            }
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
