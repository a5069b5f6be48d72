//! Memory that connections gave back, returned to the system once the proxy goes quiet.
//! glibc's malloc keeps what is freed in the middle of its heap for reuse, so a proxy that
//! held many busy connections kept their room after they went to rest or closed (RSS with
//! 1,000 keep-alive connections at rest 40.4 MiB, 35.6 after a `malloc_trim` called from gdb,
//! measured with `scripts/bench`'s nginx and load generator on a freshly started proxy). A tick every [`TICK`] trims when something was freed since the
//! last trim and nothing in the last tick: a busy proxy is never trimmed (its free memory is
//! about to be used again, and trimming it would only cost page faults), a proxy that has just
//! gone quiet is trimmed once.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// How often the proxy looks whether it has gone quiet.
const TICK: Duration = Duration::from_millis(250);

static FREED: AtomicU64 = AtomicU64::new(0);

/// A connection ended or went to rest: it gave memory back.
pub fn freed() {
    FREED.fetch_add(1, Ordering::Relaxed);
}

/// Trims at each tick where [`Quiet::tick`] says so, until the runtime it runs on stops.
pub async fn run() {
    let mut quiet = Quiet::default();
    let mut every = tokio::time::interval(TICK);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        if quiet.tick(FREED.load(Ordering::Relaxed)) {
            trim();
        }
    }
}

/// What the ticks have seen of the count of [`freed`] calls.
#[derive(Default)]
struct Quiet {
    /// The count at the last tick.
    seen: u64,
    /// The count at the last trim.
    trimmed: u64,
}

impl Quiet {
    /// Whether to trim now, the count being `now`: it moved since the last trim, and not since
    /// the last tick.
    fn tick(&mut self, now: u64) -> bool {
        let still = now == self.seen;
        self.seen = now;
        if still && now != self.trimmed {
            self.trimmed = now;
            return true;
        }
        false
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim() {
    // SAFETY: malloc_trim has no preconditions: it takes glibc's arena locks itself and only
    // releases pages that hold no allocation.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Other allocators return memory on their own terms.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() {}

#[cfg(test)]
mod tests {
    use super::Quiet;

    #[test]
    fn trims_once_when_the_frees_stop_and_never_while_they_go_on() {
        let mut q = Quiet::default();
        // Nothing freed yet: nothing to trim.
        assert!(!q.tick(0));
        assert!(!q.tick(0));
        // Frees at every tick (a busy proxy): no trim.
        assert!(!q.tick(3));
        assert!(!q.tick(9));
        assert!(!q.tick(20));
        // A tick with none: one trim, then none until more is freed.
        assert!(q.tick(20));
        assert!(!q.tick(20));
        assert!(!q.tick(20));
        assert!(!q.tick(21));
        assert!(q.tick(21));
        assert!(!q.tick(21));
    }
}
