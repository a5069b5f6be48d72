//! The INI dialect of `~/.aws/credentials` and `~/.aws/config`: `[section]` lines, `key = value`
//! lines, `#`/`;` comments, and indented lines that belong to a nested setting (`s3 =` then
//! `  max_concurrent_requests = 10`), which are skipped.

use zeroize::Zeroizing;

/// The `key = value` pairs of section `name` (keys lowercased), or `None` when the file has no
/// such section. Values are zeroed on drop: they may be secret keys.
pub fn section(text: &str, name: &str) -> Option<Vec<(String, Zeroizing<String>)>> {
    let mut found = false;
    let mut current = false;
    let mut pairs = Vec::new();
    for raw in text.lines() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(header) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            current = header.trim() == name;
            found |= current;
            continue;
        }
        if !current || raw.starts_with([' ', '\t']) {
            continue;
        }
        if let Some((key, value)) = line.split_once('=') {
            pairs.push((
                key.trim().to_ascii_lowercase(),
                Zeroizing::new(value.trim().to_owned()),
            ));
        }
    }
    found.then_some(pairs)
}

/// The section names of `text`, in order, each once.
pub fn sections(text: &str) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for line in text.lines().map(str::trim) {
        if let Some(header) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            let name = header.trim().to_owned();
            if !names.contains(&name) {
                names.push(name);
            }
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
