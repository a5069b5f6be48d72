//! The INI dialect of `~/.aws/credentials` and `~/.aws/config`: `[section]` lines, `key = value`
//! lines, `#`/`;` comments, and indented lines that belong to a nested setting (`s3 =` then
//! `  max_concurrent_requests = 10`), which are skipped.

use std::ops::Range;

use zeroize::Zeroizing;

/// One line of the file, as the SDKs read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line {
    /// Empty, or a `#`/`;` comment.
    Blank,
    /// `[name]` (the name trimmed).
    Header(String),
    /// `key = value`: the key trimmed and lowercased, the value's byte range in the text
    /// (trimmed), and whether the line is indented (part of a nested setting).
    Setting {
        key: String,
        value: Range<usize>,
        nested: bool,
    },
    /// Anything else.
    Other,
}

/// Every line with the byte offset it starts at (`\n` and `\r\n` endings).
pub fn lines(text: &str) -> impl Iterator<Item = (usize, Line)> + '_ {
    let mut at = 0;
    text.split_inclusive('\n').map(move |raw| {
        let start = at;
        at += raw.len();
        let raw = raw.strip_suffix('\n').unwrap_or(raw);
        let raw = raw.strip_suffix('\r').unwrap_or(raw);
        let line = raw.trim();
        let kind = if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            Line::Blank
        } else if let Some(header) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            Line::Header(header.trim().to_owned())
        } else if let Some((key, value)) = raw.split_once('=') {
            let value_start = start + raw.len() - value.len();
            let lead = value.len() - value.trim_start().len();
            let begin = value_start + lead;
            Line::Setting {
                key: key.trim().to_ascii_lowercase(),
                value: begin..begin + value.trim().len(),
                nested: raw.starts_with([' ', '\t']),
            }
        } else {
            Line::Other
        };
        (start, kind)
    })
}

/// The `key = value` pairs of section `name` (keys lowercased, nested settings skipped), or
/// `None` when the file has no such section. Values are zeroed on drop: they may be secret
/// keys.
pub fn section(text: &str, name: &str) -> Option<Vec<(String, Zeroizing<String>)>> {
    let mut found = false;
    let mut current = false;
    let mut pairs = Vec::new();
    for (_, line) in lines(text) {
        match line {
            Line::Header(header) => {
                current = header == name;
                found |= current;
            }
            Line::Setting { key, value, nested } if current && !nested => {
                pairs.push((key, Zeroizing::new(text[value].to_owned())));
            }
            _ => {}
        }
    }
    found.then_some(pairs)
}

/// The section names of `text`, in order, each once.
pub fn sections(text: &str) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for (_, line) in lines(text) {
        if let Line::Header(name) = line
            && !names.contains(&name)
        {
            names.push(name);
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn section_names() {
        assert_eq!(sections("[a]\nx=1\n [b] \n[a]\n"), ["a", "b"]);
        assert!(sections("x = 1").is_empty());
    }

    #[test]
    fn sections_keys_comments_and_nested_settings() {
        let text = "# top\n[default]\naws_access_key_id = AKIA1\n\n[profile work]\nAWS_Access_Key_Id=AKIA2\n; note\naws_secret_access_key = s/2+x=\ns3 =\n  max_concurrent_requests = 20\nregion = eu-west-1\n";
        let d = section(text, "default").unwrap();
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].1.as_str(), "AKIA1");
        let w = section(text, "profile work").unwrap();
        let keys: Vec<&str> = w.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            ["aws_access_key_id", "aws_secret_access_key", "s3", "region"]
        );
        assert_eq!(w[1].1.as_str(), "s/2+x=");
        assert!(section(text, "work").is_none());
        assert!(section("", "default").is_none());
    }
}
