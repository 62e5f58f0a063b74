//! Lines of a joblog in GNU parallel's format (`--joblog`): `Seq Host Starttime JobRuntime
//! Send Receive Exitval Signal Command`, tab-separated, the times in seconds with 3 decimals as
//! parallel writes them ([`Writer`]); and what a native worker says of the lines of a block,
//! which it runs and times itself, for the supervisor to write theirs ([`Alike`], packed by
//! [`Packer`]).

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

/// Writes joblog lines, keeping the last one: the lines of a block of tiny jobs mostly differ
/// from the one before only by their `Seq`, one more (same millisecond, same task, same
/// outcome), so most lines are a digit counted up in place and a copy.
#[derive(Debug, Default)]
pub struct Writer {
    /// What the last line's fields after `Seq` were made of.
    made_of: Option<Tail>,
    command: Vec<u8>,
    /// The last line, from its `Seq` (`seq_len` digits, `seq`) to its `\n`.
    line: Vec<u8>,
    seq: u64,
    seq_len: usize,
}

/// The fields of a line after its `Seq`, but its command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Tail {
    start_millis: u64,
    runtime_millis: u64,
    received: u64,
    exitval: i32,
    signal: i32,
}

impl Writer {
    /// Appends `line`, with its `\n`, to `out`.
    pub fn write(&mut self, line: &Line<'_>, out: &mut Vec<u8>) {
        let made_of = Tail {
            start_millis: line.start_millis,
            runtime_millis: line.nanos.saturating_add(500_000) / 1_000_000,
            received: line.received,
            exitval: line.exitval,
            signal: line.signal,
        };
        if self.made_of != Some(made_of) || self.command != line.command {
            self.made_of = Some(made_of);
            self.command.clear();
            self.command.extend_from_slice(line.command);
            self.line.clear();
            self.seq_len = 0;
            write_tail(&made_of, line.command, &mut self.line);
            self.set_seq(line.seq);
            out.extend_from_slice(&self.line);
        } else {
            self.write_again(line.seq, out);
        }
    }

    /// Appends the last line written again, with `seq` for its `Seq`: what [`Writer::write`]
    /// writes of a line that differs from the last one only in its `Seq`. Before any line, it
    /// writes nothing.
    #[inline]
    fn write_again(&mut self, seq: u64, out: &mut Vec<u8>) {
        if self.line.is_empty() {
            return;
        }
        if seq != self.seq {
            let counted =
                seq == self.seq.wrapping_add(1) && count_up(&mut self.line[..self.seq_len]);
            if counted {
                self.seq = seq;
            } else {
                self.set_seq(seq);
            }
        }
        out.extend_from_slice(&self.line);
    }

    /// Appends the last line written again `count` times, its `Seq` one more each time: the
    /// lines right after it that differ from it only by their `Seq`. Before any line, it
    /// writes nothing.
    pub fn write_next(&mut self, count: u64, out: &mut Vec<u8>) {
        if self.line.is_empty() {
            return;
        }
        let room = usize::try_from(count.min(1 << 10)).unwrap_or(0);
        out.reserve(self.line.len().saturating_mul(room));
        for _ in 0..count {
            if count_up(&mut self.line[..self.seq_len]) {
                self.seq += 1;
            } else {
                self.set_seq(self.seq.saturating_add(1));
            }
            out.extend_from_slice(&self.line);
        }
    }

    /// Writes `seq` in place of the last line's `Seq`.
    #[cold]
    fn set_seq(&mut self, seq: u64) {
        let mut number = itoa::Buffer::new();
        let digits = number.format(seq).as_bytes();
        self.line.splice(..self.seq_len, digits.iter().copied());
        self.seq_len = digits.len();
        self.seq = seq;
    }
}

/// Adds one to the decimal number `digits`, unless it is all nines (it needs one more digit).
fn count_up(digits: &mut [u8]) -> bool {
    for digit in digits.iter_mut().rev() {
        if *digit == b'9' {
            *digit = b'0';
        } else {
            *digit += 1;
            return true;
        }
    }
    false
}

/// Writes the fields after `Seq` of a line made of `fields` and `command`, from the tab that
/// opens them to the `\n`.
fn write_tail(fields: &Tail, command: &[u8], out: &mut Vec<u8>) {
    let mut number = itoa::Buffer::new();
    out.extend_from_slice(b"\t:\t");
    push_seconds(out, fields.start_millis, 0);
    out.push(b'\t');
    push_seconds(out, fields.runtime_millis, 10);
    out.extend_from_slice(b"\t0\t");
    out.extend_from_slice(number.format(fields.received).as_bytes());
    out.push(b'\t');
    out.extend_from_slice(number.format(fields.exitval).as_bytes());
    out.push(b'\t');
    out.extend_from_slice(number.format(fields.signal).as_bytes());
    out.push(b'\t');
    out.extend(command.iter().map(|&byte| match byte {
        b'\t' | b'\n' | b'\r' => b' ',
        byte => byte,
    }));
    out.push(b'\n');
}

/// How a line of a block ended, as its joblog line says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ran {
    /// It ran and succeeded (`Exitval` 0).
    Ok,
    /// It ran and failed (`Exitval` 1).
    Failed,
    /// It never ran: a bad line, an unknown task (`Exitval` -1).
    Never,
}

/// Consecutive lines of a block whose joblog lines are the same but for their `Seq`: lines of
/// one task that ended the same way, started in the same millisecond and ran as many
/// milliseconds. A block's worker notes its lines as these ([`Packer`]), a few bytes each
/// after the block's result lines, and the supervisor writes the joblog lines from them
/// ([`Unpacker`]): tiny jobs make one for thousands of lines, and a worker formats no text
/// that only the supervisor writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Alike {
    /// The first line's index in its block, from 0.
    pub first: u64,
    /// How many lines: the first and those right after it.
    pub count: u64,
    /// The index of their task, in their worker's list of tasks; `None` if they ran none.
    pub task: Option<u32>,
    /// How they ended.
    pub ran: Ran,
    /// When each started, in milliseconds since the epoch.
    pub start_millis: u64,
    /// How long each ran, in milliseconds.
    pub runtime_millis: u64,
}

impl Alike {
    /// Whether the next line, `index`, of `task`, which ended as `ran` after starting at
    /// `start_millis` and running `runtime_millis`, is one more of these.
    fn takes(&self, index: u64, task: Option<u32>, ran: Ran, millis: (u64, u64)) -> bool {
        self.first.wrapping_add(self.count) == index
            && (self.task, self.ran) == (task, ran)
            && (self.start_millis, self.runtime_millis) == millis
    }
}

/// Flags of a packed [`Alike`], in its first byte after its [`Ran`] (two bits).
const NEXT_LINE: u8 = 1 << 2;
const SAME_TASK: u8 = 1 << 3;
const NO_TASK: u8 = 1 << 4;

/// A task and an outcome as one number, for [`Packer`]'s quick test.
fn quick_key(task: Option<u32>, ran: Ran) -> u64 {
    task.map_or(0, |index| u64::from(index) + 1) << 2 | ran as u64
}

/// `nanos` in milliseconds, rounded.
fn round_millis(nanos: u64) -> u64 {
    nanos.saturating_add(500_000) / 1_000_000
}

/// Notes the lines of a block one by one, as [`Alike`]s packed into a buffer: each is a byte
/// of flags, then, as LEB128 numbers, its first line's index unless it follows the last
/// [`Alike`], its task unless it is the last one's, its count, its start after the last one's
/// (after 0 for the first) and its lines' time.
#[derive(Debug)]
pub struct Packer {
    /// When the block started, in nanoseconds since the epoch, and the time of its lines since.
    started_nanos: u64,
    elapsed: u64,
    /// The lines being gathered, but those the quick test took since it was last counted...
    open: Option<Alike>,
    /// ...which are `quick_count`: lines of the key `quick_key`, the next one `quick_next`, that
    /// started before `quick_until` (nanoseconds since the epoch, 0 when the test is off).
    quick_count: u64,
    quick_next: u64,
    quick_key: u64,
    quick_until: u64,
    /// Of the last one packed: the index after its last line, its task, its start.
    last_end: u64,
    last_task: Option<Option<u32>>,
    last_start: u64,
}

impl Packer {
    /// A packer of the lines of a block that started at `started_nanos` since the epoch; each
    /// line starts when the ones before it have run.
    pub fn new(started_nanos: u64) -> Packer {
        Packer {
            started_nanos,
            elapsed: 0,
            open: None,
            quick_count: 0,
            quick_next: 0,
            quick_key: 0,
            quick_until: 0,
            last_end: 0,
            last_task: None,
            last_start: 0,
        }
    }

    /// Notes line `index` of the block, which ran `task` for `nanos` and ended as `ran` (a line
    /// that never ran has no task and 0); packs into `out` the lines it ends.
    #[inline]
    pub fn line(&mut self, index: u64, task: Option<u32>, ran: Ran, nanos: u64, out: &mut Vec<u8>) {
        let started = self.started_nanos.saturating_add(self.elapsed);
        self.elapsed = self.elapsed.saturating_add(nanos);
        // Most lines: one more like the open ones (which ran under half a millisecond each),
        // as short, starting in their millisecond: told with no division.
        if index == self.quick_next
            && quick_key(task, ran) == self.quick_key
            && nanos < 500_000
            && started < self.quick_until
        {
            self.quick_count += 1;
            self.quick_next = index.wrapping_add(1);
            return;
        }
        self.open_new(index, task, ran, (started, nanos), out);
    }

    /// Notes line `index`, which started at `started` and ran `nanos`, where the quick test did
    /// not take it.
    #[cold]
    fn open_new(
        &mut self,
        index: u64,
        task: Option<u32>,
        ran: Ran,
        (started, nanos): (u64, u64),
        out: &mut Vec<u8>,
    ) {
        let millis = (round_millis(started), round_millis(nanos));
        self.count_quick();
        match &mut self.open {
            Some(open) if open.takes(index, task, ran, millis) => open.count += 1,
            _ => {
                self.close(out);
                self.open = Some(Alike {
                    first: index,
                    count: 1,
                    task,
                    ran,
                    start_millis: millis.0,
                    runtime_millis: millis.1,
                });
            }
        }
        let open = self.open.as_ref().expect("just opened");
        self.quick_next = open.first.wrapping_add(open.count);
        self.quick_key = quick_key(open.task, open.ran);
        // Lines that start before this start in the open ones' millisecond (time only grows in
        // a block); the test is off if these ran a millisecond or more.
        self.quick_until = match open.runtime_millis {
            0 => (open.start_millis * 1_000_000).saturating_add(500_000),
            _ => 0,
        };
    }

    /// Adds the lines the quick test took to the open ones.
    fn count_quick(&mut self) {
        if let Some(open) = &mut self.open {
            open.count += self.quick_count;
        }
        self.quick_count = 0;
    }

    /// Packs into `out` the lines noted and not yet packed: at the end of the block.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        self.close(out);
    }

    /// Packs the open [`Alike`], if any.
    fn close(&mut self, out: &mut Vec<u8>) {
        self.count_quick();
        let Some(alike) = self.open.take() else {
            return;
        };
        let mut record = [0u8; 1 + 5 * 10];
        record[0] = match alike.ran {
            Ran::Ok => 0,
            Ran::Failed => 1,
            Ran::Never => 2,
        };
        let mut len = 1;
        if alike.first == self.last_end {
            record[0] |= NEXT_LINE;
        } else {
            len += put_leb128(&mut record[len..], alike.first);
        }
        if self.last_task == Some(alike.task) {
            record[0] |= SAME_TASK;
        } else if let Some(task) = alike.task {
            len += put_leb128(&mut record[len..], u64::from(task));
        } else {
            record[0] |= NO_TASK;
        }
        len += put_leb128(&mut record[len..], alike.count);
        len += put_leb128(
            &mut record[len..],
            alike.start_millis.wrapping_sub(self.last_start),
        );
        len += put_leb128(&mut record[len..], alike.runtime_millis);
        out.extend_from_slice(&record[..len]);
        self.last_end = alike.first.wrapping_add(alike.count);
        self.last_task = Some(alike.task);
        self.last_start = alike.start_millis;
    }
}

/// The [`Alike`]s packed in `bytes` by a [`Packer`], in order. It ends at the first record
/// that is not one ([`Unpacker::is_cut`] says so): bytes from a worker are not trusted.
#[derive(Debug)]
pub struct Unpacker<'a> {
    bytes: &'a [u8],
    at: usize,
    /// Of the last one unpacked, as [`Packer`] keeps them.
    last_end: u64,
    last_task: Option<Option<u32>>,
    last_start: u64,
    cut: bool,
}

impl<'a> Unpacker<'a> {
    /// The [`Alike`]s packed in `bytes`.
    pub fn new(bytes: &'a [u8]) -> Unpacker<'a> {
        Unpacker {
            bytes,
            at: 0,
            last_end: 0,
            last_task: None,
            last_start: 0,
            cut: false,
        }
    }

    /// Whether the bytes ended inside a record, or held one that is not.
    pub fn is_cut(&self) -> bool {
        self.cut
    }

    fn leb128(&mut self) -> Option<u64> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = *self.bytes.get(self.at)?;
            self.at += 1;
            let bits = u64::from(byte & 0x7f);
            if shift == 63 && bits > 1 {
                return None;
            }
            value |= bits << shift;
            if byte < 0x80 {
                return Some(value);
            }
        }
        None
    }

    fn record(&mut self) -> Option<Alike> {
        let flags = *self.bytes.get(self.at)?;
        self.at += 1;
        let ran = match flags & 3 {
            0 => Ran::Ok,
            1 => Ran::Failed,
            2 => Ran::Never,
            _ => return None,
        };
        let first = if flags & NEXT_LINE != 0 {
            self.last_end
        } else {
            self.leb128()?
        };
        let task = if flags & SAME_TASK != 0 {
            self.last_task?
        } else if flags & NO_TASK != 0 {
            None
        } else {
            Some(u32::try_from(self.leb128()?).ok()?)
        };
        let count = self.leb128().filter(|&count| count > 0)?;
        let start_millis = self.last_start.wrapping_add(self.leb128()?);
        let runtime_millis = self.leb128()?;
        self.last_end = first.checked_add(count)?;
        self.last_task = Some(task);
        self.last_start = start_millis;
        Some(Alike {
            first,
            count,
            task,
            ran,
            start_millis,
            runtime_millis,
        })
    }
}

impl Iterator for Unpacker<'_> {
    type Item = Alike;

    fn next(&mut self) -> Option<Alike> {
        if self.at >= self.bytes.len() || self.cut {
            return None;
        }
        let alike = self.record();
        self.cut = alike.is_none();
        alike
    }
}

/// Writes `value` as LEB128 (7 bits a byte, low first, the high bit set on all but the last)
/// at the start of `out`, which has room for 10 bytes; returns how many it took.
fn put_leb128(out: &mut [u8], mut value: u64) -> usize {
    let mut len = 0;
    while value >= 0x80 {
        out[len] = (value as u8 & 0x7f) | 0x80;
        value >>= 7;
        len += 1;
    }
    out[len] = value as u8;
    len + 1
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

    #[test]
    fn a_kept_line_is_written_as_a_new_one_would_be() {
        let mut kept = Writer::default();
        let (mut by_kept, mut by_new) = (Vec::new(), Vec::new());
        let seqs = [
            1, 2, 9, 10, 11, 19, 20, 99, 100, 101, 109, 110, 7, 8, 999, 1000, 1000, 1001, 5, 6,
            10_000, 9_999,
        ];
        for (at, &seq) in seqs.iter().enumerate() {
            let line = Line {
                seq,
                start_millis: 1_000_250 + u64::from(at >= 15),
                nanos: if at == 19 { 2_000_000 } else { 10 },
                received: 0,
                exitval: if at == 17 { -1 } else { 0 },
                signal: 0,
                command: if at == 4 { b"cube" } else { b"sum_squares" },
            };
            kept.write(&line, &mut by_kept);
            line.write(&mut by_new);
        }
        assert_eq!(String::from_utf8(by_kept), String::from_utf8(by_new));

        // The lines after a kept one, across a carry to one more digit.
        let line = Line {
            seq: 95,
            start_millis: 1_000_250,
            nanos: 10,
            received: 0,
            exitval: 0,
            signal: 0,
            command: b"sum_squares",
        };
        let (mut by_next, mut by_new) = (Vec::new(), Vec::new());
        kept.write(&line, &mut by_next);
        kept.write_next(1_000, &mut by_next);
        for seq in 95..=1_095 {
            Line { seq, ..line }.write(&mut by_new);
        }
        assert_eq!(String::from_utf8(by_next), String::from_utf8(by_new));
        let mut nothing = Vec::new();
        Writer::default().write_next(3, &mut nothing);
        Writer::default().write_again(3, &mut nothing);
        assert!(nothing.is_empty());
    }

    #[test]
    fn alike_lines_are_gathered_and_come_out_as_they_went_in() {
        // Block started at 1000.0004 s: lines of a few hundred ns start in its millisecond.
        let started = 1_000_000_400_000;
        let (mut packer, mut bytes) = (Packer::new(started), Vec::new());
        let lines = [
            (0, Some(0), Ran::Ok, 120),
            (1, Some(0), Ran::Ok, 95),
            (2, Some(0), Ran::Ok, 300),
            // Ends a millisecond; the next start in the next one.
            (3, Some(0), Ran::Ok, 600_000),
            (4, Some(0), Ran::Ok, 100),
            (5, Some(0), Ran::Failed, 100),
            // Line 6 blank.
            (7, None, Ran::Never, 0),
            (8, None, Ran::Never, 0),
            (9, Some(7), Ran::Ok, 1 << 40),
        ];
        for (index, task, ran, nanos) in lines {
            packer.line(index, task, ran, nanos, &mut bytes);
        }
        packer.finish(&mut bytes);
        let alike = |first, count, task, ran, start_millis, runtime_millis| Alike {
            first,
            count,
            task,
            ran,
            start_millis,
            runtime_millis,
        };
        let mut unpacker = Unpacker::new(&bytes);
        assert_eq!(
            unpacker.by_ref().collect::<Vec<_>>(),
            [
                alike(0, 3, Some(0), Ran::Ok, 1_000_000, 0),
                alike(3, 1, Some(0), Ran::Ok, 1_000_000, 1),
                alike(4, 1, Some(0), Ran::Ok, 1_000_001, 0),
                alike(5, 1, Some(0), Ran::Failed, 1_000_001, 0),
                alike(7, 2, None, Ran::Never, 1_000_001, 0),
                alike(9, 1, Some(7), Ran::Ok, 1_000_001, 1_099_512),
            ]
        );
        assert!(!unpacker.is_cut());

        // A garbled record, one cut short, a number past 64 bits, a task taken from none.
        for garbage in [
            &[0x03][..],
            &[0x00, 0x80],
            &[
                0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f,
            ],
            &[SAME_TASK, 0, 1, 0, 0],
            // No lines.
            &[NO_TASK, 0, 0, 0, 0],
        ] {
            let mut unpacker = Unpacker::new(garbage);
            assert_eq!(unpacker.by_ref().count(), 0, "{garbage:?}");
            assert!(unpacker.is_cut());
        }
        let mut cut = bytes.clone();
        cut.pop();
        let mut unpacker = Unpacker::new(&cut);
        assert_eq!(unpacker.by_ref().count(), 5);
        assert!(unpacker.is_cut());
    }
}
