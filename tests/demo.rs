//! The README's first command: `netcage demo` must keep working as tiers are added. The demo
//! checks what its own HTTPS server received and exits non-zero otherwise.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

#[test]
fn the_demo_shows_a_token_in_the_child_the_value_upstream_and_a_403_elsewhere() {
    let mut cmd = Command::new(netcage_bin());
    cmd.arg("demo");
    let out = run_with_timeout(&mut cmd, Duration::from_secs(60));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", describe(&out));
    assert!(
        stdout.contains("child holds    DEMO_TOKEN=starpod:v1:"),
        "{stdout}"
    );
    assert!(
        stdout.contains("Authorization: Bearer ghp_demoSecretValue"),
        "{stdout}"
    );
    assert!(stdout.contains("\"status\":403"), "{stdout}");
    assert!(
        stdout.contains("OK: the child held only a token"),
        "{stdout}"
    );
    // The child's own output never shows the value.
    let child_part = stdout
        .split("what the HTTPS server received")
        .next()
        .unwrap_or("");
    assert!(!child_part.contains("ghp_demoSecretValue"), "{stdout}");
}
