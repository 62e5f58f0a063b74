//! Batches and their answers framed as one message each for ipc-channel's byte channels: the
//! bulk (a batch's inputs, an answer's outputs) first and as it is, then the rest in postcard,
//! then the length of that as a little-endian `u32`. Neither side copies the bulk to send it or
//! to read it: the sender appends to the buffer the bulk was built in, the receiver cuts the
//! tail off the buffer it received. An empty message asks the worker to stop.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::{Batch, BatchDone, RawJson, ToWorker};

/// Bytes a batch's or an answer's head takes behind its bulk, about, for `jobs` jobs: room to
/// leave when the bulk's buffer is made, so that sealing it does not move it.
pub fn head_room(jobs: usize) -> usize {
    64 + 16 * jobs
}

impl Batch {
    /// The batch as one message.
    pub fn into_message(mut self) -> Vec<u8> {
        let inputs = std::mem::take(&mut self.inputs.0);
        seal(inputs, &self)
    }
}

impl ToWorker {
    /// What `message` asks of a worker, or why it is no message from a supervisor.
    pub fn from_message(message: Vec<u8>) -> Result<ToWorker, String> {
        if message.is_empty() {
            return Ok(ToWorker::Shutdown);
        }
        let (batch, inputs): (Batch, _) = open(message)?;
        Ok(ToWorker::Batch(Batch {
            inputs: RawJson(inputs),
            ..batch
        }))
    }
}

impl BatchDone {
    /// The answer as one message.
    pub fn into_message(mut self) -> Vec<u8> {
        let outputs = std::mem::take(&mut self.outputs.0);
        seal(outputs, &self)
    }

    /// The answer `message` holds, or why it holds none.
    pub fn from_message(message: Vec<u8>) -> Result<BatchDone, String> {
        let (done, mut outputs): (BatchDone, Vec<u8>) = open(message)?;
        // A receive buffer is as large as the largest message that fits one packet; an answer
        // that may wait in memory (for --keep-order) should not keep all of it.
        if outputs.capacity() > 4 * outputs.len().max(4096) {
            outputs.shrink_to_fit();
        }
        Ok(BatchDone {
            outputs: RawJson(outputs),
            ..done
        })
    }
}

/// `bulk` with `head` and its length behind it.
fn seal<H: Serialize>(mut bulk: Vec<u8>, head: &H) -> Vec<u8> {
    let head = postcard::to_stdvec(head).expect("a head always serializes");
    let len = u32::try_from(head.len()).expect("heads stay far below 4 GiB");
    bulk.reserve(head.len() + 4);
    bulk.extend_from_slice(&head);
    bulk.extend_from_slice(&len.to_le_bytes());
    bulk
}

/// The head of `message` and its bulk, or why it is not one.
fn open<H: DeserializeOwned>(mut message: Vec<u8>) -> Result<(H, Vec<u8>), String> {
    let size = message.len();
    let Some(len_at) = size.checked_sub(4) else {
        return Err(format!("{size} bytes, too few to be framed"));
    };
    let len = u32::from_le_bytes(message[len_at..].try_into().expect("four bytes")) as usize;
    let Some(head_at) = len_at.checked_sub(len) else {
        return Err(format!("a head of {len} bytes in {size}"));
    };
    let head = match postcard::take_from_bytes(&message[head_at..len_at]) {
        Ok((head, [])) => head,
        Ok((_, rest)) => return Err(format!("{} bytes after its head", rest.len())),
        Err(err) => return Err(format!("its head does not decode: {err}")),
    };
    message.truncate(head_at);
    Ok((head, message))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{BatchId, LineBlock, LineTally, TaskIndex, TaskResult};

    #[test]
    fn a_batch_comes_out_as_it_went_in() {
        let mut batch = Batch {
            id: BatchId(7),
            lines: Some(LineBlock {
                first_line: 3,
                default_task: Some("t".into()),
                ..LineBlock::default()
            }),
            ..Batch::default()
        };
        batch.push(TaskIndex(1), b"[1,2]");
        batch.push_id(b"\"a\"");
        batch.push(TaskIndex(0), b"null");
        batch.push_id(b"2");
        let sent = batch.clone();
        let Ok(ToWorker::Batch(got)) = ToWorker::from_message(batch.into_message()) else {
            panic!("a batch")
        };
        assert_eq!(got.id, sent.id);
        assert_eq!(got.inputs, sent.inputs);
        assert_eq!(got.lines, sent.lines);
        assert!(got.iter().eq(sent.iter()));
        assert!(got.ids().eq(sent.ids()));
        assert!(matches!(
            ToWorker::from_message(Vec::new()),
            Ok(ToWorker::Shutdown)
        ));
    }

    #[test]
    fn an_answer_comes_out_as_it_went_in_and_a_broken_one_is_refused() {
        let mut done = BatchDone {
            batch: BatchId(9),
            ..BatchDone::default()
        };
        done.outputs.0.extend_from_slice(b"{\"id\":1}\n");
        done.push(
            5,
            TaskResult::Lines(LineTally {
                lines: 1,
                results: 1,
                failed: Vec::new(),
                counts: vec![crate::LineCount {
                    task: Some(TaskIndex(2)),
                    count: 1,
                    nanos: 5,
                    ..crate::LineCount::default()
                }],
                alike_bytes: 0,
            }),
        );
        let message = done.into_message();
        let got = BatchDone::from_message(message.clone()).expect("an answer");
        assert_eq!(got.batch, BatchId(9));
        assert_eq!(got.outputs.0, b"{\"id\":1}\n");
        assert_eq!(got.outcomes.len(), 1);
        assert_eq!(got.outcomes[0].nanos, 5);

        // Cut anywhere, or with bytes added, it is no answer; nothing panics.
        for end in 0..message.len() {
            assert!(BatchDone::from_message(message[..end].to_vec()).is_err());
        }
        let mut longer = message[..message.len() - 4].to_vec();
        longer.push(0);
        let len = u32::from_le_bytes(message[message.len() - 4..].try_into().unwrap()) + 1;
        longer.extend_from_slice(&len.to_le_bytes());
        assert!(BatchDone::from_message(longer).is_err());
        assert!(BatchDone::from_message(vec![0xff; 7]).is_err());
    }
}
