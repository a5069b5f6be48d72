//! The namespace's nftables rules, sent straight to the kernel: one netlink batch (table, two
//! chains, their rules), applied atomically. No `nft` binary: exec'ing it was a third of every
//! sandbox's start-up (about 6 ms), and the sandbox no longer needs nftables installed.
//!
//! The rules are exactly those of [`super::plan::nft_ruleset`] (the readable form), encoded as
//! `nft` itself encodes them (`nft --debug=netlink`); a test loads both into fresh namespaces
//! and compares what `nft list` shows. No crate covers this with a permissive licence
//! (rustables is GPL-3.0, nftnl binds the GPL libnftnl, nf_tables has no NAT, ct or log
//! expressions), so the few messages needed are built here.

use netlink_sys::protocols::NETLINK_NETFILTER;

use super::netlink::{self, BatchError::Failed, BatchError::Refused};
use super::plan::{NFLOG_GROUP, PodRules, Ports};

// linux/netlink.h, linux/netfilter/nfnetlink.h, linux/netfilter/nf_tables.h
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_CREATE: u16 = 0x400;
const NLM_F_APPEND: u16 = 0x800;
const NLA_F_NESTED: u16 = 0x8000;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFT_MSG_NEWTABLE: u16 = 0;
const NFT_MSG_DELTABLE: u16 = 2;
const NFT_MSG_NEWCHAIN: u16 = 3;
const NFT_MSG_NEWRULE: u16 = 6;
const NFPROTO_INET: u8 = 1;
const NFPROTO_IPV4: u8 = 2;
const NFPROTO_IPV6: u8 = 10;
const NF_INET_LOCAL_OUT: u32 = 3;
const NF_ACCEPT: i32 = 1;
const NF_DROP: i32 = 0;
const NFT_RETURN: i32 = -5;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const IPPROTO_ICMPV6: u8 = 58;
/// nd-router-solicit, nd-neighbor-solicit, nd-neighbor-advert, mld2-listener-report
const ICMPV6_NEIGHBOUR_DISCOVERY: [u8; 4] = [133, 135, 136, 143];

const NFTA_TABLE_NAME: u16 = 1;
const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_CHAIN_HOOK: u16 = 4;
const NFTA_HOOK_HOOKNUM: u16 = 1;
const NFTA_HOOK_PRIORITY: u16 = 2;
const NFTA_CHAIN_POLICY: u16 = 5;
const NFTA_CHAIN_TYPE: u16 = 7;
const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;
const NFTA_DATA_VALUE: u16 = 1;
const NFTA_DATA_VERDICT: u16 = 2;
const NFTA_VERDICT_CODE: u16 = 1;

/// Register 1 (a 16-byte register, as `nft` uses), and the verdict register.
const REG_1: u32 = 1;
const REG_VERDICT: u32 = 0;

const TABLE: &str = "netcage";

/// Loads the ruleset into the current network namespace (needs CAP_NET_ADMIN there).
pub fn load(ports: &Ports) -> Result<(), String> {
    let mut nat = dns_rules(ports);
    nat.extend(loopback_returns());
    nat.extend(tcp_rules(ports));
    let filter = filter_rules(None, &[], Expr::Verdict(NF_DROP));
    send_batch(&batch(&nat, &filter, false))
}

/// Loads a pod's ruleset ([`super::plan::pod_nft_ruleset`]) into the current network
/// namespace, replacing an `inet netcage` table already there in the same batch: atomic (the
/// namespace never sees a state without the rules) and idempotent (a restarted init container
/// loads the same rules again).
pub fn load_pod(rules: &PodRules) -> Result<(), String> {
    let ports = rules.ports();
    let mut nat = vec![uid_is(rules.proxy_uid, NFT_RETURN)];
    nat.extend(loopback_returns());
    nat.extend(dns_rules(&ports));
    nat.extend(tcp_rules(&ports));
    // The kernel's own IPv6 neighbour discovery has no socket (so no uid) and no conntrack
    // state: without these the sidecar could reach no IPv6 address off the pod. The app
    // cannot send them itself: an ICMPv6 ping socket sends only echo requests, and raw
    // sockets need NET_RAW.
    let filter = filter_rules(
        Some(rules.proxy_uid),
        &ICMPV6_NEIGHBOUR_DISCOVERY,
        Expr::RejectAdminProhibited,
    );
    send_batch(&batch(&nat, &filter, true))
}

fn send_batch((batch, acks): &(Vec<u8>, usize)) -> Result<(), String> {
    let (batch, acks) = (batch.as_slice(), *acks);
    // A kernel that had to load a module for an expression may ask for the batch again.
    let mut tries = 3;
    loop {
        match netlink::exchange(NETLINK_NETFILTER, batch, acks) {
            Err(Refused { errno, .. }) if errno == libc::EAGAIN && tries > 1 => tries -= 1,
            Err(Refused { errno, .. }) => {
                return Err(format!(
                    "loading the sandbox's nftables rules: the kernel refused them: {}",
                    std::io::Error::from_raw_os_error(errno)
                ));
            }
            Err(Failed(msg)) => {
                return Err(format!("loading the sandbox's nftables rules: {msg}"));
            }
            Ok(()) => return Ok(()),
        }
    }
}

/// The whole batch, and how many acknowledgements the kernel will send for it. `replace`:
/// the table is made (if missing) and deleted first, in the same transaction.
fn batch(nat: &[Vec<Expr>], filter: &[Vec<Expr>], replace: bool) -> (Vec<u8>, usize) {
    let mut b = Batch::default();
    b.control(NFNL_MSG_BATCH_BEGIN);
    if replace {
        b.object(NFT_MSG_NEWTABLE, NLM_F_CREATE, |m| {
            m.str(NFTA_TABLE_NAME, TABLE)
        });
        b.object(NFT_MSG_DELTABLE, 0, |m| m.str(NFTA_TABLE_NAME, TABLE));
    }
    b.object(NFT_MSG_NEWTABLE, NLM_F_CREATE, |m| {
        m.str(NFTA_TABLE_NAME, TABLE)
    });
    for (chain, kind, priority) in [("nat_out", "nat", -100i32), ("filter_out", "filter", 0)] {
        b.object(NFT_MSG_NEWCHAIN, NLM_F_CREATE, |m| {
            m.str(NFTA_CHAIN_TABLE, TABLE);
            m.str(NFTA_CHAIN_NAME, chain);
            m.nest(NFTA_CHAIN_HOOK, |m| {
                m.u32(NFTA_HOOK_HOOKNUM, NF_INET_LOCAL_OUT);
                m.u32(NFTA_HOOK_PRIORITY, priority as u32);
            });
            m.u32(NFTA_CHAIN_POLICY, NF_ACCEPT as u32);
            m.str(NFTA_CHAIN_TYPE, kind);
        });
    }
    for rule in nat {
        b.rule("nat_out", rule);
    }
    for rule in filter {
        b.rule("filter_out", rule);
    }
    b.control(NFNL_MSG_BATCH_END);
    (b.buf, b.acks)
}

/// One expression of a rule.
enum Expr {
    /// `meta load KEY => reg 1`
    Meta(u32),
    /// `payload load LEN @ BASE + OFFSET => reg 1`
    Payload { base: u32, offset: u32, len: u32 },
    /// `ct load state => reg 1`
    CtState,
    /// `bitwise reg 1 = (reg 1 & MASK) ^ 0`
    And(Vec<u8>),
    /// `cmp eq|neq reg 1 DATA`
    Cmp { neq: bool, data: Vec<u8> },
    /// `immediate reg 1 DATA`
    Value(Vec<u8>),
    /// `immediate reg 0 VERDICT`
    Verdict(i32),
    /// `redir proto_min reg 1` (the port in register 1)
    Redirect,
    /// `log prefix PREFIX group GROUP`
    Log { group: u16, prefix: &'static str },
    /// `reject with icmpx admin-prohibited`
    RejectAdminProhibited,
}

const META_SKUID: u32 = 10;
const META_NFPROTO: u32 = 15;
const META_L4PROTO: u32 = 16;
const PAYLOAD_NETWORK: u32 = 1;
const PAYLOAD_TRANSPORT: u32 = 2;
/// NF_CT_STATE_BIT(IP_CT_ESTABLISHED) | NF_CT_STATE_BIT(IP_CT_RELATED), host byte order.
const CT_ESTABLISHED_RELATED: u32 = 2 | 4;
const NF_NAT_RANGE_PROTO_SPECIFIED: u32 = 2;
/// NFT_REJECT_ICMPX_UNREACH, NFT_REJECT_ICMPX_ADMIN_PROHIBITED
const REJECT_ICMPX: u32 = 2;
const ICMPX_ADMIN_PROHIBITED: u8 = 3;

/// `meta skuid UID VERDICT` (the uid compared in host byte order, as nft does).
fn uid_is(uid: u32, verdict: i32) -> Vec<Expr> {
    vec![
        Expr::Meta(META_SKUID),
        Expr::Cmp {
            neq: false,
            data: uid.to_ne_bytes().to_vec(),
        },
        Expr::Verdict(verdict),
    ]
}

/// `meta KEY VALUE` (nfproto and l4proto are one byte).
fn meta_is(key: u32, value: u8) -> Vec<Expr> {
    vec![
        Expr::Meta(key),
        Expr::Cmp {
            neq: false,
            data: vec![value],
        },
    ]
}

fn family(nfproto: u8) -> Vec<Expr> {
    meta_is(META_NFPROTO, nfproto)
}

fn l4(proto: u8) -> Vec<Expr> {
    meta_is(META_L4PROTO, proto)
}

fn redirect(port: u16) -> Vec<Expr> {
    vec![Expr::Value(port.to_be_bytes().to_vec()), Expr::Redirect]
}

/// The destination address of an `nfproto` packet (at `offset` in its network header) starts
/// with `prefix`.
fn daddr_starts_with(nfproto: u8, offset: u32, prefix: &[u8]) -> Vec<Expr> {
    let mut e = family(nfproto);
    e.push(Expr::Payload {
        base: PAYLOAD_NETWORK,
        offset,
        len: prefix.len() as u32,
    });
    e.push(Expr::Cmp {
        neq: false,
        data: prefix.to_vec(),
    });
    e
}

/// `ip daddr 127.0.0.0/8` (as nft shortens it: the first byte is 127).
fn ipv4_loopback() -> Vec<Expr> {
    daddr_starts_with(NFPROTO_IPV4, 16, &[127])
}

/// `ip6 daddr ::1`
fn ipv6_loopback() -> Vec<Expr> {
    daddr_starts_with(NFPROTO_IPV6, 24, &std::net::Ipv6Addr::LOCALHOST.octets())
}

/// `meta nfproto F udp|tcp dport 53 redirect to :PORT`
fn dns_rules(p: &Ports) -> Vec<Vec<Expr>> {
    let mut rules = Vec::new();
    for (port, nfproto, proto) in [
        (p.dns4, NFPROTO_IPV4, IPPROTO_UDP),
        (p.dns6, NFPROTO_IPV6, IPPROTO_UDP),
        (p.dns_tcp4, NFPROTO_IPV4, IPPROTO_TCP),
        (p.dns_tcp6, NFPROTO_IPV6, IPPROTO_TCP),
    ] {
        if port == 0 {
            continue;
        }
        let mut r = family(nfproto);
        r.extend(l4(proto));
        r.push(Expr::Payload {
            base: PAYLOAD_TRANSPORT,
            offset: 2,
            len: 2,
        });
        r.push(Expr::Cmp {
            neq: false,
            data: 53u16.to_be_bytes().to_vec(),
        });
        r.extend(redirect(port));
        rules.push(r);
    }
    rules
}

/// `ip daddr 127.0.0.0/8 return`, `ip6 daddr ::1 return`
fn loopback_returns() -> Vec<Vec<Expr>> {
    let mut rules = Vec::new();
    for mut r in [ipv4_loopback(), ipv6_loopback()] {
        r.push(Expr::Verdict(NFT_RETURN));
        rules.push(r);
    }
    rules
}

/// `meta nfproto F meta l4proto tcp redirect to :PORT`
fn tcp_rules(p: &Ports) -> Vec<Vec<Expr>> {
    let mut rules = Vec::new();
    for (port, nfproto) in [(p.tcp4, NFPROTO_IPV4), (p.tcp6, NFPROTO_IPV6)] {
        if port == 0 {
            continue;
        }
        let mut r = family(nfproto);
        r.extend(l4(IPPROTO_TCP));
        r.extend(redirect(port));
        rules.push(r);
    }
    rules
}

/// Established/related and loopback accepted (and first the proxy's uid, when it is
/// exempt), everything else logged to NFLOG and given `last` (drop or reject).
fn filter_rules(exempt_uid: Option<u32>, icmpv6_types: &[u8], last: Expr) -> Vec<Vec<Expr>> {
    let exempt = exempt_uid.map(|uid| uid_is(uid, NF_ACCEPT));
    // `icmpv6 type T accept`
    let icmpv6 = icmpv6_types.iter().map(|&t| {
        let mut r = family(NFPROTO_IPV6);
        r.extend(l4(IPPROTO_ICMPV6));
        r.push(Expr::Payload {
            base: PAYLOAD_TRANSPORT,
            offset: 0,
            len: 1,
        });
        r.push(Expr::Cmp {
            neq: false,
            data: vec![t],
        });
        r.push(Expr::Verdict(NF_ACCEPT));
        r
    });
    let established = vec![
        Expr::CtState,
        Expr::And(CT_ESTABLISHED_RELATED.to_ne_bytes().to_vec()),
        Expr::Cmp {
            neq: true,
            data: 0u32.to_ne_bytes().to_vec(),
        },
        Expr::Verdict(NF_ACCEPT),
    ];
    let mut v4 = ipv4_loopback();
    v4.push(Expr::Verdict(NF_ACCEPT));
    let mut v6 = ipv6_loopback();
    v6.push(Expr::Verdict(NF_ACCEPT));
    let log = vec![
        Expr::Log {
            group: NFLOG_GROUP,
            prefix: "netcage-drop",
        },
        last,
    ];
    exempt
        .into_iter()
        .chain([established, v4, v6])
        .chain(icmpv6)
        .chain([log])
        .collect()
}

/// Netlink messages back to back, with their sequence numbers.
#[derive(Default)]
struct Batch {
    buf: Vec<u8>,
    seq: u32,
    acks: usize,
}

impl Batch {
    /// Starts a message; returns where its header is.
    fn header(&mut self, kind: u16, flags: u16, family: u8, res_id: u16) -> usize {
        let at = self.buf.len();
        self.seq += 1;
        self.buf.extend_from_slice(&0u32.to_ne_bytes()); // length, set by `finish`
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.buf.extend_from_slice(&flags.to_ne_bytes());
        self.buf.extend_from_slice(&self.seq.to_ne_bytes());
        self.buf.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel's
        // struct nfgenmsg
        self.buf.push(family);
        self.buf.push(0); // NFNETLINK_V0
        self.buf.extend_from_slice(&res_id.to_be_bytes());
        at
    }

    fn finish(&mut self, at: usize) {
        let len = (self.buf.len() - at) as u32;
        self.buf[at..at + 4].copy_from_slice(&len.to_ne_bytes());
    }

    fn control(&mut self, kind: u16) {
        let at = self.header(kind, NLM_F_REQUEST, 0, NFNL_SUBSYS_NFTABLES);
        self.finish(at);
    }

    fn object(&mut self, msg: u16, flags: u16, attrs: impl FnOnce(&mut Attrs)) {
        let kind = (NFNL_SUBSYS_NFTABLES << 8) | msg;
        let at = self.header(kind, NLM_F_REQUEST | NLM_F_ACK | flags, NFPROTO_INET, 0);
        attrs(&mut Attrs(&mut self.buf));
        self.finish(at);
        self.acks += 1;
    }

    fn rule(&mut self, chain: &str, exprs: &[Expr]) {
        self.object(NFT_MSG_NEWRULE, NLM_F_CREATE | NLM_F_APPEND, |m| {
            m.str(NFTA_RULE_TABLE, TABLE);
            m.str(NFTA_RULE_CHAIN, chain);
            m.nest(NFTA_RULE_EXPRESSIONS, |m| {
                for expr in exprs {
                    m.nest(NFTA_LIST_ELEM, |m| expr.encode(m));
                }
            });
        });
    }
}

impl Expr {
    fn encode(&self, m: &mut Attrs) {
        let name = match self {
            Expr::Meta(_) => "meta",
            Expr::Payload { .. } => "payload",
            Expr::CtState => "ct",
            Expr::And(_) => "bitwise",
            Expr::Cmp { .. } => "cmp",
            Expr::Value(_) | Expr::Verdict(_) => "immediate",
            Expr::Redirect => "redir",
            Expr::Log { .. } => "log",
            Expr::RejectAdminProhibited => "reject",
        };
        m.str(NFTA_EXPR_NAME, name);
        m.nest(NFTA_EXPR_DATA, |m| self.encode_data(m));
    }

    /// The expression's own attributes (numbered in its own NFTA_<NAME>_* space).
    fn encode_data(&self, m: &mut Attrs) {
        match self {
            Expr::Meta(key) => {
                m.u32(1, REG_1); // NFTA_META_DREG
                m.u32(2, *key); // NFTA_META_KEY
            }
            Expr::Payload { base, offset, len } => {
                m.u32(1, REG_1); // NFTA_PAYLOAD_DREG
                m.u32(2, *base); // NFTA_PAYLOAD_BASE
                m.u32(3, *offset); // NFTA_PAYLOAD_OFFSET
                m.u32(4, *len); // NFTA_PAYLOAD_LEN
            }
            Expr::CtState => {
                m.u32(1, REG_1); // NFTA_CT_DREG
                m.u32(2, 0); // NFTA_CT_KEY: NFT_CT_STATE
            }
            Expr::And(mask) => {
                m.u32(1, REG_1); // NFTA_BITWISE_SREG
                m.u32(2, REG_1); // NFTA_BITWISE_DREG
                m.u32(3, mask.len() as u32); // NFTA_BITWISE_LEN
                m.nest(4, |m| m.bytes(NFTA_DATA_VALUE, mask)); // NFTA_BITWISE_MASK
                let zero = vec![0u8; mask.len()];
                m.nest(5, |m| m.bytes(NFTA_DATA_VALUE, &zero)); // NFTA_BITWISE_XOR
            }
            Expr::Cmp { neq, data } => {
                m.u32(1, REG_1); // NFTA_CMP_SREG
                m.u32(2, u32::from(*neq)); // NFTA_CMP_OP: NFT_CMP_EQ 0, NFT_CMP_NEQ 1
                m.nest(3, |m| m.bytes(NFTA_DATA_VALUE, data)); // NFTA_CMP_DATA
            }
            Expr::Value(data) => {
                m.u32(1, REG_1); // NFTA_IMMEDIATE_DREG
                m.nest(2, |m| m.bytes(NFTA_DATA_VALUE, data)); // NFTA_IMMEDIATE_DATA
            }
            Expr::Verdict(code) => {
                m.u32(1, REG_VERDICT); // NFTA_IMMEDIATE_DREG
                m.nest(2, |m| {
                    m.nest(NFTA_DATA_VERDICT, |m| {
                        m.u32(NFTA_VERDICT_CODE, *code as u32)
                    })
                });
            }
            Expr::Redirect => {
                m.u32(1, REG_1); // NFTA_REDIR_REG_PROTO_MIN
                m.u32(3, NF_NAT_RANGE_PROTO_SPECIFIED); // NFTA_REDIR_FLAGS
            }
            Expr::Log { group, prefix } => {
                m.bytes(1, &group.to_be_bytes()); // NFTA_LOG_GROUP
                m.str(2, prefix); // NFTA_LOG_PREFIX
            }
            Expr::RejectAdminProhibited => {
                m.u32(1, REJECT_ICMPX); // NFTA_REJECT_TYPE
                m.bytes(2, &[ICMPX_ADMIN_PROHIBITED]); // NFTA_REJECT_ICMP_CODE
            }
        }
    }
}

/// Netlink attributes appended to a message.
struct Attrs<'a>(&'a mut Vec<u8>);

impl Attrs<'_> {
    fn bytes(&mut self, kind: u16, value: &[u8]) {
        let len = 4 + value.len();
        self.0.extend_from_slice(&(len as u16).to_ne_bytes());
        self.0.extend_from_slice(&kind.to_ne_bytes());
        self.0.extend_from_slice(value);
        self.0.resize(self.0.len().next_multiple_of(4), 0);
    }

    /// A NUL-terminated string.
    fn str(&mut self, kind: u16, value: &str) {
        let mut v = Vec::with_capacity(value.len() + 1);
        v.extend_from_slice(value.as_bytes());
        v.push(0);
        self.bytes(kind, &v);
    }

    /// Big-endian, as nf_tables wants its numbers.
    fn u32(&mut self, kind: u16, value: u32) {
        self.bytes(kind, &value.to_be_bytes());
    }

    fn nest(&mut self, kind: u16, inner: impl FnOnce(&mut Attrs)) {
        let at = self.0.len();
        self.0.extend_from_slice(&[0, 0]);
        self.0
            .extend_from_slice(&(kind | NLA_F_NESTED).to_ne_bytes());
        inner(&mut Attrs(&mut *self.0));
        let len = (self.0.len() - at) as u16;
        self.0[at..at + 2].copy_from_slice(&len.to_ne_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::process::{Command, Stdio};

    /// Root (CAP_NET_ADMIN) is what these tests need; without it they say so and pass.
    fn can_make_a_namespace() -> bool {
        let able = caps::has_cap(
            None,
            caps::CapSet::Effective,
            caps::Capability::CAP_NET_ADMIN,
        )
        .unwrap_or(false);
        if !able {
            eprintln!("skipped: needs CAP_NET_ADMIN to create a network namespace and load rules");
        }
        able
    }

    fn nft() -> std::path::PathBuf {
        super::super::detect::find_in_path("nft")
            .expect("this test compares with the nft binary: install nftables")
    }

    /// `nft list table inet netcage` in a fresh network namespace after `load` ran there.
    fn listing(load: impl FnOnce() -> Result<(), String> + Send + 'static) -> String {
        std::thread::spawn(move || {
            // Only this thread (and what it starts) enters the new namespace.
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare(net)");
            load().expect("load");
            let out = Command::new(nft())
                .args(["list", "table", "inet", "netcage"])
                .output()
                .expect("nft list");
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8(out.stdout).unwrap()
        })
        .join()
        .unwrap()
    }

    fn with_nft(ruleset: String) -> impl FnOnce() -> Result<(), String> + Send + 'static {
        move || {
            let mut child = Command::new(nft())
                .args(["-f", "-"])
                .stdin(Stdio::piped())
                .spawn()
                .map_err(|e| e.to_string())?;
            child
                .stdin
                .take()
                .unwrap()
                .write_all(ruleset.as_bytes())
                .map_err(|e| e.to_string())?;
            let status = child.wait().map_err(|e| e.to_string())?;
            status.success().then_some(()).ok_or("nft failed".into())
        }
    }

    #[test]
    fn the_kernel_gets_the_rules_nft_would_have_loaded() {
        if !can_make_a_namespace() {
            return;
        }
        let all = Ports {
            tcp4: 40001,
            tcp6: 40002,
            dns4: 40003,
            dns6: 40004,
            dns_tcp4: 40005,
            dns_tcp6: 40006,
        };
        // IPv6 off: its listeners are missing and so are their rules.
        let no_ipv6 = Ports {
            tcp6: 0,
            dns6: 0,
            dns_tcp6: 0,
            ..all
        };
        for ports in [all, no_ipv6] {
            let ours = listing(move || load(&ports));
            let theirs = listing(with_nft(super::super::plan::nft_ruleset(&ports)));
            assert_eq!(ours, theirs);
            assert!(ours.contains("tcp redirect to :40001"), "{ours}");
            assert!(
                ours.contains("log prefix \"netcage-drop\" group 7 drop"),
                "{ours}"
            );
            assert_eq!(ours.contains(":40002"), ports.tcp6 != 0, "{ours}");
        }
    }

    #[test]
    fn the_pod_rules_are_those_nft_would_load_and_loading_again_replaces_them() {
        if !can_make_a_namespace() {
            return;
        }
        let rules = PodRules {
            proxy_uid: 1337,
            port: 15001,
            dns_port: 15053,
        };
        let ours = listing(move || load_pod(&rules));
        let theirs = listing(with_nft(super::super::plan::pod_nft_ruleset(&rules)));
        assert_eq!(ours, theirs);
        assert!(ours.contains("meta skuid 1337 return"), "{ours}");
        assert!(
            ours.contains("reject with icmpx admin-prohibited"),
            "{ours}"
        );
        // Over Tier 1's table (other rules, a chain more), then over its own: one copy each
        // time, the other rules gone.
        let again = listing(move || {
            load(&Ports {
                tcp4: 40001,
                dns4: 40003,
                ..Ports::default()
            })?;
            load_pod(&PodRules { port: 1, ..rules })?;
            load_pod(&rules)?;
            load_pod(&rules)
        });
        assert_eq!(again, ours);
    }

    #[test]
    fn a_refused_batch_is_an_error_with_the_reason() {
        if !can_make_a_namespace() {
            return;
        }
        let err = std::thread::spawn(|| {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare(net)");
            // Capabilities are per thread: only this one loses it.
            caps::drop(
                None,
                caps::CapSet::Effective,
                caps::Capability::CAP_NET_ADMIN,
            )
            .unwrap();
            load(&Ports {
                tcp4: 40001,
                dns4: 40003,
                ..Ports::default()
            })
        })
        .join()
        .unwrap()
        .unwrap_err();
        assert!(
            err.contains("refused") && err.contains("not permitted"),
            "{err}"
        );
    }
}
