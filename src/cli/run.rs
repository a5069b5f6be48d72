//! `netcage run`: the command behind the proxy, in the strongest tier available.

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, anyhow};
use std::time::Duration;

use netcage::ca;
use netcage::proxy::{Proxy, serve_explicit};
use netcage::sandbox::{detect, launch, process};
use nix::sys::signal::{SigSet, Signal};
use tokio::signal::unix::{SignalKind, signal};

use super::config::{Resolved, child_env, report_removed, report_view, resolve, sandbox_config};

/// Signals passed on to the command. SIGINT/SIGQUIT come from the terminal to the whole
/// process group, the command included, so they are not passed on a second time.
pub const FORWARDED: &[Signal] = &[
    Signal::SIGTERM,
    Signal::SIGHUP,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
];
use super::{RunArgs, Tier};

const TIER0: &str = "only programs that honour HTTPS_PROXY go through the proxy; a program can still reach the network directly and read files it can open";

/// The holder: forked at the top of `main` ([`prestart`]), or being exec'd on a thread.
enum Spawning {
    Forked(launch::Pending),
    Exec(std::thread::JoinHandle<Option<launch::Pending>>),
}

impl Spawning {
    fn join(self) -> Option<launch::Pending> {
        match self {
            Spawning::Forked(pending) => Some(pending),
            Spawning::Exec(thread) => thread.join().ok().flatten(),
        }
    }
}

/// The holder `main` started before the command line was parsed ([`prestart`]).
static EARLY: std::sync::Mutex<Option<Spawning>> = std::sync::Mutex::new(None);

/// Tier 1's holder comes up while netcage parses its command line and resolves the
/// configuration: `main` calls this for `run` before parsing (0.3 ms of clap), while it is
/// still single-threaded, so the holder is forked (see [`launch::Pending::fork_here`]; an
/// exec of this binary on a thread of its own when that cannot be). A holder that is not
/// wanted after all is killed (a holder whose netcage exits first sees its control socket
/// close and exits too). Returns the exit code in the forked holder, which is done then.
pub fn prestart() -> Option<u8> {
    let spawning = match launch::Pending::fork_here() {
        Some(launch::Forked::Holder(code)) => return Some(code.clamp(0, 255) as u8),
        Some(launch::Forked::Netcage(pending)) => Spawning::Forked(pending),
        None => spawn_holder(),
    };
    *EARLY.lock().unwrap_or_else(|p| p.into_inner()) = Some(spawning);
    None
}

fn spawn_holder() -> Spawning {
    let exe = super::config::own_exe();
    Spawning::Exec(std::thread::spawn(move || {
        launch::Pending::spawn(&exe).ok()
    }))
}

/// Whether `run`'s arguments (after `run`, up to the command) ask for Tier 0: then `main`
/// starts no holder. Only a shortcut; [`run`] decides from the parsed arguments.
pub fn asks_for_tier0(args: &[std::ffi::OsString]) -> bool {
    let before_command = args.iter().take_while(|a| *a != "--");
    let mut previous_was_tier = false;
    for arg in before_command {
        if arg == "--tier=env" || (previous_was_tier && arg == "env") {
            return true;
        }
        previous_was_tier = arg == "--tier";
    }
    false
}

pub fn run(args: RunArgs) -> anyhow::Result<u8> {
    process::set_non_dumpable().context("cannot make netcage non-dumpable")?;
    super::raise_nofile_limit();
    let early = EARLY.lock().unwrap_or_else(|p| p.into_inner()).take();
    let holder = match (args.tier != Tier::Env, early) {
        (true, early) => Some(early.unwrap_or_else(spawn_holder)),
        (false, Some(unwanted)) => {
            // Dropping it kills the holder; nothing waits for that.
            std::thread::spawn(move || drop(unwanted.join()));
            None
        }
        (false, None) => None,
    };
    let resolved = resolve(&args.key, &args.policy)?;
    netcage::timing::mark("resolved");
    let audit = resolved.proxy.audit.clone();
    let learn = resolved.learn.clone();
    let holder = holder.and_then(Spawning::join);
    let result = run_in_a_tier(args, resolved, holder);
    // Responses still in flight when the runtime shut down have queued their lines by now.
    audit.flush();
    netcage::timing::mark("audit flushed");
    if let (Ok(_), Some(learn)) = (&result, learn) {
        learn.finish()?;
    }
    result
}

fn run_in_a_tier(
    args: RunArgs,
    resolved: Resolved,
    holder: Option<launch::Pending>,
) -> anyhow::Result<u8> {
    if args.tier == Tier::Env {
        eprintln!("netcage: Tier 0 (env, as asked): {TIER0}");
        super::config::tier0_files_note(&resolved);
        return super::runtime()?.block_on(run_env_tier(args, resolved));
    }
    // From here on the forwarded signals (and the terminal's SIGINT/SIGQUIT) stay blocked in
    // every thread of netcage, the runtime's included (they inherit this mask): one thread
    // takes them with sigwait and passes them on. Without this, a SIGTERM that arrives before
    // the command runs would kill netcage, and the command would die with it.
    let signals = netcage_signals();
    signals.thread_block().context("cannot block signals")?;
    let learn = resolved.learn.clone();
    let mut started = sandbox_config(&args.key, resolved, &args.env, None, "run");
    started.process_attribution = args.attribute;
    let attribute = args.attribute;
    netcage::timing::mark("sandbox configured");
    // The runtime's threads start while the holder builds the sandbox.
    let launched = started.begin(holder).and_then(|building| {
        let rt = super::runtime();
        netcage::proxy::prestart_threads();
        Ok((rt, building.wait()?))
    });
    netcage::timing::mark("launched");
    match (launched, args.tier) {
        (Ok((rt, launched)), _) => {
            let how = if detect::quick() {
                "root"
            } else {
                "rootless, user namespace"
            };
            eprintln!("netcage: Tier 1 (netns, {how}): the command's only way out is the proxy");
            report_view(&launched.view);
            let rt = rt?;
            let code = rt.block_on(async move {
                let sandbox = started.into_sandbox(launched)?;
                netcage::timing::mark("proxy up");
                if attribute {
                    super::config::report_attribution();
                }
                report_removed(sandbox.removed_env());
                run_netns_tier(sandbox, &args.command, signals).await
            });
            // Lines of responses still in flight are queued once the runtime is gone.
            drop(rt);
            netcage::timing::mark("runtime dropped");
            code
        }
        (Err(why), Tier::Netns) => Err(anyhow!(
            "Tier 1 (--tier netns) is impossible here: {why}; run `netcage doctor`, or use --tier env and accept its limits"
        )),
        (Err(why), _) => {
            let _ = signals.thread_unblock();
            eprintln!(
                "netcage: WARNING: Tier 0 (env) because the sandbox cannot be built ({why}): {TIER0}; use --tier netns to refuse instead"
            );
            let resolved = Resolved {
                proxy: started.cfg,
                audit_path: None,
                sealed_env: started.sealed,
                learn,
                write: started.write,
                seal_files: started.seal_files,
                hide: Vec::new(),
            };
            super::config::tier0_files_note(&resolved);
            super::runtime()?.block_on(run_env_tier(args, resolved))
        }
    }
}

/// The signals netcage's own threads never take in Tier 1: [`FORWARDED`], SIGINT, SIGQUIT.
fn netcage_signals() -> SigSet {
    let mut set = SigSet::empty();
    for sig in FORWARDED {
        set.add(*sig);
    }
    set.add(Signal::SIGINT);
    set.add(Signal::SIGQUIT);
    set
}

/// Tier 1, once the sandbox is up: the command with netcage's stdin/stdout/stderr, in a
/// process group of its own, until it exits. On a terminal where netcage is in the
/// foreground, the command's group takes the terminal (Ctrl-C and Ctrl-Z reach it, not
/// netcage); when it stops, netcage takes the terminal back and stops too, so the shell's job
/// control works as before, and passes on the continue. The terminal is handed back at the
/// end. Without a terminal it gets a session of its own.
async fn run_netns_tier(
    sandbox: netcage::Sandbox,
    command: &[std::ffi::OsString],
    signals: SigSet,
) -> anyhow::Result<u8> {
    let run_id = format!("run-{}", std::process::id());
    let tty = Terminal::of_this_process();
    let mut cmd = sandbox.command(&command[0]);
    // `nohup netcage run …` means what it says.
    cmd.args(&command[1..])
        .exec_id(run_id)
        .keep_ignored_signals(true);
    match &tty {
        Some(t) => {
            cmd.new_session(false).terminal(t.stdio, t.foreground);
        }
        None => {
            cmd.new_session(true);
        }
    }
    let spawned = cmd.spawn().await;
    netcage::timing::mark("command spawned");
    let mut child = match spawned {
        Ok(child) => child,
        Err(e) => {
            sandbox.shutdown(Duration::ZERO).await;
            return Err(anyhow!("{e}"));
        }
    };
    let target = child.signaller();
    std::thread::Builder::new()
        .name("netcage-signals".into())
        .spawn(move || {
            loop {
                if let Ok(sig) = signals.wait()
                    && FORWARDED.contains(&sig)
                {
                    target.signal(sig as i32);
                }
            }
        })
        .context("cannot start the signal thread")?;
    let status = loop {
        match child.wait_or_stop().await {
            Ok(Err(_stopped)) => {
                // Ctrl-Z (or SIGTTIN…): the shell must see its job, netcage, stop.
                if let Some(t) = &tty {
                    t.take_back();
                }
                let _ = nix::sys::signal::raise(Signal::SIGTSTP);
                // Continued: the command goes on, with the terminal if netcage has it now
                // (`fg`), without it after `bg`.
                let foreground = tty.as_ref().is_some_and(Terminal::is_foreground);
                if let Some(t) = &tty {
                    t.gave.set(foreground);
                }
                child.resume(foreground);
            }
            Ok(Ok(status)) => break Ok(status),
            Err(e) => break Err(e),
        }
    };
    netcage::timing::mark("command exited");
    if let Some(t) = &tty {
        t.take_back();
    }
    // Whatever the command left running in the background ends with it, as before.
    sandbox.shutdown_before_exit(Duration::ZERO).await;
    netcage::timing::mark("sandbox shut down");
    let status = status.context("waiting for the command failed")?;
    Ok(exit_code(status).clamp(0, 255) as u8)
}

/// netcage's controlling terminal, when one of its stdio descriptors is it.
struct Terminal {
    stdio: u8,
    /// netcage's group has the terminal (it runs in the foreground).
    foreground: bool,
    /// The command's group has the terminal from netcage (to take back at the end).
    gave: std::cell::Cell<bool>,
}

impl Terminal {
    fn of_this_process() -> Option<Terminal> {
        use std::os::fd::BorrowedFd;
        let own = nix::unistd::getsid(None).ok()?;
        (0..=2).find_map(|fd| {
            // SAFETY: 0, 1 and 2 stay open for netcage's whole life (or the calls fail with
            // EBADF, which is fine).
            let b = unsafe { BorrowedFd::borrow_raw(fd) };
            let ours = nix::unistd::isatty(b).unwrap_or(false)
                && nix::sys::termios::tcgetsid(b).ok() == Some(own);
            ours.then(|| {
                let foreground = nix::unistd::tcgetpgrp(b).ok() == Some(nix::unistd::getpgrp());
                Terminal {
                    stdio: fd as u8,
                    foreground,
                    gave: std::cell::Cell::new(foreground),
                }
            })
        })
    }

    /// Is netcage's group the terminal's foreground group now?
    fn is_foreground(&self) -> bool {
        // SAFETY: the descriptor is one of netcage's stdio, open for its whole life.
        let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(i32::from(self.stdio)) };
        nix::unistd::tcgetpgrp(fd).ok() == Some(nix::unistd::getpgrp())
    }

    /// netcage's group gets the terminal back if it had it (SIGTTOU blocked meanwhile: a
    /// background group may then set the foreground group).
    fn take_back(&self) {
        if !self.gave.replace(false) {
            return;
        }
        let mut ttou = SigSet::empty();
        ttou.add(Signal::SIGTTOU);
        let old = ttou.thread_swap_mask(nix::sys::signal::SigmaskHow::SIG_BLOCK);
        // SAFETY: the descriptor is one of netcage's stdio, open for its whole life.
        let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(i32::from(self.stdio)) };
        let _ = nix::unistd::tcsetpgrp(fd, nix::unistd::getpgrp());
        if let Ok(old) = old {
            let _ = old.thread_set_mask();
        }
    }
}

/// Tier 0: proxy variables only.
async fn run_env_tier(args: RunArgs, resolved: Resolved) -> anyhow::Result<u8> {
    let bundle = resolved.proxy.ca.bundle_path().to_owned();
    let ca_cert = resolved.proxy.ca.cert_path().to_owned();
    let truststore = resolved.proxy.ca.truststore_path().map(Path::to_owned);
    let proxy = Proxy::new(resolved.proxy)?;
    // Every connection to this proxy comes from the one command (or something it started).
    let run_id = format!("run-{}", std::process::id());
    proxy.set_attribution(Arc::new(move |_, _, _| {
        Box::pin(std::future::ready(Some(run_id.clone())))
    }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .context("cannot listen on 127.0.0.1")?;
    let addr = listener.local_addr()?;
    tokio::spawn(serve_explicit(Arc::clone(&proxy), listener));

    let url = format!("http://{addr}");
    let env = child_env(&resolved.sealed_env, &args.env.pass_env);
    report_removed(&env.removed);
    let java = env
        .env
        .iter()
        .find(|(k, _)| k == "JAVA_TOOL_OPTIONS")
        .map(|(_, v)| v.clone());
    let mut cmd = std::process::Command::new(&args.command[0]);
    cmd.args(&args.command[1..]).env_clear().envs(env.env);
    for var in [
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
        "grpc_proxy",
    ] {
        cmd.env(var, &url);
    }
    cmd.env("NO_PROXY", "").env("no_proxy", "");
    cmd.env_remove("no_grpc_proxy");
    for (var, path) in ca::trust_env(&bundle, &ca_cert) {
        cmd.env(var, path);
    }
    // Java: the truststore and the JVM's proxy properties; Node 24+: the proxy variables.
    if let Some(truststore) = &truststore {
        cmd.env(
            "JAVA_TOOL_OPTIONS",
            ca::java_tool_options(java.as_deref(), truststore, Some(addr)),
        );
    }
    cmd.env("NODE_USE_ENV_PROXY", "1");
    process::kill_with_parent(&mut cmd);
    let mut child = tokio::process::Command::from(cmd)
        .spawn()
        .with_context(|| format!("cannot start {}", args.command[0].to_string_lossy()))?;
    let pid = child.id().unwrap_or(0);
    let wait = tokio::spawn(async move { child.wait().await.map(exit_code).unwrap_or(1) });
    let code = forward_signals_until(pid, wait).await;
    // Connections still open end now (each queues its audit line).
    proxy.shutdown();
    Ok(code?.clamp(0, 255) as u8)
}

/// Passes SIGTERM, SIGHUP, SIGUSR1, SIGUSR2 on to `pid` until `wait` yields the exit code.
/// SIGINT and SIGQUIT come from the terminal to the command too, so netcage only survives them.
async fn forward_signals_until(
    pid: u32,
    wait: tokio::task::JoinHandle<i32>,
) -> anyhow::Result<i32> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    for sig in FORWARDED {
        let mut stream =
            signal(SignalKind::from_raw(*sig as i32)).context("cannot install signal handlers")?;
        let tx = tx.clone();
        let raw = *sig as i32;
        tokio::spawn(async move {
            while stream.recv().await.is_some() {
                if tx.send(raw).is_err() {
                    break;
                }
            }
        });
    }
    let mut quiet = Vec::new();
    for kind in [SignalKind::interrupt(), SignalKind::quit()] {
        let mut stream = signal(kind).context("cannot install signal handlers")?;
        quiet.push(tokio::spawn(async move {
            while stream.recv().await.is_some() {}
        }));
    }
    tokio::pin!(wait);
    loop {
        tokio::select! {
            code = &mut wait => return code.context("waiting for the command failed"),
            Some(sig) = rx.recv() => process::send_signal(pid, sig),
        }
    }
}

/// The child's exit code, or 128 + signal number like a shell.
pub fn exit_code(status: std::process::ExitStatus) -> i32 {
    match (status.code(), status.signal()) {
        (Some(code), _) => code,
        (None, Some(sig)) => 128 + sig,
        _ => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::asks_for_tier0;

    fn args(v: &[&str]) -> Vec<std::ffi::OsString> {
        v.iter().map(std::ffi::OsString::from).collect()
    }

    #[test]
    fn tier0_is_asked_for_only_before_the_command() {
        assert!(asks_for_tier0(&args(&["--tier", "env", "--", "true"])));
        assert!(asks_for_tier0(&args(&["--audit", "a", "--tier=env"])));
        assert!(!asks_for_tier0(&args(&["--", "x", "--tier", "env"])));
        assert!(!asks_for_tier0(&args(&["--tier", "netns", "--", "env"])));
        assert!(!asks_for_tier0(&args(&["env"])));
        assert!(!asks_for_tier0(&args(&[])));
    }
}
