//! One memory budget for every request body the proxy reads whole before sending it on
//! (`limits.body_memory_mib`; see `service.rs`, step 5). A body takes its `Content-Length` from
//! the budget before a byte of it is read and gives it back when the body has gone upstream
//! (or was refused); a body that finds no room waits up to `limits.body_wait_secs`, and is
//! then refused without anything sent.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::body::BoxError;

pub struct Budget {
    room: Arc<Semaphore>,
    bytes: u64,
}

/// Part of the budget, given back when dropped.
pub struct Share(#[allow(dead_code)] OwnedSemaphorePermit);

impl Budget {
    pub fn new(mib: u64) -> Budget {
        let bytes = mib
            .saturating_mul(1024 * 1024)
            .min(Semaphore::MAX_PERMITS as u64);
        Budget {
            room: Arc::new(Semaphore::new(bytes as usize)),
            bytes,
        }
    }

    /// The whole budget, bytes.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Takes `bytes` (at most [`Budget::bytes`] and 4 GiB), waiting up to `wait` for room;
    /// `None` if there was none in time.
    pub async fn take(&self, bytes: u64, wait: Duration) -> Option<Share> {
        let n = u32::try_from(bytes.min(self.bytes)).ok()?;
        match tokio::time::timeout(wait, self.room.clone().acquire_many_owned(n)).await {
            Ok(Ok(permit)) => Some(Share(permit)),
            _ => None,
        }
    }

    /// Bytes not taken now.
    #[cfg(test)]
    pub fn free(&self) -> u64 {
        self.room.available_permits() as u64
    }
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
                };
                budget.take(mib / 4, Duration::from_secs(3)).await.is_some()
            }
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        drop(Held::new(Bytes::from_static(b"x"), a));
        assert!(waiter.await.unwrap());
        drop(b);
        assert_eq!(budget.free(), mib);
    }
}
