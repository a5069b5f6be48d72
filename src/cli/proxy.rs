//! `netcage proxy`: the explicit proxy alone, for programs started elsewhere.

use anyhow::Context;
use netcage::proxy::{Proxy, serve_explicit};
use netcage::sandbox::process;

use super::ProxyCmdArgs;
use super::config::resolve;

pub fn proxy(args: ProxyCmdArgs) -> anyhow::Result<u8> {
    if args.transparent {
        return super::k8s::sidecar(args);
    }
    for (flag, given) in [
        ("--ca-dir", args.ca_dir.is_some()),
        ("--tokens-file", args.tokens_file.is_some()),
        ("--ready-file", args.ready_file.is_some()),
    ] {
        if given {
            return Err(super::input_error(format!(
                "{flag} is for the Kubernetes sidecar: add --transparent, or leave it out"
            )));
        }
    }
    process::set_non_dumpable().context("cannot make netcage non-dumpable")?;
    super::raise_nofile_limit();
    let resolved = resolve(&args.key, &args.policy)?;
    let bundle = resolved.proxy.ca.bundle_path().to_owned();
    for sealed in &resolved.sealed_env {
        println!("{}={}", sealed.name, sealed.token);
    }
    let runtime = super::runtime()?;
    let audit = resolved.proxy.audit.clone();
    let learn = resolved.learn.clone();
    let result = runtime.block_on(async move {
        let proxy = Proxy::new(resolved.proxy)?;
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("cannot listen on {} (choose another with --listen)", args.listen))?;
        let addr = listener.local_addr()?;
        // The processes connecting to this port (in this network namespace) are named in the
        // audit lines when the eBPF program loads (root).
        if let Ok(tracker) = netcage::sandbox::bpf::tracker() {
            let _ = tracker.watch(std::os::fd::AsFd::as_fd(&listener), addr.port());
        }
        super::config::report_attribution();
        eprintln!(
            "netcage: proxy listening on {addr}; point clients at it with HTTPS_PROXY=http://{addr} HTTP_PROXY=http://{addr} and trust {} (SSL_CERT_FILE)",
            bundle.display()
        );
        tokio::select! {
            _ = serve_explicit(proxy.clone(), listener) => {}
            () = stopped() => {}
        }
        proxy.shutdown();
        Ok(0)
    });
    drop(runtime);
    finish(result, &audit, learn)
}

/// Until SIGINT or SIGTERM.
pub async fn stopped() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = term => {}
    }
}

/// After the proxy's runtime is gone: the audit log flushed, then `--learn`'s policy written
/// (when the run went well).
pub fn finish(
    result: anyhow::Result<u8>,
    audit: &netcage::audit::AuditLog,
    learn: Option<super::learn::Learning>,
) -> anyhow::Result<u8> {
    audit.flush();
    if let (Ok(_), Some(learn)) = (&result, learn) {
        learn.finish()?;
    }
    result
}
