//! `~/.pypirc` (twine, read with Python's `RawConfigParser`): `[section]` headers, `key = value`
//! or `key: value`, `#`/`;` comment lines, indented continuation lines. A section's
//! `password` belongs to the host of its `repository` URL; `[pypi]` defaults to
//! `upload.pypi.org`, `[testpypi]` to `test.pypi.org`. Refused: a password continued on the
//! next line, a password in a section with no repository netcage can tell, any other key whose
//! name says it holds a credential.

use zeroize::Zeroizing;

use super::{Encoding, Found, credential_named, lines, url_host};

struct Entry<'a> {
    line: usize,
    section: &'a str,
    key: String,
    /// Span of the value in the file.
    start: usize,
    end: usize,
    continued: bool,
}

fn entries(text: &str) -> Result<Vec<Entry<'_>>, String> {
    let mut out: Vec<Entry> = Vec::new();
    let mut section: Option<&str> = None;
    for (n, (start, line)) in lines(text).enumerate() {
        let n = n + 1;
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with(['#', ';']) {
            continue;
        }
        if line.starts_with([' ', '\t']) {
            // A continuation of the value above.
            match out.last_mut() {
                Some(e) => e.continued = true,
                None => return Err(format!("line {n}: an indented line before any key")),
            }
            continue;
        }
        if let Some(name) = trimmed.strip_prefix('[') {
            let name = name
                .strip_suffix(']')
                .ok_or_else(|| format!("line {n}: a section header without ]"))?;
            section = Some(name.trim());
            continue;
        }
        let Some(section) = section else {
            return Err(format!("line {n}: a key before any [section]"));
        };
        let Some(split) = line.find(['=', ':']) else {
            return Err(format!("line {n}: neither key = value nor a section"));
        };
        let key = line[..split].trim().to_ascii_lowercase();
        let after = &line[split + 1..];
        let value = after.trim();
        let lead = after.len() - after.trim_start().len();
        let s = start + split + 1 + lead;
        out.push(Entry {
            line: n,
            section,
            key,
            start: s,
            end: s + value.len(),
            continued: false,
        });
    }
    Ok(out)
}

pub(super) fn find(text: &str) -> Result<Vec<Found>, String> {
    let entries = entries(text)?;
    let host_of = |section: &str| -> Option<String> {
        let repo = entries
            .iter()
            .rev()
            .find(|e| e.section == section && e.key == "repository");
        match repo {
            Some(e) => url_host(&text[e.start..e.end]),
            None => match section {
                "pypi" | "server-login" => Some("upload.pypi.org".into()),
                "testpypi" => Some("test.pypi.org".into()),
                _ => None,
            },
        }
    };
    let mut out = Vec::new();
    for e in &entries {
        let n = e.line;
        if e.key != "password" {
            if credential_named(&e.key) {
                return Err(format!(
                    "line {n}: a credential netcage cannot bind to a repository"
                ));
            }
            continue;
        }
        if e.continued {
            return Err(format!("line {n}: a password continued on the next line"));
        }
        if e.start == e.end {
            continue;
        }
        let host = host_of(e.section).ok_or_else(|| {
            format!("line {n}: a password in a section with no repository URL netcage can read")
        })?;
        out.push(Found {
            start: e.start,
            end: e.end,
            value: Zeroizing::new(text[e.start..e.end].to_owned()),
            hosts: vec![host],
            encoding: Encoding::Raw,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::super::Format;
    use super::super::testing::{hosts, run};

    #[test]
    fn passwords_are_sealed_for_their_repository() {
        let text = "[distutils]\nindex-servers =\n    pypi\n    corp\n\n[pypi]\nusername = __token__\npassword = pypi-AgEI ok\n\n[corp]\npassword: s3cret\nrepository: https://pkgs.corp.test/legacy/\n";
        let (out, seen) = run(Format::Pypirc, text).unwrap();
        assert_eq!(
            out,
            "[distutils]\nindex-servers =\n    pypi\n    corp\n\n[pypi]\nusername = __token__\npassword = starpod:v1:T1+/=\n\n[corp]\npassword: starpod:v1:T2+/=\nrepository: https://pkgs.corp.test/legacy/\n"
        );
        assert_eq!(
            seen,
            vec![
                ("pypi-AgEI ok".into(), hosts(&["upload.pypi.org"])),
                ("s3cret".into(), hosts(&["pkgs.corp.test"])),
            ]
        );
    }

    #[test]
    fn what_cannot_be_bound_is_refused() {
        for (text, why) in [
            ("secret = x\n", "line 1: a key before any [section]"),
            (
                "[x]\npassword = p\n",
                "line 2: a password in a section with no repository",
            ),
            (
                "[pypi]\npassword = p\n  more\n",
                "line 2: a password continued",
            ),
            ("[pypi]\napi_token = p\n", "line 2: a credential"),
        ] {
            let e = run(Format::Pypirc, text).unwrap_err();
            assert!(e.starts_with(why), "{text:?}: {e}");
        }
    }
}
