//! The `exec` task of the built-in worker: one command per job (`corral run --exec`), made from
//! a template with GNU parallel's placeholders, run in the worker's own process group (so a
//! timeout's kill of the group takes the command and its children too), its output captured
//! up to a cap or written to files.
//!
//! The task exists only in a worker whose environment holds an [`ExecSpec`]
//! ([`corral_protocol::exec::ENV_EXEC`]), which only `corral run --exec` puts there.

use std::ffi::OsString;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::ffi::OsStringExt;
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use corral_protocol::byte_string;
use corral_protocol::exec::{ENV_EXEC, ExecSpec};
use serde::Serialize;
use serde_json::value::RawValue;

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

/// One job: its number (`{#}`) and its input, a string or an array of column strings, each a
/// [`byte_string`] (a line need not be UTF-8).
#[derive(serde::Deserialize)]
struct ExecJob<'a>(u64, #[serde(borrow)] &'a RawValue);

enum Arg {
    Line(Vec<u8>),
    Columns(Vec<Vec<u8>>),
}

impl Arg {
    fn of(json: &RawValue) -> Option<Arg> {
        let text = json.get().as_bytes();
        if text.starts_with(b"[") {
            let columns: Vec<&RawValue> = serde_json::from_slice(text).ok()?;
            let columns = columns
                .iter()
                .map(|c| byte_string::decode(c.get().as_bytes()));
            return columns.collect::<Option<_>>().map(Arg::Columns);
        }
        byte_string::decode(text).map(Arg::Line)
    }
}

/// What a command did, as its result's output.
#[derive(Serialize)]
struct Ran {
    /// The command, its words quoted as a shell would read them, when the spec asks for it.
    #[serde(skip_serializing_if = "Option::is_none")]
    command: Option<String>,
    status: Option<i32>,
    signal: Option<String>,
    /// What the command wrote, as a [`byte_string`]: bytes that are not UTF-8 kept too.
    #[serde(skip_serializing_if = "Option::is_none")]
    stdout: Option<Box<RawValue>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stderr: Option<Box<RawValue>>,
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

/// `bytes` as a JSON string that keeps them all ([`byte_string::encode`]).
fn json_string(bytes: &[u8]) -> Box<RawValue> {
    let json = String::from_utf8(byte_string::encode(bytes)).expect("JSON text is UTF-8");
    RawValue::from_string(json).expect("a JSON string")
}

/// Runs the job's command and writes what it did to `out`. A command that exits non-zero or
/// is killed by a signal fails as `exit_status` or `signal`, with the same output.
pub fn run(
    spec: &ExecSpec,
    slot: &str,
    input: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), TaskFailure> {
    const NOT_STRINGS: &str = "an exec job's input is a string or an array of strings";
    let ExecJob(number, arg) = serde_json::from_slice(input)
        .map_err(|err| TaskFailure::BadInput(format!("{NOT_STRINGS}: {err}")))?;
    let arg = Arg::of(arg).ok_or_else(|| TaskFailure::BadInput(NOT_STRINGS.into()))?;
    let columns = match (&arg, &spec.colsep) {
        (Arg::Line(line), Some(sep)) => split_on(line, sep.as_bytes()),
        (Arg::Line(line), None) => vec![line.clone()],
        (Arg::Columns(columns), _) => columns.clone(),
    };
    let split = spec.colsep.is_some() || matches!(arg, Arg::Columns(_));
    let whole = match arg {
        Arg::Line(line) => line,
        Arg::Columns(columns) => columns.join(&b' '),
    };
    let values = Values {
        whole: &whole,
        columns: &columns,
        split,
        number,
        slot,
    };
    let argv = expand(&spec.argv, &values, spec.shell);
    let (program, args) = argv
        .split_first()
        .expect("the supervisor checked --exec is not empty");
    let program = program.to_string_lossy().into_owned();

    let mut command = Command::new(&argv[0]);
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
        command: spec.tell_command.then(|| {
            let words: Vec<String> = argv
                .iter()
                .map(|word| parallel_quote(&word.to_string_lossy()))
                .collect();
            words.join(" ")
        }),
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
        ran.stdout = Some(json_string(&stdout.kept));
        ran.stderr = Some(json_string(&stderr.kept));
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

/// `word` quoted for a shell as GNU parallel quotes a replacement (its
/// `shell_quote_scalar_default`), so that a joblog's Command reads as parallel's: as it is if
/// it holds only `-_.+/` and letters and digits, else in single quotes, a single quote in it
/// written `'"'"'`, and the empty quotes this leaves at either end taken off.
fn parallel_quote(word: &str) -> String {
    let safe = |c: char| c.is_ascii_alphanumeric() || "-_.+/".contains(c);
    if word.is_empty() {
        return "''".into();
    }
    if word.chars().all(safe) {
        return word.into();
    }
    let quoted = format!("'{}'", word.replace('\'', r#"'"'"'"#));
    let quoted = quoted.strip_prefix("''").unwrap_or(&quoted);
    quoted.strip_suffix("''").unwrap_or(quoted).to_owned()
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
    /// The whole input: `{}` and the path forms, unless it is cut into columns.
    pub whole: &'a [u8],
    /// The columns: `{1}`..`{n}`, `{-1}`..
    pub columns: &'a [Vec<u8>],
    /// Whether the input is cut into columns (`--colsep`, or a job whose input is an array):
    /// then `{}` and the path forms stand for every column, one word each, as in GNU parallel.
    pub split: bool,
    /// The job number: `{#}`.
    pub number: u64,
    /// The worker slot: `{%}`.
    pub slot: &'a str,
}

/// What one placeholder stands for.
#[derive(Debug, PartialEq)]
enum Expansion {
    /// A value.
    One(Vec<u8>),
    /// Every column, a word each (`{}` with columns).
    Many(Vec<Vec<u8>>),
    /// A column the input does not have: a word made of nothing else is left out, as GNU
    /// parallel leaves it out.
    Missing,
}

/// The command's words with every placeholder replaced. Without any placeholder the input is
/// added at the end (its columns, a word each, when it is cut), as GNU parallel does. With
/// `shell` the template is `["sh", "-c", script]`, and every value goes to `sh` as a
/// positional parameter, never as script text.
pub fn expand(template: &[String], values: &Values<'_>, shell: bool) -> Vec<OsString> {
    let words = match template {
        [sh, dash_c, script] if shell => shell_command(sh, dash_c, script, values),
        _ => words(template, values),
    };
    words.into_iter().map(OsString::from_vec).collect()
}

/// [`expand`] without a shell: each word of the template, placeholders replaced.
fn words(template: &[String], values: &Values<'_>) -> Vec<Vec<u8>> {
    let mut found = false;
    let mut argv = Vec::with_capacity(template.len() + 1);
    for word in template {
        replace(word, values, &mut found, &mut argv);
    }
    if !found {
        match all_of(values, <[u8]>::to_vec) {
            Expansion::Many(words) => argv.extend(words),
            Expansion::One(word) => argv.push(word),
            Expansion::Missing => {}
        }
    }
    argv
}

/// Appends the words `word` becomes.
fn replace(word: &str, values: &Values<'_>, found: &mut bool, out: &mut Vec<Vec<u8>>) {
    let mut current = Vec::with_capacity(word.len());
    // Whether anything but a missing column went into the word.
    let mut something = false;
    let mut rest = word;
    while let Some(open) = rest.find('{') {
        current.extend_from_slice(&rest.as_bytes()[..open]);
        something |= open > 0;
        match placeholder_at(&rest[open..], values) {
            Some((expansion, len)) => {
                *found = true;
                match expansion {
                    Expansion::One(value) => {
                        current.extend_from_slice(&value);
                        something = true;
                    }
                    Expansion::Many(words) => {
                        let mut words = words.into_iter();
                        if let Some(first) = words.next() {
                            current.extend_from_slice(&first);
                            something = true;
                        }
                        for next in words {
                            out.push(std::mem::replace(&mut current, next));
                        }
                    }
                    Expansion::Missing => {}
                }
                rest = &rest[open + len..];
            }
            None => {
                current.push(b'{');
                something = true;
                rest = &rest[open + 1..];
            }
        }
    }
    current.extend_from_slice(rest.as_bytes());
    something |= !rest.is_empty();
    if something || word.is_empty() {
        out.push(current);
    }
}

/// The placeholder `text` starts with: what it stands for and its length in bytes.
fn placeholder_at(text: &str, values: &Values<'_>) -> Option<(Expansion, usize)> {
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
/// value as code; the lexer's only task is to keep each value one word. A missing column is
/// an empty parameter referred to unquoted, so that, alone, it is no word at all.
fn shell_command(sh: &str, dash_c: &str, script: &str, values: &Values<'_>) -> Vec<Vec<u8>> {
    let mut out = String::with_capacity(script.len() + 16);
    let mut parameters: Vec<Vec<u8>> = Vec::new();
    let mut stack = vec![Quoting::Plain(0)];
    let mut rest = script;
    let mut found = false;
    while let Some(c) = rest.chars().next() {
        let quoting = *stack.last().expect("the bottom is never popped");
        if c == '{'
            && let Some((expansion, len)) = placeholder_at(rest, values)
        {
            found = true;
            refer(&mut out, &mut parameters, expansion, quoting);
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
    if !found {
        // No placeholder: the input is the last word (its columns, when it is cut).
        out.push(' ');
        refer(
            &mut out,
            &mut parameters,
            all_of(values, <[u8]>::to_vec),
            Quoting::Plain(0),
        );
    }
    let [sh, dash_c] = [sh, dash_c].map(|word| word.as_bytes().to_vec());
    let mut argv = vec![sh.clone(), dash_c, out.into_bytes(), sh];
    argv.extend(parameters);
    argv
}

/// Writes the reference to `expansion`'s parameters into the script, as `quoting` needs it.
fn refer(out: &mut String, parameters: &mut Vec<Vec<u8>>, expansion: Expansion, quoting: Quoting) {
    let (values, missing) = match expansion {
        Expansion::One(value) => (vec![value], false),
        Expansion::Many(values) => (values, false),
        Expansion::Missing => (vec![Vec::new()], true),
    };
    let refs: Vec<String> = values
        .into_iter()
        .map(|value| {
            parameters.push(value);
            format!("${{{}}}", parameters.len())
        })
        .collect();
    match quoting {
        _ if missing && matches!(quoting, Quoting::Plain(_) | Quoting::Backtick) => {
            out.push_str(&refs.join(" "));
        }
        Quoting::Double => out.push_str(&refs.join(" ")),
        Quoting::Single => out.push_str(&format!("'\"{}\"'", refs.join(" "))),
        Quoting::Plain(_) | Quoting::Backtick => {
            let quoted: Vec<String> = refs.iter().map(|r| format!("\"{r}\"")).collect();
            out.push_str(&quoted.join(" "));
        }
    }
}

/// GNU parallel's `{.}`: without the last `.` and what follows it, when no `/` or `.` does.
fn no_ext(s: &[u8]) -> Vec<u8> {
    match s.iter().rposition(|&b| b == b'.') {
        Some(dot) if !s[dot + 1..].contains(&b'/') => s[..dot].to_vec(),
        _ => s.to_vec(),
    }
}

/// GNU parallel's `{/}`: what follows the last `/`.
fn base(s: &[u8]) -> &[u8] {
    s.rsplit(|&b| b == b'/').next().unwrap_or(s)
}

/// GNU parallel's `{//}`, POSIX `dirname`: `dir/sub/` is in `dir`, `a//b` in `a`, `//x` in
/// `/`, a name without a slash in `.`.
fn dir(s: &[u8]) -> Vec<u8> {
    let trim_slashes =
        |s: &[u8]| -> usize { s.iter().rposition(|&b| b != b'/').map_or(0, |i| i + 1) };
    if !s.is_empty() && trim_slashes(s) == 0 {
        return b"/".to_vec();
    }
    let trimmed = &s[..trim_slashes(s)];
    let Some(slash) = trimmed.iter().rposition(|&b| b == b'/') else {
        return b".".to_vec();
    };
    let parent = &trimmed[..trim_slashes(&trimmed[..=slash])];
    if parent.is_empty() {
        b"/".to_vec()
    } else {
        parent.to_vec()
    }
}

/// A path form (`""`, `.`, `/`, `//`, `/.`) applied to `s`; `None` for anything else.
fn path_form(form: &str, s: &[u8]) -> Option<Vec<u8>> {
    Some(match form {
        "" => s.to_vec(),
        "." => no_ext(s),
        "/" => base(s).to_vec(),
        "//" => dir(s),
        "/." => no_ext(base(s)),
        _ => return None,
    })
}

/// `line` cut at every `sep` (not empty).
fn split_on(line: &[u8], sep: &[u8]) -> Vec<Vec<u8>> {
    let mut columns = Vec::new();
    let mut rest = line;
    while let Some(at) = rest.windows(sep.len()).position(|w| w == sep) {
        columns.push(rest[..at].to_vec());
        rest = &rest[at + sep.len()..];
    }
    columns.push(rest.to_vec());
    columns
}

/// The whole input under `f`: one value, or with columns a word per column.
fn all_of(values: &Values<'_>, f: impl Fn(&[u8]) -> Vec<u8>) -> Expansion {
    if values.split {
        Expansion::Many(values.columns.iter().map(|c| f(c)).collect())
    } else {
        Expansion::One(f(values.whole))
    }
}

/// What placeholder `{name}` stands for; `None` when `name` is not one (the braces stay as
/// they are, so that `awk '{print}'` survives). GNU parallel's forms: `{}` `{.}` `{/}` `{//}`
/// `{/.}` `{#}` `{%}`, and for column N (from the end with `-N`) `{N}` `{N.}` `{N/}` `{N//}`
/// `{N/.}`. `{0}` stays as it is.
fn placeholder(name: &str, values: &Values<'_>) -> Option<Expansion> {
    match name {
        "#" => return Some(Expansion::One(values.number.to_string().into_bytes())),
        "%" => return Some(Expansion::One(values.slot.as_bytes().to_vec())),
        _ => {}
    }
    if path_form(name, b"").is_some() {
        return Some(all_of(values, |s| {
            path_form(name, s).expect("checked to be a form")
        }));
    }
    let (negative, rest) = match name.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, name),
    };
    let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
    if digits == 0 {
        return None;
    }
    let (number, form) = rest.split_at(digits);
    path_form(form, b"")?;
    let n: usize = number.parse().ok()?;
    if n == 0 {
        return None;
    }
    let columns = values.columns;
    let index = if negative {
        columns.len().checked_sub(n)
    } else {
        Some(n - 1)
    };
    Some(match index.and_then(|i| columns.get(i)) {
        Some(column) => Expansion::One(path_form(form, column).expect("checked to be a form")),
        None => Expansion::Missing,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(template: &[&str], whole: &str, shell: bool) -> Vec<String> {
        let template: Vec<String> = template.iter().map(|s| s.to_string()).collect();
        let columns = split_on(whole.as_bytes(), b",");
        let values = Values {
            whole: whole.as_bytes(),
            columns: &columns,
            split: false,
            number: 7,
            slot: "2",
        };
        let argv = expand(&template, &values, shell);
        argv.into_iter().map(|w| w.into_string().unwrap()).collect()
    }

    #[test]
    fn words_are_quoted_as_gnu_parallel_quotes_them() {
        let cases = [
            ("plain-word_1.2+x/y", "plain-word_1.2+x/y"),
            ("", "''"),
            ("a b", "'a b'"),
            ("it's", r#"'it'"'"'s'"#),
            ("'x'", r#""'"'x'"'""#),
            ("$HOME", "'$HOME'"),
        ];
        for (word, quoted) in cases {
            assert_eq!(parallel_quote(word), quoted, "{word:?}");
        }
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
        // As GNU parallel: a dot-file's name is all extension, and {//} is POSIX dirname.
        assert_eq!(words(&["{.}", "{/.}"], "d.x/.hidden", false), ["d.x/", ""]);
        assert_eq!(words(&["{//}"], "dir/sub/", false), ["dir"]);
        assert_eq!(words(&["{//}", "{/}"], "//x", false), ["/", "x"]);
        assert_eq!(words(&["{//}"], "a//b", false), ["a"]);
    }

    #[test]
    fn columns_prefixes_and_unknown_braces() {
        assert_eq!(
            words(
                &["cp", "{1}", "out/{2}.bak", "{3}", "x{3}y", "{0}", "{-1}"],
                "a,b",
                false
            ),
            ["cp", "a", "out/b.bak", "xy", "{0}", "b"]
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

    #[test]
    fn bytes_that_are_not_utf8_pass_through_every_form() {
        let line: &[u8] = b"d\xff/a\xfe.c,x";
        let columns = split_on(line, b",");
        let values = Values {
            whole: line,
            columns: &columns,
            split: false,
            number: 1,
            slot: "1",
        };
        let template = ["e", "{}", "{.}", "{/}", "{//}", "{/.}", "{1/.}", "{2}"].map(String::from);
        let argv = expand(&template, &values, false);
        let expected: [&[u8]; 8] = [
            b"e",
            line,
            b"d\xff/a\xfe",
            b"a\xfe.c,x",
            b"d\xff",
            b"a\xfe",
            b"a\xfe",
            b"x",
        ];
        assert_eq!(argv, expected.map(|w| OsString::from_vec(w.to_vec())));
        let script = ["sh", "-c", "e {/}"].map(String::from);
        let argv = expand(&script, &values, true);
        assert_eq!(argv[4], OsString::from_vec(b"a\xfe.c,x".to_vec()));
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
