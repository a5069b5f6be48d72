//! SigV4 re-signing (`--seal-aws`) in Tier 0 (`--tier env`): the aws CLI and boto3 against a
//! local S3/STS endpoint that verifies signatures with the real key (tests/tier0/aws_body.rs),
//! and the user mistakes `--seal-aws` answers in one line.

mod common;

const TIER: &str = "env";

include!("tier0/aws_body.rs");

/// The verifier can fail: a request signed by the stand-in's token (what the command would
/// send without netcage re-signing it) is refused, one signed by the real key passes.
#[test]
fn the_verifying_upstream_refuses_any_key_but_the_real_one() {
    let fx = AwsFx::new();
    let script = r#"
import sys, boto3, botocore.exceptions
s3 = boto3.client("s3", endpoint_url="https://127.0.0.1:" + sys.argv[1], verify=sys.argv[2],
                  aws_access_key_id=sys.argv[3], aws_secret_access_key=sys.argv[4], region_name="us-east-1")
try:
    print("OK", len(s3.list_buckets()["Buckets"]))
except botocore.exceptions.ClientError as e:
    print("REFUSED", e.response["Error"]["Code"])
"#;
    let run = |id: &str, secret: &str| {
        let mut cmd = std::process::Command::new("python3");
        isolate_client_env(&mut cmd, fx.env.root());
        cmd.args(["-c", script, &fx.port().to_string()])
            .arg(fx.ca())
            .args([id, secret])
            .env("AWS_CONFIG_FILE", fx.env.path("aws-config"));
        stdout_str(&run_with_timeout(&mut cmd, Duration::from_secs(60)))
    };
    assert!(run(REAL_ID, "starpod:v1:not-the-real-key").contains("REFUSED SignatureDoesNotMatch"));
    assert!(run("AKIANETC000000000000", REAL_SECRET).contains("REFUSED SignatureDoesNotMatch"));
    assert!(run(REAL_ID, REAL_SECRET).contains("OK 1"));
    // A chunk signature that is not the real key's is refused too.
    let streamed = |extra: &[&str]| {
        let mut cmd = std::process::Command::new("python3");
        isolate_client_env(&mut cmd, fx.env.root());
        let url = format!("https://127.0.0.1:{}/netcage-test/streamed.bin", fx.port());
        cmd.args(["-c", STREAMING, &url])
            .arg(fx.ca())
            .args(extra)
            .env("AWS_ACCESS_KEY_ID", REAL_ID)
            .env("AWS_SECRET_ACCESS_KEY", REAL_SECRET);
        stdout_str(&run_with_timeout(&mut cmd, Duration::from_secs(60)))
    };
    assert!(streamed(&[]).contains("status 200"));
    let bad = streamed(&["bad-chunk"]);
    assert!(
        bad.contains("status 403") && bad.contains("chunk signature"),
        "{bad}"
    );
}

#[test]
fn seal_aws_mistakes_are_one_line_each() {
    let fx = AwsFx::new();
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);
    let cases: &[Case] = &[
        (
            &["--seal-aws"],
            &[("AWS_ACCESS_KEY_ID", "")],
            "export AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY",
        ),
        (
            &["--seal-aws"],
            &[("AWS_SECRET_ACCESS_KEY", "")],
            "AWS_SECRET_ACCESS_KEY is not",
        ),
        (
            &["--seal-aws=nope"],
            &[],
            "--seal-aws=nope: no profile nope in",
        ),
        (
            &["--seal-aws-host", "s3.example"],
            &[],
            "--seal-aws-host: no AWS key is sealed",
        ),
        (
            &["--seal-aws", "--seal-aws-host", "bad host"],
            &[],
            "--seal-aws-host",
        ),
    ];
    for (opts, env, want) in cases {
        let mut cmd = fx.run_cmd(opts, &["true"]);
        for (k, v) in *env {
            cmd.env(k, v);
        }
        let out = run_with_timeout(&mut cmd, Duration::from_secs(30));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{opts:?}: {}", describe(&out));
        assert!(stderr.contains(want), "{opts:?}: want {want:?} in {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{opts:?}: {stderr}");
        assert!(free_of(&out.stderr, REAL_SECRET.as_bytes()));
    }
    // A profile of the shared credentials file.
    std::fs::write(
        fx.env.path("credentials"),
        format!("[work]\naws_access_key_id = {REAL_ID}\naws_secret_access_key = {REAL_SECRET}\n"),
    )
    .unwrap();
    let mut cmd = fx.run_cmd(
        &["--seal-aws=work"],
        &["sh", "-c", "echo $AWS_ACCESS_KEY_ID"],
    );
    cmd.env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env("AWS_SHARED_CREDENTIALS_FILE", fx.env.path("credentials"));
    let out = run_with_timeout(&mut cmd, Duration::from_secs(30));
    assert!(
        out.status.success() && stdout_str(&out).starts_with("AKIANETC"),
        "{}",
        describe(&out)
    );
}

/// `[secrets] aws = "PROFILE"` and `aws_hosts` in the policy do what the flags do.
#[test]
fn the_policy_seals_a_profile_for_its_hosts() {
    let fx = AwsFx::new();
    std::fs::write(
        fx.env.path("credentials"),
        format!("[work]\naws_access_key_id = {REAL_ID}\naws_secret_access_key = {REAL_SECRET}\n"),
    )
    .unwrap();
    let policy = fx.env.path("netcage.toml");
    std::fs::write(
        &policy,
        "[secrets]\naws = \"work\"\naws_hosts = [\"other.example\"]\n",
    )
    .unwrap();
    let script = r#"
import boto3
s3 = boto3.client("s3", endpoint_url="https://other.example")
print("buckets", [b["Name"] for b in s3.list_buckets()["Buckets"]])
"#;
    let mut cmd = fx.run_cmd(
        &["--policy", policy.to_str().unwrap()],
        &["python3", "-c", script],
    );
    cmd.env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env("AWS_SHARED_CREDENTIALS_FILE", fx.env.path("credentials"));
    let out = run_with_timeout(&mut cmd, Duration::from_secs(60));
    assert!(
        stdout_str(&out).contains("buckets ['netcage-test']"),
        "{}",
        describe(&out)
    );
    let got = fx.assert_all_verified("policy");
    assert!(got.iter().all(|r| r["host"] == "other.example"), "{got:#?}");
}

/// What netcage does not re-sign is refused with a 403 naming it, and nothing arrives: signed
/// trailers, SigV4a, and a request whose X-Amz-Date does not match its scope (400).
#[test]
fn modes_netcage_does_not_re_sign_are_refused_by_name() {
    let fx = AwsFx::new();
    let script = r#"
import os, sys, requests
kid = os.environ["AWS_ACCESS_KEY_ID"]
url = "https://s3.amazonaws.com/netcage-test/x"
cases = [
    ("AWS4-HMAC-SHA256 Credential=%s/20260101/us-east-1/s3/aws4_request, SignedHeaders=host;x-amz-date, Signature=%s" % (kid, "0" * 64),
     {"x-amz-date": "20260101T000000Z", "x-amz-content-sha256": "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER"}),
    ("AWS4-ECDSA-P256-SHA256 Credential=%s/20260101/s3/aws4_request, SignedHeaders=host;x-amz-date, Signature=%s" % (kid, "0" * 64),
     {"x-amz-date": "20260101T000000Z"}),
    ("AWS4-HMAC-SHA256 Credential=%s/20260101/us-east-1/s3/aws4_request, SignedHeaders=host;x-amz-date, Signature=%s" % (kid, "0" * 64),
     {"x-amz-date": "20250101T000000Z"}),
]
for auth, headers in cases:
    headers["Authorization"] = auth
    r = requests.put(url, data=b"x", headers=headers, verify=sys.argv[1])
    print(r.status_code, r.text.replace("\n", " "))
"#;
    let out = fx.run(
        &["--seal-aws"],
        &[
            "sh",
            "-c",
            &format!("python3 -c '{script}' \"$AWS_CA_BUNDLE\""),
        ],
    );
    let text = stdout_str(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{}", describe(&out));
    assert!(
        lines[0].starts_with("403")
            && lines[0].contains("STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER"),
        "{}",
        lines[0]
    );
    assert!(
        lines[1].starts_with("403") && lines[1].contains("SigV4a (AWS4-ECDSA-P256-SHA256)"),
        "{}",
        lines[1]
    );
    assert!(
        lines[2].starts_with("400") && lines[2].contains("X-Amz-Date"),
        "{}",
        lines[2]
    );
    assert!(fx.received().is_empty(), "{:#?}", fx.received());
    let text = std::fs::read_to_string(&fx.audit).unwrap();
    let refused: Vec<Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|l| l["decision"] == "block" && l["host"] == "s3.amazonaws.com")
        .collect();
    assert_eq!(refused.len(), 3, "{text}");
    for line in &refused {
        assert_eq!(line["tokens"][0]["action"], "sigv4", "{line}");
    }
}
