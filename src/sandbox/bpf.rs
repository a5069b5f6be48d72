//! Which process opened a connection, from the kernel: `ebpf/netcage.bpf.c`, a `sockops`
//! program attached to the cgroup2 root, records the connecting task of every TCP connect
//! made in a watched network namespace (a sandbox's, or the host's for `netcage proxy`);
//! the proxy looks the entry up when it accepts the connection and deletes it.
//!
//! Root only (loading needs CAP_BPF and CAP_NET_ADMIN; unprivileged BPF is off on most
//! machines). Loaded at most once per process ([`tracker`]); the attachment is a BPF link
//! held by this process's descriptor, so it goes away with the process, SIGKILL included.
//! Without it, attribution falls back to the sandbox's /proc ([`super::owner`]).

use std::mem::size_of;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use aya::maps::{HashMap as BpfHashMap, MapData};
use aya::programs::{CgroupAttachMode, SockOps};

/// The compiled program (scripts/build-ebpf; CI checks it matches its source).
static OBJECT: &[u8] = include_bytes!("../../ebpf/netcage.bpf.o");

/// `SO_NETNS_COOKIE` (Linux 5.14; the generic value, which x86 and arm64 use).
const SO_NETNS_COOKIE: libc::c_int = 71;

/// `struct conn_key` of netcage.bpf.c.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConnKey {
    pub netns: u64,
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub sport: u16,
    pub dport: u16,
    pub pad: u32,
}

/// `struct watch_key` of netcage.bpf.c: a namespace (port 0) or one port in it.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Watched {
    pub netns: u64,
    pub port: u32,
    pub pad: u32,
}

/// `struct conn_owner` of netcage.bpf.c.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct ConnOwner {
    pub tgid: u32,
    pub tid: u32,
    pub uid: u32,
    pub gid: u32,
    pub cgroup: u64,
    pub ktime: u64,
    pub comm: [u8; 16],
}

// SAFETY: both are `repr(C)` of integers and byte arrays with no implicit padding (48 bytes
// each, asserted below), so every bit pattern is a valid value and the bytes are fully
// initialised.
unsafe impl aya::Pod for ConnKey {}
// SAFETY: as above.
unsafe impl aya::Pod for ConnOwner {}
// SAFETY: as above (16 bytes).
unsafe impl aya::Pod for Watched {}

const _: () = assert!(
    size_of::<ConnKey>() == 48 && size_of::<ConnOwner>() == 48 && size_of::<Watched>() == 16
);

impl ConnKey {
    /// The key of a connection from `src` to `dst` in network namespace `netns`, as the
    /// program stores it (IPv4 as `::ffff:a.b.c.d`).
    pub fn new(netns: u64, src: SocketAddr, dst: SocketAddr) -> ConnKey {
        ConnKey {
            netns,
            src: mapped(src.ip()),
            dst: mapped(dst.ip()),
            sport: src.port(),
            dport: dst.port(),
            pad: 0,
        }
    }
}

fn mapped(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// The process that opened a connection, as the kernel saw it at `connect()`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Process {
    /// Process id in the host's (netcage's) pid namespace.
    pub pid: u32,
    /// The thread that called `connect()`.
    pub tid: u32,
    pub uid: u32,
    pub gid: u32,
    /// The thread's name (`comm`).
    pub comm: String,
    /// Its cgroup v2 id at the connect (an exec's own, see `cgroups`).
    pub cgroup: u64,
    /// `/proc/PID/exe`, when the process still lived at the lookup.
    pub exe: Option<String>,
    /// Its pid one namespace below netcage's (a sandbox's pid namespace), read from
    /// `/proc/PID/status` (NSpid) at the lookup while it still lived (a zombie too).
    pub sandbox_pid: Option<i32>,
}

/// The loaded and attached program and its maps.
pub struct Tracker {
    watched: Mutex<BpfHashMap<MapData, Watched, u32>>,
    conns: Mutex<BpfHashMap<MapData, ConnKey, ConnOwner>>,
    /// Holds the program and its link (dropping it detaches).
    _ebpf: aya::Ebpf,
    /// How long loading and attaching took.
    pub load_time: Duration,
    /// The cgroup2 directory it is attached to.
    pub cgroup: PathBuf,
}

static TRACKER: OnceLock<Result<Tracker, String>> = OnceLock::new();

/// The tracker, loaded and attached on the first call (tens of milliseconds), or why it
/// cannot be (the reason is one line; the caller falls back to the /proc method).
pub fn tracker() -> Result<&'static Tracker, &'static str> {
    TRACKER.get_or_init(load).as_ref().map_err(String::as_str)
}

/// The tracker if [`tracker`] loaded it already (no load attempted here).
pub fn loaded() -> Option<&'static Tracker> {
    TRACKER.get().and_then(|t| t.as_ref().ok())
}

/// Why attribution uses /proc, if [`tracker`] was tried and failed.
pub fn failure() -> Option<&'static str> {
    TRACKER
        .get()
        .and_then(|t| t.as_ref().err())
        .map(String::as_str)
}

fn load() -> Result<Tracker, String> {
    if !nix::unistd::geteuid().is_root() {
        return Err("loading eBPF needs root (this is a rootless run)".into());
    }
    let started = Instant::now();
    let cgroup = cgroup2_root().ok_or("no cgroup2 filesystem is mounted")?;
    let mut ebpf = aya::EbpfLoader::new()
        .btf(None)
        .load(OBJECT)
        .map_err(|e| format!("cannot load the eBPF object: {}", first_line(&e)))?;
    let program: &mut SockOps = ebpf
        .program_mut("netcage_sockops")
        .ok_or("the eBPF object has no netcage_sockops program")?
        .try_into()
        .map_err(|e| format!("netcage_sockops: {e}"))?;
    program
        .load()
        .map_err(|e| format!("the kernel refused the sockops program: {}", first_line(&e)))?;
    let dir = std::fs::File::open(&cgroup)
        .map_err(|e| format!("cannot open the cgroup2 root {}: {e}", cgroup.display()))?;
    // A BPF link (Linux 5.7+): it lives as long as this process's descriptor, so nothing
    // stays attached after netcage exits, SIGKILL included. Links to a cgroup are always
    // "multi" (other programs, another netcage's included, run too); the kernel refuses any
    // attach flag on them, so Single (no flag) is the only mode that works here.
    program
        .attach(dir, CgroupAttachMode::Single)
        .map_err(|e| format!("cannot attach to {}: {}", cgroup.display(), first_line(&e)))?;
    let map = |ebpf: &mut aya::Ebpf, name: &str| {
        ebpf.take_map(name)
            .ok_or_else(|| format!("the eBPF object has no {name} map"))
    };
    let watched =
        BpfHashMap::try_from(map(&mut ebpf, "watched")?).map_err(|e| format!("watched: {e}"))?;
    let conns =
        BpfHashMap::try_from(map(&mut ebpf, "conns")?).map_err(|e| format!("conns: {e}"))?;
    Ok(Tracker {
        watched: Mutex::new(watched),
        conns: Mutex::new(conns),
        _ebpf: ebpf,
        load_time: started.elapsed(),
        cgroup,
    })
}

/// An error's first line (the verifier's log follows the reason).
fn first_line(e: &impl std::fmt::Display) -> String {
    let text = e.to_string();
    let line = text.lines().next().unwrap_or_default();
    match line.split_once(". Verifier output") {
        Some((reason, _)) => reason.to_owned(),
        None => line.to_owned(),
    }
}

impl Tracker {
    /// Records the connections made in the network namespace of `sock` (any socket in it)
    /// from now on; `port`, when not 0, only those to that port. Returns what to give
    /// [`Tracker::unwatch`].
    pub fn watch(&self, sock: BorrowedFd<'_>, port: u16) -> std::io::Result<Watched> {
        let key = Watched {
            netns: netns_cookie(sock)?,
            port: u32::from(port),
            pad: 0,
        };
        let mut watched = self.watched.lock().unwrap_or_else(|p| p.into_inner());
        watched.insert(key, 0, 0).map_err(std::io::Error::other)?;
        Ok(key)
    }

    /// Stops recording what [`Tracker::watch`] started to.
    pub fn unwatch(&self, key: Watched) {
        let mut watched = self.watched.lock().unwrap_or_else(|p| p.into_inner());
        let _ = watched.remove(&key);
    }

    /// The process that connected from `src` to `dst` in namespace `netns`; the entry is
    /// removed. None when the program saw no such connect.
    pub fn take(&self, netns: u64, src: SocketAddr, dst: SocketAddr) -> Option<Process> {
        let key = ConnKey::new(netns, src, dst);
        let owner = {
            let mut conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
            let owner = conns.get(&key, 0).ok()?;
            let _ = conns.remove(&key);
            owner
        };
        Some(describe(&owner))
    }
}

/// What the kernel recorded, and what /proc still tells of the process.
fn describe(owner: &ConnOwner) -> Process {
    let end = owner.comm.iter().position(|&b| b == 0).unwrap_or(16);
    let exe = std::fs::read_link(format!("/proc/{}/exe", owner.tgid))
        .ok()
        .map(|p| p.to_string_lossy().into_owned());
    Process {
        pid: owner.tgid,
        tid: owner.tid,
        uid: owner.uid,
        gid: owner.gid,
        comm: String::from_utf8_lossy(&owner.comm[..end]).into_owned(),
        cgroup: owner.cgroup,
        exe,
        sandbox_pid: sandbox_pid(owner.tgid),
    }
}

/// The process that opened `stream` (accepted by the proxy), if the tracker is loaded and
/// saw it: the key is the peer address and the address the client connected to
/// (SO_ORIGINAL_DST when the connection was redirected, else the local address).
pub fn process_of(stream: &impl AsFd) -> Option<Process> {
    let tracker = loaded()?;
    let sock = socket2::SockRef::from(stream);
    let peer = sock.peer_addr().ok()?.as_socket()?;
    let local = sock.local_addr().ok()?.as_socket()?;
    let original = match local {
        SocketAddr::V4(_) => sock.original_dst_v4(),
        SocketAddr::V6(_) => sock.original_dst_v6(),
    };
    let dst = original.ok().and_then(|a| a.as_socket()).unwrap_or(local);
    let netns = netns_cookie(stream.as_fd()).ok()?;
    tracker.take(netns, canonical(peer), canonical(dst))
}

/// `::ffff:a.b.c.d` as a.b.c.d (a dual-stack listener's view of an IPv4 peer).
fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

/// The cookie of the network namespace a socket is in.
pub fn netns_cookie(sock: BorrowedFd<'_>) -> std::io::Result<u64> {
    let mut cookie: u64 = 0;
    let mut len = size_of::<u64>() as libc::socklen_t;
    // SAFETY: `cookie` and `len` are valid for writes and `len` is the size of `cookie`; the
    // kernel writes at most `len` bytes. The descriptor is borrowed, so it is open.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&raw mut cookie).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(cookie)
}

/// The pid of host process `pid` one pid namespace below netcage's own (the sandbox's),
/// from the NSpid line of its status; None once it is reaped, or when it is not in a
/// namespace below ours.
pub fn sandbox_pid(pid: u32) -> Option<i32> {
    static OWN_LEVEL: OnceLock<usize> = OnceLock::new();
    let own = *OWN_LEVEL.get_or_init(|| {
        std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| ns_pids(&s))
            .map_or(0, |p| p.len().saturating_sub(1))
    });
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    ns_pids(&status)?.get(own + 1).copied()
}

/// The NSpid line of a status file: the pid in each namespace, outermost first.
fn ns_pids(status: &str) -> Option<Vec<i32>> {
    let line = status.lines().find_map(|l| l.strip_prefix("NSpid:"))?;
    line.split_whitespace().map(|p| p.parse().ok()).collect()
}

/// Where cgroup2 is mounted (the first mount of that type in this process's mount
/// namespace), from /proc/self/mountinfo.
pub fn cgroup2_root() -> Option<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    cgroup2_in_mountinfo(&text)
}

fn cgroup2_in_mountinfo(text: &str) -> Option<PathBuf> {
    text.lines().find_map(|line| {
        let (before, after) = line.split_once(" - ")?;
        if after.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        let mount_point = before.split_whitespace().nth(4)?;
        Some(PathBuf::from(unescape_octal(mount_point)))
    })
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_octal(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && let Some(octal) = field.get(i + 1..i + 4)
            && let Ok(b) = u8::from_str_radix(octal, 8)
        {
            out.push(b);
            i += 4;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_cgroup2_wherever_it_is_mounted() {
        let text = "25 30 0:23 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755\n\
                    41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n\
                    42 25 0:39 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,name=systemd\n";
        assert_eq!(
            cgroup2_in_mountinfo(text),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        let spaced = "41 31 0:38 / /mnt/my\\040cg rw - cgroup2 none rw\n";
        assert_eq!(
            cgroup2_in_mountinfo(spaced),
            Some(PathBuf::from("/mnt/my cg"))
        );
        assert_eq!(
            cgroup2_in_mountinfo("1 2 0:1 / / rw - ext4 /dev/x rw\n"),
            None
        );
    }

    #[test]
    fn keys_map_ipv4_as_the_program_does() {
        let v4 = ConnKey::new(
            7,
            "10.0.0.2:40000".parse().unwrap(),
            "93.184.216.34:443".parse().unwrap(),
        );
        let v6 = ConnKey::new(
            7,
            "[::ffff:10.0.0.2]:40000".parse().unwrap(),
            "[::ffff:93.184.216.34]:443".parse().unwrap(),
        );
        assert_eq!(v4, v6);
        assert_eq!(&v4.src[10..], &[0xff, 0xff, 10, 0, 0, 2]);
        assert_eq!((v4.sport, v4.dport), (40000, 443));
    }

    #[test]
    fn reads_nspid_lines() {
        let status = "Name:\tsh\nNSpid:\t4242\t7\nNSsid:\t1\n";
        assert_eq!(ns_pids(status), Some(vec![4242, 7]));
        assert_eq!(ns_pids("Name:\tsh\n"), None);
        let own = std::fs::read_to_string("/proc/self/status").unwrap();
        assert!(!ns_pids(&own).unwrap().is_empty());
        // This test process is not in a namespace below its own.
        assert_eq!(sandbox_pid(std::process::id()), None);
    }
}
