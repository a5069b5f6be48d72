//! The proxy under hostile load (issue 12, DESIGN §1.6): a command that holds connections open
//! or floods the proxy with bodies. Each test sets short `[limits]` in a `--policy` file (the
//! values are in the test) and measures from outside: the client socket inside the sandbox
//! sees EOF or a reset within the limit plus [`SLACK`], and the audit log has one line naming
//! the limit. Tier 1 (root and rootless) from Python in the sandbox; Tier 0 (`netcage proxy`,
//! `CONNECT`) from Python on the host. HTTP/2 frames are written by hand (`h2` is not
//! installed).

mod common;
mod tier0;
mod tier1_support;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;
use tier1_support::*;

/// `tests/tier0` is written for a tier; only its `netcage proxy` helpers are used here.
const TIER: &str = "env";

/// How much later than its limit a connection may close (a loaded 2-core machine).
const SLACK: f64 = 2.0;

/// Python helpers every script here starts with: connections to `HOST:PORT` (through
/// `CONNECT` at `PROXY` when that is set, for Tier 0), TLS without verification (the attacks
/// are on the proxy, not on its certificates), waiting for a socket to close, and HTTP/2
/// frames.
const PRELUDE: &str = r#"
import json, os, re, select, socket, ssl, struct, sys, threading, time
HOST, PORT = sys.argv[1], int(sys.argv[2])
PROXY = os.environ.get("LOAD_PROXY")

def context(alpn):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(alpn)
    return ctx
H1, H2 = context(["http/1.1"]), context(["h2"])

def tcp(host=HOST, port=PORT):
    if PROXY:
        s = socket.create_connection(("127.0.0.1", int(PROXY)), timeout=60)
        s.sendall(b"CONNECT %s:%d HTTP/1.1\r\nHost: %s:%d\r\n\r\n" % (host.encode(), port, host.encode(), port))
        head = b""
        while b"\r\n\r\n" not in head:
            head += s.recv(1)
        assert b" 200 " in head, head
    else:
        s = socket.create_connection((host, port), timeout=60)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s

def tls(ctx=H1, host=HOST):
    return ctx.wrap_socket(tcp(host), server_hostname=host)

def port_of(s):
    return s.getsockname()[1]

def h1_get(s, path):
    """Sends a GET for `path` on `s` and reads the whole response: its status line, or
    "closed" if the connection ends first."""
    s.sendall(b"GET %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (path.encode(), HOST.encode()))
    buf = b""
    while b"\r\n\r\n" not in buf:
        data = s.recv(65536)
        if not data:
            return "closed"
        buf += data
    head, body = buf.split(b"\r\n\r\n", 1)
    m = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
    while m and len(body) < int(m.group(1)):
        data = s.recv(65536)
        if not data:
            return "closed"
        body += data
    return head.split(b"\r\n")[0].decode()

def until_closed(s, t0, every=None, trickle=b"", on_data=None):
    """Reads (and sends `trickle` one byte per `every` s) until EOF or reset: seconds since
    t0, and what was read."""
    got, i = b"", 0
    while True:
        if trickle and i < len(trickle):
            try:
                s.send(trickle[i:i + 1])
                i += 1
            except OSError:
                break
        if not (isinstance(s, ssl.SSLSocket) and s.pending()):
            ready, _, _ = select.select([s], [], [], every if trickle else 60)
            if not ready:
                continue
        try:
            d = s.recv(65536)
        except (OSError, ssl.SSLError):
            break
        if not d:
            break
        got += d
        if on_data:
            on_data(s, d)
    return time.monotonic() - t0, got

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

def frame(kind, flags, stream, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload

def frames(buf):
    """Complete frames at the start of buf: [(kind, flags, stream, payload)], the rest."""
    out = []
    while len(buf) >= 9:
        n = int.from_bytes(buf[:3], "big")
        if len(buf) < 9 + n:
            break
        out.append((buf[3], buf[4], int.from_bytes(buf[5:9], "big") & 0x7fffffff, buf[9:9 + n]))
        buf = buf[9 + n:]
    return out, buf

def literal(name, value):
    """An HPACK literal header field without indexing, no Huffman (names and values < 127)."""
    return b"\x00" + bytes([len(name)]) + name + bytes([len(value)]) + value

class H2Peer:
    """Acknowledges the server's SETTINGS and PINGs, as a live client does."""
    def __init__(self):
        self.buf, self.seen = b"", []
    def __call__(self, s, data):
        done, self.buf = frames(self.buf + data)
        for kind, flags, stream, payload in done:
            self.seen.append(kind)
            if kind == 4 and not flags & 1:
                s.sendall(frame(4, 1, 0))
            if kind == 6 and not flags & 1:
                s.sendall(frame(6, 1, 0, payload))
"#;

/// The attacks of [`slow_and_idle_connections_are_closed_by_their_limits`], each in a thread
/// of its own; prints `{name: [seconds until closed, client port, first bytes read]}`.
const ATTACKS: &str = r#"
RAW = sys.argv[3]
HEAD = b"GET /slow HTTP/1.1\r\nHost: " + HOST.encode() + b"\r\nX-Padding: " + b"a" * 60 + b"\r\n\r\n"

def silent():
    s = tcp()
    return until_closed(s, time.monotonic()), port_of(s)

def lone_0x16():
    s = tcp()
    s.sendall(b"\x16")
    return until_closed(s, time.monotonic()), port_of(s)

def partial_client_hello():
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    hello = H1.wrap_bio(incoming, outgoing, server_hostname=HOST)
    try:
        hello.do_handshake()
    except ssl.SSLWantReadError:
        pass
    data = outgoing.read()
    s = tcp()
    s.sendall(data[:len(data) // 2])
    return until_closed(s, time.monotonic()), port_of(s)

def head_1_byte_per_second_plain():
    s = tcp()
    return until_closed(s, time.monotonic(), every=1.0, trickle=HEAD), port_of(s)

def head_1_byte_per_second_tls():
    s = tls()
    return until_closed(s, time.monotonic(), every=1.0, trickle=HEAD), port_of(s)

def stalled_body():
    s = tls()
    s.sendall(b"POST /upload HTTP/1.1\r\nHost: " + HOST.encode() + b"\r\nContent-Length: 100000\r\n\r\n" + b"x" * 1000)
    return until_closed(s, time.monotonic()), port_of(s)

def stalled_streamed_body():
    s = tls()
    s.sendall(b"POST /upload HTTP/1.1\r\nHost: " + HOST.encode() + b"\r\nTransfer-Encoding: chunked\r\n\r\n3e8\r\n" + b"x" * 1000 + b"\r\n")
    return until_closed(s, time.monotonic()), port_of(s)

def idle_keep_alive_h1():
    s = tls()
    status = h1_get(s, "/ka")
    secs, _ = until_closed(s, time.monotonic())
    return (secs, status), port_of(s)

def idle_h2():
    s = tls(H2)
    assert s.selected_alpn_protocol() == "h2", s.selected_alpn_protocol()
    s.sendall(PREFACE + frame(4, 0, 0))
    peer = H2Peer()
    secs, _ = until_closed(s, time.monotonic(), on_data=peer)
    return (secs, "goaway" if 7 in peer.seen else "no goaway"), port_of(s)

def idle_raw_tcp():
    s = tcp(RAW)
    return until_closed(s, time.monotonic()), port_of(s)

ATTACKS = [silent, lone_0x16, partial_client_hello, head_1_byte_per_second_plain,
           head_1_byte_per_second_tls, stalled_body, stalled_streamed_body, idle_keep_alive_h1,
           idle_h2, idle_raw_tcp]
if len(sys.argv) > 4:
    ATTACKS = [a for a in ATTACKS if a.__name__ in sys.argv[4].split(",")]
results = {}
def run(attack):
    try:
        (secs, got), port = attack()
        results[attack.__name__] = [secs, port, got[:40].decode(errors="replace") if isinstance(got, bytes) else got]
    except Exception as e:
        results[attack.__name__] = [None, None, repr(e)]
threads = [threading.Thread(target=run, args=(a,)) for a in ATTACKS]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(json.dumps(results))
"#;

/// Which limit closes each attack of [`ATTACKS`], with what the client read.
const EXPECTED: &[(&str, &str, &str)] = &[
    ("silent", "tls_handshake_secs", ""),
    ("lone_0x16", "tls_handshake_secs", ""),
    ("partial_client_hello", "tls_handshake_secs", ""),
    ("head_1_byte_per_second_plain", "request_head_secs", ""),
    ("head_1_byte_per_second_tls", "request_head_secs", ""),
    ("stalled_body", "body_stall_secs", "HTTP/1.1 408"),
    ("stalled_streamed_body", "body_stall_secs", "HTTP/1.1 408"),
    ("idle_keep_alive_h1", "idle_secs", "HTTP/1.1 200"),
    ("idle_h2", "idle_secs", "goaway"),
    ("idle_raw_tcp", "idle_secs", ""),
];

/// The limits of the timeout tests: distinct, so the time a connection closed at shows which
/// limit closed it.
fn timeout_limits() -> HashMap<&'static str, f64> {
    HashMap::from([
        ("tls_handshake_secs", 2.0),
        ("request_head_secs", 3.0),
        ("idle_secs", 4.0),
        ("body_stall_secs", 5.0),
    ])
}

fn limits_toml(limits: &HashMap<&'static str, f64>) -> String {
    let mut text = String::from("[limits]\n");
    for (key, value) in limits {
        text.push_str(&format!("{key} = {value:?}\n"));
    }
    text
}

/// Checks each attack's result against [`EXPECTED`]: closed within `[limit - 0.3, limit +
/// SLACK]` seconds, and exactly one audit line from its client port naming `limits.KEY`.
fn check_attacks(
    what: &str,
    results: &Value,
    limits: &HashMap<&'static str, f64>,
    audit: impl Fn() -> Vec<Value>,
) {
    let mut report = Vec::new();
    for (name, key, read) in EXPECTED {
        let Some(result) = results.get(name) else {
            continue;
        };
        let limit = limits[key];
        let secs = result[0]
            .as_f64()
            .unwrap_or_else(|| panic!("[{what}] {name} failed in the client: {result}"));
        report.push(format!(
            "{name}: closed after {secs:.2} s (limits.{key} = {limit})"
        ));
        assert!(
            secs >= limit - 0.3 && secs <= limit + SLACK,
            "[{what}] {name} closed after {secs:.2} s; limits.{key} = {limit} s: {results}"
        );
        let shown = result[2].as_str().unwrap_or_default();
        assert!(shown.starts_with(read), "[{what}] {name} read {shown:?}");
        let port = result[1].as_u64().unwrap();
        let prefix = format!("limits.{key}:");
        let mut lines = Vec::new();
        wait_until(WAIT, &format!("[{what}] the audit line for {name}"), || {
            lines = audit()
                .into_iter()
                .filter(|l| field(l, "client").ends_with(&format!(":{port}")))
                .filter(|l| field(l, "reason").starts_with("limits."))
                .collect();
            !lines.is_empty()
        });
        thread::sleep(Duration::from_millis(200));
        let lines: Vec<Value> = audit()
            .into_iter()
            .filter(|l| field(l, "client").ends_with(&format!(":{port}")))
            .filter(|l| field(l, "reason").starts_with("limits."))
            .collect();
        assert_eq!(lines.len(), 1, "[{what}] {name}: {lines:#?}");
        let reason = field(&lines[0], "reason");
        assert!(
            reason.starts_with(&prefix) && reason.contains(&format!(" {limit} s")),
            "[{what}] {name}: {}",
            lines[0]
        );
        assert_eq!(field(&lines[0], "decision"), "block", "{}", lines[0]);
    }
    eprintln!("[{what}]\n  {}", report.join("\n  "));
}

#[test]
fn slow_and_idle_connections_are_closed_by_their_limits() {
    for_each_mode(|mode| {
        let fx = Fx::new(mode);
        let limits = timeout_limits();
        let port = fx.up.port().to_string();
        // Raw TCP to OTHER: relayed to the upstream's TLS port, where nobody says a word.
        let policy = format!(
            "[egress]\ntcp = [\"{OTHER}:{port}\"]\n{}",
            limits_toml(&limits)
        );
        let policy = fx.write("policy.toml", &policy);
        let script = format!("{PRELUDE}{ATTACKS}");
        let out = fx.python(
            &["--policy", policy.to_str().unwrap()],
            &script,
            &[BOUND, &port, OTHER],
        );
        let results: Value = serde_json::from_str(stdout_str(succeeded(&out)).trim())
            .unwrap_or_else(|e| panic!("{e}: {}", describe(&out)));
        check_attacks(mode.name(), &results, &limits, || fx.audit_lines());
    });
}

#[test]
fn tier0_slow_and_idle_connections_are_closed_by_their_limits() {
    let fx = tier0::Fx::new();
    let limits = timeout_limits();
    let policy = fx.env.path("policy.toml");
    std::fs::write(&policy, limits_toml(&limits)).unwrap();
    let proxy = tier0::ProxyProc::start(&fx, &["--policy", policy.to_str().unwrap()]);
    let port = fx.up.port().to_string();
    // The same attacks inside CONNECT, and a CONNECT head sent 1 byte/s.
    let script = format!(
        "{PRELUDE}{}",
        ATTACKS.replace(
            "ATTACKS = [silent,",
            "def connect_head_1_byte_per_second():\n    \
             s = socket.create_connection((\"127.0.0.1\", int(PROXY)))\n    \
             line = b\"CONNECT %s:%d HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n\" % (HOST.encode(), PORT)\n    \
             return until_closed(s, time.monotonic(), every=1.0, trickle=line), port_of(s)\n\
             ATTACKS = [connect_head_1_byte_per_second, silent,"
        )
    );
    let attacks = [
        "connect_head_1_byte_per_second",
        "silent",
        "lone_0x16",
        "partial_client_hello",
        "head_1_byte_per_second_tls",
        "stalled_body",
        "idle_keep_alive_h1",
        "idle_h2",
    ];
    let mut cmd = std::process::Command::new("python3");
    cmd.args([
        "-c",
        &script,
        tier0::BOUND,
        &port,
        "unused",
        &attacks.join(","),
    ])
    .env("LOAD_PROXY", proxy.port.to_string());
    let out = run_with_timeout(&mut cmd, tier0::RUN_TIMEOUT);
    let results: Value = serde_json::from_str(stdout_str(succeeded(&out)).trim())
        .unwrap_or_else(|e| panic!("{e}: {}", describe(&out)));
    assert_eq!(
        results.as_object().map(|o| o.len()),
        Some(attacks.len()),
        "{results}"
    );
    // The CONNECT head is the proxy's own request head.
    let connect = &results["connect_head_1_byte_per_second"];
    let secs = connect[0].as_f64().unwrap();
    assert!(
        (3.0 - 0.3..=3.0 + SLACK).contains(&secs),
        "the CONNECT head sent 1 byte/s was closed after {secs:.2} s; limits.request_head_secs = 3"
    );
    let port = connect[1].as_u64().unwrap();
    let line = fx.wait_audit("the CONNECT head's limit", |l| {
        field(l, "client").ends_with(&format!(":{port}"))
            && field(l, "reason").starts_with("limits.request_head_secs:")
    });
    assert_eq!(field(&line, "decision"), "block", "{line}");
    check_attacks("tier 0", &results, &limits, || fx.audit_lines());
}

#[test]
fn streams_that_keep_sending_are_not_idle_and_a_silent_upstream_is_cut() {
    for_each_mode(|mode| {
        let fx = Fx::new(mode);
        // An upstream that sends nothing for 1.5 s is cut; an event stream that sends every
        // second for 5 s is not.
        let limit = 1.5;
        let policy = fx.write(
            "policy.toml",
            &format!("[limits]\nupstream_idle_secs = {limit}\n"),
        );
        let script = r#"
            get() { curl -sS --max-time 30 "$@" -w '\n%{http_code} %{time_total}\n'; echo "exit $?"; }
            get --http2 "$1/sse?events=6&ms=1000" > sse.out 2>&1 &
            get --http1.1 "$1/silent" > silent.out 2>&1 &
            get --http2 "$1/sleep?ms=30000" > sleep.out 2>&1 &
            wait
            for f in sse silent sleep; do echo "== $f"; cat $f.out; done"#;
        let base = fx.url(BOUND, "");
        let out = fx.sh(&["--policy", policy.to_str().unwrap()], script, &[&base]);
        let text = stdout_str(succeeded(&out));
        let part = |name: &str| -> (String, u16, f64, i32) {
            let body = text
                .split(&format!("== {name}\n"))
                .nth(1)
                .and_then(|rest| rest.split("\n== ").next())
                .unwrap_or_else(|| panic!("no {name} in {text}"));
            let lines: Vec<&str> = body.lines().collect();
            let exit: i32 = lines[lines.len() - 1]
                .trim_start_matches("exit ")
                .parse()
                .unwrap();
            let mut status = lines[lines.len() - 2].split(' ');
            let code = status.next().unwrap().parse().unwrap();
            let secs = status.next().unwrap().parse().unwrap();
            (lines[..lines.len() - 2].join("\n"), code, secs, exit)
        };
        let (sse, code, secs, exit) = part("sse");
        assert_eq!((code, exit), (200, 0), "{text}");
        assert_eq!(sse.matches("event: tick").count(), 6, "{text}");
        assert!(secs >= 5.0, "the event stream took {secs} s: {text}");
        let (silent, code, cut, exit) = part("silent");
        assert_eq!(code, 200, "{text}");
        assert_ne!(exit, 0, "curl saw the silent body end cleanly: {text}");
        assert!(silent.lines().any(|l| l == "start"), "{text}");
        assert!(
            (limit - 0.3..=limit + SLACK).contains(&cut),
            "the silent upstream was cut after {cut} s (limits.upstream_idle_secs = {limit}): {text}"
        );
        let (sleep, code, secs, _) = part("sleep");
        assert_eq!(code, 504, "{text}");
        assert!(sleep.contains("limits.upstream_idle_secs"), "{text}");
        assert!(
            (limit - 0.3..=limit + SLACK).contains(&secs),
            "the upstream that did not answer was given up after {secs} s: {text}"
        );
        eprintln!(
            "[{}] the silent body was cut after {cut:.2} s, the silent head given up after {secs:.2} s \
             (limits.upstream_idle_secs = {limit})",
            mode.name()
        );

        for (path, decision) in [("/silent", "error"), ("/sleep", "error"), ("/sse", "allow")] {
            let line = fx.wait_audit(path, |l| field(l, "path") == path);
            assert_eq!(field(&line, "decision"), decision, "{line}");
            if decision == "error" {
                let reason = field(&line, "reason");
                assert!(
                    reason.starts_with("limits.upstream_idle_secs:") && reason.contains(" 1.5 s"),
                    "{line}"
                );
            } else {
                assert!(line.get("reason").is_none(), "{line}");
            }
        }
    });
}

/// 200 HTTP/1.1 uploads over TLS, each announcing 8 MiB and sending all but the last 64 KiB
/// (or as much as the proxy takes), and one HTTP/2 connection opening 150 such streams,
/// respecting flow control; then a normal request, then everything closed. Prints one JSON
/// line per phase (`what`), the last with the counts.
const FLOOD: &str = r#"
import subprocess
N_H1, N_H2, NORMAL = int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
BODY = 8 * 1024 * 1024
def mark(what, **kw):
    print(json.dumps(dict(what=what, **kw)), flush=True)

held, statuses, lock = [], {}, threading.Lock()

def upload(i):
    try:
        s = tls()
    except OSError as e:
        with lock:
            statuses["connect: " + repr(e)] = statuses.get("connect: " + repr(e), 0) + 1
        return
    with lock:
        held.append(s)
    s.settimeout(3)
    chunk = b"u" * 65536
    try:
        s.sendall(b"POST /upload HTTP/1.1\r\nHost: %s\r\nContent-Length: %d\r\n\r\n" % (HOST.encode(), BODY))
        for _ in range(BODY // len(chunk) - 1):
            s.sendall(chunk)
    except OSError:
        pass  # the proxy is not reading this one (yet)
    s.settimeout(10)
    try:
        got = s.recv(4096)
        status = got.split(b"\r\n")[0].decode() + (" limit" if b"limits.body_memory_mib" in got else "")
    except OSError as e:
        status = "none"
    with lock:
        statuses[status] = statuses.get(status, 0) + 1

h2 = dict(refused=0, memory=0, other_rst=0, goaway=False)

def h2_flood(stop):
    s = tls(H2)
    with lock:
        held.append(s)
    s.settimeout(10)
    s.sendall(PREFACE + frame(4, 0, 0))
    streams = [1 + 2 * i for i in range(N_H2)]
    for sid in streams:
        block = (literal(b":method", b"POST") + literal(b":scheme", b"https") +
                 literal(b":path", b"/upload") + literal(b":authority", HOST.encode()) +
                 literal(b"content-length", str(BODY).encode()))
        s.sendall(frame(1, 4, sid, block))
    conn_window, initial, windows, sent, done, buf = 65535, 65535, {}, {}, set(), b""
    started = time.monotonic()
    while not stop.is_set() and not h2["goaway"]:
        # Data only after the server has had time to refuse the streams over its limit.
        open_ = [sid for sid in streams if sid not in done and sent.get(sid, 0) < BODY - 65536]
        sendable = time.monotonic() - started > 0.5 and conn_window > 0 and any(
            windows.get(sid, initial) > 0 for sid in open_)
        ready, _, _ = select.select([s], [], [], 0 if sendable else 0.2)
        if ready or s.pending():
            data = s.recv(65536)
            if not data:
                break
            got, buf = frames(buf + data)
            for kind, flags, stream, payload in got:
                if kind == 4 and not flags & 1:
                    for k in range(0, len(payload), 6):
                        key, value = struct.unpack(">HI", payload[k:k + 6])
                        if key == 4:
                            for sid in windows:
                                windows[sid] += value - initial
                            initial = value
                    s.sendall(frame(4, 1, 0))
                elif kind == 6 and not flags & 1:
                    s.sendall(frame(6, 1, 0, payload))
                elif kind == 8:
                    inc = struct.unpack(">I", payload)[0] & 0x7fffffff
                    if stream == 0:
                        conn_window += inc
                    else:
                        windows[stream] = windows.get(stream, initial) + inc
                elif kind == 3:
                    code = struct.unpack(">I", payload)[0]
                    if stream not in done:
                        h2["refused" if code == 7 else "other_rst"] += 1
                    done.add(stream)
                elif kind == 0:
                    if b"limits.body_memory_mib" in payload:
                        h2["memory"] += 1
                    if flags & 1:
                        done.add(stream)
                elif kind == 7:
                    h2["goaway"] = True
            continue
        if not sendable:
            continue
        for sid in open_:
            n = min(16384, conn_window, windows.get(sid, initial), BODY - 65536 - sent.get(sid, 0))
            if n <= 0:
                continue
            s.sendall(frame(0, 0, sid, b"h" * n))
            conn_window -= n
            windows[sid] = windows.get(sid, initial) - n
            sent[sid] = sent.get(sid, 0) + n
            break

mark("start")
stop = threading.Event()
h2_thread = threading.Thread(target=h2_flood, args=(stop,))
h2_thread.start()
uploads = [threading.Thread(target=upload, args=(i,)) for i in range(N_H1)]
for t in uploads:
    t.start()
for t in uploads:
    t.join()
mark("flood", held=len(held))
t0 = time.monotonic()
normal = subprocess.run(["curl", "-sS", "--max-time", "20", "-o", "/dev/null", "-w", "%{http_code}", NORMAL],
                        capture_output=True, text=True)
mark("normal", status=normal.stdout + normal.stderr, secs=time.monotonic() - t0)
time.sleep(1)
stop.set()
h2_thread.join()
for s in held:
    s.close()
mark("closed")
time.sleep(float(os.environ.get("LOAD_QUIET", "12")))
mark("end", statuses=statuses, h2=h2)
"#;

/// How long the flood script waits after closing everything, seconds (`LOAD_QUIET`).
const QUIET: u64 = 8;

/// VmRSS of `pid` in MiB.
fn rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

#[test]
fn a_body_flood_stays_within_the_memory_budget_and_others_are_served() {
    for_each_mode(|mode| {
        let fx = Fx::new(mode);
        // The default budget (64 MiB: eight 8 MiB bodies, four of them one command's) and stream
        // limit (100), a short
        // wait for room, and a long stall limit so the eight that got room hold it.
        let (budget_mib, max_streams, wait) = (64u64, 100u64, 4.0);
        let policy = fx.write(
            "policy.toml",
            &format!(
                "[limits]\nbody_memory_mib = {budget_mib}\nh2_max_streams = {max_streams}\n\
                 body_wait_secs = {wait:?}\nbody_stall_secs = 60.0\n"
            ),
        );
        let (n_h1, n_h2) = (200u64, 150u64);
        let script = format!("{PRELUDE}{FLOOD}");
        let normal = fx.url(BOUND, "/normal");
        let port = fx.up.port().to_string();
        let mut child = vec!["python3", "-c", &script, BOUND, &port];
        let (h1s, h2s) = (n_h1.to_string(), n_h2.to_string());
        child.extend([h1s.as_str(), h2s.as_str(), normal.as_str()]);
        let mut cmd = fx.run_cmd(&["--policy", policy.to_str().unwrap()], &child);
        cmd.env("LOAD_QUIET", QUIET.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut run = KillOnDrop::spawn(&mut cmd);
        let pid = run.id();
        let (tx, phases) = mpsc::channel::<Value>();
        let stdout = run.0.stdout.take().unwrap();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    let _ = tx.send(v);
                }
            }
        });
        let stderr = run.0.stderr.take().unwrap();
        let errors = thread::spawn(move || {
            let mut text = String::new();
            let _ = std::io::Read::read_to_string(&mut BufReader::new(stderr), &mut text);
            text
        });

        // Sample the proxy's RSS until the script ends; note it at each phase.
        let deadline = Instant::now() + Duration::from_secs(120);
        let (mut peak, mut at) = (0f64, HashMap::new());
        let mut samples = Vec::new();
        let mut seen: Vec<Value> = Vec::new();
        let mut end = None;
        while end.is_none() {
            assert!(Instant::now() < deadline, "the flood did not end in time");
            if let Some(rss) = rss_mib(pid) {
                peak = peak.max(rss);
                samples.push(rss);
            }
            while let Ok(phase) = phases.try_recv() {
                let what = field(&phase, "what").to_owned();
                at.insert(what.clone(), samples.last().copied().unwrap_or(0.0));
                if what == "end" {
                    end = Some(phase.clone());
                }
                seen.push(phase);
            }
            if run.0.try_wait().unwrap().is_some() && end.is_none() {
                thread::sleep(Duration::from_millis(200));
                if let Ok(phase) = phases.try_recv() {
                    end = Some(phase);
                    continue;
                }
                panic!(
                    "the flood script ended early (phases {seen:?}): {}",
                    errors.join().unwrap()
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
        let end = end.unwrap();
        let status = run.0.wait().unwrap();
        assert!(status.success(), "{status}: {}", errors.join().unwrap());
        let last = *samples.last().unwrap();
        eprintln!(
            "[{}] netcage RSS: start {:.1} MiB, peak {peak:.1} MiB, when the flood ended \
             {:.1} MiB, {QUIET} s later {last:.1} MiB; {end}",
            mode.name(),
            at["start"],
            at["closed"],
        );
        assert!(
            peak < 300.0,
            "[{}] netcage's RSS reached {peak:.1} MiB under the flood: {end}",
            mode.name()
        );
        // And gave the memory back once the flood was over.
        let start = at["start"];
        assert!(
            last < start + 5.0,
            "[{}] netcage kept {last:.1} MiB after the flood (it started with {start:.1} MiB)",
            mode.name()
        );

        // The normal request went through while the flood held the budget.
        let normal = seen.iter().find(|p| field(p, "what") == "normal").unwrap();
        eprintln!(
            "[{}] the normal request during the flood: {normal}",
            mode.name()
        );
        assert_eq!(field(normal, "status"), "200", "{normal}");
        assert!(normal["secs"].as_f64().unwrap() < 5.0, "{normal}");

        // Every body beyond the four of the exec's half of the budget was refused with the
        // limit; HTTP/2 refused the streams beyond its limit.
        let statuses = &end["statuses"];
        let h1_refused = statuses["HTTP/1.1 503 Service Unavailable limit"]
            .as_u64()
            .unwrap_or(0);
        let h2_refused = end["h2"]["memory"].as_u64().unwrap();
        let room = budget_mib / 2 / 8;
        assert_eq!(
            h1_refused + h2_refused,
            n_h1 + max_streams - room,
            "bodies refused for want of room: {end}"
        );
        assert_eq!(
            end["h2"]["refused"].as_u64(),
            Some(n_h2 - max_streams),
            "{end}"
        );
        let lines = fx.audit_lines();
        let refusals = lines
            .iter()
            .filter(|l| field(l, "reason").starts_with("limits.body_memory_mib:"))
            .count() as u64;
        assert_eq!(refusals, h1_refused + h2_refused);
        assert!(
            lines
                .iter()
                .any(|l| field(l, "path") == "/upload" && l["status"] == 503),
            "the refusals are 503s"
        );
    });
}

#[test]
fn heads_over_max_header_bytes_get_431_and_go_nowhere() {
    for_each_mode(|mode| {
        let fx = Fx::new(mode);
        // A 5,000-byte header against a 4,096-byte limit, over HTTP/1.1 and HTTP/2; a 3,000-byte
        // one passes.
        let policy = fx.write("policy.toml", "[limits]\nmax_header_bytes = 4096\n");
        let script = format!(
            "{PRELUDE}{}",
            r#"
def h1(size):
    s = tls()
    s.sendall(b"GET /h1-%d HTTP/1.1\r\nHost: %s\r\nX-Big: %s\r\n\r\n" % (size, HOST.encode(), b"b" * size))
    return s.recv(100).split(b"\r\n")[0].decode()

def hpack_int(n, prefix):
    if n < (1 << prefix) - 1:
        return bytes([n])
    out, n = [(1 << prefix) - 1], n - ((1 << prefix) - 1)
    while n >= 128:
        out.append(n % 128 + 128)
        n //= 128
    return bytes(out + [n])

def h2(size):
    s = tls(H2)
    s.sendall(PREFACE + frame(4, 0, 0))
    block = (literal(b":method", b"GET") + literal(b":scheme", b"https") +
             literal(b":path", b"/h2-%d" % size) + literal(b":authority", HOST.encode()) +
             b"\x00" + hpack_int(5, 7) + b"x-big" + hpack_int(size, 7) + b"b" * size)
    s.sendall(frame(1, 5, 1, block))
    buf = b""
    while True:
        data = s.recv(65536)
        if not data:
            return "closed"
        got, buf = frames(buf + data)
        for kind, flags, stream, payload in got:
            if kind == 4 and not flags & 1:
                s.sendall(frame(4, 1, 0))
            if kind == 1 and stream == 1:
                # :status as a literal (plain or Huffman-coded "431"), or indexed 200 (0x88).
                if b"\x03431" in payload or b"\x83\x69\x90\xff" in payload:
                    return "431"
                return "200" if payload[:1] == b"\x88" else "other: " + payload.hex()
            if kind == 7 or kind == 3:
                return "reset"

print(json.dumps({"h1_big": h1(5000), "h1_ok": h1(3000), "h2_big": h2(5000), "h2_ok": h2(3000)}))
"#
        );
        let port = fx.up.port().to_string();
        let out = fx.python(
            &["--policy", policy.to_str().unwrap()],
            &script,
            &[BOUND, &port],
        );
        let got: Value = serde_json::from_str(stdout_str(succeeded(&out)).trim())
            .unwrap_or_else(|e| panic!("{e}: {}", describe(&out)));
        assert_eq!(
            got["h1_big"], "HTTP/1.1 431 Request Header Fields Too Large",
            "{got}"
        );
        assert_eq!(got["h1_ok"], "HTTP/1.1 200 OK", "{got}");
        assert_eq!(got["h2_big"], "431", "{got}");
        assert_eq!(got["h2_ok"], "200", "{got}");
        let paths: Vec<String> = fx
            .up
            .requests()
            .iter()
            .map(|r| r.path().to_owned())
            .collect();
        assert!(!paths.iter().any(|p| p.contains("5000")), "{paths:?}");
        assert_eq!(paths.len(), 2, "{paths:?}");
    });
}

/// A keep-alive connection at rest between requests (its serving handed to a task of its own,
/// `workers::detach`) still holds its place in the command's budget: with
/// `connections_per_exec = 3`, three connections that have each served a request and rested
/// leave no room for a fourth, and each serves its next request.
#[test]
fn connections_at_rest_keep_their_place_in_the_exec_budget() {
    for_each_mode(|mode| {
        let fx = Fx::new(mode);
        let policy = fx.write("policy.toml", "[limits]\nconnections_per_exec = 3\n");
        let script = format!(
            "{PRELUDE}{}",
            r#"
held = [tls() for _ in range(3)]
first = [h1_get(s, "/rest-%d-a" % i) for i, s in enumerate(held)]
# Nothing in flight for 250 ms puts a connection at rest.
time.sleep(1.0)
try:
    extra = h1_get(tls(), "/rest-extra")
except (OSError, ssl.SSLError) as e:
    extra = "refused: " + type(e).__name__
second = [h1_get(s, "/rest-%d-b" % i) for i, s in enumerate(held)]
print(json.dumps({"first": first, "extra": extra, "second": second}))
"#
        );
        let port = fx.up.port().to_string();
        let out = fx.python(
            &["--policy", policy.to_str().unwrap()],
            &script,
            &[BOUND, &port],
        );
        let name = mode.name();
        let got: Value = serde_json::from_str(stdout_str(succeeded(&out)).trim())
            .unwrap_or_else(|e| panic!("[{name}] {e}: {}", describe(&out)));
        let ok = serde_json::json!(["HTTP/1.1 200 OK", "HTTP/1.1 200 OK", "HTTP/1.1 200 OK"]);
        assert_eq!(got["first"], ok, "[{name}] {got}");
        assert!(
            got["extra"]
                .as_str()
                .unwrap_or_default()
                .starts_with("refused"),
            "[{name}] a fourth connection got past the cap of 3: {got}"
        );
        assert_eq!(got["second"], ok, "[{name}] {got}");
        let mut paths: Vec<String> = fx
            .up
            .requests()
            .iter()
            .map(|r| r.path().to_owned())
            .collect();
        paths.sort();
        let mut want: Vec<String> = ["a", "b"]
            .iter()
            .flat_map(|round| (0..3).map(move |i| format!("/rest-{i}-{round}")))
            .collect();
        want.sort();
        assert_eq!(paths, want, "[{name}] what the upstream received");
    });
}
