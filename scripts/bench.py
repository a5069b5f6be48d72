#!/usr/bin/env python3
"""netcage's benchmark driver (run it through scripts/bench, which installs and builds first).

On loopback only: an nginx HTTPS server (HTTP/1.1 + HTTP/2) for `bench.local`, reached
  direct       straight from the load generator,
  netcage      through `netcage proxy` (Tier 0, CONNECT),
  netcage-t1   from inside `netcage run --tier netns` (Tier 1, transparent; root only),
  mitmproxy    through mitmdump (regular mode, its CA trusted, upstream CA configured),
  squid        through squid with ssl-bump (squid-openssl),
  haproxy      through HAProxy as a TLS-terminating reverse proxy (clients connect to it as if it
               were the server; TLS again to nginx, keep-alive both sides, `http-reuse always`):
               not an intercepting proxy, but the data-path anchor of a C proxy doing the same
               TLS work per request.
For `direct` the run also measures the physical floor: the CPU per request of the load generator
and nginx together, which is what a perfect TLS-intercepting proxy would spend (it does one TLS
server's and one TLS client's work per request); each proxy's CPU per request is also shown as a
multiple of that floor, from the same round.
Every workload runs in rounds that visit every variant in turn (direct, netcage, ..., direct,
netcage, ...), so a noisy machine slows all of them alike; each cell is the median over rounds and
each ratio is the median of the per-round ratios to `direct`.

Output: one markdown table (stdout and target/bench/results.md) and target/bench/results.json.
"""

import argparse
import datetime
import json
import os
import platform
import re
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# The cargo profile the binaries were built with (scripts/bench builds them): `dist`, the one
# shipped binaries use (whole-program LTO), unless --profile says otherwise.
PROFILE = "dist"
NETCAGE = LOADGEN = None


def use_profile(name):
    global PROFILE, NETCAGE, LOADGEN
    PROFILE = name
    out = ROOT / "target" / ("debug" if name == "dev" else name)
    NETCAGE, LOADGEN = out / "netcage", out / "examples" / "loadgen"


use_profile(PROFILE)
VENV = ROOT / "target" / "bench-venv"
OUT = ROOT / "target" / "bench"
HOST = "bench.local"
BIG = 64 << 20
SECRET = "ghp_benchSecretValue0123456789abcdefABCD"

VARIANTS = ["direct", "netcage", "netcage-t1", "haproxy", "mitmproxy", "squid"]
LABEL = {
    "direct": "direct",
    "netcage": "netcage T0",
    "netcage-t1": "netcage T1",
    "haproxy": "HAProxy (reverse)",
    "mitmproxy": "mitmproxy",
    "squid": "squid",
}


def log(msg):
    print(f"bench: {msg}", file=sys.stderr, flush=True)


# --- processes -----------------------------------------------------------------------------------

class Procs:
    """Every process this run starts; all are killed (by their own pid / process group) at exit."""

    def __init__(self):
        self.procs = []

    def start(self, name, cmd, **kw):
        kw.setdefault("stdin", subprocess.DEVNULL)
        p = subprocess.Popen([str(c) for c in cmd], start_new_session=True, **kw)
        p.bench_name = name
        self.procs.append(p)
        return p

    def stop(self, p, timeout=5):
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait()
        if p in self.procs:
            self.procs.remove(p)

    def stop_all(self):
        for p in reversed(list(self.procs)):
            self.stop(p)


PROCS = Procs()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, proc, what, timeout=20):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} is not listening on 127.0.0.1:{port} after {timeout}s")


def run(cmd, **kw):
    return subprocess.run([str(c) for c in cmd], check=True, **kw)


def tree_pids(pid):
    """pid and all its descendants."""
    children = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(d.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def cpu_seconds(pid):
    """User + system CPU time of pid and its descendants, seconds."""
    ticks = 0
    for p in tree_pids(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            pass
    return ticks / os.sysconf("SC_CLK_TCK")


def children_cpu():
    """User + system CPU of this process's waited-for children so far (the load generator runs
    as one), seconds."""
    import resource
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def rss_mib(pid):
    """VmRSS of pid and its descendants, MiB."""
    total = 0
    for p in tree_pids(pid):
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


# --- setup ---------------------------------------------------------------------------------------

def make_certs(d):
    """A test CA and a server certificate for bench.local (EC P-256); an RSA CA for squid."""
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    q = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    run(["openssl", "req", "-x509", *ec, "-keyout", d / "ca.key", "-out", d / "ca.pem",
         "-days", "2", "-subj", "/CN=netcage bench CA",
         "-addext", "basicConstraints=critical,CA:TRUE",
         "-addext", "keyUsage=critical,keyCertSign,cRLSign"], **q)
    run(["openssl", "req", *ec, "-keyout", d / "server.key", "-out", d / "server.csr",
         "-subj", f"/CN={HOST}"], **q)
    (d / "ext.cnf").write_text(
        f"subjectAltName=DNS:{HOST}\nbasicConstraints=CA:FALSE\n"
        "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n")
    run(["openssl", "x509", "-req", "-in", d / "server.csr", "-CA", d / "ca.pem",
         "-CAkey", d / "ca.key", "-CAcreateserial", "-out", d / "server.pem", "-days", "2",
         "-extfile", d / "ext.cnf"], **q)
    run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", d / "squid-ca.key",
         "-out", d / "squid-ca.pem", "-days", "2", "-subj", "/CN=squid bench CA",
         "-addext", "basicConstraints=critical,CA:TRUE",
         "-addext", "keyUsage=critical,keyCertSign,cRLSign"], **q)
    for f in d.iterdir():
        f.chmod(0o644)


def start_nginx(d, shm):
    port = free_port()
    www = d / "www"
    www.mkdir()
    # 64 MiB of printable, token-free bytes.
    import base64
    with open(www / "big", "wb") as f:
        for _ in range(BIG // (4 << 20)):
            f.write(base64.b64encode(os.urandom(3 << 20)))
    (www / "big").chmod(0o644)
    for sub in ("dav", "body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (shm / sub).mkdir()
        (shm / sub).chmod(0o777)
    conf = d / "nginx.conf"
    conf.write_text(f"""
daemon off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/nginx-error.log warn;
worker_rlimit_nofile 16384;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    client_body_temp_path {shm}/body;
    proxy_temp_path {shm}/proxy;
    fastcgi_temp_path {shm}/fastcgi;
    uwsgi_temp_path {shm}/uwsgi;
    scgi_temp_path {shm}/scgi;
    keepalive_requests 10000000;
    keepalive_timeout 300s;
    http2_max_concurrent_streams 256;
    server {{
        listen 127.0.0.1:{port} ssl http2;
        server_name {HOST};
        ssl_certificate {d}/server.pem;
        ssl_certificate_key {d}/server.key;
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_session_cache shared:SSL:10m;
        location = /small {{ default_type text/plain; return 200 "hello from nginx, bench\\n"; }}
        location = /big {{ root {www}; default_type application/octet-stream; }}
        location /upload/ {{
            root {shm}/dav;
            dav_methods PUT;
            create_full_put_path on;
            client_max_body_size 0;
            client_body_buffer_size 1m;
        }}
    }}
}}
""")
    (d / "server.key").chmod(0o600)
    p = PROCS.start("nginx", ["nginx", "-c", conf, "-p", d],
                    stdout=subprocess.DEVNULL, stderr=open(d / "nginx.stderr", "wb"))
    wait_port(port, p, "nginx")
    return p, port


def read_line(p, stream, timeout, what):
    deadline = time.time() + timeout
    buf = b""
    fd = stream.fileno()
    while time.time() < deadline:
        r, _, _ = select.select([fd], [], [], 0.2)
        if r:
            ch = os.read(fd, 1)
            if not ch:
                break
            if ch == b"\n":
                return buf.decode()
            buf += ch
        elif p.poll() is not None:
            break
    raise RuntimeError(f"{what}: no line after {timeout}s (got {buf!r})")


def start_netcage(d, ca):
    data = d / "netcage-data"
    data.mkdir()
    env = dict(os.environ, BENCH_TOKEN=SECRET)
    p = PROCS.start("netcage", [NETCAGE, "proxy", "--listen", "127.0.0.1:0", "--data-dir", data,
                                "--upstream-ca", ca, "--resolve", f"{HOST}=127.0.0.1",
                                "--audit", d / "netcage-audit.jsonl",
                                "--seal", f"BENCH_TOKEN={HOST}"],
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    token = read_line(p, p.stdout, 20, "netcage proxy's token").split("=", 1)[1]
    line = read_line(p, p.stderr, 20, "netcage proxy's listening line")
    m = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
    if not m:
        raise RuntimeError(f"netcage proxy: unexpected line {line!r}")
    # Nothing else reads its stderr from here on: keep it from filling the pipe.
    drain(p.stderr, d / "netcage.stderr")
    port = int(m.group(1))
    wait_port(port, p, "netcage proxy")
    return p, port, data / "proxy-ca-bundle.pem", token


def drain(stream, path):
    import threading

    def pump():
        with open(path, "ab") as f:
            while True:
                chunk = stream.read1(65536) if hasattr(stream, "read1") else stream.read(65536)
                if not chunk:
                    return
                f.write(chunk)
    threading.Thread(target=pump, daemon=True).start()


def start_mitmproxy(d, ca):
    mitmdump = VENV / "bin" / "mitmdump"
    if not mitmdump.exists():
        raise RuntimeError(f"{mitmdump} is missing (scripts/bench installs it)")
    conf = d / "mitm"
    conf.mkdir()
    port = free_port()
    p = PROCS.start("mitmproxy", [mitmdump, "-q", "--listen-host", "127.0.0.1",
                                  "--listen-port", port, "--set", f"confdir={conf}",
                                  "--set", f"ssl_verify_upstream_trusted_ca={ca}",
                                  "--set", "stream_large_bodies=1m",
                                  "--set", "connection_strategy=lazy"],
                    stdout=subprocess.DEVNULL, stderr=open(d / "mitmproxy.stderr", "wb"))
    wait_port(port, p, "mitmproxy", timeout=60)
    cert = conf / "mitmproxy-ca-cert.pem"
    deadline = time.time() + 10
    while not cert.exists() and time.time() < deadline:
        time.sleep(0.1)
    return p, port, cert


def start_squid(d, ca):
    squid = shutil.which("squid") or "/usr/sbin/squid"
    certgen = "/usr/lib/squid/security_file_certgen"
    if not Path(squid).exists() or not Path(certgen).exists():
        raise RuntimeError("squid-openssl is not installed")
    sd = d / "squid"
    sd.mkdir()
    sd.chmod(0o777)
    (sd / "hosts").write_text(f"127.0.0.1 {HOST}\n")
    run([certgen, "-c", "-s", sd / "ssl_db", "-M", "16MB"], stdout=subprocess.DEVNULL)
    user = "proxy"
    try:
        import pwd
        pwd.getpwnam(user)
        if os.geteuid() == 0:
            run(["chown", "-R", f"{user}:", sd])
    except KeyError:
        user = None
    port = free_port()
    conf = sd / "squid.conf"
    conf.write_text(f"""
http_port 127.0.0.1:{port} ssl-bump generate-host-certificates=on dynamic_cert_mem_cache_size=16MB tls-cert={d}/squid-ca.pem tls-key={d}/squid-ca.key
sslcrtd_program {certgen} -s {sd}/ssl_db -M 16MB
sslcrtd_children 4 startup=1 idle=1
acl step1 at_step SslBump1
ssl_bump peek step1
ssl_bump bump all
tls_outgoing_options cafile={ca}
hosts_file {sd}/hosts
dns_nameservers 127.0.0.1
http_access allow all
cache deny all
cache_mem 8 MB
access_log none
cache_store_log none
cache_log {sd}/cache.log
pid_filename {sd}/squid.pid
coredump_dir {sd}
netdb_filename none
visible_hostname bench
max_filedescriptors 16384
shutdown_lifetime 0 seconds
client_persistent_connections on
server_persistent_connections on
request_body_max_size 0
reply_body_max_size none
forwarded_for delete
via off
""" + (f"cache_effective_user {user}\n" if user else ""))
    p = PROCS.start("squid", [squid, "-N", "-f", conf],
                    stdout=subprocess.DEVNULL, stderr=open(d / "squid.stderr", "wb"))
    wait_port(port, p, "squid", timeout=30)
    return p, port


# --- load ----------------------------------------------------------------------------------------

def start_haproxy(d, nginx_port):
    """HAProxy terminating TLS for bench.local and connecting with TLS to nginx."""
    haproxy = shutil.which("haproxy") or "/usr/sbin/haproxy"
    if not Path(haproxy).exists():
        raise RuntimeError("haproxy is not installed")
    port = free_port()
    crt = d / "haproxy.pem"
    crt.write_bytes((d / "server.pem").read_bytes() + (d / "server.key").read_bytes())
    crt.chmod(0o600)
    conf = d / "haproxy.cfg"
    conf.write_text(f"""
global
    maxconn 8000
    tune.ssl.default-dh-param 2048
defaults
    mode http
    timeout connect 5s
    timeout client 300s
    timeout server 300s
    timeout http-keep-alive 300s
    http-reuse always
    option http-keep-alive
frontend bench
    bind 127.0.0.1:{port} ssl crt {crt} alpn h2,http/1.1
    default_backend nginx
backend nginx
    server nginx 127.0.0.1:{nginx_port} ssl verify required ca-file {d}/ca.pem sni str({HOST}) alpn http/1.1
""")
    p = PROCS.start("haproxy", [haproxy, "-db", "-f", conf],
                    stdout=subprocess.DEVNULL, stderr=open(d / "haproxy.stderr", "wb"))
    wait_port(port, p, "haproxy")
    return p, port


class Bench:
    def __init__(self, args):
        self.args = args
        self.tmp = Path(tempfile.mkdtemp(prefix="netcage-bench-"))
        self.tmp.chmod(0o755)
        self.shm = Path(tempfile.mkdtemp(prefix="netcage-bench-", dir="/dev/shm"
                                         if Path("/dev/shm").is_dir() else None))
        self.shm.chmod(0o755)
        self.variants = {}
        self.skipped = {}
        self.notes = []

    def cleanup(self):
        PROCS.stop_all()
        if not self.args.keep:
            shutil.rmtree(self.tmp, ignore_errors=True)
        shutil.rmtree(self.shm, ignore_errors=True)

    def url(self, path, variant=None):
        """The URL a variant's client uses: nginx's, or the reverse proxy's port for HAProxy."""
        port = self.variants.get(variant, {}).get("port", self.nginx_port)
        return f"https://{HOST}:{port}{path}"

    def setup(self):
        make_certs(self.tmp)
        self.ca = self.tmp / "ca.pem"
        self.nginx, self.nginx_port = start_nginx(self.tmp, self.shm)
        want = [v for v in VARIANTS if v not in self.args.skip]
        self.variants["direct"] = dict(pre=[], post=["--cacert", self.ca, "--resolve", "127.0.0.1"])
        if "netcage" in want or "netcage-t1" in want:
            p, port, bundle, token = start_netcage(self.tmp, self.ca)
            self.netcage, self.netcage_port, self.token = p, port, token
            self.variants["netcage"] = dict(
                pre=[], post=["--cacert", bundle, "--proxy", f"127.0.0.1:{port}"])
        if "netcage-t1" in want:
            why = self.tier1_unavailable()
            if why:
                self.skipped["netcage-t1"] = why
            else:
                data = self.tmp / "netcage-t1-data"
                data.mkdir()
                self.t1_data = data
                self.variants["netcage-t1"] = dict(
                    pre=[NETCAGE, "run", "--tier", "netns", "--data-dir", data,
                         "--upstream-ca", self.ca, "--resolve", f"{HOST}=127.0.0.1",
                         "--audit", self.tmp / "netcage-t1-audit.jsonl",
                         "--seal", f"BENCH_TOKEN={HOST}", "--"],
                    post=["--cacert", data / "proxy-ca-bundle.pem"])
        if "mitmproxy" in want:
            try:
                p, port, cert = start_mitmproxy(self.tmp, self.ca)
                self.mitm = p
                # mitmproxy resolves names itself (system resolver): CONNECT to the address, the
                # TLS server name stays bench.local, which is what mitmproxy verifies upstream.
                self.variants["mitmproxy"] = dict(
                    pre=[], post=["--cacert", cert, "--proxy", f"127.0.0.1:{port}",
                                  "--connect-target", f"127.0.0.1:{self.nginx_port}"])
            except Exception as e:  # noqa: BLE001
                self.skipped["mitmproxy"] = str(e)
        if "haproxy" in want:
            try:
                p, port = start_haproxy(self.tmp, self.nginx_port)
                self.haproxy = p
                self.variants["haproxy"] = dict(
                    pre=[], post=["--cacert", self.ca, "--resolve", "127.0.0.1"], port=port)
            except Exception as e:  # noqa: BLE001
                self.skipped["haproxy"] = str(e)
        if "squid" in want:
            try:
                p, port = start_squid(self.tmp, self.ca)
                self.squid = p
                self.variants["squid"] = dict(
                    pre=[], post=["--cacert", self.tmp / "squid-ca.pem",
                                  "--proxy", f"127.0.0.1:{port}"])
            except Exception as e:  # noqa: BLE001
                self.skipped["squid"] = str(e)
        for v in self.args.skip:
            self.skipped.setdefault(v, "--skip")
        # Every variant must work before measuring anything.
        for name in list(self.variants):
            r = self.loadgen(name, ["-d", "0", "--min-requests", "3"], self.url("/small"))
            if r.get("errors") or not r.get("requests"):
                log(f"{name} does not work, skipped: {r.get('first_error') or r}")
                self.skipped[name] = f"smoke test failed: {r.get('first_error') or r}"
                del self.variants[name]

    def proxies(self):
        """The running proxies' processes, by variant."""
        procs = {"netcage": getattr(self, "netcage", None), "mitmproxy": getattr(self, "mitm", None),
                 "squid": getattr(self, "squid", None), "haproxy": getattr(self, "haproxy", None)}
        return {v: p for v, p in procs.items() if p is not None and v in self.variants}

    def tier1_unavailable(self):
        if os.geteuid() != 0:
            return "needs root"
        r = subprocess.run([NETCAGE, "run", "--tier", "netns", "--data-dir", self.tmp / "t1probe",
                            "--", "true"], capture_output=True, text=True, timeout=30)
        if r.returncode != 0:
            return f"netcage run --tier netns failed: {r.stderr.strip()[-300:]}"
        return None

    def loadgen(self, variant, extra, url, token=False, timeout=120):
        v = self.variants[variant]
        url = url.replace(f":{self.nginx_port}/", f":{v.get('port', self.nginx_port)}/", 1)
        cmd = [*v["pre"], LOADGEN, url, *v["post"], *extra]
        if token:
            if variant == "direct":
                cmd += ["-H", f"Authorization: Bearer {SECRET}"]
            elif variant == "netcage":
                cmd += ["-H", f"Authorization: Bearer {self.token}"]
            elif variant == "netcage-t1":
                # The sealed token is in the child's environment.
                inner = " ".join(f"'{c}'" for c in [LOADGEN, url, *v["post"], *extra])
                cmd = [*v["pre"], "sh", "-c",
                       f'exec {inner} -H "Authorization: Bearer $BENCH_TOKEN"']
            else:
                cmd += ["-H", "Authorization: Bearer not-a-token-abcdefghijklmnopqrstuvwxyz"]
        t0 = time.time()
        try:
            r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True,
                               timeout=timeout, env=dict(os.environ, BENCH_TOKEN=SECRET))
        except subprocess.TimeoutExpired:
            return {"errors": 1, "first_error": f"timed out after {timeout}s"}
        if time.time() - t0 > 10:
            log(f"  ({variant} took {time.time() - t0:.0f}s)")
        lines = [ln for ln in r.stdout.splitlines() if ln.startswith("{")]
        if r.returncode != 0 or not lines:
            return {"errors": 1,
                    "first_error": f"exit {r.returncode}: {r.stderr.strip()[-400:]}"}
        return json.loads(lines[-1])


WORKLOADS = [
    # name, label, loadgen args, path, metric
    ("ka_h1_c1", "keep-alive GET, HTTP/1.1, 1 conn", ["-c", "1"], "/small", "rps"),
    ("ka_h1_c64", "keep-alive GET, HTTP/1.1, 64 conns", ["-c", "64"], "/small", "rps"),
    ("ka_h2_c1", "keep-alive GET, HTTP/2, 1 conn", ["-c", "1", "--http2"], "/small", "rps"),
    ("ka_h2_c64", "keep-alive GET, HTTP/2, 64 conns", ["-c", "64", "--http2"], "/small", "rps"),
    ("new_conn", "new TLS connection per request (HTTP/1.1)", ["-c", "1", "--new-conn"],
     "/small", "rps"),
    ("token", "token in a header, HTTP/1.1, 1 conn", ["-c", "1"], "/small", "rps"),
    ("download", "64 MiB download, HTTP/1.1", ["-c", "1"], "/big", "down_mbps"),
    ("upload", "64 MiB upload (PUT), HTTP/1.1", ["-c", "1", "--put-bytes", str(BIG)],
     "/upload/f", "up_mbps"),
]


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def measure_workloads(b, rounds, duration):
    results = {}
    only = b.args.only
    for name, label, extra, path, metric in WORKLOADS:
        if only and name not in only:
            continue
        names = list(b.variants)
        url = b.url(path)
        if name == "upload":
            # One file per variant so concurrent cleanup never races; same size for all.
            pass
        log(f"{label}: {rounds} rounds x {len(names)} variants x {duration}s")
        per = {v: [] for v in names}
        token = name == "token"
        unsupported = {}
        for v in list(names):  # warm-up: connections, leaf certificates, session tickets
            r = b.loadgen(v, [*extra, "-d", "0.3"], url, token=token)
            if not r.get("requests"):
                unsupported[v] = r.get("first_error") or "no request completed"
                log(f"  {v}: not measured: {unsupported[v]}")
                names.remove(v)
        procs = b.proxies()
        for i in range(rounds):
            for v in names:
                proc = procs.get(v)
                cpu0 = cpu_seconds(proc.pid) if proc else None
                # The floor: the direct client's and nginx's CPU together.
                floor0 = (children_cpu(), cpu_seconds(b.nginx.pid)) if v == "direct" else None
                r = b.loadgen(v, [*extra, "-d", str(duration)], url, token=token)
                if proc and r.get("requests"):
                    # The proxy's own CPU per request: steadier than req/s on a busy machine.
                    r["proxy_cpu_us"] = (cpu_seconds(proc.pid) - cpu0) * 1e6 / r["requests"]
                if floor0 and r.get("requests"):
                    used = (children_cpu() - floor0[0]) + (cpu_seconds(b.nginx.pid) - floor0[1])
                    r["floor_cpu_us"] = used * 1e6 / r["requests"]
                per[v].append(r)
                if r.get("errors"):
                    log(f"  {v} round {i + 1}: {r.get('errors')} errors: {r.get('first_error')}")
        out = {"label": label, "metric": metric, "variants": {}, "unsupported": unsupported}
        for v in names:
            rs = per[v]
            ok = [r for r in rs if r.get("requests")]
            cell = {
                "rounds": rs,
                "value": median([r.get(metric) for r in ok]),
                "p50_us": median([r.get("p50_us") for r in ok]),
                "p99_us": median([r.get("p99_us") for r in ok]),
                "proxy_cpu_us": median([r.get("proxy_cpu_us") for r in ok]),
                "floor_cpu_us": median([r.get("floor_cpu_us") for r in ok]),
                "errors": sum(r.get("errors", 0) for r in rs),
            }
            # The proxy's CPU as a multiple of the floor measured in the same round.
            cell["cpu_floor_ratio"] = median([
                r["proxy_cpu_us"] / d["floor_cpu_us"]
                for r, d in zip(rs, per.get("direct", []))
                if r.get("proxy_cpu_us") and d.get("floor_cpu_us")])
            ratios, added = [], []
            for r, d in zip(rs, per.get("direct", [])):
                if r.get("requests") and d.get("requests") and d.get(metric):
                    ratios.append(r[metric] / d[metric])
                    added.append(r["p50_us"] - d["p50_us"])
            cell["ratio"] = median(ratios)
            cell["added_p50_us"] = median(added)
            out["variants"][v] = cell
        results[name] = out
        summary = ", ".join(
            f"{v} {fmt_num(c['value'])}" + (f" ({c['ratio']:.2f}x)" if c["ratio"] else "")
            for v, c in out["variants"].items())
        log(f"  {summary}")
    return results


def measure_rss(b, conns, idle_before):
    """Proxy RSS at idle (before any load) and while holding `conns` keep-alive connections."""
    out = {}
    for v, p in b.proxies().items():
        idle = idle_before.get(v) or rss_mib(p.pid)
        idle_after_load = rss_mib(p.pid)
        v_ = b.variants[v]
        cmd = [LOADGEN, b.url("/small", v), *v_["post"], "-c", str(conns), "--hold", "-d", "120"]
        lg = subprocess.Popen([str(c) for c in cmd], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              start_new_session=True)
        PROCS.procs.append(lg)
        held = loaded = None
        try:
            line = read_line(lg, lg.stdout, 180, f"{v}: {conns} connections")
            held = int(line.split()[1])
            time.sleep(1.0)
            loaded = rss_mib(p.pid)
        except Exception as e:  # noqa: BLE001
            log(f"{v}: holding {conns} connections failed: {e}")
        try:
            lg.stdin.close()
            lg.wait(30)
            tail = lg.stdout.read().decode().strip().splitlines()
            info = json.loads(tail[-1]) if tail else {}
        except Exception:  # noqa: BLE001
            info = {}
        PROCS.stop(lg)
        time.sleep(1.0)
        after = rss_mib(p.pid)
        out[v] = {"wanted": conns, "idle_mib": idle, "idle_after_load_mib": idle_after_load, "loaded_mib": loaded, "held": held,
                  "still_open": info.get("held"), "errors": info.get("errors"),
                  "first_error": info.get("first_error"), "after_mib": after}
        log(f"RSS {v}: idle {idle:.1f} MiB, {held} connections {fmt_num(loaded)} MiB, "
            f"after {after:.1f} MiB")
    return out


def measure_startup(b, n):
    """`netcage run --tier netns -- true` against `unshare -n true`, interleaved, n runs each."""
    if "netcage-t1" not in b.variants:
        return {"skipped": b.skipped.get("netcage-t1", "Tier 1 unavailable")}
    data = b.tmp / "startup-data"
    data.mkdir()
    cmds = {
        "unshare": ["unshare", "-n", "true"],
        "netcage": [NETCAGE, "run", "--tier", "netns", "--data-dir", data,
                    "--audit", b.tmp / "startup-audit.jsonl", "--", "true"],
    }
    if shutil.which("bwrap"):
        cmds["bwrap"] = ["bwrap", "--unshare-net", "--ro-bind", "/", "/", "true"]
    times = {k: [] for k in cmds}
    for k, c in cmds.items():  # warm-up (CA creation, page cache)
        subprocess.run([str(x) for x in c], capture_output=True)
    for _ in range(n):
        for k, c in cmds.items():
            t = time.perf_counter()
            r = subprocess.run([str(x) for x in c], capture_output=True)
            dt = time.perf_counter() - t
            if r.returncode == 0:
                times[k].append(dt * 1000)
    ratios = [a / u for a, u in zip(times["netcage"], times["unshare"])]
    out = {k: {"median_ms": median(v), "min_ms": min(v) if v else None, "runs": len(v)}
           for k, v in times.items()}
    out["ratio"] = median(ratios)
    if "bwrap" in times:
        out["bwrap_ratio"] = median([a / u for a, u in zip(times["bwrap"], times["unshare"])])
    log(f"startup: unshare -n true {fmt_num(out['unshare']['median_ms'])} ms, "
        f"netcage run -- true {fmt_num(out['netcage']['median_ms'])} ms "
        f"({fmt_num(out['ratio'])}x)" +
        (f", bwrap --unshare-net {fmt_num(out['bwrap']['median_ms'])} ms "
         f"({fmt_num(out['bwrap_ratio'])}x)" if "bwrap" in out else ""))
    return out


# --- report --------------------------------------------------------------------------------------

def fmt_num(x, unit=""):
    if x is None:
        return "—"
    if isinstance(x, float) and abs(x) < 10:
        return f"{x:.2f}{unit}"
    return f"{x:,.0f}{unit}"


# Issue 16's targets. id, description, workload, kind, limit.
TARGETS = [
    ("ka_h1_c1", "keep-alive req/s, HTTP/1.1, 1 conn", "ka_h1_c1", "ratio", 0.55),
    ("ka_h1_c64", "keep-alive req/s, HTTP/1.1, 64 conns", "ka_h1_c64", "ratio", 0.65),
    ("ka_h2_c1", "keep-alive req/s, HTTP/2, 1 conn", "ka_h2_c1", "ratio", 0.55),
    ("ka_h2_c64", "keep-alive req/s, HTTP/2, 64 conns", "ka_h2_c64", "ratio", 0.65),
    ("cpu_h1_c1", "proxy CPU/req ÷ floor, HTTP/1.1, 1 conn", "ka_h1_c1", "floor", 1.0),
    ("cpu_h1_c64", "proxy CPU/req ÷ floor, HTTP/1.1, 64 conns", "ka_h1_c64", "floor", 1.15),
    ("cpu_h2_c1", "proxy CPU/req ÷ floor, HTTP/2, 1 conn", "ka_h2_c1", "floor", 1.0),
    ("cpu_h2_c64", "proxy CPU/req ÷ floor, HTTP/2, 64 conns", "ka_h2_c64", "floor", 1.15),
    ("download", "64 MiB download throughput", "download", "ratio", 0.8),
    ("upload", "64 MiB upload throughput", "upload", "ratio", 0.8),
]

#: Workloads whose proxy CPU per request must stay below HAProxy's.
BELOW_HAPROXY = ["ka_h1_c1", "ka_h1_c64", "ka_h2_c1", "ka_h2_c64", "new_conn", "download", "upload"]


def evaluate(results, rss, startup):
    rows = []

    def cell_of(wl, variant):
        return results.get(wl, {}).get("variants", {}).get(variant)

    for variant in ("netcage", "netcage-t1"):
        tier = "T0" if variant == "netcage" else "T1"
        for tid, desc, wl, kind, limit in TARGETS:
            cell = cell_of(wl, variant)
            if not cell:
                continue
            if kind == "ratio":
                val = cell["ratio"]
                ok = val is not None and val >= limit
                shown, lim = (f"{val:.2f}×" if val is not None else "—"), f"≥ {limit}×"
            else:
                val = cell.get("cpu_floor_ratio")
                if val is None:
                    continue  # Tier 1's proxy runs with the client in one process tree
                ok = val <= limit
                shown, lim = (f"{val:.2f}×" if val is not None else "—"), f"≤ {limit}×"
            rows.append({"id": f"{tid}/{tier}", "target": f"{desc} ({tier})", "measured": shown,
                         "limit": lim, "value": val, "pass": ok})
        for wl in BELOW_HAPROXY:
            mine, theirs = cell_of(wl, variant), cell_of(wl, "haproxy")
            if not mine or not theirs or mine.get("proxy_cpu_us") is None \
                    or theirs.get("proxy_cpu_us") is None:
                continue
            a, h = mine["proxy_cpu_us"], theirs["proxy_cpu_us"]
            label = results[wl]["label"]
            rows.append({"id": f"below_haproxy_{wl}/{tier}",
                         "target": f"proxy CPU/req below HAProxy's, {label} ({tier})",
                         "measured": f"{a:,.1f} vs {h:,.1f} µs", "limit": "<", "value": a / h,
                         "pass": a < h})
    for wl in ("ka_h1_c1", "ka_h1_c64", "ka_h2_c1", "ka_h2_c64"):
        t0, t1 = cell_of(wl, "netcage"), cell_of(wl, "netcage-t1")
        if t0 and t1 and t0.get("value") and t1.get("value"):
            r = t1["value"] / t0["value"]
            rows.append({"id": f"t1_vs_t0_{wl}",
                         "target": f"Tier 1 req/s within 5% of Tier 0, {results[wl]['label']}",
                         "measured": f"{r:.2f}×", "limit": "≥ 0.95×", "value": r,
                         "pass": r >= 0.95})
    nc = rss.get("netcage")
    if nc:
        ok = (nc["loaded_mib"] is not None and nc["loaded_mib"] <= 30
              and (nc["held"] or 0) >= nc.get("wanted", 1000))
        rows.append({"id": "rss_1000", "target": f"proxy RSS, {nc['held']} keep-alive connections",
                     "value": nc["loaded_mib"], "measured": f"{fmt_num(nc['loaded_mib'])} MiB",
                     "limit": "≤ 30 MiB", "pass": ok})
    if startup.get("ratio") is not None:
        rows.append({"id": "startup", "target": "`netcage run -- true` (T1) / `unshare -n true`",
                     "value": startup["ratio"], "measured": f"{startup['ratio']:.2f}×",
                     "limit": "≤ 3×", "pass": startup["ratio"] <= 3})
    return rows


def markdown(meta, results, rss, startup, targets, variants, skipped):
    cols = [v for v in VARIANTS if v in variants]
    notes = []
    L = []
    L.append(f"## netcage benchmark — {meta['date']}")
    L.append("")
    L.append(f"`{meta['git']}` (profile {meta['profile']}) · {meta['cpus']} CPUs · load average before {meta['load_before']}"
             f" · {meta['rounds']} interleaved rounds × {meta['duration']} s per cell · "
             "medians over rounds; ratio = median of per-round ratios to direct")
    L.append("")
    L.append("| workload | metric | " + " | ".join(LABEL[c] for c in cols) + " |")
    L.append("|---|---|" + "---|" * len(cols))
    for name, label, _, _, metric in WORKLOADS:
        if name not in results:
            continue
        w = results[name]["variants"]
        unsupported = results[name].get("unsupported", {})
        for c, why in unsupported.items():
            notes.append(f"{LABEL[c]}, {label}: not measured ({why})")
        unit = "req/s" if metric == "rps" else "MB/s"
        cells = []
        for c in cols:
            cell = w.get(c)
            if not cell or cell["value"] is None:
                cells.append("n/a" if c in unsupported else "—")
                continue
            s = fmt_num(cell["value"])
            if c != "direct" and cell["ratio"] is not None:
                s += f" ({cell['ratio']:.2f}×)"
            if cell["errors"]:
                s += f" [{cell['errors']} err]"
            cells.append(s)
        L.append(f"| {label} | {unit} | " + " | ".join(cells) + " |")
        if metric == "rps" and name != "new_conn":
            for q in ("p50_us", "p99_us"):
                cells = []
                for c in cols:
                    cell = w.get(c)
                    if not cell or cell[q] is None:
                        cells.append("—")
                        continue
                    s = f"{cell[q]:,.0f}"
                    if q == "p50_us" and c != "direct" and cell["added_p50_us"] is not None:
                        s += f" ({cell['added_p50_us']:+,.0f})"
                    cells.append(s)
                L.append(f"| | {q.split('_')[0]} µs | " + " | ".join(cells) + " |")
        if any(w.get(c, {}).get("proxy_cpu_us") is not None for c in cols):
            cells = []
            for c in cols:
                cpu = w.get(c, {}).get("proxy_cpu_us")
                floor = w.get(c, {}).get("floor_cpu_us")
                ratio = w.get(c, {}).get("cpu_floor_ratio")
                if c == "direct" and floor is not None:
                    cells.append(f"floor {floor:,.1f}")
                elif cpu is None:
                    cells.append("—")
                else:
                    cells.append(f"{cpu:,.1f}" + (f" ({ratio:.2f}× floor)" if ratio else ""))
            L.append("| | proxy CPU µs/req | " + " | ".join(cells) + " |")
    if rss:
        for key, what in (("idle_mib", "proxy RSS, idle"),
                          ("loaded_mib", "proxy RSS, 1,000 keep-alive conns"),
                          ("after_mib", "proxy RSS, after they close")):
            cells = []
            for c in cols:
                r = rss.get(c)
                if not r or r.get(key) is None:
                    cells.append("—")
                else:
                    s = f"{r[key]:.1f}"
                    if key == "loaded_mib" and r.get("held") not in (None, 1000):
                        s += f" ({r['held']} held)"
                    cells.append(s)
            L.append(f"| {what} | MiB | " + " | ".join(cells) + " |")
    if startup.get("ratio") is not None:
        cells = []
        for c in cols:
            if c == "direct":
                cells.append(f"{startup['unshare']['median_ms']:.1f} (`unshare -n true`)")
            elif c == "netcage-t1":
                cells.append(f"{startup['netcage']['median_ms']:.1f} ({startup['ratio']:.2f}×)")
            elif c == "haproxy" and "bwrap" in startup:
                cells.append(f"{startup['bwrap']['median_ms']:.1f} (`bwrap --unshare-net`, "
                             f"{startup['bwrap_ratio']:.2f}×)")
            else:
                cells.append("—")
        L.append("| `netcage run -- true` | ms | " + " | ".join(cells) + " |")
    L.append("")
    if skipped:
        notes.insert(0, "Skipped: " + "; ".join(f"{k}: {v}" for k, v in skipped.items()))
    for n in notes:
        L.append(f"- {n}")
    if notes:
        L.append("")
    L.append("| target | measured | limit | |")
    L.append("|---|---|---|---|")
    for t in targets:
        L.append(f"| {t['target']} | {t['measured']} | {t['limit']} | "
                 f"{'pass' if t['pass'] else '**FAIL**'} |")
    L.append("")
    return "\n".join(L)


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    ap.add_argument("--duration", type=float, default=2.0, help="seconds per cell (default 2)")
    ap.add_argument("--skip", action="append", default=[], choices=VARIANTS[1:],
                    help="leave a variant out (repeatable)")
    ap.add_argument("--only", action="append", default=[],
                    choices=[w[0] for w in WORKLOADS], help="run only these workloads")
    ap.add_argument("--conns", type=int, default=1000, help="connections held for the RSS test")
    ap.add_argument("--startup-runs", type=int, default=30)
    ap.add_argument("--no-rss", action="store_true")
    ap.add_argument("--no-startup", action="store_true")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (configs, logs)")
    ap.add_argument("--profile", default=PROFILE,
                    help="cargo profile of the binaries to measure (default dist; scripts/bench "
                         "builds them with it)")
    args = ap.parse_args()
    use_profile(args.profile)

    for tool in (NETCAGE, LOADGEN):
        if not tool.exists():
            sys.exit(f"bench: {tool} missing: run scripts/bench (it builds first, with "
                     f"cargo build --profile {PROFILE})")
    if not shutil.which("nginx"):
        sys.exit("bench: nginx not found (the upstream every variant is measured against): "
                 "run scripts/bench, which installs it, or apt-get install nginx")
    b = Bench(args)

    def on_signal(sig, _frame):
        raise SystemExit(128 + sig)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    started = time.time()
    try:
        git = subprocess.run(["git", "-C", ROOT, "describe", "--always", "--dirty"],
                             capture_output=True, text=True).stdout.strip()
        meta = {
            "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "git": git, "cpus": os.cpu_count(), "kernel": platform.release(),
            "load_before": " ".join(f"{x:.2f}" for x in os.getloadavg()),
            "rounds": args.rounds, "duration": args.duration, "profile": PROFILE,
        }
        log(f"temp dir {b.tmp}")
        b.setup()
        log("variants: " + ", ".join(b.variants) +
            ("; skipped: " + "; ".join(f"{k} ({v})" for k, v in b.skipped.items())
             if b.skipped else ""))
        # "Idle" = started and warmed up by the smoke test, before any load.
        idle = {v: rss_mib(p.pid) for v, p in b.proxies().items()}
        results = measure_workloads(b, args.rounds, args.duration)
        rss = {} if args.no_rss else measure_rss(b, args.conns, idle)
        startup = {} if args.no_startup else measure_startup(b, args.startup_runs)
        meta["load_after"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
        meta["elapsed_s"] = round(time.time() - started, 1)
        targets = evaluate(results, rss, startup)
        md = markdown(meta, results, rss, startup, targets, b.variants, b.skipped)
        OUT.mkdir(parents=True, exist_ok=True)
        (OUT / "results.md").write_text(md)
        doc = {"meta": meta, "variants": list(b.variants), "skipped": b.skipped,
               "workloads": results, "rss": rss, "startup": startup, "targets": targets}
        (OUT / "results.json").write_text(json.dumps(doc, indent=2, default=str))
        print(md)
        log(f"done in {meta['elapsed_s']} s: {OUT / 'results.md'}, {OUT / 'results.json'}")
        return 0 if all(t["pass"] for t in targets) else 1
    finally:
        b.cleanup()


if __name__ == "__main__":
    sys.exit(main())
