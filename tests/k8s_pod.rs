//! A Kubernetes pod simulated in namespaces this test makes (no cluster): a "node" network
//! namespace holding the upstream and recorders for every direct way out, a "pod" namespace
//! joined to it by a veth pair (10.251.0.1 node, 10.251.0.2 pod: addresses only these
//! namespaces have), and in the pod, as a kubelet would start them:
//! - `netcage k8s-init --proxy-uid 1337` as root with only CAP_NET_ADMIN (the init container);
//! - `netcage proxy --transparent` as uid 1337 without capabilities (the native sidecar), its
//!   key file readable by group 1337 only (the Secret), its CA bundle, tokens and ready file
//!   in a shared directory (the emptyDir);
//! - the app as uid 1000 without capabilities and with no_new_privs.
//!
//! Judged by what the node saw: the upstream got the real secrets (through the sidecar), and
//! the recorders for direct TCP, UDP, DNS and ICMP got nothing from the app, while the same
//! attempts made as the proxy's uid (the control: what an app running as 1337 would get, the
//! case `k8s-check` catches) reached every one of them.

mod common;

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::os::unix::fs::{PermissionsExt, chown};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use serde_json::Value;

const NODE_IP: &str = "10.251.0.1";
const POD_IP: &str = "10.251.0.2";
const NODE_IP6: &str = "fd51::1";
const POD_IP6: &str = "fd51::2";
const PROXY_UID: u32 = 1337;
const APP_UID: u32 = 1000;
const SECRET: &str = "sk-real-secret-9f8e7d6c5b4a";
const SECRET2: &str = "ghp_second-real-secret-0a1b2c";

fn root_with_tools() -> bool {
    let root = nix::unistd::geteuid().is_root();
    let tools = ["ip", "setpriv", "nft"]
        .iter()
        .all(|t| Command::new(t).arg("-V").output().is_ok());
    let python = Path::new("/usr/bin/python3").exists();
    if !(root && tools && python) {
        eprintln!("skipped: needs root, ip, setpriv, nft and /usr/bin/python3");
    }
    root && tools && python
}

fn sh(args: &[&str]) {
    let out = run_with_timeout(
        Command::new(args[0]).args(&args[1..]),
        Duration::from_secs(20),
    );
    assert!(out.status.success(), "{args:?}: {}", describe(&out));
}

/// The two namespaces and their veth; removed on drop.
struct Namespaces {
    node: String,
    pod: String,
}

impl Namespaces {
    fn new() -> Self {
        let tag = format!("{}-{}", std::process::id(), rand::random::<u16>());
        let ns = Namespaces {
            node: format!("nck8s-node-{tag}"),
            pod: format!("nck8s-pod-{tag}"),
        };
        sh(&["ip", "netns", "add", &ns.node]);
        sh(&["ip", "netns", "add", &ns.pod]);
        sh(&[
            "ip", "-n", &ns.node, "link", "add", "vnode", "type", "veth", "peer", "name", "vpod",
            "netns", &ns.pod,
        ]);
        for (n, dev, ip) in [(&ns.node, "vnode", NODE_IP), (&ns.pod, "vpod", POD_IP)] {
            sh(&[
                "ip",
                "-n",
                n,
                "addr",
                "add",
                &format!("{ip}/24"),
                "dev",
                dev,
            ]);
            sh(&["ip", "-n", n, "link", "set", dev, "up"]);
            sh(&["ip", "-n", n, "link", "set", "lo", "up"]);
        }
        sh(&[
            "ip", "-n", &ns.pod, "route", "add", "default", "via", NODE_IP,
        ]);
        for (n, dev, ip6) in [(&ns.node, "vnode", NODE_IP6), (&ns.pod, "vpod", POD_IP6)] {
            sh(&[
                "ip",
                "-n",
                n,
                "addr",
                "add",
                &format!("{ip6}/64"),
                "dev",
                dev,
                "nodad",
            ]);
        }
        // Unprivileged ICMP sockets allowed in the pod, so that ICMP is stopped by the rules,
        // not by the sysctl.
        sh(&[
            "ip",
            "netns",
            "exec",
            &ns.pod,
            "sysctl",
            "-q",
            "-w",
            "net.ipv4.ping_group_range=0 2147483647",
        ]);
        // The pod's resolv.conf (`ip netns exec` mounts it over /etc/resolv.conf): the
        // "cluster DNS" is the node's recorder.
        let etc = ns.etc();
        std::fs::create_dir_all(&etc).unwrap();
        std::fs::write(etc.join("resolv.conf"), format!("nameserver {NODE_IP}\n")).unwrap();
        std::fs::write(etc.join("hosts"), "127.0.0.1 localhost\n").unwrap();
        ns
    }

    fn etc(&self) -> PathBuf {
        PathBuf::from("/etc/netns").join(&self.pod)
    }

    /// Runs the closure on a thread inside the node namespace (sockets made there stay there).
    fn in_node<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/run/netns/{}", self.node);
        std::thread::spawn(move || {
            let fd = std::fs::File::open(&path).unwrap();
            nix::sched::setns(&fd, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            f()
        })
        .join()
        .unwrap()
    }

    /// `ip netns exec POD setpriv ... PROGRAM`: as `uid` (None: root) with only `caps`
    /// (e.g. "+net_admin"; empty: none) and no_new_privs.
    fn in_pod(&self, uid: Option<u32>, caps: &str, program: &Path) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.pod, "setpriv"]);
        if let Some(uid) = uid {
            let id = uid.to_string();
            cmd.args(["--reuid", &id, "--regid", &id, "--clear-groups"]);
        }
        cmd.arg(format!("--bounding-set=-all{caps}"))
            .arg(format!("--inh-caps=-all{caps}"))
            .arg("--no-new-privs")
            .arg(program);
        cmd.env_clear().env("PATH", "/usr/bin:/bin:/usr/sbin:/sbin");
        cmd
    }

    fn pod_rules(&self) -> String {
        let out = run_with_timeout(
            Command::new("ip").args(["netns", "exec", &self.pod, "nft", "list", "ruleset"]),
            Duration::from_secs(10),
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for n in [&self.pod, &self.node] {
            let _ = Command::new("ip").args(["netns", "del", n]).status();
        }
        let _ = std::fs::remove_dir_all(self.etc());
    }
}

/// What the node's recorders received.
#[derive(Default)]
struct Seen {
    tcp: AtomicUsize,
    udp: AtomicUsize,
    dns_udp: AtomicUsize,
    dns_tcp: AtomicUsize,
    tcp_peers: Mutex<Vec<SocketAddr>>,
}

struct Recorders {
    tcp: u16,
    udp: u16,
    seen: Arc<Seen>,
}

/// Listeners on the node's addresses: TCP and UDP on port 0, and DNS (UDP and TCP) on 53.
fn start_recorders(ns: &Namespaces) -> Recorders {
    let (tcp, udp, dns_udp, dns_tcp) = ns.in_node(|| {
        (
            // `[::]`: IPv4 and IPv6 (the namespace's bindv6only is 0).
            TcpListener::bind(("::", 0)).unwrap(),
            UdpSocket::bind(("::", 0)).unwrap(),
            UdpSocket::bind(("::", 53)).unwrap(),
            TcpListener::bind(("::", 53)).unwrap(),
        )
    });
    let seen = Arc::new(Seen::default());
    let ports = (
        tcp.local_addr().unwrap().port(),
        udp.local_addr().unwrap().port(),
    );
    for (listener, dns) in [(tcp, false), (dns_tcp, true)] {
        let seen = seen.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                if dns {
                    seen.dns_tcp.fetch_add(1, Ordering::SeqCst);
                } else {
                    seen.tcp.fetch_add(1, Ordering::SeqCst);
                    if let Ok(peer) = stream.peer_addr() {
                        seen.tcp_peers.lock().unwrap().push(peer);
                    }
                }
            }
        });
    }
    for (socket, dns) in [(udp, false), (dns_udp, true)] {
        let seen = seen.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while let Ok((n, peer)) = socket.recv_from(&mut buf) {
                let counter = if dns { &seen.dns_udp } else { &seen.udp };
                counter.fetch_add(1, Ordering::SeqCst);
                // Answer plain UDP, so the control can tell it got through.
                if !dns {
                    let _ = socket.send_to(&buf[..n], peer);
                }
            }
        });
    }
    Recorders {
        tcp: ports.0,
        udp: ports.1,
        seen,
    }
}

/// Every direct way out, tried from inside the pod; prints one JSON object.
const ATTEMPTS: &str = r#"
import errno, json, os, socket, struct, subprocess, sys, time
node, tcp_port, udp_port, secret_file, node6 = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
def err(e):
    return errno.errorcode.get(e.errno, str(e)) if getattr(e, "errno", None) else type(e).__name__
out = {}
# TCP straight to the node (the rules send it to the sidecar, which refuses the address), and
# UDP (the recorder echoes what it gets); over IPv4 and IPv6.
for suffix, addr, family in (("", node, socket.AF_INET), ("6", node6, socket.AF_INET6)):
    try:
        s = socket.create_connection((addr, tcp_port), timeout=3)
        s.sendall(b"DIRECT-TCP" + suffix.encode() + b"\n")
        s.settimeout(3)
        try:
            out["tcp" + suffix] = "recv:" + s.recv(100).decode(errors="replace")
        except OSError as e:
            out["tcp" + suffix] = "recv:" + err(e)
        s.close()
    except OSError as e:
        out["tcp" + suffix] = err(e)
    try:
        s = socket.socket(family, socket.SOCK_DGRAM)
        s.settimeout(2)
        s.sendto(b"DIRECT-UDP" + suffix.encode(), (addr, udp_port))
        out["udp" + suffix] = "reply:" + s.recvfrom(100)[0].decode()
    except OSError as e:
        out["udp" + suffix] = err(e)
# DNS to the node's resolver, UDP and TCP (the rules send both to the sidecar).
q = struct.pack(">HHHHHH", 0x4242, 0x0100, 1, 0, 0, 0) + b"\x07example\x03com\x00" + struct.pack(">HH", 1, 1)
try:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(2)
    s.sendto(q, (node, 53))
    r = s.recvfrom(512)[0]
    out["dns_udp"] = "rcode:%d" % (r[3] & 15)
except OSError as e:
    out["dns_udp"] = err(e)
try:
    s = socket.create_connection((node, 53), timeout=3)
    s.settimeout(3)
    s.sendall(struct.pack(">H", len(q)) + q)
    r = s.recv(512)
    out["dns_tcp"] = "rcode:%d" % (r[5] & 15) if len(r) > 5 else "eof"
except OSError as e:
    out["dns_tcp"] = err(e)
# ICMP echo (unprivileged ICMP socket), then a raw one.
try:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP)
    s.settimeout(2)
    s.sendto(struct.pack(">BBHHH", 8, 0, 0, 0, 1) + b"ping", (node, 0))
    r = s.recvfrom(100)[0]
    out["icmp"] = "reply:type%d" % r[0]
except OSError as e:
    out["icmp"] = err(e)
try:
    socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    out["icmp_raw"] = "ok"
except OSError as e:
    out["icmp_raw"] = err(e)
try:
    socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
    out["af_packet"] = "ok"
except OSError as e:
    out["af_packet"] = err(e)
if secret_file:
    r = subprocess.run(["nft", "flush", "ruleset"], capture_output=True)
    out["nft_flush"] = r.returncode
    try:
        out["secret"] = "read:" + open(secret_file, "rb").read().hex()
    except OSError as e:
        out["secret"] = err(e)
print(json.dumps(out))
"#;

/// The app's requests: with the sidecar's token, then with a token sealed beforehand.
const REQUESTS: &str = r#"
import json, ssl, sys, urllib.request
url, bundle, token_file, presealed = sys.argv[1:5]
tokens = dict(l.strip().split("=", 1) for l in open(token_file) if "=" in l)
ctx = ssl.create_default_context(cafile=bundle)
out = {}
for name, token in [("sidecar", tokens["API_KEY"]), ("presealed", presealed)]:
    req = urllib.request.Request(url + "/" + name, headers={"Authorization": "Bearer " + token})
    try:
        out[name] = urllib.request.urlopen(req, context=ctx, timeout=10).status
    except Exception as e:
        out[name] = type(e).__name__ + ": " + str(e)
print(json.dumps(out))
"#;

fn python_json(cmd: &mut Command) -> Value {
    let out = run_with_timeout(cmd, Duration::from_secs(60));
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.trim())
        .unwrap_or_else(|e| panic!("not one JSON line ({e}): {}", describe(&out)))
}

/// The pod's files: the Secret (key file, root:1337 0440 in a 0750 directory), the shared
/// emptyDir (owned by 1337), the upstream's CA for the sidecar.
struct Files {
    _dir: tempfile::TempDir,
    secret: PathBuf,
    shared: PathBuf,
    upstream_ca: PathBuf,
    /// The sidecar's stderr (its audit log).
    log: PathBuf,
    key: [u8; 32],
}

fn files(ca: &TestCa) -> Files {
    let dir = tempfile::Builder::new().prefix("nck8s-").tempdir().unwrap();
    let mode = |p: &Path, m: u32| std::fs::set_permissions(p, std::fs::Permissions::from_mode(m));
    mode(dir.path(), 0o755).unwrap();
    let secret = dir.path().join("secret");
    std::fs::create_dir(&secret).unwrap();
    chown(&secret, Some(0), Some(PROXY_UID)).unwrap();
    mode(&secret, 0o750).unwrap();
    let key: [u8; 32] = rand::random();
    let key_file = secret.join("vault_key");
    std::fs::write(&key_file, key).unwrap();
    chown(&key_file, Some(0), Some(PROXY_UID)).unwrap();
    mode(&key_file, 0o440).unwrap();
    let shared = dir.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    chown(&shared, Some(PROXY_UID), Some(PROXY_UID)).unwrap();
    mode(&shared, 0o755).unwrap();
    let upstream_ca = ca.write_pem(dir.path());
    mode(&upstream_ca, 0o644).unwrap();
    Files {
        secret: key_file,
        shared,
        upstream_ca,
        log: dir.path().join("sidecar.log"),
        key,
        _dir: dir,
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What the recorders count after the control: TCP and UDP over IPv4 and IPv6, one DNS query
/// over UDP and one over TCP.
const CONTROL: [usize; 4] = [2, 2, 1, 1];

#[test]
fn the_pod_gets_out_only_through_the_sidecar_and_not_at_all_without_it() {
    if !root_with_tools() {
        return;
    }
    let ns = Namespaces::new();
    let upstream_ca = TestCa::with_name("upstream CA");
    let f = files(&upstream_ca);
    let bind: SocketAddr = format!("{NODE_IP}:0").parse().unwrap();
    let upstream = ns.in_node(move || Upstream::start_at(&upstream_ca, &["upstream.test"], bind));
    let rec = start_recorders(&ns);
    let netcage = users::bin_for_others();
    let python = Path::new("/usr/bin/python3");

    // The init container: root with only NET_ADMIN. Without it, it is refused.
    let mut init = ns.in_pod(None, "", &netcage);
    init.args(["k8s-init", "--proxy-uid", "1337"]);
    let out = run_with_timeout(&mut init, Duration::from_secs(20));
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("NET_ADMIN"));
    for _ in 0..2 {
        // Twice: a restarted init container loads the same rules again.
        let mut init = ns.in_pod(None, ",+net_admin", &netcage);
        init.args(["k8s-init", "--proxy-uid", "1337"]);
        let out = run_with_timeout(&mut init, Duration::from_secs(20));
        assert!(out.status.success(), "{}", describe(&out));
    }
    let rules = ns.pod_rules();
    assert_eq!(rules.matches("table inet netcage").count(), 1, "{rules}");
    assert!(rules.contains("meta skuid 1337 return"), "{rules}");

    // The sidecar: uid 1337, no capabilities.
    let ready = f.shared.join("ready");
    let tokens = f.shared.join("tokens.env");
    let mut sidecar = ns.in_pod(Some(PROXY_UID), "", &netcage);
    sidecar
        .args(["proxy", "--transparent", "--ca-dir"])
        .arg(&f.shared)
        .arg("--tokens-file")
        .arg(&tokens)
        .arg("--ready-file")
        .arg(&ready)
        .arg("--key-file")
        .arg(&f.secret)
        .args([
            "--allow",
            "upstream.test",
            "--seal",
            "API_KEY=upstream.test",
        ])
        .args(["--resolve", &format!("upstream.test={NODE_IP}")])
        .arg("--upstream-ca")
        .arg(&f.upstream_ca)
        .args(["--audit", "-"])
        .env("API_KEY", SECRET)
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&f.log).unwrap());
    let mut sidecar = KillOnDrop::spawn(&mut sidecar);
    wait_until(Duration::from_secs(30), "the sidecar's ready file", || {
        ready.exists() || matches!(sidecar.0.try_wait(), Ok(Some(_)))
    });
    assert!(
        ready.exists(),
        "the sidecar exited: {}",
        std::fs::read_to_string(&f.log).unwrap_or_default()
    );
    let mut probe = ns.in_pod(Some(PROXY_UID), "", &netcage);
    probe.arg("k8s-ready").arg(&ready);
    assert!(
        run_with_timeout(&mut probe, Duration::from_secs(10))
            .status
            .success()
    );
    let bundle = f.shared.join("proxy-ca-bundle.pem");
    assert!(bundle.exists() && tokens.exists());
    assert!(
        !std::fs::read_dir(&f.shared)
            .unwrap()
            .flatten()
            .any(|e| e.file_name().to_string_lossy().contains("key")),
        "only public files in the shared volume"
    );
    let token_text = std::fs::read_to_string(&tokens).unwrap();
    assert!(
        token_text.starts_with("API_KEY=starpod:v1:")
            && free_of(token_text.as_bytes(), SECRET.as_bytes())
    );

    // The app, uid 1000, no capabilities: its requests carry tokens and arrive with secrets.
    let url = format!("https://upstream.test:{}", upstream.port());
    let presealed = seal_with_key(&f.key, SECRET2, &["upstream.test"]);
    let app = |script: &str, args: &[&str]| {
        let mut cmd = ns.in_pod(Some(APP_UID), "", python);
        cmd.args(["-c", script]).args(args);
        python_json(&mut cmd)
    };
    let bundle_s = bundle.to_string_lossy().into_owned();
    let tokens_s = tokens.to_string_lossy().into_owned();
    let got = app(REQUESTS, &[&url, &bundle_s, &tokens_s, &presealed]);
    assert_eq!(got["sidecar"], 200, "{got}");
    assert_eq!(got["presealed"], 200, "{got}");
    let requests = upstream.wait_for_requests(2, Duration::from_secs(10));
    let auth = |path: &str| {
        requests
            .iter()
            .find(|r| r.path() == path)
            .and_then(|r| r.header_str("authorization"))
    };
    assert_eq!(
        auth("/sidecar").as_deref(),
        Some(&*format!("Bearer {SECRET}"))
    );
    assert_eq!(
        auth("/presealed").as_deref(),
        Some(&*format!("Bearer {SECRET2}"))
    );

    let (tcp, udp) = (rec.tcp.to_string(), rec.udp.to_string());
    let secret_s = f.secret.to_string_lossy().into_owned();
    let seen =
        |s: &Seen| [&s.tcp, &s.udp, &s.dns_udp, &s.dns_tcp].map(|c| c.load(Ordering::SeqCst));

    // The control: the same attempts as the proxy's uid reach every recorder (so the
    // recorders and attempts work, and an app as uid 1337 would get out: k8s-check's case).
    let mut control = ns.in_pod(Some(PROXY_UID), "", python);
    control.args(["-c", ATTEMPTS, NODE_IP, &tcp, &udp, "", NODE_IP6]);
    let got = python_json(&mut control);
    eprintln!("control attempts: {got}");
    wait_until(Duration::from_secs(5), "the control's packets", || {
        seen(&rec.seen) == CONTROL
    });
    assert_eq!(got["udp"], "reply:DIRECT-UDP", "{got}");
    assert_eq!(got["udp6"], "reply:DIRECT-UDP6", "{got}");
    assert_eq!(got["icmp"], "reply:type0", "{got}");
    let peers: Vec<String> = rec
        .seen
        .tcp_peers
        .lock()
        .unwrap()
        .iter()
        .map(|p| p.ip().to_canonical().to_string())
        .collect();
    assert_eq!(peers, [POD_IP, POD_IP6]);

    // The app: nothing reaches the node.
    let got = app(ATTEMPTS, &[NODE_IP, &tcp, &udp, &secret_s, NODE_IP6]);
    eprintln!("app attempts: {got}");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        seen(&rec.seen),
        CONTROL,
        "the app got past the rules: {got}"
    );
    assert_ne!(got["udp"], "reply:DIRECT-UDP", "{got}");
    assert_ne!(got["udp6"], "reply:DIRECT-UDP6", "{got}");
    assert!(
        !got["icmp"].as_str().unwrap_or("").starts_with("reply"),
        "{got}"
    );
    assert_eq!(got["icmp_raw"], "EPERM", "{got}");
    assert_eq!(got["af_packet"], "EPERM", "{got}");
    // DNS to the node's resolver was answered by the sidecar: example.com is not allowed.
    assert_eq!(got["dns_udp"], "rcode:3", "{got}");
    assert_eq!(got["dns_tcp"], "rcode:3", "{got}");
    assert_ne!(got["nft_flush"], 0, "{got}");
    assert_eq!(got["secret"], "EACCES", "{got}");
    assert!(!got.to_string().contains(&hex(&f.key)));
    assert_eq!(ns.pod_rules(), rules, "the rules are intact");

    // Without the sidecar: no way out at all (fail closed).
    sidecar.0.kill().unwrap();
    let _ = sidecar.0.wait();
    upstream.clear();
    let got = app(REQUESTS, &[&url, &bundle_s, &tokens_s, &presealed]);
    assert_ne!(got["sidecar"], 200, "{got}");
    let got2 = app(ATTEMPTS, &[NODE_IP, &tcp, &udp, "", NODE_IP6]);
    std::thread::sleep(Duration::from_millis(500));
    assert!(upstream.requests().is_empty(), "{got}");
    assert_eq!(
        seen(&rec.seen),
        CONTROL,
        "egress without the sidecar: {got2}"
    );
    assert_eq!(got2["tcp"], "ECONNREFUSED", "{got2}");
    assert_eq!(got2["tcp6"], "ECONNREFUSED", "{got2}");
}
