//! Running commands with a time limit.
//!
//! Each command runs in its own process group so that on timeout the whole tree it started
//! (netcage and the command it wraps) is killed, not only the first process.

use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::process::{Child, ChildStdin, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// How much of stdout/stderr [`describe`] and timeout panics show.
const SHOWN_OUTPUT: usize = 8 * 1024;

/// Runs `cmd` with stdin empty, captures stdout and stderr, and returns once it has exited and
/// closed both. Panics, after killing its process group, if that takes longer than `timeout`;
/// the message names the command and shows what it had printed.
pub fn run_with_timeout(cmd: &mut Command, timeout: Duration) -> Output {
    run(cmd, None, timeout)
}

/// Like [`run_with_timeout`], with `input` written to the command's stdin (then closed).
pub fn run_with_stdin(cmd: &mut Command, input: &[u8], timeout: Duration) -> Output {
    run(cmd, Some(input.to_vec()), timeout)
}

fn run(cmd: &mut Command, input: Option<Vec<u8>>, timeout: Duration) -> Output {
    let deadline = Instant::now() + timeout;
    cmd.stdin(if input.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .process_group(0);
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    if let (Some(stdin), Some(input)) = (child.stdin.take(), input) {
        feed_stdin(stdin, input);
    }
    let stdout = Capture::start(child.stdout.take().expect("piped stdout"));
    let stderr = Capture::start(child.stderr.take().expect("piped stderr"));

    let status = wait_child(&mut child, deadline);
    let closed = status.is_some() && stdout.wait(deadline) && stderr.wait(deadline);
    if !closed {
        kill_group(&mut child);
        let what = if status.is_some() {
            "exited, but its stdout/stderr stayed open (a leftover process holds them)"
        } else {
            "did not exit"
        };
        panic!(
            "{cmd:?} {what} within {timeout:?}; killed its process group\n\
             --- stdout ---\n{}\n--- stderr ---\n{}",
            shown(&stdout.take()),
            shown(&stderr.take()),
        );
    }
    Output {
        status: status.expect("exited"),
        stdout: stdout.take(),
        stderr: stderr.take(),
    }
}

/// Writes `input` to the child's stdin from a thread (so a child that does not read cannot
/// block us), then closes it.
fn feed_stdin(mut stdin: ChildStdin, input: Vec<u8>) {
    thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
}

/// Polls the child until it exits or `deadline` passes.
fn wait_child(child: &mut Child, deadline: Instant) -> Option<ExitStatus> {
    loop {
        if let Some(status) = child.try_wait().expect("wait for child") {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// SIGKILLs the child's whole process group, then reaps the child.
fn kill_group(child: &mut Child) {
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{}", child.id())])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    let _ = child.kill();
    let _ = child.wait();
}

/// One output pipe read to the end on a thread, into a buffer we can look at any time.
struct Capture {
    buf: Arc<Mutex<Vec<u8>>>,
    done: Receiver<()>,
}

impl Capture {
    fn start(mut pipe: impl Read + Send + 'static) -> Self {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let (tx, done) = mpsc::channel();
        let sink = Arc::clone(&buf);
        thread::spawn(move || {
            let mut chunk = [0u8; 16 * 1024];
            while let Ok(n @ 1..) = pipe.read(&mut chunk) {
                sink.lock().unwrap().extend_from_slice(&chunk[..n]);
            }
            let _ = tx.send(());
        });
        Self { buf, done }
    }

    /// Waits until the pipe is closed; false if `deadline` passes first.
    fn wait(&self, deadline: Instant) -> bool {
        let left = deadline.saturating_duration_since(Instant::now());
        self.done.recv_timeout(left).is_ok()
    }

    /// Everything read so far.
    fn take(&self) -> Vec<u8> {
        std::mem::take(&mut *self.buf.lock().unwrap())
    }
}

/// The first [`SHOWN_OUTPUT`] bytes of `bytes`, lossily decoded.
fn shown(bytes: &[u8]) -> String {
    let mut text = String::from_utf8_lossy(&bytes[..bytes.len().min(SHOWN_OUTPUT)]).into_owned();
    if bytes.len() > SHOWN_OUTPUT {
        text.push_str(&format!("\n… ({} bytes in all)", bytes.len()));
    }
    text
}

/// A one-paragraph description of a finished command, for assertion messages:
/// `assert!(out.status.success(), "{}", describe(&out))`.
pub fn describe(out: &Output) -> String {
    format!(
        "status: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        shown(&out.stdout),
        shown(&out.stderr)
    )
}

/// Polls `condition` every 10 ms until it holds; panics naming `what` after `timeout`.
pub fn wait_until(timeout: Duration, what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !condition() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        thread::sleep(Duration::from_millis(10));
    }
}

/// A background child (e.g. `netcage proxy`) that is killed, with its process group, when
/// this value is dropped.
pub struct KillOnDrop(pub Child);

impl KillOnDrop {
    /// Spawns `cmd` in its own process group.
    pub fn spawn(cmd: &mut Command) -> Self {
        let child = cmd
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        Self(child)
    }

    /// The child's pid.
    pub fn id(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            kill_group(&mut self.0);
        }
    }
}
