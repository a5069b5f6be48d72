//! `netcage run`: the child behind the proxy.

use std::os::unix::process::ExitStatusExt;
use std::sync::Arc;

use anyhow::Context;
use netcage::ca;
use netcage::proxy::{Proxy, serve_explicit};
use netcage::sandbox::{detect, process};
use tokio::signal::unix::{SignalKind, signal};

use super::config::{child_env, resolve};
use super::{RunArgs, Tier};

pub fn run(args: RunArgs) -> anyhow::Result<u8> {
    process::set_non_dumpable().context("cannot make netcage non-dumpable")?;
    let resolved = resolve(&args.key, &args.policy)?;
    match args.tier {
        Tier::Netns => anyhow::bail!(
            "Tier 1 (--tier netns) is not available in this build yet; run `netcage doctor`, or use --tier env and accept its limits"
        ),
        Tier::Auto => {
            let facts = detect::facts();
            let why = if facts.cap_net_admin || facts.userns.is_ok() {
                "this build has no network-namespace sandbox yet"
            } else {
                "no CAP_NET_ADMIN and no unprivileged user namespaces"
            };
            eprintln!(
                "netcage: Tier 0 (env) because {why}: only programs that honour HTTPS_PROXY go through the proxy; a program can still reach the network directly and read files it can open"
            );
        }
        Tier::Env => eprintln!(
            "netcage: Tier 0 (env): only programs that honour HTTPS_PROXY go through the proxy; a program can still reach the network directly"
        ),
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(run_env_tier(args, resolved))
}

async fn run_env_tier(args: RunArgs, resolved: super::config::Resolved) -> anyhow::Result<u8> {
    let bundle = resolved.proxy.ca.bundle_path().to_owned();
    let ca_cert = resolved.proxy.ca.cert_path().to_owned();
    let proxy = Proxy::new(resolved.proxy)?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .context("cannot listen on 127.0.0.1")?;
    let addr = listener.local_addr()?;
    tokio::spawn(serve_explicit(Arc::clone(&proxy), listener));

    let url = format!("http://{addr}");
    let mut cmd = std::process::Command::new(&args.command[0]);
    cmd.args(&args.command[1..])
        .env_clear()
        .envs(child_env(&resolved.sealed_env));
    for var in [
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
    ] {
        cmd.env(var, &url);
    }
    cmd.env("NO_PROXY", "").env("no_proxy", "");
    for (var, path) in ca::trust_env(&bundle, &ca_cert) {
        cmd.env(var, path);
    }
    process::kill_with_parent(&mut cmd);
    let mut child = tokio::process::Command::from(cmd)
        .spawn()
        .with_context(|| format!("cannot start {}", args.command[0].to_string_lossy()))?;
    let pid = child.id().unwrap_or(0);
    let status = wait_forwarding_signals(&mut child, pid).await?;
    Ok(exit_code(status))
}

/// Waits for the child, passing on the signals a supervisor would send to netcage.
pub async fn wait_forwarding_signals(
    child: &mut tokio::process::Child,
    pid: u32,
) -> anyhow::Result<std::process::ExitStatus> {
    let kinds = [
        SignalKind::interrupt(),
        SignalKind::terminate(),
        SignalKind::hangup(),
        SignalKind::quit(),
        SignalKind::user_defined1(),
        SignalKind::user_defined2(),
    ];
    let mut streams = Vec::new();
    for kind in kinds {
        streams.push((
            kind.as_raw_value(),
            signal(kind).context("cannot install signal handlers")?,
        ));
    }
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    for (raw, mut stream) in streams {
        let tx = tx.clone();
        tokio::spawn(async move {
            while stream.recv().await.is_some() {
                if tx.send(raw).is_err() {
                    break;
                }
            }
        });
    }
    loop {
        tokio::select! {
            status = child.wait() => return status.context("cannot wait for the command"),
            Some(sig) = rx.recv() => process::send_signal(pid, sig),
        }
    }
}

/// The child's exit code, or 128 + signal number like a shell.
pub fn exit_code(status: std::process::ExitStatus) -> u8 {
    match (status.code(), status.signal()) {
        (Some(code), _) => code as u8,
        (None, Some(sig)) => 128u8.wrapping_add(sig as u8),
        _ => 1,
    }
}
