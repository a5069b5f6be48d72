//! The memory of WebSocket messages being reassembled, charged to the body budget
//! (`limits.body_memory_mib`, shared with request bodies read whole).
//!
//! tungstenite collects a message's frames (up to `limits.websocket_message_mib`) before it
//! hands the message over, so a side that sends most of a large message and stops, on many
//! connections, would hold that much of the proxy's memory each. Each side's stream is read
//! through a [`Metered`] reader: past [`FREE`] bytes read since the last whole data message,
//! every further [`CHUNK`] must first be taken from the budget (waiting up to
//! `limits.body_wait_secs`, then the connection is closed with 1009), and it is all given back
//! when the message has been relayed ([`Meter::message_done`]). Control frames (pings, pongs)
//! do not stay in memory, so their bytes are not counted.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, ReadBuf};

use crate::proxy::budget::{Budget, Share};

/// Read freely since the last message: a small message (tungstenite reads up to 128 KiB at a
/// time, so a read may go past it).
pub(in crate::proxy) const FREE: u64 = 64 * 1024;
/// Taken from the budget at a time past [`FREE`].
pub(in crate::proxy) const CHUNK: u64 = 1024 * 1024;
/// A control frame's header as sent by a client (2 bytes, 4 of mask; the longest length field
/// is not used for payloads ≤ 125).
const CONTROL_HEADER: u64 = 6;

/// What one side's reader has read since its last message, and the budget it holds for that.
#[derive(Default)]
pub(in crate::proxy) struct Meter {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    since_message: u64,
    shares: Vec<Share>,
    /// The budget had no room in time: the read failed for that.
    exhausted: bool,
}

impl State {
    fn charged(&self) -> u64 {
        self.shares.iter().map(Share::bytes).sum()
    }
}

impl Meter {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A whole data message has been relayed: what it took is given back.
    pub fn message_done(&self) {
        let mut state = self.state();
        state.since_message = 0;
        state.shares.clear();
    }

    /// A control frame with `payload` bytes was read: it is not kept.
    pub fn control_done(&self, payload: usize) {
        let mut state = self.state();
        state.since_message = state
            .since_message
            .saturating_sub(payload as u64 + CONTROL_HEADER);
        // Give back what the reader would not need to read on.
        while let Some(last) = state.shares.last() {
            let remaining = state.charged() - last.bytes();
            if state.since_message >= FREE + remaining {
                break;
            }
            state.shares.pop();
        }
    }

    /// Whether the last read failed because the budget had no room.
    pub fn exhausted(&self) -> bool {
        self.state().exhausted
    }

    #[cfg(test)]
    pub fn charged(&self) -> u64 {
        self.state().charged()
    }
}

type Taking = Pin<Box<dyn Future<Output = Option<Share>> + Send>>;

/// A stream whose reads are charged to the budget through its [`Meter`].
pub(in crate::proxy) struct Metered<T> {
    inner: T,
    meter: Arc<Meter>,
    budget: Arc<Budget>,
    /// The exec whose connection this is (its share of the budget is bounded).
    exec: Option<String>,
    wait: Duration,
    taking: Option<Taking>,
}

impl<T> Metered<T> {
    pub fn new(
        inner: T,
        meter: Arc<Meter>,
        budget: Arc<Budget>,
        exec: Option<String>,
        wait: Duration,
    ) -> Self {
        Metered {
            inner,
            meter,
            budget,
            exec,
            wait,
            taking: None,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Metered<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if let Some(taking) = this.taking.as_mut() {
                let share = ready!(taking.as_mut().poll(cx));
                this.taking = None;
                let mut state = this.meter.state();
                match share {
                    Some(share) => state.shares.push(share),
                    None => {
                        state.exhausted = true;
                        return Poll::Ready(Err(io::Error::other(
                            "limits.body_memory_mib: no room for a WebSocket message",
                        )));
                    }
                }
            }
            let state = this.meter.state();
            if state.since_message < FREE + state.charged() {
                break;
            }
            drop(state);
            let taking = this.budget.taking(this.exec.as_deref(), CHUNK, this.wait);
            this.taking = Some(Box::pin(taking));
        }
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        let read = (buf.filled().len() - before) as u64;
        this.meter.state().since_message += read;
        Poll::Ready(Ok(()))
    }
}

crate::proxy::io::write_through_inner!(Metered);

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Reading past FREE takes budget chunk by chunk; a finished message gives it all back;
    /// with no room the read fails and says why.
    #[tokio::test]
    async fn reads_are_charged_and_given_back() {
        let budget = Arc::new(Budget::new(2)); // 2 MiB
        let (mut writer, reader) = tokio::io::duplex(64 * 1024);
        let meter = Arc::new(Meter::default());
        let mut metered = Metered::new(
            reader,
            meter.clone(),
            budget.clone(),
            None,
            Duration::from_millis(50),
        );
        let feed = tokio::spawn(async move {
            let block = vec![7u8; 64 * 1024];
            while writer.write_all(&block).await.is_ok() {}
        });
        let mut buf = vec![0u8; 64 * 1024];
        let mut read = 0u64;
        while read < FREE {
            read += metered.read(&mut buf).await.unwrap() as u64;
        }
        assert_eq!(meter.charged(), 0);
        read += metered.read(&mut buf).await.unwrap() as u64;
        assert_eq!(meter.charged(), CHUNK, "read {read}");
        while read < FREE + 2 * CHUNK {
            read += metered.read(&mut buf).await.unwrap() as u64;
        }
        assert_eq!(budget.free(), 0);
        let err = metered.read(&mut buf).await.unwrap_err();
        assert!(err.to_string().contains("body_memory_mib"), "{err}");
        assert!(meter.exhausted());
        meter.message_done();
        assert_eq!(budget.free(), 2 * CHUNK);
        feed.abort();
    }

    #[test]
    fn control_frames_are_not_kept() {
        let meter = Meter::default();
        meter.state().since_message = FREE + 10;
        meter.control_done(100);
        assert_eq!(meter.state().since_message, FREE + 10 - 106);
    }
}
