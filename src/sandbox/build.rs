//! Building the sandbox, in the holder process: namespaces, uid map, loopback and routes, the
//! listeners, the nft rules, the filesystem view (`layout`, applied by `mounts`) (DESIGN §4).
//! Runs single-threaded.

use std::net::{TcpListener, UdpSocket};
use std::os::fd::OwnedFd;

use nix::mount::{MsFlags, mount};
use nix::sched::{CloneFlags, unshare};
use nix::sys::prctl;

use super::control::{HolderSpec, SocketKind};
use super::layout::Op;
use super::plan::Ports;
use super::{mounts, netlink, nft};

/// The network part: the sockets for the proxy and their kinds.
pub type Network = (Vec<SocketKind>, Vec<OwnedFd>);

/// Builds the namespaces but the pid namespace (that is init's, see `holder`), the uid map,
/// loopback, the listeners and the nft rules: everything that does not depend on the
/// filesystem view, which [`filesystem`] applies once it has come.
pub fn network(spec: &HolderSpec) -> Result<Network, String> {
    let (uid, gid) = (spec.uid, spec.gid);
    // The pid namespace comes last, just before init is forked: the first process forked after
    // it becomes its pid 1.
    // IPC and UTS too: the host's SysV shared memory, semaphores, message queues and POSIX
    // queues, and its host name, are not the command's.
    let mut flags = CloneFlags::CLONE_NEWNET
        | CloneFlags::CLONE_NEWNS
        | CloneFlags::CLONE_NEWIPC
        | CloneFlags::CLONE_NEWUTS;
    if spec.rootless {
        flags |= CloneFlags::CLONE_NEWUSER;
    }
    unshare(flags).map_err(|e| {
        format!(
            "unshare({}): {e}",
            if spec.rootless {
                "user, net, mount, ipc, uts"
            } else {
                "net, mount, ipc, uts"
            }
        )
    })?;
    if spec.rootless {
        // /proc/self of a non-dumpable process belongs to root: writable again only while
        // dumpable. Nothing of the sandbox runs yet, and it is switched off right after.
        prctl::set_dumpable(true).map_err(|e| format!("PR_SET_DUMPABLE: {e}"))?;
        let write = |file: &str, text: String| {
            std::fs::write(format!("/proc/self/{file}"), text)
                .map_err(|e| format!("write /proc/self/{file}: {e}"))
        };
        let mapped = write("setgroups", "deny".into())
            .and_then(|()| write("uid_map", format!("{uid} {uid} 1")))
            .and_then(|()| write("gid_map", format!("{gid} {gid} 1")));
        prctl::set_dumpable(false).map_err(|e| format!("PR_SET_DUMPABLE: {e}"))?;
        mapped?;
    }
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(|e| format!("make mounts private: {e}"))?;
    crate::timing::mark("holder: unshared");
    netlink::isolate_loopback()?;
    crate::timing::mark("holder: loopback up");

    let mut kinds = Vec::new();
    let mut fds: Vec<OwnedFd> = Vec::new();
    // Keeps a bound socket (its kind and descriptor) and returns its port; 0 when the bind
    // failed (IPv6 may be off: its traffic then meets the drop rule).
    let mut keep = |kind: SocketKind, bound: std::io::Result<(OwnedFd, u16)>| match bound {
        Ok((fd, port)) => {
            kinds.push(kind);
            fds.push(fd);
            port
        }
        Err(_) => 0,
    };
    let tcp = |addr: &str| {
        let l = TcpListener::bind(addr)?;
        let port = l.local_addr()?.port();
        Ok((OwnedFd::from(l), port))
    };
    let udp = |addr: &str| {
        let s = UdpSocket::bind(addr)?;
        let port = s.local_addr()?.port();
        Ok((OwnedFd::from(s), port))
    };
    let ports = Ports {
        tcp4: keep(SocketKind::Tcp, tcp("127.0.0.1:0")),
        tcp6: keep(SocketKind::Tcp, tcp("[::1]:0")),
        dns4: keep(SocketKind::DnsUdp, udp("127.0.0.1:0")),
        dns6: keep(SocketKind::DnsUdp, udp("[::1]:0")),
        dns_tcp4: keep(SocketKind::DnsTcp, tcp("127.0.0.1:0")),
        dns_tcp6: keep(SocketKind::DnsTcp, tcp("[::1]:0")),
    };
    if ports.tcp4 == 0 || ports.dns4 == 0 {
        return Err("cannot listen on 127.0.0.1 inside the sandbox".into());
    }
    crate::timing::mark("holder: listening");
    nft::load(&ports)?;
    crate::timing::mark("holder: nft loaded");
    // Without it dropped packets are still dropped, only not named in the audit log.
    if let Ok(fd) = super::nflog::open(super::plan::NFLOG_GROUP) {
        kinds.push(SocketKind::Nflog);
        fds.push(fd);
    }
    Ok((kinds, fds))
}

/// Applies the filesystem view (in the mount namespace [`network`] made) and returns its
/// notes for the user.
pub fn filesystem(layout: &[Op]) -> Result<Vec<String>, String> {
    let notes = mounts::apply(layout)?;
    crate::timing::mark("holder: mounts applied");
    // The working directory is a new mount now (or behind one, when it is hidden): enter it
    // again by path, through the new mounts.
    if let Ok(cwd) = std::env::current_dir() {
        std::env::set_current_dir(&cwd).map_err(|e| format!("re-enter {}: {e}", cwd.display()))?;
    }
    Ok(notes)
}
