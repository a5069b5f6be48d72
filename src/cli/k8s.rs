//! Kubernetes: `netcage k8s-init` (the init container that loads the pod's nft rules),
//! `netcage proxy --transparent` (the native sidecar those rules send everything to),
//! `netcage k8s-ready` (its startupProbe) and `netcage k8s-check` (the manifest lint, in
//! [`super::k8s_check`]).
//!
//! The pod's containers share one network namespace; the rules tell the sidecar apart by its
//! uid, so the guarantee holds only while no other container runs as that uid or holds
//! NET_ADMIN / NET_RAW, which is what `k8s-check` lints for.

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use netcage::proxy::dns::{self, SyntheticNames};
use netcage::proxy::{Proxy, serve_transparent};
use netcage::sandbox::nft;
use netcage::sandbox::plan::{PodRules, pod_nft_ruleset};
use netcage::sandbox::process;

use super::config::resolve_for;
use super::{K8sCheckArgs, K8sInitArgs, K8sReadyArgs, ProxyCmdArgs, input_error};

fn check_ports(port: u16, dns_port: u16) -> anyhow::Result<()> {
    if port == 0 || dns_port == 0 {
        return Err(input_error(
            "--port and --dns-port must be from 1 to 65535 (the defaults are 15001 and 15053)",
        ));
    }
    if port == dns_port || port == 53 || dns_port == 53 {
        return Err(input_error(format!(
            "--port {port} and --dns-port {dns_port} must differ from each other and from 53"
        )));
    }
    Ok(())
}

/// `netcage k8s-init`: the pod's rules, loaded atomically (replacing any earlier copy).
pub fn init(args: K8sInitArgs) -> anyhow::Result<u8> {
    if args.proxy_uid == 0 {
        return Err(input_error(
            "--proxy-uid 0 would let every root process of the pod out unproxied: run the sidecar as a uid of its own (e.g. 1337) and give that",
        ));
    }
    check_ports(args.port, args.dns_port)?;
    let rules = PodRules {
        proxy_uid: args.proxy_uid,
        port: args.port,
        dns_port: args.dns_port,
    };
    if args.print {
        print!("{}", pod_nft_ruleset(&rules));
        return Ok(0);
    }
    nft::load_pod(&rules).map_err(|e| {
        let hint = if e.contains("not permitted") {
            " (the init container needs the NET_ADMIN capability: securityContext.capabilities.add: [NET_ADMIN])"
        } else {
            ""
        };
        anyhow::anyhow!("{}{hint}", e.replace("the sandbox's nftables", "the pod's nftables"))
    })?;
    eprintln!(
        "netcage: pod rules loaded: uid {} goes out as it is; DNS goes to :{}, other TCP to :{}, everything else is rejected",
        rules.proxy_uid, rules.dns_port, rules.port
    );
    Ok(0)
}

/// `netcage k8s-ready FILE`: 0 when the sidecar wrote FILE.
pub fn ready(args: K8sReadyArgs) -> anyhow::Result<u8> {
    if args.file.exists() {
        return Ok(0);
    }
    eprintln!(
        "netcage: {} does not exist: the sidecar is not serving yet",
        args.file.display()
    );
    Ok(1)
}

/// `netcage k8s-check`.
pub fn check(args: K8sCheckArgs) -> anyhow::Result<u8> {
    let (mut problems, mut pods) = (0, 0);
    for file in &args.files {
        let (name, text) = if file.as_os_str() == "-" {
            let mut text = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)
                .context("cannot read the manifest from stdin")?;
            ("-".to_owned(), text)
        } else {
            let text = std::fs::read_to_string(file).map_err(|e| {
                input_error(format!(
                    "cannot read {}: {e}; give a YAML manifest",
                    file.display()
                ))
            })?;
            (file.display().to_string(), text)
        };
        let (found, in_file) = super::k8s_check::check(&text, args.proxy_uid)
            .map_err(|e| input_error(format!("{name}: {e}")))?;
        pods += in_file;
        for problem in &found {
            println!("{name}: {problem}");
        }
        problems += found.len();
    }
    if pods == 0 {
        return Err(input_error(
            "no Pod or workload (Deployment, StatefulSet, DaemonSet, ReplicaSet, Job, CronJob) in the files: give the manifest of the pod",
        ));
    }
    if problems > 0 {
        eprintln!("netcage: {problems} problem(s): the pod's egress is not enforced as it stands");
        return Ok(1);
    }
    eprintln!("netcage: {pods} pod(s) checked, no problem found");
    Ok(0)
}

/// Writes `data` to `path` through a temporary file (the app never reads half of it).
fn write_public(path: &Path, data: &[u8]) -> anyhow::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    let _ = std::fs::remove_file(&tmp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&tmp)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    file.write_all(data)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))
}

/// Binds `port` on 127.0.0.1 (required) and ::1 (skipped when the pod has no IPv6).
fn loopback_addrs(port: u16) -> [(SocketAddr, bool); 2] {
    [
        (SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port), true),
        (
            SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), port),
            false,
        ),
    ]
}

fn skippable(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EADDRNOTAVAIL) | Some(libc::EAFNOSUPPORT)
    )
}

/// `netcage proxy --transparent`: the pod's sidecar.
pub fn sidecar(args: ProxyCmdArgs) -> anyhow::Result<u8> {
    let Some(ca_dir) = args.ca_dir.clone() else {
        return Err(input_error(
            "--transparent needs --ca-dir DIR: the volume (an emptyDir) the app mounts for the CA bundle",
        ));
    };
    check_ports(args.port, args.dns_port)?;
    process::set_non_dumpable().context("cannot make netcage non-dumpable")?;
    super::raise_nofile_limit();
    if let Some(ready) = &args.ready_file {
        match std::fs::remove_file(ready) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(input_error(format!(
                    "--ready-file {}: {e}; give a file in a writable directory",
                    ready.display()
                )));
            }
            _ => {}
        }
    }
    let resolved = resolve_for(&args.key, &args.policy, Some(&ca_dir))?;
    let bundle = resolved.proxy.ca.bundle_path().to_owned();
    let lines: String = resolved
        .sealed_env
        .iter()
        .map(|s| format!("{}={}\n", s.name, s.token))
        .collect();
    match &args.tokens_file {
        Some(path) => write_public(path, lines.as_bytes())?,
        None => print!("{lines}"),
    }
    let runtime = super::runtime()?;
    let audit = resolved.proxy.audit.clone();
    let learn = resolved.learn.clone();
    let (port, dns_port, ready) = (args.port, args.dns_port, args.ready_file.clone());
    let dns_rate = resolved.proxy.policy.limits.dns_queries_per_sec;
    let result = runtime.block_on(async move {
        let proxy = Proxy::new(resolved.proxy)?;
        let names = Arc::new(SyntheticNames::default());
        let resolver = Arc::new(dns::Resolver::new(names.clone(), dns_rate));
        let mut tasks = Vec::new();
        let mut served = Vec::new();
        for (addr, required) in loopback_addrs(port) {
            match tokio::net::TcpListener::bind(addr).await {
                Ok(l) => {
                    served.push(addr.to_string());
                    tasks.push(tokio::spawn(serve_transparent(
                        proxy.clone(),
                        names.clone(),
                        l,
                    )));
                }
                Err(e) if !required && skippable(&e) => {}
                Err(e) => {
                    return Err(input_error(format!(
                        "cannot listen on {addr}: {e} (give k8s-init and the sidecar another --port)"
                    )));
                }
            }
        }
        for (addr, required) in loopback_addrs(dns_port) {
            let udp = tokio::net::UdpSocket::bind(addr).await;
            let tcp = tokio::net::TcpListener::bind(addr).await;
            match (udp, tcp) {
                (Ok(u), Ok(t)) => {
                    tasks.push(tokio::spawn(dns::serve_udp(
                        proxy.clone(),
                        resolver.clone(),
                        u,
                    )));
                    tasks.push(tokio::spawn(dns::serve_tcp(
                        proxy.clone(),
                        resolver.clone(),
                        t,
                    )));
                }
                (Err(e), _) | (_, Err(e)) if !required && skippable(&e) => {}
                (Err(e), _) | (_, Err(e)) => {
                    return Err(input_error(format!(
                        "cannot listen on {addr} for DNS: {e} (give k8s-init and the sidecar another --dns-port)"
                    )));
                }
            }
        }
        if let Some(ready) = &ready {
            write_public(ready, format!("{}\n", std::process::id()).as_bytes())?;
        }
        eprintln!(
            "netcage: sidecar serving redirected connections on {} and DNS on port {dns_port}; the app trusts {} (SSL_CERT_FILE)",
            served.join(", "),
            bundle.display()
        );
        super::proxy::stopped().await;
        if let Some(ready) = &ready {
            let _ = std::fs::remove_file(ready);
        }
        for task in tasks {
            task.abort();
        }
        proxy.shutdown();
        Ok(0)
    });
    drop(runtime);
    super::proxy::finish(result, &audit, learn)
}
