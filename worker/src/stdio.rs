//! The stdio transport, worker side: the same tasks served as JSON lines on stdin and stdout
//! (`docs/worker-protocol.md`), for a library worker started with `corral run --worker-cmd`.
//! The supervisor arms this process's death signal before its exec; stdin's end means stop.

use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Write};
use std::os::fd::FromRawFd;

use corral_protocol::stdio::{STDIO_PROTOCOL_VERSION, StdioError, StdioHello, StdioRequest};

use crate::native::ServeError;
use crate::task::{Registry, TaskFailure};

pub(crate) fn serve(registry: &Registry) -> Result<(), ServeError> {
    let io_err =
        |context: &'static str| move |source: io::Error| ServeError::Ipc { context, source };
    let mut answers = BufWriter::with_capacity(
        64 * 1024,
        protocol_stdout().map_err(io_err("taking stdout"))?,
    );
    let hello = StdioHello {
        corral_protocol: STDIO_PROTOCOL_VERSION,
        tasks: registry.names(),
    };
    serde_json::to_writer(&mut answers, &hello).expect("a hello serializes");
    answers
        .write_all(b"\n")
        .and_then(|()| answers.flush())
        .map_err(io_err("sending hello"))?;

    let mut requests = BufReader::with_capacity(256 * 1024, io::stdin().lock());
    let mut line = Vec::new();
    let mut output = Vec::new();
    loop {
        line.clear();
        if requests
            .read_until(b'\n', &mut line)
            .map_err(io_err("reading a request"))?
            == 0
        {
            // The supervisor closed stdin: every request is answered.
            return Ok(());
        }
        let request: StdioRequest<'_> = serde_json::from_slice(&line).map_err(|err| {
            ServeError::BadRequest(format!(
                "{err}: {}",
                String::from_utf8_lossy(&line[..line.len().min(200)])
            ))
        })?;
        output.clear();
        let result = match registry.index_of(request.task) {
            Some(index) => registry.run(index, request.input.get().as_bytes(), &mut output),
            None => Err(TaskFailure::UnknownTask(request.task.to_owned())),
        };
        answers
            .write_all(b"{\"id\":")
            .map_err(io_err("answering"))?;
        answers
            .write_all(request.id.get().as_bytes())
            .map_err(io_err("answering"))?;
        match result {
            Ok(()) => {
                answers
                    .write_all(b",\"output\":")
                    .map_err(io_err("answering"))?;
                answers.write_all(&output).map_err(io_err("answering"))?;
            }
            Err(failure) => {
                let error_type = match &failure {
                    TaskFailure::TaskError(_) => None,
                    TaskFailure::Described { error_type, .. } => Some(error_type.clone()),
                    TaskFailure::BadInput(_) => Some("BadInput".to_owned()),
                    TaskFailure::Panic(_) => Some("Panic".to_owned()),
                    TaskFailure::UnknownTask(_) => Some("UnknownTask".to_owned()),
                };
                let error = StdioError {
                    message: failure.to_string(),
                    error_type,
                };
                answers
                    .write_all(b",\"error\":")
                    .map_err(io_err("answering"))?;
                serde_json::to_writer(&mut answers, &error).expect("an error serializes");
            }
        }
        // Each answer goes out at once: the supervisor knows the running job from the answers
        // it has seen, so a held-back answer would blame the wrong job for a crash.
        answers
            .write_all(b"}\n")
            .and_then(|()| answers.flush())
            .map_err(io_err("answering"))?;
    }
}

/// The answers' own copy of stdout; stdout itself then points at stderr, so that whatever a
/// task prints lands in the supervisor's log instead of corrupting the protocol.
fn protocol_stdout() -> io::Result<File> {
    // SAFETY: fcntl and dup2 on the standard descriptors; the duplicate is owned by the File.
    unsafe {
        let fd = libc::fcntl(1, libc::F_DUPFD_CLOEXEC, 3);
        if fd < 0 || libc::dup2(2, 1) < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(File::from_raw_fd(fd))
    }
}
