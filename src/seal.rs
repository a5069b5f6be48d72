//! `--seal NAME[=HOST,HOST..]`: which variables to turn into tokens, and the hosts each token is
//! bound to. Known names carry the default hosts of the Starpod vault (with `github.com` added for
//! GITHUB_TOKEN/GH_TOKEN so git over HTTPS works).

/// Default hosts for well-known credential variables.
pub const KNOWN: &[(&str, &[&str])] = &[
    ("GITHUB_TOKEN", &["api.github.com", "github.com"]),
    ("GH_TOKEN", &["api.github.com", "github.com"]),
    ("OPENAI_API_KEY", &["api.openai.com"]),
    ("ANTHROPIC_API_KEY", &["api.anthropic.com"]),
    ("GEMINI_API_KEY", &["generativelanguage.googleapis.com"]),
    ("GOOGLE_API_KEY", &["generativelanguage.googleapis.com"]),
    ("GROQ_API_KEY", &["api.groq.com"]),
    ("MISTRAL_API_KEY", &["api.mistral.ai"]),
    ("DEEPSEEK_API_KEY", &["api.deepseek.com"]),
    ("OPENROUTER_API_KEY", &["openrouter.ai"]),
    ("GITLAB_TOKEN", &["gitlab.com"]),
    ("NPM_TOKEN", &["registry.npmjs.org"]),
    ("CARGO_REGISTRY_TOKEN", &["crates.io"]),
    ("HF_TOKEN", &["huggingface.co", "*.huggingface.co"]),
    ("SLACK_BOT_TOKEN", &["slack.com", "*.slack.com"]),
    ("STRIPE_API_KEY", &["api.stripe.com"]),
    ("TELEGRAM_BOT_TOKEN", &["api.telegram.org"]),
    ("BRAVE_API_KEY", &["api.search.brave.com"]),
];

/// What a shell takes as a variable name: letters, digits and `_`, not starting with a digit.
pub fn is_env_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// One parsed `--seal` argument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealSpec {
    pub name: String,
    /// Empty = any host (`NAME=*`).
    pub hosts: Vec<String>,
}

/// Parses `NAME`, `NAME=HOST,HOST`, or `NAME=*`.
pub fn parse_spec(arg: &str) -> Result<SealSpec, String> {
    let (name, hosts) = match arg.split_once('=') {
        Some((name, hosts)) => (name, Some(hosts)),
        None => (arg, None),
    };
    if !is_env_name(name) {
        return Err(format!(
            "--seal {arg:?}: {name:?} is not an environment variable name"
        ));
    }
    let hosts = match hosts {
        Some("*") => Vec::new(),
        Some(list) => {
            let hosts: Vec<String> = list.split(',').map(str::trim).map(String::from).collect();
            for host in &hosts {
                crate::hosts::validate_pattern(host).map_err(|e| format!("--seal {arg:?}: {e}"))?;
            }
            hosts
        }
        None => match KNOWN.iter().find(|(known, _)| *known == name) {
            Some((_, hosts)) => hosts.iter().map(|h| h.to_string()).collect(),
            None => {
                return Err(format!(
                    "--seal {name}: no default hosts for this name; say where it may go: --seal {name}=api.example.com (or {name}=* for any host)"
                ));
            }
        },
    };
    Ok(SealSpec {
        name: name.to_owned(),
        hosts,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs() {
        let gh = parse_spec("GITHUB_TOKEN").unwrap();
        assert_eq!(gh.hosts, ["api.github.com", "github.com"]);
        let custom = parse_spec("MY_KEY=a.example,*.b.example").unwrap();
        assert_eq!(custom.hosts, ["a.example", "*.b.example"]);
        assert!(parse_spec("MY_KEY=*").unwrap().hosts.is_empty());
        assert!(
            parse_spec("MY_KEY")
                .unwrap_err()
                .contains("MY_KEY=api.example.com")
        );
        assert!(parse_spec("1BAD=x.example").is_err());
        assert!(parse_spec("K=bad host").is_err());
        assert!(parse_spec("=x").is_err());
    }
}
