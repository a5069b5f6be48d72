//! Where the real keys come from: netcage's environment (`AWS_ACCESS_KEY_ID`,
//! `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`) or a profile in the shared credentials file
//! (`AWS_SHARED_CREDENTIALS_FILE`, else `~/.aws/credentials`) or the config file
//! (`AWS_CONFIG_FILE`, else `~/.aws/config`), the credentials file first, as the SDKs read them.

use std::path::PathBuf;

use zeroize::Zeroizing;

use super::{AwsKeys, ini};

/// Which keys to seal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The environment's keys; without `AWS_ACCESS_KEY_ID` there, the profile `AWS_PROFILE`
    /// names (else `default`), as an SDK would.
    Default,
    /// A named profile.
    Profile(String),
}

/// Loads the keys `source` names; `env` looks up netcage's environment. The error is one line
/// saying what to do.
pub fn load(source: &Source, env: &dyn Fn(&str) -> Option<String>) -> Result<AwsKeys, String> {
    let keys = find(source, env)?;
    let flag = match source {
        Source::Default => "--seal-aws".to_owned(),
        Source::Profile(name) => format!("--seal-aws={name}"),
    };
    usable(&keys).map_err(|why| format!("{flag}: {why}; check the value"))?;
    Ok(keys)
}

/// Keys that can go into a signed request: the key id letters and digits (it is written
/// into `Authorization`), the secret and session token printable without spaces.
fn usable(keys: &AwsKeys) -> Result<(), &'static str> {
    if !keys
        .access_key_id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric())
    {
        return Err("the access key id is not letters and digits (AKIA…, ASIA…)");
    }
    let printable = |v: &str| v.bytes().all(|b| b.is_ascii_graphic());
    if !printable(&keys.secret_access_key)
        || keys.session_token.as_deref().is_some_and(|t| !printable(t))
    {
        return Err("the secret access key or session token holds spaces or control characters");
    }
    Ok(())
}

fn find(source: &Source, env: &dyn Fn(&str) -> Option<String>) -> Result<AwsKeys, String> {
    let set = |name: &str| env(name).filter(|v| !v.is_empty()).map(Zeroizing::new);
    match source {
        Source::Default => {
            if let Some(access_key_id) = set("AWS_ACCESS_KEY_ID") {
                let Some(secret_access_key) = set("AWS_SECRET_ACCESS_KEY") else {
                    return Err("--seal-aws: AWS_ACCESS_KEY_ID is set but AWS_SECRET_ACCESS_KEY is not; export both (or name a profile: --seal-aws=PROFILE)".into());
                };
                return Ok(AwsKeys {
                    access_key_id,
                    secret_access_key,
                    session_token: set("AWS_SESSION_TOKEN"),
                });
            }
            let profile = set("AWS_PROFILE").map_or_else(|| "default".into(), |p| p.to_string());
            profile_keys(&profile, env).map_err(|e| {
                format!("--seal-aws: AWS_ACCESS_KEY_ID is not set in netcage's environment and {e}; export AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or name a profile: --seal-aws=PROFILE")
            })
        }
        Source::Profile(name) => {
            profile_keys(name, env).map_err(|e| format!("--seal-aws={name}: {e}"))
        }
    }
}

/// Every profile of a shared credentials file's `text` that holds static keys, by name (for a
/// sealed copy of the file: each gets its own stand-in). Profiles without keys, or with keys
/// that could not go into a request, are left out.
pub fn profiles(text: &str) -> Vec<(String, AwsKeys)> {
    ini::sections(text)
        .into_iter()
        .filter_map(|name| {
            let pairs = ini::section(text, &name)?;
            let keys = keys_of(&pairs)?;
            usable(&keys).ok()?;
            Some((name, keys))
        })
        .collect()
}

/// The static keys among a profile's settings.
fn keys_of(pairs: &[(String, Zeroizing<String>)]) -> Option<AwsKeys> {
    let get = |key: &str| {
        pairs
            .iter()
            .find(|(k, v)| k == key && !v.is_empty())
            .map(|(_, v)| v.clone())
    };
    Some(AwsKeys {
        access_key_id: get("aws_access_key_id")?,
        secret_access_key: get("aws_secret_access_key")?,
        session_token: get("aws_session_token"),
    })
}

/// The static keys of profile `name`.
fn profile_keys(name: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<AwsKeys, String> {
    let home = env("HOME").map(PathBuf::from);
    let file = |var: &str, default: &str| -> Option<PathBuf> {
        env(var)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .or_else(|| home.as_ref().map(|h| h.join(".aws").join(default)))
    };
    let files = [
        (
            file("AWS_SHARED_CREDENTIALS_FILE", "credentials"),
            name.to_owned(),
        ),
        (
            file("AWS_CONFIG_FILE", "config"),
            if name == "default" {
                name.to_owned()
            } else {
                format!("profile {name}")
            },
        ),
    ];
    let mut looked = Vec::new();
    for (path, section) in files {
        let Some(path) = path else { continue };
        looked.push(path.display().to_string());
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => Zeroizing::new(text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
        };
        let Some(pairs) = ini::section(&text, &section) else {
            continue;
        };
        return keys_of(&pairs).ok_or_else(|| {
            format!(
                "profile {name} in {} has no aws_access_key_id and aws_secret_access_key (netcage seals static keys; for SSO, role or credential_process profiles export temporary keys first: eval \"$(aws configure export-credentials --profile {name} --format env)\", then --seal-aws)",
                path.display()
            )
        });
    }
    if looked.is_empty() {
        return Err(format!(
            "no profile {name}: HOME is not set, so there is no ~/.aws/credentials"
        ));
    }
    Err(format!("no profile {name} in {}", looked.join(" or ")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn lookup(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| map.get(name).cloned()
    }

    #[test]
    fn every_profile_with_keys_of_a_credentials_file() {
        let text = "[default]\naws_access_key_id = AKIA1\naws_secret_access_key = s1\n[sso]\nsso_session = x\n[work]\naws_access_key_id = AKIA2\naws_secret_access_key = s2\naws_session_token = t2\n";
        let found = profiles(text);
        let names: Vec<&str> = found.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["default", "work"]);
        assert_eq!(
            found[1].1.session_token.as_deref().map(String::as_str),
            Some("t2")
        );
    }

    #[test]
    fn the_environment_first() {
        let env = lookup(&[
            ("AWS_ACCESS_KEY_ID", "AKIAENV"),
            ("AWS_SECRET_ACCESS_KEY", "envsecret"),
            ("AWS_SESSION_TOKEN", "envsession"),
        ]);
        let keys = load(&Source::Default, &env).unwrap();
        assert_eq!(keys.access_key_id.as_str(), "AKIAENV");
        assert_eq!(keys.session_token.unwrap().as_str(), "envsession");
        let half = lookup(&[("AWS_ACCESS_KEY_ID", "AKIAENV")]);
        let e = load(&Source::Default, &half).unwrap_err();
        assert!(
            e.contains("AWS_SECRET_ACCESS_KEY is not") && !e.contains('\n'),
            "{e}"
        );
        let bad = lookup(&[
            ("AWS_ACCESS_KEY_ID", "AKIA\r\nX"),
            ("AWS_SECRET_ACCESS_KEY", "s"),
        ]);
        let e = load(&Source::Default, &bad).unwrap_err();
        assert!(e.contains("not letters and digits"), "{e}");
        let bad = lookup(&[
            ("AWS_ACCESS_KEY_ID", "AKIA1"),
            ("AWS_SECRET_ACCESS_KEY", "a b"),
        ]);
        assert!(
            load(&Source::Default, &bad)
                .unwrap_err()
                .contains("control characters")
        );
    }

    #[test]
    fn profiles_from_the_credentials_file_then_the_config_file() {
        let dir = tempfile::tempdir().unwrap();
        let creds = dir.path().join("creds");
        let config = dir.path().join("config");
        std::fs::write(&creds, "[default]\naws_access_key_id = AKIADEF\naws_secret_access_key = defsecret\n[sso]\nsso_session = x\n").unwrap();
        std::fs::write(&config, "[profile work]\naws_access_key_id = AKIAWORK\naws_secret_access_key = worksecret\naws_session_token = worksession\n").unwrap();
        let (c, f) = (creds.to_str().unwrap(), config.to_str().unwrap());
        let env = lookup(&[("AWS_SHARED_CREDENTIALS_FILE", c), ("AWS_CONFIG_FILE", f)]);
        let def = load(&Source::Default, &env).unwrap();
        assert_eq!(def.secret_access_key.as_str(), "defsecret");
        let work = load(&Source::Profile("work".into()), &env).unwrap();
        assert_eq!(work.access_key_id.as_str(), "AKIAWORK");
        assert_eq!(work.session_token.unwrap().as_str(), "worksession");
        let sso = load(&Source::Profile("sso".into()), &env).unwrap_err();
        assert!(sso.contains("export-credentials --profile sso"), "{sso}");
        let none = load(&Source::Profile("nope".into()), &env).unwrap_err();
        assert!(
            none.starts_with("--seal-aws=nope: no profile nope in "),
            "{none}"
        );
        assert!(!none.contains("defsecret") && !none.contains('\n'));
        // AWS_PROFILE picks the profile when the environment has no keys.
        let env = lookup(&[
            ("AWS_SHARED_CREDENTIALS_FILE", c),
            ("AWS_CONFIG_FILE", f),
            ("AWS_PROFILE", "work"),
        ]);
        assert_eq!(
            load(&Source::Default, &env).unwrap().access_key_id.as_str(),
            "AKIAWORK"
        );
        let empty = lookup(&[]);
        let e = load(&Source::Default, &empty).unwrap_err();
        assert!(e.contains("export AWS_ACCESS_KEY_ID"), "{e}");
    }
}
