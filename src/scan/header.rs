//! Request header values, including `Basic` credentials.

use base64::Engine as _;
use base64::engine::DecodePaddingMode;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use zeroize::Zeroizing;

use super::find::{Encoding, rewrite};
use super::{Blocked, Decision};

/// Standard alphabet; accepts credentials with or without padding.
const LENIENT: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Rewrite the tokens in a header value. `Ok(None)`: unchanged.
///
/// A value of the form `Basic <base64(user:password)>` (scheme in any case) is decoded, the
/// decoded credentials are scanned (raw and percent forms; substituted values are written like
/// the token was), and the result is re-encoded with standard, padded base64; the scheme and the
/// surrounding whitespace are kept. Any other value (or one whose credentials are not valid
/// base64) is scanned as it is.
pub fn scan_header_value(
    value: &[u8],
    decide: &mut dyn FnMut(&str) -> Decision,
) -> Result<Option<Vec<u8>>, Blocked> {
    if let Some((start, end, decoded)) = decode_basic(value) {
        // base64 text cannot contain a token (`:` and `%` are not in its alphabet), so the
        // decoded credentials are the only place to look.
        let Some(new) = rewrite(&decoded, Encoding::LikeToken, decide)? else {
            return Ok(None);
        };
        let new = Zeroizing::new(new);
        let encoded = Zeroizing::new(STANDARD.encode(&*new));
        let mut out = Vec::with_capacity(value.len() + encoded.len());
        out.extend_from_slice(value.get(..start).unwrap_or_default());
        out.extend_from_slice(encoded.as_bytes());
        out.extend_from_slice(value.get(end..).unwrap_or_default());
        return Ok(Some(out));
    }
    rewrite(value, Encoding::LikeToken, decide)
}

/// For a value of the form `Basic <base64(user:password)>`: where the credentials are, and
/// what they decode to.
pub(crate) fn decode_basic(value: &[u8]) -> Option<(usize, usize, Zeroizing<Vec<u8>>)> {
    let (start, end) = basic_credentials(value)?;
    let decoded = LENIENT.decode(value.get(start..end)?).ok()?;
    Some((start, end, Zeroizing::new(decoded)))
}

fn is_ws(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

/// Where the credentials of `Basic <credentials>` are, if `value` has that shape.
fn basic_credentials(value: &[u8]) -> Option<(usize, usize)> {
    let scheme = value.iter().position(|&b| !is_ws(b))?;
    let after = scheme.checked_add(5)?;
    if !value.get(scheme..after)?.eq_ignore_ascii_case(b"basic") {
        return None;
    }
    let start = after + value.get(after..)?.iter().position(|&b| !is_ws(b))?;
    if start == after {
        return None; // `Basicxyz`: no separator
    }
    let len = value.get(start..)?.iter().position(|&b| is_ws(b));
    let end = len.map_or(value.len(), |l| start + l);
    // Only whitespace may follow the credentials.
    if !value.get(end..)?.iter().all(|&b| is_ws(b)) {
        return None;
    }
    Some((start, end))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sub(t: &str) -> Decision {
        match t {
            "starpod:v1:Z2hw" => Decision::Substitute(Zeroizing::new(b"ghp_realtoken123".to_vec())),
            "starpod:v1:c2Vj" => Decision::Substitute(Zeroizing::new(b"s:e c".to_vec())),
            "starpod:v1:YmFk" => Decision::Block,
            "starpod:v1:c3Ry" => Decision::Strip,
            _ => Decision::Keep,
        }
    }

    fn basic(creds: &str) -> Vec<u8> {
        format!("Basic {}", STANDARD.encode(creds)).into_bytes()
    }

    #[test]
    fn git_basic_auth() {
        let v = basic("x-access-token:starpod:v1:Z2hw");
        let mut seen = Vec::new();
        let r = scan_header_value(&v, &mut |t| {
            seen.push(t.to_string());
            sub(t)
        })
        .unwrap()
        .unwrap();
        assert_eq!(r, basic("x-access-token:ghp_realtoken123"));
        assert_eq!(seen, ["starpod:v1:Z2hw"]);
    }

    #[test]
    fn basic_scheme_case_padding_and_whitespace() {
        let enc = STANDARD.encode("u:starpod:v1:Z2hw");
        let v = format!("  bAsIc  {}  ", enc.trim_end_matches('='));
        let r = scan_header_value(v.as_bytes(), &mut sub).unwrap().unwrap();
        let want = format!("  bAsIc  {}  ", STANDARD.encode("u:ghp_realtoken123"));
        assert_eq!(r, want.as_bytes());
    }

    #[test]
    fn basic_with_percent_form_and_user_token() {
        // Percent form in the password: the value is percent-encoded like the token was.
        let v = basic("starpod:v1:Z2hw:starpod%3Av1%3Ac2Vj");
        let r = scan_header_value(&v, &mut sub).unwrap().unwrap();
        assert_eq!(r, basic("ghp_realtoken123:s%3Ae%20c"));
    }

    #[test]
    fn basic_without_tokens_unchanged() {
        assert_eq!(
            scan_header_value(&basic("user:password"), &mut sub),
            Ok(None)
        );
        assert_eq!(
            scan_header_value(&basic("starpod:v1:"), &mut |_| Decision::Keep),
            Ok(None)
        );
    }

    #[test]
    fn basic_blocked() {
        let v = basic("x:starpod:v1:YmFk");
        assert_eq!(scan_header_value(&v, &mut sub), Err(Blocked));
    }

    #[test]
    fn not_base64_falls_back_to_plain_scan() {
        let r = scan_header_value(b"Basic starpod:v1:Z2hw", &mut sub).unwrap();
        assert_eq!(r.unwrap(), b"Basic ghp_realtoken123");
    }

    #[test]
    fn bearer_and_cookie() {
        let r = scan_header_value(b"Bearer starpod:v1:Z2hw", &mut sub).unwrap();
        assert_eq!(r.unwrap(), b"Bearer ghp_realtoken123");
        let r =
            scan_header_value(b"a=1; t=starpod%3av1%3ac2Vj; s=starpod:v1:c3Ry", &mut sub).unwrap();
        assert_eq!(r.unwrap(), b"a=1; t=s%3Ae%20c; s=");
        assert_eq!(
            scan_header_value(b"token starpod:v1:YmFk", &mut sub),
            Err(Blocked)
        );
        assert_eq!(scan_header_value(b"no tokens here", &mut sub), Ok(None));
    }

    #[test]
    fn basic_shape() {
        assert_eq!(basic_credentials(b"Basic abc"), Some((6, 9)));
        assert_eq!(basic_credentials(b"\tbasic\tabc\t"), Some((7, 10)));
        assert_eq!(basic_credentials(b"Basic"), None);
        assert_eq!(basic_credentials(b"Basic "), None);
        assert_eq!(basic_credentials(b"Basicabc"), None);
        assert_eq!(basic_credentials(b"Basic a b"), None);
        assert_eq!(basic_credentials(b"Bearer abc"), None);
        assert_eq!(basic_credentials(b""), None);
    }
}
