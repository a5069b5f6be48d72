//! [`Command`] and [`Child`]: like `tokio::process`, for commands that run in a [`Sandbox`].

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::sync::Arc;

use tokio::io::AsyncReadExt;
use tokio::net::unix::pipe;
use tokio::sync::watch;

use super::{Error, Sandbox};
use crate::audit::Event;
use crate::sandbox::control::Spawn;
use crate::sandbox::execs::Execs;

/// Where a command's stdin, stdout or stderr goes.
#[derive(Debug, Default)]
pub enum Stdio {
    /// This process's own descriptor (the default).
    #[default]
    Inherit,
    /// /dev/null.
    Null,
    /// A pipe: the other end is in [`Child::stdin`], [`Child::stdout`] or [`Child::stderr`].
    Piped,
    /// This descriptor (a file, a socket, a terminal): the command gets a duplicate.
    Fd(OwnedFd),
}

/// A command to run in a [`Sandbox`]; see [`Sandbox::command`].
pub struct Command<'a> {
    sandbox: &'a Sandbox,
    program: OsString,
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    cwd: Option<PathBuf>,
    stdio: [Stdio; 3],
    new_session: bool,
    keep_ignored: bool,
    terminal: Option<(u8, bool)>,
    exec_id: Option<String>,
    uid: Option<u32>,
}

/// A command running in the sandbox.
pub struct Child {
    /// The id its audit lines carry.
    pub exec_id: String,
    /// Its pid inside the sandbox.
    pub pid: i32,
    /// Our end of its stdin, when it was [`Stdio::Piped`].
    pub stdin: Option<pipe::Sender>,
    /// Our end of its stdout, when it was [`Stdio::Piped`].
    pub stdout: Option<pipe::Receiver>,
    /// Our end of its stderr, when it was [`Stdio::Piped`].
    pub stderr: Option<pipe::Receiver>,
    id: u64,
    status: watch::Receiver<Option<ExitStatus>>,
    stops: tokio::sync::mpsc::UnboundedReceiver<i32>,
    execs: Arc<Execs>,
}

/// Sends signals to one command; see [`Child::signaller`].
#[derive(Clone)]
pub struct Signaller {
    execs: Arc<Execs>,
    id: u64,
}

impl Signaller {
    /// Sends `signal` (a number, e.g. `libc::SIGTERM`) to the command.
    pub fn signal(&self, signal: i32) {
        self.execs.signal(self.id, signal);
    }
}

/// What [`Child::wait_with_output`] collects.
#[derive(Debug)]
pub struct Output {
    /// How the command ended.
    pub status: ExitStatus,
    /// Everything it wrote to a piped stdout.
    pub stdout: Vec<u8>,
    /// Everything it wrote to a piped stderr.
    pub stderr: Vec<u8>,
}

impl<'a> Command<'a> {
    pub(super) fn new(sandbox: &'a Sandbox, program: &OsStr) -> Self {
        Command {
            sandbox,
            program: program.to_owned(),
            args: Vec::new(),
            env: sandbox.env.as_ref().clone(),
            cwd: None,
            stdio: [Stdio::Inherit, Stdio::Inherit, Stdio::Inherit],
            new_session: true,
            keep_ignored: false,
            terminal: None,
            exec_id: None,
            uid: None,
        }
    }

    /// Adds one argument.
    pub fn arg(&mut self, arg: impl AsRef<OsStr>) -> &mut Self {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    /// Adds arguments.
    pub fn args<I, S>(&mut self, args: I) -> &mut Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    /// Sets a variable (over the sandbox's environment).
    pub fn env(&mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> &mut Self {
        self.env.retain(|(k, _)| k != key.as_ref());
        self.env
            .push((key.as_ref().to_owned(), value.as_ref().to_owned()));
        self
    }

    /// Removes a variable.
    pub fn env_remove(&mut self, key: impl AsRef<OsStr>) -> &mut Self {
        self.env.retain(|(k, _)| k != key.as_ref());
        self
    }

    /// Starts from an empty environment (the sandbox's tokens and CA variables go too).
    pub fn env_clear(&mut self) -> &mut Self {
        self.env.clear();
        self
    }

    /// The working directory, as seen inside the sandbox (default: the sandbox's, which is
    /// the directory the sandbox was started in).
    pub fn current_dir(&mut self, dir: impl Into<PathBuf>) -> &mut Self {
        self.cwd = Some(dir.into());
        self
    }

    /// Where stdin comes from (default: this process's).
    pub fn stdin(&mut self, stdio: Stdio) -> &mut Self {
        self.stdio[0] = stdio;
        self
    }

    /// Where stdout goes (default: this process's).
    pub fn stdout(&mut self, stdio: Stdio) -> &mut Self {
        self.stdio[1] = stdio;
        self
    }

    /// Where stderr goes (default: this process's).
    pub fn stderr(&mut self, stdio: Stdio) -> &mut Self {
        self.stdio[2] = stdio;
        self
    }

    /// Whether the command gets a session (and process group) of its own — the default.
    /// Signals then go to its whole group, and audit lines can name it while other commands
    /// run. Off, it gets a process group of its own in this process's session, so it can
    /// share its terminal (`netcage run` does this; see [`Command::terminal`]).
    pub fn new_session(&mut self, on: bool) -> &mut Self {
        self.new_session = on;
        self
    }

    /// Job control on this process's terminal (with `new_session(false)`): `stdio` (0, 1 or
    /// 2) is the controlling terminal; with `foreground` the command's process group takes
    /// the terminal as it starts (Ctrl-C and Ctrl-Z reach it, not this process). Hand the
    /// terminal back with `tcsetpgrp` after it exits; see [`Child::stopped`].
    pub fn terminal(&mut self, stdio: u8, foreground: bool) -> &mut Self {
        self.terminal = Some((stdio.min(2), foreground));
        self
    }

    /// Keep the signals this process ignores (after `nohup`, say) ignored in the command even
    /// when it has a session of its own (default: it starts with default dispositions).
    pub fn keep_ignored_signals(&mut self, on: bool) -> &mut Self {
        self.keep_ignored = on;
        self
    }

    /// The id audit lines carry for this command (default: `PREFIX-N`).
    pub fn exec_id(&mut self, id: impl Into<String>) -> &mut Self {
        self.exec_id = Some(id.into());
        self
    }

    /// Who asked for the command (shown by `status`).
    pub fn requested_by(&mut self, uid: u32) -> &mut Self {
        self.uid = Some(uid);
        self
    }

    /// Starts the command; resolves once it runs (or failed to start: a missing program,
    /// a working directory that does not exist).
    pub async fn spawn(&mut self) -> Result<Child, Error> {
        let exec = self
            .exec_id
            .clone()
            .unwrap_or_else(|| self.sandbox.next_exec_id());
        let mut spawn = Spawn::new(0, &self.program);
        spawn.args = self.args.iter().map(|a| a.as_bytes().to_vec()).collect();
        spawn.env = self
            .env
            .iter()
            .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
            .collect();
        spawn.cwd = self.cwd.as_ref().map(|d| d.as_os_str().as_bytes().to_vec());
        spawn.new_session = self.new_session;
        spawn.keep_ignored = self.keep_ignored;
        if let Some((tty, foreground)) = self.terminal.filter(|_| !self.new_session) {
            spawn.tty = Some(tty);
            spawn.foreground = foreground;
        }
        let mut theirs: Vec<OwnedFd> = Vec::new();
        let mut ours: [Option<OwnedFd>; 3] = [None, None, None];
        let mut raw: [Option<RawFd>; 3] = [None; 3];
        for (i, stdio) in self.stdio.iter_mut().enumerate() {
            let fd = match std::mem::take(stdio) {
                Stdio::Inherit => dup_own(i as RawFd),
                Stdio::Null => None,
                Stdio::Fd(fd) => Some(fd),
                Stdio::Piped => {
                    let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
                        .map_err(|e| Error(format!("pipe: {e}")))?;
                    let (child_end, our_end) = if i == 0 { (read, write) } else { (write, read) };
                    ours[i] = Some(our_end);
                    Some(child_end)
                }
            };
            if let Some(fd) = fd {
                raw[i] = Some(fd.as_raw_fd());
                theirs.push(fd);
            }
        }
        let command = crate::sandbox::execs::command_line(&spawn);
        let started = self
            .sandbox
            .execs
            .spawn(spawn, exec.clone(), self.uid, raw)
            .await;
        // The command has its own copies now (or never will).
        drop(theirs);
        let mut event = Event::new("exec", "allow");
        event.exec = Some(exec.clone());
        event.method = Some("start".into());
        event.path = Some(command);
        let started = match started {
            Ok(started) => started,
            Err(e) => {
                event.decision = "error";
                event.reason = Some(e.clone());
                self.sandbox.proxy.audit().log(event);
                return Err(Error(e));
            }
        };
        self.sandbox.proxy.audit().log(event);
        let (status_tx, status) = watch::channel(None);
        let audit = self.sandbox.proxy.audit().clone();
        let exited = started.exited;
        let stops = started.stops;
        let exec_id = exec.clone();
        tokio::spawn(async move {
            let mut event = Event::new("exec", "allow");
            event.exec = Some(exec_id);
            event.method = Some("exit".into());
            match exited.await {
                Ok(raw) => {
                    let status = ExitStatus::from_raw(raw);
                    event.status = status.code().map(|c| c as u16);
                    if let Some(sig) = status.signal() {
                        event.reason = Some(format!("killed by signal {sig}"));
                    }
                    let _ = status_tx.send(Some(status));
                }
                Err(_) => {
                    event.decision = "error";
                    event.reason = Some("the sandbox went away".into());
                    // Like a process killed by SIGKILL.
                    let _ = status_tx.send(Some(ExitStatus::from_raw(9)));
                }
            }
            audit.log(event);
        });
        let [stdin, stdout, stderr] = ours;
        let sender = |fd: Option<OwnedFd>| -> Result<Option<pipe::Sender>, Error> {
            fd.map(|fd| pipe::Sender::from_owned_fd(fd).map_err(|e| Error(format!("pipe: {e}"))))
                .transpose()
        };
        let receiver = |fd: Option<OwnedFd>| -> Result<Option<pipe::Receiver>, Error> {
            fd.map(|fd| pipe::Receiver::from_owned_fd(fd).map_err(|e| Error(format!("pipe: {e}"))))
                .transpose()
        };
        Ok(Child {
            exec_id: exec,
            pid: started.pid,
            stdin: sender(stdin)?,
            stdout: receiver(stdout)?,
            stderr: receiver(stderr)?,
            id: started.id,
            status,
            stops,
            execs: self.sandbox.execs.clone(),
        })
    }
}

/// A duplicate of this process's stdin (0), stdout (1) or stderr (2), if it is open.
fn dup_own(fd: RawFd) -> Option<OwnedFd> {
    use std::os::fd::AsFd;
    match fd {
        0 => std::io::stdin().as_fd().try_clone_to_owned().ok(),
        1 => std::io::stdout().as_fd().try_clone_to_owned().ok(),
        _ => std::io::stderr().as_fd().try_clone_to_owned().ok(),
    }
}

impl Child {
    /// Waits for the command to exit. Closes its stdin first, like tokio does.
    pub async fn wait(&mut self) -> std::io::Result<ExitStatus> {
        drop(self.stdin.take());
        let mut status = self.status.clone();
        let got = status
            .wait_for(Option::is_some)
            .await
            .map_err(|_| std::io::Error::other("the sandbox went away"))?;
        Ok((*got).unwrap_or(ExitStatus::from_raw(9)))
    }

    /// The exit status, if the command has exited.
    pub fn try_wait(&self) -> Option<ExitStatus> {
        *self.status.borrow()
    }

    /// Sends a signal to the command's process group (or to it alone without a session).
    pub fn signal(&self, signal: i32) {
        self.execs.signal(self.id, signal);
    }

    /// A handle that signals this command from anywhere (another thread, a signal handler
    /// loop), after the `Child` has moved on.
    pub fn signaller(&self) -> Signaller {
        Signaller {
            execs: self.execs.clone(),
            id: self.id,
        }
    }

    /// Like [`Child::wait`], but also resolves when the command is stopped (Ctrl-Z on its
    /// terminal, SIGTTIN, SIGSTOP): `Ok(Err(signal))`. Continue it with [`Child::resume`].
    pub async fn wait_or_stop(&mut self) -> std::io::Result<Result<ExitStatus, i32>> {
        drop(self.stdin.take());
        let mut status = self.status.clone();
        tokio::select! {
            got = status.wait_for(Option::is_some) => {
                let got = got.map_err(|_| std::io::Error::other("the sandbox went away"))?;
                Ok(Ok((*got).unwrap_or(ExitStatus::from_raw(9))))
            }
            Some(signal) = self.stops.recv() => Ok(Err(signal)),
        }
    }

    /// After a stop: SIGCONT to the command's group; with `foreground` it first gets the
    /// terminal back (when it has one, see [`Command::terminal`]).
    pub fn resume(&self, foreground: bool) {
        self.execs.resume(self.id, foreground);
    }

    /// SIGKILL.
    pub fn start_kill(&self) {
        self.signal(nix::libc::SIGKILL);
    }

    /// Reads stdout and stderr to the end (those that are piped) and waits.
    pub async fn wait_with_output(mut self) -> std::io::Result<Output> {
        drop(self.stdin.take());
        async fn read_all(pipe: Option<pipe::Receiver>) -> std::io::Result<Vec<u8>> {
            let mut buf = Vec::new();
            if let Some(mut pipe) = pipe {
                pipe.read_to_end(&mut buf).await?;
            }
            Ok(buf)
        }
        let (stdout, stderr) =
            tokio::try_join!(read_all(self.stdout.take()), read_all(self.stderr.take()))?;
        let status = self.wait().await?;
        Ok(Output {
            status,
            stdout,
            stderr,
        })
    }
}
