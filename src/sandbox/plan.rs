//! The sandbox *plan*: everything Tier 1 will set up, computed without side effects so it can be
//! unit-tested without privileges. `launch` applies it.

use std::path::{Path, PathBuf};

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

/// What the child's filesystem view needs: the data dir (key, CA key) hidden behind an empty
/// tmpfs that holds only the public CA files; a key file or audit log elsewhere covered too; and
/// `/run`, where host daemons keep their sockets (docker, containerd, systemd, dbus, nscd), behind
/// an empty tmpfs, since a Unix socket would reach the host's services around the network
/// namespace.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MountPlan {
    /// tmpfs mounted over this directory.
    pub hide_dir: PathBuf,
    /// Files copied into that tmpfs: (name, the file to copy, read before it is hidden).
    pub public_files: Vec<(String, PathBuf)>,
    /// Files outside `hide_dir` covered by an empty file (bind mount of /dev/null).
    pub hide_files: Vec<PathBuf>,
    /// Directories covered by an empty tmpfs after everything else.
    pub empty_dirs: Vec<PathBuf>,
}

/// Where host daemons' sockets live.
pub const DAEMON_DIRS: &[&str] = &["/run", "/var/run"];

pub fn mount_plan(
    data_dir: &Path,
    secret_files: &[PathBuf],
    public_files: Vec<(String, PathBuf)>,
) -> MountPlan {
    let hide_files = secret_files
        .iter()
        // Files and sockets (serve's control socket); bind mounts need a non-directory.
        .filter(|f| !f.starts_with(data_dir) && f.metadata().is_ok_and(|m| !m.is_dir()))
        .cloned()
        .collect();
    // A data dir under /run stays reachable (the command needs its public CA files); a symlink
    // (/var/run -> /run) is covered by its target.
    let empty_dirs = DAEMON_DIRS
        .iter()
        .map(PathBuf::from)
        .filter(|d| !data_dir.starts_with(d))
        .filter(|d| d.symlink_metadata().is_ok_and(|m| m.is_dir()))
        .collect();
    MountPlan {
        hide_dir: data_dir.to_owned(),
        public_files,
        hide_files,
        empty_dirs,
    }
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

    #[test]
    fn key_file_outside_the_data_dir_is_hidden_too() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("db");
        let key = dir.path().join("key");
        std::fs::write(&key, b"k").unwrap();
        let audit = dir.path().join("audit.jsonl");
        std::fs::write(&audit, b"").unwrap();
        let plan = mount_plan(&data, &[key.clone(), audit.clone()], vec![]);
        assert_eq!(plan.hide_files, vec![key.clone(), audit]);
        let inside = mount_plan(&data, &[data.join(".vault_key")], vec![]);
        assert!(inside.hide_files.is_empty());
        if Path::new("/run").is_dir() {
            assert!(plan.empty_dirs.contains(&PathBuf::from("/run")));
            let under_run = mount_plan(Path::new("/run/starpod"), &[], vec![]);
            assert!(!under_run.empty_dirs.contains(&PathBuf::from("/run")));
        }
    }
}
