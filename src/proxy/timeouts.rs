//! Timeouts for what a command holds open (`[limits]`, DESIGN §1.6): the request head and the
//! idle keep-alive of one client connection ([`Activity`], watched through [`Watched`]), a
//! body that stops sending ([`Stall`]: a request body, or an upstream's response), and a raw
//! TCP relay that carries nothing ([`relay`]). Each turns into one audit reason naming its
//! key: `limits.idle_secs: idle for 50 s`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use super::body::BoxError;

/// The audit reason for a limit that was reached: `limits.KEY: WHAT N s`.
pub fn reason(key: &str, what: &str, secs: f64) -> String {
    format!("{}{key}: {what} {secs} s", crate::audit::LIMIT_REASON)
}

const NOT_YET: u64 = u64::MAX;

/// One client connection's requests in flight, and since when it has had none (idle) or has
/// been receiving the next request head (HTTP/1.1).
pub struct Activity {
    start: Instant,
    in_flight: AtomicUsize,
    /// Requests begun so far.
    begun: AtomicU64,
    /// Milliseconds after `start` when the last request ended (or the connection began).
    idle_since: AtomicU64,
    /// Milliseconds after `start` when the first byte of the next request head arrived.
    head_since: AtomicU64,
    /// HTTP/2 frames between requests (settings, pings) are no request head: an HTTP/2
    /// connection is idle until a stream opens.
    h2: bool,
}

/// What [`Activity::expired`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// A request head took longer than `request_head_secs`.
    Head,
    /// Nothing was in flight for `idle_secs`.
    Idle,
    /// Nothing was in flight for the rest period asked for (`rest.rs`); not a limit.
    Rest,
}

impl Activity {
    pub fn new(h2: bool) -> Arc<Activity> {
        Arc::new(Activity {
            start: Instant::now(),
            in_flight: AtomicUsize::new(0),
            begun: AtomicU64::new(0),
            idle_since: AtomicU64::new(0),
            head_since: AtomicU64::new(NOT_YET),
            h2,
        })
    }

    fn now(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    /// A request (its head complete) begins; it is in flight until the guard is dropped.
    pub fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.begun.fetch_add(1, Ordering::Relaxed);
        self.head_since.store(NOT_YET, Ordering::Relaxed);
        InFlight(self.clone())
    }

    /// Requests begun so far on this connection.
    pub fn begun(&self) -> u64 {
        self.begun.load(Ordering::Relaxed)
    }

    /// Bytes arrived from the client: with nothing in flight on HTTP/1.1, a head begins.
    fn saw_bytes(&self) {
        if !self.h2
            && self.in_flight.load(Ordering::Relaxed) == 0
            && self.head_since.load(Ordering::Relaxed) == NOT_YET
        {
            self.head_since.store(self.now(), Ordering::Relaxed);
        }
    }

    /// Resolves when a request head has taken longer than `head`, or nothing has been in
    /// flight for `idle` (or, first, for `rest`). It wakes at most every `min(head, idle,
    /// rest)`, and nothing on a request's path wakes it: a deadline that starts after it went
    /// to sleep lies beyond its waking.
    pub async fn expired(&self, head: Duration, idle: Duration, rest: Option<Duration>) -> Expiry {
        let rest = rest.filter(|r| *r < idle);
        let step = head.min(idle).min(rest.unwrap_or(idle)).as_millis().max(1) as u64;
        let (head, idle) = (head.as_millis() as u64, idle.as_millis() as u64);
        let (after, quiet) = match rest {
            Some(r) => (r.as_millis() as u64, Expiry::Rest),
            None => (idle, Expiry::Idle),
        };
        loop {
            let now = self.now();
            let due = if self.in_flight.load(Ordering::Relaxed) > 0 {
                None
            } else {
                match self.head_since.load(Ordering::Relaxed) {
                    NOT_YET => Some((self.idle_since.load(Ordering::Relaxed) + after, quiet)),
                    since => Some((since + head, Expiry::Head)),
                }
            };
            let wait = match due {
                Some((at, what)) if now >= at => return what,
                Some((at, _)) => (at - now).min(step),
                None => step,
            };
            tokio::time::sleep(Duration::from_millis(wait)).await;
        }
    }
}

/// A request in flight on an [`Activity`]; dropped when its response has been sent (or
/// abandoned).
pub struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let a = &self.0;
        a.idle_since.store(a.now(), Ordering::Relaxed);
        a.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A response body that keeps its request in flight until it is done.
pub struct Tracked<B> {
    inner: B,
    _in_flight: InFlight,
}

impl<B> Tracked<B> {
    pub fn new(inner: B, in_flight: InFlight) -> Self {
        Tracked {
            inner,
            _in_flight: in_flight,
        }
    }
}

impl<B: Body + Unpin> Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }
    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A request's answer: its response, with the body [`Tracked`]. A future of its own rather
/// than an `async` block: an `async` block awaiting a future it captured keeps room for that
/// future twice (the request's future was 6,464 bytes that way, copied to the heap for every
/// request, and is 3,224 now).
pub struct Answer<F> {
    response: Pin<Box<F>>,
    in_flight: Option<InFlight>,
}

impl<F> Answer<F> {
    pub fn new(response: F, in_flight: InFlight) -> Self {
        Answer {
            response: Box::pin(response),
            in_flight: Some(in_flight),
        }
    }
}

impl<F, B, E> Future for Answer<F>
where
    F: Future<Output = Result<http::Response<B>, E>>,
{
    type Output = Result<http::Response<Tracked<B>>, E>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let response = ready!(self.response.as_mut().poll(cx))?;
        let in_flight = self
            .in_flight
            .take()
            .expect("an Answer is not polled after it is done");
        Poll::Ready(Ok(response.map(|body| Tracked::new(body, in_flight))))
    }
}

/// The client side of a connection, telling its [`Activity`] when bytes arrive.
pub struct Watched<IO> {
    inner: IO,
    activity: Arc<Activity>,
}

impl<IO> Watched<IO> {
    pub fn new(inner: IO, activity: Arc<Activity>) -> Self {
        Watched { inner, activity }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Watched<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        ready!(Pin::new(&mut self.inner).poll_read(cx, buf))?;
        if buf.filled().len() > before {
            self.activity.saw_bytes();
        }
        Poll::Ready(Ok(()))
    }
}

super::io::write_through_inner!(Watched);

/// Whose silence a [`Stall`] times.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Silent {
    /// The client, sending a request body (`limits.body_stall_secs`).
    RequestBody,
    /// The upstream, sending a response body (`limits.upstream_idle_secs`).
    Upstream,
}

/// A body that sent nothing for its limit.
#[derive(Debug, thiserror::Error)]
#[error("{}", .0)]
pub struct TimedOut(pub String);

impl TimedOut {
    fn new(who: Silent, limit: Duration) -> Self {
        let secs = limit.as_secs_f64();
        TimedOut(match who {
            Silent::RequestBody => {
                reason("body_stall_secs", "the request body sent nothing for", secs)
            }
            Silent::Upstream => reason("upstream_idle_secs", "the upstream sent nothing for", secs),
        })
    }

    /// The [`TimedOut`] in an error's chain of causes, if there is one.
    pub fn find<'e>(err: &'e (dyn std::error::Error + 'static)) -> Option<&'e TimedOut> {
        let mut cur = Some(err);
        while let Some(e) = cur {
            if let Some(t) = e.downcast_ref::<TimedOut>() {
                return Some(t);
            }
            cur = e.source();
        }
        None
    }
}

/// A body that fails with [`TimedOut`] when it has been waited on for `limit` without
/// producing a frame. Only time spent waiting on it counts: a body nobody polls (its reader
/// is slow) is not stalled. Each frame restarts the clock; the timer itself is moved at most
/// once per `limit`, not per frame.
pub struct Stall<B> {
    inner: B,
    limit: Duration,
    who: Silent,
    waiting_since: Option<Instant>,
    timer: Option<Pin<Box<Sleep>>>,
}

impl<B> Stall<B> {
    pub fn new(inner: B, limit: Duration, who: Silent) -> Self {
        Stall {
            inner,
            limit,
            who,
            waiting_since: None,
            timer: None,
        }
    }
}

/// What a [`Stall`] body fails with: its limit, or its source's own failure. (A concrete type,
/// not a [`BoxError`]: the proxy's futures must stay `Send`, which rustc cannot prove through a
/// `BoxError: Into<BoxError>` bound.)
#[derive(Debug)]
pub enum StallError {
    TimedOut(TimedOut),
    Source(BoxError),
}

impl std::fmt::Display for StallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StallError::TimedOut(t) => t.fmt(f),
            StallError::Source(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for StallError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StallError::TimedOut(t) => Some(t),
            StallError::Source(e) => Some(&**e),
        }
    }
}

impl<B> Body for Stall<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = StallError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, StallError>>> {
        let this = self.get_mut();
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            this.waiting_since = None;
            return Poll::Ready(frame.map(|f| f.map_err(|e| StallError::Source(e.into()))));
        }
        let deadline = *this.waiting_since.get_or_insert_with(Instant::now) + this.limit;
        let timer = this
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        // The timer may still be set for an earlier wait; it then fires early once and moves.
        while timer.as_mut().poll(cx).is_ready() {
            if Instant::now() >= deadline {
                return Poll::Ready(Some(Err(StallError::TimedOut(TimedOut::new(
                    this.who, this.limit,
                )))));
            }
            timer.as_mut().reset(deadline);
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Waits for an upstream's response head (`answer`) while the exchange moves: it gives up
/// (`None`) when the upstream has sent no answer for `limit` and the request body has not
/// moved on either (`sent` counts the body bytes sent so far: an upstream reading a long upload
/// is not silent). Without a streamed body that is `limit` after the request was sent; with
/// one, between `limit` and twice that after its last byte.
pub async fn answer<F: Future>(answer: F, sent: &AtomicU64, limit: Duration) -> Option<F::Output> {
    tokio::pin!(answer);
    let mut seen = sent.load(Ordering::Relaxed);
    loop {
        tokio::select! {
            out = &mut answer => return Some(out),
            _ = tokio::time::sleep(limit) => {
                let now = sent.load(Ordering::Relaxed);
                if now == seen {
                    return None;
                }
                seen = now;
            }
        }
    }
}

/// When a relay last carried a byte, and how many it carried each way.
struct Ticker {
    start: Instant,
    last: AtomicU64,
}

impl Ticker {
    fn touch(&self) {
        self.last
            .store(self.start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    async fn idle(&self, limit: Duration) {
        let limit = limit.as_millis() as u64;
        loop {
            let now = self.start.elapsed().as_millis() as u64;
            let at = self.last.load(Ordering::Relaxed) + limit;
            if now >= at {
                return;
            }
            tokio::time::sleep(Duration::from_millis(at - now)).await;
        }
    }
}

/// One side of a relay: counts what is read from it and touches the ticker.
struct Counted<'a, IO> {
    inner: IO,
    ticker: &'a Ticker,
    read: u64,
}

impl<IO: AsyncRead + Unpin> AsyncRead for Counted<'_, IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        ready!(Pin::new(&mut self.inner).poll_read(cx, buf))?;
        let n = buf.filled().len() - before;
        if n > 0 {
            self.read += n as u64;
            self.ticker.touch();
        }
        Poll::Ready(Ok(()))
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Counted<'_, IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// How a [`relay`] ended.
pub struct Relayed {
    /// Bytes from the client to the upstream, and back.
    pub up: u64,
    pub down: u64,
    /// Nothing went either way for the limit.
    pub idle: bool,
}

/// Copies bytes both ways until either side closes, or nothing has gone either way for
/// `idle`.
pub async fn relay<A, B>(client: A, upstream: B, idle: Duration) -> Relayed
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let ticker = Ticker {
        start: Instant::now(),
        last: AtomicU64::new(0),
    };
    let mut a = Counted {
        inner: client,
        ticker: &ticker,
        read: 0,
    };
    let mut b = Counted {
        inner: upstream,
        ticker: &ticker,
        read: 0,
    };
    let idle = tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut a, &mut b) => false,
        _ = ticker.idle(idle) => true,
    };
    Relayed {
        up: a.read,
        down: b.read,
        idle,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test(start_paused = true)]
    async fn an_idle_connection_and_a_slow_head_expire_by_their_own_limits() {
        let (head, idle) = (Duration::from_secs(3), Duration::from_secs(5));
        let a = Activity::new(false);
        let t = Instant::now();
        assert_eq!(a.expired(head, idle, None).await, Expiry::Idle);
        assert_eq!(t.elapsed().as_secs(), 5);

        // A request in flight for long is neither; after it, idle counts from its end.
        let a = Activity::new(false);
        let req = a.begin();
        let watch = {
            let a = a.clone();
            tokio::spawn(async move { a.expired(head, idle, None).await })
        };
        tokio::time::sleep(Duration::from_secs(20)).await;
        assert!(!watch.is_finished());
        drop(req);
        let t = Instant::now();
        assert_eq!(watch.await.unwrap(), Expiry::Idle);
        assert!((5..=6).contains(&t.elapsed().as_secs()));

        // The first byte of a head starts the head's clock, however long it was idle before.
        let a = Activity::new(false);
        let watch = {
            let a = a.clone();
            tokio::spawn(async move { a.expired(head, idle, None).await })
        };
        tokio::time::sleep(Duration::from_secs(4)).await;
        a.saw_bytes();
        let t = Instant::now();
        assert_eq!(watch.await.unwrap(), Expiry::Head);
        assert_eq!(t.elapsed().as_secs(), 3);

        // HTTP/2 frames between requests are not a head.
        let a = Activity::new(true);
        a.saw_bytes();
        assert_eq!(a.expired(head, idle, None).await, Expiry::Idle);

        // A rest shorter than idle comes first; one as long as idle is not asked for.
        let a = Activity::new(false);
        let t = Instant::now();
        let rest = Some(Duration::from_secs(1));
        assert_eq!(a.expired(head, idle, rest).await, Expiry::Rest);
        assert_eq!(t.elapsed().as_secs(), 1);
        assert_eq!(a.expired(head, idle, Some(idle)).await, Expiry::Idle);
        assert_eq!(t.elapsed().as_secs(), 5);
    }

    /// A body that yields a frame each time its sender sends one.
    struct Channel(tokio::sync::mpsc::Receiver<Bytes>);

    impl Body for Channel {
        type Data = Bytes;
        type Error = std::convert::Infallible;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            self.0.poll_recv(cx).map(|d| d.map(|d| Ok(Frame::data(d))))
        }
    }

    fn channel() -> (tokio::sync::mpsc::Sender<Bytes>, Channel) {
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(1);
        (tx, Channel(rx))
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_stalls_only_when_it_sends_nothing_for_its_limit() {
        let limit = Duration::from_secs(2);
        let (tx, body) = channel();
        let mut body = Stall::new(body, limit, Silent::RequestBody);
        let sender = tokio::spawn(async move {
            // Ten frames 1.5 s apart: 15 s in all, never 2 s of silence.
            for _ in 0..10 {
                tokio::time::sleep(Duration::from_millis(1500)).await;
                tx.send(Bytes::from_static(b"x")).await.unwrap();
            }
            // Then silence, the sender kept open.
            tokio::time::sleep(Duration::from_secs(60)).await;
            drop(tx);
        });
        for _ in 0..10 {
            let frame = body.frame().await.unwrap().unwrap();
            assert_eq!(frame.into_data().unwrap(), "x");
        }
        let t = Instant::now();
        let err = body.frame().await.unwrap().unwrap_err();
        assert_eq!(t.elapsed(), limit);
        assert_eq!(
            err.to_string(),
            "limits.body_stall_secs: the request body sent nothing for 2 s"
        );
        sender.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn a_relay_ends_when_nothing_goes_either_way() {
        let (client, mut far) = tokio::io::duplex(64);
        let (upstream, mut far_up) = tokio::io::duplex(64);
        let talk = tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut buf = [0u8; 5];
            for _ in 0..3 {
                tokio::time::sleep(Duration::from_secs(3)).await;
                far.write_all(b"hello").await.unwrap();
                far_up.read_exact(&mut buf).await.unwrap();
            }
            tokio::time::sleep(Duration::from_secs(60)).await;
            (far, far_up)
        });
        let t = Instant::now();
        let done = relay(client, upstream, Duration::from_secs(4)).await;
        assert!(done.idle);
        assert_eq!((done.up, done.down), (15, 0));
        assert_eq!(t.elapsed().as_secs(), 13);
        talk.abort();
    }
}
