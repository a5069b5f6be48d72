//! `netcage run`: the command behind the proxy, in the strongest tier available.

use std::os::unix::process::ExitStatusExt;
use std::sync::Arc;

use anyhow::{Context, anyhow};
use netcage::ca::{self, CA_BUNDLE, CA_CERT};
use netcage::proxy::dns::{self, SyntheticNames};
use netcage::proxy::{Proxy, serve_explicit, serve_transparent};
use netcage::sandbox::launch::{self, FORWARDED, LaunchSpec};
use netcage::sandbox::{detect, plan, process};
use tokio::signal::unix::{SignalKind, signal};

use super::config::{Resolved, child_env, key_path, resolve};
use super::{RunArgs, Tier};

const TIER0: &str = "only programs that honour HTTPS_PROXY go through the proxy; a program can still reach the network directly and read files it can open";

pub fn run(args: RunArgs) -> anyhow::Result<u8> {
    process::set_non_dumpable().context("cannot make netcage non-dumpable")?;
    let resolved = resolve(&args.key, &args.policy)?;
    let audit = resolved.proxy.audit.clone();
    let learn = resolved.learn.clone();
    let result = run_in_a_tier(args, resolved);
    // Responses still in flight when the runtime shut down have queued their lines by now.
    audit.flush();
    if let (Ok(_), Some(learn)) = (&result, learn) {
        learn.finish()?;
    }
    result
}

fn run_in_a_tier(args: RunArgs, resolved: Resolved) -> anyhow::Result<u8> {
    if args.tier == Tier::Env {
        eprintln!("netcage: Tier 0 (env, as asked): {TIER0}");
        return runtime()?.block_on(run_env_tier(args, resolved));
    }
    let (root, nft) = detect::quick();
    let tier1 = match nft {
        None => Err("the nft binary is missing (install the nftables package)".to_owned()),
        Some(nft) => prepare_netns(&args, &resolved, !root, nft)
            .and_then(|spec| launch::launch(&spec).map(|launched| (launched, root))),
    };
    match (tier1, args.tier) {
        (Ok((launched, root)), _) => {
            let how = if root {
                "root"
            } else {
                "rootless, user namespace"
            };
            eprintln!("netcage: Tier 1 (netns, {how}): the command's only way out is the proxy");
            run_netns_tier(resolved, launched)
        }
        (Err(why), Tier::Netns) => Err(anyhow!(
            "Tier 1 (--tier netns) is impossible here: {why}; run `netcage doctor`, or use --tier env and accept its limits"
        )),
        (Err(why), _) => {
            eprintln!(
                "netcage: WARNING: Tier 0 (env) because the sandbox cannot be built ({why}): {TIER0}; use --tier netns to refuse instead"
            );
            runtime()?.block_on(run_env_tier(args, resolved))
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// What the Tier 1 sandbox needs: the data dir hidden, the public CA files, the environment.
fn prepare_netns(
    args: &RunArgs,
    resolved: &Resolved,
    rootless: bool,
    nft: std::path::PathBuf,
) -> Result<LaunchSpec, String> {
    let cfg = &resolved.proxy;
    let data_dir = std::fs::canonicalize(&args.key.data_dir).map_err(|e| {
        format!(
            "cannot resolve the data dir {}: {e}",
            args.key.data_dir.display()
        )
    })?;
    let key_file =
        std::fs::canonicalize(key_path(&args.key)).unwrap_or_else(|_| key_path(&args.key));
    let read = |p: &std::path::Path| {
        std::fs::read(p).map_err(|e| format!("cannot read {}: {e}", p.display()))
    };
    let public = vec![
        (CA_BUNDLE.to_owned(), read(cfg.ca.bundle_path())?),
        (CA_CERT.to_owned(), read(cfg.ca.cert_path())?),
    ];
    let mut env: Vec<_> = child_env(&resolved.sealed_env)
        .into_iter()
        .filter(|(k, _)| !plan::PROXY_VARS.iter().any(|p| k == p))
        .collect();
    for (var, path) in ca::trust_env(&data_dir.join(CA_BUNDLE), &data_dir.join(CA_CERT)) {
        env.retain(|(k, _)| k != var);
        env.push((var.into(), path.into()));
    }
    Ok(LaunchSpec {
        rootless,
        nft,
        mounts: plan::mount_plan(
            &data_dir,
            &[Some(key_file), resolved.audit_path.clone()]
                .into_iter()
                .flatten()
                .collect::<Vec<_>>(),
            public,
        ),
        program: args.command[0].clone(),
        args: args.command[1..].to_vec(),
        env,
    })
}

/// Tier 1, once the sandbox is up: the proxy, the resolver and the NFLOG reader on the sockets
/// the sandbox handed over, until the command exits.
fn run_netns_tier(resolved: Resolved, launched: launch::Launched) -> anyhow::Result<u8> {
    let cfg = resolved.proxy;
    let holder = launched.holder;
    runtime()?.block_on(async move {
        let proxy = Proxy::new(cfg)?;
        let names = Arc::new(SyntheticNames::default());
        for l in launched.sockets.tcp {
            l.set_nonblocking(true)?;
            let l = tokio::net::TcpListener::from_std(l)?;
            tokio::spawn(serve_transparent(proxy.clone(), names.clone(), l));
        }
        for s in launched.sockets.dns_udp {
            s.set_nonblocking(true)?;
            let s = tokio::net::UdpSocket::from_std(s)?;
            tokio::spawn(dns::serve_udp(proxy.clone(), names.clone(), s));
        }
        for l in launched.sockets.dns_tcp {
            l.set_nonblocking(true)?;
            let l = tokio::net::TcpListener::from_std(l)?;
            tokio::spawn(dns::serve_tcp(proxy.clone(), names.clone(), l));
        }
        let mut nflog_at_exit = None;
        if let Some(fd) = launched.sockets.nflog {
            nflog_at_exit = fd.try_clone().ok();
            let audit = proxy.audit().clone();
            std::thread::spawn(move || log_dropped_packets(fd, &audit));
        }
        // launch() forwards signals to the holder from a thread of its own.
        let code = tokio::task::spawn_blocking(move || launch::wait(holder))
            .await
            .context("waiting for the sandbox failed")?;
        if let Some(fd) = nflog_at_exit {
            // Packets dropped just before the command exited may not be read yet.
            let file = std::fs::File::from(fd);
            if nix::fcntl::fcntl(
                &file,
                nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
            )
            .is_ok()
            {
                log_dropped_packets(file.into(), proxy.audit());
            }
        }
        Ok(code.clamp(0, 255) as u8)
    })
}

/// Reads the namespace's NFLOG socket: one audit line per packet the sandbox dropped.
fn log_dropped_packets(fd: std::os::fd::OwnedFd, audit: &netcage::audit::AuditLog) {
    let mut file = std::fs::File::from(fd);
    let mut buf = vec![0u8; 64 * 1024];
    while let Ok(n) = std::io::Read::read(&mut file, &mut buf) {
        if n == 0 {
            break;
        }
        for dropped in netcage::sandbox::nflog::parse(&buf[..n]) {
            let mut event = netcage::audit::Event::new("packet", "block");
            event.dst = Some(dropped.dst);
            event.method = Some(dropped.protocol.to_owned());
            event.reason = Some(match dropped.uid {
                Some(uid) => {
                    format!("only TCP through the proxy and DNS may leave the sandbox (uid {uid})")
                }
                None => "only TCP through the proxy and DNS may leave the sandbox".to_owned(),
            });
            audit.log(event);
        }
    }
}

/// Tier 0: proxy variables only.
async fn run_env_tier(args: RunArgs, resolved: Resolved) -> anyhow::Result<u8> {
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
    let wait = tokio::spawn(async move { child.wait().await.map(exit_code).unwrap_or(1) });
    let code = forward_signals_until(pid, wait).await?;
    Ok(code.clamp(0, 255) as u8)
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
