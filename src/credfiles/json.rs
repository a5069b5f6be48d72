//! Where each string value of a JSON document is, by its path of object keys: enough to
//! replace values in place and keep every other byte. The document is checked with
//! `serde_json` first; this walker only has to find spans in valid JSON.

use zeroize::Zeroizing;

/// A string value: the keys leading to it (array elements add none), the span of its
/// contents (between the quotes) and its decoded text.
pub(super) struct StringValue {
    pub path: Vec<String>,
    pub start: usize,
    pub end: usize,
    pub value: Zeroizing<String>,
}

const MAX_DEPTH: usize = 64;

/// Every string value of `text`, or why it is not JSON netcage can read.
pub(super) fn string_values(text: &str) -> Result<Vec<StringValue>, String> {
    if let Err(e) = serde_json::from_str::<serde::de::IgnoredAny>(text) {
        return Err(format!(
            "not valid JSON (line {}, column {})",
            e.line(),
            e.column()
        ));
    }
    let mut w = Walker {
        b: text.as_bytes(),
        text,
        at: 0,
        path: Vec::new(),
        out: Vec::new(),
    };
    w.value(0)?;
    Ok(w.out)
}

struct Walker<'a> {
    b: &'a [u8],
    text: &'a str,
    at: usize,
    path: Vec<String>,
    out: Vec<StringValue>,
}

impl Walker<'_> {
    fn ws(&mut self) {
        while self.at < self.b.len() && matches!(self.b[self.at], b' ' | b'\t' | b'\n' | b'\r') {
            self.at += 1;
        }
    }

    fn eat(&mut self, c: u8) -> Result<(), String> {
        self.ws();
        if self.b.get(self.at) == Some(&c) {
            self.at += 1;
            Ok(())
        } else {
            Err("unexpected JSON".into())
        }
    }

    /// A string at `at` (the opening quote): the span of its contents and its text.
    fn string(&mut self) -> Result<(usize, usize, Zeroizing<String>), String> {
        self.eat(b'"')?;
        let start = self.at;
        while self.at < self.b.len() && self.b[self.at] != b'"' {
            self.at += if self.b[self.at] == b'\\' { 2 } else { 1 };
        }
        let end = self.at.min(self.b.len());
        self.eat(b'"')?;
        let literal = self.text.get(start - 1..end + 1).ok_or("unexpected JSON")?;
        let value: String =
            serde_json::from_str(literal).map_err(|_| "a JSON string netcage cannot read")?;
        Ok((start, end, Zeroizing::new(value)))
    }

    fn value(&mut self, depth: usize) -> Result<(), String> {
        if depth > MAX_DEPTH {
            return Err("JSON nested too deeply".into());
        }
        self.ws();
        match self.b.get(self.at) {
            Some(b'"') => {
                let (start, end, value) = self.string()?;
                self.out.push(StringValue {
                    path: self.path.clone(),
                    start,
                    end,
                    value,
                });
            }
            Some(b'{') => {
                self.at += 1;
                self.ws();
                if self.b.get(self.at) == Some(&b'}') {
                    self.at += 1;
                    return Ok(());
                }
                loop {
                    let (_, _, key) = self.string()?;
                    self.eat(b':')?;
                    self.path.push(key.to_string());
                    self.value(depth + 1)?;
                    self.path.pop();
                    self.ws();
                    match self.b.get(self.at) {
                        Some(b',') => self.at += 1,
                        Some(b'}') => {
                            self.at += 1;
                            break;
                        }
                        _ => return Err("unexpected JSON".into()),
                    }
                    self.ws();
                }
            }
            Some(b'[') => {
                self.at += 1;
                self.ws();
                if self.b.get(self.at) == Some(&b']') {
                    self.at += 1;
                    return Ok(());
                }
                loop {
                    self.value(depth + 1)?;
                    self.ws();
                    match self.b.get(self.at) {
                        Some(b',') => self.at += 1,
                        Some(b']') => {
                            self.at += 1;
                            break;
                        }
                        _ => return Err("unexpected JSON".into()),
                    }
                }
            }
            Some(_) => {
                // A number, true, false or null.
                while self.at < self.b.len()
                    && !matches!(
                        self.b[self.at],
                        b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r'
                    )
                {
                    self.at += 1;
                }
            }
            None => return Err("unexpected end of JSON".into()),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_and_paths() {
        let text = r#" {"a": {"b\u0022": "x\"y", "n": [1, {"c": "z"}], "t": true}, "e": {}} "#;
        let got = string_values(text).unwrap();
        let shown: Vec<(Vec<String>, &str, &str)> = got
            .iter()
            .map(|s| (s.path.clone(), &text[s.start..s.end], s.value.as_str()))
            .collect();
        assert_eq!(
            shown,
            vec![
                (vec!["a".into(), "b\"".into()], r#"x\"y"#, "x\"y"),
                (vec!["a".into(), "n".into(), "c".into()], "z", "z"),
            ]
        );
        assert!(
            string_values("{\"a\": }")
                .err()
                .unwrap()
                .starts_with("not valid JSON")
        );
        let deep = "[".repeat(100) + &"]".repeat(100);
        assert!(string_values(&deep).is_err());
    }
}
