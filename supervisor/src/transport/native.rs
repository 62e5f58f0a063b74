//! The native transport, supervisor side: an ipc-channel bootstrap server named in the worker's
//! environment with a nonce, a `Hello` handing over the worker's two byte channels and its
//! running word in shared memory, then one `Batch` out and one `BatchDone` back per batch, each
//! one message framed by [`corral_protocol::frame`].
//!
//! The answers' channel is read in one of two ways, chosen before the worker starts ([`Answers`]):
//! as raw bytes on a thread of its own, which hands on the very buffer received; or as a typed
//! receiver of `AnswerBytes`, so that the pool can wait on many workers' answers with one
//! `IpcReceiverSet` (a receiver of raw bytes cannot join one), at the cost of copying each
//! answer out of the message once. The bytes on the wire are the same.

use std::fmt;
use std::process::Command;

use corral_protocol::{
    Batch, BatchDone, ENV_BOOTSTRAP, ENV_NONCE, Hello, PROTOCOL_VERSION, RunningSlot,
};
use ipc_channel::ipc::{
    IpcBytesReceiver, IpcBytesSender, IpcOneShotServer, IpcReceiver, IpcSender,
};
use serde::de::{Deserialize, Deserializer, SeqAccess, Visitor};
use serde::{Serialize, Serializer};

use super::link::{Greeting, Received, Refusal, Violation};
use crate::scheduler::StartFailure;

/// The hello as the supervisor reads it for the receiver set: the answers' channel as a
/// typed receiver.
type SharedHello = Hello<IpcReceiver<AnswerBytes>>;

/// How a worker's answers will be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answers {
    /// On a thread of their own, each message taken as it was received.
    Own,
    /// In the pool's receiver set, with other workers' answers.
    Shared,
}

/// The bootstrap server a worker connects to, and the nonce it must echo.
pub(crate) struct Bootstrap {
    server: Server,
    pub(crate) server_name: String,
    nonce: u64,
}

/// The bootstrap server, typed for how the answers will be read.
enum Server {
    Own(IpcOneShotServer<Hello>),
    Shared(IpcOneShotServer<SharedHello>),
}

/// Creates the bootstrap server and names it, with a fresh nonce, in `command`'s environment
/// (not in argv, where other users could read it).
pub(crate) fn prepare(command: &mut Command, answers: Answers) -> Result<Bootstrap, StartFailure> {
    let transient = StartFailure::transient;
    let failed = |err: std::io::Error| {
        transient(format!(
            "cannot create the bootstrap socket: {err} (is $TMPDIR writable?)"
        ))
    };
    let (server, server_name) = match answers {
        Answers::Own => IpcOneShotServer::new().map(|(s, name)| (Server::Own(s), name)),
        Answers::Shared => IpcOneShotServer::new().map(|(s, name)| (Server::Shared(s), name)),
    }
    .map_err(failed)?;
    let nonce =
        getrandom::u64().map_err(|err| transient(format!("no randomness for the nonce: {err}")))?;
    command
        .env(ENV_BOOTSTRAP, &server_name)
        .env(ENV_NONCE, format!("{nonce:016x}"));
    Ok(Bootstrap {
        server,
        server_name,
        nonce,
    })
}

/// Ends a wait in `accept`: a connection that hangs up at once.
pub(crate) fn unblock(server_name: String) {
    let _ = IpcSender::<SharedHello>::connect(server_name);
}

impl Bootstrap {
    /// Accepts the worker's connection and checks its hello.
    pub(crate) fn hello(self, pid: u32) -> Result<Greeting<Outbox, Inbox>, Refusal> {
        let failed = |err| Refusal::transient(format!("failed the handshake: {err}"));
        // The bootstrap channel carries the hello and nothing else.
        match self.server {
            Server::Own(server) => {
                let (_, hello) = server.accept().map_err(failed)?;
                check(hello, self.nonce, pid).map(|greeting| greeting.wrap(|o| o, Inbox::Own))
            }
            Server::Shared(server) => {
                let (_, hello) = server.accept().map_err(failed)?;
                check(hello, self.nonce, pid).map(|greeting| greeting.wrap(|o| o, Inbox::Shared))
            }
        }
    }
}

/// Checks a worker's hello: its protocol version, the nonce it echoes and its running word.
fn check<A>(hello: Hello<A>, nonce: u64, pid: u32) -> Result<Greeting<Outbox, A>, Refusal> {
    if hello.protocol_version != PROTOCOL_VERSION {
        return Err(Refusal::fatal(format!(
            "speaks protocol version {}, this corral speaks {PROTOCOL_VERSION}; rebuild it against this corral-worker",
            hello.protocol_version
        )));
    }
    if hello.nonce != nonce {
        return Err(Refusal::fatal("answered with the wrong nonce".into()));
    }
    if hello.pid != pid {
        tracing::debug!(pid, "worker reports pid {} (a wrapper?)", hello.pid);
    }
    let Some(running) = RunningSlot::from_shared(hello.running) else {
        return Err(Refusal::fatal(
            "sent a running-word region of the wrong size".into(),
        ));
    };
    Ok(Greeting {
        tasks: hello.tasks,
        running,
        job_ids: false,
        outbox: Outbox(hello.batches),
        inbox: hello.answers,
    })
}

/// A native worker's batches: the sending end of its byte channel.
pub struct Outbox(IpcBytesSender);

impl Outbox {
    pub(crate) fn send(&mut self, batch: Batch) -> Result<(), String> {
        self.0
            .send(&batch.into_message())
            .map_err(|err| err.to_string())
    }

    pub(crate) fn shutdown(self) {
        // An empty message is the request to stop.
        let _ = self.0.send(&[]);
    }
}

/// A native worker's answers: the receiving end of its other byte channel, as [`Answers`]
/// chose to read it.
pub(crate) enum Inbox {
    /// Read on a thread of its own ([`Inbox::recv`]).
    Own(IpcBytesReceiver),
    /// To wait on together with other workers' in a receiver set ([`received`]).
    Shared(IpcReceiver<AnswerBytes>),
}

/// What the next message on a worker's own answers' channel says; blocks until one comes.
pub(crate) fn recv(answers: &IpcBytesReceiver) -> Received {
    match answers.recv() {
        Ok(message) => match BatchDone::from_message(message) {
            Ok(done) => Received::Done(done),
            Err(err) => Received::Violation(Violation::Malformed(err)),
        },
        Err(ipc_channel::IpcError::Disconnected) => Received::Closed,
        Err(err) => Received::Violation(Violation::ChannelFailed(err.to_string())),
    }
}

/// What a message on a worker's answers' channel says. `expected` is about how long it is (the
/// length of the worker's previous one): its bytes are copied out of the message once, into a
/// buffer of that size, rather than into one that grows.
pub(crate) fn received(message: ipc_channel::ipc::IpcMessage, expected: usize) -> Received {
    EXPECTED.set(expected);
    match message
        .to::<AnswerBytes>()
        .map(|bytes| BatchDone::from_message(bytes.0))
    {
        Ok(Ok(done)) => Received::Done(done),
        Ok(Err(err)) => Received::Violation(Violation::Malformed(err)),
        Err(err) => Received::Violation(Violation::ChannelFailed(err.to_string())),
    }
}

/// A message of a byte channel, read as it is. ipc-channel hands a typed receiver's message
/// to postcard; read as a tuple of unknown length, postcard gives its bytes as they are: 8 at a
/// time as the raw little-endian bytes of an `f64`, the rest one by one.
pub(crate) struct AnswerBytes(pub(crate) Vec<u8>);

impl<'de> Deserialize<'de> for AnswerBytes {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<AnswerBytes, D::Error> {
        deserializer.deserialize_tuple(usize::MAX, AllBytes)
    }
}

/// Only so that [`AnswerBytes`] can be a receiver's type; nothing sends one.
impl Serialize for AnswerBytes {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(&self.0)
    }
}

thread_local! {
    /// The size to make the next [`AnswerBytes`]' buffer: set by [`received`] just before it
    /// reads one, since a visitor cannot be given it.
    static EXPECTED: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// A first answer's buffer, and the least any is made.
const MIN_ANSWER: usize = 4096;

struct AllBytes;

impl<'de> Visitor<'de> for AllBytes {
    type Value = AnswerBytes;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("the bytes of a message")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<AnswerBytes, A::Error> {
        // A little more than expected, so that an answer slightly longer than the last one
        // does not grow the buffer (a copy of all of it).
        let expected = EXPECTED.get();
        let mut bytes = Vec::with_capacity((expected + expected / 8).max(MIN_ANSWER));
        // Each read ends, with an error, at the end of the message; the error says no more.
        while let Ok(Some(Word(word))) = seq.next_element::<Word>() {
            bytes.extend_from_slice(&word.to_le_bytes());
        }
        while let Ok(Some(byte)) = seq.next_element::<u8>() {
            bytes.push(byte);
        }
        Ok(AnswerBytes(bytes))
    }
}

/// Eight bytes of a message, read as postcard reads an `f64`: as they are, little-endian.
struct Word(u64);

impl<'de> Deserialize<'de> for Word {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Word, D::Error> {
        struct Bits;
        impl Visitor<'_> for Bits {
            type Value = Word;
            fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter.write_str("eight bytes")
            }
            fn visit_f64<E>(self, value: f64) -> Result<Word, E> {
                // The bits as they came: `to_bits` is exact, NaN payloads included.
                Ok(Word(value.to_bits()))
            }
        }
        deserializer.deserialize_f64(Bits)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ipc_channel::ipc::{IpcReceiverSet, IpcSelectionResult, bytes_channel};

    /// A worker's raw bytes come out of a typed receiver, alone or in a receiver set, exactly
    /// as they were sent: every length around the 8-byte steps, and NaN bit patterns.
    #[test]
    fn raw_bytes_come_through_a_typed_receiver_unchanged() {
        let mut messages: Vec<Vec<u8>> = (0..=33)
            .map(|n| (0..n).map(|i| (i * 37 + n) as u8).collect())
            .collect();
        for nan in [
            0x7ff0_0000_0000_0001u64,
            0xfff4_0000_0000_0000,
            0x7ff8_dead_beef_0001,
        ] {
            let mut message = nan.to_le_bytes().to_vec();
            message.extend_from_slice(&nan.to_le_bytes()[..3]);
            messages.push(message);
        }
        messages.push(
            (0..300_000u32)
                .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8)
                .collect(),
        );

        // One at a time, as a receiver of its own.
        let (tx, rx) = bytes_channel().unwrap();
        let typed = pass_as_typed(rx);
        for message in &messages {
            tx.send(message).unwrap();
            assert_eq!(&typed.recv().unwrap().0, message);
        }

        // Through a receiver set.
        let (tx, rx) = bytes_channel().unwrap();
        let mut set = IpcReceiverSet::new().unwrap();
        set.add(pass_as_typed(rx)).unwrap();
        for message in &messages {
            tx.send(message).unwrap();
        }
        drop(tx);
        let mut got = Vec::new();
        let mut closed = false;
        while !closed {
            for event in set.select().unwrap() {
                match event {
                    IpcSelectionResult::MessageReceived(_, m) => {
                        got.push(m.to::<AnswerBytes>().unwrap().0)
                    }
                    IpcSelectionResult::ChannelClosed(_) => closed = true,
                }
            }
        }
        assert_eq!(got, messages);
    }

    /// A byte receiver turned into a typed one the way a hello turns it: a worker's `Hello`
    /// read as the supervisor reads it.
    fn pass_as_typed(rx: ipc_channel::ipc::IpcBytesReceiver) -> IpcReceiver<AnswerBytes> {
        let (server, name) = IpcOneShotServer::<SharedHello>::new().unwrap();
        let (batches, _) = bytes_channel().unwrap();
        IpcSender::<Hello>::connect(name)
            .unwrap()
            .send(Hello {
                protocol_version: PROTOCOL_VERSION,
                nonce: 1,
                pid: 1,
                tasks: vec!["t".into()],
                batches,
                answers: rx,
                running: ipc_channel::ipc::IpcSharedMemory::from_byte(
                    0,
                    corral_protocol::RUNNING_REGION_BYTES,
                ),
            })
            .unwrap();
        let (_, hello) = server.accept().unwrap();
        assert_eq!(hello.tasks, ["t"]);
        hello.answers
    }
}
