//! What one command may take of the proxy (DESIGN §1.6): open connections per exec, and the
//! sandbox's DNS query rate.
//!
//! - [`Connections`]: each exec (a `run`, or one `exec` of a `serve`) may hold
//!   `[limits] connections_per_exec` connections at once; connections no exec could be found
//!   for share one budget of the same size. A connection past the cap is reset at once (it is
//!   not left waiting) and gets an audit line; a burst of them is aggregated by the audit
//!   writer (identical refusals, one line per second and a count).
//!   At most [`AWAITING_EXEC`] accepted connections wait for their exec at once.
//! - [`TokenBucket`]: `[limits] dns_queries_per_sec`, with a burst of as many.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use socket2::SockRef;
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::{Proto, Proxy};
use crate::audit::Event;

/// Open connections per exec, capped.
pub struct Connections {
    cap: u32,
    /// Exec id (None: unattributed) → connections open now. Entries at zero are removed.
    open: Mutex<HashMap<Option<String>, u32>>,
    /// Connections accepted whose exec is not known yet (see [`ticket`]).
    unattributed: Arc<Semaphore>,
}

/// How many accepted connections may wait for their exec at once. Past that the accept loops
/// wait and the kernel queues new connections: a flood faster than the lookups cannot pile
/// up descriptors in the proxy before its cap applies.
pub const AWAITING_EXEC: usize = 1024;

/// A place among the connections waiting for their exec, taken before `accept` and given
/// back (dropped) once the exec is known.
pub struct Ticket {
    _place: Option<OwnedSemaphorePermit>,
}

/// Waits until fewer than [`AWAITING_EXEC`] accepted connections wait for their exec (at
/// once when the proxy attributes nothing).
pub async fn ticket(proxy: &Proxy) -> Ticket {
    let place = match proxy.attributes() {
        true => {
            let waiting = proxy.connections.unattributed.clone();
            waiting.acquire_owned().await.ok()
        }
        false => None,
    };
    Ticket { _place: place }
}

/// One open connection in its exec's budget; gives the place back when dropped.
pub struct Slot {
    budget: Arc<Connections>,
    exec: Option<String>,
}

impl Connections {
    pub fn new(cap: u32) -> Arc<Connections> {
        Arc::new(Connections {
            cap,
            open: Mutex::new(HashMap::new()),
            unattributed: Arc::new(Semaphore::new(AWAITING_EXEC)),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Option<String>, u32>> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A place for one more connection of `exec`, or None when it has `cap` open already.
    pub fn take(self: &Arc<Self>, exec: Option<&str>) -> Option<Slot> {
        let mut open = self.lock();
        let key = exec.map(str::to_owned);
        let n = open.entry(key.clone()).or_insert(0);
        if *n >= self.cap {
            return None;
        }
        *n += 1;
        Some(Slot {
            budget: self.clone(),
            exec: key,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.budget.lock();
        if let Some(n) = open.get_mut(&self.exec) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.exec);
            }
        }
    }
}

/// A connection let in: whose it is, and its place in that exec's budget (held while it is
/// open).
pub struct Admitted {
    pub exec: Option<String>,
    /// The process that opened it, when the eBPF program saw the connect.
    pub process: Option<Arc<crate::sandbox::bpf::Process>>,
    _slot: Option<Slot>,
}

/// Names the exec of a new connection and takes a place in its budget. At the cap the
/// connection is refused: reset (SO_LINGER 0) when the caller drops it, so the client sees
/// it closed at once, and one audit line. A proxy that attributes nothing (`netcage proxy`,
/// which has no command of its own) caps nothing.
pub async fn admit(
    proxy: &Proxy,
    stream: &TcpStream,
    client: SocketAddr,
    ticket: Ticket,
) -> Option<Admitted> {
    let process = crate::sandbox::bpf::process_of(stream).map(Arc::new);
    if !proxy.attributes() {
        return Some(Admitted {
            exec: None,
            process,
            _slot: None,
        });
    }
    let exec = proxy.exec_of(client, Proto::Tcp, process.clone()).await;
    drop(ticket);
    if let Some(slot) = proxy.connections.take(exec.as_deref()) {
        return Some(Admitted {
            exec,
            process,
            _slot: Some(slot),
        });
    }
    let _ = SockRef::from(stream).set_linger(Some(Duration::ZERO));
    let who = match &exec {
        Some(exec) => format!("{exec} has"),
        None => "processes netcage cannot attribute to an exec have".to_owned(),
    };
    let mut event = Event::new("connection", "block");
    event.exec = exec;
    super::name_process(&mut event, process.as_deref());
    event.client = Some(client.to_string());
    event.reason = Some(format!(
        "{who} {} connections open, the most [limits] connections_per_exec allows: reset",
        proxy.connections.cap
    ));
    proxy.cfg.audit.log(event);
    None
}

/// `rate` tokens a second, at most `rate` saved up (the burst).
#[derive(Debug)]
pub struct TokenBucket {
    rate: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// Starts full.
    pub fn new(rate: u32, now: Instant) -> Self {
        TokenBucket {
            rate: f64::from(rate),
            tokens: f64::from(rate),
            last: now,
        }
    }

    /// Takes one token if there is one.
    pub fn take(&mut self, now: Instant) -> bool {
        let earned = now.saturating_duration_since(self.last).as_secs_f64() * self.rate;
        self.tokens = (self.tokens + earned).min(self.rate);
        self.last = now.max(self.last);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_exec_has_its_own_cap_and_unattributed_ones_share_one() {
        let budget = Connections::new(2);
        let a1 = budget.take(Some("exec-1")).unwrap();
        let _a2 = budget.take(Some("exec-1")).unwrap();
        assert!(
            budget.take(Some("exec-1")).is_none(),
            "exec-1 is at its cap"
        );
        let _b = budget
            .take(Some("exec-2"))
            .expect("exec-2 is not starved by exec-1");
        let _n1 = budget.take(None).unwrap();
        let _n2 = budget.take(None).unwrap();
        assert!(
            budget.take(None).is_none(),
            "the unattributed share one budget"
        );
        let open = |exec: &str| budget.lock().get(&Some(exec.to_owned())).copied();
        assert_eq!(open("exec-1"), Some(2));
        drop(a1);
        assert_eq!(open("exec-1"), Some(1));
        let _a3 = budget
            .take(Some("exec-1"))
            .expect("a closed connection gives its place back");
        assert!(budget.take(Some("exec-1")).is_none());
    }

    #[test]
    fn closed_execs_leave_nothing_behind() {
        let budget = Connections::new(3);
        let slots: Vec<Slot> = (0..100)
            .map(|i| budget.take(Some(&format!("exec-{i}"))).unwrap())
            .collect();
        assert_eq!(budget.lock().len(), 100);
        drop(slots);
        assert!(budget.lock().is_empty());
    }

    #[test]
    fn the_bucket_allows_a_burst_of_rate_then_rate_per_second() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(500, t0);
        let burst = (0..10_000).filter(|_| bucket.take(t0)).count();
        assert_eq!(burst, 500, "a burst of as many as the rate");
        // 100 ms later: 50 more.
        let t1 = t0 + Duration::from_millis(100);
        assert_eq!((0..10_000).filter(|_| bucket.take(t1)).count(), 50);
        // A long pause saves up no more than the burst.
        let t2 = t1 + Duration::from_secs(60);
        assert_eq!((0..10_000).filter(|_| bucket.take(t2)).count(), 500);
        // A steady 10 s at twice the rate gets the rate through.
        let mut got = 0;
        for ms in 0..10_000u64 {
            let now = t2 + Duration::from_millis(ms);
            got += (0..1).filter(|_| bucket.take(now)).count();
            got += (0..1).filter(|_| bucket.take(now)).count();
        }
        assert!((4_990..=5_010).contains(&got), "{got}");
    }
}
