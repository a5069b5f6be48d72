//! The sockops program (`ebpf/netcage.bpf.c`, loaded by `netcage::sandbox::bpf`), as root:
//! each connection to a listener this test starts on loopback is attributed to the process
//! and thread that connected, as the test knows them: clients that exit before the accept,
//! a thread of another uid, a `setsid` double-forked daemon, IPv6 and v4-mapped IPv6.
//! Rootless, the tracker refuses with one line and nothing is loaded.

use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::process::Command;
use std::time::Duration;

use netcage::sandbox::bpf;

/// None (and a printed reason) when this test cannot load eBPF: not root.
fn tracker() -> Option<&'static bpf::Tracker> {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: loading eBPF needs root");
        return None;
    }
    Some(bpf::tracker().expect("root loads and attaches the sockops program"))
}

/// A listener on `addr`, watched (connections to its port in this network namespace).
fn listen(tracker: &bpf::Tracker, addr: &str) -> TcpListener {
    let listener = TcpListener::bind(addr).unwrap();
    let port = listener.local_addr().unwrap().port();
    tracker.watch(listener.as_fd(), port).unwrap();
    listener
}

fn accept(listener: &TcpListener) -> TcpStream {
    listener.set_nonblocking(false).unwrap();
    listener.accept().unwrap().0
}

/// Runs python3 `code` (PORT and HOST substituted) and waits for it; its stdout.
fn python(code: &str, host: &str, port: u16) -> (u32, String) {
    let code = code
        .replace("PORT", &port.to_string())
        .replace("HOST", host);
    let child = Command::new("python3")
        .args(["-c", &code])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "python3 failed: {out:?}");
    (pid, String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

const CONNECT_AND_EXIT: &str = "import socket; socket.create_connection(('HOST', PORT))";

#[test]
fn a_client_that_exits_before_the_accept_is_named() {
    let Some(tracker) = tracker() else { return };
    let listener = listen(tracker, "127.0.0.1:0");
    let port = listener.local_addr().unwrap().port();
    // The client has exited (and been reaped) before the proxy side accepts.
    let (pid, _) = python(CONNECT_AND_EXIT, "127.0.0.1", port);
    let stream = accept(&listener);
    let p = bpf::process_of(&stream).expect("the connect was recorded");
    assert_eq!(p.pid, pid);
    assert_eq!(p.tid, pid, "python's main thread connected");
    assert_eq!(p.comm, "python3");
    assert_eq!(p.uid, 0);
    assert_eq!(p.exe, None, "the process is gone: no executable to read");
    assert_eq!(
        bpf::process_of(&stream),
        None,
        "the entry is deleted once looked up"
    );
}

#[test]
fn ipv6_and_v4_mapped_clients_are_named() {
    let Some(tracker) = tracker() else { return };
    // Plain IPv6.
    let v6 = listen(tracker, "[::1]:0");
    let port = v6.local_addr().unwrap().port();
    let (pid, _) = python(
        "import socket; socket.create_connection(('HOST', PORT))",
        "::1",
        port,
    );
    let p = bpf::process_of(&accept(&v6)).expect("the IPv6 connect was recorded");
    assert_eq!((p.pid, p.comm.as_str()), (pid, "python3"));
    // An AF_INET6 socket connecting to ::ffff:127.0.0.1 reaches an IPv4 listener.
    let v4 = listen(tracker, "127.0.0.1:0");
    let port = v4.local_addr().unwrap().port();
    let mapped =
        "import socket\ns = socket.socket(socket.AF_INET6)\ns.connect(('::ffff:127.0.0.1', PORT))";
    let (pid, _) = python(mapped, "", port);
    let stream = accept(&v4);
    assert!(stream.peer_addr().unwrap().is_ipv4());
    let p = bpf::process_of(&stream).expect("the v4-mapped connect was recorded");
    assert_eq!((p.pid, p.comm.as_str()), (pid, "python3"));
    // A dual-stack listener sees an IPv4 client as ::ffff:127.0.0.1.
    let dual = socket2::Socket::new(socket2::Domain::IPV6, socket2::Type::STREAM, None).unwrap();
    dual.set_only_v6(false).unwrap();
    dual.bind(&"[::]:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    dual.listen(8).unwrap();
    let dual: TcpListener = dual.into();
    let port = dual.local_addr().unwrap().port();
    tracker.watch(dual.as_fd(), port).unwrap();
    let (pid, _) = python(CONNECT_AND_EXIT, "127.0.0.1", port);
    let stream = accept(&dual);
    assert!(stream.peer_addr().unwrap().is_ipv6());
    let p = bpf::process_of(&stream).expect("the IPv4 connect to a dual-stack listener");
    assert_eq!((p.pid, p.comm.as_str()), (pid, "python3"));
}

#[test]
fn a_thread_of_another_uid_is_named_with_its_uid() {
    let Some(tracker) = tracker() else { return };
    let listener = listen(tracker, "127.0.0.1:0");
    let addr = listener.local_addr().unwrap();
    // The thread changes its own credentials only (the raw syscall, not glibc's, which
    // would change every thread's), names itself, connects and ends.
    let thread = std::thread::spawn(move || {
        // SAFETY: setresuid and prctl with plain integer arguments and a NUL-terminated
        // name; they change only this thread.
        unsafe {
            assert_eq!(libc::syscall(libc::SYS_setresgid, 4242, 4242, 4242), 0);
            assert_eq!(libc::syscall(libc::SYS_setresuid, 4242, 4242, 4242), 0);
            libc::prctl(libc::PR_SET_NAME, c"uid-thread".as_ptr());
        }
        let tid = nix::unistd::gettid().as_raw() as u32;
        drop(TcpStream::connect(addr).unwrap());
        tid
    });
    let tid = thread.join().unwrap();
    let p = bpf::process_of(&accept(&listener)).expect("the thread's connect was recorded");
    assert_eq!(p.pid, std::process::id(), "the process is this test");
    assert_eq!(p.tid, tid);
    assert_ne!(p.tid, p.pid);
    assert_eq!((p.uid, p.gid), (4242, 4242));
    assert_eq!(p.comm, "uid-thread");
    assert!(
        p.exe.as_deref().is_some_and(|e| e.contains("ebpf")),
        "{:?}",
        p.exe
    );
}

#[test]
fn a_setsid_double_forked_daemon_is_named() {
    let Some(tracker) = tracker() else { return };
    let listener = listen(tracker, "127.0.0.1:0");
    let port = listener.local_addr().unwrap().port();
    // The daemon writes its pid to the pipe and connects; its parents exit at once.
    let daemon = "import os, socket, sys, time\n\
        r, w = os.pipe()\n\
        if os.fork():\n    os.close(w); sys.stdout.write(os.read(r, 32).decode()); sys.exit(0)\n\
        os.setsid()\n\
        if os.fork():\n    os._exit(0)\n\
        null = os.open('/dev/null', os.O_RDWR); os.dup2(null, 1); os.dup2(null, 2)\n\
        os.write(w, str(os.getpid()).encode()); os.close(w)\n\
        s = socket.create_connection(('HOST', PORT))\n\
        time.sleep(1)\n";
    let (parent, out) = python(daemon, "127.0.0.1", port);
    let pid: u32 = out.parse().expect("the daemon's pid");
    assert_ne!(pid, parent);
    let mut stream = accept(&listener);
    let p = bpf::process_of(&stream).expect("the daemon's connect was recorded");
    assert_eq!(p.pid, pid);
    assert_eq!(p.comm, "python3");
    assert!(
        p.exe.as_deref().is_some_and(|e| e.contains("python")),
        "{:?}",
        p.exe
    );
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let _ = stream.read(&mut [0u8; 1]);
}

#[test]
fn connections_in_unwatched_namespaces_or_to_other_ports_are_not_recorded() {
    let Some(tracker) = tracker() else { return };
    let watched = listen(tracker, "127.0.0.1:0");
    let other = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = other.local_addr().unwrap().port();
    python(CONNECT_AND_EXIT, "127.0.0.1", port);
    assert_eq!(bpf::process_of(&accept(&other)), None);
    drop(watched);
}
