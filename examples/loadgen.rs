//! A small HTTPS load generator for `scripts/bench`: HTTP/1.1 or HTTP/2 over TLS, straight to the
//! server or through an HTTP proxy's `CONNECT`, with keep-alive or a new TLS connection per
//! request, downloads, uploads, extra headers, and a mode that holds many idle connections open.
//! Prints one JSON line with the counts, requests/s, p50/p99 latency and throughput.
//!
//! ```text
//! loadgen https://bench.local:8443/small --cacert ca.pem --resolve 127.0.0.1 -c 64 -d 3
//! loadgen https://bench.local:8443/small --cacert bundle.pem --proxy 127.0.0.1:8080 --http2
//! loadgen https://bench.local:8443/upload/x --cacert ca.pem --resolve 127.0.0.1 --put-bytes 67108864
//! loadgen https://bench.local:8443/small --cacert bundle.pem --proxy 127.0.0.1:8080 -c 1000 --hold
//! ```

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use bytes::Bytes;
use clap::Parser;
use http::{HeaderName, HeaderValue, Method, Request, Uri};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

#[derive(Parser, Clone)]
#[command(about = "HTTPS load generator for scripts/bench")]
struct Args {
    /// https://HOST:PORT/PATH
    url: String,
    /// HTTP proxy (IP:PORT) to reach the server through with CONNECT.
    #[arg(long)]
    proxy: Option<SocketAddr>,
    /// The CONNECT target (default: the URL's host:port); TLS SNI and Host stay the URL's host.
    #[arg(long)]
    connect_target: Option<String>,
    /// Connect straight to this address instead of resolving the URL's host (no proxy).
    #[arg(long)]
    resolve: Option<IpAddr>,
    /// PEM file with the CA certificates to trust.
    #[arg(long)]
    cacert: PathBuf,
    /// Speak HTTP/2 (ALPN h2 required); default HTTP/1.1.
    #[arg(long)]
    http2: bool,
    /// Concurrent connections (each with one request in flight).
    #[arg(short = 'c', long, default_value_t = 1)]
    connections: usize,
    /// Seconds to run.
    #[arg(short = 'd', long, default_value_t = 2.0)]
    duration: f64,
    /// Keep going until at least this many requests completed, whatever the duration.
    #[arg(long, default_value_t = 1)]
    min_requests: u64,
    /// A new TCP + TLS connection for every request.
    #[arg(long)]
    new_conn: bool,
    /// Extra request header "Name: value" (repeatable).
    #[arg(short = 'H', long)]
    header: Vec<String>,
    /// PUT a body of this many bytes instead of GET.
    #[arg(long)]
    put_bytes: Option<usize>,
    /// Open the connections, make one request on each, print `READY n`, and keep them open until
    /// standard input closes (or --duration passes).
    #[arg(long)]
    hold: bool,
}

#[derive(Clone)]
struct Target {
    host: String,
    port: u16,
    path: String,
    authority: String,
}

enum Sender {
    H1(http1::SendRequest<ReqBody>),
    H2(http2::SendRequest<ReqBody>),
}

/// A request body: empty, or `len` bytes of `data` in 64 KiB frames.
struct ReqBody {
    data: Bytes,
    off: usize,
}

const FRAME: usize = 64 * 1024;

impl Body for ReqBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.off >= self.data.len() {
            return Poll::Ready(None);
        }
        let end = (self.off + FRAME).min(self.data.len());
        let chunk = self.data.slice(self.off..end);
        self.off = end;
        Poll::Ready(Some(Ok(Frame::data(chunk))))
    }

    fn is_end_stream(&self) -> bool {
        self.off >= self.data.len()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact((self.data.len() - self.off) as u64)
    }
}

struct Shared {
    args: Args,
    target: Target,
    tls: TlsConnector,
    headers: Vec<(HeaderName, HeaderValue)>,
    upload: Bytes,
    addr: Option<SocketAddr>,
    done: AtomicU64,
}

fn parse_target(url: &str) -> anyhow::Result<Target> {
    let uri: Uri = url.parse().context("bad URL")?;
    if uri.scheme_str() != Some("https") {
        bail!("only https:// URLs");
    }
    let host = uri.host().context("URL without host")?.to_owned();
    let port = uri.port_u16().unwrap_or(443);
    let path = uri
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "/".into());
    Ok(Target {
        authority: format!("{host}:{port}"),
        host,
        port,
        path,
    })
}

fn tls_config(args: &Args) -> anyhow::Result<rustls::ClientConfig> {
    let pem = std::fs::read(&args.cacert)
        .with_context(|| format!("cannot read {}", args.cacert.display()))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
        let _ = roots.add(cert?);
    }
    if roots.is_empty() {
        bail!("no certificates in {}", args.cacert.display());
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = if args.http2 {
        vec![b"h2".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    Ok(config)
}

/// Deterministic printable bytes with no token in them (the proxy's scanner sees all of it).
fn upload_data(len: usize) -> Bytes {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/ \n";
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut v = Vec::with_capacity(len);
    while v.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        let r = x.wrapping_mul(0x2545_f491_4f6c_dd1d);
        for i in 0..8 {
            v.push(ALPHABET[((r >> (i * 8)) as usize) % ALPHABET.len()]);
        }
    }
    v.truncate(len);
    Bytes::from(v)
}

async fn open(sh: &Shared) -> anyhow::Result<Sender> {
    let t = &sh.target;
    let tcp = match (sh.args.proxy, sh.addr) {
        (Some(proxy), _) => {
            let mut s = TcpStream::connect(proxy)
                .await
                .context("connect to proxy")?;
            s.set_nodelay(true)?;
            let target = sh.args.connect_target.as_deref().unwrap_or(&t.authority);
            s.write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes())
                .await?;
            let mut head = Vec::with_capacity(256);
            let mut buf = [0u8; 512];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = s.read(&mut buf).await?;
                if n == 0 {
                    bail!("proxy closed the connection during CONNECT");
                }
                head.extend_from_slice(&buf[..n]);
                if head.len() > 16 * 1024 {
                    bail!("CONNECT response too long");
                }
            }
            let status = head.split(|&b| b == b' ').nth(1).unwrap_or_default();
            if status != b"200" {
                bail!(
                    "CONNECT refused: {}",
                    String::from_utf8_lossy(&head).lines().next().unwrap_or("")
                );
            }
            s
        }
        (None, Some(addr)) => TcpStream::connect(addr).await.context("connect")?,
        (None, None) => TcpStream::connect((t.host.as_str(), t.port))
            .await
            .context("connect")?,
    };
    tcp.set_nodelay(true)?;
    let name = ServerName::try_from(t.host.clone())?;
    let tls = sh.tls.connect(name, tcp).await.context("TLS handshake")?;
    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
    let io = TokioIo::new(tls);
    if sh.args.http2 {
        if !h2 {
            return Err(Fatal("the server (or proxy) did not agree to HTTP/2 (ALPN)").into());
        }
        let (send, conn) = http2::handshake(TokioExecutor::new(), io).await?;
        tokio::spawn(conn);
        Ok(Sender::H2(send))
    } else {
        let (send, conn) = http1::handshake(io).await?;
        tokio::spawn(conn);
        Ok(Sender::H1(send))
    }
}

/// One request; returns the bytes of the response body.
async fn request(sh: &Shared, sender: &mut Sender) -> anyhow::Result<u64> {
    let t = &sh.target;
    let (method, body) = match sh.args.put_bytes {
        Some(_) => (Method::PUT, sh.upload.clone()),
        None => (Method::GET, Bytes::new()),
    };
    let mut builder = Request::builder().method(method);
    builder = match sender {
        Sender::H1(_) => builder
            .uri(t.path.as_str())
            .header("host", t.authority.as_str()),
        Sender::H2(_) => builder.uri(format!("https://{}{}", t.authority, t.path)),
    };
    if !body.is_empty() {
        builder = builder.header("content-length", body.len());
    }
    let mut req = builder.body(ReqBody { data: body, off: 0 })?;
    for (k, v) in &sh.headers {
        req.headers_mut().append(k.clone(), v.clone());
    }
    let resp = match sender {
        Sender::H1(s) => {
            s.ready().await?;
            s.send_request(req).await?
        }
        Sender::H2(s) => {
            s.ready().await?;
            s.send_request(req).await?
        }
    };
    let status = resp.status();
    let mut body = resp.into_body();
    let mut bytes = 0u64;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            bytes += data.len() as u64;
        }
    }
    if !status.is_success() {
        bail!("HTTP status {status}");
    }
    Ok(bytes)
}

/// An error that retrying cannot fix: the run stops.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Fatal(&'static str);

/// How long past --duration a worker keeps trying to reach --min-requests.
const GRACE: Duration = Duration::from_secs(30);

/// The request failed because the reused connection was closed before a response came.
fn stale(e: &anyhow::Error) -> bool {
    e.chain()
        .filter_map(|c| c.downcast_ref::<hyper::Error>())
        .any(|h| h.is_incomplete_message() || h.is_canceled() || h.is_closed())
}

#[derive(Default)]
struct WorkerResult {
    retries: u64,
    latencies_us: Vec<u32>,
    bytes: u64,
    errors: u64,
    first_error: Option<String>,
}

async fn worker(sh: Arc<Shared>, deadline: Instant) -> WorkerResult {
    let mut out = WorkerResult::default();
    let mut sender: Option<Sender> = None;
    loop {
        let now = Instant::now();
        if now >= deadline
            && (sh.done.load(Ordering::Relaxed) >= sh.args.min_requests || now >= deadline + GRACE)
        {
            break;
        }
        let start = Instant::now();
        let mut result = Err(anyhow!("not tried"));
        for attempt in 0..2 {
            let reused = sender.is_some() && !sh.args.new_conn;
            result = async {
                if !reused {
                    sender = Some(open(&sh).await?);
                }
                let s = sender.as_mut().expect("just opened");
                request(&sh, s).await
            }
            .await;
            // A keep-alive connection the server closed just as the request went out: what any
            // client does is open a new one and try again, once.
            match &result {
                Err(e) if attempt == 0 && reused && stale(e) => {
                    sender = None;
                    out.retries += 1;
                }
                _ => break,
            }
        }
        match result {
            Ok(bytes) => {
                out.latencies_us
                    .push(start.elapsed().as_micros().min(u32::MAX as u128) as u32);
                out.bytes += bytes;
                sh.done.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                out.errors += 1;
                out.first_error.get_or_insert_with(|| format!("{e:#}"));
                sender = None;
                if out.errors > 1000 || e.downcast_ref::<Fatal>().is_some() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    out
}

fn percentile(sorted: &[u32], p: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

async fn hold(sh: Arc<Shared>) -> anyhow::Result<serde_json::Value> {
    let started = Instant::now();
    let gate = Arc::new(tokio::sync::Semaphore::new(64));
    let mut tasks = Vec::new();
    for _ in 0..sh.args.connections {
        let sh = sh.clone();
        let gate = gate.clone();
        tasks.push(tokio::spawn(async move {
            let permit = gate.acquire_owned().await.expect("never closed");
            let mut s = open(&sh).await?;
            request(&sh, &mut s).await?;
            drop(permit);
            anyhow::Ok(s)
        }));
    }
    let mut held = Vec::new();
    let mut errors = 0u64;
    let mut first_error = None;
    for t in tasks {
        match t.await? {
            Ok(s) => held.push(s),
            Err(e) => {
                errors += 1;
                first_error.get_or_insert_with(|| format!("{e:#}"));
            }
        }
    }
    let open_secs = started.elapsed().as_secs_f64();
    println!("READY {}", held.len());
    let mut stdin = tokio::io::stdin();
    let mut sink = [0u8; 64];
    let wait = async {
        loop {
            match stdin.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs_f64(sh.args.duration), wait).await;
    let still_open = held
        .iter()
        .filter(|s| match s {
            Sender::H1(s) => !s.is_closed(),
            Sender::H2(s) => !s.is_closed(),
        })
        .count();
    drop(held);
    Ok(serde_json::json!({
        "held": still_open,
        "errors": errors,
        "first_error": first_error,
        "open_secs": open_secs,
    }))
}

async fn main_async(args: Args) -> anyhow::Result<serde_json::Value> {
    let target = parse_target(&args.url)?;
    let tls = TlsConnector::from(Arc::new(tls_config(&args)?));
    let mut headers = Vec::new();
    for h in &args.header {
        let (k, v) = h
            .split_once(':')
            .ok_or_else(|| anyhow!("header {h:?}: use \"Name: value\""))?;
        headers.push((
            HeaderName::from_bytes(k.trim().as_bytes())?,
            HeaderValue::from_str(v.trim())?,
        ));
    }
    let upload = args.put_bytes.map(upload_data).unwrap_or_default();
    let addr = args.resolve.map(|ip| SocketAddr::new(ip, target.port));
    let sh = Arc::new(Shared {
        args: args.clone(),
        target,
        tls,
        headers,
        upload,
        addr,
        done: AtomicU64::new(0),
    });
    if args.hold {
        return hold(sh).await;
    }
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(args.duration);
    let tasks: Vec<_> = (0..args.connections)
        .map(|_| tokio::spawn(worker(sh.clone(), deadline)))
        .collect();
    let mut all = WorkerResult::default();
    for t in tasks {
        let r = t.await?;
        all.latencies_us.extend(r.latencies_us);
        all.bytes += r.bytes;
        all.errors += r.errors;
        all.retries += r.retries;
        if all.first_error.is_none() {
            all.first_error = r.first_error;
        }
    }
    let secs = started.elapsed().as_secs_f64();
    all.latencies_us.sort_unstable();
    let n = all.latencies_us.len();
    let up = args.put_bytes.unwrap_or(0) as f64 * n as f64;
    Ok(serde_json::json!({
        "requests": n,
        "errors": all.errors,
        "retries": all.retries,
        "first_error": all.first_error,
        "secs": secs,
        "rps": n as f64 / secs,
        "p50_us": percentile(&all.latencies_us, 0.50),
        "p99_us": percentile(&all.latencies_us, 0.99),
        "bytes_down": all.bytes,
        "down_mbps": all.bytes as f64 / secs / 1e6,
        "up_mbps": up / secs / 1e6,
    }))
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let out = runtime.block_on(main_async(args))?;
    println!("{out}");
    // Held connections and their tasks are dropped with the runtime.
    runtime.shutdown_timeout(Duration::from_millis(100));
    Ok(())
}
