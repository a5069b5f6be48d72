//! `netcage token seal | inspect | check`.

use std::io::Read;

use anyhow::Context;
use netcage::{hosts, token};
use serde_json::json;
use zeroize::Zeroizing;

use super::config::{key_path, load_key};
use super::{TokenCmd, input_error};

pub fn token(cmd: TokenCmd) -> anyhow::Result<u8> {
    match cmd {
        TokenCmd::Seal {
            hosts: host_args,
            from_env,
            stdin: _,
            key,
        } => {
            if host_args.is_empty() {
                return Err(input_error(
                    "no --host given: a token needs the hosts it may be sent to (--host api.example.com, or --host '*' for any host)",
                ));
            }
            let hosts: Vec<String> = if host_args.iter().any(|h| h == "*") {
                Vec::new()
            } else {
                for h in &host_args {
                    hosts::validate_pattern(h).map_err(input_error)?;
                }
                host_args
            };
            let value = match from_env {
                Some(name) => Zeroizing::new(std::env::var(&name).map_err(|_| {
                    input_error(format!(
                        "--from-env {name}: the variable is not set (or not UTF-8)"
                    ))
                })?),
                None => {
                    let mut v = Zeroizing::new(String::new());
                    std::io::stdin()
                        .read_to_string(&mut v)
                        .context("cannot read the value from stdin (it must be UTF-8)")?;
                    if v.ends_with('\n') {
                        v.pop();
                        if v.ends_with('\r') {
                            v.pop();
                        }
                    }
                    v
                }
            };
            let path = key_path(&key);
            let key = if key.key_file.is_none() && !path.exists() {
                let key = token::Key::create(&path)?;
                netcage::keytrust::Store::default_location()
                    .trust(&path, &key)
                    .map_err(super::input_error)?;
                eprintln!(
                    "netcage: created a new key at {} (keep it secret; tokens need it)",
                    path.display()
                );
                key
            } else {
                load_key(&key)?
            };
            println!("{}", token::seal(&key, &value, &hosts));
            Ok(0)
        }
        TokenCmd::Inspect {
            reveal,
            token: text,
            key,
        } => {
            let key = load_key(&key)?;
            let secret = open(&key, &text)?;
            let mut out = json!({
                "valid": true,
                "hosts": secret.hosts,
                "fingerprint": token::fingerprint(&text),
            });
            if reveal {
                out["value"] = json!(secret.value.as_str());
            }
            println!("{out}");
            Ok(0)
        }
        TokenCmd::Check {
            host,
            token: text,
            key,
        } => {
            let key = load_key(&key)?;
            let secret = open(&key, &text)?;
            Ok(if hosts::allowed(&secret.hosts, &host) {
                0
            } else {
                1
            })
        }
    }
}

fn open(key: &token::Key, text: &str) -> anyhow::Result<token::Secret> {
    let text = text.trim();
    token::open(key, text)
        .map_err(|e| input_error(format!("invalid token {}: {e}", token::fingerprint(text))))
}
