//! The proxy side of the control channel: starts commands in the sandbox, learns their exits,
//! and knows which exec is running (for `status` and for naming the exec in audit lines).
//!
//! One thread reads the sandbox's messages and completes the waiting spawns and waits;
//! sending is a short blocking `sendmsg` under a lock. Another answers which exec a
//! connection belongs to, in batches.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::os::fd::{OwnedFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch};

use super::control::{FromSandbox, Spawn, ToSandbox};
use super::fdpass;
use super::owner::{Owners, Proto};

/// A running exec, as `status` shows it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ExecInfo {
    /// The id audit lines carry.
    pub exec: String,
    /// pid inside the sandbox.
    pub pid: i32,
    pub command: String,
    /// Who asked for it (uid of the `netcage exec` caller), when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    pub started: String,
}

struct Waiting {
    started: Option<oneshot::Sender<Result<i32, String>>>,
    exited: Option<oneshot::Sender<i32>>,
    /// The signals that stopped it (job control), as they come.
    stops: mpsc::UnboundedSender<i32>,
    info: ExecInfo,
}

#[derive(Default)]
struct State {
    waiting: HashMap<u64, Waiting>,
    /// Running execs by id (ordered: `status` lists them oldest first).
    running: BTreeMap<u64, ExecInfo>,
    /// Sandbox pid of each running exec → its id.
    by_pid: HashMap<i32, u64>,
    /// Cgroup id → the exec whose cgroup it is (see `cgroups`), while the cgroup exists: an
    /// exec that has exited keeps its entry while processes it left are in it.
    by_cgroup: HashMap<u64, String>,
    /// Exec id → its cgroup (id, directory), until the directory is removed.
    cgroups: HashMap<u64, (u64, std::path::PathBuf)>,
    /// Execs that have exited whose cgroup still holds processes.
    lingering: Vec<u64>,
    /// The sandbox is gone (its init exited or the channel broke).
    dead: bool,
}

/// The state and a condition variable signalled whenever the reader thread changes it.
#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    changed: Condvar,
}

/// How long a connection's attribution waits for an exec that has been asked for but whose
/// start the reader has not seen yet (its command can connect before that).
const PENDING_WAIT: Duration = Duration::from_millis(250);

/// The control channel's client side.
pub struct Execs {
    sock: Arc<OwnedFd>,
    send: Mutex<()>,
    state: Arc<Shared>,
    next: AtomicU64,
    /// Lookups for the thread that searches the sandbox's /proc (see [`Execs::exec_of`]).
    lookups: Arc<Lookups>,
    /// Turns true once the sandbox is gone.
    gone: watch::Receiver<bool>,
    /// One cgroup per exec, when the eBPF program is loaded.
    exec_cgroups: std::sync::OnceLock<super::cgroups::ExecCgroups>,
}

/// A command started in the sandbox.
pub struct Started {
    pub id: u64,
    pub exec: String,
    pub pid: i32,
    /// The raw wait status, once it exits (dropped unsent if the sandbox dies first).
    pub exited: oneshot::Receiver<i32>,
    /// Each time it is stopped (Ctrl-Z, SIGTTIN…): the signal. Closed when it exits.
    pub stops: mpsc::UnboundedReceiver<i32>,
}

impl Execs {
    /// Takes over the control socket and the sandbox's /proc; starts the reader thread.
    pub fn new(control: OwnedFd, proc_dir: OwnedFd) -> std::io::Result<Arc<Execs>> {
        let sock = Arc::new(control);
        let state = Arc::new(Shared::default());
        let (gone_tx, gone) = watch::channel(false);
        let reader_sock = sock.clone();
        let reader_state = state.clone();
        // The reader takes no signals (netcage's own signal handling must see them).
        let all = nix::sys::signal::SigSet::all();
        let previous = all.thread_swap_mask(nix::sys::signal::SigmaskHow::SIG_BLOCK);
        let spawned = std::thread::Builder::new()
            .name("netcage-control".into())
            .spawn(move || read_loop(&reader_sock, &reader_state, gone_tx));
        let lookups = Arc::new(Lookups::default());
        let (looker, looker_state) = (lookups.clone(), state.clone());
        let owners = Owners::new(proc_dir);
        let looking = std::thread::Builder::new()
            .name("netcage-owners".into())
            .spawn(move || lookup_loop(&looker, &looker_state, &owners));
        if let Ok(previous) = previous {
            let _ = previous.thread_set_mask();
        }
        spawned?;
        looking?;
        Ok(Arc::new(Execs {
            sock,
            send: Mutex::new(()),
            state,
            next: AtomicU64::new(1),
            lookups,
            gone,
            exec_cgroups: std::sync::OnceLock::new(),
        }))
    }

    /// Starts each exec from now on in a cgroup of its own (see `cgroups`).
    pub fn use_cgroups(&self, cgroups: super::cgroups::ExecCgroups) {
        let _ = self.exec_cgroups.set(cgroups);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn send(&self, msg: &ToSandbox, fds: &[RawFd]) -> std::io::Result<()> {
        let _guard = self.send.lock().unwrap_or_else(|p| p.into_inner());
        fdpass::send(&*self.sock, msg, fds)
    }

    /// Starts `spawn` (its `id` is assigned here) with the given stdin/stdout/stderr
    /// (`None` = /dev/null) and waits until it runs or has failed to start.
    pub async fn spawn(
        &self,
        mut spawn: Spawn,
        exec: String,
        uid: Option<u32>,
        stdio: [Option<RawFd>; 3],
    ) -> Result<Started, String> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        spawn.id = id;
        spawn.stdio = stdio.map(|fd| fd.is_some());
        let mut fds: Vec<RawFd> = stdio.into_iter().flatten().collect();
        // Its cgroup (the command moves itself in before it execs); without one, it stays in
        // init's and its connections are told apart by lineage.
        let cgroup = self.exec_cgroups.get().and_then(|c| c.create(id).ok());
        if let Some(cgroup) = &cgroup {
            fds.push(std::os::fd::AsRawFd::as_raw_fd(&cgroup.procs));
            spawn.cgroup = true;
        }
        let (started_tx, started_rx) = oneshot::channel();
        let (exited_tx, exited_rx) = oneshot::channel();
        let (stops_tx, stops_rx) = mpsc::unbounded_channel();
        let info = ExecInfo {
            exec: exec.clone(),
            pid: 0,
            command: command_line(&spawn),
            uid,
            started: crate::audit::now_rfc3339(),
        };
        {
            let mut state = self.lock();
            if state.dead {
                return Err("the sandbox is gone".into());
            }
            if let Some(cgroup) = &cgroup {
                state.by_cgroup.insert(cgroup.id, exec.clone());
                state.cgroups.insert(id, (cgroup.id, cgroup.dir.clone()));
            }
            state.waiting.insert(
                id,
                Waiting {
                    started: Some(started_tx),
                    exited: Some(exited_tx),
                    stops: stops_tx,
                    info,
                },
            );
        }
        let sent = self.send(&ToSandbox::Spawn(spawn), &fds);
        drop(cgroup);
        if let Err(e) = sent {
            let mut state = self.lock();
            state.waiting.remove(&id);
            forget_cgroup(&mut state, id);
            return Err(format!("cannot reach the sandbox: {e}"));
        }
        match started_rx.await {
            Ok(Ok(pid)) => Ok(Started {
                id,
                exec,
                pid,
                exited: exited_rx,
                stops: stops_rx,
            }),
            Ok(Err(e)) => Err(e),
            Err(_) => Err("the sandbox is gone".into()),
        }
    }

    /// Sends `signal` to exec `id` (to its process group if it leads a session).
    pub fn signal(&self, id: u64, signal: i32) {
        let _ = self.send(&ToSandbox::Signal { id, signal }, &[]);
    }

    /// After exec `id` was stopped: SIGCONT to its group, which gets the terminal first when
    /// `foreground`.
    pub fn resume(&self, id: u64, foreground: bool) {
        let _ = self.send(&ToSandbox::Resume { id, foreground }, &[]);
    }

    /// SIGTERM to everything in the sandbox, SIGKILL after `grace`; the sandbox then exits.
    pub fn shutdown(&self, grace: std::time::Duration) {
        let grace_ms = grace.as_millis().min(u64::MAX as u128) as u64;
        let _ = self.send(&ToSandbox::Shutdown { grace_ms }, &[]);
    }

    /// Resolves once the sandbox is gone.
    pub async fn closed(&self) {
        let mut gone = self.gone.clone();
        let _ = gone.wait_for(|g| *g).await;
    }

    /// The exec, when exactly one is running (what a dropped packet is attributed to).
    pub fn only_running(&self) -> Option<String> {
        let state = self.lock();
        match state.running.len() {
            1 => state.running.values().next().map(|i| i.exec.clone()),
            _ => None,
        }
    }

    pub fn running(&self) -> Vec<ExecInfo> {
        self.lock().running.values().cloned().collect()
    }

    /// The exec a connection (TCP) or datagram (UDP) from `peer` inside the sandbox belongs
    /// to: the only one running, or else the one whose session holds the socket. When the
    /// eBPF program saw the connect, `process` is the connecting process: its cgroup names
    /// the exec (each has its own, when they could be made), else its lineage is read from
    /// its pid and the socket tables are not searched (the search remains for a process gone
    /// before the lookup). A command
    /// can connect before its start has reached us: while an exec is being started and the
    /// socket's owner is not found, the lookup waits (up to [`PENDING_WAIT`]) for the reader.
    ///
    /// Lookups that need the sandbox's /proc go to one thread, which answers every lookup
    /// waiting at once with one scan ([`Owners::lineages_of`]): a flood of connections costs
    /// a scan per batch, and no proxy thread waits on /proc.
    pub fn exec_of(
        &self,
        peer: SocketAddr,
        proto: Proto,
        process: Option<&super::bpf::Process>,
    ) -> impl std::future::Future<Output = Option<String>> + Send + 'static {
        let pid = process.and_then(|p| p.sandbox_pid);
        let state = self.lock();
        let by_cgroup = process.and_then(|p| state.by_cgroup.get(&p.cgroup).cloned());
        let quick = by_cgroup.map(Some).or_else(|| quick_answer(&state));
        drop(state);
        let answer = match quick {
            Some(known) => Ok(known),
            None => {
                let (reply, answer) = oneshot::channel();
                let mut queue = self.lookups.lock();
                queue.waiting.push(Lookup {
                    peer,
                    proto,
                    pid,
                    deadline: Instant::now() + PENDING_WAIT,
                    reply,
                });
                drop(queue);
                self.lookups.ready.notify_one();
                Err(answer)
            }
        };
        async move {
            match answer {
                Ok(known) => known,
                Err(answer) => answer.await.unwrap_or(None),
            }
        }
    }
}

/// The answer that needs no lookup: nobody is running (None), or exactly one exec runs and
/// none is being started (that one).
fn quick_answer(state: &State) -> Option<Option<String>> {
    let pending = state.waiting.values().any(|w| w.started.is_some());
    match state.running.len() {
        0 if !pending => Some(None),
        1 if !pending => Some(state.running.values().next().map(|i| i.exec.clone())),
        _ => None,
    }
}

/// The exec of a socket whose holder was not found: the only one running, if so.
fn fallback(state: &State) -> Option<String> {
    match state.running.len() {
        1 => state.running.values().next().map(|i| i.exec.clone()),
        _ => None,
    }
}

/// One connection or datagram waiting for its exec.
struct Lookup {
    peer: SocketAddr,
    proto: Proto,
    /// The connecting process in the sandbox's namespace, from the eBPF program.
    pid: Option<i32>,
    /// How long it may wait for an exec being started.
    deadline: Instant,
    reply: oneshot::Sender<Option<String>>,
}

#[derive(Default)]
struct Queue {
    waiting: Vec<Lookup>,
    /// `Execs` is gone: the thread ends.
    closed: bool,
}

#[derive(Default)]
struct Lookups {
    queue: Mutex<Queue>,
    ready: Condvar,
}

impl Lookups {
    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// How long lookups not found while an exec is being started wait before the next scan.
const RETRY: Duration = Duration::from_millis(10);

/// The lookup thread: takes every lookup waiting, answers them with one scan, and scans
/// again (after [`RETRY`]) for those that may belong to an exec still being started.
fn lookup_loop(lookups: &Lookups, shared: &Shared, owners: &Owners) {
    let mut retry: Vec<Lookup> = Vec::new();
    loop {
        let mut batch = {
            let mut queue = lookups.lock();
            if retry.is_empty() {
                while queue.waiting.is_empty() && !queue.closed {
                    queue = lookups.ready.wait(queue).unwrap_or_else(|p| p.into_inner());
                }
            } else if queue.waiting.is_empty() && !queue.closed {
                queue = lookups
                    .ready
                    .wait_timeout(queue, RETRY)
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
            }
            if queue.closed {
                return;
            }
            std::mem::take(&mut queue.waiting)
        };
        batch.append(&mut retry);
        let lock = || shared.state.lock().unwrap_or_else(|p| p.into_inner());
        // Answered without a scan now (the exec being started has started meanwhile).
        let mut scan = Vec::with_capacity(batch.len());
        {
            let state = lock();
            for lookup in batch {
                match quick_answer(&state) {
                    Some(known) => {
                        let _ = lookup.reply.send(known);
                    }
                    None => scan.push(lookup),
                }
            }
        }
        // Those whose connection is gone already need no answer.
        scan.retain(|l| !l.reply.is_closed());
        if scan.is_empty() {
            continue;
        }
        let lineages = lineages(owners, &scan);
        let state = lock();
        let pending = state.waiting.values().any(|w| w.started.is_some());
        let now = Instant::now();
        for (lookup, lineage) in scan.into_iter().zip(lineages) {
            if let Some(id) = lineage.iter().find_map(|pid| state.by_pid.get(pid)) {
                let _ = lookup
                    .reply
                    .send(state.running.get(id).map(|i| i.exec.clone()));
            } else if pending && now < lookup.deadline && !state.dead {
                retry.push(lookup);
            } else {
                // Not found in the tables (the process is gone): the only one running, if so.
                let _ = lookup.reply.send(fallback(&state));
            }
        }
    }
}

/// The lineage of each lookup's process: read from its pid when the eBPF program named it
/// (and the sandbox's /proc still shows it), else found by its socket (one scan for all).
fn lineages(owners: &Owners, scan: &[Lookup]) -> Vec<Vec<i32>> {
    let mut out: Vec<Vec<i32>> = scan
        .iter()
        .map(|l| {
            l.pid
                .map(|pid| owners.lineage_from(pid))
                .filter(|lineage| lineage.len() > 1)
                .unwrap_or_default()
        })
        .collect();
    let searched: Vec<usize> = (0..scan.len()).filter(|&i| out[i].is_empty()).collect();
    if searched.is_empty() {
        return out;
    }
    let wanted: Vec<(SocketAddr, Proto)> = searched
        .iter()
        .map(|&i| (scan[i].peer, scan[i].proto))
        .collect();
    for (i, lineage) in searched.into_iter().zip(owners.lineages_of(&wanted)) {
        out[i] = lineage;
    }
    out
}

/// Drops what is known of exec `id`'s cgroup (removed, or never used).
fn forget_cgroup(state: &mut State, id: u64) {
    if let Some((cgroup, dir)) = state.cgroups.remove(&id) {
        state.by_cgroup.remove(&cgroup);
        super::cgroups::remove(&dir);
    }
}

/// The command line as `status` and the audit log show it (cut at 200 characters).
pub fn command_line(spawn: &Spawn) -> String {
    let mut words = vec![String::from_utf8_lossy(&spawn.program).into_owned()];
    words.extend(
        spawn
            .args
            .iter()
            .map(|a| String::from_utf8_lossy(a).into_owned()),
    );
    let line = words.join(" ");
    match line.char_indices().nth(200) {
        Some((cut, _)) => format!("{}…", &line[..cut]),
        None => line,
    }
}

fn read_loop(sock: &OwnedFd, shared: &Shared, gone: watch::Sender<bool>) {
    let state = &shared.state;
    loop {
        let msg = match fdpass::recv::<FromSandbox>(sock) {
            Ok(Some((msg, _))) => msg,
            Ok(None) | Err(_) => break,
        };
        let mut state = state.lock().unwrap_or_else(|p| p.into_inner());
        match msg {
            FromSandbox::Started { id, pid } => {
                if let Some(w) = state.waiting.get_mut(&id) {
                    w.info.pid = pid;
                    let info = w.info.clone();
                    if let Some(tx) = w.started.take() {
                        let _ = tx.send(Ok(pid));
                    }
                    state.running.insert(id, info);
                    state.by_pid.insert(pid, id);
                }
            }
            FromSandbox::SpawnFailed { id, error } => {
                forget_cgroup(&mut state, id);
                if let Some(mut w) = state.waiting.remove(&id)
                    && let Some(tx) = w.started.take()
                {
                    let _ = tx.send(Err(error));
                }
            }
            FromSandbox::Stopped { id, signal } => {
                if let Some(w) = state.waiting.get(&id) {
                    let _ = w.stops.send(signal);
                }
            }
            FromSandbox::Exited { id, status } => {
                if let Some(info) = state.running.remove(&id) {
                    state.by_pid.remove(&info.pid);
                }
                // Its cgroup goes once nothing it started is left in it.
                state.lingering.push(id);
                let lingering = std::mem::take(&mut state.lingering);
                for exec in lingering {
                    let gone = state
                        .cgroups
                        .get(&exec)
                        .is_none_or(|(_, dir)| super::cgroups::remove(dir));
                    match gone {
                        true => forget_cgroup(&mut state, exec),
                        false => state.lingering.push(exec),
                    }
                }
                if let Some(mut w) = state.waiting.remove(&id)
                    && let Some(tx) = w.exited.take()
                {
                    let _ = tx.send(status);
                }
            }
            FromSandbox::Built { .. } | FromSandbox::BuildFailed(_) | FromSandbox::Ready => {}
        }
        drop(state);
        shared.changed.notify_all();
    }
    let mut state = state.lock().unwrap_or_else(|p| p.into_inner());
    state.dead = true;
    state.waiting.clear();
    state.running.clear();
    state.by_pid.clear();
    drop(state);
    shared.changed.notify_all();
    let _ = gone.send(true);
}

impl Drop for Execs {
    /// The reader thread holds the socket too: shut it down so the sandbox sees the end of
    /// the channel (a shutdown with no grace) and the reader exits.
    fn drop(&mut self) {
        self.lookups.lock().closed = true;
        self.lookups.ready.notify_all();
        let _ = nix::sys::socket::shutdown(
            std::os::fd::AsRawFd::as_raw_fd(&*self.sock),
            nix::sys::socket::Shutdown::Both,
        );
    }
}
