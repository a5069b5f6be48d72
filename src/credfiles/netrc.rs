//! `~/.netrc`: whitespace-separated tokens, `machine HOST login USER password PASS [account
//! A]`, `default …`, `macdef NAME` (a macro, up to the next empty line), `#` comments; a
//! token may be double-quoted with backslash escapes (curl). A password belongs to its
//! `machine`; one under `default` belongs to every host, so such a file is refused.

use zeroize::Zeroizing;

use super::{Encoding, Found, line_of};

/// One whitespace-separated token: its span and its value (quotes and escapes removed).
struct Tok {
    start: usize,
    end: usize,
    value: Zeroizing<String>,
}

struct Lexer<'a> {
    text: &'a str,
    at: usize,
}

impl Lexer<'_> {
    fn next(&mut self) -> Result<Option<Tok>, String> {
        let bytes = self.text.as_bytes();
        loop {
            while self.at < bytes.len() && bytes[self.at].is_ascii_whitespace() {
                self.at += 1;
            }
            if self.at < bytes.len() && bytes[self.at] == b'#' {
                while self.at < bytes.len() && bytes[self.at] != b'\n' {
                    self.at += 1;
                }
                continue;
            }
            break;
        }
        if self.at >= bytes.len() {
            return Ok(None);
        }
        let start = self.at;
        let mut value = Zeroizing::new(String::new());
        if bytes[start] == b'"' {
            let mut chars = self.text[start + 1..].char_indices();
            loop {
                match chars.next() {
                    Some((i, '"')) => {
                        self.at = start + 1 + i + 1;
                        break;
                    }
                    Some((_, '\\')) => match chars.next() {
                        Some((_, c)) => value.push(c),
                        None => break,
                    },
                    Some((_, c)) => value.push(c),
                    None => {
                        return Err(format!(
                            "line {}: a quoted token that never ends",
                            line_of(self.text, start)
                        ));
                    }
                }
            }
        } else {
            while self.at < bytes.len() && !bytes[self.at].is_ascii_whitespace() {
                self.at += 1;
            }
            value.push_str(&self.text[start..self.at]);
        }
        Ok(Some(Tok {
            start,
            end: self.at,
            value,
        }))
    }

    /// Skips a macro definition: everything up to an empty line.
    fn skip_macro(&mut self) {
        match self.text[self.at..].find("\n\n") {
            Some(i) => self.at += i + 2,
            None => self.at = self.text.len(),
        }
    }
}

pub(super) fn find(text: &str) -> Result<Vec<Found>, String> {
    let mut lex = Lexer { text, at: 0 };
    let mut out = Vec::new();
    // None before the first entry; Some(None) under `default`.
    let mut machine: Option<Option<String>> = None;
    while let Some(tok) = lex.next()? {
        let line = line_of(text, tok.start);
        let mut value = || {
            lex.next()?
                .ok_or_else(|| format!("line {line}: {} without a value", tok.value.as_str()))
        };
        match tok.value.as_str() {
            "machine" => {
                let host = value()?;
                machine = Some(Some(host.value.trim_end_matches('.').to_ascii_lowercase()));
            }
            "default" => machine = Some(None),
            "login" | "account" => {
                value()?;
            }
            "password" => {
                let secret = value()?;
                let host = match &machine {
                    Some(Some(host)) => host.clone(),
                    Some(None) => {
                        return Err(format!(
                            "line {line}: a password under `default` belongs to every host; put it under a machine line"
                        ));
                    }
                    None => return Err(format!("line {line}: a password before any machine")),
                };
                out.push(Found {
                    start: secret.start,
                    end: secret.end,
                    value: secret.value,
                    hosts: vec![host],
                    encoding: Encoding::Raw,
                });
            }
            "macdef" => {
                value()?;
                lex.skip_macro();
            }
            _ => return Err(format!("line {line}: a word netrc does not know")),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::super::Format;
    use super::super::testing::{hosts, run};

    #[test]
    fn passwords_are_replaced_in_place() {
        let text = "# mine\nmachine api.github.com\n  login x\n  password ghp_one # note\nmachine Git.Test login y password \"a b\\\"c\" account z\nmacdef init\npassword not-a-secret\n\n";
        let (out, seen) = run(Format::Netrc, text).unwrap();
        assert_eq!(
            out,
            "# mine\nmachine api.github.com\n  login x\n  password starpod:v1:T1+/= # note\nmachine Git.Test login y password starpod:v1:T2+/= account z\nmacdef init\npassword not-a-secret\n\n"
        );
        assert_eq!(
            seen,
            vec![
                ("ghp_one".into(), hosts(&["api.github.com"])),
                ("a b\"c".into(), hosts(&["git.test"])),
            ]
        );
    }

    #[test]
    fn what_cannot_be_bound_is_refused() {
        for (text, why) in [
            (
                "default login x password p\n",
                "line 1: a password under `default`",
            ),
            ("password p\n", "line 1: a password before any machine"),
            ("secret = x\n", "line 1: a word netrc does not know"),
            (
                "machine a.test password\n",
                "line 1: password without a value",
            ),
            ("machine a.test password \"open\n", "line 1: a quoted token"),
        ] {
            let e = run(Format::Netrc, text).unwrap_err();
            assert!(e.starts_with(why), "{text:?}: {e}");
        }
    }
}
