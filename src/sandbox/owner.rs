//! Which sandboxed process opened a connection: the peer address → the socket's inode (the
//! namespace's `/proc/1/net/tcp`) → the process holding that inode (`/proc/PID/fd`) → its
//! session, which is the exec that started it (each exec leads a session of its own).
//!
//! Read through the sandbox's own /proc (a descriptor init sent), so pids are the sandbox's
//! and only its processes are searched. Used only when more than one exec is running.

use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;

/// Which table to look the socket up in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    Tcp,
    Udp,
}

pub struct Owners {
    proc_dir: OwnedFd,
}

impl Owners {
    pub fn new(proc_dir: OwnedFd) -> Self {
        Owners { proc_dir }
    }

    fn path(&self, rest: &str) -> PathBuf {
        PathBuf::from(format!(
            "/proc/self/fd/{}/{rest}",
            self.proc_dir.as_raw_fd()
        ))
    }

    /// A process holding the socket whose local address is `peer`, then its ancestors (pids
    /// in the sandbox's namespace), and last its session id: an exec is the first of these
    /// that is an exec's pid (a `setsid` child still has its exec as an ancestor; an orphan
    /// still has its session).
    pub fn lineage_of(&self, peer: SocketAddr, proto: Proto) -> Vec<i32> {
        let Some(pid) = self.holder_of(peer, proto) else {
            return Vec::new();
        };
        let mut lineage = vec![pid];
        let mut session = None;
        let mut current = pid;
        for _ in 0..64 {
            let Ok(stat) = std::fs::read_to_string(self.path(&format!("{current}/stat"))) else {
                break;
            };
            if session.is_none() {
                session = session_from_stat(&stat);
            }
            match ppid_from_stat(&stat) {
                Some(ppid) if ppid > 1 => {
                    lineage.push(ppid);
                    current = ppid;
                }
                _ => break,
            }
        }
        lineage.extend(session);
        lineage
    }

    /// The pid (in the sandbox's namespace) of a process holding the socket whose local
    /// address is `peer`.
    fn holder_of(&self, peer: SocketAddr, proto: Proto) -> Option<i32> {
        let inode = self.inode_of(peer, proto)?;
        let wanted = format!("socket:[{inode}]");
        let dir = std::fs::read_dir(self.path("")).ok()?;
        // A command holding hundreds of thousands of descriptors must not make every new
        // connection wait: past this many, the connection goes unattributed.
        let mut budget: usize = 20_000;
        for entry in dir.flatten() {
            let name = entry.file_name();
            let Some(pid) = name
                .to_str()
                .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
            else {
                continue;
            };
            let Ok(fds) = std::fs::read_dir(self.path(&format!("{pid}/fd"))) else {
                continue;
            };
            let holds = fds.flatten().any(|fd| {
                budget = budget.saturating_sub(1);
                budget > 0
                    && std::fs::read_link(fd.path())
                        .is_ok_and(|target| target.as_os_str() == wanted.as_str())
            });
            if budget == 0 {
                return None;
            }
            if holds {
                return pid.parse().ok();
            }
        }
        None
    }

    fn inode_of(&self, peer: SocketAddr, proto: Proto) -> Option<u64> {
        let table = match (proto, peer.ip()) {
            (Proto::Tcp, IpAddr::V4(_)) => "tcp",
            (Proto::Tcp, IpAddr::V6(_)) => "tcp6",
            (Proto::Udp, IpAddr::V4(_)) => "udp",
            (Proto::Udp, IpAddr::V6(_)) => "udp6",
        };
        let text = std::fs::read_to_string(self.path(&format!("1/net/{table}"))).ok()?;
        inode_in_table(&text, peer).or_else(|| {
            // An unconnected UDP socket (a resolver's) is bound to the wildcard address.
            let any: IpAddr = match peer.ip() {
                IpAddr::V4(_) => std::net::Ipv4Addr::UNSPECIFIED.into(),
                IpAddr::V6(_) => std::net::Ipv6Addr::UNSPECIFIED.into(),
            };
            (proto == Proto::Udp)
                .then(|| inode_in_table(&text, SocketAddr::new(any, peer.port())))
                .flatten()
        })
    }
}

/// Finds the inode of the socket whose local address is `addr` in a `/proc/net/{tcp,udp}[6]`
/// table.
pub fn inode_in_table(table: &str, addr: SocketAddr) -> Option<u64> {
    let wanted = format!("{}:{:04X}", hex_addr(addr.ip()), addr.port());
    table.lines().skip(1).find_map(|line| {
        let cols: Vec<&str> = line.split_whitespace().collect();
        (cols.get(1) == Some(&wanted.as_str()))
            .then(|| cols.get(9)?.parse().ok())
            .flatten()
            .filter(|inode| *inode != 0)
    })
}

/// The kernel prints addresses as 32-bit words in host byte order.
fn hex_addr(ip: IpAddr) -> String {
    let octets: Vec<u8> = match ip {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    };
    octets
        .chunks(4)
        .map(|w| {
            let word = u32::from_ne_bytes([w[0], w[1], w[2], w[3]]);
            format!("{word:08X}")
        })
        .collect()
}

/// Field 6 of `/proc/PID/stat` (after the parenthesised command name, which may hold spaces).
fn session_from_stat(stat: &str) -> Option<i32> {
    stat_field(stat, 3)
}

/// Field 4 of `/proc/PID/stat`: the parent pid.
fn ppid_from_stat(stat: &str) -> Option<i32> {
    stat_field(stat, 1)
}

/// The `n`th field after the command name (0 = state).
fn stat_field(stat: &str, n: usize) -> Option<i32> {
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(n)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_inode_of_a_local_address() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 12345 1 0000000000000000 100 0 0 10 0\n   1: 0100007F:C350 0100007F:1F90 01 00000000:00000000 00:00000000 00000000  1000        0 67890 1 0000000000000000 20 4 30 10 -1\n";
        if cfg!(target_endian = "little") {
            assert_eq!(
                inode_in_table(table, "127.0.0.1:50000".parse().unwrap()),
                Some(67890)
            );
            assert_eq!(
                inode_in_table(table, "127.0.0.1:8080".parse().unwrap()),
                Some(12345)
            );
            assert_eq!(inode_in_table(table, "127.0.0.1:1".parse().unwrap()), None);
        }
    }

    #[test]
    fn reads_this_process_own_socket_from_the_real_table() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let table = std::fs::read_to_string("/proc/self/net/tcp").unwrap();
        let inode = inode_in_table(&table, addr).expect("own listener in /proc/self/net/tcp");
        let fd = listener.as_raw_fd();
        let link = std::fs::read_link(format!("/proc/self/fd/{fd}")).unwrap();
        assert_eq!(link.to_str().unwrap(), format!("socket:[{inode}]"));
    }

    #[test]
    fn session_field_survives_spaces_and_parens_in_the_name() {
        let stat = "42 (my (odd) name) S 1 42 40 0 -1 4194560";
        assert_eq!(session_from_stat(stat), Some(40));
        assert_eq!(ppid_from_stat(stat), Some(1));
    }
}
