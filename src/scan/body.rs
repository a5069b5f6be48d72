//! Streaming scan of a request body.

use std::ops::Range;

use bytes::Bytes;

use super::find::{Body, Candidate, Encoding, Step, canonical, next_candidate, write_value};
use super::{Blocked, Decision, MAX_TOKEN_LEN};

/// Finds and rewrites tokens (raw and percent forms) in a body that arrives in chunks.
///
/// The output does not depend on how the body is cut into chunks: a token split across chunks
/// at any byte is found, and the `decide` callback sees the same tokens in the same order as a
/// one-shot scan of the whole body would. Bytes that may belong to an unfinished token are held
/// back until the token ends (at most about `3 * MAX_TOKEN_LEN` + the prefix); a run longer than
/// that is not a token and is released unchanged. After `push` or `finish` returns `Err`, the
/// request must be dropped; the scanner is reset.
#[derive(Debug)]
pub struct BodyScanner {
    /// Bytes not yet released: in `Search`, a partial prefix (or nothing); in `Token` (not
    /// over-long), the token text so far, prefix included.
    held: Vec<u8>,
    state: State,
    limit: usize,
}

#[derive(Debug, Clone, Copy)]
enum State {
    /// Looking for the next token.
    Search,
    /// Inside a token body. If it is over-long, nothing is held and its bytes are passed on.
    Token(Body),
}

impl Default for BodyScanner {
    fn default() -> Self {
        Self::new()
    }
}

/// Output of one call, built without copying while it is one contiguous slice of the input.
struct Out<'a> {
    src: &'a Bytes,
    /// The output so far is `src[slice]` (while `owned` is `None`).
    slice: Option<Range<usize>>,
    /// The output so far, once it is not one slice of `src`.
    owned: Option<Vec<u8>>,
}

impl<'a> Out<'a> {
    fn new(src: &'a Bytes) -> Self {
        Out {
            src,
            slice: None,
            owned: None,
        }
    }

    fn owned(&mut self) -> &mut Vec<u8> {
        if self.owned.is_none() {
            let mut v = Vec::with_capacity(self.src.len() + 64);
            if let Some(r) = self.slice.take() {
                v.extend_from_slice(self.src.get(r).unwrap_or_default());
            }
            self.owned = Some(v);
        }
        self.owned.get_or_insert_with(Vec::new)
    }

    /// Bytes of the source.
    fn src(&mut self, r: Range<usize>) {
        if r.start >= r.end {
            return;
        }
        if self.owned.is_none() {
            match &mut self.slice {
                None => {
                    self.slice = Some(r);
                    return;
                }
                Some(cur) if cur.end == r.start => {
                    cur.end = r.end;
                    return;
                }
                Some(_) => {}
            }
        }
        let src = self.src;
        self.owned()
            .extend_from_slice(src.get(r).unwrap_or_default());
    }

    /// Other bytes.
    fn bytes(&mut self, b: &[u8]) {
        if !b.is_empty() {
            self.owned().extend_from_slice(b);
        }
    }

    fn finish(self) -> Bytes {
        if let Some(v) = self.owned {
            return Bytes::from(v);
        }
        match self.slice {
            None => Bytes::new(),
            Some(r) if r.start == 0 && r.end == self.src.len() => self.src.clone(),
            Some(r) if r.end <= self.src.len() => self.src.slice(r),
            Some(_) => Bytes::new(),
        }
    }
}

/// Where a decided token's text comes from.
enum TokenText<'t> {
    /// A range of the current source.
    Src(Range<usize>),
    /// Held bytes.
    Held(&'t [u8]),
}

fn emit_token(
    out: &mut Out<'_>,
    form: super::Form,
    text: TokenText<'_>,
    decide: &mut dyn FnMut(&str) -> Decision,
) -> Result<(), Blocked> {
    let bytes = match &text {
        TokenText::Src(r) => out.src.get(r.clone()).unwrap_or_default(),
        TokenText::Held(b) => b,
    };
    match decide(&canonical(form, bytes)) {
        Decision::Keep => match text {
            TokenText::Src(r) => out.src(r),
            TokenText::Held(b) => out.bytes(b),
        },
        Decision::Strip => {
            // Force an owned output so that the bytes around the token are not joined as one
            // slice.
            out.owned();
        }
        Decision::Substitute(v) => write_value(&v, form, Encoding::LikeToken, out.owned()),
        Decision::SubstituteHead { value, len } if form == super::Form::Raw => {
            let rest = bytes.get(len..).unwrap_or_default().to_vec();
            write_value(&value, form, Encoding::LikeToken, out.owned());
            out.owned().extend_from_slice(&rest);
        }
        Decision::SubstituteHead { .. } => match text {
            TokenText::Src(r) => out.src(r),
            TokenText::Held(b) => out.bytes(b),
        },
        Decision::Block => return Err(Blocked),
    }
    Ok(())
}

impl BodyScanner {
    /// A scanner at the start of a body.
    pub fn new() -> Self {
        Self::with_limit(MAX_TOKEN_LEN)
    }

    pub(crate) fn with_limit(limit: usize) -> Self {
        BodyScanner {
            held: Vec::new(),
            state: State::Search,
            limit,
        }
    }

    /// Bytes currently held back.
    pub fn held(&self) -> usize {
        self.held.len()
    }

    fn reset(&mut self) {
        self.held = Vec::new();
        self.state = State::Search;
    }

    /// Feed one chunk; returns the bytes that are ready (may be empty). Returns `chunk` itself
    /// (or a slice of it) without copying when nothing is held back and the chunk contains no
    /// candidate.
    pub fn push(
        &mut self,
        chunk: Bytes,
        decide: &mut dyn FnMut(&str) -> Decision,
    ) -> Result<Bytes, Blocked> {
        let r = self.push_inner(chunk, decide);
        if r.is_err() {
            self.reset();
        }
        r
    }

    /// End of the body: decide on what is held and release it. The scanner can then be used
    /// for a new body.
    pub fn finish(&mut self, decide: &mut dyn FnMut(&str) -> Decision) -> Result<Bytes, Blocked> {
        let held = std::mem::take(&mut self.held);
        let state = std::mem::replace(&mut self.state, State::Search);
        let empty = Bytes::new();
        let mut out = Out::new(&empty);
        match state {
            // A partial prefix (or nothing): not a token.
            State::Search => out.bytes(&held),
            State::Token(body) => {
                if !body.overlong {
                    let cut = held.len().saturating_sub(body.pending());
                    let (tok, rest) = held.split_at(cut);
                    emit_token(&mut out, body.form, TokenText::Held(tok), decide)?;
                    out.bytes(rest);
                }
            }
        }
        Ok(out.finish())
    }

    fn push_inner(
        &mut self,
        chunk: Bytes,
        decide: &mut dyn FnMut(&str) -> Decision,
    ) -> Result<Bytes, Blocked> {
        if chunk.is_empty() {
            return Ok(chunk);
        }
        let mut pos = 0usize;
        let src = match self.state {
            State::Search if self.held.is_empty() => chunk,
            State::Search => {
                // A partial prefix is held (a few bytes): search again from its start.
                let mut v = std::mem::take(&mut self.held);
                v.extend_from_slice(&chunk);
                Bytes::from(v)
            }
            State::Token(_) => chunk,
        };
        let mut out = Out::new(&src);

        if let State::Token(mut body) = self.state {
            match body.step(&src) {
                Step::More => {
                    if body.overlong {
                        out.bytes(&std::mem::take(&mut self.held));
                        out.src(0..src.len());
                    } else {
                        self.held.extend_from_slice(&src);
                    }
                    self.state = State::Token(body);
                    return Ok(out.finish());
                }
                Step::End { end, back } => {
                    self.state = State::Search;
                    let end = end.min(src.len());
                    if body.overlong {
                        out.bytes(&std::mem::take(&mut self.held));
                        out.src(0..end);
                    } else {
                        let mut held = std::mem::take(&mut self.held);
                        held.extend_from_slice(src.get(..end).unwrap_or_default());
                        let cut = held.len().saturating_sub(back);
                        let (tok, rest) = held.split_at(cut);
                        emit_token(&mut out, body.form, TokenText::Held(tok), decide)?;
                        // An unfinished escape that was not part of the token: plain bytes
                        // (`%` and hex digits cannot start a token).
                        out.bytes(rest);
                        // Keep a small buffer for the next token; give a large one back.
                        if held.capacity() <= 4096 {
                            held.clear();
                            self.held = held;
                        }
                    }
                    pos = end;
                }
            }
        }

        loop {
            match next_candidate(&src, pos) {
                Candidate::None => {
                    out.src(pos..src.len());
                    break;
                }
                Candidate::Partial(p) => {
                    out.src(pos..p);
                    self.held
                        .extend_from_slice(src.get(p..).unwrap_or_default());
                    break;
                }
                Candidate::Start { at, form, body } => {
                    out.src(pos..at);
                    let mut st = Body::new(form, self.limit);
                    let rest = src.get(body..).unwrap_or_default();
                    match st.step(rest) {
                        Step::More => {
                            if st.overlong {
                                out.src(at..src.len());
                            } else {
                                self.held
                                    .extend_from_slice(src.get(at..).unwrap_or_default());
                            }
                            self.state = State::Token(st);
                            break;
                        }
                        Step::End { end, .. } => {
                            // `back` is 0: the body started inside `rest`.
                            let e = body + end;
                            if st.overlong {
                                out.src(at..e);
                            } else {
                                emit_token(&mut out, form, TokenText::Src(at..e), decide)?;
                            }
                            pos = e;
                        }
                    }
                }
            }
        }
        Ok(out.finish())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scan::{Form, PREFIX, Zeroizing};

    fn sub(v: &[u8]) -> Decision {
        Decision::Substitute(Zeroizing::new(v.to_vec()))
    }

    /// Feed `data` in pieces of `n` bytes; returns output and the tokens decided on.
    fn run(data: &[u8], n: usize, f: &mut dyn FnMut(&str) -> Decision) -> (Vec<u8>, Vec<String>) {
        let mut seen = Vec::new();
        let mut s = BodyScanner::new();
        let mut out = Vec::new();
        let mut d = |t: &str| {
            seen.push(t.to_string());
            f(t)
        };
        for c in data.chunks(n.max(1)) {
            out.extend_from_slice(&s.push(Bytes::copy_from_slice(c), &mut d).unwrap());
            assert!(s.held() <= 3 * MAX_TOKEN_LEN + 32);
        }
        out.extend_from_slice(&s.finish(&mut d).unwrap());
        assert_eq!(s.held(), 0);
        (out, seen)
    }

    fn all_chunkings(data: &[u8], f: &mut dyn FnMut(&str) -> Decision) -> (Vec<u8>, Vec<String>) {
        let whole = run(data, data.len(), f);
        for n in 1..=data.len().min(40) {
            assert_eq!(run(data, n, f), whole, "chunk size {n}");
        }
        whole
    }

    #[test]
    fn token_free_chunk_is_zero_copy() {
        let mut s = BodyScanner::new();
        let c = Bytes::from_static(b"hello star world, starpod: not a token");
        let o = s.push(c.clone(), &mut |_| Decision::Block).unwrap();
        assert_eq!(o.as_ptr(), c.as_ptr());
        assert_eq!(o.len(), c.len());
        // A partial stem at the end is held; what is before it is a slice of the chunk.
        let c = Bytes::from_static(b"abc sta");
        let o = s.push(c.clone(), &mut |_| Decision::Block).unwrap();
        assert_eq!(o.as_ptr(), c.as_ptr());
        assert_eq!(&o[..], b"abc ");
        assert_eq!(s.held(), 3);
        let o = s
            .push(Bytes::from_static(b"ple"), &mut |_| Decision::Block)
            .unwrap();
        assert_eq!(&o[..], b"staple");
        assert_eq!(&s.finish(&mut |_| Decision::Block).unwrap()[..], b"");
    }

    #[test]
    fn raw_and_percent_substituted_at_any_split() {
        let data = b"{\"a\":\"starpod:v1:QUJD\",\"b\":\"x\"}&t=starpod%3av1%3aQU%2Bx%3D&u=1";
        let (out, seen) = all_chunkings(data, &mut |t| match t {
            "starpod:v1:QUJD" => sub(b"s3cr3t"),
            "starpod:v1:QU+x=" => sub(b"a b/c"),
            _ => Decision::Keep,
        });
        assert_eq!(out, b"{\"a\":\"s3cr3t\",\"b\":\"x\"}&t=a%20b%2Fc&u=1");
        assert_eq!(seen, ["starpod:v1:QUJD", "starpod:v1:QU+x="]);
    }

    #[test]
    fn token_at_end_is_held_until_finish() {
        let mut s = BodyScanner::new();
        let mut calls = 0;
        let mut d = |_: &str| {
            calls += 1;
            sub(b"V")
        };
        let o = s
            .push(Bytes::from_static(b"x=starpod:v1:AB"), &mut d)
            .unwrap();
        assert_eq!(&o[..], b"x=");
        assert_eq!(s.held(), 13);
        let o = s.push(Bytes::from_static(b"CD"), &mut d).unwrap();
        assert!(o.is_empty());
        let o = s.push(Bytes::from_static(b"==&"), &mut d).unwrap();
        assert_eq!(&o[..], b"V&");
        let o = s
            .push(Bytes::from_static(b"y=starpod%3Av1%3AAB%2"), &mut d)
            .unwrap();
        assert_eq!(&o[..], b"y=");
        let o = s.finish(&mut d).unwrap();
        // The unfinished escape is not part of the token.
        assert_eq!(&o[..], b"V%2");
        assert_eq!(calls, 2);
    }

    #[test]
    fn truncated_prefix_at_end_is_released() {
        for tail in [
            &b"s"[..],
            b"star",
            b"starpod",
            b"starpod:",
            b"starpod:v1",
            b"starpod%",
            b"starpod%3a",
            b"starpod%3Av1%3",
        ] {
            let mut data = b"abc".to_vec();
            data.extend_from_slice(tail);
            let (out, seen) = all_chunkings(&data, &mut |_| Decision::Strip);
            assert_eq!(out, data);
            assert!(seen.is_empty());
        }
    }

    #[test]
    fn empty_body_at_end_is_a_token() {
        let (out, seen) = all_chunkings(b"abcstarpod:v1:", &mut |_| Decision::Strip);
        assert_eq!(out, b"abc");
        assert_eq!(seen, [PREFIX]);
    }

    #[test]
    fn strip_keep_block() {
        let data = b"a starpod:v1:AA b starpod:v1:BB c";
        let (out, _) = all_chunkings(data, &mut |t| {
            if t.ends_with("AA") {
                Decision::Strip
            } else {
                Decision::Keep
            }
        });
        assert_eq!(out, b"a  b starpod:v1:BB c");
        for n in 1..data.len() {
            let mut s = BodyScanner::new();
            let mut blocked = false;
            for c in data.chunks(n) {
                match s.push(Bytes::copy_from_slice(c), &mut |_| Decision::Block) {
                    Ok(_) => {}
                    Err(Blocked) => {
                        blocked = true;
                        break;
                    }
                }
            }
            if !blocked {
                assert_eq!(s.finish(&mut |_| Decision::Block), Err(Blocked));
            }
            // The scanner was reset.
            assert_eq!(s.held(), 0);
        }
    }

    #[test]
    fn overlong_run_released_unchanged_and_bounded() {
        let mut data = b"x=starpod:v1:".to_vec();
        data.resize(3 + MAX_TOKEN_LEN + 10, b'A');
        data.extend_from_slice(b"== starpod:v1:ok=");
        for n in [1000, 4096, 16384, 65536, data.len()] {
            let (out, seen) = run(&data, n, &mut |_| sub(b"V"));
            let mut want = data[..data.len() - 14].to_vec();
            want.push(b'V');
            assert!(out == want, "chunk size {n}");
            assert_eq!(seen, ["starpod:v1:ok="]);
        }
        // Percent form: three bytes per canonical character.
        let mut data = b"starpod%3Av1%3A".to_vec();
        for _ in 0..MAX_TOKEN_LEN {
            data.extend_from_slice(b"%2F");
        }
        let mut s = BodyScanner::new();
        let mut max_held = 0;
        let mut out = Vec::new();
        for c in data.chunks(7777) {
            out.extend_from_slice(
                &s.push(Bytes::copy_from_slice(c), &mut |_| sub(b"V"))
                    .unwrap(),
            );
            max_held = max_held.max(s.held());
        }
        out.extend_from_slice(&s.finish(&mut |_| sub(b"V")).unwrap());
        assert!(out == data);
        assert!(max_held <= 3 * MAX_TOKEN_LEN + 15, "{max_held}");
    }

    #[test]
    fn small_limit_overlong() {
        let mut s = BodyScanner::with_limit(PREFIX.len() + 3);
        let mut seen = Vec::new();
        let mut d = |t: &str| {
            seen.push(t.to_string());
            Decision::Strip
        };
        let mut out = Vec::new();
        for c in [
            &b"starpod:v1:AB"[..],
            b"C",
            b"D",
            b"E= starpod%3Av1%3A",
            b"%2B",
            b"=.",
        ] {
            out.extend_from_slice(&s.push(Bytes::copy_from_slice(c), &mut d).unwrap());
        }
        out.extend_from_slice(&s.finish(&mut d).unwrap());
        assert_eq!(out, b"starpod:v1:ABCDE= .");
        assert_eq!(seen, ["starpod:v1:+="]);
        let _ = Form::Raw;
    }
}
