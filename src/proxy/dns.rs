//! The sandbox's resolver (DESIGN §4): answers every query itself and forwards nothing. A names
//! the policy allows get a synthetic address from 198.18.0.0/15 that the transparent listener
//! maps back to the name; AAAA and other types get no data; denied names get NXDOMAIN. Real
//! resolution happens only in the proxy, for connections the policy allows.
//!
//! Under a flood: the pool of 131,070 addresses recycles the least recently used name no
//! connection holds (names that carried a connection are kept over names only resolved, and
//! an address handed out less than a TTL ago is not given to another name), and queries for
//! names without an address are rate-limited per sandbox (`[limits] dns_queries_per_sec`,
//! REFUSED past it). A name that has its address is answered at any rate: a flood of new
//! names cannot keep the names in use from resolving.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, MessageType, Metadata, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{RData, Record, RecordType};
use lru::LruCache;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};

use super::quota::{self, TokenBucket};
use super::{Proto, Proxy};
use crate::audit::Event;

const SYNTHETIC_BASE: u32 = u32::from_be_bytes([198, 18, 0, 0]);
const SYNTHETIC_SIZE: u32 = 1 << 17;
/// Addresses handed out: 198.18.0.1 to 198.19.255.254.
const POOL: u32 = SYNTHETIC_SIZE - 2;
const TTL: u32 = 30;
/// How long an address stays with its name after it was last handed out or used: a client
/// may still hold the answer.
const QUARANTINE: Duration = Duration::from_secs(TTL as u64);

/// Name ↔ synthetic address, shared by the resolver and the transparent listener.
pub struct SyntheticNames {
    inner: Mutex<Names>,
}

struct Names {
    by_name: HashMap<Arc<str>, Ipv4Addr>,
    by_ip: HashMap<Ipv4Addr, Entry>,
    /// Idle addresses of names only resolved, least recently used first.
    resolved: LruCache<Ipv4Addr, ()>,
    /// Idle addresses of names that carried a connection, least recently used first.
    connected: LruCache<Ipv4Addr, ()>,
    /// Offset of the next address never handed out (from 1).
    next: u32,
    /// How many addresses there are.
    size: u32,
}

struct Entry {
    name: Arc<str>,
    /// Connections open to it now: while any is, the address is not recycled.
    open: u32,
    /// A connection was made to it (it is kept over names only resolved).
    connected: bool,
    /// When it was last handed out, or a connection to it ended.
    last: Instant,
}

impl Default for SyntheticNames {
    fn default() -> Self {
        Self::with_size(POOL)
    }
}

/// A connection's hold on its name's address (see [`SyntheticNames::hold`]).
pub struct Held {
    names: Arc<SyntheticNames>,
    ip: Ipv4Addr,
    /// The name the address stands for.
    pub name: String,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.names.release(self.ip, Instant::now());
    }
}

impl SyntheticNames {
    /// A pool of `size` addresses (tests use small ones).
    fn with_size(size: u32) -> Self {
        SyntheticNames {
            inner: Mutex::new(Names {
                by_name: HashMap::new(),
                by_ip: HashMap::new(),
                resolved: LruCache::unbounded(),
                connected: LruCache::unbounded(),
                next: 1,
                size: size.min(POOL),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Names> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The address for `name`, allocating one on first use. None when every address is held
    /// by an open connection or was handed out too recently to be given to another name.
    pub fn address_for(&self, name: &str) -> Option<Ipv4Addr> {
        self.address_at(name, Instant::now())
    }

    fn address_at(&self, name: &str, now: Instant) -> Option<Ipv4Addr> {
        let mut names = self.lock();
        let names = &mut *names;
        if let Some(&ip) = names.by_name.get(name) {
            if let Some(entry) = names.by_ip.get_mut(&ip) {
                entry.last = now;
                if entry.open == 0 {
                    let list = if entry.connected {
                        &mut names.connected
                    } else {
                        &mut names.resolved
                    };
                    list.promote(&ip);
                }
            }
            return Some(ip);
        }
        let ip = if names.next <= names.size {
            names.next += 1;
            Ipv4Addr::from(SYNTHETIC_BASE + names.next - 1)
        } else {
            names.recycle(now)?
        };
        let name: Arc<str> = name.into();
        names.by_name.insert(name.clone(), ip);
        names.by_ip.insert(
            ip,
            Entry {
                name,
                open: 0,
                connected: false,
                last: now,
            },
        );
        names.resolved.put(ip, ());
        Some(ip)
    }

    /// Whether `name` has an address now.
    pub fn has(&self, name: &str) -> bool {
        self.lock().by_name.contains_key(name)
    }

    /// The name a synthetic address stands for.
    pub fn name_of(&self, ip: IpAddr) -> Option<String> {
        let IpAddr::V4(v4) = ip else { return None };
        self.lock().by_ip.get(&v4).map(|e| e.name.to_string())
    }

    /// The name `ip` stands for, held for one connection: until the [`Held`] is dropped the
    /// address is not recycled, and afterwards the name is kept over names only resolved.
    pub fn hold(self: &Arc<Self>, ip: IpAddr) -> Option<Held> {
        let IpAddr::V4(v4) = ip else { return None };
        let mut names = self.lock();
        let entry = names.by_ip.get_mut(&v4)?;
        entry.open += 1;
        entry.connected = true;
        let name = entry.name.to_string();
        names.resolved.pop(&v4);
        names.connected.pop(&v4);
        Some(Held {
            names: self.clone(),
            ip: v4,
            name,
        })
    }

    fn release(&self, ip: Ipv4Addr, now: Instant) {
        let mut names = self.lock();
        let Some(entry) = names.by_ip.get_mut(&ip) else {
            return;
        };
        entry.open = entry.open.saturating_sub(1);
        entry.last = now;
        if entry.open == 0 {
            names.connected.put(ip, ());
        }
    }

    /// Whether `ip` is in the synthetic range (even if unallocated).
    pub fn is_synthetic(ip: IpAddr) -> bool {
        matches!(ip, IpAddr::V4(v4) if (u32::from(v4) & !(SYNTHETIC_SIZE - 1)) == SYNTHETIC_BASE)
    }
}

impl Names {
    /// Takes the address of the least recently used idle name, one only resolved if there is
    /// one, and only if it was last handed out more than [`QUARANTINE`] ago.
    fn recycle(&mut self, now: Instant) -> Option<Ipv4Addr> {
        for connected in [false, true] {
            let list = if connected {
                &mut self.connected
            } else {
                &mut self.resolved
            };
            let Some((&ip, _)) = list.peek_lru() else {
                continue;
            };
            let idle_since = self.by_ip.get(&ip).map(|e| e.last);
            if idle_since.is_some_and(|last| now.saturating_duration_since(last) < QUARANTINE) {
                continue;
            }
            list.pop_lru();
            if let Some(old) = self.by_ip.remove(&ip) {
                self.by_name.remove(&old.name);
            }
            return Some(ip);
        }
        None
    }
}

/// The first question of a query, read without parsing the rest.
struct Question {
    /// Lower case, no trailing dot.
    name: String,
    /// Every label is letters, digits, `-` or `_` (else the name can have no address).
    plain: bool,
    qtype: u16,
    /// Where the question ends.
    end: usize,
}

impl Question {
    /// The question of a standard query with exactly one; None for anything else (the full
    /// parser then decides).
    fn peek(msg: &[u8]) -> Option<Question> {
        let header = msg.get(..12)?;
        let flags = u16::from_be_bytes([header[2], header[3]]);
        let counts = [4, 6, 8, 10].map(|i| u16::from_be_bytes([header[i], header[i + 1]]));
        // QR = 0 (a query), opcode 0, one question, nothing else.
        if flags & 0xf800 != 0 || counts != [1, 0, 0, 0] {
            return None;
        }
        let mut at = 12;
        let mut name = String::new();
        let mut plain = true;
        loop {
            let len = usize::from(*msg.get(at)?);
            at += 1;
            if len == 0 {
                break;
            }
            // A compression pointer or an extended label: the full parser's business.
            if len > 63 || name.len() + len > 253 {
                return None;
            }
            let label = msg.get(at..at + len)?;
            at += len;
            if !name.is_empty() {
                name.push('.');
            }
            for &b in label {
                plain &= b.is_ascii_alphanumeric() || b == b'-' || b == b'_';
                name.push(char::from(b.to_ascii_lowercase()));
            }
        }
        let fixed = msg.get(at..at + 4)?;
        Some(Question {
            name,
            plain,
            qtype: u16::from_be_bytes([fixed[0], fixed[1]]),
            end: at + 4,
        })
    }

    /// REFUSED: the header with QR, RA and RCODE 5 (RD kept), then the question as sent.
    fn refused(&self, query: &[u8]) -> Vec<u8> {
        let mut reply = query[..self.end].to_vec();
        reply[2] = 0x80 | (query[2] & 0x01);
        reply[3] = 0x80 | 5;
        reply
    }

    fn over_rate(&self) -> Answered {
        Answered {
            name: self.name.clone(),
            qtype: RecordType::from(self.qtype).to_string(),
            outcome: Outcome::OverRate,
        }
    }
}

/// The resolver's state: the names and the query rate.
pub struct Resolver {
    pub names: Arc<SyntheticNames>,
    bucket: Mutex<TokenBucket>,
    /// Audit lines waiting for the exec of their query.
    awaiting_exec: Arc<AtomicUsize>,
}

/// What one query got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Allowed: an address for A, no data for other types.
    Answered,
    /// Not allowed by the policy (or not a host name): NXDOMAIN.
    Denied,
    /// Over `[limits] dns_queries_per_sec`: REFUSED.
    OverRate,
    /// No address free: SERVFAIL.
    PoolFull,
}

/// What one query was and what it got, for the audit line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answered {
    pub name: String,
    pub qtype: String,
    pub outcome: Outcome,
}

impl Resolver {
    /// `queries_per_sec`: `[limits] dns_queries_per_sec` (a burst of as many).
    pub fn new(names: Arc<SyntheticNames>, queries_per_sec: u32) -> Self {
        Resolver {
            names,
            bucket: Mutex::new(TokenBucket::new(queries_per_sec, Instant::now())),
            awaiting_exec: Arc::default(),
        }
    }

    fn take(&self, now: Instant) -> bool {
        self.bucket
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take(now)
    }

    /// Builds the reply to one DNS message. `allowed` is the egress policy for a name.
    pub fn answer(
        &self,
        query: &[u8],
        allowed: &dyn Fn(&str) -> bool,
    ) -> Option<(Vec<u8>, Option<Answered>)> {
        self.answer_at(query, allowed, Instant::now())
    }

    fn answer_at(
        &self,
        query: &[u8],
        allowed: &dyn Fn(&str) -> bool,
        now: Instant,
    ) -> Option<(Vec<u8>, Option<Answered>)> {
        // Over the rate, a query for a name without an address is refused at the cost of a
        // copy: a flood must cost the resolver less than it costs the flooder.
        let question = Question::peek(query);
        if let Some(q) = &question
            && !(q.plain && self.names.has(&q.name))
            && !self.take(now)
        {
            return Some((q.refused(query), Some(q.over_rate())));
        }
        let request = Message::from_vec(query).ok()?;
        if request.metadata.message_type != MessageType::Query {
            return None;
        }
        let mut reply = Message::new(
            request.metadata.id,
            MessageType::Response,
            request.metadata.op_code,
        );
        reply.metadata = Metadata::response_from_request(&request.metadata);
        reply.metadata.recursion_available = true;
        let Some(q) = request.queries.first() else {
            reply.metadata.response_code = ResponseCode::FormErr;
            return Some((reply.to_vec().ok()?, None));
        };
        reply.add_query(q.clone());
        let name = crate::hosts::normalize(&q.name().to_ascii());
        // A name that has its address costs nothing to answer; anything else takes a token.
        let outcome = if question.is_none() && !self.names.has(&name) && !self.take(now) {
            reply.metadata.response_code = ResponseCode::Refused;
            Outcome::OverRate
        } else if !(crate::hosts::validate_pattern(&name).is_ok()
            && !name.starts_with("*.")
            && allowed(&name))
        {
            reply.metadata.response_code = ResponseCode::NXDomain;
            Outcome::Denied
        } else if q.query_type() == RecordType::A {
            match self.names.address_at(&name, now) {
                Some(ip) => {
                    reply.add_answer(Record::from_rdata(q.name().clone(), TTL, RData::A(A(ip))));
                    Outcome::Answered
                }
                None => {
                    reply.metadata.response_code = ResponseCode::ServFail;
                    Outcome::PoolFull
                }
            }
        } else {
            Outcome::Answered
        };
        let answered = Answered {
            name,
            qtype: q.query_type().to_string(),
            outcome,
        };
        Some((reply.to_vec().ok()?, Some(answered)))
    }
}

fn log(proxy: &Proxy, answered: &Answered, exec: Option<String>, peer: Option<SocketAddr>) {
    let rate = proxy.cfg.policy.limits.dns_queries_per_sec;
    let decision = match answered.outcome {
        Outcome::Answered => "allow",
        Outcome::Denied | Outcome::OverRate => "block",
        Outcome::PoolFull => "error",
    };
    let mut event = Event::new("dns", decision);
    event.exec = exec;
    event.client = peer.map(|p| p.to_string());
    if answered.outcome == Outcome::OverRate {
        // The names of a flood are noise of the command's choosing: one line says how many
        // (the audit writer aggregates identical lines), without them.
        event.reason = Some(format!(
            "more than [limits] dns_queries_per_sec = {rate} queries a second for names without an address: REFUSED"
        ));
        proxy.cfg.audit.log(event);
        return;
    }
    event.host = Some(answered.name.clone());
    event.method = Some(answered.qtype.clone());
    match answered.outcome {
        Outcome::Denied => {
            let name = &answered.name;
            let why = if crate::hosts::validate_pattern(name).is_err() || name.starts_with("*.") {
                format!("{name:?} is not a host name")
            } else {
                let verdict = proxy.cfg.policy.egress(name);
                format!(
                    "{name} is not allowed by the egress policy ({})",
                    verdict.rule
                )
            };
            event.reason = Some(format!("{why}: NXDOMAIN"));
        }
        Outcome::PoolFull => {
            event.reason = Some(format!(
                "every synthetic address is held by an open connection or was handed out less than {TTL} s ago: SERVFAIL"
            ));
        }
        Outcome::Answered | Outcome::OverRate => {}
    }
    proxy.cfg.audit.log(event);
}

/// Logs one answered query with the exec that asked, once known; refusals over the rate
/// are not attributed (that would cost a look into /proc for each).
/// Past [`quota::AWAITING_EXEC`] lines waiting for theirs, the exec is left out.
fn log_attributed(proxy: &Arc<Proxy>, dns: &Resolver, answered: Answered, peer: SocketAddr) {
    let waiting = dns.awaiting_exec.clone();
    if answered.outcome == Outcome::OverRate
        || waiting.load(Ordering::Relaxed) >= quota::AWAITING_EXEC
    {
        log(proxy, &answered, None, Some(peer));
        return;
    }
    let mut exec = proxy.exec_of(peer, Proto::Udp, None);
    // Usually known at once (one exec running): logged in order, no task.
    match exec.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(exec) => log(proxy, &answered, exec, Some(peer)),
        Poll::Pending => {
            let proxy = proxy.clone();
            waiting.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(async move {
                let exec = exec.await;
                waiting.fetch_sub(1, Ordering::Relaxed);
                log(&proxy, &answered, exec, Some(peer));
            });
        }
    }
}

fn reply_for(proxy: &Proxy, dns: &Resolver, query: &[u8]) -> Option<(Vec<u8>, Option<Answered>)> {
    let allowed = |name: &str| proxy.cfg.policy.egress(name).allowed;
    dns.answer(query, &allowed)
}

/// Serves DNS over UDP on one socket until it fails.
pub async fn serve_udp(proxy: Arc<Proxy>, dns: Arc<Resolver>, socket: UdpSocket) {
    let mut buf = vec![0u8; 4096];
    loop {
        let Ok((n, peer)) = socket.recv_from(&mut buf).await else {
            continue;
        };
        if let Some((reply, answered)) = reply_for(&proxy, &dns, &buf[..n]) {
            let _ = socket.send_to(&reply, peer).await;
            if let Some(answered) = answered {
                log_attributed(&proxy, &dns, answered, peer);
            }
        }
    }
}

/// Serves DNS over TCP (length-prefixed messages). Each connection counts against its exec's
/// connection budget and is closed after `[limits] idle_secs` without a query.
pub async fn serve_tcp(proxy: Arc<Proxy>, dns: Arc<Resolver>, listener: TcpListener) {
    loop {
        let ticket = quota::ticket(&proxy).await;
        let Ok((mut stream, client)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        let (proxy, dns) = (proxy.clone(), dns.clone());
        tokio::spawn(async move {
            let Some(admitted) = quota::admit(&proxy, &stream, client, ticket).await else {
                return;
            };
            let idle = crate::policy::Limits::secs(proxy.cfg.policy.limits.idle_secs);
            loop {
                let Ok(Ok(len)) = tokio::time::timeout(idle, stream.read_u16()).await else {
                    return;
                };
                let mut query = vec![0u8; len as usize];
                if !matches!(
                    tokio::time::timeout(idle, stream.read_exact(&mut query)).await,
                    Ok(Ok(_))
                ) {
                    return;
                }
                let Some((reply, answered)) = reply_for(&proxy, &dns, &query) else {
                    return;
                };
                if let Some(answered) = answered {
                    log(&proxy, &answered, admitted.exec.clone(), Some(client));
                }
                let mut framed = (reply.len() as u16).to_be_bytes().to_vec();
                framed.extend_from_slice(&reply);
                if stream.write_all(&framed).await.is_err() {
                    return;
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::Query;
    use hickory_proto::rr::Name;

    fn query(name: &str, qtype: RecordType) -> Vec<u8> {
        let mut m = Message::new(4242, MessageType::Query, hickory_proto::op::OpCode::Query);
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
        m.to_vec().unwrap()
    }

    fn resolver() -> Resolver {
        Resolver::new(Arc::new(SyntheticNames::default()), 500)
    }

    fn answer(
        dns: &Resolver,
        name: &str,
        qtype: RecordType,
        allow: &dyn Fn(&str) -> bool,
        now: Instant,
    ) -> (Message, Answered) {
        let (reply, answered) = dns.answer_at(&query(name, qtype), allow, now).unwrap();
        (Message::from_vec(&reply).unwrap(), answered.unwrap())
    }

    #[test]
    fn allowed_names_get_stable_synthetic_addresses() {
        let dns = resolver();
        let allow = |n: &str| n != "evil.example";
        let (reply, answered) = answer(
            &dns,
            "API.GitHub.com.",
            RecordType::A,
            &allow,
            Instant::now(),
        );
        assert_eq!(reply.metadata.id, 4242);
        let Some(RData::A(A(ip))) = reply.answers.first().map(|r| r.data.clone()) else {
            panic!("no A answer: {reply:?}");
        };
        assert!(SyntheticNames::is_synthetic(IpAddr::V4(ip)));
        assert_eq!(
            dns.names.name_of(IpAddr::V4(ip)).as_deref(),
            Some("api.github.com")
        );
        assert_eq!(dns.names.address_for("api.github.com"), Some(ip));
        assert_eq!(answered.outcome, Outcome::Answered);
    }

    #[test]
    fn denied_names_get_nxdomain_and_aaaa_no_data() {
        let dns = resolver();
        let allow = |n: &str| n != "evil.example";
        let now = Instant::now();
        let (reply, answered) = answer(&dns, "evil.example.", RecordType::A, &allow, now);
        assert_eq!(reply.metadata.response_code, ResponseCode::NXDomain);
        assert!(reply.answers.is_empty());
        assert_eq!(answered.outcome, Outcome::Denied);
        let (reply, _) = answer(&dns, "ok.example.", RecordType::AAAA, &allow, now);
        assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
        assert!(reply.answers.is_empty());
        let (reply, _) = answer(
            &dns,
            "exfil-c2VjcmV0.ok.example.",
            RecordType::TXT,
            &allow,
            now,
        );
        assert!(reply.answers.is_empty());
    }

    #[test]
    fn garbage_gets_no_reply() {
        let dns = resolver();
        assert!(dns.answer(b"\x00\x01garbage", &|_| true).is_none());
        assert!(!SyntheticNames::is_synthetic("198.20.0.1".parse().unwrap()));
        assert!(SyntheticNames::is_synthetic(
            "198.19.255.1".parse().unwrap()
        ));
    }

    /// Limit: `dns_queries_per_sec = 500`, a burst of as many. Past it, names without an
    /// address get REFUSED; a name that has its address is answered at any rate; the rate
    /// comes back a second later.
    #[test]
    fn queries_past_the_rate_are_refused_but_names_in_use_still_resolve() {
        let dns = resolver();
        let t0 = Instant::now();
        let (_, first) = answer(&dns, "api.test.", RecordType::A, &|_| true, t0);
        assert_eq!(first.outcome, Outcome::Answered);
        let ip = dns.names.address_for("api.test").unwrap();
        let outcomes: Vec<Outcome> = (0..5_000)
            .map(|i| {
                answer(
                    &dns,
                    &format!("n{i}.flood.test."),
                    RecordType::A,
                    &|_| true,
                    t0,
                )
                .1
                .outcome
            })
            .collect();
        let answered = outcomes.iter().filter(|o| **o == Outcome::Answered).count();
        assert_eq!(answered, 499, "the burst (500, one taken by api.test)");
        assert_eq!(
            outcomes.iter().filter(|o| **o == Outcome::OverRate).count(),
            5_000 - 499
        );
        let (reply, _) = answer(&dns, "n4999.flood.test.", RecordType::A, &|_| true, t0);
        assert_eq!(reply.metadata.response_code, ResponseCode::Refused);
        assert_eq!(reply.metadata.id, 4242);
        for qtype in [RecordType::A, RecordType::AAAA] {
            let (reply, answered) = answer(&dns, "api.test.", qtype, &|_| true, t0);
            assert_eq!(answered.outcome, Outcome::Answered, "{qtype}");
            assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
        }
        assert_eq!(dns.names.address_for("api.test"), Some(ip));
        // A denied name costs a token too (its NXDOMAIN line is an audit line).
        let (_, denied) = answer(&dns, "evil.test.", RecordType::A, &|_| false, t0);
        assert_eq!(denied.outcome, Outcome::OverRate);
        let later = t0 + Duration::from_secs(1);
        let (_, fresh) = answer(&dns, "other.test.", RecordType::A, &|_| true, later);
        assert_eq!(fresh.outcome, Outcome::Answered);
    }

    /// Limit: a pool of 4 addresses (the real one has 131,070). New names take the least
    /// recently used idle name's address, once it was last handed out a TTL ago.
    #[test]
    fn the_pool_recycles_the_least_recently_used_idle_name() {
        let names = SyntheticNames::with_size(4);
        let t0 = Instant::now();
        let ips: Vec<Ipv4Addr> = (0..4)
            .map(|i| names.address_at(&format!("n{i}.test"), t0).unwrap())
            .collect();
        let distinct: std::collections::HashSet<_> = ips.iter().collect();
        assert_eq!(distinct.len(), 4);
        assert_eq!(
            names.address_at("new.test", t0 + Duration::from_secs(1)),
            None,
            "no address handed out less than a TTL ago goes to another name"
        );
        let t1 = t0 + QUARANTINE + Duration::from_secs(1);
        // n0 was asked for again: n1 is now the least recently used.
        assert_eq!(
            names.address_at("n0.test", t1 - Duration::from_secs(31)),
            Some(ips[0])
        );
        assert_eq!(names.address_at("new.test", t1), Some(ips[1]));
        assert_eq!(
            names.name_of(IpAddr::V4(ips[1])).as_deref(),
            Some("new.test")
        );
        assert!(!names.has("n1.test"));
        assert_eq!(
            names.address_at("n2.test", t1),
            Some(ips[2]),
            "kept its address"
        );
    }

    /// Limit: a pool of 3. A name with an open connection keeps its address however many
    /// names come; one that carried a connection is kept over names only resolved.
    #[test]
    fn names_in_use_and_names_used_survive_a_flood() {
        let names = Arc::new(SyntheticNames::with_size(3));
        let t0 = Instant::now();
        let api = names.address_at("api.test", t0).unwrap();
        let used = names.address_at("used.test", t0).unwrap();
        let open = names.hold(IpAddr::V4(api)).unwrap();
        assert_eq!(open.name, "api.test");
        drop(names.hold(IpAddr::V4(used)).unwrap());
        let mut now = t0;
        let mut flood_ips = std::collections::HashSet::new();
        for i in 0..1_000 {
            now += QUARANTINE + Duration::from_secs(1);
            if let Some(ip) = names.address_at(&format!("flood{i}.test"), now) {
                flood_ips.insert(ip);
            }
        }
        assert_eq!(
            flood_ips.len(),
            1,
            "the flood recycles one address among itself"
        );
        assert_eq!(names.address_at("api.test", now), Some(api), "held: kept");
        assert_eq!(names.address_at("used.test", now), Some(used), "used: kept");
        // Only when nothing else is left does a used name give way; a held one never does.
        let only = Arc::new(SyntheticNames::with_size(2));
        let a = only.address_at("api.test", t0).unwrap();
        let u = only.address_at("used.test", t0).unwrap();
        let held = only.hold(IpAddr::V4(a)).unwrap();
        drop(only.hold(IpAddr::V4(u)).unwrap());
        let later = t0 + QUARANTINE * 2;
        assert_eq!(only.address_at("new.test", later), Some(u));
        assert_eq!(
            only.address_at("newer.test", later),
            None,
            "SERVFAIL, not api.test"
        );
        drop(held);
        let last = later + QUARANTINE * 2;
        assert_eq!(
            only.address_at("newest.test", last),
            Some(u),
            "resolved only: first"
        );
        assert_eq!(
            only.address_at("newer.test", last),
            Some(a),
            "then the idle used one"
        );
    }

    /// A full pool answers SERVFAIL (and says so); it never hands out a held address.
    #[test]
    fn a_full_pool_is_servfail() {
        let dns = Resolver::new(Arc::new(SyntheticNames::with_size(1)), 500);
        let t0 = Instant::now();
        let (_, first) = answer(&dns, "a.test.", RecordType::A, &|_| true, t0);
        assert_eq!(first.outcome, Outcome::Answered);
        let (reply, second) = answer(&dns, "b.test.", RecordType::A, &|_| true, t0);
        assert_eq!(second.outcome, Outcome::PoolFull);
        assert_eq!(reply.metadata.response_code, ResponseCode::ServFail);
    }

    /// The quick look at a question agrees with the full parser, and whatever it cannot read
    /// goes to the full parser.
    #[test]
    fn the_quick_question_agrees_with_the_parser() {
        let q = Question::peek(&query("API.Test.", RecordType::AAAA)).unwrap();
        assert_eq!((q.name.as_str(), q.plain, q.qtype), ("api.test", true, 28));
        let refused = Message::from_vec(&q.refused(&query("API.Test.", RecordType::AAAA))).unwrap();
        assert_eq!(refused.metadata.response_code, ResponseCode::Refused);
        assert_eq!(refused.metadata.message_type, MessageType::Response);
        assert_eq!(refused.queries[0].name().to_ascii(), "API.Test.");
        let odd = Question::peek(&query("a_b.x-y.test.", RecordType::A)).unwrap();
        assert!(odd.plain);
        let mut binary = query("ab.test.", RecordType::A);
        binary[13] = 0xff;
        assert!(!Question::peek(&binary).unwrap().plain);
        for bad in [&b"\x00\x01"[..], &query("a.test.", RecordType::A)[..20]] {
            assert!(Question::peek(bad).is_none());
        }
        let mut pointer = query("a.test.", RecordType::A);
        pointer[12] = 0xc0;
        assert!(Question::peek(&pointer).is_none());
    }
}
