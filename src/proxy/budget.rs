//! One memory budget for every request body the proxy reads whole before sending it on
//! (`limits.body_memory_mib`; see `service.rs`, step 5). A body takes its `Content-Length` from
//! the budget before a byte of it is read and gives it back when the body has gone upstream
//! (or was refused); a body that finds no room waits up to `limits.body_wait_secs`, and is
//! then refused without anything sent.
//!
//! Memory given back: freed memory mostly stays in the C allocator's arenas (one per proxy
//! thread), so after a flood the process would keep its peak size. [`trim_when_quiet`] hands
//! it back to the system once the proxy has been quiet for a moment after giving back much.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::body::BoxError;

pub struct Budget {
    room: Arc<Semaphore>,
    bytes: u64,
    /// Bytes given back so far.
    returned: Arc<AtomicU64>,
}

/// Part of the budget, given back when dropped.
pub struct Share {
    permit: OwnedSemaphorePermit,
    returned: Arc<AtomicU64>,
}

impl Share {
    /// Bytes this share holds.
    pub fn bytes(&self) -> u64 {
        self.permit.num_permits() as u64
    }
}

impl Drop for Share {
    fn drop(&mut self) {
        self.returned
            .fetch_add(self.permit.num_permits() as u64, Ordering::Relaxed);
    }
}

impl Budget {
    pub fn new(mib: u64) -> Budget {
        let bytes = mib
            .saturating_mul(1024 * 1024)
            .min(Semaphore::MAX_PERMITS as u64);
        Budget {
            room: Arc::new(Semaphore::new(bytes as usize)),
            bytes,
            returned: Arc::default(),
        }
    }

    /// The whole budget, bytes.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Takes `bytes` (at most [`Budget::bytes`] and 4 GiB), waiting up to `wait` for room;
    /// `None` if there was none in time.
    pub async fn take(&self, bytes: u64, wait: Duration) -> Option<Share> {
        self.taking(bytes, wait).await
    }

    /// [`Budget::take`] as a future that does not borrow the budget (for a stream that keeps
    /// it between polls).
    pub fn taking(
        &self,
        bytes: u64,
        wait: Duration,
    ) -> impl Future<Output = Option<Share>> + Send + 'static {
        let n = u32::try_from(bytes.min(self.bytes)).ok();
        let (room, returned) = (self.room.clone(), self.returned.clone());
        async move {
            match tokio::time::timeout(wait, room.acquire_many_owned(n?)).await {
                Ok(Ok(permit)) => Some(Share { permit, returned }),
                _ => None,
            }
        }
    }

    /// Bytes not taken now.
    #[cfg(test)]
    pub fn free(&self) -> u64 {
        self.room.available_permits() as u64
    }

    /// Bytes given back so far.
    pub fn returned(&self) -> u64 {
        self.returned.load(Ordering::Relaxed)
    }
}

/// How often [`trim_when_quiet`] looks; after two looks without change the proxy is quiet.
pub const TRIM_CHECK: Duration = Duration::from_secs(1);
/// What must have been given back since the last trim: body bytes, or ended connections
/// (each left some tens of KiB of buffers).
const TRIM_BYTES: u64 = 8 * 1024 * 1024;
const TRIM_CONNECTIONS: u64 = 64;

/// Watches what the proxy gives back (`given`: body bytes and ended connections, read from the
/// proxy while it lives) and returns freed memory to the system (`trim`) when, after at least
/// [`TRIM_BYTES`] or [`TRIM_CONNECTIONS`], nothing more has been given back for
/// two looks `check` apart: once per flood, never during steady traffic. Ends when `given`
/// does (`None`: the proxy is gone).
pub fn trim_when_quiet(
    check: Duration,
    mut given: impl FnMut() -> Option<(u64, u64)> + Send + 'static,
    trim: impl Fn() + Send + 'static,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("netcage-trim".into())
        .spawn(move || {
            let Some(mut trimmed) = given() else { return };
            let mut last = trimmed;
            let mut quiet = 0;
            loop {
                std::thread::sleep(check);
                let Some(now) = given() else { return };
                if now != last {
                    last = now;
                    quiet = 0;
                    continue;
                }
                quiet += 1;
                let much = now.0 - trimmed.0 >= TRIM_BYTES || now.1 - trimmed.1 >= TRIM_CONNECTIONS;
                if much && quiet >= 2 {
                    trim();
                    trimmed = now;
                }
            }
        })
        .map(drop)
}

/// A body read whole, holding its share of the budget until it has been sent (dropped).
pub struct Held {
    data: Option<Bytes>,
    _share: Share,
}

impl Held {
    pub fn new(data: Bytes, share: Share) -> Self {
        Held {
            data: (!data.is_empty()).then_some(data),
            _share: share,
        }
    }
}

impl Body for Held {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Poll::Ready(self.data.take().map(|d| Ok(Frame::data(d))))
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.data.as_ref().map_or(0, |d| d.len() as u64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_body_waits_for_room_then_is_refused() {
        let budget = Budget::new(1);
        let mib = 1024 * 1024;
        let a = budget.take(mib / 2, Duration::from_secs(1)).await.unwrap();
        let b = budget.take(mib / 2, Duration::from_secs(1)).await.unwrap();
        assert_eq!(budget.free(), 0);
        let started = tokio::time::Instant::now();
        assert!(budget.take(1, Duration::from_secs(3)).await.is_none());
        assert_eq!(started.elapsed(), Duration::from_secs(3));

        // Room made while it waits lets it in.
        let waiter = tokio::spawn({
            let room = budget.room.clone();
            async move {
                let budget = Budget {
                    room,
                    bytes: 1024 * 1024,
                    returned: Arc::default(),
                };
                budget.take(mib / 4, Duration::from_secs(3)).await.is_some()
            }
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        drop(Held::new(Bytes::from_static(b"x"), a));
        assert!(waiter.await.unwrap());
        drop(b);
        assert_eq!(budget.free(), mib);
        assert_eq!(budget.returned(), mib / 2 + mib / 2);
    }

    #[test]
    fn memory_is_trimmed_once_after_much_was_given_back_and_all_is_quiet() {
        use std::sync::atomic::AtomicUsize;
        let given = Arc::new(std::sync::Mutex::new(Some((0u64, 0u64))));
        let trims = Arc::new(AtomicUsize::new(0));
        let (g, t) = (given.clone(), trims.clone());
        let check = Duration::from_millis(50);
        trim_when_quiet(
            check,
            move || *g.lock().unwrap(),
            move || {
                t.fetch_add(1, Ordering::SeqCst);
            },
        )
        .unwrap();
        let set = |v| *given.lock().unwrap() = v;
        // A little given back: no trim.
        set(Some((1024, 3)));
        std::thread::sleep(check * 6);
        assert_eq!(trims.load(Ordering::SeqCst), 0);
        // A flood's worth, still going on (a change at every look): none yet.
        for i in 1..=18u64 {
            set(Some((1024 + i * TRIM_BYTES, 3)));
            std::thread::sleep(check / 3);
        }
        assert_eq!(trims.load(Ordering::SeqCst), 0);
        // Quiet: one trim, and no more while nothing changes.
        std::thread::sleep(check * 10);
        assert_eq!(trims.load(Ordering::SeqCst), 1);
        set(None);
    }
}
