//! Tier 1 (root and rootless): a value reflected in a response compressed although netcage
//! asked for identity never reaches the command, and a decompression bomb streams through in
//! bounded memory (see tests/tier0_compress.rs for the Tier 0 cases and the refusal of
//! codings netcage cannot decode).

mod common;
mod compress;
mod tier1_support;

use common::*;
use compress::*;
use tier1_support::*;

#[test]
fn a_value_reflected_in_a_gzip_or_zstd_response_reaches_the_command_as_its_token() {
    for_each_mode(|mode| {
        let fx = Fx::new(mode);
        let token = fx.token();
        let header = format!("X-Api-Key: {token}");
        for (coding, version) in [("gzip", "--http1.1"), ("zstd", "--http2")] {
            let url = fx.url(
                BOUND,
                &format!("/compressed?coding={coding}&echo=x-api-key"),
            );
            let out = fx.run(
                &[],
                &[
                    "curl",
                    "-sS",
                    "--max-time",
                    "20",
                    version,
                    "-i",
                    "-H",
                    &header,
                    &url,
                ],
            );
            succeeded(&out);
            assert!(
                free_of(&out.stdout, SECRET.as_bytes()),
                "{mode:?} {coding}: {}",
                describe(&out)
            );
            let (head, body) = head_and_body(&out.stdout);
            assert_eq!(body, token.as_bytes(), "{mode:?} {coding}: {head}");
            assert!(
                !head.contains("content-encoding"),
                "{mode:?} {coding}: {head}"
            );
            let rec = fx.up.wait_for_requests(1, WAIT).remove(0);
            fx.up.clear();
            assert_eq!(rec.header_str("x-api-key").as_deref(), Some(SECRET));
            assert_eq!(
                rec.header_str("accept-encoding").as_deref(),
                Some("identity")
            );
        }
    });
}

#[test]
fn a_gzip_bomb_streams_through_in_bounded_memory() {
    for_each_mode(|mode| {
        let fx = Fx::new(mode);
        let header = format!("X-Api-Key: {}", fx.token());
        let url = fx.url(BOUND, &format!("/compressed?coding=gzip&zeros={BOMB}"));
        let mut cmd = fx.run_cmd(
            &[],
            &[
                "curl",
                "-sS",
                "--max-time",
                "30",
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
        eprintln!("{mode:?}: netcage peak RSS under a 1 GiB gzip bomb: {peak} KiB");
        assert_eq!(stdout_str(succeeded(&out)), BOMB.to_string(), "{mode:?}");
        assert!(peak > 0, "no RSS sample");
        assert!(
            peak < BOMB_RSS_LIMIT_KIB,
            "{mode:?}: netcage peaked at {peak} KiB"
        );
    });
}
