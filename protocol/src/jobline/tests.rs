//! Tests of the job-line scanner: fields and spans, each problem, and agreement with
//! `serde_json` on many generated and mutated lines.

use std::borrow::Cow;

use super::*;

fn text<'a>(line: &'a str, span: &Option<Range<usize>>) -> Option<&'a str> {
    span.clone().map(|span| &line[span])
}

fn problem(line: &str) -> Problem {
    scan(line).unwrap_err().problem
}

#[test]
fn finds_the_fields_and_keeps_values_as_text() {
    let line = r#" { "id" : "a-1", "task":"sum", "input": [1, 2.5e3, {"x": [true]}], "meta" : {"k":null} } "#;
    let job = scan(line).unwrap();
    assert_eq!(text(line, &job.id), Some(r#""a-1""#));
    assert_eq!(job.task.as_deref(), Some("sum"));
    assert!(matches!(job.task, Some(Cow::Borrowed(_))));
    assert_eq!(text(line, &job.input), Some(r#"[1, 2.5e3, {"x": [true]}]"#));
    assert_eq!(text(line, &job.meta), Some(r#"{"k":null}"#));
}

#[test]
fn missing_and_null_fields_are_not_given_and_others_are_skipped() {
    assert_eq!(scan("{}").unwrap(), JobLine::default());
    let line = r#"{"id":null,"task":null,"input":null,"meta":null,"other":{"id":1},"x":[]}"#;
    assert_eq!(scan(line).unwrap(), JobLine::default());
    let job = scan(r#"{"id":-12.5e-3}"#).unwrap();
    assert_eq!(job.id, Some(6..14));
}

#[test]
fn escaped_keys_and_task_names_are_decoded() {
    let line = r#"{"t\u0061sk":"a\"b\\c\u00e9","\u0069nput":7}"#;
    let job = scan(line).unwrap();
    assert_eq!(job.task.as_deref(), Some("a\"b\\cé"));
    assert_eq!(text(line, &job.input), Some("7"));
}

#[test]
fn a_skim_reads_the_input_of_a_line_that_named_its_task_first() {
    // A skim that takes a flat array (no nesting, no strings) by finding its `]`.
    let calls = std::cell::RefCell::new(Vec::new());
    let skim = |task: &str, rest: &[u8]| {
        calls.borrow_mut().push(task.to_owned());
        (rest.first() == Some(&b'[')).then(|| rest.iter().position(|&b| b == b']').unwrap() + 1)
    };
    let line = br#"{"id":1,"task":"t","input":[1, 2] ,"meta":{}}"#;
    let fields = fields_skimming(line, skim).unwrap();
    assert_eq!(&line[fields.input.unwrap()], b"[1, 2]");
    assert_eq!(calls.take(), ["t"]);
    // Declined, or no task before the input: the scanner reads it.
    let line = br#"{"task":"t","input":{"a":[1]}}"#;
    assert_eq!(
        &line[fields_skimming(line, skim).unwrap().input.unwrap()],
        br#"{"a":[1]}"#
    );
    let line = br#"{"input":[1],"task":"t"}"#;
    assert!(fields_skimming(line, skim).is_ok());
    assert_eq!(calls.take(), ["t"]);
    // What follows the input is checked as ever.
    let err = fields_skimming(br#"{"task":"t","input":[1],}"#, skim).unwrap_err();
    assert_eq!(err, fields_of(br#"{"task":"t","input":[1],}"#).unwrap_err());
    // A length past the line, or none, is not taken.
    let line = br#"{"task":"t","input":[1]}"#;
    for len in [0, line.len()] {
        let fields = fields_skimming(line, |_: &str, _: &[u8]| Some(len)).unwrap();
        assert_eq!(&line[fields.input.unwrap()], b"[1]");
    }
}

#[test]
fn each_problem_is_named_with_its_column() {
    let err = scan(r#"{"id": 1,}"#).unwrap_err();
    assert_eq!(err.problem, Problem::Unexpected(b'}'));
    assert_eq!(err.column, 10);
    assert_eq!(err.to_string(), "unexpected '}' at column 10");
    assert_eq!(problem("[1, 2]"), Problem::NotAnObject);
    assert_eq!(problem("\"job\""), Problem::NotAnObject);
    assert_eq!(problem("[1, 2"), Problem::UnexpectedEnd);
    assert_eq!(problem(r#"{"input": "abc"#), Problem::UnexpectedEnd);
    assert_eq!(problem(r#"{"input": 01}"#), Problem::BadNumber);
    assert_eq!(problem(r#"{"input": 1.}"#), Problem::BadNumber);
    assert_eq!(problem(r#"{"input": -}"#), Problem::BadNumber);
    assert_eq!(problem(r#"{"input": 1e+}"#), Problem::BadNumber);
    assert_eq!(problem(r#"{"input": "\x"}"#), Problem::BadEscape);
    assert_eq!(problem(r#"{"input": "\u12g4"}"#), Problem::BadEscape);
    assert_eq!(problem(r#"{"task": "\udc00"}"#), Problem::BadEscape);
    assert_eq!(problem("{\"input\": \"a\tb\"}"), Problem::ControlCharacter);
    assert_eq!(problem(r#"{"task": 3}"#), Problem::NotAString("task"));
    assert_eq!(
        problem(r#"{"id": 1, "id": null}"#),
        Problem::Duplicate("id")
    );
    assert_eq!(problem(r#"{"input": tru}"#), Problem::Unexpected(b'}'));
    assert_eq!(problem(r#"{"input": 1} x"#), Problem::Unexpected(b'x'));
    assert_eq!(problem(""), Problem::UnexpectedEnd);
    let deep = format!("{{\"input\": {}{}}}", "[".repeat(127), "]".repeat(127));
    assert_eq!(problem(&deep), Problem::TooDeep);
    let fine = format!("{{\"input\": {}{}}}", "[".repeat(126), "]".repeat(126));
    assert!(scan(&fine).is_ok());
}

#[test]
fn word_at_a_time_runs_match_byte_at_a_time() {
    let digit = |byte: u8| byte.is_ascii_digit();
    let plain = |byte: u8| byte != b'"' && byte != b'\\' && byte >= 0x20;
    let check = |bytes: [u8; 8]| {
        let word = u64::from_le_bytes(bytes);
        let expected = |kind: &dyn Fn(u8) -> bool| bytes.iter().take_while(|&&b| kind(b)).count();
        assert_eq!(digit_run(word), expected(&digit), "digits of {bytes:?}");
        assert_eq!(
            plain_run(word),
            expected(&plain),
            "plain bytes of {bytes:?}"
        );
    };
    // Every byte value at every place among digits, and among letters and UTF-8.
    for byte in 0..=255u8 {
        for at in 0..8 {
            for filler in [b'7', b'a', 0xC3, 0xFF] {
                let mut bytes = [filler; 8];
                bytes[at] = byte;
                check(bytes);
                bytes[(at + 3) % 8] = b'"';
                check(bytes);
            }
        }
    }
    let mut rng = Lcg(3);
    for _ in 0..100_000 {
        let pick = b"0123456789\"\\ \x01\x1f\x7f\x80\xc3\xa9\xffa:,";
        check(std::array::from_fn(|_| pick[rng.below(pick.len())]));
    }
}

/// A deterministic generator of JSON-ish text.
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 33) % n as u64) as usize
    }

    fn pick<'a>(&mut self, choices: &[&'a str]) -> &'a str {
        choices[self.below(choices.len())]
    }

    fn value(&mut self, out: &mut String, depth: usize) {
        match self.below(if depth > 3 { 4 } else { 7 }) {
            0 => out.push_str(self.pick(&[
                "0",
                "-1",
                "12.5",
                "1e9",
                "-0.0E-2",
                "7",
                "123456789012.25e-10",
                "-98765432",
            ])),
            1 => out.push_str(self.pick(&[
                r#""""#,
                r#""abc""#,
                r#""a\"b""#,
                r#""\u00e9\n""#,
                r#""é""#,
                r#""\ud83d\ude00""#,
            ])),
            2 => out.push_str(self.pick(&["true", "false", "null"])),
            3 => out.push_str(self.pick(&["[]", "{}", "[1]"])),
            4 => {
                out.push('[');
                for i in 0..self.below(4) {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(self.pick(&["", " "]));
                    self.value(out, depth + 1);
                }
                out.push(']');
            }
            5 => {
                // Numbers packed as the scanner's fast path takes them, and some it must not.
                out.push('[');
                let len = 1 + self.below(9);
                // Now and then one number that is not JSON.
                let bad = if self.below(4) == 0 {
                    self.below(len)
                } else {
                    len
                };
                for i in 0..len {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(if i == bad {
                        self.pick(&["01", "-01", "-", "1.", "--1", "+1"])
                    } else {
                        self.pick(&[
                            "0", "7", "-7", "42", "-999", "1234567", "-1234567", "12345678", "-0",
                            "1.5", "2e3", "10",
                        ])
                    });
                }
                out.push(']');
            }
            _ => self.object(out, depth + 1, &["a", "id", "b\\u0061", "x y"]),
        }
    }

    fn object(&mut self, out: &mut String, depth: usize, keys: &[&str]) {
        out.push('{');
        for i in 0..self.below(5) {
            if i > 0 {
                out.push(',');
            }
            out.push_str(self.pick(&["", " ", "\t"]));
            out.push('"');
            out.push_str(self.pick(keys));
            out.push_str(self.pick(&["\":", "\" : "]));
            self.value(out, depth);
        }
        out.push('}');
    }

    /// Changes one byte-sized piece of `line`: deletes, inserts or replaces it.
    fn mutate(&mut self, line: &mut String) {
        let pieces = [
            "{", "}", "[", "]", ",", ":", "\"", "\\", "-", "0", "1", ".", "e", "+", " ", "\t", "u",
            "n", "t", "x", "\u{1}",
        ];
        let mut at = self.below(line.len() + 1);
        while !line.is_char_boundary(at) {
            at -= 1;
        }
        let end = (at + 1..=line.len())
            .find(|&end| line.is_char_boundary(end))
            .unwrap_or(at);
        match self.below(3) {
            0 => line.replace_range(at..end, ""),
            1 => line.insert_str(at, self.pick(&pieces)),
            _ => line.replace_range(at..end, self.pick(&pieces)),
        }
    }
}

#[test]
fn accepts_exactly_the_lines_serde_json_accepts() {
    let mut rng = Lcg(7);
    let (mut accepted, mut rejected) = (0, 0);
    for case in 0..200_000 {
        let mut line = String::new();
        rng.object(&mut line, 1, &["id", "task", "input", "meta", "other"]);
        for _ in 0..case % 4 {
            rng.mutate(&mut line);
        }
        match super::reference::compare(&line) {
            Ok(true) => accepted += 1,
            Ok(false) => rejected += 1,
            Err(disagreement) => panic!("{disagreement}"),
        }
    }
    // Both kinds of line were tried, many times.
    assert!(
        accepted > 40_000 && rejected > 40_000,
        "{accepted} {rejected}"
    );
}

#[test]
fn the_ascii_check_finds_a_high_byte_wherever_it_is() {
    for len in 0..40 {
        let line = vec![b'a'; len];
        assert!(super::all_ascii(&line));
        for at in 0..len {
            let mut line = line.clone();
            line[at] = 0x80;
            assert!(!super::all_ascii(&line), "{len} bytes, high at {at}");
        }
    }
}
