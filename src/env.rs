//! The command's environment (DESIGN §1.5), pure: from netcage's own environment to the one the
//! command starts with, in both tiers.
//!
//! 1. A sealed variable holds its token.
//! 2. A sealed value anywhere else — the whole value of another variable (`GH_TOKEN` holding
//!    the same value as a sealed `GITHUB_TOKEN`), or part of one (`https://x:VALUE@host`) — is
//!    replaced by the same token. Parts shorter than [`MIN_PART_LEN`] bytes are left alone (they
//!    would match everywhere); a whole value is replaced whatever its length.
//! 3. A variable whose name says it holds a credential, or reaches a key agent ([`WITHHELD`]),
//!    is not passed on unless it is sealed, was changed by 2, already holds a `starpod:v1:`
//!    token, is empty, or is passed on purpose (`--pass-env NAME`, `SandboxBuilder::pass_env`).
//!    Its name (never its value) is reported: [`removal_notice`].

use std::ffi::OsString;
use std::os::unix::ffi::{OsStrExt, OsStringExt};

use zeroize::Zeroizing;

/// Variables not passed on to the command, by name (ASCII case-insensitive). `*` stands for
/// any text: `*_TOKEN` is a suffix, `SECRET_*` a prefix, `*_SECRET_*` anywhere. Each entry
/// says what it catches.
pub const WITHHELD: &[(&str, &str)] = &[
    ("TOKEN", "a bare token"),
    (
        "*_TOKEN",
        "GITHUB_TOKEN, AWS_SESSION_TOKEN, *_AUTH_TOKEN, ACTIONS_RUNTIME_TOKEN, ACTIONS_ID_TOKEN_REQUEST_TOKEN",
    ),
    (
        "TF_TOKEN_*",
        "Terraform's per-host tokens (TF_TOKEN_app_terraform_io)",
    ),
    ("*_AUTHTOKEN", "npm_config__authToken, NGROK_AUTHTOKEN"),
    ("SECRET", "a bare secret"),
    ("*_SECRET", "*_CLIENT_SECRET, JWT_SECRET, WEBHOOK_SECRET"),
    ("SECRET_*", "SECRET_KEY (Django), SECRET_KEY_BASE (Rails)"),
    ("*_SECRET_*", "AWS_SECRET_ACCESS_KEY, STRIPE_SECRET_KEY"),
    ("PASSWORD", "a bare password"),
    ("*_PASSWORD", "DB_PASSWORD, REGISTRY_PASSWORD"),
    ("PGPASSWORD", "PostgreSQL's password variable"),
    ("*PASSWD", "PASSWD, DB_PASSWD"),
    ("*_PASS", "DB_PASS, SMTP_PASS"),
    ("*_PWD", "DB_PWD (not PWD or OLDPWD, the working directory)"),
    ("*_PASSPHRASE", "GPG_PASSPHRASE, a signing key's passphrase"),
    ("API_KEY", "a bare API key"),
    ("*_API_KEY", "OPENAI_API_KEY, ANTHROPIC_API_KEY"),
    ("APIKEY", "a bare API key"),
    ("*_APIKEY", "DD_APIKEY-style spellings"),
    (
        "*_ACCESS_KEY",
        "AWS_SECRET_ACCESS_KEY, storage account keys",
    ),
    ("PRIVATE_KEY", "a bare private key"),
    ("*_PRIVATE_KEY", "SSH_PRIVATE_KEY, GITHUB_APP_PRIVATE_KEY"),
    (
        "*_CONNECTION_STRING",
        "AZURE_STORAGE_CONNECTION_STRING (holds the account key)",
    ),
    ("NPM_CONFIG__AUTH", "npm's base64 user:password"),
    ("DOCKER_AUTH_CONFIG", "registry credentials (GitLab CI)"),
    ("SSH_AUTH_SOCK", "the ssh agent: signs with your keys"),
    ("SSH_AGENT_PID", "the ssh agent's process"),
    (
        "GPG_AGENT_INFO",
        "the gpg agent: decrypts and signs with your keys",
    ),
];

/// Sealed values shorter than this are replaced only where they are a variable's whole value.
pub const MIN_PART_LEN: usize = crate::scan::MIN_REFLECT_LEN;

/// One sealed variable: its name, its token and, when known, the real value (wiped on drop).
#[derive(Clone)]
pub struct SealedVar {
    pub name: String,
    pub token: String,
    pub value: Option<Zeroizing<String>>,
}

impl std::fmt::Debug for SealedVar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealedVar")
            .field("name", &self.name)
            .field("token", &self.token)
            .finish_non_exhaustive()
    }
}

/// The command's environment and the variables withheld from it.
#[derive(Debug, Default)]
pub struct CommandEnv {
    pub env: Vec<(OsString, OsString)>,
    /// Names only, in the order of netcage's environment.
    pub removed: Vec<String>,
}

/// The [`WITHHELD`] pattern `name` matches, if any.
pub fn withheld_by(name: &str) -> Option<&'static str> {
    let upper = name.to_ascii_uppercase();
    WITHHELD
        .iter()
        .map(|(pattern, _)| *pattern)
        .find(|pattern| glob_matches(pattern, &upper))
}

/// `*` at either end of `pattern` stands for any text.
fn glob_matches(pattern: &str, name: &str) -> bool {
    match (pattern.strip_prefix('*'), pattern.strip_suffix('*')) {
        (Some(rest), _) if rest.ends_with('*') => name.contains(&rest[..rest.len() - 1]),
        (Some(suffix), None) => name.ends_with(suffix),
        (None, Some(prefix)) => name.starts_with(prefix),
        _ => name == pattern,
    }
}

/// Builds the command's environment from `base` (see the module doc). `pass` names variables
/// to pass on as they are although their names match [`WITHHELD`].
pub fn command_env(
    base: &[(OsString, OsString)],
    sealed: &[SealedVar],
    pass: &[String],
) -> CommandEnv {
    let swaps: Vec<(&[u8], &[u8])> = sealed
        .iter()
        .filter_map(|s| Some((s.value.as_ref()?.as_bytes(), s.token.as_bytes())))
        .filter(|(value, _)| !value.is_empty())
        .collect();
    let mut out = CommandEnv::default();
    for (name, value) in base {
        if sealed.iter().any(|s| name == s.name.as_str()) {
            continue;
        }
        let (value, swapped) = match swap_values(value.as_bytes(), &swaps) {
            Some(new) => (OsString::from_vec(new), true),
            None => (value.clone(), false),
        };
        let name_str = name.to_string_lossy();
        let keep = swapped
            || value.is_empty()
            || value
                .as_bytes()
                .starts_with(crate::token::PREFIX.as_bytes())
            || pass.iter().any(|p| p.as_str() == name_str)
            || withheld_by(&name_str).is_none();
        if keep {
            out.env.push((name.clone(), value));
        } else {
            out.removed.push(name_str.into_owned());
        }
    }
    out.env.extend(
        sealed
            .iter()
            .map(|s| (OsString::from(&s.name), OsString::from(&s.token))),
    );
    out
}

/// `text` with every sealed value replaced by its token (leftmost first, then longest), or
/// `None` when it holds none.
fn swap_values(text: &[u8], swaps: &[(&[u8], &[u8])]) -> Option<Vec<u8>> {
    if let Some((_, token)) = swaps.iter().find(|(value, _)| *value == text) {
        return Some(token.to_vec());
    }
    let mut out = Vec::new();
    let mut rest = text;
    let mut changed = false;
    loop {
        let hit = swaps
            .iter()
            .filter(|(value, _)| value.len() >= MIN_PART_LEN)
            .filter_map(|(value, token)| {
                memchr::memmem::find(rest, value).map(|at| (at, value.len(), *token))
            })
            .min_by_key(|(at, len, _)| (*at, std::cmp::Reverse(*len)));
        let Some((at, len, token)) = hit else { break };
        out.extend_from_slice(&rest[..at]);
        out.extend_from_slice(token);
        rest = &rest[at + len..];
        changed = true;
    }
    changed.then(|| {
        out.extend_from_slice(rest);
        out
    })
}

/// The one line netcage prints about withheld variables (names only), if any were.
pub fn removal_notice(removed: &[String]) -> Option<String> {
    let (names, say, them) = match removed {
        [] => return None,
        [one] => (
            one.clone(),
            "its name says it holds a credential or reaches a key agent",
            "it",
        ),
        many => (
            many.join(", "),
            "their names say they hold credentials or reach a key agent",
            "them",
        ),
    };
    Some(format!(
        "netcage: not passing {names} to the command ({say}): --seal {them}, or --pass-env NAME to pass one as it is"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSING: &[&str] = &[
        "TOKENIZERS_PARALLELISM",
        "PWD",
        "OLDPWD",
        "KEY_PATH",
        "GITHUB_TOKEN_PATH",
        "TOKEN_FILE",
        "SECRETS_DIR",
        "PASSWORD_STORE_DIR",
        "AWS_ACCESS_KEY_ID",
        "GOOGLE_APPLICATION_CREDENTIALS",
        "SSH_CONNECTION",
        "BYPASS",
        "PATH",
        "HOME",
        "TERM",
        "COMPASS",
        "API_KEY_FILE",
        "SSH_AUTH_SOCK_DIR",
    ];

    #[test]
    fn each_rule_catches_what_it_names() {
        let cases: &[(&str, &str)] = &[
            ("TOKEN", "TOKEN"),
            ("GITHUB_TOKEN", "*_TOKEN"),
            ("gh_token", "*_TOKEN"),
            ("ACTIONS_RUNTIME_TOKEN", "*_TOKEN"),
            ("ACTIONS_ID_TOKEN_REQUEST_TOKEN", "*_TOKEN"),
            ("SLACK_AUTH_TOKEN", "*_TOKEN"),
            ("TF_TOKEN_app_terraform_io", "TF_TOKEN_*"),
            ("npm_config__authToken", "*_AUTHTOKEN"),
            ("SECRET", "SECRET"),
            ("AZURE_CLIENT_SECRET", "*_SECRET"),
            ("SECRET_KEY", "SECRET_*"),
            ("STRIPE_SECRET_KEY", "*_SECRET_*"),
            ("AWS_SECRET_ACCESS_KEY", "*_SECRET_*"),
            ("PASSWORD", "PASSWORD"),
            ("DB_PASSWORD", "*_PASSWORD"),
            ("PGPASSWORD", "PGPASSWORD"),
            ("PASSWD", "*PASSWD"),
            ("DB_PASSWD", "*PASSWD"),
            ("SMTP_PASS", "*_PASS"),
            ("DB_PWD", "*_PWD"),
            ("GPG_PASSPHRASE", "*_PASSPHRASE"),
            ("API_KEY", "API_KEY"),
            ("OPENAI_API_KEY", "*_API_KEY"),
            ("APIKEY", "APIKEY"),
            ("DD_APIKEY", "*_APIKEY"),
            ("MINIO_ACCESS_KEY", "*_ACCESS_KEY"),
            ("PRIVATE_KEY", "PRIVATE_KEY"),
            ("SSH_PRIVATE_KEY", "*_PRIVATE_KEY"),
            ("AZURE_STORAGE_CONNECTION_STRING", "*_CONNECTION_STRING"),
            ("NPM_CONFIG__AUTH", "NPM_CONFIG__AUTH"),
            ("DOCKER_AUTH_CONFIG", "DOCKER_AUTH_CONFIG"),
            ("SSH_AUTH_SOCK", "SSH_AUTH_SOCK"),
            ("SSH_AGENT_PID", "SSH_AGENT_PID"),
            ("GPG_AGENT_INFO", "GPG_AGENT_INFO"),
        ];
        for (name, rule) in cases {
            assert_eq!(withheld_by(name), Some(*rule), "{name}");
        }
        // Every rule of the table is exercised above.
        for (pattern, _) in WITHHELD {
            assert!(
                cases.iter().any(|(_, rule)| rule == pattern),
                "no test for {pattern}"
            );
        }
    }

    #[test]
    fn look_alikes_pass() {
        for name in PASSING {
            assert_eq!(withheld_by(name), None, "{name}");
        }
    }

    fn os(pairs: &[(&str, &str)]) -> Vec<(OsString, OsString)> {
        pairs.iter().map(|(k, v)| (k.into(), v.into())).collect()
    }

    fn get<'e>(env: &'e CommandEnv, name: &str) -> Option<&'e str> {
        env.env
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.to_str().unwrap())
    }

    fn sealed(name: &str, value: &str, token: &str) -> SealedVar {
        SealedVar {
            name: name.into(),
            token: token.into(),
            value: Some(Zeroizing::new(value.into())),
        }
    }

    #[test]
    fn a_sealed_value_becomes_its_token_wherever_it_appears() {
        let real = "ghp_RealValue123";
        let base = os(&[
            ("GITHUB_TOKEN", real),
            ("GH_TOKEN", real),
            ("PLAIN", real),
            ("REMOTE", "https://x:ghp_RealValue123@host/ghp_RealValue123"),
            ("HOME", "/home/u"),
        ]);
        let seal = [sealed("GITHUB_TOKEN", real, "starpod:v1:TOK")];
        let out = command_env(&base, &seal, &[]);
        assert_eq!(get(&out, "GITHUB_TOKEN"), Some("starpod:v1:TOK"));
        assert_eq!(get(&out, "GH_TOKEN"), Some("starpod:v1:TOK"));
        assert_eq!(get(&out, "PLAIN"), Some("starpod:v1:TOK"));
        assert_eq!(
            get(&out, "REMOTE"),
            Some("https://x:starpod:v1:TOK@host/starpod:v1:TOK")
        );
        assert_eq!(get(&out, "HOME"), Some("/home/u"));
        assert!(out.removed.is_empty(), "{:?}", out.removed);
        let all: Vec<u8> = out
            .env
            .iter()
            .flat_map(|(k, v)| [k.as_bytes(), v.as_bytes()].concat())
            .collect();
        assert!(memchr::memmem::find(&all, real.as_bytes()).is_none());
    }

    #[test]
    fn overlapping_values_take_the_longest_and_short_ones_only_whole() {
        let seal = [
            sealed("A", "abcdefgh", "starpod:v1:A"),
            sealed("B", "abcdefghij", "starpod:v1:B"),
            sealed("C", "xyz", "starpod:v1:C"),
        ];
        let base = os(&[
            ("URL", "u:abcdefghij@h"),
            ("SHORT", "xyz"),
            ("PATHLIKE", "/xyz/bin"),
        ]);
        let out = command_env(&base, &seal, &[]);
        assert_eq!(get(&out, "URL"), Some("u:starpod:v1:B@h"));
        assert_eq!(get(&out, "SHORT"), Some("starpod:v1:C"));
        assert_eq!(get(&out, "PATHLIKE"), Some("/xyz/bin"));
    }

    #[test]
    fn credential_names_are_withheld_unless_sealed_tokens_empty_or_passed() {
        let base = os(&[
            ("FOO_TOKEN", "real-foo"),
            ("BAR_PASSWORD", "real-bar"),
            ("SSH_AUTH_SOCK", "/tmp/ssh-x/agent.1"),
            ("KEPT_TOKEN", "starpod:v1:already"),
            ("EMPTY_SECRET", ""),
            ("PASSED_API_KEY", "real-passed"),
            ("TOKENIZERS_PARALLELISM", "false"),
            ("SEALED_TOKEN", "real-sealed"),
        ]);
        let seal = [sealed("SEALED_TOKEN", "real-sealed", "starpod:v1:S")];
        let out = command_env(&base, &seal, &["PASSED_API_KEY".into()]);
        assert_eq!(out.removed, ["FOO_TOKEN", "BAR_PASSWORD", "SSH_AUTH_SOCK"]);
        for gone in &out.removed {
            assert_eq!(get(&out, gone), None, "{gone}");
        }
        assert_eq!(get(&out, "KEPT_TOKEN"), Some("starpod:v1:already"));
        assert_eq!(get(&out, "EMPTY_SECRET"), Some(""));
        assert_eq!(get(&out, "PASSED_API_KEY"), Some("real-passed"));
        assert_eq!(get(&out, "TOKENIZERS_PARALLELISM"), Some("false"));
        assert_eq!(get(&out, "SEALED_TOKEN"), Some("starpod:v1:S"));
        // A token sealed without a known value (the library's `token()`) still replaces its name.
        let bare = SealedVar {
            name: "FOO_TOKEN".into(),
            token: "starpod:v1:F".into(),
            value: None,
        };
        let out = command_env(&base, &[bare], &[]);
        assert_eq!(get(&out, "FOO_TOKEN"), Some("starpod:v1:F"));
        assert!(!out.removed.contains(&"FOO_TOKEN".to_owned()));
    }

    #[test]
    fn the_notice_names_without_values() {
        assert_eq!(removal_notice(&[]), None);
        let one = removal_notice(&["FOO_TOKEN".into()]).unwrap();
        assert!(one.starts_with("netcage: not passing FOO_TOKEN to the command (its name"));
        let two = removal_notice(&["FOO_TOKEN".into(), "SSH_AUTH_SOCK".into()]).unwrap();
        assert!(
            two.contains("not passing FOO_TOKEN, SSH_AUTH_SOCK to the command (their names"),
            "{two}"
        );
        assert!(
            two.contains("--pass-env NAME") && !two.contains('\n'),
            "{two}"
        );
    }
}
