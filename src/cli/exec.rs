//! `netcage exec` and `netcage status`: clients of a `netcage serve` socket.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::ExitStatusExt;
use std::sync::Arc;

use anyhow::{Context, anyhow, bail};
use netcage::sandbox::fdpass;
use nix::sys::signal::{SigSet, Signal};

use super::wire::{Reply, Request, connect_to};
use super::{ExecArgs, StatusArgs, input_error};

/// Signals `exec` passes on to the command. The command runs in a session of its own inside
/// the sandbox, so the terminal's SIGINT/SIGQUIT reach it only this way.
const FORWARDED: &[Signal] = &[
    Signal::SIGINT,
    Signal::SIGQUIT,
    Signal::SIGTERM,
    Signal::SIGHUP,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
];

pub fn exec(args: ExecArgs) -> anyhow::Result<u8> {
    let mut env = Vec::new();
    for pair in &args.env {
        let Some((k, v)) = pair.split_once('=') else {
            return Err(input_error(format!(
                "--env {pair:?}: use NAME=VALUE, e.g. --env LANG=C.UTF-8"
            )));
        };
        if k.is_empty() {
            return Err(input_error(format!("--env {pair:?}: the name is empty")));
        }
        env.push((k.as_bytes().to_vec(), v.as_bytes().to_vec()));
    }
    // Relative to the caller's directory, not serve's.
    let here = std::env::current_dir().ok();
    let cwd = match (&args.cwd, &here) {
        (Some(dir), Some(here)) => Some(here.join(dir)),
        (Some(dir), None) => Some(dir.clone()),
        (None, here) => here.clone(),
    };
    let mut signals = SigSet::empty();
    for sig in FORWARDED {
        signals.add(*sig);
    }
    // Blocked before the socket exists: a signal from now on is passed on, never fatal here.
    signals.thread_block().context("cannot block signals")?;
    let sock = Arc::new(connect_to(&args.socket)?);
    let own: Vec<Option<OwnedFd>> = vec![
        std::io::stdin().as_fd().try_clone_to_owned().ok(),
        std::io::stdout().as_fd().try_clone_to_owned().ok(),
        std::io::stderr().as_fd().try_clone_to_owned().ok(),
    ];
    let stdio = [own[0].is_some(), own[1].is_some(), own[2].is_some()];
    let raw: Vec<_> = own.iter().flatten().map(|fd| fd.as_raw_fd()).collect();
    let request = Request::Exec {
        argv: args.command.iter().map(|a| a.as_bytes().to_vec()).collect(),
        env,
        cwd: cwd.map(|d| d.as_os_str().as_bytes().to_vec()),
        stdio,
    };
    fdpass::send(&*sock, &request, &raw)
        .with_context(|| format!("cannot send the command to {}", args.socket.display()))?;
    drop(own);
    // A signal before the command runs ends this client at once (serve then kills the command
    // when it starts, finding nobody to report to); after that, signals are passed on.
    let started = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let forward = sock.clone();
    let running = started.clone();
    std::thread::Builder::new()
        .name("netcage-signals".into())
        .spawn(move || {
            loop {
                if let Ok(sig) = signals.wait() {
                    if !running.load(std::sync::atomic::Ordering::SeqCst) {
                        std::process::exit(128 + sig as i32);
                    }
                    let _ = fdpass::send(&*forward, &Request::Signal(sig as i32), &[]);
                }
            }
        })
        .context("cannot start the signal thread")?;
    match fdpass::recv::<Reply>(&*sock) {
        Ok(Some((Reply::Started { .. }, _))) => {
            started.store(true, std::sync::atomic::Ordering::SeqCst)
        }
        Ok(Some((Reply::Refused(why), _))) => bail!("{why}"),
        Ok(_) => bail!("netcage serve closed the connection before starting the command"),
        Err(e) => bail!("reading from netcage serve: {e}"),
    }
    loop {
        match fdpass::recv::<Reply>(&*sock) {
            Ok(Some((Reply::Exited { status }, _))) => {
                let status = std::process::ExitStatus::from_raw(status);
                return Ok(super::run::exit_code(status).clamp(0, 255) as u8);
            }
            Ok(Some(_)) => continue,
            Ok(None) => bail!("netcage serve went away before the command finished"),
            Err(e) => return Err(anyhow!("reading from netcage serve: {e}")),
        }
    }
}

pub fn status(args: StatusArgs) -> anyhow::Result<u8> {
    let sock = connect_to(&args.socket)?;
    fdpass::send(&sock, &Request::Status, &[])
        .with_context(|| format!("cannot ask {}", args.socket.display()))?;
    match fdpass::recv::<Reply>(&sock) {
        Ok(Some((Reply::Status(json), _))) => {
            println!("{json}");
            Ok(0)
        }
        Ok(Some((Reply::Refused(why), _))) => bail!("{why}"),
        Ok(_) => bail!("netcage serve closed the connection without an answer"),
        Err(e) => bail!("reading from netcage serve: {e}"),
    }
}
