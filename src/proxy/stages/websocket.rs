//! Stage 5a, WebSocket messages: after a `101` for a WebSocket upgrade the proxy speaks
//! WebSocket to both sides (tungstenite: server toward the client, client toward the server)
//! instead of copying bytes, so each message is checked like a request body.
//!
//! - A message going out is reassembled from its frames (at most `limits.websocket_message_mib`;
//!   past it the connection is closed with 1009), then goes through the leak guard and the token
//!   scanner with the same decisions as a request body. A token that may not go to this host (or
//!   a guarded real value) closes the connection with 1008 and nothing of that message is sent.
//!   Each message that carried a token gets one audit line (`kind` `websocket`).
//! - A message coming back goes through the redactor of the connection's substituted values,
//!   which includes the values substituted in earlier messages.
//! - While a message is reassembled, its memory is charged to the body budget
//!   (`ws_memory.rs`); with no room in time the connection is closed with 1009.
//! - Pings, pongs and close frames pass (tungstenite also answers a ping at once, so one ping
//!   may be answered twice); their payloads are not scanned going out, and redacted coming back.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{Mutex, Notify};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};

use super::reflect::{self, ReflectSet};
use super::request_body::scan_whole;
use super::ws_memory::{Meter, Metered};
use crate::audit::Event;
use crate::proxy::Proxy;
use crate::proxy::decide::{BlockInfo, Decider};

/// After one side has ended, how long the other has to finish its close handshake.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// The largest control frame payload (RFC 6455 §5.5), and of a close reason (less the code).
const CONTROL_MAX: usize = 125;
const REASON_MAX: usize = 123;

/// What a WebSocket connection's messages are checked with: the host every decision is for,
/// the connection's substituted values, and the upgrade request's audit fields.
pub(in crate::proxy) struct Session {
    proxy: Arc<Proxy>,
    name: String,
    tls: bool,
    reflect: ReflectSet,
    /// The upgrade request's line (exec, client, host, destination, SNI, path), the model for
    /// each message's line.
    request: Event,
}

impl Session {
    pub fn new(
        proxy: Arc<Proxy>,
        name: &str,
        tls: bool,
        reflect: ReflectSet,
        request: &Event,
    ) -> Self {
        let request = Event {
            exec: request.exec.clone(),
            client: request.client.clone(),
            dst: request.dst.clone(),
            host: request.host.clone(),
            sni: request.sni.clone(),
            path: request.path.clone(),
            ..Event::default()
        };
        Session {
            proxy,
            name: name.to_owned(),
            tls,
            reflect,
            request,
        }
    }

    fn limit(&self) -> usize {
        let mib = self.proxy.cfg.policy.limits.websocket_message_mib;
        usize::try_from(mib.saturating_mul(1024 * 1024)).unwrap_or(usize::MAX)
    }

    /// A message going out, checked: `Ok` with the payload to send (tokens substituted), or the
    /// block. Writes the message's audit line if it carried a token.
    fn outgoing(&self, kind: &str, payload: Bytes) -> Result<Bytes, BlockInfo> {
        let started = Instant::now();
        let decider = Decider::new(self.proxy.clone(), &self.name, self.tls);
        let location = format!("websocket:{kind}");
        let size = payload.len() as u64;
        let guard = self.proxy.guard.for_host(&self.name);
        let verdict = match guard.as_ref().and_then(|set| set.find(&payload)) {
            Some(id) => Err(decider.leak(&location, id)),
            None => {
                let out = scan_whole(payload, &decider, &location);
                decider.blocked().map_or(Ok(out), Err)
            }
        };
        let record = decider.record.lock().unwrap_or_else(|p| p.into_inner());
        if record.uses.is_empty() {
            return verdict;
        }
        let mut event = self.line(started);
        event.tokens = record.uses.clone();
        event.bytes_up = size;
        drop(record);
        if let Err(block) = &verdict {
            event.decision = "block";
            event.reason = Some(format!(
                "{} (in a WebSocket message: the connection was closed with 1008)",
                block.reason
            ));
        } else {
            reflect::learn(&self.reflect, &decider);
        }
        self.proxy.cfg.audit.log(event);
        verdict
    }

    /// A message's audit line, without its findings.
    fn line(&self, started: Instant) -> Event {
        let mut event = self.request.clone();
        event.time = crate::audit::now_rfc3339();
        event.kind = "websocket";
        event.decision = "allow";
        event.duration_ms = started.elapsed().as_secs_f64() * 1000.0;
        event
    }

    /// `payload` coming back with every value substituted on the connection turned back into
    /// its token.
    fn redact(&self, payload: Bytes) -> Bytes {
        match reflect::current(&self.reflect).and_then(|r| r.redact(&payload)) {
            Some(redacted) => Bytes::from(redacted),
            None => payload,
        }
    }
}

/// The two sides' sending halves, and the note that a close frame has gone either way.
struct Sides<C, U> {
    to_client: Mutex<SplitSink<WebSocketStream<C>, Message>>,
    to_upstream: Mutex<SplitSink<WebSocketStream<U>, Message>>,
    closing: Notify,
}

impl<C, U> Sides<C, U>
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    /// Sends to the client; false if it cannot take more (closed or gone). After netcage has
    /// closed the client, tungstenite refuses further messages: nothing more goes.
    async fn to_client(&self, message: Message) -> bool {
        self.note_close(&message);
        self.to_client.lock().await.send(message).await.is_ok()
    }

    async fn to_upstream(&self, message: Message) -> bool {
        self.note_close(&message);
        self.to_upstream.lock().await.send(message).await.is_ok()
    }

    /// netcage ends the connection: both sides get `code`.
    async fn close_both(&self, code: CloseCode, reason: &str) {
        self.to_upstream(close(code, reason)).await;
        self.to_client(close(code, reason)).await;
    }

    fn note_close(&self, message: &Message) {
        if matches!(message, Message::Close(_)) {
            self.closing.notify_one();
        }
    }
}

/// Relays WebSocket messages between the client's and the server's upgraded connections
/// until both are closed, or [`CLOSE_GRACE`] after one side ended or a close frame went either
/// way, whichever comes first.
pub(in crate::proxy) async fn relay<C, U>(client: C, upstream: U, session: Session)
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let limit = session.limit();
    let config = WebSocketConfig::default()
        .max_message_size(Some(limit))
        .max_frame_size(Some(limit));
    let wait = crate::policy::Limits::secs(session.proxy.cfg.policy.limits.body_wait_secs);
    let meters = [Arc::new(Meter::default()), Arc::new(Meter::default())];
    let budget = &session.proxy.bodies;
    let exec = session.request.exec.clone();
    let client = Metered::new(
        client,
        meters[0].clone(),
        budget.clone(),
        exec.clone(),
        wait,
    );
    let upstream = Metered::new(upstream, meters[1].clone(), budget.clone(), exec, wait);
    let client = WebSocketStream::from_raw_socket(client, Role::Server, Some(config)).await;
    let upstream = WebSocketStream::from_raw_socket(upstream, Role::Client, Some(config)).await;
    let (to_client, from_client) = client.split();
    let (to_upstream, from_upstream) = upstream.split();
    let sides = Sides {
        to_client: Mutex::new(to_client),
        to_upstream: Mutex::new(to_upstream),
        closing: Notify::new(),
    };
    let out = outgoing(&session, from_client, &sides, &meters[0]);
    let back = incoming(&session, from_upstream, &sides, &meters[1]);
    let closed = async {
        sides.closing.notified().await;
        tokio::time::sleep(CLOSE_GRACE).await;
    };
    tokio::pin!(out, back, closed);
    tokio::select! {
        () = &mut out => { let _ = tokio::time::timeout(CLOSE_GRACE, back).await; }
        () = &mut back => { let _ = tokio::time::timeout(CLOSE_GRACE, out).await; }
        () = &mut closed => {}
    }
}

/// Client → server: each message checked ([`Session::outgoing`]) before it is sent.
async fn outgoing<C, U>(
    session: &Session,
    mut from_client: SplitStream<WebSocketStream<Metered<C>>>,
    sides: &Sides<Metered<C>, Metered<U>>,
    meter: &Meter,
) where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    // Once netcage has closed the connection, what the client still sends is read (so the
    // client gets the close frame, not a reset) and dropped.
    let mut closed = false;
    while let Some(next) = from_client.next().await {
        let message = match next {
            Ok(message) => message,
            Err(e) => {
                let (code, reason) = failure(&e, session, meter);
                sides.to_client(close(code, &reason)).await;
                sides.to_upstream(close(code, &reason)).await;
                return;
            }
        };
        let _relayed = Relayed::new(meter, &message);
        if closed {
            continue;
        }
        let checked = match message {
            Message::Text(text) => session
                .outgoing("text", Bytes::from(text))
                .map(|out| Utf8Bytes::try_from(out).map(Message::Text)),
            Message::Binary(data) => session
                .outgoing("binary", data)
                .map(|out| Ok(Message::Binary(out))),
            Message::Close(frame) => {
                // tungstenite has answered the client; the server gets the same close.
                sides.to_upstream(Message::Close(frame)).await;
                continue;
            }
            control @ (Message::Ping(_) | Message::Pong(_)) => Ok(Ok(control)),
            Message::Frame(_) => continue,
        };
        match checked {
            Ok(Ok(message)) => {
                if !sides.to_upstream(message).await {
                    return;
                }
            }
            Ok(Err(_)) => {
                sides.close_both(CloseCode::Error, NOT_TEXT).await;
                closed = true;
            }
            Err(block) => {
                let reason = format!(
                    "netcage blocked a message: its secret {} may not go to this host",
                    block.fingerprint
                );
                sides.close_both(CloseCode::Policy, &reason).await;
                closed = true;
            }
        }
    }
    // The client went away (without a close frame, unless it sent one before).
    sides.to_upstream(close(CloseCode::Away, "")).await;
}

/// Server → client: each message through the redactor.
async fn incoming<C, U>(
    session: &Session,
    mut from_upstream: SplitStream<WebSocketStream<Metered<U>>>,
    sides: &Sides<Metered<C>, Metered<U>>,
    meter: &Meter,
) where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    while let Some(next) = from_upstream.next().await {
        let message = match next {
            Ok(message) => message,
            Err(e) => {
                let (code, reason) = failure(&e, session, meter);
                sides.to_upstream(close(code, &reason)).await;
                sides.to_client(close(code, &reason)).await;
                return;
            }
        };
        let _relayed = Relayed::new(meter, &message);
        let message = match message {
            Message::Text(text) => match Utf8Bytes::try_from(session.redact(Bytes::from(text))) {
                Ok(text) => Message::Text(text),
                Err(_) => {
                    sides.close_both(CloseCode::Error, NOT_TEXT).await;
                    continue;
                }
            },
            Message::Binary(data) => Message::Binary(session.redact(data)),
            Message::Ping(data) => Message::Ping(control(session.redact(data))),
            Message::Pong(data) => Message::Pong(control(session.redact(data))),
            Message::Close(frame) => Message::Close(frame.map(|f| CloseFrame {
                code: f.code,
                reason: close_reason(session.redact(Bytes::from(f.reason))),
            })),
            Message::Frame(_) => continue,
        };
        sides.to_client(message).await;
    }
    // The server went away (without a close frame, unless it sent one before).
    sides.to_client(close(CloseCode::Away, "")).await;
}

/// The close code and reason for a side whose read failed with `e`: 1009 for a message over
/// the limit, 1007 for text that is not UTF-8, 1002 for a protocol error, 1001 when the
/// connection itself failed (then nothing can be sent on it, and the other side gets 1001).
fn failure(e: &WsError, session: &Session, meter: &Meter) -> (CloseCode, String) {
    if meter.exhausted() {
        let limits = &session.proxy.cfg.policy.limits;
        return (
            CloseCode::Size,
            format!(
                "netcage: no room in limits.body_memory_mib = {} within {} s",
                limits.body_memory_mib, limits.body_wait_secs
            ),
        );
    }
    match e {
        WsError::Capacity(_) => (
            CloseCode::Size,
            format!(
                "netcage: message over limits.websocket_message_mib = {}",
                session.proxy.cfg.policy.limits.websocket_message_mib
            ),
        ),
        WsError::Utf8(_) => (CloseCode::Invalid, "netcage: text is not UTF-8".to_owned()),
        WsError::Protocol(_) | WsError::AttackAttempt => (
            CloseCode::Protocol,
            "netcage: WebSocket protocol error".to_owned(),
        ),
        _ => (CloseCode::Away, String::new()),
    }
}

/// Gives a message's share of the budget back once it has been relayed (or dropped): all of
/// it for a data message, its own bytes for a control frame.
struct Relayed<'m> {
    meter: &'m Meter,
    control: Option<usize>,
}

impl<'m> Relayed<'m> {
    fn new(meter: &'m Meter, message: &Message) -> Self {
        let control = match message {
            Message::Ping(data) | Message::Pong(data) => Some(data.len()),
            _ => None,
        };
        Relayed { meter, control }
    }
}

impl Drop for Relayed<'_> {
    fn drop(&mut self) {
        match self.control {
            Some(len) => self.meter.control_done(len),
            None => self.meter.message_done(),
        }
    }
}

fn close(code: CloseCode, reason: &str) -> Message {
    Message::Close(Some(CloseFrame {
        code,
        reason: close_reason(Bytes::copy_from_slice(reason.as_bytes())),
    }))
}

/// A text message that is no longer UTF-8 after its tokens or values were replaced (which
/// secrets and tokens, both text, cannot cause; kept so no input makes netcage send invalid
/// text): the connection is closed with 1011.
const NOT_TEXT: &str = "netcage: the message could not be relayed as text";

/// A control frame payload, empty if redaction made it longer than a control frame may be.
fn control(payload: Bytes) -> Bytes {
    if payload.len() > CONTROL_MAX {
        Bytes::new()
    } else {
        payload
    }
}

/// A close reason, empty if it is too long for a close frame or not UTF-8.
fn close_reason(reason: Bytes) -> Utf8Bytes {
    if reason.len() > REASON_MAX {
        return Utf8Bytes::default();
    }
    Utf8Bytes::try_from(reason).unwrap_or_default()
}
