//! An HTTPS (or plain HTTP) test server on `127.0.0.1:0` that records every request.
//!
//! The server runs on its own thread with its own tokio runtime, so it serves sync tests
//! (which spawn netcage and clients with `std::process::Command`) and async tests alike.
//! Dropping the [`Upstream`] stops it.
//!
//! # Routes
//! A `HEAD` request gets the headers of its route's answer (its `Content-Length` included) and
//! no body.
//!
//! | target | response |
//! |---|---|
//! | anything else | 200, JSON echo of the request: method, target, version, headers, body_len, body (first 64 KiB, lossy) |
//! | `/sse[?events=N&ms=M]` | `text/event-stream`: N events (default [`SSE_EVENTS`]), M ms apart (default 50), then the end |
//! | `/silent` | 200, the line `start`, then nothing more until the client goes away |
//! | `/sleep?ms=N` | the echo, after N ms without a word |
//! | `/big?bytes=N[&chunked=1]` | N bytes of [`pattern`], streamed (with `Content-Length` unless `chunked=1`) |
//! | `/ws` | WebSocket echo (HTTP/1.1 Upgrade): text, binary and continuation frames come back as sent; ping gets pong; close gets close |
//! | `/ws/messages[?echo_frames=N]` | WebSocket that records every message it receives, reassembled ([`Upstream::ws_messages`]: data, ping, pong, close) and echoes each data message whole, in N frames (default 1); ping gets pong; the text `ping me` also gets a ping `srv-ping`; the text `close me` gets a close (4000, `server bye`) instead of its echo; close gets close |
//! | `/trailers` | a short body then the trailer `grpc-status: 0` (HTTP/2; HTTP/1.1 only with `TE: trailers`) |
//! | `/git/info/refs?service=git-upload-pack` | git smart-HTTP ref advertisement (one ref, HEAD = [`GIT_HEAD_SHA`]), or 401 with `WWW-Authenticate: Basic realm="x"` when a password is set ([`Upstream::set_git_password`]) and the request's Basic password differs |
//! | `/files/PATH` | the file PATH under the directory given to [`Upstream::serve_files`] (`PATH/` serves `PATH/index.html`, a name without an extension `NAME/index.json`; the query is ignored), or 401 with `WWW-Authenticate: Basic` unless the request carries the secret: `Authorization: Bearer S`, `Authorization: S`, or S as the Basic password or user |
//! | `/status/NNN` | that status, with a short text body |
//! | `/redirect?to=URL` | 302 to URL (taken verbatim, not percent-decoded) |
//! | `/compressed?coding=C[,C…]&echo=NAME` | the value of request header NAME, encoded with each C in turn (`gzip`, `deflate`, `br`, `zstd`; any other name leaves the bytes as they are) and `Content-Encoding: C[, C…]`, whatever the request's `Accept-Encoding` said |
//! | `/compressed?coding=C[,C…]&zeros=N` | the same for N zero bytes, encoded as they stream (a decompression bomb: 1 GiB of zeros is about 5 MiB of fast gzip) |

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Body, Frame, Incoming};
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::http::request::Parts;
use hyper::service::service_fn;
use hyper::upgrade::OnUpgrade;
use hyper::{Request, Response, StatusCode, Version};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use rustls::ServerConfig;
use serde_json::json;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio_rustls::TlsAcceptor;

use super::ca::{TestCa, install_crypto_provider};
use super::ws;

/// How much of each request body [`Recorded::body_prefix`] keeps.
pub const BODY_PREFIX_LIMIT: usize = 1024 * 1024;
/// How much of the request body the echo route puts in its `body` field.
const ECHO_BODY_LIMIT: usize = 64 * 1024;
/// Number of events `/sse` sends.
pub const SSE_EVENTS: usize = 5;
/// Pause between two `/sse` events.
pub const SSE_INTERVAL: Duration = Duration::from_millis(50);
/// The commit `/git/info/refs` advertises as HEAD.
pub const GIT_HEAD_SHA: &str = "8b6f1a4e0d3c2b1a09f8e7d6c5b4a39281706f5e";

type RespBody = BoxBody<Bytes, Infallible>;

/// One request as the server received it.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: String,
    /// Path and query, as sent.
    pub target: String,
    pub version: Version,
    /// The URI authority: HTTP/2's `:authority`, or an HTTP/1.1 absolute-form target's.
    pub authority: Option<String>,
    /// Header names (lower case) and raw values, every value of repeated headers.
    pub headers: Vec<(String, Vec<u8>)>,
    pub body_len: u64,
    pub body_sha256: [u8; 32],
    /// The first [`BODY_PREFIX_LIMIT`] bytes of the body.
    pub body_prefix: Vec<u8>,
    /// The TLS SNI the client sent (`None` on plain HTTP, or for IP-literal hosts).
    pub sni: Option<String>,
    /// False when the body ended early (client went away or sent a malformed body).
    pub complete: bool,
}

impl Recorded {
    fn from_parts(parts: &Parts, sni: Option<String>) -> Self {
        Self {
            method: parts.method.as_str().to_owned(),
            target: parts
                .uri
                .path_and_query()
                .map_or_else(|| "/".to_owned(), |pq| pq.as_str().to_owned()),
            version: parts.version,
            authority: parts.uri.authority().map(|a| a.as_str().to_owned()),
            headers: parts
                .headers
                .iter()
                .map(|(name, value)| (name.as_str().to_owned(), value.as_bytes().to_vec()))
                .collect(),
            body_len: 0,
            body_sha256: [0; 32],
            body_prefix: Vec::new(),
            sni,
            complete: false,
        }
    }

    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.header_values(name).into_iter().next()
    }

    /// The first value of header `name`, lossily decoded.
    pub fn header_str(&self, name: &str) -> Option<String> {
        self.header(name)
            .map(|v| String::from_utf8_lossy(v).into_owned())
    }

    /// Every value of header `name`, in order.
    pub fn header_values(&self, name: &str) -> Vec<&[u8]> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
            .collect()
    }

    /// The host the client addressed: the `Host` header, else the URI authority.
    pub fn host(&self) -> Option<String> {
        self.header_str("host").or_else(|| self.authority.clone())
    }

    /// The path part of the target.
    pub fn path(&self) -> &str {
        split_target(&self.target).0
    }

    /// `(user, password)` from an `Authorization: Basic` header.
    pub fn basic_credentials(&self) -> Option<(Vec<u8>, Vec<u8>)> {
        let value = std::str::from_utf8(self.header("authorization")?).ok()?;
        let (scheme, encoded) = value.trim().split_once(' ')?;
        if !scheme.eq_ignore_ascii_case("basic") {
            return None;
        }
        let decoded = STANDARD.decode(encoded.trim()).ok()?;
        let colon = decoded.iter().position(|&b| b == b':')?;
        Some((decoded[..colon].to_vec(), decoded[colon + 1..].to_vec()))
    }

    /// True if `needle` occurs in the target, any header value, or the body prefix. For
    /// bodies over [`BODY_PREFIX_LIMIT`] compare [`Recorded::body_sha256`] instead.
    pub fn contains(&self, needle: &[u8]) -> bool {
        super::contains(self.target.as_bytes(), needle)
            || self.headers.iter().any(|(_, v)| super::contains(v, needle))
            || super::contains(&self.body_prefix, needle)
    }
}

/// One WebSocket data frame (text, binary or continuation) the `/ws` echo received.
#[derive(Clone, Debug)]
pub struct WsFrame {
    pub fin: bool,
    pub opcode: u8,
    pub payload: Vec<u8>,
}

/// One WebSocket message `/ws/messages` received: a data message reassembled from its frames,
/// or a control frame.
#[derive(Clone, Debug)]
pub struct WsMessage {
    /// Its first frame's opcode: [`ws::OP_TEXT`], [`ws::OP_BINARY`], [`ws::OP_PING`],
    /// [`ws::OP_PONG`] or [`ws::OP_CLOSE`].
    pub opcode: u8,
    pub payload: Vec<u8>,
    /// How many frames it came in.
    pub frames: usize,
}

impl WsMessage {
    /// A close frame's status code.
    pub fn close_code(&self) -> Option<u16> {
        (self.opcode == ws::OP_CLOSE && self.payload.len() >= 2)
            .then(|| u16::from_be_bytes([self.payload[0], self.payload[1]]))
    }
}

/// What the server shares between its connections and the test.
#[derive(Default)]
struct State {
    requests: Mutex<Vec<Recorded>>,
    ws_frames: Mutex<Vec<WsFrame>>,
    ws_messages: Mutex<Vec<WsMessage>>,
    git_password: Mutex<Option<String>>,
    /// `/files/`: the directory served and the secret a request must carry.
    files: Mutex<Option<(std::path::PathBuf, String)>>,
    connections: AtomicUsize,
}

/// A running test server. See the module docs for its routes.
pub struct Upstream {
    addr: SocketAddr,
    tls: bool,
    state: Arc<State>,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Upstream {
    /// HTTPS with a leaf from `ca` for `names` (DNS or IP SANs), ALPN `h2` and `http/1.1`.
    pub fn start(ca: &TestCa, names: &[&str]) -> Self {
        Self::start_with_config(ca.server_config(names, &[b"h2", b"http/1.1"]))
    }

    /// HTTPS with a caller-made configuration (another CA, other ALPN, a wrong name…).
    pub fn start_with_config(config: Arc<ServerConfig>) -> Self {
        install_crypto_provider();
        Self::launch(Some(TlsAcceptor::from(config)))
    }

    /// Plain HTTP (HTTP/1.1, and HTTP/2 with prior knowledge).
    pub fn start_plain() -> Self {
        Self::launch(None)
    }

    /// Like [`Upstream::start`], listening on `bind` (an address of a namespace the test made,
    /// port 0) instead of `127.0.0.1:0`.
    pub fn start_at(ca: &TestCa, names: &[&str], bind: SocketAddr) -> Self {
        install_crypto_provider();
        let tls = TlsAcceptor::from(ca.server_config(names, &[b"h2", b"http/1.1"]));
        Self::launch_at(Some(tls), bind)
    }

    fn launch(tls: Option<TlsAcceptor>) -> Self {
        Self::launch_at(tls, SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    fn launch_at(tls: Option<TlsAcceptor>, bind: SocketAddr) -> Self {
        let listener = std::net::TcpListener::bind(bind).expect("bind the upstream's address");
        listener.set_nonblocking(true).expect("non-blocking");
        let addr = listener.local_addr().expect("local address");
        let state = Arc::new(State::default());
        let (shutdown, stop) = oneshot::channel();
        let is_tls = tls.is_some();
        let server_state = Arc::clone(&state);
        let thread = thread::Builder::new()
            .name(format!("upstream-{}", addr.port()))
            .spawn(move || run_server(listener, tls, server_state, stop))
            .expect("spawn upstream thread");
        Self {
            addr,
            tls: is_tls,
            state,
            shutdown: Some(shutdown),
            thread: Some(thread),
        }
    }

    /// The listening port.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The listening address (127.0.0.1:port).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `https://host:port/path` (or `http://` for a plain server); `path` starts with `/`.
    pub fn url(&self, host: &str, path: &str) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{host}:{}{path}", self.port())
    }

    /// Every request recorded so far, in the order they were recorded.
    pub fn requests(&self) -> Vec<Recorded> {
        self.state.requests.lock().unwrap().clone()
    }

    /// Waits until at least `n` requests are recorded; panics after `timeout`.
    pub fn wait_for_requests(&self, n: usize, timeout: Duration) -> Vec<Recorded> {
        let deadline = Instant::now() + timeout;
        loop {
            let requests = self.requests();
            if requests.len() >= n {
                return requests;
            }
            assert!(
                Instant::now() < deadline,
                "upstream got {} requests within {timeout:?}, expected {n}: {requests:#?}",
                requests.len()
            );
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Forgets the requests and WebSocket frames recorded so far.
    pub fn clear(&self) {
        self.state.requests.lock().unwrap().clear();
        self.state.ws_frames.lock().unwrap().clear();
        self.state.ws_messages.lock().unwrap().clear();
    }

    /// WebSocket messages received by `/ws/messages`, in order.
    pub fn ws_messages(&self) -> Vec<WsMessage> {
        self.state.ws_messages.lock().unwrap().clone()
    }

    /// Waits until a recorded `/ws/messages` message satisfies `pred`; returns them all.
    /// Panics after `timeout`.
    pub fn wait_for_ws_message(
        &self,
        timeout: Duration,
        pred: impl Fn(&WsMessage) -> bool,
    ) -> Vec<WsMessage> {
        let deadline = Instant::now() + timeout;
        loop {
            let messages = self.ws_messages();
            if messages.iter().any(&pred) {
                return messages;
            }
            assert!(
                Instant::now() < deadline,
                "no such WebSocket message within {timeout:?}; received: {messages:#?}"
            );
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// WebSocket data frames received by `/ws`, in order.
    pub fn ws_frames(&self) -> Vec<WsFrame> {
        self.state.ws_frames.lock().unwrap().clone()
    }

    /// TCP connections accepted so far (including ones whose TLS handshake failed).
    pub fn connections(&self) -> usize {
        self.state.connections.load(Ordering::SeqCst)
    }

    /// Serves `dir` under `/files/` to requests that carry `secret` (see the module docs).
    pub fn serve_files(&self, dir: &std::path::Path, secret: &str) {
        *self.state.files.lock().unwrap() = Some((dir.to_owned(), secret.to_owned()));
    }

    /// From now on `/git/info/refs` answers 401 unless the Basic password equals `password`.
    /// (Until this is called, any credentials or none are accepted.)
    pub fn set_git_password(&self, password: &str) {
        *self.state.git_password.lock().unwrap() = Some(password.to_owned());
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The server thread: accepts connections until told to stop, then drops them all.
fn run_server(
    listener: std::net::TcpListener,
    tls: Option<TlsAcceptor>,
    state: Arc<State>,
    stop: oneshot::Receiver<()>,
) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("upstream runtime");
    runtime.block_on(async move {
        let listener = TcpListener::from_std(listener).expect("tokio listener");
        tokio::select! {
            _ = accept_loop(listener, tls, state) => {}
            _ = stop => {}
        }
    });
    runtime.shutdown_background();
}

async fn accept_loop(listener: TcpListener, tls: Option<TlsAcceptor>, state: Arc<State>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        state.connections.fetch_add(1, Ordering::SeqCst);
        let _ = stream.set_nodelay(true);
        tokio::spawn(serve_connection(stream, tls.clone(), Arc::clone(&state)));
    }
}

async fn serve_connection(stream: TcpStream, tls: Option<TlsAcceptor>, state: Arc<State>) {
    match tls {
        None => serve_http(stream, state, None).await,
        Some(acceptor) => {
            let Ok(stream) = acceptor.accept(stream).await else {
                return;
            };
            let sni = stream.get_ref().1.server_name().map(str::to_owned);
            serve_http(stream, state, sni).await;
        }
    }
}

/// HTTP/1.1 or HTTP/2 (by the connection preface, which follows ALPN) on one connection.
async fn serve_http<I>(io: I, state: Arc<State>, sni: Option<String>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |req| handle(req, Arc::clone(&state), sni.clone()));
    let _ = auto::Builder::new(TokioExecutor::new())
        .serve_connection_with_upgrades(TokioIo::new(io), service)
        .await;
}

async fn handle(
    mut req: Request<Incoming>,
    state: Arc<State>,
    sni: Option<String>,
) -> Result<Response<RespBody>, Infallible> {
    let upgrade = is_websocket_upgrade(&req).then(|| hyper::upgrade::on(&mut req));
    let (parts, body) = req.into_parts();
    let Some(recorded) = record(&parts, body, &state, sni).await else {
        return Ok(text(StatusCode::BAD_REQUEST, "request body incomplete\n"));
    };
    let (path, query) = split_target(&recorded.target);
    if path == "/sleep"
        && let Some(ms) = query_param(query, "ms").and_then(|n| n.parse().ok())
    {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let mut resp = route(&recorded, upgrade, &state);
    if recorded.method == "HEAD" {
        // As real servers do: the headers of a GET, no body (hyper's HTTP/2 server would send
        // one, which a client must treat as a protocol error).
        let length = resp.body().size_hint().exact();
        if let Some(length) = length
            && !resp.headers().contains_key(header::CONTENT_LENGTH)
        {
            resp.headers_mut()
                .insert(header::CONTENT_LENGTH, HeaderValue::from(length));
        }
        *resp.body_mut() = Empty::new().map_err(|never| match never {}).boxed();
    }
    Ok(resp)
}

/// Reads the whole body into a [`Recorded`] and stores it. If the body ends early (or this
/// future is dropped because the connection died) what arrived is stored with
/// `complete: false`, and `None` is returned.
async fn record(
    parts: &Parts,
    mut body: Incoming,
    state: &Arc<State>,
    sni: Option<String>,
) -> Option<Recorded> {
    let mut recorder = BodyRecorder {
        state: Arc::clone(state),
        rec: Some(Recorded::from_parts(parts, sni)),
        hasher: Sha256::new(),
    };
    while let Some(frame) = body.frame().await {
        if let Some(data) = frame.ok()?.data_ref() {
            recorder.feed(data);
        }
    }
    Some(recorder.commit(true))
}

/// A request being recorded; stores it (as incomplete) when dropped before [`Self::commit`].
struct BodyRecorder {
    state: Arc<State>,
    rec: Option<Recorded>,
    hasher: Sha256,
}

impl BodyRecorder {
    fn feed(&mut self, data: &[u8]) {
        let rec = self.rec.as_mut().expect("not yet committed");
        rec.body_len += data.len() as u64;
        let room = BODY_PREFIX_LIMIT.saturating_sub(rec.body_prefix.len());
        rec.body_prefix
            .extend_from_slice(&data[..data.len().min(room)]);
        self.hasher.update(data);
    }

    fn commit(&mut self, complete: bool) -> Recorded {
        let mut rec = self.rec.take().expect("committed once");
        rec.complete = complete;
        rec.body_sha256 = std::mem::take(&mut self.hasher).finalize().into();
        self.state.requests.lock().unwrap().push(rec.clone());
        rec
    }
}

impl Drop for BodyRecorder {
    fn drop(&mut self) {
        if self.rec.is_some() {
            self.commit(false);
        }
    }
}

fn route(rec: &Recorded, upgrade: Option<OnUpgrade>, state: &Arc<State>) -> Response<RespBody> {
    let (path, query) = split_target(&rec.target);
    match path {
        "/sse" => sse(query),
        "/silent" => silent(),
        "/big" => big(query),
        "/ws" => websocket(rec, upgrade, state, Echo::Frames),
        "/ws/messages" => {
            let frames = query_param(query, "echo_frames").and_then(|n| n.parse().ok());
            websocket(rec, upgrade, state, Echo::Messages(frames.unwrap_or(1)))
        }
        "/trailers" => trailers(),
        "/git/info/refs" => git_refs(rec, query, state),
        "/redirect" => redirect(query),
        "/compressed" => compressed(rec, query),
        _ if path.starts_with("/files/") => files(rec, path, state),
        _ => match path.strip_prefix("/status/").and_then(|s| s.parse().ok()) {
            Some(code) => status(code),
            None => echo(rec),
        },
    }
}

/// 200 with a JSON description of the request.
fn echo(rec: &Recorded) -> Response<RespBody> {
    let mut headers = serde_json::Map::new();
    for (name, value) in &rec.headers {
        let value = String::from_utf8_lossy(value);
        match headers.get_mut(name) {
            Some(serde_json::Value::String(joined)) => {
                joined.push_str(", ");
                joined.push_str(&value);
            }
            _ => {
                headers.insert(name.clone(), value.into_owned().into());
            }
        }
    }
    let shown = &rec.body_prefix[..rec.body_prefix.len().min(ECHO_BODY_LIMIT)];
    let body = json!({
        "method": rec.method,
        "target": rec.target,
        "version": format!("{:?}", rec.version),
        "headers": headers,
        "body_len": rec.body_len,
        "body": String::from_utf8_lossy(shown),
    });
    response(StatusCode::OK, "application/json", full(body.to_string()))
}

/// `text/event-stream`: `events` events ([`SSE_EVENTS`]), `ms` apart ([`SSE_INTERVAL`]).
fn sse(query: &str) -> Response<RespBody> {
    let events = query_param(query, "events")
        .and_then(|n| n.parse().ok())
        .unwrap_or(SSE_EVENTS);
    let interval = query_param(query, "ms")
        .and_then(|n| n.parse().ok())
        .map_or(SSE_INTERVAL, Duration::from_millis);
    let (tx, body) = channel_body();
    tokio::spawn(async move {
        for n in 1..=events {
            if n > 1 {
                tokio::time::sleep(interval).await;
            }
            let event = format!("id: {n}\nevent: tick\ndata: {{\"n\":{n}}}\n\n");
            if tx.send(Frame::data(event.into())).await.is_err() {
                return;
            }
        }
    });
    let mut resp = response(StatusCode::OK, "text/event-stream", body);
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}

/// 200 and one line, then silence: the body stays open until the client goes away.
fn silent() -> Response<RespBody> {
    let (tx, body) = channel_body();
    tokio::spawn(async move {
        if tx
            .send(Frame::data(Bytes::from_static(b"start\n")))
            .await
            .is_ok()
        {
            tx.closed().await;
        }
    });
    response(StatusCode::OK, "text/plain", body)
}

/// `bytes` bytes of [`pattern`], streamed in 64 KiB frames.
fn big(query: &str) -> Response<RespBody> {
    let Some(total) = query_param(query, "bytes").and_then(|n| n.parse::<u64>().ok()) else {
        return text(StatusCode::BAD_REQUEST, "want /big?bytes=N\n");
    };
    let (tx, body) = channel_body();
    tokio::spawn(async move {
        let mut offset = 0;
        while offset < total {
            let len = (total - offset).min(64 * 1024) as usize;
            let chunk = Bytes::from(pattern(offset, len));
            if tx.send(Frame::data(chunk)).await.is_err() {
                return;
            }
            offset += len as u64;
        }
    });
    let mut resp = response(StatusCode::OK, "application/octet-stream", body);
    if query_param(query, "chunked") != Some("1") {
        resp.headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from(total));
    }
    resp
}

/// Byte `i` of the `/big` data is `i % 251`: deterministic, and not periodic in any power of
/// two, so a reordered or duplicated chunk changes the digest.
pub fn pattern(offset: u64, len: usize) -> Vec<u8> {
    (offset..offset + len as u64)
        .map(|i| (i % 251) as u8)
        .collect()
}

/// SHA-256 of the first `len` bytes of [`pattern`].
pub fn pattern_sha256(len: u64) -> [u8; 32] {
    let mut sha = Sha256::new();
    let mut offset = 0;
    while offset < len {
        let n = (len - offset).min(1 << 20) as usize;
        sha.update(pattern(offset, n));
        offset += n as u64;
    }
    sha.finalize().into()
}

fn is_websocket_upgrade(req: &Request<Incoming>) -> bool {
    req.version() == Version::HTTP_11
        && req
            .headers()
            .get(header::UPGRADE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

/// What a WebSocket route does with what it receives.
#[derive(Clone, Copy)]
enum Echo {
    /// `/ws`: each data frame back as it came, recorded as a frame.
    Frames,
    /// `/ws/messages`: each message recorded whole, data messages echoed in this many frames.
    Messages(usize),
}

/// 101 Switching Protocols, then echo frames on the upgraded connection.
fn websocket(
    rec: &Recorded,
    upgrade: Option<OnUpgrade>,
    state: &Arc<State>,
    echo: Echo,
) -> Response<RespBody> {
    let (Some(upgrade), Some(key)) = (upgrade, rec.header("sec-websocket-key")) else {
        return text(StatusCode::BAD_REQUEST, "expected a WebSocket upgrade\n");
    };
    let accept = ws::accept_key(key);
    match echo {
        Echo::Frames => tokio::spawn(echo_websocket(upgrade, Arc::clone(state))),
        Echo::Messages(frames) => {
            tokio::spawn(record_websocket(upgrade, Arc::clone(state), frames))
        }
    };
    let mut resp = Response::new(Empty::new().boxed());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = resp.headers_mut();
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    headers.insert(
        header::SEC_WEBSOCKET_ACCEPT,
        HeaderValue::from_str(&accept).expect("base64 is a valid header value"),
    );
    resp
}

async fn echo_websocket(upgrade: OnUpgrade, state: Arc<State>) {
    let Ok(upgraded) = upgrade.await else {
        return;
    };
    let mut io = TokioIo::new(upgraded);
    while let Some(frame) = ws::read_frame(&mut io).await {
        let sent = match frame.opcode {
            ws::OP_CLOSE => {
                let _ = ws::write_frame(&mut io, true, ws::OP_CLOSE, &frame.payload).await;
                break;
            }
            ws::OP_PING => ws::write_frame(&mut io, true, ws::OP_PONG, &frame.payload).await,
            ws::OP_PONG => Ok(()),
            ws::OP_TEXT | ws::OP_BINARY | ws::OP_CONTINUATION => {
                let sent = ws::write_frame(&mut io, frame.fin, frame.opcode, &frame.payload).await;
                state.ws_frames.lock().unwrap().push(WsFrame {
                    fin: frame.fin,
                    opcode: frame.opcode,
                    payload: frame.payload,
                });
                sent
            }
            _ => break,
        };
        if sent.is_err() {
            break;
        }
    }
    let _ = io.shutdown().await;
}

/// `/ws/messages`: records each message whole, echoes data messages in `frames` frames.
async fn record_websocket(upgrade: OnUpgrade, state: Arc<State>, frames: usize) {
    let Ok(upgraded) = upgrade.await else {
        return;
    };
    let mut io = TokioIo::new(upgraded);
    // A data message being reassembled: (opcode, payload, frames so far).
    let mut partial: Option<(u8, Vec<u8>, usize)> = None;
    // Set once this side has sent its close (`close me`): the client's close then ends it.
    let mut closing = false;
    while let Some(frame) = ws::read_frame(&mut io).await {
        let record = |opcode, payload: &[u8], frames| {
            state.ws_messages.lock().unwrap().push(WsMessage {
                opcode,
                payload: payload.to_vec(),
                frames,
            });
        };
        let sent = match frame.opcode {
            ws::OP_CLOSE => {
                record(ws::OP_CLOSE, &frame.payload, 1);
                if !closing {
                    let _ = ws::write_frame(&mut io, true, ws::OP_CLOSE, &frame.payload).await;
                }
                break;
            }
            ws::OP_PING => {
                record(ws::OP_PING, &frame.payload, 1);
                ws::write_frame(&mut io, true, ws::OP_PONG, &frame.payload).await
            }
            ws::OP_PONG => {
                record(ws::OP_PONG, &frame.payload, 1);
                Ok(())
            }
            ws::OP_TEXT | ws::OP_BINARY | ws::OP_CONTINUATION => {
                let (opcode, mut payload, count) = match partial.take() {
                    Some(p) if frame.opcode == ws::OP_CONTINUATION => p,
                    Some(_) => break, // a new message inside a fragmented one
                    None if frame.opcode == ws::OP_CONTINUATION => break,
                    None => (frame.opcode, Vec::new(), 0),
                };
                payload.extend_from_slice(&frame.payload);
                if !frame.fin {
                    partial = Some((opcode, payload, count + 1));
                    continue;
                }
                record(opcode, &payload, count + 1);
                if opcode == ws::OP_TEXT && payload == b"close me" {
                    closing = true;
                    let close = [&4000u16.to_be_bytes()[..], b"server bye"].concat();
                    ws::write_frame(&mut io, true, ws::OP_CLOSE, &close).await
                } else {
                    let mut sent = echo_in_frames(&mut io, opcode, &payload, frames).await;
                    if sent.is_ok() && opcode == ws::OP_TEXT && payload == b"ping me" {
                        sent = ws::write_frame(&mut io, true, ws::OP_PING, b"srv-ping").await;
                    }
                    sent
                }
            }
            _ => break,
        };
        if sent.is_err() {
            break;
        }
    }
    let _ = io.shutdown().await;
}

/// Writes one data message as `frames` frames (at least one).
async fn echo_in_frames<W: AsyncWrite + Unpin>(
    io: &mut W,
    opcode: u8,
    payload: &[u8],
    frames: usize,
) -> std::io::Result<()> {
    let size = payload.len().div_ceil(frames.max(1)).max(1);
    let chunks: Vec<&[u8]> = if payload.is_empty() {
        vec![payload]
    } else {
        payload.chunks(size).collect()
    };
    for (i, chunk) in chunks.iter().enumerate() {
        let op = if i == 0 { opcode } else { ws::OP_CONTINUATION };
        ws::write_frame(io, i + 1 == chunks.len(), op, chunk).await?;
    }
    Ok(())
}

/// A short body followed by the trailer `grpc-status: 0`.
fn trailers() -> Response<RespBody> {
    let (tx, body) = channel_body();
    tokio::spawn(async move {
        let _ = tx
            .send(Frame::data(Bytes::from_static(b"trailers follow\n")))
            .await;
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static("0"));
        let _ = tx.send(Frame::trailers(trailers)).await;
    });
    let mut resp = response(StatusCode::OK, "text/plain", body);
    resp.headers_mut()
        .insert(header::TRAILER, HeaderValue::from_static("grpc-status"));
    resp
}

/// git's smart-HTTP ref advertisement for `git-upload-pack`, behind optional Basic auth.
fn git_refs(rec: &Recorded, query: &str, state: &Arc<State>) -> Response<RespBody> {
    if query_param(query, "service") != Some("git-upload-pack") {
        return text(StatusCode::FORBIDDEN, "only git-upload-pack is served\n");
    }
    let expected = state.git_password.lock().unwrap().clone();
    if let Some(expected) = expected {
        let password = rec.basic_credentials().map(|(_, password)| password);
        if password.as_deref() != Some(expected.as_bytes()) {
            let mut resp = text(StatusCode::UNAUTHORIZED, "bad credentials\n");
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"x\""),
            );
            return resp;
        }
    }
    let mut body = pkt_line("# service=git-upload-pack\n");
    body.push_str("0000");
    body.push_str(&pkt_line(&format!("{GIT_HEAD_SHA} HEAD\0side-band-64k\n")));
    body.push_str("0000");
    let mut resp = response(
        StatusCode::OK,
        "application/x-git-upload-pack-advertisement",
        full(body),
    );
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}

fn files(rec: &Recorded, path: &str, state: &Arc<State>) -> Response<RespBody> {
    let Some((dir, secret)) = state.files.lock().unwrap().clone() else {
        return text(StatusCode::NOT_FOUND, "no files are served\n");
    };
    let auth = rec.header_str("authorization").unwrap_or_default();
    let basic = rec.basic_credentials();
    let carried = auth == secret
        || auth.strip_prefix("Bearer ") == Some(secret.as_str())
        || basic.is_some_and(|(user, password)| {
            password == secret.as_bytes() || user == secret.as_bytes()
        });
    if !carried {
        let mut resp = text(StatusCode::UNAUTHORIZED, "credentials required\n");
        resp.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"files\""),
        );
        return resp;
    }
    let rel = path.trim_start_matches("/files/");
    if rel.split('/').any(|part| part == "..") {
        return text(StatusCode::BAD_REQUEST, "no ..\n");
    }
    let mut file = dir.join(rel);
    if rel.is_empty() || rel.ends_with('/') {
        file = file.join("index.html");
    } else if file.is_dir() {
        file = file.join("index.json");
    }
    match std::fs::read(&file) {
        Ok(data) => {
            let kind = match data.first() {
                Some(b'{') => "application/json",
                Some(b'<') => "text/html",
                _ => "application/octet-stream",
            };
            response(StatusCode::OK, kind, full(data))
        }
        Err(_) => text(StatusCode::NOT_FOUND, "no such file\n"),
    }
}

/// A git pkt-line: four hex digits of total length, then the payload.
fn pkt_line(payload: &str) -> String {
    format!("{:04x}{payload}", payload.len() + 4)
}

fn redirect(query: &str) -> Response<RespBody> {
    let Some(to) = query_param(query, "to") else {
        return text(StatusCode::BAD_REQUEST, "want /redirect?to=URL\n");
    };
    let Ok(location) = HeaderValue::from_str(to) else {
        return text(StatusCode::BAD_REQUEST, "bad redirect target\n");
    };
    let mut resp = text(StatusCode::FOUND, "redirecting\n");
    resp.headers_mut().insert(header::LOCATION, location);
    resp
}

/// See the module docs: a body encoded whatever the client accepts.
fn compressed(rec: &Recorded, query: &str) -> Response<RespBody> {
    use async_compression::Level;
    use async_compression::tokio::bufread::{BrotliEncoder, GzipEncoder, ZlibEncoder, ZstdEncoder};
    use tokio::io::{AsyncBufRead, AsyncReadExt, BufReader};

    let Some(codings) = query_param(query, "coding") else {
        return text(StatusCode::BAD_REQUEST, "want /compressed?coding=C\n");
    };
    let zeros = query_param(query, "zeros").and_then(|n| n.parse::<u64>().ok());
    let echo = query_param(query, "echo").map(|name| rec.header(name).unwrap_or_default().to_vec());
    let mut reader: Pin<Box<dyn AsyncRead + Send>> = match (zeros, echo) {
        (Some(n), _) => Box::pin(tokio::io::repeat(0).take(n)),
        (None, Some(value)) => Box::pin(std::io::Cursor::new(value)),
        (None, None) => return text(StatusCode::BAD_REQUEST, "want echo=NAME or zeros=N\n"),
    };
    for coding in codings.split(',') {
        let input: Pin<Box<dyn AsyncBufRead + Send>> =
            Box::pin(BufReader::with_capacity(64 * 1024, reader));
        reader = match coding {
            "gzip" => Box::pin(GzipEncoder::with_quality(input, Level::Fastest)),
            "deflate" => Box::pin(ZlibEncoder::with_quality(input, Level::Fastest)),
            "br" => Box::pin(BrotliEncoder::with_quality(input, Level::Fastest)),
            "zstd" => Box::pin(ZstdEncoder::with_quality(input, Level::Fastest)),
            _ => input,
        };
    }
    let (tx, body) = channel_body();
    tokio::spawn(async move {
        loop {
            let mut chunk = bytes::BytesMut::with_capacity(64 * 1024);
            match reader.read_buf(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {
                    if tx.send(Frame::data(chunk.freeze())).await.is_err() {
                        return;
                    }
                }
            }
        }
    });
    let mut resp = response(StatusCode::OK, "application/octet-stream", body);
    let value = codings.replace(',', ", ");
    if let Ok(value) = HeaderValue::from_str(&value) {
        resp.headers_mut().insert(header::CONTENT_ENCODING, value);
    }
    resp
}

fn status(code: u16) -> Response<RespBody> {
    match StatusCode::from_u16(code) {
        Ok(status) => text(status, &format!("status {code}\n")),
        Err(_) => text(StatusCode::BAD_REQUEST, "bad status code\n"),
    }
}

/// `(path, query)`; the query is empty when there is none.
fn split_target(target: &str) -> (&str, &str) {
    target.split_once('?').unwrap_or((target, ""))
}

/// The raw (not percent-decoded) value of `name` in a query string.
fn query_param<'q>(query: &'q str, name: &str) -> Option<&'q str> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find_map(|(key, value)| (key == name).then_some(value))
}

fn full(body: impl Into<Bytes>) -> RespBody {
    Full::new(body.into()).boxed()
}

fn text(status: StatusCode, body: &str) -> Response<RespBody> {
    response(status, "text/plain", full(body.to_owned()))
}

fn response(status: StatusCode, content_type: &'static str, body: RespBody) -> Response<RespBody> {
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

/// A response body fed frame by frame from a task; the sender blocks when the client is slow.
fn channel_body() -> (mpsc::Sender<Frame<Bytes>>, RespBody) {
    let (tx, rx) = mpsc::channel(4);
    (tx, ChannelBody(rx).boxed())
}

struct ChannelBody(mpsc::Receiver<Frame<Bytes>>);

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|frame| frame.map(Ok))
    }
}
