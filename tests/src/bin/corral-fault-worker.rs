//! `corral-fault-worker`: a worker built on the corral-worker library whose tasks misbehave on
//! purpose (panic, abort, segfault, exit, hang, print to stdout), for the integration tests.
//!
//! `CORRAL_FAULT_START` makes it misbehave instead of serving: `exit` (exit 3 before hello),
//! `hang` (never say hello), `bad-version` and `bad-nonce` (say a wrong hello), `garbage` (say
//! a good hello, then answer its first batch with bytes that are no message at all).

use std::process::ExitCode;
use std::time::{Duration, Instant};

use corral_worker::Worker;
use serde::Deserialize;
use serde_json::Value;

/// Input of `square`: a number, and optionally microseconds of busy work first.
#[derive(Deserialize)]
struct SquareIn {
    n: i64,
    #[serde(default)]
    spin_us: u64,
}

/// Input of `hang`: where to write the pid of the child it starts before hanging.
#[derive(Deserialize)]
struct HangIn {
    pidfile: String,
}

/// What `leak` keeps.
static LEAKED: std::sync::Mutex<Vec<Vec<u8>>> = std::sync::Mutex::new(Vec::new());

fn main() -> ExitCode {
    match std::env::var("CORRAL_FAULT_START").as_deref() {
        Ok("exit") => std::process::exit(3),
        Ok("hang") => loop {
            std::thread::sleep(Duration::from_secs(3600));
        },
        Ok(mode @ ("bad-version" | "bad-nonce" | "garbage")) => return wrong_hello(mode),
        _ => {}
    }
    Worker::new()
        .task("echo", |v: Value| -> Result<Value, String> { Ok(v) })
        .task("square", |input: SquareIn| -> Result<i64, String> {
            let until = Instant::now() + Duration::from_micros(input.spin_us);
            while Instant::now() < until {
                std::hint::spin_loop();
            }
            input
                .n
                .checked_mul(input.n)
                .ok_or_else(|| "overflow".to_owned())
        })
        .task("fail", |message: String| -> Result<(), String> {
            Err(message)
        })
        .task("panic", |message: String| -> Result<(), String> {
            panic!("{message}")
        })
        .task("abort", |_: Value| -> Result<(), String> {
            std::process::abort()
        })
        .task("segfault", |_: Value| -> Result<(), String> {
            // Rust's runtime handles SIGSEGV to report stack overflows; restore the default
            // action so that the signal kills the process as a real segfault would.
            // SAFETY: resetting a disposition and raising a signal is the point of this task.
            unsafe {
                libc::signal(libc::SIGSEGV, libc::SIG_DFL);
                libc::raise(libc::SIGSEGV);
            }
            Ok(())
        })
        .task("exit", |code: i32| -> Result<(), String> {
            std::process::exit(code)
        })
        .task("hang", |input: HangIn| -> Result<(), String> {
            let child = std::process::Command::new("sleep")
                .arg("3600")
                .spawn()
                .map_err(|e| e.to_string())?;
            std::fs::write(&input.pidfile, child.id().to_string()).map_err(|e| e.to_string())?;
            loop {
                std::thread::sleep(Duration::from_secs(3600));
            }
        })
        .task("print", |text: String| -> Result<String, String> {
            println!("{text}");
            println!("{{\"id\": \"forged\", \"ok\": true}}");
            eprintln!("note on stderr: {text}");
            Ok(text)
        })
        .task("leak", |mib: usize| -> Result<usize, String> {
            // Keeps (and touches) `mib` MiB for the life of the process.
            let block = vec![1u8; mib << 20];
            LEAKED.lock().map_err(|e| e.to_string())?.push(block);
            Ok(mib)
        })
        .task("alloc", |mib: usize| -> Result<usize, String> {
            let block = vec![1u8; mib << 20];
            Ok(std::hint::black_box(block).len() >> 20)
        })
        .run()
}

/// Connects like a real worker but says a hello the supervisor must refuse, or (`garbage`) a
/// good hello followed by a malformed answer.
fn wrong_hello(mode: &str) -> ExitCode {
    use corral_protocol::{
        ENV_BOOTSTRAP, ENV_NONCE, FromWorker, Hello, PROTOCOL_VERSION, RunningSlot,
    };
    let server = std::env::var(ENV_BOOTSTRAP).expect("started by corral");
    let nonce = u64::from_str_radix(&std::env::var(ENV_NONCE).expect("started by corral"), 16)
        .expect("hex nonce");
    let sender = ipc_channel::ipc::IpcSender::<FromWorker>::connect(server).expect("connect");
    let (to_worker, inbox) =
        ipc_channel::ipc::channel::<corral_protocol::ToWorker>().expect("channel");
    let (_slot, running) = RunningSlot::create();
    let hello = Hello {
        protocol_version: if mode == "bad-version" {
            PROTOCOL_VERSION + 100
        } else {
            PROTOCOL_VERSION
        },
        nonce: if mode == "bad-nonce" {
            nonce ^ 1
        } else {
            nonce
        },
        pid: std::process::id(),
        tasks: vec!["echo".into()],
        sender: to_worker,
        running,
    };
    sender.send(FromWorker::Hello(hello)).expect("send hello");
    if mode == "garbage" {
        let _batch = inbox.recv();
        // The same channel, carrying a type the supervisor does not expect: an enum tag it has
        // no variant for.
        let raw: ipc_channel::ipc::IpcSender<(u32, u64)> = sender.to_opaque().to();
        let _ = raw.send((u32::MAX, 7));
    }
    std::thread::sleep(Duration::from_secs(30));
    ExitCode::SUCCESS
}
