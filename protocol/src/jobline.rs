//! The job-line scanner: checks that a line is one JSON object and finds where the job's
//! fields are in it, in one pass and without building any value.
//!
//! Every job line goes through it, in the supervisor or in a worker, so it must cost as little
//! as possible per line: inputs and metas stay JSON text (the worker parses the input with the task's own
//! type; a meta is copied into the result as it is), only a key's or the task's text is decoded,
//! and only when it holds escapes. The grammar accepted is exactly RFC 8259's, with the same
//! nesting limit as `serde_json`, so a line this scanner accepts is one `serde_json`
//! accepts and the other way round (but for an array, from which serde would read a struct's
//! fields in order: a job is an object); the tests check that on many generated lines. Like
//! `serde_json` skipping a value, it does not check that a `\u` escape pairs its surrogates.

use std::borrow::Cow;
use std::fmt;
use std::ops::Range;

/// The fields of a job line that corral reads; other fields are checked and skipped.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct JobLine<'a> {
    /// Where the id's JSON text is (any JSON value; the caller decides which are ids).
    pub id: Option<Range<usize>>,
    /// The task's name, decoded.
    pub task: Option<Cow<'a, str>>,
    /// Where the input's JSON text is.
    pub input: Option<Range<usize>>,
    /// Where the meta's JSON text is.
    pub meta: Option<Range<usize>>,
}

/// Why a line is not a JSON job, and where (1-based byte column).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanError {
    /// What is wrong.
    pub problem: Problem,
    /// The 1-based byte column where the scanner noticed it.
    pub column: usize,
}

/// What is wrong with a job line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// The line is valid JSON but not an object.
    NotAnObject,
    /// The line ends inside a value.
    UnexpectedEnd,
    /// A byte that cannot start or continue what came before.
    Unexpected(u8),
    /// A number that breaks JSON's number grammar.
    BadNumber,
    /// A `\` escape that JSON does not have.
    BadEscape,
    /// A raw control character inside a string.
    ControlCharacter,
    /// Arrays and objects nested too deep.
    TooDeep,
    /// A field that must be a string is not.
    NotAString(&'static str),
    /// A field given twice.
    Duplicate(&'static str),
}

impl fmt::Display for ScanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.problem {
            Problem::NotAnObject => f.write_str("a job line must be a JSON object")?,
            Problem::UnexpectedEnd => f.write_str("the line ends inside a JSON value")?,
            Problem::Unexpected(byte) if byte.is_ascii_graphic() => {
                write!(f, "unexpected {:?}", char::from(*byte))?
            }
            Problem::Unexpected(byte) => write!(f, "unexpected byte 0x{byte:02x}")?,
            Problem::BadNumber => f.write_str("invalid number")?,
            Problem::BadEscape => f.write_str("invalid escape in a string")?,
            Problem::ControlCharacter => {
                f.write_str("control character in a string (escape it, e.g. \\n)")?
            }
            Problem::TooDeep => write!(f, "arrays and objects nested {MAX_DEPTH} deep")?,
            Problem::NotAString(field) => write!(f, "\"{field}\" must be a string")?,
            Problem::Duplicate(field) => write!(f, "\"{field}\" given twice")?,
        }
        write!(f, " at column {}", self.column)
    }
}

impl std::error::Error for ScanError {}

/// A job line's fields as corral takes them: [`JobLine`], with the id's text, which is a
/// string or a number.
#[derive(Debug)]
pub struct Fields<'a> {
    /// The id's JSON text.
    pub id: Option<&'a [u8]>,
    /// The task's name, decoded.
    pub task: Option<Cow<'a, str>>,
    /// Where the input's JSON text is.
    pub input: Option<Range<usize>>,
    /// Where the meta's JSON text is.
    pub meta: Option<Range<usize>>,
}

/// The message of a job without a task, in a run that gives none.
pub const NO_TASK: &str = "no \"task\" in the line and no --task given";

/// The fields of a job line (without its line ending, and not blank), or why it is no job:
/// the message of its `bad_input` result.
pub fn fields_of(line: &[u8]) -> Result<Fields<'_>, String> {
    fields_skimming(line, |_: &str, _: &[u8]| None)
}

/// [`fields_of`], with the line's input read by `skim` where it can: when the scanner comes to
/// the input of a line that named its task before it, `skim(task, rest)` (`rest` being the
/// line from the input on) may read the input itself and return its length, which it must
/// have checked to be one whole JSON value; `None` leaves the input to the scanner. It spares
/// a task that reads its input faster than the scanner checks it reading it twice. A line that
/// turns out not to be a job is refused all the same, whatever `skim` read.
pub fn fields_skimming<F>(line: &[u8], skim: F) -> Result<Fields<'_>, String>
where
    F: FnMut(&str, &[u8]) -> Option<usize>,
{
    // Validating UTF-8 once for the whole line is faster than string by string, and most
    // lines are ASCII, which is checked faster still.
    let text = if all_ascii(line) {
        // SAFETY: every byte was just checked to be ASCII, and ASCII text is valid UTF-8.
        unsafe { std::str::from_utf8_unchecked(line) }
    } else {
        std::str::from_utf8(line).map_err(|_| "line is not valid UTF-8".to_owned())?
    };
    let parsed = scan_skimming(text, skim).map_err(|err| format!("not a JSON job: {err}"))?;
    let id = match parsed.id.map(|span| &line[span]) {
        None => None,
        Some(raw) if matches!(raw.first(), Some(b'"' | b'-' | b'0'..=b'9')) => Some(raw),
        Some(_) => return Err("\"id\" must be a string or a number".into()),
    };
    Ok(Fields {
        id,
        task: parsed.task,
        input: parsed.input,
        meta: parsed.meta,
    })
}

/// Whether every byte of `s` is ASCII, read eight at a time: the standard library's check
/// reads what is left after its last whole chunk a byte at a time, which for a short line is
/// much of it.
fn all_ascii(s: &[u8]) -> bool {
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let word = |bytes: &[u8]| u64::from_le_bytes(bytes.try_into().expect("eight bytes"));
    let Some(last) = s.len().checked_sub(8) else {
        return s.is_ascii();
    };
    // The last eight bytes overlap the last whole word, which is harmless.
    let words = s
        .chunks_exact(8)
        .fold(word(&s[last..]), |seen, w| seen | word(w));
    words & HIGH == 0
}

/// The line of `block` that starts at `start` (before the block's end), and where the next
/// one starts: where the line is without its `\n` or `\r\n`, or its length when that is over
/// `max`.
pub fn split_line(block: &[u8], start: usize, max: usize) -> (Result<Range<usize>, u64>, usize) {
    let rest = &block[start..];
    let (end, after) = match memchr::memchr(b'\n', rest) {
        Some(i) => (start + i, start + i + 1),
        None => (block.len(), block.len()),
    };
    let end = end - usize::from(end > start && block[end - 1] == b'\r');
    if end - start > max {
        (Err((end - start) as u64), after)
    } else {
        (Ok(start..end), after)
    }
}

/// The task that runs a command per job (`--exec`).
pub const EXEC_TASK: &str = "exec";

/// The message of an [`EXEC_TASK`] job in a run without `--exec`.
pub const EXEC_REFUSED: &str = "the exec task runs commands only when corral itself is given --exec; a job file alone never runs a program";

/// The message of a job whose task no worker serves; `served` are the worker's tasks.
pub fn unknown_task_message(task: &str, served: &[&str]) -> String {
    let mut names = served.to_vec();
    names.sort_unstable();
    format!(
        "unknown task {task:?}; the worker serves: {}",
        names.join(", ")
    )
}

/// Whether a line holds nothing but whitespace: it is skipped, though counted.
pub fn is_blank(line: &[u8]) -> bool {
    line.iter().all(u8::is_ascii_whitespace)
}

/// The message of the `too_large` result of a line of `len` bytes, over `max`.
pub fn too_long_message(len: u64, max: usize) -> String {
    format!("line is {len} bytes, over the limit of {max} (--max-job-bytes)")
}

/// Arrays and objects may nest less deep than this (the line's own object counts), as in
/// `serde_json`.
const MAX_DEPTH: usize = 128;

/// Scans one job line (without its line ending).
pub fn scan(line: &str) -> Result<JobLine<'_>, ScanError> {
    scan_skimming(line, |_: &str, _: &[u8]| None)
}

/// [`scan`], with the input read by `skim` where it can (see [`fields_skimming`]).
fn scan_skimming<F>(line: &str, skim: F) -> Result<JobLine<'_>, ScanError>
where
    F: FnMut(&str, &[u8]) -> Option<usize>,
{
    let mut scanner = Scanner {
        bytes: line.as_bytes(),
        at: 0,
        error: None,
    };
    fields(&mut scanner, line, skim).map_err(|Stop| {
        scanner
            .error
            .take()
            .expect("a scan stops with its error recorded")
    })
}

/// The line's object, field by field.
fn fields<'a, F>(scanner: &mut Scanner, line: &'a str, mut skim: F) -> Result<JobLine<'a>, Stop>
where
    F: FnMut(&str, &[u8]) -> Option<usize>,
{
    let mut job = JobLine::default();
    let mut seen = [false; 4];
    scanner.skip_space();
    match scanner.peek() {
        Some(b'{') => scanner.at += 1,
        Some(b'[' | b'"' | b't' | b'f' | b'n' | b'-' | b'0'..=b'9') => {
            // Valid JSON or not, it is not a job; say what is wrong with it if anything.
            scanner.value(0)?;
            scanner.finish()?;
            return Err(scanner.fail(0, Problem::NotAnObject));
        }
        _ => return Err(scanner.unexpected()),
    }
    scanner.skip_space();
    if scanner.peek() == Some(b'}') {
        scanner.at += 1;
        scanner.finish()?;
        return Ok(job);
    }
    loop {
        scanner.skip_space();
        let key_start = scanner.at;
        let field = match scanner.known_key() {
            Some(field) => Some(field),
            None => {
                let escaped = scanner.string()?;
                let Some(key) = decode(&line[key_start..scanner.at], escaped) else {
                    return Err(scanner.fail(key_start, Problem::BadEscape));
                };
                Field::of(&key)
            }
        };
        scanner.skip_space();
        scanner.expect(b':')?;
        scanner.skip_space();
        let start = scanner.at;
        if field == Some(Field::Task) && scanner.peek() == Some(b'"') {
            let escaped = scanner.string()?;
            let Some(task) = decode(&line[start..scanner.at], escaped) else {
                return Err(scanner.fail(start, Problem::BadEscape));
            };
            job.task = Some(task);
        } else if let (Some(Field::Input), Some(task)) = (field, &job.task)
            && let rest = &scanner.bytes[start..]
            && let Some(len) = skim(task, rest).filter(|&len| 0 < len && len <= rest.len())
        {
            scanner.at += len;
        } else {
            scanner.value(1)?;
        }
        if let Some(field) = field {
            if std::mem::replace(&mut seen[field as usize], true) {
                return Err(scanner.fail(key_start, Problem::Duplicate(field.name())));
            }
            // As with serde's `Option`, a field that is null is a field not given.
            let span = Some(start..scanner.at).filter(|span| &line[span.clone()] != "null");
            match field {
                Field::Id => job.id = span,
                Field::Input => job.input = span,
                Field::Meta => job.meta = span,
                Field::Task if job.task.is_none() && span.is_some() => {
                    return Err(scanner.fail(start, Problem::NotAString("task")));
                }
                Field::Task => {}
            }
        }
        scanner.skip_space();
        match scanner.peek() {
            Some(b',') => scanner.at += 1,
            Some(b'}') => {
                scanner.at += 1;
                break;
            }
            _ => return Err(scanner.unexpected()),
        }
    }
    scanner.finish()?;
    Ok(job)
}

/// The fields corral reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Id,
    Task,
    Input,
    Meta,
}

impl Field {
    /// Every field, with its key as it is written without escapes, quotes included.
    const KEYS: [(Field, &'static [u8]); 4] = [
        (Field::Id, b"\"id\""),
        (Field::Task, b"\"task\""),
        (Field::Input, b"\"input\""),
        (Field::Meta, b"\"meta\""),
    ];

    fn of(name: &str) -> Option<Field> {
        match name {
            "id" => Some(Field::Id),
            "task" => Some(Field::Task),
            "input" => Some(Field::Input),
            "meta" => Some(Field::Meta),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Field::Id => "id",
            Field::Task => "task",
            Field::Input => "input",
            Field::Meta => "meta",
        }
    }
}

/// The text of a scanned JSON string (`quoted` includes its quotes); `None` if an escape
/// stands for no character (a lone surrogate).
fn decode(quoted: &str, escaped: bool) -> Option<Cow<'_, str>> {
    if escaped {
        // Rare: keys and task names seldom hold escapes, so serde_json decodes them.
        serde_json::from_str(quoted).ok().map(Cow::Owned)
    } else {
        Some(Cow::Borrowed(&quoted[1..quoted.len() - 1]))
    }
}

// Bytes of a word, lowest first (little-endian), compared eight at a time. Each function below
// counts the bytes before the first one that is not of its kind. The arithmetic may misjudge
// bytes after that first one (a borrow or carry runs upwards), never before it.

/// 0x01 in every byte.
const ONES: u64 = 0x0101_0101_0101_0101;
/// 0x80 in every byte.
const HIGH_BITS: u64 = 0x8080_8080_8080_8080;

/// The bytes of `word` before the first that is not an ASCII digit.
fn digit_run(word: u64) -> usize {
    // A digit (0x30..=0x39) has a high nibble of 3, and still has after adding 6.
    let nibbles = 0xF0 * ONES;
    let threes = 0x30 * ONES;
    let not_digits =
        ((word & nibbles) ^ threes) | ((word.wrapping_add(6 * ONES) & nibbles) ^ threes);
    (not_digits.trailing_zeros() / 8) as usize
}

/// The bytes of `word` before the first quote, backslash or control character (below 0x20).
fn plain_run(word: u64) -> usize {
    // The classic test for a zero byte, applied to the word xor each byte sought, and a
    // "less than 0x20" test that excludes bytes with the high bit set (UTF-8).
    let zero_in = |x: u64| x.wrapping_sub(ONES) & !x & HIGH_BITS;
    let special = zero_in(word ^ (u64::from(b'"') * ONES))
        | zero_in(word ^ (u64::from(b'\\') * ONES))
        | (word.wrapping_sub(0x20 * ONES) & !word & HIGH_BITS);
    (special.trailing_zeros() / 8) as usize
}

/// A scan stopped; the scanner holds the reason. (A one-bit error keeps the hot path lean.)
struct Stop;

/// A cursor over the line's bytes.
struct Scanner<'a> {
    bytes: &'a [u8],
    at: usize,
    error: Option<ScanError>,
}

impl Scanner<'_> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.at).copied()
    }

    fn fail(&mut self, at: usize, problem: Problem) -> Stop {
        self.error = Some(ScanError {
            problem,
            column: at + 1,
        });
        Stop
    }

    /// Stops at the byte under the cursor, or at the end of the line.
    #[cold]
    fn unexpected(&mut self) -> Stop {
        match self.peek() {
            Some(byte) => self.fail(self.at, Problem::Unexpected(byte)),
            None => self.fail(self.at, Problem::UnexpectedEnd),
        }
    }

    #[inline]
    fn skip_space(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.at += 1;
        }
    }

    #[inline]
    fn expect(&mut self, byte: u8) -> Result<(), Stop> {
        if self.peek() == Some(byte) {
            self.at += 1;
            Ok(())
        } else {
            Err(self.unexpected())
        }
    }

    /// Only white space may follow the value.
    fn finish(&mut self) -> Result<(), Stop> {
        self.skip_space();
        match self.peek() {
            None => Ok(()),
            Some(_) => Err(self.unexpected()),
        }
    }

    /// Skips one value inside `depth` arrays and objects, checking it. Nesting is followed with
    /// a bit per level (set for an object) rather than by recursion.
    fn value(&mut self, depth: usize) -> Result<(), Stop> {
        let mut levels: u32 = 0;
        let mut objects: u128 = 0;
        loop {
            // A value is expected here.
            if levels > 0 && objects & 1 == 0 {
                self.plain_numbers();
            }
            // Numbers are told apart first, without a branch on the sign, which comes and goes
            // at random.
            let next = self.peek().unwrap_or(0);
            if (next == b'-') | next.is_ascii_digit() {
                self.number()?;
            } else {
                match next {
                    b'"' => {
                        self.string()?;
                    }
                    open @ (b'[' | b'{') => {
                        if depth + levels as usize + 1 >= MAX_DEPTH {
                            return Err(self.fail(self.at, Problem::TooDeep));
                        }
                        self.at += 1;
                        self.skip_space();
                        let close = if open == b'[' { b']' } else { b'}' };
                        if self.peek() == Some(close) {
                            self.at += 1;
                        } else {
                            levels += 1;
                            objects = objects << 1 | u128::from(open == b'{');
                            if open == b'{' {
                                self.key()?;
                            }
                            continue;
                        }
                    }
                    b't' => self.literal(b"true")?,
                    b'f' => self.literal(b"false")?,
                    b'n' => self.literal(b"null")?,
                    _ => return Err(self.unexpected()),
                }
            }
            // A value ended: close what it ends, or move on to the next one.
            loop {
                if levels == 0 {
                    return Ok(());
                }
                self.skip_space();
                let in_object = objects & 1 == 1;
                match self.peek() {
                    Some(b',') => {
                        self.at += 1;
                        self.skip_space();
                        if in_object {
                            self.key()?;
                        }
                        break;
                    }
                    Some(b']') if !in_object => {}
                    Some(b'}') if in_object => {}
                    _ => return Err(self.unexpected()),
                }
                self.at += 1;
                levels -= 1;
                objects >>= 1;
            }
        }
    }

    /// Inside an array, skips the numbers of the shape most numeric arrays have, each at once:
    /// up to seven digits with an optional minus and a comma right after. It stops where a
    /// value is expected (past any white space), before anything else (a number followed by `]`, by a space or by a
    /// fraction, or a number that is malformed), which the general path then checks as usual.
    #[inline]
    fn plain_numbers(&mut self) {
        // A sign and eight more bytes: at most seven digits and the comma.
        while let Some(chunk) = self.bytes.get(self.at..self.at + 9) {
            let minus = usize::from(chunk[0] == b'-');
            let word = u64::from_le_bytes(chunk[minus..minus + 8].try_into().expect("eight bytes"));
            let digits = digit_run(word);
            // No digit, or too many to see the end of; a leading zero must stand alone.
            if digits == 0
                || digits == 8
                || (chunk[minus] == b'0' && digits > 1)
                || chunk[minus + digits] != b','
            {
                break;
            }
            self.at += minus + digits + 1;
        }
        // White space may follow a comma, before the value.
        self.skip_space();
    }

    /// Skips the key under the cursor if it is one of the fields', written plainly: most keys
    /// are, and this spares decoding and matching them. `None` (nothing skipped) otherwise.
    #[inline]
    fn known_key(&mut self) -> Option<Field> {
        let rest = &self.bytes[self.at..];
        let (field, key) = Field::KEYS.iter().find(|(_, key)| rest.starts_with(key))?;
        self.at += key.len();
        Some(*field)
    }

    /// Skips an object's key and its colon, up to the value.
    fn key(&mut self) -> Result<(), Stop> {
        self.string()?;
        self.skip_space();
        self.expect(b':')?;
        self.skip_space();
        Ok(())
    }

    fn literal(&mut self, word: &[u8]) -> Result<(), Stop> {
        if self.bytes[self.at..].starts_with(word) {
            self.at += word.len();
            return Ok(());
        }
        for &byte in word {
            self.expect(byte)?;
        }
        unreachable!("a literal that does not match stops");
    }

    /// Skips a string (the cursor on its opening quote); returns whether it holds escapes.
    fn string(&mut self) -> Result<bool, Stop> {
        if self.peek() != Some(b'"') {
            return Err(self.unexpected());
        }
        self.at += 1;
        let mut escaped = false;
        loop {
            // Eight bytes at a time up to the first quote, backslash or control character.
            while let Some(chunk) = self.bytes.get(self.at..self.at + 8) {
                let plain = plain_run(u64::from_le_bytes(chunk.try_into().expect("eight bytes")));
                self.at += plain;
                if plain < 8 {
                    break;
                }
            }
            while let Some(&byte) = self.bytes.get(self.at)
                && byte != b'"'
                && byte != b'\\'
                && byte >= 0x20
            {
                self.at += 1;
            }
            match self.peek() {
                Some(b'"') => {
                    self.at += 1;
                    return Ok(escaped);
                }
                Some(b'\\') => {
                    escaped = true;
                    self.at += 1;
                    self.escape()?;
                }
                Some(_) => return Err(self.fail(self.at, Problem::ControlCharacter)),
                None => return Err(self.unexpected()),
            }
        }
    }

    /// Skips what follows a backslash.
    fn escape(&mut self) -> Result<(), Stop> {
        match self.peek() {
            Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => {
                self.at += 1;
                Ok(())
            }
            Some(b'u') => {
                self.at += 1;
                for _ in 0..4 {
                    match self.peek() {
                        Some(digit) if digit.is_ascii_hexdigit() => self.at += 1,
                        None => return Err(self.unexpected()),
                        Some(_) => return Err(self.fail(self.at, Problem::BadEscape)),
                    }
                }
                Ok(())
            }
            None => Err(self.unexpected()),
            Some(_) => Err(self.fail(self.at, Problem::BadEscape)),
        }
    }

    /// Skips the digits under the cursor; returns how many there were.
    #[inline]
    fn digits(&mut self) -> usize {
        let start = self.at;
        // Eight bytes at a time: a run of digits then ends on a well-predicted branch.
        while let Some(chunk) = self.bytes.get(self.at..self.at + 8) {
            let run = digit_run(u64::from_le_bytes(chunk.try_into().expect("eight bytes")));
            self.at += run;
            if run < 8 {
                return self.at - start;
            }
        }
        while let Some(b'0'..=b'9') = self.peek() {
            self.at += 1;
        }
        self.at - start
    }

    fn number(&mut self) -> Result<(), Stop> {
        let start = self.at;
        // Without a branch: signs come and go at random.
        self.at += usize::from(self.peek() == Some(b'-'));
        let mut valid = match self.peek() {
            Some(b'0') => {
                self.at += 1;
                true
            }
            _ => self.digits() > 0,
        };
        if valid && self.peek() == Some(b'.') {
            self.at += 1;
            valid = self.digits() > 0;
        }
        if valid && let Some(b'e' | b'E') = self.peek() {
            self.at += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.at += 1;
            }
            valid = self.digits() > 0;
        }
        // A number runs into the next token only through something that cannot follow it.
        match self.peek() {
            _ if !valid && self.at == self.bytes.len() => Err(self.unexpected()),
            Some(b'0'..=b'9' | b'.' | b'e' | b'E' | b'+' | b'-') => {
                Err(self.fail(start, Problem::BadNumber))
            }
            _ if !valid => Err(self.fail(start, Problem::BadNumber)),
            _ => Ok(()),
        }
    }
}

#[cfg(any(test, fuzzing))]
pub mod reference;
#[cfg(test)]
mod tests;
