//! `~/.docker/config.json`: `auths.<registry>.auth` is base64 of `user:password` (the token
//! goes in as base64 of `user:TOKEN`: the client sends it as Basic credentials, in which the
//! proxy finds it), `identitytoken`, `registrytoken` and `password` are raw. Each belongs to
//! the registry's host (Docker Hub's key `https://index.docker.io/v1/` to the hosts a pull or
//! login reaches). A `credsStore` or `credHelpers` keeps credentials in a helper program,
//! which netcage cannot seal: such a file is refused (and stays hidden).

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use zeroize::Zeroizing;

use super::json::string_values;
use super::{Encoding, Found, url_host};

/// The hosts Docker Hub's credentials are sent to.
const DOCKER_HUB: &[&str] = &[
    "index.docker.io",
    "registry-1.docker.io",
    "auth.docker.io",
    "docker.io",
];

fn registry_hosts(key: &str) -> Option<Vec<String>> {
    let host = url_host(key)?;
    if DOCKER_HUB.contains(&host.as_str()) {
        return Some(DOCKER_HUB.iter().map(|h| (*h).to_owned()).collect());
    }
    Some(vec![host])
}

pub(super) fn find(text: &str) -> Result<Vec<Found>, String> {
    let values = string_values(text)?;
    let doc: serde_json::Value =
        serde_json::from_str(text).map_err(|_| "not valid JSON".to_owned())?;
    let Some(doc) = doc.as_object() else {
        return Err("not a JSON object".into());
    };
    for helper in ["credsStore", "credHelpers"] {
        let set = match doc.get(helper) {
            Some(serde_json::Value::String(s)) => !s.is_empty(),
            Some(serde_json::Value::Object(o)) => !o.is_empty(),
            Some(serde_json::Value::Null) | None => false,
            Some(_) => true,
        };
        if set {
            return Err(format!(
                "{helper} keeps the credentials in a helper program, which netcage cannot seal"
            ));
        }
    }
    let mut out = Vec::new();
    for v in values {
        let [top, registry, field] = v.path.as_slice() else {
            if v.path.first().is_some_and(|t| t == "auths") && v.path.len() > 3 {
                return Err("auths holds nested values netcage does not know".into());
            }
            continue;
        };
        if top != "auths" {
            continue;
        }
        let encoding = match field.as_str() {
            "auth" => None,
            "identitytoken" | "registrytoken" | "password" => Some(Encoding::Raw),
            _ => continue,
        };
        if v.value.is_empty() {
            continue;
        }
        let hosts = registry_hosts(registry)
            .ok_or_else(|| format!("auths: a registry key without a host ({field})"))?;
        let (value, encoding) = match encoding {
            Some(e) => (v.value, e),
            None => {
                let decoded = Zeroizing::new(
                    B64.decode(v.value.trim())
                        .map_err(|_| "auths: an auth that is not base64".to_owned())?,
                );
                let decoded = Zeroizing::new(
                    String::from_utf8(decoded.to_vec())
                        .map_err(|_| "auths: an auth that is not UTF-8 once decoded".to_owned())?,
                );
                let (user, password) = decoded
                    .split_once(':')
                    .ok_or_else(|| "auths: an auth that is not user:password".to_owned())?;
                (
                    Zeroizing::new(password.to_owned()),
                    Encoding::BasicPair(user.to_owned()),
                )
            }
        };
        out.push(Found {
            start: v.start,
            end: v.end,
            value,
            hosts,
            encoding,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD as B64;

    use super::super::Format;
    use super::super::testing::{hosts, run};

    #[test]
    fn auths_are_sealed_for_their_registry() {
        let auth = B64.encode("me:dckr_pat_1");
        let text = format!(
            "{{\n\t\"auths\": {{\n\t\t\"https://index.docker.io/v1/\": {{\n\t\t\t\"auth\": \"{auth}\"\n\t\t}},\n\t\t\"reg.test:5000\": {{ \"identitytoken\": \"idt\", \"email\": \"x\" }}\n\t}},\n\t\"psFormat\": \"table\"\n}}"
        );
        let (out, seen) = run(Format::Docker, &text).unwrap();
        let want = text
            .replace(&auth, &B64.encode("me:starpod:v1:T1+/="))
            .replace("\"idt\"", "\"starpod:v1:T2+/=\"");
        assert_eq!(out, want);
        assert_eq!(
            seen,
            vec![
                (
                    "dckr_pat_1".into(),
                    hosts(&[
                        "index.docker.io",
                        "registry-1.docker.io",
                        "auth.docker.io",
                        "docker.io"
                    ])
                ),
                ("idt".into(), hosts(&["reg.test"])),
            ]
        );
    }

    #[test]
    fn helpers_and_bad_auths_are_refused() {
        let e = run(Format::Docker, r#"{"auths": {}, "credsStore": "desktop"}"#).unwrap_err();
        assert!(e.starts_with("credsStore keeps"), "{e}");
        let e = run(Format::Docker, r#"{"credHelpers": {"gcr.io": "gcloud"}}"#).unwrap_err();
        assert!(e.starts_with("credHelpers keeps"), "{e}");
        assert!(
            run(
                Format::Docker,
                r#"{"auths": {"r.test": {"auth": "bm9jb2xvbg=="}}}"#
            )
            .is_err()
        );
        assert!(
            run(Format::Docker, "secret = x\n")
                .unwrap_err()
                .starts_with("not valid JSON")
        );
        assert!(
            run(
                Format::Docker,
                r#"{"auths": {"r.test": {"auth": ""}}, "credsStore": ""}"#
            )
            .is_ok()
        );
    }
}
