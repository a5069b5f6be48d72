//! HTTP/1.1 client connections, served by hyper, with idle keep-alive connections put to rest:
//! after [`REST_AFTER`] with nothing in flight, hyper's connection is taken apart (its read and
//! write buffers and its state) and only the client's stream is kept, with whatever
//! hyper had read but not used; the next byte from the client starts a new hyper connection
//! on the same stream, so the client sees one keep-alive connection throughout. (nginx frees
//! an idle keep-alive connection's buffers the same way.)
//!
//! hyper is asked to stop with its graceful shutdown, the only way to have it stop between two
//! messages (its state says whether a request body is still to be drained, which the stream
//! alone does not). One case loses the keep-alive: a client that pipelines, sending part of its
//! next request head before the previous response and the rest more than [`REST_AFTER`] later.
//! hyper then answers that request whole, with `connection: close`, and the connection is
//! closed, as HTTP allows a server to; nothing is lost, and the client opens a new connection
//! for what follows.
//!
//! Taking hyper's connection apart means upgrades are done here too: hyper hands back the
//! stream after a `101`, and [`Handoff`] passes it to the task that joins it to the server's.

use std::future::poll_fn;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{Request, Response};
use http_body::Body;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::Service;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::oneshot;

use super::body::BoxError;
use super::io::Prefixed;
use super::timeouts::{Activity, Expiry, Watched};

/// How long an HTTP/1.1 connection has nothing in flight before it is put to rest.
const REST_AFTER: Duration = Duration::from_millis(250);

/// The client's side of an upgraded connection.
pub trait ClientStream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> ClientStream for T {}

/// Where one connection's client stream goes after hyper has sent a `101`: the upgrade stage
/// [`expect`](Handoff::expect)s it before the response leaves, and [`serve`] sends it once
/// hyper has let go of the stream.
#[derive(Clone, Default)]
pub struct Handoff(Arc<Mutex<Option<Upgraded>>>);

type Upgraded = oneshot::Sender<Box<dyn ClientStream>>;

impl Handoff {
    /// The client's stream, once this connection's `101` has been sent.
    pub fn expect(&self) -> oneshot::Receiver<Box<dyn ClientStream>> {
        let (tx, rx) = oneshot::channel();
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(tx);
        rx
    }

    fn take(&self) -> Option<Upgraded> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

/// Serves HTTP/1.1 on `io` until the client closes (`None`) or [`Activity::expired`] says a
/// limit was reached (`Some`; an idle connection is closed first, for at most a second).
pub async fn serve<IO, S, B>(
    builder: http1::Builder,
    io: Watched<IO>,
    mut svc: S,
    activity: Arc<Activity>,
    handoff: Handoff,
    (head, idle): (Duration, Duration),
) -> Option<Expiry>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: Service<Request<Incoming>, Response = Response<B>> + Unpin,
    S::Future: Unpin,
    S::Error: Into<BoxError>,
    B: Body + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    let mut io = Prefixed::new(Bytes::new(), io);
    loop {
        // On the heap: a resting connection keeps none of hyper's room.
        let mut connection = Box::new(builder.serve_connection(TokioIo::new(io), svc));
        let mut resting = false;
        let mut begun = 0;
        let served = loop {
            let rest = (!resting).then_some(REST_AFTER);
            tokio::select! {
                served = poll_fn(|cx| connection.poll_without_shutdown(cx)) => break served,
                expiry = activity.expired(head, idle, rest) => match expiry {
                    Expiry::Rest => {
                        std::pin::Pin::new(&mut *connection).graceful_shutdown();
                        resting = true;
                        begun = activity.begun();
                    }
                    Expiry::Idle => {
                        std::pin::Pin::new(&mut *connection).graceful_shutdown();
                        let close = async {
                            if poll_fn(|cx| connection.poll_without_shutdown(cx)).await.is_ok() {
                                let _ = connection.into_parts().io.into_inner().shutdown().await;
                            }
                        };
                        let _ = tokio::time::timeout(Duration::from_secs(1), close).await;
                        return Some(Expiry::Idle);
                    }
                    Expiry::Head => return Some(Expiry::Head),
                },
            }
        };
        let parts = connection.into_parts();
        let (leftover, stream) = parts.io.into_inner().into_parts();
        let read = join(parts.read_buf, leftover);
        if let Some(upgraded) = handoff.take() {
            let _ = upgraded.send(Box::new(Prefixed::new(read, stream)));
            return None;
        }
        let mut stream = Prefixed::new(read, stream);
        if served.is_err() {
            return None;
        }
        if resting && activity.begun() != begun {
            // A request hyper had begun to read when the rest came was answered with
            // `connection: close` (the pipelined case above): close, as it said.
            resting = false;
        }
        if resting && !stream.has_prefix() {
            super::trim::freed();
            match wait_for_byte(&mut stream, &activity, (head, idle)).await {
                Ok(true) => {}
                Ok(false) => resting = false,
                Err(expiry) => return Some(expiry),
            }
        }
        if !resting {
            // hyper ended the connection (the client closed it, or asked to), or the client
            // closed it at rest: shut it down as hyper's own shutdown would.
            let _ = stream.shutdown().await;
            return None;
        }
        io = stream;
        svc = parts.service;
    }
}

/// Waits at rest for the client's next byte and puts it in front of `stream` (`Ok(true)`),
/// for the client to close (`Ok(false)`), or for a limit to expire (`Err`; an idle connection
/// is shut down first).
async fn wait_for_byte<IO>(
    stream: &mut Prefixed<Watched<IO>>,
    activity: &Activity,
    (head, idle): (Duration, Duration),
) -> Result<bool, Expiry>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let mut byte = [0u8; 1];
    tokio::select! {
        n = stream.read(&mut byte) => {
            let got = matches!(n, Ok(1));
            if got {
                stream.set_prefix(Bytes::copy_from_slice(&byte));
            }
            Ok(got)
        }
        expiry = activity.expired(head, idle, None) => {
            if expiry == Expiry::Idle {
                let _ = tokio::time::timeout(Duration::from_secs(1), stream.shutdown()).await;
            }
            Err(expiry)
        }
    }
}

fn join(first: Bytes, then: Bytes) -> Bytes {
    match (first.is_empty(), then.is_empty()) {
        (true, _) => then,
        (_, true) => first,
        _ => {
            let mut both = BytesMut::with_capacity(first.len() + then.len());
            both.extend_from_slice(&first);
            both.extend_from_slice(&then);
            both.freeze()
        }
    }
}
