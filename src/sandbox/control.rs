//! The protocol between the proxy side and the sandbox (one `SOCK_SEQPACKET` socket pair).
//!
//! ```text
//! proxy side                          holder / init
//!   HolderSpec ──────────────────────▶ holder builds the namespaces and the network
//!   HolderLayout ────────────────────▶ holder applies the filesystem view
//!              ◀────────────────────── Built{kinds} + sockets | BuildFailed
//!                                      init (pid 1) mounts /proc
//!              ◀────────────────────── Ready + /proc dir | BuildFailed
//!   Spawn{id,..} + stdio fds ────────▶ fork, exec
//!              ◀────────────────────── Started{id,pid} | SpawnFailed{id,..}
//!   Signal{id,sig} ──────────────────▶ kill
//!              ◀────────────────────── Stopped{id,sig} (job control)
//!   Resume{id} ──────────────────────▶ terminal to its group, SIGCONT
//!              ◀────────────────────── Exited{id,status}
//!   Shutdown{grace} or EOF ──────────▶ SIGTERM all, SIGKILL after grace, exit
//! ```

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};

use serde::{Deserialize, Serialize};

use super::layout::Op;

/// What the holder needs to build the namespaces and the network: sent as soon as it is
/// started, so that it builds them while netcage works out the filesystem view.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HolderSpec {
    /// No CAP_NET_ADMIN: use a user namespace.
    pub rootless: bool,
    /// uid and gid to map in the user namespace (rootless).
    pub uid: u32,
    pub gid: u32,
}

/// The filesystem view (`layout`), the holder's second message.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HolderLayout {
    pub ops: Vec<Op>,
}

/// Kinds of the sockets in [`FromSandbox::Built`], in the order of the descriptors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SocketKind {
    Tcp,
    DnsUdp,
    DnsTcp,
    Nflog,
}

/// A command to start in the sandbox.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Spawn {
    pub id: u64,
    pub program: Vec<u8>,
    pub args: Vec<Vec<u8>>,
    pub env: Vec<(Vec<u8>, Vec<u8>)>,
    pub cwd: Option<Vec<u8>>,
    /// Start a new session (and process group): signals go to the whole group, and the
    /// command is detached from netcage's terminal. Off, it still gets a process group of its
    /// own (so nothing it signals reaches the caller's), in netcage's session.
    pub new_session: bool,
    /// Which of stdin, stdout, stderr is netcage's controlling terminal (without a new
    /// session): init keeps it to hand the terminal to the command's group.
    pub tty: Option<u8>,
    /// Make the command's group the terminal's foreground group as it starts (netcage was in
    /// the foreground).
    pub foreground: bool,
    /// Keep the signals ignored where init was started (SIG_IGN from `nohup`) ignored in the
    /// command; otherwise a command with a session of its own starts with default
    /// dispositions.
    pub keep_ignored: bool,
    /// Which of stdin, stdout, stderr come with the message (in that order); the others are
    /// /dev/null.
    pub stdio: [bool; 3],
    /// The exec's cgroup.procs comes last with the message: the command moves itself into
    /// that cgroup before it execs (see `cgroups`).
    pub cgroup: bool,
}

impl Spawn {
    pub fn new(id: u64, program: &OsStr) -> Self {
        Spawn {
            id,
            program: program.as_bytes().to_vec(),
            ..Spawn::default()
        }
    }

    pub fn program(&self) -> OsString {
        OsString::from_vec(self.program.clone())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ToSandbox {
    Spawn(Spawn),
    /// Signal the command (its whole process group when it has a session of its own).
    Signal {
        id: u64,
        signal: i32,
    },
    /// The command stopped (job control) and netcage was continued: SIGCONT its group,
    /// after giving it the terminal when `foreground` (netcage was continued in the
    /// foreground).
    Resume {
        id: u64,
        foreground: bool,
    },
    /// SIGTERM to everything, SIGKILL after `grace_ms`, then exit. Closing the socket is a
    /// shutdown with no grace.
    Shutdown {
        grace_ms: u64,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum FromSandbox {
    Built {
        kinds: Vec<SocketKind>,
        /// What the user should know about the view (a fallback taken).
        notes: Vec<String>,
    },
    BuildFailed(String),
    /// init is up; carries a descriptor of the sandbox's /proc.
    Ready,
    Started {
        id: u64,
        pid: i32,
    },
    SpawnFailed {
        id: u64,
        error: String,
    },
    /// The command (its leader) was stopped by `signal` (Ctrl-Z, SIGTTIN, …).
    Stopped {
        id: u64,
        signal: i32,
    },
    /// Raw wait status (as `waitpid` reports it).
    Exited {
        id: u64,
        status: i32,
    },
}
