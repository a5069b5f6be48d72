//! The request target (path and query).

use super::find::{Encoding, rewrite};
use super::{Blocked, Decision};

/// Rewrite the tokens (raw and percent forms) in a request target. A substituted value is always
/// percent-encoded here (every byte except `ALPHA / DIGIT / - . _ ~`), whatever form the token
/// had, so the result is still a valid target. `Ok(None)`: unchanged.
pub fn scan_target(
    target: &[u8],
    decide: &mut dyn FnMut(&str) -> Decision,
) -> Result<Option<Vec<u8>>, Blocked> {
    rewrite(target, Encoding::AlwaysPercent, decide)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scan::Zeroizing;

    fn sub(t: &str) -> Decision {
        match t {
            "starpod:v1:QUJD" => Decision::Substitute(Zeroizing::new(b"p@ss/w:rd+1 ~".to_vec())),
            "starpod:v1:ab/c+d==" => Decision::Substitute(Zeroizing::new(b"xyz".to_vec())),
            "starpod:v1:bad" => Decision::Block,
            "starpod:v1:QUJD/getMe" => Decision::SubstituteHead {
                value: Zeroizing::new(b"1:a".to_vec()),
                len: "starpod:v1:QUJD".len(),
            },
            _ => Decision::Keep,
        }
    }

    #[test]
    fn raw_token_in_path_is_percent_encoded() {
        let r = scan_target(b"/api/starpod:v1:QUJD?x=1", &mut sub).unwrap();
        assert_eq!(r.unwrap(), b"/api/p%40ss%2Fw%3Ard%2B1%20~?x=1");
    }

    #[test]
    fn percent_token_in_query() {
        let r = scan_target(b"/q?a=1&key=starpod%3Av1%3AQUJD&b=2", &mut sub).unwrap();
        assert_eq!(r.unwrap(), b"/q?a=1&key=p%40ss%2Fw%3Ard%2B1%20~&b=2");
        // Python quote(): literal `/`, escaped `+`, lower-case hex, literal `=`.
        let r = scan_target(b"/q?k=starpod%3av1%3aab/c%2bd==&z", &mut sub).unwrap();
        assert_eq!(r.unwrap(), b"/q?k=xyz&z");
        // A literal `+` (a space) ends a percent-form token.
        let r = scan_target(b"/q?k=starpod%3Av1%3AQUJD+more", &mut sub).unwrap();
        assert_eq!(r.unwrap(), b"/q?k=p%40ss%2Fw%3Ard%2B1%20~+more");
    }

    #[test]
    fn unpadded_token_followed_by_a_path_keeps_the_path() {
        let r = scan_target(b"/botstarpod:v1:QUJD/getMe?x=1", &mut sub).unwrap();
        assert_eq!(r.unwrap(), b"/bot1%3Aa/getMe?x=1");
    }

    #[test]
    fn unchanged_and_blocked() {
        assert_eq!(scan_target(b"/a/b?c=starpod", &mut sub), Ok(None));
        assert_eq!(scan_target(b"/a/starpod:v1:zzz", &mut sub), Ok(None));
        assert_eq!(
            scan_target(b"/a?x=starpod:v1:QUJD&y=starpod%3Av1%3Abad", &mut sub),
            Err(Blocked)
        );
    }
}
