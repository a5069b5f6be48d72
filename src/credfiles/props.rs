//! Property: whatever secrets a file holds, its rewrite holds none of them (nor the base64
//! forms the file used), and every byte outside the secrets is kept.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use proptest::prelude::*;

use super::Format;
use super::testing::run;

fn secret() -> impl Strategy<Value = String> {
    "[A-Za-z0-9_]{12,24}".prop_map(|s| format!("SeCrEt{s}"))
}

fn host() -> impl Strategy<Value = String> {
    "[a-z]{1,8}\\.test"
}

/// A file of `format` holding `secrets` (and the forms of them it writes).
fn file(format: Format, secrets: &[String], hosts: &[String]) -> String {
    let mut out = String::new();
    for (i, (s, h)) in secrets.iter().zip(hosts).enumerate() {
        match format {
            Format::GitCredentials => out.push_str(&format!("https://u{i}:{s}@{h}/p\n")),
            Format::Netrc => out.push_str(&format!("machine {h} login u{i}\n  password {s}\n")),
            Format::Npmrc => out.push_str(&format!(
                "//{h}/:_authToken={s}\n//{h}/:_auth={}\n",
                B64.encode(format!("u:{s}"))
            )),
            Format::Docker => out.push_str(&format!(
                "{}\"{h}{i}\": {{\"auth\": \"{}\", \"identitytoken\": \"{s}\"}}",
                if i == 0 { "" } else { ",\n" },
                B64.encode(format!("u:{s}"))
            )),
            Format::Gh => out.push_str(&format!(
                "{h}{i}:\n    users:\n        u:\n            oauth_token: {s}\n    oauth_token: {s}\n"
            )),
            Format::Pypirc => out.push_str(&format!(
                "[s{i}]\nrepository = https://{h}/legacy/\npassword = {s}\n"
            )),
            Format::Cargo => {
                if i == 0 {
                    out.push_str(&format!("[registry]\ntoken = \"{s}\"\n"));
                }
            }
        }
    }
    if format == Format::Docker {
        out = format!("{{\"auths\": {{{out}}}}}");
    }
    out
}

#[test]
fn no_secret_survives_a_rewrite() {
    let strategy = (
        proptest::sample::select(Format::ALL.to_vec()),
        proptest::collection::vec((secret(), host()), 1..4),
    );
    crate::fuzz::check("credfiles rewrite", 64, strategy, |(format, items)| {
        let (secrets, hosts): (Vec<String>, Vec<String>) = items.into_iter().unzip();
        let text = file(format, &secrets, &hosts);
        let (out, seen) = run(format, &text)
            .map_err(|e| TestCaseError::fail(format!("{format:?}: {e}\n{text}")))?;
        prop_assert!(!seen.is_empty());
        for s in &secrets {
            prop_assert!(!out.contains(s.as_str()), "{format:?}: {s} in\n{out}");
            prop_assert!(
                !out.contains(&B64.encode(format!("u:{s}"))),
                "{format:?}: base64"
            );
        }
        for (v, _) in &seen {
            prop_assert!(secrets.contains(v), "{format:?}: sealed a non-secret");
        }
        Ok(())
    });
}

#[test]
fn arbitrary_files_never_panic() {
    let strategy = (
        proptest::sample::select(Format::ALL.to_vec()),
        "(?s).{0,300}",
    );
    crate::fuzz::check("credfiles any text", 256, strategy, |(format, text)| {
        let _ = run(format, &text);
        Ok(())
    });
}
