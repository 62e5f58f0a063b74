//! Wire records of the stdio protocol (`docs/worker-protocol.md`): JSON lines between the
//! supervisor and a worker in any language. The hello is the worker's first stdout line; then
//! each request on its stdin gets one response on its stdout, in order.

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::value::RawValue;

use crate::byte_string;

/// Version of the stdio protocol, named in the hello's `corral_protocol` field.
pub const STDIO_PROTOCOL_VERSION: u32 = 1;

/// The worker's first line on stdout: `{"corral_protocol": 1, "tasks": ["sum_squares"]}`.
#[derive(Debug, Serialize, Deserialize)]
pub struct StdioHello {
    /// Must equal [`STDIO_PROTOCOL_VERSION`].
    pub corral_protocol: u32,
    /// The tasks the worker serves.
    pub tasks: Vec<String>,
}

/// One request, as the worker reads it: `{"id": 17, "task": "sum_squares", "input": [1, 2]}`.
#[derive(Debug, Deserialize)]
pub struct StdioRequest<'a> {
    /// The job's id (a JSON string or number), to be echoed in the response.
    #[serde(borrow)]
    pub id: &'a RawValue,
    /// The task to run.
    pub task: &'a str,
    /// The job's input, any JSON.
    #[serde(borrow)]
    pub input: &'a RawValue,
}

/// One response, as the supervisor reads it: exactly one of `output` and `error`.
#[derive(Debug, Deserialize)]
pub struct StdioResponse<'a> {
    /// The id of the request answered.
    #[serde(borrow)]
    pub id: &'a RawValue,
    /// The task's output, any JSON (`null` included).
    #[serde(default, borrow, deserialize_with = "present")]
    pub output: Option<&'a RawValue>,
    /// Why the task failed.
    #[serde(default)]
    pub error: Option<StdioError>,
}

/// A failed task, in a response: `{"message": "...", "type": "ValueError"}`.
#[derive(Debug, Serialize, Deserialize)]
pub struct StdioError {
    /// What went wrong, in words. Bytes that are not UTF-8 (a Python worker's message may
    /// quote a line of `--lines` that held some, as `\udcXX`) become U+FFFD.
    #[serde(deserialize_with = "text")]
    pub message: String,
    /// A name for the kind of error (an exception's class), optional.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub error_type: Option<String>,
}

/// A JSON string as text, where [`byte_string`] escapes of bytes that are not UTF-8 are
/// allowed (serde's `String` refuses them).
fn text<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let raw = Box::<RawValue>::deserialize(d)?;
    let bytes = byte_string::decode(raw.get().as_bytes())
        .ok_or_else(|| serde::de::Error::custom("a message is a string"))?;
    Ok(String::from_utf8(bytes)
        .unwrap_or_else(|err| String::from_utf8_lossy(err.as_bytes()).into_owned()))
}

/// A field that is present, even as `null`, is `Some` (serde's default maps `null` to `None`).
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn null_output_is_an_output_and_absent_is_none() {
        let r: StdioResponse<'_> = serde_json::from_str(r#"{"id":1,"output":null}"#).unwrap();
        assert_eq!(r.output.map(RawValue::get), Some("null"));
        let r: StdioResponse<'_> =
            serde_json::from_str(r#"{"id":"a","error":{"message":"m","type":"T"}}"#).unwrap();
        assert!(r.output.is_none());
        assert_eq!(r.error.unwrap().error_type.as_deref(), Some("T"));
        let r: StdioResponse<'_> =
            serde_json::from_str(r#"{"id":"a","error":{"message":"caf\udce9 \u00e9"}}"#).unwrap();
        assert_eq!(r.error.unwrap().message, "caf\u{fffd} é");
        let bad = serde_json::from_str::<StdioResponse<'_>>(r#"{"id":"a","error":{"message":3}}"#);
        assert!(bad.is_err());
    }
}
