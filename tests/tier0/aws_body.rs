// SigV4 re-signing end to end, included by tests/tier0_aws.rs (Tier 0) and tests/tier1_aws.rs
// (Tier 1); `crate::TIER` says which. The aws CLI and boto3 hold only a stand-in key id and
// tokens; the upstream (tests/aws/sigv4_server.py, 127.0.0.1 port 0) serves S3 and STS under
// their real names (pinned with `--resolve NAME:443=127.0.0.1:PORT`) and verifies every
// signature with the REAL key using botocore's signer, independently of netcage.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value;

use common::*;

pub const REAL_ID: &str = "AKIAREALTESTKEY12345";
pub const REAL_SECRET: &str = "RealSecretKeyNeverInTheSandbox0123456789";
pub const REAL_SESSION: &str = "RealSessionTokenValueForTheTest0123456789";
pub const NAMES: &[&str] = &["s3.amazonaws.com", "sts.amazonaws.com", "other.example"];
const RUN_TIMEOUT: Duration = Duration::from_secs(120);

pub struct AwsFx {
    pub env: TestEnv,
    ca_path: PathBuf,
    pub audit: PathBuf,
    log: PathBuf,
    port: u16,
    _server: KillOnDrop,
}

impl Default for AwsFx {
    fn default() -> Self {
        Self::new()
    }
}

impl AwsFx {
    pub fn new() -> Self {
        let ca = TestCa::new();
        let env = TestEnv::new();
        let ca_path = ca.write_pem(env.root());
        // 127.0.0.1 too: the verifier's self-test reaches it without netcage.
        let (cert, key) = ca.issue_pem(&[NAMES, &["127.0.0.1"]].concat());
        let (cert_path, key_path) = (env.path("server.pem"), env.path("server.key"));
        std::fs::write(&cert_path, cert).unwrap();
        std::fs::write(&key_path, key).unwrap();
        let log = env.path("aws-requests.jsonl");
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/aws/sigv4_server.py");
        let mut cmd = Command::new("python3");
        cmd.arg(script)
            .args([&cert_path, &key_path, &log])
            .env("NC_REAL_ID", REAL_ID)
            .env("NC_REAL_SECRET", REAL_SECRET)
            .stdout(Stdio::piped());
        let mut server = KillOnDrop::spawn(&mut cmd);
        let mut line = String::new();
        BufReader::new(server.0.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("sigv4_server.py did not start (botocore installed?): {line:?}"));
        // Path-style S3 addressing (one name to pin), a region, no instance metadata.
        std::fs::write(
            env.path("aws-config"),
            "[default]\nregion = us-east-1\ns3 =\n  addressing_style = path\n",
        )
        .unwrap();
        AwsFx {
            audit: env.path("audit.jsonl"),
            env,
            ca_path,
            log,
            port,
            _server: server,
        }
    }

    /// `netcage run --tier <TIER> --seal-aws <opts> -- <child>` with the real key in
    /// netcage's environment and every name pinned to the verifying upstream.
    pub fn run_cmd(&self, opts: &[&str], child: &[&str]) -> Command {
        let mut cmd = Command::new(netcage_bin());
        isolate_client_env(&mut cmd, self.env.root());
        cmd.current_dir(self.env.root());
        cmd.args(["run", "--tier", crate::TIER])
            .arg("--data-dir")
            .arg(self.env.data_dir())
            .arg("--upstream-ca")
            .arg(&self.ca_path)
            .arg("--audit")
            .arg(&self.audit);
        for name in NAMES {
            cmd.args(["--resolve", &format!("{name}:443=127.0.0.1:{}", self.port)]);
        }
        cmd.args(opts).arg("--").args(child);
        cmd.env("AWS_ACCESS_KEY_ID", REAL_ID)
            .env("AWS_SECRET_ACCESS_KEY", REAL_SECRET)
            .env_remove("AWS_SESSION_TOKEN")
            .env_remove("AWS_PROFILE")
            .env("AWS_CONFIG_FILE", self.env.path("aws-config"))
            .env("AWS_SHARED_CREDENTIALS_FILE", self.env.path("no-credentials"))
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("AWS_PAGER", "");
        cmd
    }

    pub fn run(&self, opts: &[&str], child: &[&str]) -> Output {
        run_with_timeout(&mut self.run_cmd(opts, child), RUN_TIMEOUT)
    }

    /// What the upstream received, one entry per request.
    pub fn received(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// Every request arrived signed by the real key (verified), and none carried the stand-in
    /// key id, a token or the real secret.
    pub fn assert_all_verified(&self, what: &str) -> Vec<Value> {
        let got = self.received();
        assert!(!got.is_empty(), "[{what}] nothing arrived upstream");
        for r in &got {
            assert_eq!(r["verified"], true, "[{what}] a signature did not verify: {r}");
            for flag in ["standin", "token", "real_secret"] {
                assert_eq!(r[flag], false, "[{what}] {flag} went upstream: {r}");
            }
        }
        got
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The test CA's certificate (PEM file).
    pub fn ca(&self) -> &std::path::Path {
        &self.ca_path
    }

    pub fn ops(&self) -> Vec<String> {
        self.received()
            .iter()
            .filter_map(|r| r["op"].as_str().map(String::from))
            .collect()
    }
}

fn out_text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The command's output must not show the real secret.
fn assert_no_secret(what: &str, out: &Output) {
    assert!(free_of(&out.stdout, REAL_SECRET.as_bytes()), "[{what}] stdout");
    assert!(free_of(&out.stderr, REAL_SECRET.as_bytes()), "[{what}] stderr");
}

/// The audit log names the re-signed requests: action `sigv4` with the stand-in's fingerprint.
fn assert_audited_sigv4(fx: &AwsFx, what: &str) {
    let text = std::fs::read_to_string(&fx.audit).unwrap_or_default();
    assert!(free_of(text.as_bytes(), REAL_SECRET.as_bytes()), "[{what}] audit shows the secret");
    let lines: Vec<Value> = text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    let resigned = lines.iter().find(|l| {
        l["tokens"].as_array().is_some_and(|t| {
            t.iter().any(|u| {
                u["action"] == "sigv4" && u["fingerprint"].as_str().is_some_and(|f| f.starts_with("fp:"))
            })
        })
    });
    assert!(resigned.is_some(), "[{what}] no audit line says sigv4:\n{text}");
}

#[test]
fn aws_cli_s3_ls_cp_20_mib_and_sts_are_signed_with_the_real_key() {
    let fx = AwsFx::new();
    let big = fx.env.path("big.bin");
    let data = pattern(0, 20 * 1024 * 1024);
    std::fs::write(&big, &data).unwrap();
    let script = "set -e
printf 'id=%s secret=%.11s\\n' \"$AWS_ACCESS_KEY_ID\" \"$AWS_SECRET_ACCESS_KEY\"
aws --endpoint-url https://s3.amazonaws.com s3 ls
aws --endpoint-url https://s3.amazonaws.com s3 cp big.bin s3://netcage-test/big.bin --only-show-errors
aws --endpoint-url https://s3.amazonaws.com s3 ls s3://netcage-test/
aws --endpoint-url https://sts.amazonaws.com sts get-caller-identity --output text";
    let out = fx.run(&["--seal-aws"], &["sh", "-c", script]);
    let text = out_text(&out);
    assert!(
        out.status.success(),
        "aws CLI failed: {}\nthe upstream received: {:#?}",
        describe(&out),
        fx.received()
    );
    assert_no_secret("aws cli", &out);
    assert!(text.contains("id=AKIANETC") && text.contains("secret=starpod:v1:"), "{text}");
    assert!(text.contains("netcage-test") && text.contains("big.bin"), "{text}");
    assert!(text.contains("123456789012"), "{text}");
    let got = fx.assert_all_verified("aws cli");
    let ops = fx.ops();
    for op in ["ListBuckets", "CreateMultipartUpload", "UploadPart", "CompleteMultipartUpload", "ListObjectsV2", "GetCallerIdentity"] {
        assert!(ops.iter().any(|o| o == op), "no {op} arrived: {ops:?}");
    }
    let done = got.iter().find(|r| r["op"] == "CompleteMultipartUpload").unwrap();
    assert_eq!(done["size"], data.len() as u64, "{done}");
    assert_eq!(done["sha256"].as_str().unwrap(), hex(&sha256(&data)), "{done}");
    assert_audited_sigv4(&fx, "aws cli");
}

const BOTO3: &str = r#"
import os, sys, urllib.error, urllib.request, ssl, boto3
s3 = boto3.client("s3", endpoint_url="https://s3.amazonaws.com")
s3.put_object(Bucket="netcage-test", Key="small.txt", Body=b"hello sigv4")
keys = [o["Key"] for o in s3.list_objects_v2(Bucket="netcage-test")["Contents"]]
body = s3.get_object(Bucket="netcage-test", Key="small.txt")["Body"].read()
sts = boto3.client("sts", endpoint_url="https://sts.amazonaws.com")
account = sts.get_caller_identity()["Account"]
# SigV2 (boto3's default for presigned S3 URLs here) is refused with a clear reason.
try:
    urllib.request.urlopen(s3.generate_presigned_url("get_object", Params={"Bucket": "netcage-test", "Key": "small.txt"}), context=ssl.create_default_context(cafile=os.environ.get("AWS_CA_BUNDLE")))
    sys.exit("a SigV2 presigned URL went through")
except urllib.error.HTTPError as e:
    assert e.code == 403 and b"SigV2" in e.read(), e
s3 = boto3.client("s3", endpoint_url="https://s3.amazonaws.com", config=boto3.session.Config(signature_version="s3v4"))
url = s3.generate_presigned_url("get_object", Params={"Bucket": "netcage-test", "Key": "small.txt"}, ExpiresIn=600)
ctx = ssl.create_default_context(cafile=os.environ.get("AWS_CA_BUNDLE"))
try:
    presigned = urllib.request.urlopen(url, context=ctx).read()
except urllib.error.HTTPError as e:
    sys.exit(f"presigned GET {e.code}: {e.read()!r}")
print("keys", keys, "body", body.decode(), "account", account, "presigned", presigned.decode())
"#;

#[test]
fn boto3_with_a_session_token_gets_it_substituted_and_presigned_urls_re_signed() {
    let fx = AwsFx::new();
    let mut cmd = fx.run_cmd(&["--seal-aws"], &["python3", "-c", BOTO3]);
    cmd.env("AWS_SESSION_TOKEN", REAL_SESSION);
    let out = run_with_timeout(&mut cmd, RUN_TIMEOUT);
    let text = out_text(&out);
    assert!(
        out.status.success(),
        "boto3 failed: {}\nthe upstream received: {:#?}",
        describe(&out),
        fx.received()
    );
    assert_no_secret("boto3", &out);
    assert!(free_of(&out.stdout, REAL_SESSION.as_bytes()), "stdout shows the session token");
    assert!(
        text.contains("keys ['small.txt'] body hello sigv4 account 123456789012 presigned hello sigv4"),
        "{text}"
    );
    let got = fx.assert_all_verified("boto3");
    for r in &got {
        assert_eq!(r["security_token"], REAL_SESSION, "the real session token: {r}");
    }
    let presigned = got.iter().filter(|r| r["query"].as_str().is_some_and(|q| q.contains("X-Amz-Signature="))).count();
    assert_eq!(presigned, 1, "{got:#?}");
    let put = got.iter().find(|r| r["op"] == "PutObject").unwrap();
    assert_eq!(put["sha256"].as_str().unwrap(), hex(&sha256(b"hello sigv4")), "{put}");
    assert_audited_sigv4(&fx, "boto3");
}

#[test]
fn the_standin_sent_to_a_non_aws_host_is_blocked_and_nothing_arrives() {
    let fx = AwsFx::new();
    let script = r#"
import boto3, botocore.exceptions
s3 = boto3.client("s3", endpoint_url="https://other.example", config=boto3.session.Config(retries={"max_attempts": 1}))
try:
    s3.list_buckets()
    print("SENT")
except botocore.exceptions.ClientError as e:
    print("REFUSED", e.response["ResponseMetadata"]["HTTPStatusCode"], e.response.get("Error", {}))
"#;
    let out = fx.run(&["--seal-aws"], &["python3", "-c", script]);
    let text = out_text(&out);
    assert!(text.contains("REFUSED 403"), "{}", describe(&out));
    assert_no_secret("blocked", &out);
    assert!(fx.received().is_empty(), "something arrived: {:#?}", fx.received());
    let block = wait_audit(&fx.audit, "the blocked stand-in", |l| {
        l["decision"] == "block" && l["host"] == "other.example"
    });
    let tokens = block["tokens"].as_array().expect("tokens");
    assert!(
        tokens.iter().any(|t| t["action"] == "block" && t["where"] == "header:authorization"),
        "{block}"
    );
    // A bound host added with --seal-aws-host is signed for.
    let out = fx.run(
        &["--seal-aws", "--seal-aws-host", "other.example"],
        &["python3", "-c", script],
    );
    assert!(out_text(&out).contains("REFUSED 404") || out_text(&out).contains("SENT"), "{}", describe(&out));
    fx.assert_all_verified("--seal-aws-host");
}

/// `sigv4` audit lines come from the shared tier0 helpers' reader too.
#[allow(dead_code)]
fn read_audit_lines(path: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn wait_audit(path: &std::path::Path, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let mut found = None;
    wait_until(Duration::from_secs(10), what, || {
        found = read_audit_lines(path).into_iter().find(|l| pred(l));
        found.is_some()
    });
    found.unwrap()
}

/// A PutObject in `STREAMING-AWS4-HMAC-SHA256-PAYLOAD` (chunk signatures chained from the
/// request's), built by hand with botocore's signer for the seed and HMAC for the chunks:
/// `python3 -c STREAMING URL CA [bad-chunk]`, keys from the environment. Prints the status.
pub const STREAMING: &str = r#"
import datetime, hashlib, hmac, os, sys, requests
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
url, ca = sys.argv[1], sys.argv[2]
kid, secret = os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"]
data = bytes(i % 251 for i in range(9 * 1024 * 1024 + 12345))
chunks = [data[i:i + 65536] for i in range(0, len(data), 65536)] + [b""]
amz_date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
scope = f"{amz_date[:8]}/us-east-1/s3/aws4_request"
length = sum(len(f"{len(c):x};chunk-signature=") + 64 + 4 + len(c) for c in chunks)
headers = {"x-amz-content-sha256": "STREAMING-AWS4-HMAC-SHA256-PAYLOAD", "content-encoding": "aws-chunked",
           "x-amz-decoded-content-length": str(len(data)), "content-length": str(length), "x-amz-date": amz_date}
req = AWSRequest(method="PUT", url=url, headers=headers)
req.context["timestamp"] = amz_date
signer = S3SigV4Auth(Credentials(kid, secret), "s3", "us-east-1")
seed = signer.signature(signer.string_to_sign(req, signer.canonical_request(req)), req)
signed = signer.signed_headers(signer.headers_to_sign(req))
headers["Authorization"] = f"AWS4-HMAC-SHA256 Credential={kid}/{scope}, SignedHeaders={signed}, Signature={seed}"
key = ("AWS4" + secret).encode()
for part in scope.split("/"):
    key = hmac.new(key, part.encode(), hashlib.sha256).digest()
body, previous = bytearray(), seed
for n, c in enumerate(chunks):
    sts = "\n".join(["AWS4-HMAC-SHA256-PAYLOAD", amz_date, scope, previous, hashlib.sha256(b"").hexdigest(), hashlib.sha256(c).hexdigest()])
    sig = hmac.new(key, sts.encode(), hashlib.sha256).hexdigest()
    if len(sys.argv) > 3 and n == 3:
        sig = "0" * 64
    body += f"{len(c):x};chunk-signature={sig}\r\n".encode() + c + b"\r\n"
    previous = sig
assert len(body) == length
r = requests.put(url, data=bytes(body), headers=headers, verify=ca)
print("status", r.status_code, hashlib.sha256(data).hexdigest(), r.text[:300])
"#;

#[test]
fn signed_chunks_are_signed_again_with_the_real_key() {
    let fx = AwsFx::new();
    let url = "https://s3.amazonaws.com/netcage-test/streamed.bin";
    let out = fx.run(
        &["--seal-aws"],
        &["sh", "-c", &format!("python3 -c '{}' {url} \"$AWS_CA_BUNDLE\"", STREAMING.replace('\'', "'\\''"))],
    );
    let text = out_text(&out);
    assert!(text.contains("status 200"), "{}\n{:#?}", describe(&out), fx.received());
    let got = fx.assert_all_verified("signed chunks");
    let put = got.iter().find(|r| r["op"] == "PutObject").expect("PutObject");
    assert_eq!(put["signed_chunks"], true, "{put}");
    assert_eq!(put["size"], 9 * 1024 * 1024 + 12345, "{put}");
    assert!(text.contains(put["sha256"].as_str().unwrap()), "{text}");
    assert_audited_sigv4(&fx, "signed chunks");
}

/// Requests whose body holds a token (the session token's, bound to AWS) and whose signature
/// covers the body's hash: an STS POST (no `x-amz-content-sha256`) and an S3 PUT with a literal
/// `x-amz-content-sha256`, signed by botocore with the command's keys. `python3 -c
/// BODY_HASHED S3_URL STS_URL CA`; prints each status.
pub const BODY_HASHED: &str = r#"
import hashlib, os, sys, requests
from botocore.auth import S3SigV4Auth, SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
s3_url, sts_url, ca = sys.argv[1:4]
creds = Credentials(os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"], os.environ["AWS_SESSION_TOKEN"])
token = os.environ["AWS_SESSION_TOKEN"]
assert token.startswith("starpod:v1:")
def send(url, body, signer_class, service, headers):
    req = AWSRequest(method="PUT" if service == "s3" else "POST", url=url, data=body, headers=headers)
    signer_class(creds, service, "us-east-1").add_auth(req)
    r = requests.request(req.method, url, data=body, headers=dict(req.headers.items()), verify=ca)
    print(service, r.status_code, r.text[:200].replace("\n", " "))
body = f"note={token}".encode()
send(s3_url, body, S3SigV4Auth, "s3", {"x-amz-content-sha256": hashlib.sha256(body).hexdigest()})
form = f"Action=GetCallerIdentity&Version=2011-06-15&Note={token}".encode()
send(sts_url, form, SigV4Auth, "sts", {"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"})
"#;

#[test]
fn a_body_changed_by_substitution_is_hashed_as_sent() {
    let fx = AwsFx::new();
    let script = format!(
        "python3 -c '{}' https://s3.amazonaws.com/netcage-test/note.txt https://sts.amazonaws.com/ \"$AWS_CA_BUNDLE\"",
        BODY_HASHED.replace('\'', "'\\''")
    );
    let mut cmd = fx.run_cmd(&["--seal-aws"], &["sh", "-c", &script]);
    cmd.env("AWS_SESSION_TOKEN", REAL_SESSION);
    let out = run_with_timeout(&mut cmd, RUN_TIMEOUT);
    let text = out_text(&out);
    assert!(
        text.contains("s3 200") && text.contains("sts 200"),
        "{}\n{:#?}",
        describe(&out),
        fx.received()
    );
    let got = fx.assert_all_verified("hashed bodies");
    let put = got.iter().find(|r| r["op"] == "PutObject").expect("PutObject");
    let sent = format!("note={REAL_SESSION}");
    assert_eq!(put["sha256"].as_str().unwrap(), hex(&sha256(sent.as_bytes())), "{put}");
    assert_eq!(put["content_sha256"], hex(&sha256(sent.as_bytes())), "{put}");
}

/// A plain `PutObject` over 8 MiB (no checksum trailer: the body's SHA-256 signed, with a
/// `Content-Length`), which netcage streams: it keeps its `Content-Length`, which S3 (and the
/// test upstream, like S3) requires of an upload that is not aws-chunked.
#[test]
fn a_plain_upload_over_8_mib_keeps_its_content_length() {
    let fx = AwsFx::new();
    let script = r#"
import hashlib, boto3
s3 = boto3.client("s3", endpoint_url="https://s3.amazonaws.com",
                  config=boto3.session.Config(request_checksum_calculation="when_required"))
data = bytes(i % 253 for i in range(9 * 1024 * 1024 + 7))
s3.put_object(Bucket="netcage-test", Key="plain.bin", Body=data)
print("put", hashlib.sha256(data).hexdigest())
"#;
    let out = fx.run(&["--seal-aws"], &["python3", "-c", script]);
    let text = out_text(&out);
    assert!(
        out.status.success() && text.contains("put "),
        "{}\n{:#?}",
        describe(&out),
        fx.received()
    );
    let got = fx.assert_all_verified("plain upload");
    let put = got.iter().find(|r| r["op"] == "PutObject").expect("PutObject");
    assert_eq!(put["chunked"], false, "{put}");
    // botocore signs the body's hash here: kept as the client made it (the body is streamed).
    assert_eq!(put["content_sha256"], put["sha256"], "{put}");
    assert!(text.contains(put["sha256"].as_str().unwrap()), "{text}");
}
