//! `~/.cargo/credentials.toml` (and the old name `credentials`): `[registry] token` belongs to
//! crates.io, `[registries.NAME] token` to the host of that registry's index in
//! `~/.cargo/config.toml`. Read with the `toml` crate, whose spans locate each value; the
//! value is replaced by a basic string holding the token. Refused: a registry whose index
//! netcage cannot find, a `secret-key` (asymmetric tokens sign, they are not sent).

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;
use zeroize::Zeroizing;

use super::{Context, Encoding, Found, line_of, url_host};

#[derive(Deserialize)]
struct Credentials {
    registry: Option<Registry>,
    #[serde(default)]
    registries: BTreeMap<String, Registry>,
}

#[derive(Deserialize)]
struct Registry {
    token: Option<Spanned<String>>,
    #[serde(rename = "secret-key")]
    secret_key: Option<toml::Value>,
}

#[derive(Deserialize)]
struct Config {
    #[serde(default)]
    registries: BTreeMap<String, IndexOnly>,
}

#[derive(Deserialize)]
struct IndexOnly {
    index: Option<String>,
}

/// The alternative registries of a cargo config file: (name, index URL).
pub fn registry_indexes(config: &str) -> Vec<(String, String)> {
    let Ok(config) = toml::from_str::<Config>(config) else {
        return Vec::new();
    };
    config
        .registries
        .into_iter()
        .filter_map(|(name, r)| Some((name, r.index?)))
        .collect()
}

fn toml_error(text: &str, e: &toml::de::Error) -> String {
    match e.span() {
        Some(span) => format!("not valid TOML (line {})", line_of(text, span.start)),
        None => "not valid TOML".into(),
    }
}

pub(super) fn find(text: &str, ctx: &Context) -> Result<Vec<Found>, String> {
    let creds: Credentials = toml::from_str(text).map_err(|e| toml_error(text, &e))?;
    let mut out = Vec::new();
    let mut add = |name: &str, r: Registry, host: Option<String>| -> Result<(), String> {
        if r.secret_key.is_some() {
            return Err(format!(
                "{name}: a secret-key signs requests, it cannot be sealed"
            ));
        }
        let Some(token) = r.token else {
            return Ok(());
        };
        let span = token.span();
        let host = host.ok_or_else(|| {
            format!(
                "registries.{name}: its index is not in ~/.cargo/config.toml, so netcage cannot tell which host the token belongs to"
            )
        })?;
        // The span is the whole literal, quotes included.
        let literal = text.get(span.clone()).unwrap_or("");
        if !(literal.starts_with(['"', '\'']) && literal.len() >= 2) {
            return Err(format!("{name}: a token that is not a string"));
        }
        out.push(Found {
            start: span.start,
            end: span.end,
            value: Zeroizing::new(token.into_inner()),
            hosts: vec![host],
            encoding: Encoding::TomlString,
        });
        Ok(())
    };
    if let Some(r) = creds.registry {
        add("registry", r, Some("crates.io".into()))?;
    }
    for (name, r) in creds.registries {
        let host = ctx
            .cargo_indexes
            .iter()
            .find(|(n, _)| *n == name)
            .and_then(|(_, index)| url_host(index));
        add(&name, r, host)?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::super::testing::{hosts, run, run_with};
    use super::super::{Context, Format};
    use super::registry_indexes;

    #[test]
    fn tokens_are_sealed_for_their_registry() {
        let text = "# mine\n[registry]\ntoken = \"cio_abc\"  # crates.io\n\n[registries.corp]\ntoken = 'corp tok'\n";
        let ctx = Context {
            cargo_indexes: registry_indexes(
                "[registries.corp]\nindex = \"sparse+https://cargo.corp.test/index/\"\n[net]\nretry = 2\n",
            ),
        };
        let (out, seen) = run_with(Format::Cargo, text, &ctx).unwrap();
        assert_eq!(
            out,
            "# mine\n[registry]\ntoken = \"starpod:v1:T1+/=\"  # crates.io\n\n[registries.corp]\ntoken = \"starpod:v1:T2+/=\"\n"
        );
        assert_eq!(
            seen,
            vec![
                ("cio_abc".into(), hosts(&["crates.io"])),
                ("corp tok".into(), hosts(&["cargo.corp.test"])),
            ]
        );
    }

    #[test]
    fn what_cannot_be_bound_is_refused() {
        let e = run(Format::Cargo, "[registries.x]\ntoken = \"t\"\n").unwrap_err();
        assert!(e.starts_with("registries.x: its index is not in"), "{e}");
        let e = run(Format::Cargo, "secret = MARKER\n").unwrap_err();
        assert_eq!(e, "not valid TOML (line 1)");
        let e = run(Format::Cargo, "[registry]\nsecret-key = \"k\"\n").unwrap_err();
        assert!(e.contains("secret-key"), "{e}");
        let e = run(Format::Cargo, "[registry]\ntoken = 5\n").unwrap_err();
        assert!(!e.contains('5') || e.starts_with("not valid TOML"), "{e}");
    }
}
