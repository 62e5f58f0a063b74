//! `corral-fault-worker`: a worker built on the corral-worker library whose tasks misbehave on
//! purpose (panic, abort, segfault, exit, hang, print to stdout), for the integration tests.
//!
//! `CORRAL_FAULT_START` makes it misbehave instead of serving: `exit` (exit 3 before hello),
//! `hang` (never say hello), `connect-silent` (connect to the bootstrap socket, then say
//! nothing), `bad-version` and `bad-nonce` (say a wrong hello), `garbage` (say a good hello,
//! then answer its first batch with bytes that are no message at all), `hello-then-exit` (a
//! good hello, then exit at once), `drop-inbox` (a good hello, then close the channel batches
//! come on and stay alive), and `first-hangs:PATH` (the first worker to create PATH never says
//! hello; the others serve).

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

/// Input of `hang` and `escape`: where to write the pid of the child it starts before hanging.
#[derive(Deserialize)]
struct HangIn {
    pidfile: String,
}

/// Starts `sleep 3600` (in a session of its own when `escape`), writes its pid, and hangs.
fn start_child_and_hang(input: HangIn, escape: bool) -> Result<(), String> {
    use std::os::unix::process::CommandExt;
    let mut command = std::process::Command::new("sleep");
    command.arg("3600");
    if escape {
        // SAFETY: setsid is async-signal-safe and touches no memory of the parent.
        unsafe {
            command.pre_exec(|| {
                libc::setsid();
                Ok(())
            });
        }
    }
    let child = command.spawn().map_err(|e| e.to_string())?;
    std::fs::write(&input.pidfile, child.id().to_string()).map_err(|e| e.to_string())?;
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// What `leak` keeps.
static LEAKED: std::sync::Mutex<Vec<Vec<u8>>> = std::sync::Mutex::new(Vec::new());

fn main() -> ExitCode {
    let mode = std::env::var("CORRAL_FAULT_START").unwrap_or_default();
    let first_hangs = mode
        .strip_prefix("first-hangs:")
        .is_some_and(|path| std::fs::File::create_new(path).is_ok());
    match mode.as_str() {
        "exit" => std::process::exit(3),
        "hang" => hang(),
        _ if first_hangs => hang(),
        "connect-silent" => {
            let server = std::env::var(corral_protocol::ENV_BOOTSTRAP).expect("started by corral");
            let _sender = ipc_channel::ipc::IpcSender::<corral_protocol::Hello>::connect(server)
                .expect("connect");
            hang()
        }
        "bad-version" | "bad-nonce" | "garbage" | "hello-then-exit" | "drop-inbox" => {
            return wrong_hello(&mode);
        }
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
        .task("hang", |input: HangIn| start_child_and_hang(input, false))
        .task("escape", |input: HangIn| start_child_and_hang(input, true))
        .task("print_long", |mib: usize| -> Result<usize, String> {
            // One line of `mib` MiB, no newline: the supervisor must not keep it whole.
            use std::io::Write;
            let chunk = vec![b'x'; 1 << 20];
            let mut stdout = std::io::stdout().lock();
            for _ in 0..mib {
                stdout.write_all(&chunk).map_err(|e| e.to_string())?;
            }
            stdout.flush().map_err(|e| e.to_string())?;
            Ok(mib)
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

fn hang() -> ! {
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// Connects like a real worker but says a hello the supervisor must refuse, or a good hello
/// followed by a malformed answer (`garbage`), an exit (`hello-then-exit`) or a closed inbox
/// (`drop-inbox`).
fn wrong_hello(mode: &str) -> ExitCode {
    use corral_protocol::{ENV_BOOTSTRAP, ENV_NONCE, Hello, PROTOCOL_VERSION, RunningSlot};
    let server = std::env::var(ENV_BOOTSTRAP).expect("started by corral");
    let nonce = u64::from_str_radix(&std::env::var(ENV_NONCE).expect("started by corral"), 16)
        .expect("hex nonce");
    let bootstrap = ipc_channel::ipc::IpcSender::<Hello>::connect(server).expect("connect");
    let (to_worker, inbox) = ipc_channel::ipc::bytes_channel().expect("channel");
    let (to_supervisor, answers) = ipc_channel::ipc::bytes_channel().expect("channel");
    let (_slot, running) = RunningSlot::create();
    // Closed before the hello goes out, so that no batch can slip into the channel first.
    let inbox = (mode != "drop-inbox").then_some(inbox);
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
        batches: to_worker,
        answers,
        running,
    };
    bootstrap.send(hello).expect("send hello");
    match mode {
        "hello-then-exit" => std::process::exit(0),
        "drop-inbox" => hang(),
        _ => {}
    }
    if mode == "garbage" {
        let _batch = inbox.expect("kept open").recv();
        // An answer whose trailer names a head longer than the message.
        let _ = to_supervisor.send(&[0xff; 7]);
    }
    std::thread::sleep(Duration::from_secs(30));
    ExitCode::SUCCESS
}
