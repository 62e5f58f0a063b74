//! Lines of a joblog in GNU parallel's format (`--joblog`), written the same way by the
//! supervisor (for the jobs it sees whole) and by a native worker (for the lines of a block,
//! which it runs and times itself): `Seq Host Starttime JobRuntime Send Receive Exitval Signal
//! Command`, tab-separated, the times in seconds with 3 decimals as parallel writes them.

/// The header line.
pub const HEADER: &str =
    "Seq\tHost\tStarttime\tJobRuntime\tSend\tReceive\tExitval\tSignal\tCommand\n";

/// One joblog line's fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Line<'a> {
    /// The job's line in its input.
    pub seq: u64,
    /// When it started, in milliseconds since the epoch.
    pub start_millis: u64,
    /// How long it ran, in nanoseconds.
    pub nanos: u64,
    /// Bytes its command wrote on stdout.
    pub received: u64,
    /// Its exit status (0 for a success, -1 for a line that never ran).
    pub exitval: i32,
    /// The signal that ended it, or 0.
    pub signal: i32,
    /// Its command, or task; tabs and line ends become spaces.
    pub command: &'a [u8],
}

impl Line<'_> {
    /// Appends the line, with its `\n`, to `out`.
    pub fn write(&self, out: &mut Vec<u8>) {
        Writer::default().write(self, out);
    }
}

/// Writes joblog lines, keeping the text of the last start's whole seconds: the lines of a
/// batch mostly start within the same second.
#[derive(Debug, Default)]
pub struct Writer {
    second: Option<u64>,
    seconds: Vec<u8>,
}

impl Writer {
    /// Appends `line`, with its `\n`, to `out`.
    pub fn write(&mut self, line: &Line<'_>, out: &mut Vec<u8>) {
        out.reserve(64 + line.command.len());
        let mut number = itoa::Buffer::new();
        out.extend_from_slice(number.format(line.seq).as_bytes());
        out.extend_from_slice(b"\t:\t");
        let second = line.start_millis / 1000;
        if self.second != Some(second) {
            self.second = Some(second);
            self.seconds.clear();
            self.seconds
                .extend_from_slice(number.format(second).as_bytes());
        }
        out.extend_from_slice(&self.seconds);
        push_millis(out, line.start_millis);
        out.push(b'\t');
        let runtime = line.nanos.saturating_add(500_000) / 1_000_000;
        if runtime == 0 {
            out.extend_from_slice(b"     0.000");
        } else {
            push_seconds(out, runtime, 10);
        }
        if (line.received, line.exitval, line.signal) == (0, 0, 0) {
            out.extend_from_slice(b"\t0\t0\t0\t0\t");
        } else {
            out.extend_from_slice(b"\t0\t");
            out.extend_from_slice(number.format(line.received).as_bytes());
            out.push(b'\t');
            out.extend_from_slice(number.format(line.exitval).as_bytes());
            out.push(b'\t');
            out.extend_from_slice(number.format(line.signal).as_bytes());
            out.push(b'\t');
        }
        let at = out.len();
        out.extend_from_slice(line.command);
        if memchr::memchr3(b'\t', b'\n', b'\r', line.command).is_some() {
            for byte in &mut out[at..] {
                if matches!(*byte, b'\t' | b'\n' | b'\r') {
                    *byte = b' ';
                }
            }
        }
        out.push(b'\n');
    }
}

/// Appends the milliseconds of `millis` past its second: `.345`.
fn push_millis(out: &mut Vec<u8>, millis: u64) {
    let frac = (millis % 1000) as u16;
    out.extend_from_slice(&[
        b'.',
        b'0' + (frac / 100) as u8,
        b'0' + (frac / 10 % 10) as u8,
        b'0' + (frac % 10) as u8,
    ]);
}

/// Appends `millis` as seconds with 3 decimals (`12.345`), right-aligned in `width`.
pub fn push_seconds(out: &mut Vec<u8>, millis: u64, width: usize) {
    const SPACES: &[u8] = b"                ";
    let mut digits = itoa::Buffer::new();
    let whole = digits.format(millis / 1000);
    let len = whole.len() + 4;
    out.extend_from_slice(&SPACES[..width.saturating_sub(len).min(SPACES.len())]);
    out.extend_from_slice(whole.as_bytes());
    push_millis(out, millis);
}

/// Milliseconds since the epoch of `at`, rounded.
pub fn epoch_millis(at: std::time::SystemTime) -> u64 {
    at.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| {
        d.as_secs() * 1000 + u64::from((d.subsec_nanos() + 500_000) / 1_000_000)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_are_written_as_parallel_writes_them() {
        let mut out = Vec::new();
        push_seconds(&mut out, 1_796_646_867_445, 0);
        out.push(b'|');
        push_seconds(&mut out, 2, 10);
        out.push(b'|');
        push_seconds(&mut out, 123_456_789, 10);
        assert_eq!(out, b"1796646867.445|     0.002|123456.789");
    }

    #[test]
    fn a_line_has_its_nine_fields_and_no_tab_of_its_command() {
        let mut out = Vec::new();
        let line = Line {
            seq: 7,
            start_millis: 1_000_250,
            nanos: 1_499_999,
            received: 0,
            exitval: 0,
            signal: 0,
            command: b"sum_squares",
        };
        let mut writer = Writer::default();
        writer.write(&line, &mut out);
        writer.write(
            &Line {
                exitval: 3,
                command: b"sh -c 'a\tb'",
                ..line
            },
            &mut out,
        );
        Line {
            start_millis: 1_001_000,
            nanos: 2_345_678_900,
            ..line
        }
        .write(&mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "7\t:\t1000.250\t     0.001\t0\t0\t0\t0\tsum_squares\n\
             7\t:\t1000.250\t     0.001\t0\t0\t3\t0\tsh -c 'a b'\n\
             7\t:\t1001.000\t     2.346\t0\t0\t0\t0\tsum_squares\n"
        );
    }
}
