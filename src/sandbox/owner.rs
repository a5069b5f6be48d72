//! Which sandboxed process opened a connection: the peer address → the socket's inode (the
//! namespace's `/proc/1/net/tcp`) → the process holding that inode (`/proc/PID/fd`) → its
//! session, which is the exec that started it (each exec leads a session of its own).
//!
//! Read through the sandbox's own /proc (a descriptor init sent), so pids are the sandbox's
//! and only its processes are searched. Used only when more than one exec is running (or one is
//! being started).

use std::collections::{HashMap, HashSet};
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

    /// For each `(peer, proto)`: a process holding the socket whose local address is `peer`,
    /// then its ancestors (pids in the sandbox's namespace), and last its session id: an exec
    /// is the first of these that is an exec's pid (a `setsid` child still has its exec as
    /// an ancestor; an orphan still has its session). Empty when no holder was found.
    ///
    /// One call reads each socket table once and every process's descriptors at most once,
    /// however many sockets it looks for: a flood of connections costs one scan per batch,
    /// not one per connection.
    pub fn lineages_of(&self, wanted: &[(SocketAddr, Proto)]) -> Vec<Vec<i32>> {
        let holders = self.holders_of(wanted);
        let mut known: HashMap<i32, Vec<i32>> = HashMap::new();
        holders
            .into_iter()
            .map(|holder| match holder {
                Some(pid) => known
                    .entry(pid)
                    .or_insert_with(|| self.lineage_from(pid))
                    .clone(),
                None => Vec::new(),
            })
            .collect()
    }

    /// `pid` (in the sandbox's namespace), its ancestors, and last its session id, as far as
    /// the sandbox's /proc still shows them (a zombie's too).
    pub fn lineage_from(&self, pid: i32) -> Vec<i32> {
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

    /// The pid (in the sandbox's namespace) of a process holding each socket.
    fn holders_of(&self, wanted: &[(SocketAddr, Proto)]) -> Vec<Option<i32>> {
        let mut out = vec![None; wanted.len()];
        let mut want: HashMap<u64, Vec<usize>> = HashMap::new();
        for (i, inode) in self.inodes_of(wanted).into_iter().enumerate() {
            if let Some(inode) = inode {
                want.entry(inode).or_default().push(i);
            }
        }
        if want.is_empty() {
            return out;
        }
        // The processes holding the fewest descriptors are searched first, and each one's
        // newest (highest) descriptors first: a command holding thousands of sockets is
        // searched last and costs only its own connections time. Past the budget, the rest go
        // unattributed (they share the unattributed connection budget).
        let Ok(dir) = std::fs::read_dir(self.path("")) else {
            return out;
        };
        let mut procs: Vec<(i32, Vec<u32>)> = dir
            .flatten()
            .filter_map(|entry| {
                let pid: i32 = entry.file_name().to_str()?.parse().ok()?;
                let fds = std::fs::read_dir(self.path(&format!("{pid}/fd"))).ok()?;
                let mut fds: Vec<u32> = fds
                    .flatten()
                    .filter_map(|fd| fd.file_name().to_str()?.parse().ok())
                    .collect();
                fds.sort_unstable_by(|a, b| b.cmp(a));
                Some((pid, fds))
            })
            .collect();
        procs.sort_by_key(|(_, fds)| fds.len());
        let mut budget = SCAN_BUDGET;
        'scan: for (pid, fds) in &procs {
            for fd in fds {
                if budget == 0 {
                    break 'scan;
                }
                budget -= 1;
                let Ok(target) = std::fs::read_link(self.path(&format!("{pid}/fd/{fd}"))) else {
                    continue;
                };
                let Some(inode) = socket_inode(target.as_os_str().to_str().unwrap_or("")) else {
                    continue;
                };
                if let Some(found) = want.remove(&inode) {
                    for i in found {
                        out[i] = Some(*pid);
                    }
                    if want.is_empty() {
                        break 'scan;
                    }
                }
            }
        }
        out
    }

    /// The inode of each socket, from the namespace's tables (each read once).
    fn inodes_of(&self, wanted: &[(SocketAddr, Proto)]) -> Vec<Option<u64>> {
        let table_of = |peer: &SocketAddr, proto: Proto| match (proto, peer.ip()) {
            (Proto::Tcp, IpAddr::V4(_)) => "tcp",
            (Proto::Tcp, IpAddr::V6(_)) => "tcp6",
            (Proto::Udp, IpAddr::V4(_)) => "udp",
            (Proto::Udp, IpAddr::V6(_)) => "udp6",
        };
        // What to look for in each table: the address, and for UDP the wildcard one (an
        // unconnected socket, a resolver's, is bound to it).
        let keys: Vec<(&str, String, Option<String>)> = wanted
            .iter()
            .map(|(peer, proto)| {
                let any: IpAddr = match peer.ip() {
                    IpAddr::V4(_) => std::net::Ipv4Addr::UNSPECIFIED.into(),
                    IpAddr::V6(_) => std::net::Ipv6Addr::UNSPECIFIED.into(),
                };
                let fallback =
                    (*proto == Proto::Udp).then(|| table_key(SocketAddr::new(any, peer.port())));
                (table_of(peer, *proto), table_key(*peer), fallback)
            })
            .collect();
        let mut sought: HashMap<&str, HashSet<&str>> = HashMap::new();
        for (table, key, fallback) in &keys {
            let set = sought.entry(table).or_default();
            set.insert(key);
            if let Some(fallback) = fallback {
                set.insert(fallback);
            }
        }
        let found: HashMap<&str, HashMap<String, u64>> = sought
            .into_iter()
            .map(|(table, set)| {
                let text = std::fs::read(self.path(&format!("1/net/{table}"))).unwrap_or_default();
                (table, find_inodes(&text, &set))
            })
            .collect();
        keys.iter()
            .map(|(table, key, fallback)| {
                let found = found.get(table)?;
                found
                    .get(key)
                    .or_else(|| fallback.as_ref().and_then(|f| found.get(f)))
                    .copied()
            })
            .collect()
    }
}

/// Descriptors one lookup batch may read the target of (a few tens of milliseconds).
const SCAN_BUDGET: usize = 100_000;

/// `socket:[12345]` → 12345.
fn socket_inode(link: &str) -> Option<u64> {
    link.strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// Finds the inode of the socket whose local address is `addr` in a `/proc/net/{tcp,udp}[6]`
/// table.
pub fn inode_in_table(table: &str, addr: SocketAddr) -> Option<u64> {
    let key = table_key(addr);
    find_inodes(table.as_bytes(), &HashSet::from([key.as_str()]))
        .get(&key)
        .copied()
}

/// Local address (as the table prints it) → inode, for the sockets of a table whose local
/// address is one of `wanted`; the first of each (a listener comes before its connections).
/// The table may have tens of thousands of lines under a flood: each line is looked at only
/// up to its local address unless that is wanted.
fn find_inodes(table: &[u8], wanted: &HashSet<&str>) -> HashMap<String, u64> {
    let mut out = HashMap::new();
    for line in table.split(|&b| b == b'\n').skip(1) {
        // "  sl: LOCAL REMOTE st tx:rx tr:when retrnsmt uid timeout inode …"
        let Some(colon) = memchr::memchr(b':', line) else {
            continue;
        };
        let rest = &line[colon + 1..];
        let rest = &rest[rest.iter().position(|&b| b != b' ').unwrap_or(rest.len())..];
        let end = memchr::memchr(b' ', rest).unwrap_or(rest.len());
        let Ok(local) = std::str::from_utf8(&rest[..end]) else {
            continue;
        };
        if !wanted.contains(local) || out.contains_key(local) {
            continue;
        }
        let inode = std::str::from_utf8(rest)
            .ok()
            .and_then(|r| r.split_whitespace().nth(8))
            .and_then(|i| i.parse::<u64>().ok());
        if let Some(inode) = inode.filter(|i| *i != 0) {
            out.insert(local.to_owned(), inode);
        }
    }
    out
}

/// `addr` as the socket tables print a local address.
fn table_key(addr: SocketAddr) -> String {
    format!("{}:{:04X}", hex_addr(addr.ip()), addr.port())
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
