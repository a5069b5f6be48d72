//! One memory budget for every request body the proxy reads whole before sending it on
//! (`limits.body_memory_mib`; see `service.rs`, step 5). A body takes its `Content-Length` from
//! the budget before a byte of it is read and gives it back when the body has gone upstream
//! (or was refused); a body that finds no room waits up to `limits.body_wait_secs`, and is
//! then refused without anything sent.
//!
//! No one command holds more than half of the budget at once ([`Budget::per_exec`]): a body
//! of an exec already holding that much waits like a body that finds no room, so one hostile
//! command of a `serve` cannot leave the others without room for theirs.
//!
//! Memory given back: freed memory mostly stays in the C allocator's arenas (one per proxy
//! thread), so after a flood the process would keep its peak size. [`trim_when_quiet`] hands
//! it back to the system once the proxy has been quiet for a moment after giving back much.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
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
    /// Each exec's own room, [`Budget::per_exec`] bytes (entries no share holds are dropped).
    execs: Mutex<HashMap<String, Arc<Semaphore>>>,
}

/// Part of the budget, given back when dropped.
pub struct Share {
    permit: OwnedSemaphorePermit,
    /// The same bytes from the exec's own room.
    _exec: Option<OwnedSemaphorePermit>,
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
            execs: Mutex::default(),
        }
    }

    /// What one exec may hold at once: half the budget.
    pub fn per_exec(&self) -> u64 {
        self.bytes / 2
    }

    /// `exec`'s own room (made when first asked for).
    fn room_of(&self, exec: &str) -> Arc<Semaphore> {
        let mut execs = self.execs.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(room) = execs.get(exec) {
            return room.clone();
        }
        // Execs come and go (serve): forget the rooms nothing holds or waits for.
        if execs.len() >= 64 {
            execs.retain(|_, room| Arc::strong_count(room) > 1);
        }
        let room = Arc::new(Semaphore::new(self.per_exec() as usize));
        execs.insert(exec.to_owned(), room.clone());
        room
    }

    /// The whole budget, bytes.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Takes `bytes` (at most [`Budget::bytes`] and 4 GiB), waiting up to `wait` for room;
    /// `None` if there was none in time.
    /// `exec` is the command the body is for (`None`: unattributed, or `netcage proxy`, which
    /// has no command: not held to [`Budget::per_exec`]).
    pub async fn take(&self, exec: Option<&str>, bytes: u64, wait: Duration) -> Option<Share> {
        self.taking(exec, bytes, wait).await
    }

    /// [`Budget::take`] as a future that does not borrow the budget (for a stream that keeps
    /// it between polls).
    pub fn taking(
        &self,
        exec: Option<&str>,
        bytes: u64,
        wait: Duration,
    ) -> impl Future<Output = Option<Share>> + Send + 'static {
        let bytes = bytes.min(self.bytes);
        let own = exec.map(|exec| (self.room_of(exec), bytes.min(self.per_exec())));
        let (room, returned) = (self.room.clone(), self.returned.clone());
        async move {
            let n = u32::try_from(bytes).ok()?;
            let both = async {
                let exec = match own {
                    Some((own, mine)) => Some(own.acquire_many_owned(mine as u32).await.ok()?),
                    None => None,
                };
                let permit = room.acquire_many_owned(n).await.ok()?;
                Some(Share {
                    permit,
                    _exec: exec,
                    returned,
                })
            };
            tokio::time::timeout(wait, both).await.ok().flatten()
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
        let a = budget
            .take(None, mib / 2, Duration::from_secs(1))
            .await
            .unwrap();
        let b = budget
            .take(None, mib / 2, Duration::from_secs(1))
            .await
            .unwrap();
        assert_eq!(budget.free(), 0);
        let started = tokio::time::Instant::now();
        assert!(budget.take(None, 1, Duration::from_secs(3)).await.is_none());
        assert_eq!(started.elapsed(), Duration::from_secs(3));

        // Room made while it waits lets it in.
        let waiter = tokio::spawn({
            let room = budget.room.clone();
            async move {
                let budget = Budget {
                    room,
                    bytes: 1024 * 1024,
                    returned: Arc::default(),
                    execs: Mutex::default(),
                };
                budget
                    .take(None, mib / 4, Duration::from_secs(3))
                    .await
                    .is_some()
            }
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        drop(Held::new(Bytes::from_static(b"x"), a));
        assert!(waiter.await.unwrap());
        drop(b);
        assert_eq!(budget.free(), mib);
        assert_eq!(budget.returned(), mib / 2 + mib / 2);
    }

    /// One exec holds at most half; the others still find room; a share given back lets the
    /// exec in again; rooms of execs nothing holds are forgotten.
    #[tokio::test(start_paused = true)]
    async fn no_exec_holds_more_than_half() {
        let budget = Budget::new(4);
        let mib = 1024 * 1024;
        let wait = Duration::from_secs(1);
        let a1 = budget.take(Some("exec-1"), mib, wait).await.unwrap();
        let _a2 = budget.take(Some("exec-1"), mib, wait).await.unwrap();
        assert!(budget.take(Some("exec-1"), 1, wait).await.is_none());
        assert_eq!(budget.free(), 2 * mib, "the refused exec took nothing");
        let _b = budget.take(Some("exec-2"), 2 * mib, wait).await.unwrap();
        assert_eq!(budget.free(), 0);
        drop(a1);
        assert!(budget.take(Some("exec-1"), mib, wait).await.is_some());
        // A body larger than half is taken as half from the exec's room (and whole from the
        // budget), so it can still be read.
        let big = Budget::new(2);
        assert!(big.take(Some("exec-9"), 2 * mib, wait).await.is_some());
        for i in 0..100 {
            drop(big.take(Some(&format!("exec-{i}")), 1, wait).await.unwrap());
        }
        assert!(big.execs.lock().unwrap().len() <= 64);
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
