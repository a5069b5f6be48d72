//! SigV4 re-signing (`--seal-aws`) in Tier 1 (`--tier netns`, root): the aws CLI and boto3
//! intercepted transparently, without proxy variables (tests/tier0/aws_body.rs).

mod common;

const TIER: &str = "netns";

include!("tier0/aws_body.rs");

/// `~/.aws/credentials` sealed (no `--seal-aws`, no keys in the environment): the command's copy
/// holds a stand-in key id and a token, the aws CLI reads it as it is, and the upstream
/// verifies each request signed by the real key; `~/.aws/config` is kept (its region used).
#[test]
fn the_aws_credentials_file_is_sealed_into_stand_ins() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIPPED: Tier 1 here needs root");
        return;
    }
    let fx = AwsFx::new();
    let dir = fx.env.path(".aws");
    std::fs::create_dir(&dir).unwrap();
    let real = format!(
        "# work account\n[default]\naws_access_key_id = {REAL_ID}\naws_secret_access_key = {REAL_SECRET}\n"
    );
    std::fs::write(dir.join("credentials"), &real).unwrap();
    std::fs::write(
        dir.join("config"),
        "[default]\nregion = us-east-1\ns3 =\n  addressing_style = path\n",
    )
    .unwrap();
    std::fs::create_dir(dir.join("sso")).unwrap();
    std::fs::write(
        dir.join("sso").join("token.json"),
        "{\"accessToken\": \"sso-secret\"}",
    )
    .unwrap();
    let script = "set -e
cat ~/.aws/credentials
ls -A ~/.aws
aws --endpoint-url https://sts.amazonaws.com sts get-caller-identity --output text
aws --endpoint-url https://s3.amazonaws.com s3 ls";
    let mut cmd = fx.run_cmd(&[], &["sh", "-c", script]);
    for var in [
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_CONFIG_FILE",
        "AWS_SHARED_CREDENTIALS_FILE",
    ] {
        cmd.env_remove(var);
    }
    let out = run_with_timeout(&mut cmd, RUN_TIMEOUT);
    let text = out_text(&out);
    assert!(
        out.status.success(),
        "aws CLI with the sealed file failed: {}\nthe upstream received: {:#?}",
        describe(&out),
        fx.received()
    );
    assert_no_secret("sealed file", &out);
    assert!(
        free_of(&out.stdout, REAL_ID.as_bytes()),
        "the real key id shows: {text}"
    );
    assert!(
        text.contains("# work account\n[default]\naws_access_key_id = AKIANETC"),
        "{text}"
    );
    assert!(
        text.contains("aws_secret_access_key = starpod:v1:"),
        "{text}"
    );
    // The two files, not the SSO cache.
    let listed: Vec<&str> = text
        .lines()
        .filter(|l| ["config", "credentials", "sso"].contains(l))
        .collect();
    assert_eq!(listed, ["config", "credentials"], "{text}");
    assert!(text.contains("123456789012"), "{text}");
    let ops = fx.ops();
    assert!(
        ops.iter().any(|o| o == "GetCallerIdentity") && ops.iter().any(|o| o == "ListBuckets"),
        "{ops:?}"
    );
    fx.assert_all_verified("sealed ~/.aws/credentials");
    assert_audited_sigv4(&fx, "sealed ~/.aws/credentials");
}
