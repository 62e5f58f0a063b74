//! Reading lines: input read into a fixed ring of blocks ([`BlockRing`]), and cut into lines
//! ([`LineReader`]) that stay views of their block, with a cap on a line's length so that a
//! huge or endless line is skipped, not held.

use std::io::{self, Read};
use std::ops::Range;

use bytes::Bytes;

use crate::record::SharedBytes;
use crate::ring::{Home, Ring};
use corral_protocol::jobline;

/// Bytes read at a time: the size of the blocks whose lines jobs share.
const BLOCK_BYTES: usize = 64 * 1024;

/// The ring size for a pool of `workers`: four blocks for each worker, which holds two batches
/// ahead of its answers and a batch can span two blocks, and four more for the reader, the
/// hand-over and the queue. With two workers, rings of 8, 12 and 16 blocks ran a million tiny
/// jobs equally fast; larger ones only take more memory, and 8 left the peak less steady from
/// one run to the next.
pub fn ring_blocks(workers: usize) -> usize {
    4 + 4 * workers
}

/// The blocks one reader reads into: a `Ring`, so input never holds more than its size in
/// blocks, and the reader waits for a block to come back when it has used them all.
///
/// Blocks keep their length as they go round, so that reading into one never zeroes it
/// first; a block grown past its 64 KiB for a long line is not kept when it comes back: a
/// fresh one takes its place.
#[derive(Debug)]
pub struct BlockRing(Ring<Vec<u8>>);

impl BlockRing {
    /// A ring of at most `max` blocks (at least two: the one being filled and the one whose
    /// lines are being handed out).
    pub fn new(max: usize) -> BlockRing {
        BlockRing(Ring::new(max.max(2)))
    }

    /// A block to read into, all of its length free to be overwritten (it holds what its
    /// last use left); waits while all are taken.
    fn take(&mut self) -> Vec<u8> {
        let block = self.0.take(|| vec![0; BLOCK_BYTES]);
        if block.len() > BLOCK_BYTES {
            return vec![0; BLOCK_BYTES];
        }
        block
    }

    /// The first `len` bytes of `block` as shared bytes; the block comes back to the ring
    /// when the last of them is dropped.
    fn share(&self, block: Vec<u8>, len: usize) -> Bytes {
        Bytes::from_owner(Block {
            bytes: block,
            home: self.0.home(),
        })
        .slice(..len)
    }
}

/// A block whose lines are handed out; it goes home when the last view of it is dropped.
struct Block {
    bytes: Vec<u8>,
    home: Home<Vec<u8>>,
}

impl AsRef<[u8]> for Block {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

impl Drop for Block {
    fn drop(&mut self) {
        self.home.give_back(std::mem::take(&mut self.bytes));
    }
}

/// One physical line, or the news that it was too long.
#[derive(Debug, PartialEq, Eq)]
pub enum Line<'a> {
    /// The line, without the line ending.
    Text(LineRef<'a>),
    /// The line was this many bytes long, over the limit; it was skipped.
    TooLong(u64),
}

/// Lines read together, or the news that one was too long: what [`LineReader::next_block`]
/// gives.
#[derive(Debug)]
pub enum Framed {
    /// Whole lines, each with its `\n` (but the input's last line, if it has none).
    Lines(Bytes),
    /// A line of this many bytes, over the limit; it was skipped.
    TooLong(u64),
}

/// The line of `block` that starts at `start` (which is before the block's end), and where
/// the next one starts (see [`jobline::split_line`]).
pub(super) fn split_line(block: &Bytes, start: usize, max: usize) -> (Line<'_>, usize) {
    let (line, after) = jobline::split_line(block, start, max);
    let line = match line {
        Ok(range) => Line::Text(LineRef {
            block,
            start: range.start,
            end: range.end,
        }),
        Err(len) => Line::TooLong(len),
    };
    (line, after)
}

/// A line inside the block it was read with. Parts of it are cut from the block as
/// [`SharedBytes`], without a copy.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct LineRef<'a> {
    block: &'a Bytes,
    start: usize,
    end: usize,
}

impl<'a> LineRef<'a> {
    /// The line's bytes.
    pub fn bytes(&self) -> &'a [u8] {
        &self.block[self.start..self.end]
    }

    /// The bytes of the line in `range`, sharing the block.
    pub fn share(&self, range: Range<usize>) -> SharedBytes {
        SharedBytes::new(self.block, self.start + range.start..self.start + range.end)
    }
}

impl std::fmt::Debug for LineRef<'_> {
    /// The line's text; not the rest of its block.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LineRef({:?})", String::from_utf8_lossy(self.bytes()))
    }
}

/// Splits a byte stream into lines of at most `max` bytes (not counting `\n` or `\r\n`),
/// reading a block at a time. The lines of a block are views of its buffer, so a line costs no
/// copy, no allocation and no reference count of its own; a longer line is consumed without
/// being stored. A block lives until the last job read from it is answered, then goes back to
/// the [`BlockRing`]; the partial line at a block's end is copied to the next block.
pub struct LineReader<R> {
    reader: R,
    max: usize,
    ring: BlockRing,
    /// The block being read into; its first `filled` bytes are read but not yet split (no
    /// complete line while `ready` is used up). It is empty until a block is taken from the
    /// ring for it.
    pending: Vec<u8>,
    filled: usize,
    /// Whole lines, each with its `\n` (but the input's last line, if it has none).
    ready: Bytes,
    /// Where the lines of `ready` not handed out yet start.
    next: usize,
}

/// What a refill found.
enum Refill {
    /// Lines are ready.
    Lines,
    /// A line too long to keep, of this many bytes.
    TooLong(u64),
    /// The input ended.
    End,
}

impl<R: Read> LineReader<R> {
    /// Lines of `reader`, each at most `max` bytes long, read into the blocks of `ring`.
    /// Reading waits while every block of the ring holds a line still in use.
    pub fn new(reader: R, max: usize, ring: BlockRing) -> LineReader<R> {
        LineReader {
            reader,
            max,
            ring,
            pending: Vec::new(),
            filled: 0,
            ready: Bytes::new(),
            next: 0,
        }
    }

    /// The ring, for the next input.
    pub fn into_ring(self) -> BlockRing {
        self.ring
    }

    /// Whether the next line would wait for the reader.
    pub fn would_wait(&self) -> bool {
        self.next == self.ready.len()
    }

    /// The next line; `None` at the end of the input.
    pub fn next_line(&mut self) -> io::Result<Option<Line<'_>>> {
        if self.would_wait() {
            match self.refill()? {
                Refill::Lines => {}
                Refill::TooLong(len) => return Ok(Some(Line::TooLong(len))),
                Refill::End => return Ok(None),
            }
        }
        let (line, next) = split_line(&self.ready, self.next, self.max);
        self.next = next;
        Ok(Some(line))
    }

    /// Every whole line read and not handed out yet, at once (each with its `\n`, but the
    /// input's last line if it has none), or a line too long to keep; `None` at the end of
    /// the input. The lines share their block, which goes back to the ring once every view
    /// of it is dropped.
    pub fn next_block(&mut self) -> io::Result<Option<Framed>> {
        if self.would_wait() {
            match self.refill()? {
                Refill::Lines => {}
                Refill::TooLong(len) => return Ok(Some(Framed::TooLong(len))),
                Refill::End => return Ok(None),
            }
        }
        let lines = self.ready.slice(self.next..);
        self.next = self.ready.len();
        Ok(Some(Framed::Lines(lines)))
    }

    /// Reads until there is a whole line, and moves every whole line read to `ready`; or
    /// consumes a line too long to keep; or moves the last line of the input, which has no
    /// `\n`, to `ready`.
    fn refill(&mut self) -> io::Result<Refill> {
        // Every line of the last block was handed out: let the block go, so that it can come
        // back to the ring even while this waits for input or for a block.
        self.ready = Bytes::new();
        self.next = 0;
        // Bytes at the start of `pending` known to hold no `\n`.
        let mut searched = 0;
        // Inside a line too long to keep: how many of its bytes were dropped, and the last one.
        let mut dropped: Option<(u64, u8)> = None;
        loop {
            let fresh = &self.pending[searched..self.filled];
            if let Some((count, last)) = dropped {
                if let Some(i) = memchr::memchr(b'\n', fresh) {
                    let before = if i > 0 { fresh[i - 1] } else { last };
                    let len = count + i as u64 - u64::from(before == b'\r');
                    let after = searched + i + 1;
                    self.pending.copy_within(after..self.filled, 0);
                    self.filled -= after;
                    return Ok(Refill::TooLong(len));
                }
                let last = fresh.last().copied().unwrap_or(last);
                dropped = Some((count + fresh.len() as u64, last));
                self.filled = 0;
            } else if let Some(i) = memchr::memrchr(b'\n', fresh) {
                self.set_ready(searched + i + 1);
                return Ok(Refill::Lines);
            } else if self.filled > self.max + 1 {
                // One spare byte for a '\r' that a CRLF ending may put past the limit.
                let last = self.pending[self.filled - 1];
                dropped = Some((self.filled as u64, last));
                self.filled = 0;
            }
            searched = self.filled;
            if self.read_block()? == 0 {
                return Ok(match dropped {
                    Some((count, last)) => Refill::TooLong(count - u64::from(last == b'\r')),
                    None if self.filled == 0 => Refill::End,
                    None => {
                        self.set_ready(self.filled);
                        Refill::Lines
                    }
                });
            }
        }
    }

    /// Moves the first `len` bytes read to `ready`, and the rest (the start of a line) to a
    /// new block.
    fn set_ready(&mut self, len: usize) {
        let rest = self.filled - len;
        let next = if rest > 0 {
            let mut block = self.ring.take();
            if block.len() < rest {
                block.resize(rest, 0);
            }
            block[..rest].copy_from_slice(&self.pending[len..self.filled]);
            block
        } else {
            Vec::new()
        };
        let lines = std::mem::replace(&mut self.pending, next);
        self.filled = rest;
        self.ready = self.ring.share(lines, len);
        self.next = 0;
    }

    /// Reads into the free room of `pending` (taking a block from the ring if it has none,
    /// growing it if it is full of one long line); 0 at the end of the input.
    fn read_block(&mut self) -> io::Result<usize> {
        if self.pending.is_empty() {
            self.pending = self.ring.take();
        }
        if self.filled == self.pending.len() {
            self.pending.resize(self.filled + BLOCK_BYTES, 0);
        }
        loop {
            match self.reader.read(&mut self.pending[self.filled..]) {
                Ok(n) => {
                    self.filled += n;
                    return Ok(n);
                }
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) => return Err(err),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reader of `.0` that returns at most `.1` bytes at a time.
    struct Trickle<'a>(&'a [u8], usize);

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = buf.len().min(self.1).min(self.0.len());
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    /// Every line of `text`, as text or as its length when too long, read through a reader
    /// that returns at most `step` bytes at a time.
    fn lines(text: &[u8], max: usize, step: usize) -> Vec<Result<String, u64>> {
        // Each line is copied out at once, so two blocks are enough.
        let mut reader = LineReader::new(Trickle(text, step), max, BlockRing::new(2));
        let mut lines = Vec::new();
        while let Some(line) = reader.next_line().unwrap() {
            lines.push(match line {
                Line::Text(text) => Ok(String::from_utf8(text.bytes().to_vec()).unwrap()),
                Line::TooLong(len) => Err(len),
            });
        }
        lines
    }

    #[test]
    fn line_reader_splits_strips_crlf_and_caps_length() {
        let text = b"abc\r\n\nxyz\n0123456789\nlast";
        let expected = [
            Ok("abc".to_owned()),
            Ok("".to_owned()),
            Ok("xyz".to_owned()),
            Err(10),
            Ok("last".to_owned()),
        ];
        for step in [1, 2, 3, 4, 7, 100, BLOCK_BYTES] {
            assert_eq!(
                lines(text, 5, step),
                expected,
                "reading {step} bytes at a time"
            );
        }
    }

    #[test]
    fn a_line_at_the_limit_with_crlf_fits() {
        for step in [1, 5, 6, 7, 100] {
            assert_eq!(
                lines(b"12345\r\n123456\r\n1234567\r", 5, step),
                [Ok("12345".to_owned()), Err(6), Err(7)],
                "reading {step} bytes at a time"
            );
        }
    }

    #[test]
    fn lines_longer_than_a_block_are_read_whole_or_skipped() {
        let long = "x".repeat(3 * BLOCK_BYTES + 5);
        let text = format!("a\n{long}\r\nb\n{long}");
        assert_eq!(
            lines(text.as_bytes(), 4 * BLOCK_BYTES, BLOCK_BYTES),
            [
                Ok("a".into()),
                Ok(long.clone()),
                Ok("b".into()),
                Ok(long.clone())
            ]
        );
        let len = long.len() as u64;
        for step in [1000, BLOCK_BYTES] {
            assert_eq!(
                lines(text.as_bytes(), 100, step),
                [Ok("a".into()), Err(len), Ok("b".into()), Err(len)]
            );
        }
        assert_eq!(lines(b"", 5, 1), []);
        assert_eq!(lines(b"\n", 5, 1), [Ok(String::new())]);
    }

    /// The start of the block each line of `text` is a view of, read with a ring of `blocks`
    /// and a reader that returns `step` bytes at a time; each line is let go once the next
    /// one is read, as the scheduler lets jobs go once they are answered.
    fn block_starts(text: &[u8], blocks: usize, step: usize) -> Vec<(String, *const u8)> {
        let ring = BlockRing::new(blocks);
        let mut reader = LineReader::new(Trickle(text, step), 1 << 20, ring);
        let mut seen = Vec::new();
        while let Some(line) = reader.next_line().unwrap() {
            let Line::Text(line) = line else {
                panic!("no line is too long")
            };
            let whole = line.share(0..line.bytes().len());
            seen.push((
                String::from_utf8(whole.as_bytes().to_vec()).unwrap(),
                line.block.as_ptr(),
            ));
        }
        seen
    }

    #[test]
    fn blocks_are_reused_in_turn_and_lines_cross_them_whole() {
        // Lines of 100 bytes, 5,000 of them: about 7.6 blocks' worth, and lines that straddle
        // a block's end are moved whole into the next block.
        let lines: Vec<String> = (0..5_000).map(|i| format!("{i:099}")).collect();
        let text = lines.iter().map(|l| format!("{l}\n")).collect::<String>();
        for (blocks, step) in [(2, BLOCK_BYTES), (3, 10_000), (3, 997)] {
            let seen = block_starts(text.as_bytes(), blocks, step);
            let got: Vec<&str> = seen.iter().map(|(line, _)| line.as_str()).collect();
            assert_eq!(got, lines, "ring of {blocks}, {step} bytes a read");
            let mut starts: Vec<*const u8> = seen.iter().map(|&(_, start)| start).collect();
            starts.dedup();
            assert!(
                starts.len() >= 8,
                "a block is used again after its lines are let go"
            );
            starts.sort();
            starts.dedup();
            assert!(
                starts.len() <= blocks,
                "{} blocks in a ring of {blocks}",
                starts.len()
            );
        }
    }

    #[test]
    fn a_block_grown_for_a_long_line_is_replaced_when_it_comes_back() {
        let long = "x".repeat(3 * BLOCK_BYTES);
        let text = format!("a\n{long}\nb\n{long}\nc\n");
        let seen = block_starts(text.as_bytes(), 2, BLOCK_BYTES);
        let got: Vec<&str> = seen.iter().map(|(line, _)| line.as_str()).collect();
        assert_eq!(got, ["a", &long, "b", &long, "c"]);
        let mut ring = BlockRing::new(2);
        let mut grown = ring.take();
        grown.resize(4 * BLOCK_BYTES, 0);
        drop(ring.share(grown, 0));
        let _other = ring.take();
        assert_eq!(
            ring.take().len(),
            BLOCK_BYTES,
            "a fresh block of the usual size"
        );
    }
}
