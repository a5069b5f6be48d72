//! The sandbox's resolver (DESIGN §4): answers every query itself and forwards nothing. A names
//! the policy allows get a synthetic address from 198.18.0.0/15 that the transparent listener
//! maps back to the name; AAAA and other types get no data; denied names get NXDOMAIN. Real
//! resolution happens only in the proxy, for connections the policy allows.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};

use hickory_proto::op::{Message, MessageType, Metadata, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};

use super::{Proto, Proxy};
use crate::audit::Event;

const SYNTHETIC_BASE: u32 = u32::from_be_bytes([198, 18, 0, 0]);
const SYNTHETIC_SIZE: u32 = 1 << 17;
const TTL: u32 = 30;

/// Name ↔ synthetic address, shared by the resolver and the transparent listener.
#[derive(Default)]
pub struct SyntheticNames {
    inner: Mutex<Names>,
}

#[derive(Default)]
struct Names {
    by_name: HashMap<String, Ipv4Addr>,
    by_ip: HashMap<Ipv4Addr, String>,
}

impl SyntheticNames {
    /// The address for `name`, allocating one on first use. None when the range is exhausted.
    pub fn address_for(&self, name: &str) -> Option<Ipv4Addr> {
        let mut names = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(ip) = names.by_name.get(name) {
            return Some(*ip);
        }
        let n = names.by_name.len() as u32 + 1;
        if n >= SYNTHETIC_SIZE - 1 {
            return None;
        }
        let ip = Ipv4Addr::from(SYNTHETIC_BASE + n);
        names.by_name.insert(name.to_owned(), ip);
        names.by_ip.insert(ip, name.to_owned());
        Some(ip)
    }

    /// The name a synthetic address stands for.
    pub fn name_of(&self, ip: IpAddr) -> Option<String> {
        let IpAddr::V4(v4) = ip else { return None };
        let names = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        names.by_ip.get(&v4).cloned()
    }

    /// Whether `ip` is in the synthetic range (even if unallocated).
    pub fn is_synthetic(ip: IpAddr) -> bool {
        matches!(ip, IpAddr::V4(v4) if (u32::from(v4) & !(SYNTHETIC_SIZE - 1)) == SYNTHETIC_BASE)
    }
}

/// What one query was and what it got, for the audit line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answered {
    pub name: String,
    pub qtype: String,
    pub allowed: bool,
}

/// Builds the reply to one DNS message. `allowed` is the egress policy for a name.
pub fn answer(
    query: &[u8],
    names: &SyntheticNames,
    allowed: &dyn Fn(&str) -> bool,
) -> Option<(Vec<u8>, Option<Answered>)> {
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
    let ok =
        crate::hosts::validate_pattern(&name).is_ok() && !name.starts_with("*.") && allowed(&name);
    if !ok {
        reply.metadata.response_code = ResponseCode::NXDomain;
    } else if q.query_type() == RecordType::A {
        match names.address_for(&name) {
            Some(ip) => {
                reply.add_answer(Record::from_rdata(q.name().clone(), TTL, RData::A(A(ip))));
            }
            None => reply.metadata.response_code = ResponseCode::ServFail,
        }
    }
    let answered = Answered {
        name,
        qtype: q.query_type().to_string(),
        allowed: ok,
    };
    Some((reply.to_vec().ok()?, Some(answered)))
}

fn log(proxy: &Proxy, answered: &Answered, peer: Option<SocketAddr>) {
    let mut event = Event::new("dns", if answered.allowed { "allow" } else { "block" });
    if let Some(peer) = peer {
        event.exec = proxy.exec_of(peer, Proto::Udp);
        event.client = Some(peer.to_string());
    }
    event.host = Some(answered.name.clone());
    event.method = Some(answered.qtype.clone());
    if !answered.allowed {
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
    proxy.cfg.audit.log(event);
}

/// `peer` is the querying UDP socket (a TCP query's exec comes from its connection).
fn reply_for(
    proxy: &Proxy,
    names: &SyntheticNames,
    query: &[u8],
    peer: Option<SocketAddr>,
) -> Option<Vec<u8>> {
    let allowed = |name: &str| proxy.cfg.policy.egress(name).allowed;
    let (reply, answered) = answer(query, names, &allowed)?;
    if let Some(a) = &answered {
        log(proxy, a, peer);
    }
    Some(reply)
}

/// Serves DNS over UDP on one socket until it fails.
pub async fn serve_udp(proxy: Arc<Proxy>, names: Arc<SyntheticNames>, socket: UdpSocket) {
    let mut buf = vec![0u8; 4096];
    loop {
        let Ok((n, peer)) = socket.recv_from(&mut buf).await else {
            continue;
        };
        if let Some(reply) = reply_for(&proxy, &names, &buf[..n], Some(peer)) {
            let _ = socket.send_to(&reply, peer).await;
        }
    }
}

/// Serves DNS over TCP (length-prefixed messages).
pub async fn serve_tcp(proxy: Arc<Proxy>, names: Arc<SyntheticNames>, listener: TcpListener) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            continue;
        };
        let (proxy, names) = (proxy.clone(), names.clone());
        tokio::spawn(async move {
            loop {
                let Ok(len) = stream.read_u16().await else {
                    return;
                };
                let mut query = vec![0u8; len as usize];
                if stream.read_exact(&mut query).await.is_err() {
                    return;
                }
                let Some(reply) = reply_for(&proxy, &names, &query, None) else {
                    return;
                };
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

    #[test]
    fn allowed_names_get_stable_synthetic_addresses() {
        let names = SyntheticNames::default();
        let allow = |n: &str| n != "evil.example";
        let (reply, answered) =
            answer(&query("API.GitHub.com.", RecordType::A), &names, &allow).unwrap();
        let reply = Message::from_vec(&reply).unwrap();
        assert_eq!(reply.metadata.id, 4242);
        let Some(RData::A(A(ip))) = reply.answers.first().map(|r| r.data.clone()) else {
            panic!("no A answer: {reply:?}");
        };
        assert!(SyntheticNames::is_synthetic(IpAddr::V4(ip)));
        assert_eq!(
            names.name_of(IpAddr::V4(ip)).as_deref(),
            Some("api.github.com")
        );
        assert_eq!(names.address_for("api.github.com"), Some(ip));
        assert!(answered.unwrap().allowed);
    }

    #[test]
    fn denied_names_get_nxdomain_and_aaaa_no_data() {
        let names = SyntheticNames::default();
        let allow = |n: &str| n != "evil.example";
        let (reply, answered) =
            answer(&query("evil.example.", RecordType::A), &names, &allow).unwrap();
        let reply = Message::from_vec(&reply).unwrap();
        assert_eq!(reply.metadata.response_code, ResponseCode::NXDomain);
        assert!(reply.answers.is_empty());
        assert!(!answered.unwrap().allowed);
        let (reply, _) = answer(&query("ok.example.", RecordType::AAAA), &names, &allow).unwrap();
        let reply = Message::from_vec(&reply).unwrap();
        assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
        assert!(reply.answers.is_empty());
        let (reply, _) = answer(
            &query("exfil-c2VjcmV0.ok.example.", RecordType::TXT),
            &names,
            &allow,
        )
        .unwrap();
        assert!(Message::from_vec(&reply).unwrap().answers.is_empty());
    }

    #[test]
    fn garbage_gets_no_reply() {
        let names = SyntheticNames::default();
        assert!(answer(b"\x00\x01garbage", &names, &|_| true).is_none());
        assert!(!SyntheticNames::is_synthetic("198.20.0.1".parse().unwrap()));
        assert!(SyntheticNames::is_synthetic(
            "198.19.255.1".parse().unwrap()
        ));
    }
}
