//! The proxy's own threads: one single-threaded tokio runtime per core. Each accepted
//! connection goes to the thread with the fewest connections and stays there with everything
//! it starts (its requests, its upstream connections, its upgrades), so no request ever wakes
//! a second thread. On a small, busy machine a cross-thread wake-up costs more than the request
//! itself: one runtime per core cut the proxy's CPU per request by a fifth to a quarter against
//! one multi-threaded runtime (scripts/bench, "proxy CPU µs/req").

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::thread::JoinHandle;

use tokio::sync::watch;

thread_local! {
    /// Which worker this thread is (None on threads that are not a proxy worker).
    static CURRENT: Cell<Option<usize>> = const { Cell::new(None) };
}

tokio::task_local! {
    /// What the connection this task serves keeps for as long as it is open.
    static CONNECTION: RefCell<Option<Kept>>;
}

/// What a connection keeps while it is open: its place in its worker's count and the guards
/// its code gave [`keep`] (its place in an exec's budget, its name's address). [`detach`]
/// hands it to the task that serves the rest of the connection.
pub struct Kept {
    // Dropped in this order: the guards are let go before the connection counts as ended.
    guards: Vec<Box<dyn Send>>,
    _served: Served,
}

/// Keeps `guard` until the connection the calling task serves ends, even if a task of its own
/// goes on serving it ([`detach`]). Outside a connection's task it is handed back, for the
/// caller to hold.
pub fn keep<G: Send + 'static>(guard: G) -> Option<G> {
    let mut guard = Some(guard);
    let _ = CONNECTION.try_with(|kept| {
        // The guard is taken only when there is somewhere to keep it.
        if let Some(kept) = kept.borrow_mut().as_mut()
            && let Some(g) = guard.take()
        {
            kept.guards.push(Box::new(g));
        }
    });
    guard
}

/// Takes what the calling task's connection keeps, for a task that goes on serving it (on
/// this worker): the task that accepted it can then end, and the futures that brought the
/// connection this far with it. None outside a connection's task, or once taken.
pub fn detach() -> Option<Kept> {
    CONNECTION
        .try_with(|kept| kept.borrow_mut().take())
        .ok()
        .flatten()
}

/// The index of the worker running the caller, if it runs on one.
pub fn current() -> Option<usize> {
    CURRENT.with(Cell::get)
}

pub struct Workers {
    workers: Vec<Worker>,
    /// Connections ended so far (on every worker).
    ended: Arc<AtomicU64>,
    stop: watch::Sender<bool>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

struct Worker {
    handle: tokio::runtime::Handle,
    /// Connections it is serving now.
    load: Arc<AtomicUsize>,
}

/// Decrements a worker's load when its connection ends, however it ends, and counts it.
struct Served(Arc<AtomicUsize>, Arc<AtomicU64>);

impl Drop for Served {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
        self.1.fetch_add(1, Ordering::Relaxed);
        super::trim::freed();
    }
}

impl Workers {
    /// One worker per core this process may use (at least one).
    pub fn start() -> std::io::Result<Workers> {
        let n = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self::start_n(n)
    }

    pub fn start_n(n: usize) -> std::io::Result<Workers> {
        let (stop, stopped) = watch::channel(false);
        let mut workers = Vec::with_capacity(n);
        let mut threads = Vec::with_capacity(n);
        for index in 0..n.max(1) {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            workers.push(Worker {
                handle: runtime.handle().clone(),
                load: Arc::default(),
            });
            let mut stopped = stopped.clone();
            // Signals belong to netcage's own handlers (sigwait, tokio's signal driver), not to
            // these threads; a new thread inherits this mask.
            let all = nix::sys::signal::SigSet::all();
            let previous = all.thread_swap_mask(nix::sys::signal::SigmaskHow::SIG_BLOCK);
            let thread = std::thread::Builder::new()
                .name(format!("netcage-proxy-{index}"))
                .spawn(move || {
                    CURRENT.with(|c| c.set(Some(index)));
                    runtime.block_on(async move {
                        let _ = stopped.wait_for(|stop| *stop).await;
                    });
                    // Drops every connection still on it (each queues its audit line); a DNS
                    // lookup still running on its blocking pool is not waited for long.
                    runtime.shutdown_timeout(std::time::Duration::from_millis(200));
                });
            if let Ok(previous) = previous {
                let _ = previous.thread_set_mask();
            }
            threads.push(thread?);
        }
        // On the first worker: it only runs when the proxy has gone quiet.
        workers[0].handle.spawn(super::trim::run());
        Ok(Workers {
            workers,
            ended: Arc::default(),
            stop,
            threads: Mutex::new(threads),
        })
    }

    pub fn len(&self) -> usize {
        self.workers.len()
    }

    /// Connections ended so far.
    pub fn ended(&self) -> u64 {
        self.ended.load(Ordering::Relaxed)
    }

    /// Runs one connection on the least busy worker. `conn` is built there, so sockets it
    /// registers (`TcpStream::from_std`) belong to that worker's reactor.
    pub fn spawn<F, Fut>(&self, conn: F)
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let worker = self
            .workers
            .iter()
            .min_by_key(|w| w.load.load(Ordering::Relaxed))
            .expect("at least one worker");
        worker.load.fetch_add(1, Ordering::Relaxed);
        let kept = Kept {
            guards: Vec::new(),
            _served: Served(worker.load.clone(), self.ended.clone()),
        };
        worker
            .handle
            .spawn(CONNECTION.scope(RefCell::new(Some(kept)), async move { conn().await }));
    }

    /// Stops every worker and waits until each has dropped its connections. From a worker
    /// thread it only asks them to stop.
    pub fn shutdown(&self) {
        let _ = self.stop.send(true);
        if current().is_some() {
            return;
        }
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|p| p.into_inner()));
        for thread in threads {
            let _ = thread.join();
        }
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_spread_over_workers_and_end_at_shutdown() {
        let workers = Workers::start_n(2).unwrap();
        let (ran_tx, ran_rx) = std::sync::mpsc::channel();
        let mut ended = Vec::new();
        for _ in 0..2 {
            let (hold, end) = tokio::sync::oneshot::channel::<()>();
            ended.push(end);
            let ran = ran_tx.clone();
            workers.spawn(move || async move {
                ran.send(current()).unwrap();
                // Runs until the worker drops it: `hold` never sends.
                let _hold = hold;
                std::future::pending::<()>().await
            });
        }
        let mut on: Vec<Option<usize>> = (0..2)
            .map(|_| {
                ran_rx
                    .recv_timeout(std::time::Duration::from_secs(5))
                    .unwrap()
            })
            .collect();
        on.sort();
        assert_eq!(on, [Some(0), Some(1)], "the second went to the idle worker");
        assert_eq!(current(), None);
        workers.shutdown();
        for mut end in ended {
            assert_eq!(
                end.try_recv(),
                Err(tokio::sync::oneshot::error::TryRecvError::Closed),
                "shutdown dropped the connection"
            );
        }
    }
}
