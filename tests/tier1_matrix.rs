//! The client matrix in Tier 1 (`--tier netns`, root): the same clients as tests/tier0_matrix.rs,
//! intercepted transparently, without proxy variables; and the clients that cannot be asked to
//! use a proxy, which only Tier 1 can serve.

mod common;
mod tier0;

const TIER: &str = "netns";

include!("tier0/matrix_body.rs");

/// Node's built-in `fetch` (Node < 24) ignores `HTTPS_PROXY`, so only Tier 1 carries it.
#[test]
fn node_fetch_sends_the_real_value() {
    let fx = Fx::new();
    let script = r#"fetch(process.argv[1], {headers: {authorization: `Bearer ${process.env.NC_TOKEN}`}})
        .then(r => r.text()).then(t => console.log('fetched', t.length > 0))
        .catch(e => { console.error(e); process.exit(1) })"#;
    let url = fx.url(BOUND, "/node-fetch");
    let mut cmd = fx.run_cmd(
        &["--seal", "NC_TOKEN=api.github.com"],
        &["node", "-e", script, &url],
    );
    cmd.env("NC_TOKEN", SECRET);
    let out = run_with_timeout(&mut cmd, RUN_TIMEOUT);
    assert!(
        out.status.success() && stdout_str(&out).contains("fetched true"),
        "{}",
        describe(&out)
    );
    assert!(free_of(&out.stdout, SECRET.as_bytes()));
    let requests = fx.up.wait_for_requests(1, WAIT);
    let r = requests
        .iter()
        .find(|r| r.path() == "/node-fetch")
        .expect("/node-fetch");
    assert_eq!(
        r.header_str("authorization"),
        Some(format!("Bearer {SECRET}")),
        "{r:#?}"
    );
}
