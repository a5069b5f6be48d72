//! `netcage serve`: one sandbox that lives for hours, and a control socket through which
//! `netcage exec` runs commands in it and `netcage status` reads its counters.

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, anyhow};
use netcage::audit::Event;
use netcage::sandbox::fdpass::AsyncPacket;
use netcage::sandbox::{detect, process};
use netcage::{Sandbox, Stdio};
use nix::sys::socket::{
    AddressFamily, Backlog, SockFlag, SockType, UnixAddr, bind, getsockopt, listen, socket, sockopt,
};
use tokio::signal::unix::{SignalKind, signal};

use super::config::{report_removed, resolve, sandbox_config};
use super::wire::{Reply, Request};
use super::{ServeArgs, input_error};

pub fn serve(args: ServeArgs) -> anyhow::Result<u8> {
    process::set_non_dumpable().context("cannot make netcage non-dumpable")?;
    super::raise_nofile_limit();
    let resolved = resolve(&args.key, &args.policy)?;
    let audit = resolved.proxy.audit.clone();
    let learn = resolved.learn.clone();
    let listener = bind_socket(&args.socket)?;
    let socket_path = std::fs::canonicalize(&args.socket).unwrap_or(args.socket.clone());
    let mut started = sandbox_config(
        &args.key,
        resolved,
        &args.env,
        Some(socket_path.clone()),
        "exec",
    );
    started.process_attribution = true;
    let result = match started.launch() {
        Ok(launched) => {
            let how = if detect::quick() {
                "root"
            } else {
                "rootless, user namespace"
            };
            eprintln!(
                "netcage: serving on {} (Tier 1, netns, {how}); run commands with `netcage exec --socket {} -- CMD`",
                args.socket.display(),
                args.socket.display()
            );
            super::config::report_view(&launched.view);
            let grace = Duration::from_secs_f64(args.grace);
            super::runtime()?.block_on(async move {
                let sandbox = Arc::new(started.into_sandbox(launched)?);
                super::config::report_attribution();
                report_removed(sandbox.removed_env());
                run(sandbox, listener, &socket_path, grace).await
            })
        }
        Err(why) => Err(anyhow!(
            "netcage serve needs Tier 1 and it is impossible here: {why}; run `netcage doctor`"
        )),
    };
    let _ = std::fs::remove_file(&args.socket);
    audit.flush();
    if let (Ok(_), Some(learn)) = (&result, learn) {
        learn.finish()?;
    }
    result
}

/// Creates the control socket 0600. A stale socket (nobody listening) is replaced; a live one
/// or any other file is an error.
fn bind_socket(path: &Path) -> anyhow::Result<OwnedFd> {
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(input_error(format!(
                "--socket {}: the file exists and is not a socket; choose another path",
                path.display()
            )));
        }
        if super::wire::connect_to(path).is_ok() {
            return Err(input_error(format!(
                "--socket {}: another netcage serve is listening there",
                path.display()
            )));
        }
        std::fs::remove_file(path)
            .with_context(|| format!("cannot remove the stale socket {}", path.display()))?;
    }
    let sock = socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )
    .context("socket")?;
    let addr = UnixAddr::new(path)
        .map_err(|e| input_error(format!("--socket {}: {e}", path.display())))?;
    // Created 0600 by the umask (no chmod afterwards: it would follow a symlink swapped in).
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
    let bound = bind(sock.as_raw_fd(), &addr);
    nix::sys::stat::umask(old);
    bound.map_err(|e| {
        input_error(format!(
            "--socket {}: cannot create the socket: {e}",
            path.display()
        ))
    })?;
    listen(&sock, Backlog::new(128).unwrap_or(Backlog::MAXCONN)).context("listen")?;
    Ok(sock)
}

struct Shared {
    sandbox: Arc<Sandbox>,
    stopping: AtomicBool,
    /// Who may use the socket besides root: the user running serve.
    owner: u32,
}

async fn run(
    sandbox: Arc<Sandbox>,
    listener: OwnedFd,
    socket_path: &Path,
    grace: Duration,
) -> anyhow::Result<u8> {
    let shared = Arc::new(Shared {
        sandbox: sandbox.clone(),
        stopping: AtomicBool::new(false),
        owner: nix::unistd::geteuid().as_raw(),
    });
    let listener = AsyncPacket::new(listener)?;
    let mut term = signal(SignalKind::terminate()).context("signal handler")?;
    let mut int = signal(SignalKind::interrupt()).context("signal handler")?;
    let mut hup = signal(SignalKind::hangup()).context("signal handler")?;
    let mut conns = tokio::task::JoinSet::new();
    let why = loop {
        tokio::select! {
            _ = term.recv() => break "SIGTERM",
            _ = int.recv() => break "SIGINT",
            _ = hup.recv() => continue,
            _ = sandbox.closed() => break "the sandbox died",
            accepted = listener.accept() => {
                if let Ok(conn) = accepted {
                    conns.spawn(handle(shared.clone(), conn));
                }
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    };
    eprintln!(
        "netcage: serve stopping ({why}): no new commands; SIGTERM to the running ones, SIGKILL after {:.0?}",
        grace
    );
    shared.stopping.store(true, Ordering::SeqCst);
    let _ = std::fs::remove_file(socket_path);
    drop(listener);
    sandbox.shutdown(grace).await;
    // The clients get their commands' exits before serve ends.
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while conns.join_next().await.is_some() {}
    })
    .await;
    if why == "the sandbox died" {
        return Err(anyhow!(
            "the sandbox died (its processes were killed from outside?); serve stopped"
        ));
    }
    Ok(0)
}

async fn handle(shared: Arc<Shared>, fd: OwnedFd) {
    let creds = getsockopt(&fd, sockopt::PeerCredentials).ok();
    let Ok(conn) = AsyncPacket::new(fd) else {
        return;
    };
    // The peer must be outside every sandbox (see wire::peer_not_deeper).
    let uid = creds.map(|c| c.uid());
    let outside = super::wire::peer_not_deeper(conn.get_ref());
    let allowed = outside && matches!(uid, Some(u) if u == shared.owner || u == 0);
    let Ok(Some((request, fds))) = conn.recv::<Request>().await else {
        return;
    };
    if !allowed {
        let who = uid.map_or("an unknown user".to_owned(), |u| format!("uid {u}"));
        let (reason, reply) = if outside {
            (
                format!(
                    "{who} may not use the control socket (only uid {} and root may)",
                    shared.owner
                ),
                format!(
                    "permission denied: only uid {} (the user running netcage serve) or root may use this socket",
                    shared.owner
                ),
            )
        } else {
            (
                format!("{who} called from another network namespace (a sandbox)"),
                "permission denied: this socket may only be used from outside any netcage sandbox"
                    .to_owned(),
            )
        };
        let mut event = Event::new("exec", "block");
        event.reason = Some(reason);
        shared.sandbox.proxy().audit().log(event);
        let _ = conn.send_reply(&Reply::Refused(reply)).await;
        return;
    }
    match request {
        Request::Status => {
            let report = serde_json::json!({
                "counters": shared.sandbox.proxy().audit().stats().snapshot(),
                "running": shared.sandbox.running(),
            });
            let text = serde_json::to_string_pretty(&report).unwrap_or_default();
            let _ = conn.send_reply(&Reply::Status(text)).await;
        }
        Request::Signal(_) => {}
        Request::Exec {
            argv,
            env,
            cwd,
            stdio,
        } => {
            if shared.stopping.load(Ordering::SeqCst) {
                let _ = conn
                    .send_reply(&Reply::Refused("netcage serve is shutting down".into()))
                    .await;
                return;
            }
            exec(&shared, &conn, uid, argv, env, cwd, stdio, fds).await;
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn exec(
    shared: &Shared,
    conn: &AsyncPacket,
    uid: Option<u32>,
    argv: Vec<Vec<u8>>,
    env: Vec<(Vec<u8>, Vec<u8>)>,
    cwd: Option<Vec<u8>>,
    stdio: [bool; 3],
    fds: Vec<OwnedFd>,
) {
    let os = |b: &[u8]| std::ffi::OsStr::from_bytes(b).to_owned();
    let Some(program) = argv.first() else {
        let _ = conn
            .send_reply(&Reply::Refused("no command given".into()))
            .await;
        return;
    };
    let mut cmd = shared.sandbox.command(os(program));
    cmd.args(argv[1..].iter().map(|a| os(a)));
    for (k, v) in &env {
        cmd.env(os(k), os(v));
    }
    if let Some(cwd) = &cwd {
        cmd.current_dir(PathBuf::from(os(cwd)));
    }
    if let Some(uid) = uid {
        cmd.requested_by(uid);
    }
    let mut fds = fds.into_iter();
    let mut pick = |present: bool| match present.then(|| fds.next()).flatten() {
        Some(fd) => Stdio::Fd(fd),
        None => Stdio::Null,
    };
    let (stdin, stdout, stderr) = (pick(stdio[0]), pick(stdio[1]), pick(stdio[2]));
    cmd.stdin(stdin).stdout(stdout).stderr(stderr);
    let mut child = match cmd.spawn().await {
        Ok(child) => child,
        Err(e) => {
            let _ = conn.send_reply(&Reply::Refused(e.to_string())).await;
            return;
        }
    };
    drop(cmd);
    let started = Reply::Started {
        exec: child.exec_id.clone(),
        pid: child.pid,
    };
    if conn.send_reply(&started).await.is_err() {
        child.start_kill();
    }
    let mut client_gone = false;
    loop {
        tokio::select! {
            status = child.wait() => {
                let raw = status.map(std::os::unix::process::ExitStatusExt::into_raw).unwrap_or(9);
                let _ = conn.send_reply(&Reply::Exited { status: raw }).await;
                return;
            }
            msg = conn.recv::<Request>(), if !client_gone => match msg {
                Ok(Some((Request::Signal(sig), _))) => child.signal(sig),
                Ok(Some(_)) => {}
                // The caller is gone: nobody will read the result.
                Ok(None) | Err(_) => {
                    client_gone = true;
                    child.start_kill();
                }
            }
        }
    }
}

/// Replies carry no descriptors.
trait SendReply {
    async fn send_reply(&self, reply: &Reply) -> std::io::Result<()>;
}

impl SendReply for AsyncPacket {
    async fn send_reply(&self, reply: &Reply) -> std::io::Result<()> {
        self.send(reply, &[]).await
    }
}
