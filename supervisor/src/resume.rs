//! `--resume`: read an earlier results file, drop a torn last line, and say which jobs already
//! have their final result, so that a new run appends only the rest.
//!
//! Results are keyed by id when they have one (compared as JSON values, so `"a"` and `"\u0061"`
//! are the same id) and by line number otherwise (lines that could not be read as jobs).
//! Every result corral writes is final; the file is only ever appended to, so a supervisor
//! killed at any moment leaves at worst one torn line at the end.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use serde_json::Value;

/// The key of a result: `i:<canonical id>` or `l:<line>`.
pub type ResultKeyText = String;

/// The key of a job id given as raw JSON; `None` if it is not valid JSON.
pub fn id_key(raw_id: &[u8]) -> Option<ResultKeyText> {
    let value: Value = serde_json::from_slice(raw_id).ok()?;
    Some(format!("i:{value}"))
}

/// The key of a result about a line without an id.
pub fn line_key(line: u64) -> ResultKeyText {
    format!("l:{line}")
}

/// Why a results file cannot be resumed.
#[derive(Debug, thiserror::Error)]
pub enum ResumeError {
    /// Reading or truncating the file failed.
    #[error("{path}: {source}")]
    Io {
        /// The results file.
        path: PathBuf,
        /// What failed.
        source: io::Error,
    },
    /// A line before the last is not a result line: the file is not corral's, or was edited.
    #[error("{path}: line {line} is not a corral result line; refusing to append to it")]
    Corrupt {
        /// The results file.
        path: PathBuf,
        /// The 1-based line.
        line: u64,
    },
}

/// What an earlier run finished.
#[derive(Debug, Default)]
pub struct Finished {
    /// Keys of the jobs that have a final result.
    pub keys: HashSet<ResultKeyText>,
    /// Whether a torn last line was dropped.
    pub dropped_torn_line: bool,
}

/// Reads `path` (which may not exist yet), truncates a torn last line, and returns what is
/// finished together with the file opened for appending.
pub fn prepare(path: &Path) -> Result<(Finished, File), ResumeError> {
    let io_err = |source| ResumeError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .open(path)
        .map_err(io_err)?;
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
        match result_key(&buf).filter(|_| complete) {
            Some(key) => {
                finished.keys.insert(key);
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

fn result_key(line: &[u8]) -> Option<ResultKeyText> {
    let value: Value = serde_json::from_slice(line).ok()?;
    let object = value.as_object()?;
    object.get("ok")?.as_bool()?;
    match (object.get("id"), object.get("line")) {
        (Some(id), _) => Some(format!("i:{id}")),
        (None, Some(line)) => Some(line_key(line.as_u64()?)),
        (None, None) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_compare_ids_as_json_values() {
        assert_eq!(id_key(br#""a""#), id_key(br#""\u0061""#));
        assert_ne!(id_key(b"1"), id_key(br#""1""#));
        assert_eq!(id_key(b"17"), Some("i:17".into()));
        assert_eq!(id_key(b"{"), None);
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
        let (finished, _file) = prepare(&path).unwrap();
        assert!(finished.dropped_torn_line);
        assert_eq!(
            finished.keys,
            HashSet::from(["i:1".to_owned(), "l:2".to_owned()])
        );
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.ends_with("{}}\n"), "{text:?}");
    }

    #[test]
    fn a_complete_line_without_newline_is_torn_too() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("results.jsonl");
        std::fs::write(&path, "{\"id\":1,\"ok\":true}").unwrap();
        let (finished, _file) = prepare(&path).unwrap();
        assert!(finished.keys.is_empty());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "");
    }

    #[test]
    fn garbage_before_the_end_is_refused_and_a_missing_file_is_created() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("results.jsonl");
        std::fs::write(&path, "hello\n{\"id\":1,\"ok\":true}\n").unwrap();
        assert!(matches!(
            prepare(&path),
            Err(ResumeError::Corrupt { line: 1, .. })
        ));
        let fresh = dir.path().join("new.jsonl");
        let (finished, _file) = prepare(&fresh).unwrap();
        assert!(finished.keys.is_empty() && fresh.exists());
    }
}
