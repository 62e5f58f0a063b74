//! The scanner's oracle: `serde_json` reading the same fields of the same line. Used by the
//! unit tests and by the fuzz target (built with `--cfg fuzzing`), so both check one rule.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;

use super::scan;

/// What the scanner replaces: serde_json reading the same fields.
#[derive(Debug, Deserialize)]
struct Reference<'a> {
    #[serde(borrow, default)]
    id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    task: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    input: Option<&'a RawValue>,
    #[serde(borrow, default)]
    meta: Option<&'a RawValue>,
}

/// Scans `line` and reads it with serde_json: `Ok(true)` if both accept it with the same
/// fields, `Ok(false)` if both reject it, `Err` saying how they disagree otherwise.
pub fn compare(line: &str) -> Result<bool, String> {
    let reference = serde_json::from_str::<Reference<'_>>(line)
        // serde also reads a struct from an array of its fields in order; a job is an object.
        .map_err(|err| err.to_string())
        .and_then(|fields| match line.trim_start().starts_with('{') {
            true => Ok(fields),
            false => Err("an array".into()),
        });
    let scanned = scan(line);
    let text = |span: &Option<std::ops::Range<usize>>| span.clone().map(|span| &line[span]);
    match (&reference, &scanned) {
        (Ok(reference), Ok(job)) => {
            let same = text(&job.id) == reference.id.map(RawValue::get)
                && job.task.as_deref() == reference.task.as_deref()
                && text(&job.input) == reference.input.map(RawValue::get)
                && text(&job.meta) == reference.meta.map(RawValue::get);
            if same {
                Ok(true)
            } else {
                Err(format!(
                    "fields differ: serde_json {reference:?}, the scanner {job:?}: {line:?}"
                ))
            }
        }
        (Err(_), Err(_)) => Ok(false),
        _ => Err(format!(
            "serde_json says {reference:?}, the scanner {scanned:?}: {line:?}"
        )),
    }
}
