//! `~/.git-credentials` (git's `credential-store`): one URL per line,
//! `https://user:password@host[:port][/path]`, user and password percent-encoded. The password
//! belongs to the URL's host; the token is written percent-encoded (git decodes it and sends
//! it in Basic credentials, where the proxy finds it).

use zeroize::Zeroizing;

use super::{Encoding, Found, lines, url_host};

pub(super) fn find(text: &str) -> Result<Vec<Found>, String> {
    let mut out = Vec::new();
    for (n, (start, line)) in lines(text).enumerate() {
        let n = n + 1;
        let trimmed = line.trim();
        if trimmed.is_empty() {
            continue;
        }
        let Some(scheme_end) = line.find("://") else {
            return Err(format!("line {n} is not a URL"));
        };
        let rest_at = scheme_end + 3;
        let rest = &line[rest_at..];
        let authority_len = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let authority = &rest[..authority_len];
        let Some(at) = authority.rfind('@') else {
            continue; // no credentials on this line
        };
        let userinfo = &authority[..at];
        let Some(colon) = userinfo.find(':') else {
            continue; // a user name only
        };
        let encoded = &userinfo[colon + 1..];
        if encoded.is_empty() {
            continue;
        }
        let host = url_host(&line[..rest_at + authority_len])
            .ok_or_else(|| format!("line {n}: a URL without a host"))?;
        let value = percent_encoding::percent_decode_str(encoded)
            .decode_utf8()
            .map_err(|_| format!("line {n}: a password that is not UTF-8 once decoded"))?;
        let value = Zeroizing::new(value.into_owned());
        let begin = start + rest_at + colon + 1;
        out.push(Found {
            start: begin,
            end: begin + encoded.len(),
            value,
            hosts: vec![host],
            encoding: Encoding::Percent,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::super::Format;
    use super::super::testing::{hosts, run};

    #[test]
    fn passwords_become_percent_encoded_tokens() {
        let text = "https://x-access-token:ghp_abc%2Fdef@GitHub.com\n\nhttps://me@nopass.test\nhttp://u:p%40ss@git.test:8080/org/repo.git\r\n";
        let (out, seen) = run(Format::GitCredentials, text).unwrap();
        assert_eq!(
            out,
            "https://x-access-token:starpod%3Av1%3AT1%2B%2F%3D@GitHub.com\n\nhttps://me@nopass.test\nhttp://u:starpod%3Av1%3AT2%2B%2F%3D@git.test:8080/org/repo.git\r\n"
        );
        assert_eq!(
            seen,
            vec![
                ("ghp_abc/def".into(), hosts(&["github.com"])),
                ("p@ss".into(), hosts(&["git.test"])),
            ]
        );
    }

    #[test]
    fn a_line_that_is_not_a_url_is_refused() {
        let e = run(Format::GitCredentials, "https://a:b@h.test\nsecret = x\n").unwrap_err();
        assert_eq!(e, "line 2 is not a URL");
        assert!(run(Format::GitCredentials, "https://a:b@/x\n").is_err());
    }
}
