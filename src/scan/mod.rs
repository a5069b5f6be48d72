//! Finding credential tokens in outgoing traffic, hiding real secret values in incoming traffic,
//! and finding real values that should never be in outgoing traffic.
//!
//! A sandboxed program never holds a real credential. It holds a *token* instead, and the proxy
//! swaps each token for the real value on the way out (after checking that the destination may
//! receive it). This module is the byte-level part of that job: it locates tokens, asks the caller
//! what to do with each one, and rewrites the bytes. It knows nothing about secrets, hosts or
//! policy; all of that is behind the `decide` callback.
//!
//! # What a token looks like
//!
//! * **Raw form**: `starpod:v1:` followed by standard-alphabet base64 characters `[A-Za-z0-9+/]*`
//!   and then at most two `=`. The token ends at the first byte that does not fit that grammar
//!   (so `starpod:v1:abc==x` is the token `starpod:v1:abc==` followed by `x`, and
//!   `starpod:v1:ab=c` is the token `starpod:v1:ab=` followed by `c`).
//! * **Percent form** (URLs, form bodies, cookies): `starpod%3Av1%3A` (the hex digits in any case,
//!   e.g. `starpod%3av1%3a`), followed by ASCII letters and digits, `%2B` (`+`), `%2F` (`/`) and
//!   literal `/`, then at most two pads, each either `%3D` or a literal `=` (Python's
//!   `urllib.parse.quote()` keeps `/`, `urlencode` turns `=` into `%3D`). Hex digits are
//!   case-insensitive. A literal `+` ends a percent-form token (it means a space there), and so
//!   does any other escape.
//!
//! The *canonical text* of a token is `starpod:v1:<base64>` with the percent encoding undone. It
//! is what the `decide` callback sees. A token whose canonical text is longer than
//! [`MAX_TOKEN_LEN`] is not a token: it is left untouched (and is not buffered beyond that limit).
//! After a token (or such an over-long run) the search for the next one resumes right after it.
//!
//! # What to do with a token: [`Decision`]
//!
//! Every scanning function takes `decide: &mut dyn FnMut(&str) -> Decision` and calls it once per
//! token, in order of appearance. `Substitute(value)` puts `value` where the token was, encoded
//! like the token was (percent form: every byte except `ALPHA / DIGIT / - . _ ~` is
//! percent-encoded; raw form: the bytes as they are). `Keep` leaves the token text, `Strip`
//! removes it, and `Block` makes the scanning function return `Err(`[`Blocked`]`)`: the whole
//! request must not be sent.
//!
//! # The scanners
//!
//! * [`scan_header_value`]: a request header value. Also looks inside `Basic <base64>`
//!   credentials (what git sends: `base64("x-access-token:starpod:v1:...")`), and re-encodes them.
//! * [`scan_target`]: the request target (path and query). Substituted values are always
//!   percent-encoded there, whatever form the token had.
//! * [`BodyScanner`]: a request body, streamed chunk by chunk. Tokens split across chunks at any
//!   byte are found; the output is the same for every chunking. Token-free chunks are passed on
//!   without copying.
//! * [`find_tokens`]: the tokens of a complete buffer, with their ranges, forms and canonical
//!   texts, for callers that want to do their own rewriting.
//! * [`Redactor`]: the response direction. It replaces real secret values (at least
//!   [`MIN_REFLECT_LEN`] bytes long) with their tokens, so that a server echoing a credential back
//!   does not hand it to the sandboxed program.
//! * [`LeakSet`] and [`LeakScanner`]: the leak guard, defense in depth on the request side. They
//!   look for real secret values (at least [`MIN_REFLECT_LEN`] bytes long, as written or
//!   percent-encoded) in what the client sent: header values (and `Basic` credentials), targets
//!   (also percent-decoded) and streamed bodies, holding back less than the longest value so that
//!   no byte of a value is released before it is found. The caller decides which values may go
//!   where; these only find them. They share the redactor's matcher (`aho-corasick`'s packed
//!   SIMD searcher).
//!
//! Nothing in this module panics on any input, and it contains no `unsafe`.

mod body;
mod find;
mod header;
mod leak;
mod reflect;
mod target;
mod values;

pub use body::BodyScanner;
pub use find::{Form, Found, find_tokens, percent_encode_into};
pub use header::scan_header_value;
pub use leak::{Leak, LeakScanner, LeakSet};
pub use reflect::{RedactSet, Redactor};
pub use target::scan_target;
/// Re-exported so callers can build [`Decision::Substitute`] without naming the `zeroize` crate.
pub use zeroize::Zeroizing;

/// The text every token starts with (in its raw form).
pub const PREFIX: &str = "starpod:v1:";

/// The longest canonical token text (`starpod:v1:` + base64) that is still a token.
/// Longer runs are left untouched, and a streaming scanner holds back at most about three
/// times this much (the percent form of a token can be three times as long as its canonical text).
pub const MAX_TOKEN_LEN: usize = 64 * 1024;

/// Secret values shorter than this are not redacted from responses by [`Redactor`], nor looked
/// for in requests by [`LeakSet`]: replacing (or refusing) every occurrence of a short string
/// would corrupt responses (or refuse harmless requests) and reveal little.
pub const MIN_REFLECT_LEN: usize = 6;

/// What to do with one token; returned by the `decide` callback.
pub enum Decision {
    /// Put these bytes where the token was, encoded like the token was (percent form:
    /// percent-encode every byte except `ALPHA / DIGIT / - . _ ~`; raw form: as they are).
    Substitute(Zeroizing<Vec<u8>>),
    /// Only the first `len` bytes of the candidate's canonical text are the token (a token with
    /// no `=` padding runs on into following base64 characters, as in `/bot<token>/getMe`):
    /// substitute those like [`Decision::Substitute`] and keep the rest as written. Applies to
    /// raw-form tokens; a percent-form candidate is kept as it is.
    SubstituteHead {
        value: Zeroizing<Vec<u8>>,
        len: usize,
    },
    /// Leave the token text as it is (e.g. the token is not valid).
    Keep,
    /// Remove the token text.
    Strip,
    /// The whole request must not go out: the scanning function returns `Err(Blocked)`.
    Block,
}

impl std::fmt::Debug for Decision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            // Never print the value: it is a secret.
            Decision::Substitute(v) => write!(f, "Substitute(<{} bytes>)", v.len()),
            Decision::SubstituteHead { value, len } => {
                write!(f, "SubstituteHead(<{} bytes>, {len})", value.len())
            }
            Decision::Keep => f.write_str("Keep"),
            Decision::Strip => f.write_str("Strip"),
            Decision::Block => f.write_str("Block"),
        }
    }
}

/// A token in the request may not be sent to its destination: the request must be refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a token in the request may not be sent to this host")]
pub struct Blocked;

#[cfg(test)]
mod props;
#[cfg(test)]
mod tests;
