//! JSON strings that carry any bytes, as a line of `corral run --lines` may hold bytes that are
//! not UTF-8 (a legal file name): each byte 0x80..=0xFF that is not part of a UTF-8 character
//! is written `\udc80`..=`\udcff`, the lone surrogate Python's `surrogateescape` (PEP 383)
//! gives it, so `os.fsencode(value)` in a Python worker has the bytes back.

/// The JSON string (with its quotes) for `bytes`: the usual one when they are UTF-8.
pub fn encode(bytes: &[u8]) -> Vec<u8> {
    if let Ok(text) = std::str::from_utf8(bytes) {
        return serde_json::to_vec(text).expect("a string serializes");
    }
    let mut out = Vec::with_capacity(bytes.len() + 16);
    out.push(b'"');
    for chunk in bytes.utf8_chunks() {
        let valid = serde_json::to_vec(chunk.valid()).expect("a string serializes");
        out.extend_from_slice(&valid[1..valid.len() - 1]);
        for byte in chunk.invalid() {
            out.extend_from_slice(format!("\\udc{byte:02x}").as_bytes());
        }
    }
    out.push(b'"');
    out
}

/// The bytes of the JSON string `json` (with its quotes, as it stands in a line), where
/// `\udc80`..=`\udcff` alone are the bytes [`encode`] wrote; `None` when `json` is not a
/// string or holds any other lone surrogate.
pub fn decode(json: &[u8]) -> Option<Vec<u8>> {
    let inner = json.strip_prefix(b"\"")?.strip_suffix(b"\"")?;
    let mut out = Vec::with_capacity(inner.len());
    let mut at = 0;
    while at < inner.len() {
        let byte = inner[at];
        match byte {
            b'\\' => {
                let escape = *inner.get(at + 1)?;
                at += 2;
                let simple = match escape {
                    b'"' => b'"',
                    b'\\' => b'\\',
                    b'/' => b'/',
                    b'b' => 0x08,
                    b'f' => 0x0c,
                    b'n' => b'\n',
                    b'r' => b'\r',
                    b't' => b'\t',
                    b'u' => {
                        let (unit, next) = hex4(inner, at)?;
                        at = next;
                        let char = match unit {
                            0xdc80..=0xdcff => {
                                out.push((unit - 0xdc00) as u8);
                                continue;
                            }
                            0xd800..=0xdbff => {
                                if inner.get(at..at + 2) != Some(&b"\\u"[..]) {
                                    return None;
                                }
                                let (low, next) = hex4(inner, at + 2)?;
                                if !(0xdc00..=0xdfff).contains(&low) {
                                    return None;
                                }
                                at = next;
                                0x10000 + ((unit - 0xd800) << 10) + (low - 0xdc00)
                            }
                            0xdc00..=0xdfff => return None,
                            _ => unit,
                        };
                        let char = char::from_u32(char)?;
                        out.extend_from_slice(char.encode_utf8(&mut [0; 4]).as_bytes());
                        continue;
                    }
                    _ => return None,
                };
                out.push(simple);
            }
            b'"' | 0x00..=0x1f => return None,
            _ => {
                out.push(byte);
                at += 1;
            }
        }
    }
    Some(out)
}

/// The four hex digits at `at`, as a number, and where they end.
fn hex4(text: &[u8], at: usize) -> Option<(u32, usize)> {
    let digits = std::str::from_utf8(text.get(at..at + 4)?).ok()?;
    if !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    Some((u32::from_str_radix(digits, 16).ok()?, at + 4))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf8_is_the_usual_json_string() {
        for text in ["", "plain", "say \"hi\"\n\t\\", "ümlaut/ß.txt", "\u{1f600}"] {
            let json = encode(text.as_bytes());
            assert_eq!(json, serde_json::to_vec(text).unwrap());
            assert_eq!(decode(&json).unwrap(), text.as_bytes());
        }
    }

    #[test]
    fn other_bytes_are_lone_surrogates_and_come_back() {
        let line = b"a\xffb/\xc3\xa9\xc3 \x80\"\n";
        let json = encode(line);
        assert_eq!(
            String::from_utf8(json.clone()).unwrap(),
            r#""a\udcffb/é\udcc3 \udc80\"\n""#
        );
        assert_eq!(decode(&json).unwrap(), line);
        // Every single byte, alone and beside UTF-8.
        for byte in 0..=255u8 {
            let line = [b'x', byte, 0xc3, 0xa9, byte];
            assert_eq!(decode(&encode(&line)).unwrap(), line, "byte {byte:#x}");
        }
    }

    #[test]
    fn python_reads_the_same_bytes_back() {
        // What `json.dumps(os.fsdecode(b"a\xffb\xf0\x9f\x98\x80"))` writes, pair included.
        let json = br#""a\udcffb\ud83d\ude00""#;
        assert_eq!(decode(json).unwrap(), b"a\xffb\xf0\x9f\x98\x80");
    }

    #[test]
    fn what_is_not_such_a_string_is_refused() {
        for json in [
            &b"3"[..],
            b"\"open",
            br#""\ud800""#,
            br#""\udc10""#,
            br#""\ud800\u0041""#,
            br#""\x""#,
            br#""\u12""#,
            b"\"a\nb\"",
        ] {
            assert_eq!(decode(json), None, "{}", String::from_utf8_lossy(json));
        }
    }
}
