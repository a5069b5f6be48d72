//! Tier 0: responses compressed although netcage asked for `Accept-Encoding: identity`. With a
//! substituted value on the connection the redactor must see the decoded bytes: known codings
//! are decoded (the client gets identity), any other is refused with 502; a decompression bomb
//! streams through in bounded memory. The upstream's `/compressed` route compresses whatever the
//! request accepts and echoes a request header (`echo=`) or sends zeros (`zeros=`).

mod common;
mod compress;
mod tier0;

use common::*;
use compress::*;
use tier0::*;

const TIER: &str = "env";

#[test]
fn a_value_reflected_in_a_compressed_response_reaches_the_child_as_its_token() {
    let fx = Fx::new();
    let token = fx.token();
    let header = format!("X-Api-Key: {token}");
    let cases = [
        ("gzip", "--http1.1"),
        ("gzip", "--http2"),
        ("deflate", "--http1.1"),
        ("br", "--http2"),
        ("zstd", "--http1.1"),
        ("gzip,br", "--http1.1"),
    ];
    for (coding, version) in cases {
        let url = fx.url(
            BOUND,
            &format!("/compressed?coding={coding}&echo=x-api-key"),
        );
        let out = fx.curl(
            &[],
            &[
                version,
                "-i",
                "--suppress-connect-headers",
                "-H",
                &header,
                &url,
            ],
        );
        succeeded(&out);
        assert!(
            free_of(&out.stdout, SECRET.as_bytes()),
            "{coding}: {}",
            describe(&out)
        );
        let (head, body) = head_and_body(&out.stdout);
        assert_eq!(body, token.as_bytes(), "{coding} {version}: {head}");
        assert!(head.starts_with("http/"), "{head}");
        assert!(!head.contains("content-encoding"), "{coding}: {head}");
        let rec = fx.up.wait_for_requests(1, WAIT).remove(0);
        fx.up.clear();
        assert_eq!(rec.header_str("x-api-key").as_deref(), Some(SECRET));
        assert_eq!(
            rec.header_str("accept-encoding").as_deref(),
            Some("identity")
        );
    }
}

#[test]
fn a_compressed_response_in_a_coding_netcage_cannot_decode_is_refused_with_502() {
    let fx = Fx::new();
    let token = fx.token();
    let header = format!("X-Api-Key: {token}");
    // `x-custom` leaves the echoed value as it is: passed on, the child would read it.
    let url = fx.url(BOUND, "/compressed?coding=x-custom&echo=x-api-key");
    let out = fx.curl(&[], &["-H", &header, "-w", "\n%{http_code}", &url]);
    let text = stdout_str(&out);
    assert!(text.ends_with("\n502"), "{}", describe(&out));
    assert!(text.contains("x-custom"), "{text}");
    assert!(free_of(&out.stdout, SECRET.as_bytes()), "{text}");
    let line = fx.wait_audit("the refused response", |l| {
        field(l, "path") == "/compressed" && l["status"] == 502
    });
    assert_eq!(field(&line, "decision"), "block", "{line}");
    assert!(field(&line, "reason").contains("content coding"), "{line}");
    assert_eq!(line["tokens"][0]["action"], "substitute", "{line}");
    assert!(!line.to_string().contains(SECRET), "{line}");
}

#[test]
fn without_a_substituted_value_a_compressed_response_passes_as_sent() {
    let fx = Fx::new();
    let url = fx.url(BOUND, "/compressed?coding=gzip&echo=x-plain");
    let out = fx.curl(
        &[],
        &[
            "-i",
            "--suppress-connect-headers",
            "-H",
            "X-Plain: nothing secret",
            &url,
        ],
    );
    succeeded(&out);
    let (head, body) = head_and_body(&out.stdout);
    assert!(head.contains("content-encoding: gzip"), "{head}");
    assert_eq!(&body[..2], b"\x1f\x8b", "not gzip: {head}");
    let rec = fx.up.wait_for_requests(1, WAIT).remove(0);
    assert_eq!(rec.header_str("accept-encoding"), None);
}

#[test]
fn a_gzip_bomb_streams_through_in_bounded_memory() {
    // 1 GiB of zeros, about 5 MiB gzipped. Buffered whole it would take at least 1 GiB.
    let fx = Fx::new();
    let token = fx.token();
    let header = format!("X-Api-Key: {token}");
    let url = fx.url(BOUND, &format!("/compressed?coding=gzip&zeros={BOMB}"));
    let mut cmd = fx.run_cmd(
        &[],
        &[
            "curl",
            "-sS",
            "--max-time",
            "50",
            "-H",
            &header,
            "-o",
            "/dev/null",
            "-w",
            "%{size_download}",
            &url,
        ],
    );
    let (out, peak) = run_sampling_peak_rss(&mut cmd, RUN_TIMEOUT);
    eprintln!("netcage peak RSS under a 1 GiB gzip bomb: {peak} KiB");
    assert_eq!(stdout_str(succeeded(&out)), BOMB.to_string());
    assert!(peak > 0, "no RSS sample");
    assert!(peak < BOMB_RSS_LIMIT_KIB, "netcage peaked at {peak} KiB");
}
