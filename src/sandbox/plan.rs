//! The sandbox *plan*: everything Tier 1 will set up, computed without side effects so it can be
//! unit-tested without privileges. `launch` applies it.

/// NFLOG group that dropped packets are logged to.
pub const NFLOG_GROUP: u16 = 7;

/// Ports of the listeners created inside the namespace (0 = that family is unavailable).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ports {
    pub tcp4: u16,
    pub tcp6: u16,
    pub dns4: u16,
    pub dns6: u16,
    pub dns_tcp4: u16,
    pub dns_tcp6: u16,
}

/// The nftables ruleset of the namespace (DESIGN §4): DNS to netcage's resolver, every TCP
/// connection that is not to loopback to the proxy, everything else that would leave loopback
/// logged to NFLOG and dropped (the sender gets EPERM at once).
pub fn nft_ruleset(p: &Ports) -> String {
    let mut nat = String::new();
    let mut push = |line: String| {
        nat.push_str("    ");
        nat.push_str(&line);
        nat.push('\n');
    };
    if p.dns4 != 0 {
        push(format!(
            "meta nfproto ipv4 udp dport 53 redirect to :{}",
            p.dns4
        ));
    }
    if p.dns6 != 0 {
        push(format!(
            "meta nfproto ipv6 udp dport 53 redirect to :{}",
            p.dns6
        ));
    }
    if p.dns_tcp4 != 0 {
        push(format!(
            "meta nfproto ipv4 tcp dport 53 redirect to :{}",
            p.dns_tcp4
        ));
    }
    if p.dns_tcp6 != 0 {
        push(format!(
            "meta nfproto ipv6 tcp dport 53 redirect to :{}",
            p.dns_tcp6
        ));
    }
    push("ip daddr 127.0.0.0/8 return".into());
    push("ip6 daddr ::1 return".into());
    if p.tcp4 != 0 {
        push(format!(
            "meta nfproto ipv4 meta l4proto tcp redirect to :{}",
            p.tcp4
        ));
    }
    if p.tcp6 != 0 {
        push(format!(
            "meta nfproto ipv6 meta l4proto tcp redirect to :{}",
            p.tcp6
        ));
    }
    format!(
        "table inet netcage {{
  chain nat_out {{
    type nat hook output priority -100; policy accept;
{nat}  }}
  chain filter_out {{
    type filter hook output priority 0; policy accept;
    ct state established,related accept
    ip daddr 127.0.0.0/8 accept
    ip6 daddr ::1 accept
    log group {NFLOG_GROUP} prefix \"netcage-drop\" drop
  }}
}}
"
    )
}

/// A Kubernetes pod's rules (`netcage k8s-init`): the pod's containers share one network
/// namespace, so the proxy (the sidecar) is told apart by its uid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PodRules {
    /// The sidecar's uid: its traffic leaves the pod as it is.
    pub proxy_uid: u32,
    /// The sidecar's transparent listener (on 127.0.0.1 and ::1).
    pub port: u16,
    /// The sidecar's resolver, UDP and TCP (on 127.0.0.1 and ::1).
    pub dns_port: u16,
}

impl PodRules {
    /// The same port for both families.
    pub fn ports(&self) -> Ports {
        Ports {
            tcp4: self.port,
            tcp6: self.port,
            dns4: self.dns_port,
            dns6: self.dns_port,
            dns_tcp4: self.dns_port,
            dns_tcp6: self.dns_port,
        }
    }
}

/// The pod's ruleset: the proxy's uid is exempt, loopback is left alone, DNS goes to the
/// sidecar's resolver and every other TCP connection to its transparent listener; anything
/// else (UDP, ICMP, other protocols) that would leave the pod is logged to NFLOG and rejected
/// (`admin-prohibited`). Established connections (inbound ones included) are accepted, and so
/// is the kernel's IPv6 neighbour discovery (no socket, so no uid to tell it by).
pub fn pod_nft_ruleset(r: &PodRules) -> String {
    let (uid, port, dns) = (r.proxy_uid, r.port, r.dns_port);
    format!(
        "table inet netcage {{
  chain nat_out {{
    type nat hook output priority -100; policy accept;
    meta skuid {uid} return
    ip daddr 127.0.0.0/8 return
    ip6 daddr ::1 return
    meta nfproto ipv4 udp dport 53 redirect to :{dns}
    meta nfproto ipv6 udp dport 53 redirect to :{dns}
    meta nfproto ipv4 tcp dport 53 redirect to :{dns}
    meta nfproto ipv6 tcp dport 53 redirect to :{dns}
    meta nfproto ipv4 meta l4proto tcp redirect to :{port}
    meta nfproto ipv6 meta l4proto tcp redirect to :{port}
  }}
  chain filter_out {{
    type filter hook output priority 0; policy accept;
    meta skuid {uid} accept
    ct state established,related accept
    ip daddr 127.0.0.0/8 accept
    ip6 daddr ::1 accept
    icmpv6 type nd-router-solicit accept
    icmpv6 type nd-neighbor-solicit accept
    icmpv6 type nd-neighbor-advert accept
    icmpv6 type mld2-listener-report accept
    log group {NFLOG_GROUP} prefix \"netcage-drop\" reject with icmpx type admin-prohibited
  }}
}}
"
    )
}

/// Variables that would send clients to a proxy of their own; Tier 1 needs none, and they would
/// only make clients fail.
pub const PROXY_VARS: &[&str] = &[
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "NO_PROXY",
    "http_proxy",
    "https_proxy",
    "all_proxy",
    "no_proxy",
    // gRPC reads these before https_proxy.
    "grpc_proxy",
    "no_grpc_proxy",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ruleset_redirects_dns_then_tcp_and_drops_the_rest() {
        let rules = nft_ruleset(&Ports {
            tcp4: 1001,
            tcp6: 1002,
            dns4: 1003,
            dns6: 1004,
            dns_tcp4: 1005,
            dns_tcp6: 1006,
        });
        let dns = rules.find("udp dport 53 redirect to :1003").unwrap();
        let ret = rules.find("ip daddr 127.0.0.0/8 return").unwrap();
        let tcp = rules.find("meta l4proto tcp redirect to :1001").unwrap();
        assert!(
            dns < ret && ret < tcp,
            "DNS first, loopback exempt, then TCP:\n{rules}"
        );
        assert!(rules.contains("tcp dport 53 redirect to :1006"));
        assert!(rules.contains("ip6 daddr ::1 return"));
        assert!(rules.contains("log group 7 prefix \"netcage-drop\" drop"));
        assert!(rules.contains("hook output priority -100"));
    }

    #[test]
    fn the_pod_ruleset_exempts_the_proxy_uid_first_and_rejects_the_rest() {
        let rules = pod_nft_ruleset(&PodRules {
            proxy_uid: 1337,
            port: 15001,
            dns_port: 15053,
        });
        let uid = rules.find("meta skuid 1337 return").unwrap();
        let ret = rules.find("ip daddr 127.0.0.0/8 return").unwrap();
        let dns = rules.find("udp dport 53 redirect to :15053").unwrap();
        let tcp = rules.find("meta l4proto tcp redirect to :15001").unwrap();
        assert!(uid < ret && ret < dns && dns < tcp, "{rules}");
        let accept = rules.find("meta skuid 1337 accept").unwrap();
        let ct = rules.find("ct state established,related accept").unwrap();
        assert!(accept < ct, "{rules}");
        assert!(rules.contains("reject with icmpx type admin-prohibited"));
    }

    #[test]
    fn missing_ipv6_leaves_ipv6_to_the_drop_rule() {
        let rules = nft_ruleset(&Ports {
            tcp4: 1,
            dns4: 2,
            dns_tcp4: 3,
            ..Ports::default()
        });
        assert!(!rules.contains("nfproto ipv6 meta l4proto tcp redirect"));
        assert!(rules.contains("drop"));
    }
}
