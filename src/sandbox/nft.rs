//! All nftables work: load a ruleset with the `nft` binary (as netavark does).

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

pub fn load(nft: &Path, ruleset: &str) -> Result<(), String> {
    let mut child = Command::new(nft)
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", nft.display()))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(ruleset.as_bytes())
            .map_err(|e| format!("nft: {e}"))?;
    }
    let out = child.wait_with_output().map_err(|e| format!("nft: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        let err = String::from_utf8_lossy(&out.stderr);
        Err(format!(
            "nft refused the sandbox rules: {}",
            err.lines().next().unwrap_or("").trim()
        ))
    }
}
