//! The results file: `-o` opened under a lock, and `--resume` reading an earlier results file,
//! dropping a torn last line, and saying which jobs already have their final result, so that a
//! new run appends only the rest.
//!
//! Results are keyed by id when they have one and by line number otherwise (lines that could
//! not be read as jobs). Ids are compared the way they were written: a number by its text (so
//! `18446744073709551616` and `18446744073709551617` are two ids, and `1e400` is one), a string
//! by the characters it spells (so `"a"` and `"\u0061"` are the same id, and a lone surrogate
//! escape is a character like any other). Every key is kept as a 128-bit digest, so memory per
//! id is fixed (a 20-byte entry, 40 to 80 bytes of table with its spare room, whatever the id's
//! length); two different ids share a digest with a chance far below one in 10^18 for a
//! billion ids.
//!
//! Every result corral writes is final; the file is only ever appended to, so a supervisor
//! killed at any moment leaves at worst one torn line at the end. The file is locked (`flock`)
//! for the whole run, so a second run on the same results file is refused instead of writing
//! every result twice.

use std::collections::HashMap;
use std::fs::{File, OpenOptions, TryLockError};
use std::hash::{BuildHasherDefault, Hasher};
use std::io::{self, BufRead, BufReader, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::value::RawValue;

/// The digest of a result's key: an id as written, or a line number. 128 bits, kept as four
/// words so that a table entry needs no 16-byte alignment.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct ResultDigest([u32; 4]);

impl std::hash::Hash for ResultDigest {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // The digest is uniform already: 64 of its bits are the table's hash.
        state.write_u64(u64::from(self.0[0]) | (u64::from(self.0[1]) << 32));
    }
}

impl ResultDigest {
    /// 64 bits of the digest other than those a hash table takes, for splitting keys between
    /// shards. Fixed by the digest (xxh3-128 of the key): every version splits alike.
    pub fn spread(&self) -> u64 {
        u64::from(self.0[2]) | (u64::from(self.0[3]) << 32)
    }
}

/// The digest of a job id given as raw JSON (a string or a number, as the job line wrote it);
/// `None` if it is neither.
pub fn id_digest(raw_id: &[u8]) -> Option<ResultDigest> {
    let mut key = Vec::with_capacity(raw_id.len() + 2);
    match raw_id.first()? {
        b'"' => {
            key.extend_from_slice(b"s:");
            decode_string(raw_id, &mut key)?;
        }
        b'-' | b'0'..=b'9' => {
            key.extend_from_slice(b"n:");
            key.extend_from_slice(raw_id);
        }
        _ => return None,
    }
    Some(digest(&key))
}

/// The digest of a result about a line without an id.
pub fn line_digest(line: u64) -> ResultDigest {
    let mut key = b"l:".to_vec();
    key.extend_from_slice(itoa::Buffer::new().format(line).as_bytes());
    digest(&key)
}

fn digest(key: &[u8]) -> ResultDigest {
    let d = xxhash_rust::xxh3::xxh3_128(key);
    ResultDigest([
        d as u32,
        (d >> 32) as u32,
        (d >> 64) as u32,
        (d >> 96) as u32,
    ])
}

/// Decodes a JSON string literal (quotes included) into the bytes of the characters it
/// spells, appended to `out`. Escapes of lone surrogates become the three bytes a generalized
/// UTF-8 would give them, so every literal has one decoding and equal strings equal bytes.
fn decode_string(literal: &[u8], out: &mut Vec<u8>) -> Option<()> {
    let body = literal.strip_prefix(b"\"")?.strip_suffix(b"\"")?;
    let mut rest = body;
    while let Some(at) = memchr::memchr(b'\\', rest) {
        out.extend_from_slice(&rest[..at]);
        let (&kind, after) = rest.get(at + 1..)?.split_first()?;
        rest = after;
        let byte = match kind {
            b'"' => b'"',
            b'\\' => b'\\',
            b'/' => b'/',
            b'b' => 0x08,
            b'f' => 0x0c,
            b'n' => b'\n',
            b'r' => b'\r',
            b't' => b'\t',
            b'u' => {
                let unit = hex4(rest)?;
                rest = &rest[4..];
                let mut code = u32::from(unit);
                if (0xD800..0xDC00).contains(&unit)
                    && let Some(low) = rest.strip_prefix(b"\\u").and_then(hex4)
                    && (0xDC00..0xE000).contains(&low)
                {
                    code = 0x10000 + ((code - 0xD800) << 10) + (u32::from(low) - 0xDC00);
                    rest = &rest[6..];
                }
                push_code_point(code, out);
                continue;
            }
            _ => return None,
        };
        out.push(byte);
    }
    out.extend_from_slice(rest);
    Some(())
}

fn hex4(bytes: &[u8]) -> Option<u16> {
    let digits = std::str::from_utf8(bytes.get(..4)?).ok()?;
    u16::from_str_radix(digits, 16).ok()
}

/// UTF-8 encoding of any code point below 0x110000, surrogates included.
fn push_code_point(code: u32, out: &mut Vec<u8>) {
    match code {
        0..0x80 => out.push(code as u8),
        0x80..0x800 => {
            out.extend_from_slice(&[0xC0 | (code >> 6) as u8, 0x80 | (code & 0x3F) as u8])
        }
        0x800..0x10000 => out.extend_from_slice(&[
            0xE0 | (code >> 12) as u8,
            0x80 | ((code >> 6) & 0x3F) as u8,
            0x80 | (code & 0x3F) as u8,
        ]),
        _ => out.extend_from_slice(&[
            0xF0 | (code >> 18) as u8,
            0x80 | ((code >> 12) & 0x3F) as u8,
            0x80 | ((code >> 6) & 0x3F) as u8,
            0x80 | (code & 0x3F) as u8,
        ]),
    }
}

/// Digests are uniform already: the table uses the bits they hash as they are.
#[derive(Default)]
struct DigestHasher(u64);

impl Hasher for DigestHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is used; anything else is folded in so that it still hashes.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// Which results a run already has, and which ids this run has met: one table for both.
#[derive(Debug, Default, Clone)]
pub struct FinishedKeys {
    /// Per key: [`FINISHED`] if the results file has it, or'ed with the line where this run
    /// first met it (0: not met yet; [`LATE_LINE`] for any line from there on). 20 bytes an
    /// entry.
    keys: HashMap<ResultDigest, u32, BuildHasherDefault<DigestHasher>>,
}

const FINISHED: u32 = 1 << 31;
const LATE_LINE: u32 = FINISHED - 1;

/// What [`FinishedKeys::meet`] says of a job line.
#[derive(Debug, PartialEq, Eq)]
pub enum Meeting {
    /// Not finished and not met before: run it.
    Run,
    /// Its result is in the file: skip it.
    Finished,
    /// This run met the same key on this earlier line (`None`: a line past 2^31).
    Repeated(Option<u64>),
}

impl FinishedKeys {
    /// Records that the results file has `key`.
    pub fn insert(&mut self, key: ResultDigest) {
        *self.keys.entry(key).or_default() |= FINISHED;
    }

    /// Whether the results file has `key`.
    pub fn contains(&self, key: ResultDigest) -> bool {
        self.keys.get(&key).is_some_and(|v| v & FINISHED != 0)
    }

    /// Keys known.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether no key is known.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Meets `key` on `line` of this run's input.
    pub fn meet(&mut self, key: ResultDigest, line: u64) -> Meeting {
        let entry = self.keys.entry(key).or_default();
        let first = *entry & !FINISHED;
        if first != 0 {
            return Meeting::Repeated((first != LATE_LINE).then_some(u64::from(first)));
        }
        *entry |= u32::try_from(line).map_or(LATE_LINE, |l| l.min(LATE_LINE));
        if *entry & FINISHED != 0 {
            Meeting::Finished
        } else {
            Meeting::Run
        }
    }
}

/// Why a results file cannot be written or resumed.
#[derive(Debug, thiserror::Error)]
pub enum ResumeError {
    /// Opening, reading or truncating the file failed.
    #[error("{path}: {error}")]
    Io {
        /// The results file.
        path: PathBuf,
        /// What failed (said in the message, not chained: it would be said twice).
        error: io::Error,
    },
    /// A line before the last is not a result line: the file is not corral's, or was edited.
    #[error("{path}: line {line} is not a corral result line; refusing to append to it")]
    Corrupt {
        /// The results file.
        path: PathBuf,
        /// The 1-based line.
        line: u64,
    },
    /// Another process holds the file's lock: two runs would each write every result.
    #[error(
        "{path} is being written by another corral run; wait for it to end, or pick another -o"
    )]
    Locked {
        /// The results file.
        path: PathBuf,
    },
}

/// What an earlier run finished.
#[derive(Debug, Default)]
pub struct Finished {
    /// Keys of the jobs that have a final result.
    pub keys: FinishedKeys,
    /// Whether a torn last line was dropped.
    pub dropped_torn_line: bool,
    /// Results in the file that are failures (`"ok": false`): final, as their jobs are not
    /// run again, so the run that completes the file reports them.
    pub failed: u64,
}

/// Opens `path` for this run's results, locked for as long as the file stays open: truncated,
/// or (with `resume`) read, cut after its last whole line and positioned at its end.
pub fn open_results(path: &Path, resume: bool) -> Result<(Finished, File), ResumeError> {
    let io_err = |error| ResumeError::Io {
        path: path.to_path_buf(),
        error,
    };
    // Neither truncated nor read before the lock is ours: that would spoil another run's file.
    let file = OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .open(path)
        .map_err(io_err)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            return Err(ResumeError::Locked {
                path: path.to_path_buf(),
            });
        }
        Err(TryLockError::Error(err)) => return Err(io_err(err)),
    }
    let regular = file.metadata().map_err(io_err)?.is_file();
    match (resume, regular) {
        (true, true) => prepare(path, file),
        (false, true) => {
            file.set_len(0).map_err(io_err)?;
            Ok((Finished::default(), file))
        }
        // A pipe or a device (`-o /dev/stdout`) has nothing to resume or truncate.
        (_, false) => Ok((Finished::default(), file)),
    }
}

fn prepare(path: &Path, mut file: File) -> Result<(Finished, File), ResumeError> {
    let io_err = |error| ResumeError::Io {
        path: path.to_path_buf(),
        error,
    };
    let mut finished = Finished::default();
    let mut good_end = 0u64;
    let mut reader = BufReader::new(&mut file);
    let mut buf = Vec::new();
    let mut line_no = 0u64;
    loop {
        buf.clear();
        let n = reader.read_until(b'\n', &mut buf).map_err(io_err)?;
        if n == 0 {
            break;
        }
        line_no += 1;
        let complete = buf.last() == Some(&b'\n');
        match result_entry(&buf).filter(|_| complete) {
            Some((key, ok)) => {
                finished.keys.insert(key);
                finished.failed += u64::from(!ok);
                good_end += n as u64;
            }
            None => {
                // Only the last line may be torn; anything else is not ours to append to.
                let at_end = reader.fill_buf().map_err(io_err)?.is_empty();
                if !at_end {
                    return Err(ResumeError::Corrupt {
                        path: path.to_path_buf(),
                        line: line_no,
                    });
                }
                finished.dropped_torn_line = true;
                break;
            }
        }
    }
    drop(reader);
    if finished.dropped_torn_line {
        file.set_len(good_end).map_err(io_err)?;
    }
    file.seek(SeekFrom::End(0)).map_err(io_err)?;
    Ok((finished, file))
}

/// The fields of a result line that say whose result it is. The id stays raw text, so it is
/// compared as written; other fields are skipped unread, whatever numbers or escapes they hold.
#[derive(Deserialize)]
struct ResultLine<'a> {
    #[serde(borrow)]
    id: Option<&'a RawValue>,
    line: Option<u64>,
    ok: bool,
}

/// The key of one result line, or `None` if it is not a result line.
pub fn result_key(line: &[u8]) -> Option<ResultDigest> {
    result_entry(line).map(|(key, _)| key)
}

/// The key of one result line and whether it is a success, or `None` if it is not a result
/// line.
fn result_entry(line: &[u8]) -> Option<(ResultDigest, bool)> {
    let parsed: ResultLine<'_> = serde_json::from_slice(line).ok()?;
    let key = match (parsed.id, parsed.line) {
        (Some(id), _) => id_digest(id.get().as_bytes())?,
        (None, Some(line)) => line_digest(line),
        (None, None) => return None,
    };
    Some((key, parsed.ok))
}

/// Whose result a result line is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The job with this id.
    Id(ResultDigest),
    /// Line `n` of the input, which was not a job (its `"line"` field).
    Line(u64),
}

/// Whose result `line` is, or `None` if it is not a result line.
pub fn result_target(line: &[u8]) -> Option<Target> {
    let parsed: ResultLine<'_> = serde_json::from_slice(line).ok()?;
    match (parsed.id, parsed.line) {
        (Some(id), _) => id_digest(id.get().as_bytes()).map(Target::Id),
        (None, Some(line)) => Some(Target::Line(line)),
        (None, None) => None,
    }
}

/// The key the result of job line `raw` (line `number` of the input, with or without its
/// ending) has, as `corral run` keys it; `None` for a blank line, which has no result.
/// With `plain` (`--lines`), every other line is a job whose id is its number.
pub fn job_line_key(raw: &[u8], number: u64, plain: bool) -> Option<ResultDigest> {
    let line = raw.strip_suffix(b"\n").unwrap_or(raw);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if line.iter().all(u8::is_ascii_whitespace) {
        return None;
    }
    if plain {
        return id_digest(itoa::Buffer::new().format(number).as_bytes());
    }
    let by_line = line_digest(number);
    let Ok(text) = std::str::from_utf8(line) else {
        return Some(by_line);
    };
    let Ok(parsed) = corral_protocol::jobline::scan(text) else {
        return Some(by_line);
    };
    Some(match parsed.id.map(|span| &line[span]) {
        Some(id) => id_digest(id).unwrap_or(by_line),
        // A job without an id has its line number as id.
        None => {
            id_digest(itoa::Buffer::new().format(number).as_bytes()).expect("a number is an id")
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys_of(text: &str) -> Vec<Option<ResultDigest>> {
        text.lines().map(|l| result_key(l.as_bytes())).collect()
    }

    #[test]
    fn ids_compare_as_written() {
        assert_eq!(id_digest(br#""a""#), id_digest(br#""\u0061""#));
        assert_eq!(
            id_digest(br#""\ud83d\ude00""#),
            id_digest("\"😀\"".as_bytes())
        );
        assert_ne!(id_digest(b"1"), id_digest(br#""1""#));
        assert_ne!(id_digest(b"1"), id_digest(b"1.0"));
        assert_ne!(
            id_digest(b"18446744073709551616"),
            id_digest(b"18446744073709551617")
        );
        assert_ne!(id_digest(br#""\ud800""#), id_digest(br#""\ud801""#));
        assert_ne!(id_digest(br#""\ud800""#), id_digest(br#""""#));
        assert_eq!(id_digest(b"{"), None);
        assert_ne!(id_digest(b"3"), Some(line_digest(3)));
    }

    #[test]
    fn result_lines_corral_writes_are_read_back_whatever_they_hold() {
        let text = concat!(
            "{\"id\":1e400,\"ok\":true,\"output\":1e400,\"attempts\":1,\"meta\":[1e999]}\n",
            "{\"id\":\"\\ud800\",\"ok\":false,\"error\":{\"kind\":\"x\",\"message\":\"\\udfff\"},\"attempts\":1}\n",
            "{\"line\":7,\"ok\":false,\"error\":{}}\n",
            "{\"ok\":true}\n",
            "[1]\n",
        );
        let keys = keys_of(text);
        assert_eq!(keys[0], id_digest(b"1e400"));
        assert_eq!(keys[1], id_digest(br#""\ud800""#));
        assert_eq!(keys[2], Some(line_digest(7)));
        assert_eq!(keys[3], None, "no id, no line");
        assert_eq!(keys[4], None);
    }

    #[test]
    fn meeting_keys_skips_finished_ones_and_names_the_first_line_of_a_repeat() {
        let mut keys = FinishedKeys::default();
        let (a, b) = (id_digest(b"1").unwrap(), id_digest(b"2").unwrap());
        keys.insert(a);
        assert!(keys.contains(a) && !keys.contains(b));
        assert_eq!(keys.meet(b, 4), Meeting::Run);
        assert_eq!(keys.meet(a, 5), Meeting::Finished);
        assert_eq!(keys.meet(a, 9), Meeting::Repeated(Some(5)));
        assert_eq!(keys.meet(b, 10), Meeting::Repeated(Some(4)));
        let c = id_digest(b"3").unwrap();
        assert_eq!(keys.meet(c, 1 << 40), Meeting::Run);
        assert_eq!(keys.meet(c, (1 << 40) + 1), Meeting::Repeated(None));
        assert!(!keys.contains(b), "meeting a key does not finish it");
    }

    #[test]
    fn a_torn_last_line_is_dropped_and_the_rest_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("results.jsonl");
        std::fs::write(
            &path,
            "{\"id\":1,\"ok\":true,\"output\":1}\n{\"line\":2,\"ok\":false,\"error\":{}}\n{\"id\":\"x\",\"ok\":tr",
        )
        .unwrap();
        let (finished, _file) = open_results(&path, true).unwrap();
        assert!(finished.dropped_torn_line);
        assert_eq!(finished.keys.len(), 2);
        assert!(finished.keys.contains(id_digest(b"1").unwrap()));
        assert!(finished.keys.contains(line_digest(2)));
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.ends_with("{}}\n"), "{text:?}");
    }

    #[test]
    fn a_complete_line_without_newline_is_torn_too() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("results.jsonl");
        std::fs::write(&path, "{\"id\":1,\"ok\":true}").unwrap();
        let (finished, _file) = open_results(&path, true).unwrap();
        assert!(finished.keys.is_empty());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "");
    }

    #[test]
    fn garbage_before_the_end_is_refused_and_a_missing_file_is_created() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("results.jsonl");
        std::fs::write(&path, "hello\n{\"id\":1,\"ok\":true}\n").unwrap();
        assert!(matches!(
            open_results(&path, true),
            Err(ResumeError::Corrupt { line: 1, .. })
        ));
        let fresh = dir.path().join("new.jsonl");
        let (finished, _file) = open_results(&fresh, true).unwrap();
        assert!(finished.keys.is_empty() && fresh.exists());
    }

    #[test]
    fn a_second_writer_is_refused_and_nothing_is_truncated_by_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("results.jsonl");
        std::fs::write(&path, "{\"id\":1,\"ok\":true}\n").unwrap();
        let (_, held) = open_results(&path, true).unwrap();
        for resume in [true, false] {
            assert!(matches!(
                open_results(&path, resume),
                Err(ResumeError::Locked { .. })
            ));
        }
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "{\"id\":1,\"ok\":true}\n"
        );
        drop(held);
        let (_, _file) = open_results(&path, false).unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "",
            "truncated once free"
        );
    }
}
