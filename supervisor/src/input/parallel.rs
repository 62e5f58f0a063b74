//! Input read on every core. The thread that reads only frames: it cuts what it reads into
//! pieces of whole lines ([`Piece`]), knowing each one's first line number from a count of the
//! newlines before it, and never looks inside a line. Then either each piece goes to the
//! engine as it is, a block of raw lines that a native worker reads ([`ParallelReader::blocks`]),
//! or a pool of parser threads, sized to the machine, turns pieces into chunks of jobs and
//! rejected lines ([`JobParser::parse_piece`]), each piece on its own, and a forwarding thread
//! hands the chunks to the engine in reading order, numbering their jobs on from the chunk
//! before ([`ParallelReader::start`]). What the pool gives is what [`JobParser::read_all`]
//! gives, item for item.
//!
//! `--resume` reads serially ([`JobParser::read_all`]): a repeated id is only found in
//! reading order.
//!
//! Memory stays bounded as it does for serial reading: pieces are views of the reader's
//! [`BlockRing`], each chunk's jobs travel in a vector of a `Ring`, and at most a few pieces
//! wait for a parser or for the engine.

use std::collections::VecDeque;
use std::io::{self, Read};
use std::thread;

use bytes::Bytes;
use crossbeam_channel::{Sender, bounded};

use super::{BlockRing, Framed, JobParser, LineReader, Piece};
use crate::ordered::{OrderedPool, Pending};
use crate::ports::Feed;
use crate::record::count_lines;
use crate::record::{InputChunk, Job, Jobs, Lines, SharedBytes};
use crate::ring::Ring;
use corral_protocol::JobSeq;

/// Most lines in a piece, which becomes one chunk for the engine.
pub const PIECE_LINES: usize = 1024;

/// What the forwarding thread hands on, in order.
enum Step {
    /// A piece's chunk, once parsed.
    Chunk(Pending<InputChunk>),
    /// The end of the input, or why it could not be read to its end.
    Feed(Feed),
}

/// Where pieces go.
enum Parsing {
    /// To the parser threads, and their chunks, in order, to the forwarding thread.
    Pool {
        pool: OrderedPool<(Piece, Jobs), InputChunk>,
        steps: Sender<Step>,
    },
    /// Straight to the engine: each piece is a block of raw lines for a worker to read
    /// ([`Job::lines`]); the parser only answers the lines too long to be in one.
    Blocks {
        parser: Box<JobParser>,
        send: Box<dyn FnMut(Feed) -> bool + Send>,
        next_seq: u64,
    },
}

/// See the module documentation: the reading thread's side, which numbers lines across every
/// input it reads.
pub struct ParallelReader {
    max_line: usize,
    /// The blocks every input is read into; out only while [`ParallelReader::read`] reads.
    ring: Option<BlockRing>,
    vectors: Ring<VecDeque<Job>>,
    parsing: Parsing,
    /// Lines framed so far.
    line: u64,
}

impl ParallelReader {
    /// Starts `threads` parsers like `parser` (its format, source and task names), and the
    /// thread that passes each chunk, or the end, to `send` in order until it returns false.
    /// `vectors` job vectors and as many blocks, at most, are alive at once.
    pub fn start(
        parser: &JobParser,
        threads: usize,
        vectors: usize,
        mut send: impl FnMut(Feed) -> bool + Send + 'static,
    ) -> ParallelReader {
        let threads = threads.max(1);
        let states = (0..threads).map(|_| parser.piece_parser()).collect();
        let pool = OrderedPool::start(
            "corral-parse",
            states,
            Some(2 * threads),
            |parser: &mut JobParser, (piece, jobs): (Piece, Jobs)| parser.parse_piece(&piece, jobs),
        );
        let (steps, in_order) = bounded::<Step>(vectors.max(2));
        thread::Builder::new()
            .name("corral-forward".into())
            .spawn(move || {
                let mut next_seq = 0;
                for step in in_order {
                    let feed = match step {
                        Step::Chunk(pending) => {
                            // A parser that panicked leaves the input short: stop here, and
                            // the run reports it as not read to its end.
                            let Some(mut chunk) = pending.wait() else {
                                return;
                            };
                            if chunk.is_empty() {
                                continue;
                            }
                            chunk.renumber(&mut next_seq);
                            Feed::Jobs(chunk)
                        }
                        Step::Feed(feed) => feed,
                    };
                    if !send(feed) {
                        return;
                    }
                }
            })
            .expect("spawning a thread");
        ParallelReader::with(parser, Parsing::Pool { pool, steps }, vectors)
    }

    /// Like [`ParallelReader::start`], but no line is parsed: each piece goes to the engine,
    /// from this thread, as one block of raw lines ([`Job::lines`]) for a native worker to
    /// read, run and answer; only a line too long for a block is answered here.
    pub fn blocks(
        parser: &JobParser,
        vectors: usize,
        send: impl FnMut(Feed) -> bool + Send + 'static,
    ) -> ParallelReader {
        let parsing = Parsing::Blocks {
            parser: Box::new(parser.piece_parser()),
            send: Box::new(send),
            next_seq: 0,
        };
        ParallelReader::with(parser, parsing, vectors)
    }

    fn with(parser: &JobParser, parsing: Parsing, vectors: usize) -> ParallelReader {
        ParallelReader {
            max_line: parser.format.max_line_bytes,
            ring: Some(BlockRing::new(parser.format.max_blocks)),
            vectors: Ring::new(vectors),
            parsing,
            line: 0,
        }
    }

    /// Reads all of `reader`, its lines numbered on from the inputs read before. Returns
    /// whether it read to the end; false also when the engine takes no more.
    pub fn read<R: Read>(&mut self, reader: R) -> io::Result<bool> {
        let ring = self.ring.take().expect("read is not re-entered");
        let mut lines = LineReader::new(reader, self.max_line, ring);
        let read = self.frame(&mut lines);
        self.ring = Some(lines.into_ring());
        read
    }

    /// Sends `feed` after every chunk read so far; false when the engine takes no more.
    pub fn feed(&mut self, feed: Feed) -> bool {
        match &mut self.parsing {
            Parsing::Pool { steps, .. } => steps.send(Step::Feed(feed)).is_ok(),
            Parsing::Blocks { send, .. } => send(feed),
        }
    }

    fn frame<R: Read>(&mut self, lines: &mut LineReader<R>) -> io::Result<bool> {
        while let Some(block) = lines.next_block()? {
            let mut rest = match block {
                Framed::TooLong(len) => {
                    self.line += 1;
                    let line = self.line;
                    if !self.give(Piece::TooLong { line, len }) {
                        return Ok(false);
                    }
                    continue;
                }
                Framed::Lines(lines) => Some(lines),
            };
            while let Some(lines) = rest.take() {
                let (piece, count, after) = cut(lines, PIECE_LINES);
                let first_line = self.line + 1;
                self.line += count;
                if !self.give(Piece::Lines {
                    first_line,
                    lines: piece,
                    count,
                }) {
                    return Ok(false);
                }
                rest = after;
            }
        }
        Ok(true)
    }

    /// Hands `piece` to a parser and its chunk to the forwarding thread; false when the
    /// engine takes no more.
    fn give(&mut self, piece: Piece) -> bool {
        // Waiting here for a vector holds back no parsed job: every piece before this one is
        // with the parsers or on its way to the engine already.
        match &mut self.parsing {
            Parsing::Pool { pool, steps } => {
                let jobs = Jobs::from_ring(&mut self.vectors, PIECE_LINES);
                steps.send(Step::Chunk(pool.give((piece, jobs)))).is_ok()
            }
            Parsing::Blocks {
                parser,
                send,
                next_seq,
            } => {
                let mut jobs = Jobs::from_ring(&mut self.vectors, 1);
                let mut chunk = match piece {
                    Piece::Lines {
                        first_line,
                        lines,
                        count,
                    } => {
                        let lines = Lines::new(SharedBytes::new(&lines, 0..lines.len()), count);
                        jobs.push_back(Job::lines(JobSeq(0), parser.source(), first_line, lines));
                        InputChunk {
                            jobs,
                            rejected: Vec::new(),
                        }
                    }
                    Piece::TooLong { .. } => parser.parse_piece(&piece, jobs),
                };
                if chunk.is_empty() {
                    return true;
                }
                chunk.renumber(next_seq);
                send(Feed::Jobs(chunk))
            }
        }
    }
}

/// The first `max` lines of `lines` (all of them if it has no more), how many they are, and
/// the lines after them.
fn cut(lines: Bytes, max: usize) -> (Bytes, u64, Option<Bytes>) {
    let count = count_lines(&lines);
    if count <= max as u64 {
        return (lines, count, None);
    }
    let end = memchr::memchr_iter(b'\n', &lines)
        .nth(max - 1)
        .expect("more than max lines have max newlines")
        + 1;
    let after = lines.slice(end..);
    (lines.slice(..end), max as u64, Some(after))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::input::InputFormat;
    use crate::record::{InputItem, JobResult, ResultKey, TaskNames};
    use crate::shard::{Shard, ShardBy};
    use crossbeam_channel::unbounded;

    /// What identifies an item and everything it carries, as text, for comparing the two
    /// ways of reading.
    fn describe(job: Option<&Job>, rejected: Option<&JobResult>, names: &TaskNames) -> String {
        match (job, rejected) {
            (Some(job), _) => format!(
                "job seq={} line={} id={} task={} input={} meta={:?}",
                job.seq.0,
                job.line,
                String::from_utf8_lossy(job.as_one().unwrap().id.as_bytes()),
                names.name(job.as_one().unwrap().task),
                String::from_utf8_lossy(job.as_one().unwrap().input.as_bytes()),
                job.as_one()
                    .unwrap()
                    .meta
                    .as_ref()
                    .map(|m| String::from_utf8_lossy(m.as_bytes()).into_owned())
            ),
            (None, Some(result)) => {
                let key = match &result.key {
                    ResultKey::Job { id, line } => {
                        format!("{}@{line}", String::from_utf8_lossy(id.as_bytes()))
                    }
                    ResultKey::Line(line) => format!("@{line}"),
                    ResultKey::Lines(_) => unreachable!("reading makes no block's result"),
                };
                let error = result.outcome.as_ref().unwrap_err();
                format!(
                    "rejected seq={} {key} {:?} {}",
                    result.seq.0, error.kind, error.message
                )
            }
            (None, None) => unreachable!(),
        }
    }

    /// The items of `inputs`, read one after the other serially, as chunks would be sorted by
    /// sequence number.
    fn serial(inputs: &[Vec<u8>], format: &InputFormat) -> Vec<String> {
        let names = TaskNames::default();
        let mut parser = JobParser::new(format.clone(), names.clone());
        let mut items = Vec::new();
        for input in inputs {
            parser
                .read_all(&input[..], |item, _| {
                    items.push(match &item {
                        InputItem::Job(job) => describe(Some(job), None, &names),
                        InputItem::Rejected(result) => describe(None, Some(result), &names),
                    });
                    true
                })
                .unwrap();
        }
        items
    }

    /// The same, read by a [`ParallelReader`] of `threads` parsers; also checks that the end
    /// comes last and that sequence numbers follow each other across chunks.
    fn parallel(inputs: &[Vec<u8>], format: &InputFormat, threads: usize) -> Vec<String> {
        let names = TaskNames::default();
        let parser = JobParser::new(format.clone(), names.clone());
        let (tx, rx) = unbounded::<Feed>();
        let mut reader =
            ParallelReader::start(&parser, threads, 1024, move |feed| tx.send(feed).is_ok());
        for input in inputs {
            assert!(reader.read(&input[..]).unwrap());
        }
        assert!(reader.feed(Feed::Ended));
        drop(reader);
        let mut items = Vec::new();
        let mut ended = false;
        for feed in rx {
            assert!(!ended, "nothing after the end");
            match feed {
                Feed::Jobs(chunk) => {
                    let mut chunk_items: Vec<(u64, String)> = chunk
                        .jobs
                        .iter()
                        .map(|job| (job.seq.0, describe(Some(job), None, &names)))
                        .chain(
                            chunk
                                .rejected
                                .iter()
                                .map(|r| (r.seq.0, describe(None, Some(r), &names))),
                        )
                        .collect();
                    chunk_items.sort();
                    items.extend(chunk_items.into_iter().map(|(_, text)| text));
                }
                Feed::Ended => ended = true,
                Feed::Failed(why) => panic!("{why}"),
            }
        }
        assert!(ended);
        items
    }

    /// Hostile input: good jobs, malformed lines, CRLF endings, blank and whitespace-only
    /// lines, lines over the limit (inside a block and longer than a block), unicode ids,
    /// unknown and missing tasks, bad ids, invalid UTF-8, duplicates, exec jobs.
    fn hostile(lines: usize, seed: u64) -> Vec<u8> {
        let mut rng = seed;
        let mut text = Vec::new();
        for i in 0..lines {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let line: Vec<u8> = match rng % 16 {
                0 => b"not json at all".to_vec(),
                1 => b"".to_vec(),
                2 => b"   \t ".to_vec(),
                3 => format!(
                    "{{\"id\":\"caf\u{e9}-{i}-\u{1F600}\",\"task\":\"echo\",\"input\":[1,2]}}\r"
                )
                .into_bytes(),
                4 => format!("{{\"id\":{i},\"task\":\"nope\",\"input\":{{}}}}").into_bytes(),
                5 => format!("{{\"id\":{i},\"input\":1}}").into_bytes(),
                6 => format!("{{\"id\":[{i}],\"task\":\"echo\"}}").into_bytes(),
                7 => {
                    format!("{{\"task\":\"echo\",\"input\":\"{}\"}}", "x".repeat(300)).into_bytes()
                }
                8 => b"{\"id\":\"\xff\",\"task\":\"echo\"}".to_vec(),
                9 => format!("{{\"id\":\"dup\",\"task\":\"echo\",\"meta\":{{\"n\":{i}}}}}")
                    .into_bytes(),
                10 => format!("{{\"id\":{i},\"task\":\"exec\",\"input\":[\"true\"]}}").into_bytes(),
                11 => format!("{{\"id\":{i},\"task\":\"echo\",\"input\":[1,2}}").into_bytes(),
                12 if i % 5 == 0 => "y".repeat(70_000).into_bytes(),
                _ => format!(
                    "{{\"id\":{i},\"task\":\"sum_squares\",\"input\":[{},{}],\"meta\":\"m\"}}",
                    i % 7,
                    i % 11
                )
                .into_bytes(),
            };
            text.extend_from_slice(&line);
            text.push(b'\n');
        }
        // The last line has no line ending.
        text.extend_from_slice(b"{\"task\":\"echo\",\"input\":\"last\"}");
        text
    }

    fn format(max_line_bytes: usize) -> InputFormat {
        InputFormat {
            max_line_bytes,
            max_blocks: 1024,
            ..InputFormat::json(2)
        }
    }

    #[test]
    fn parallel_reading_gives_what_serial_reading_gives_item_for_item() {
        let inputs = vec![
            hostile(5_000, 7),
            hostile(300, 11),
            Vec::new(),
            hostile(2_500, 13),
        ];
        for max in [256, 100_000] {
            let formats = [
                format(max),
                InputFormat {
                    default_task: Some("echo".into()),
                    exec: true,
                    ..format(max)
                },
                InputFormat {
                    plain_lines: true,
                    default_task: Some("echo".into()),
                    ..format(max)
                },
                InputFormat {
                    shard: Some(Shard::new(2, 3, ShardBy::Id).unwrap()),
                    ..format(max)
                },
                InputFormat {
                    shard: Some(Shard::new(1, 4, ShardBy::Line).unwrap()),
                    ..format(max)
                },
            ];
            for format in &formats {
                let expected = serial(&inputs, format);
                assert!(expected.len() > 1_000, "{format:?}");
                for threads in [1, 3] {
                    assert_eq!(
                        parallel(&inputs, format, threads),
                        expected,
                        "{threads} parsers, {format:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn pieces_hold_at_most_their_lines_and_number_them() {
        let text: Vec<u8> = (0..3000)
            .flat_map(|i| format!("{i}\n").into_bytes())
            .collect();
        let (piece, count, rest) = cut(Bytes::from(text.clone()), 1024);
        assert_eq!(count, 1024);
        assert!(piece.ends_with(b"1023\n"));
        let rest = rest.unwrap();
        assert!(rest.starts_with(b"1024\n"));
        assert_eq!(count_lines(&rest), 3000 - 1024);
        let (all, count, none) = cut(Bytes::from_static(b"a\nb"), 2);
        assert_eq!((&all[..], count, none), (&b"a\nb"[..], 2, None));
    }
}
