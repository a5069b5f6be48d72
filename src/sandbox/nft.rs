//! All nftables work: load a ruleset with the `nft` binary (as netavark does).

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

use caps::{CapSet, Capability};

/// In a user namespace netcage's uid is not 0 there, so `nft` would lose CAP_NET_ADMIN at exec:
/// keep exactly that one as an ambient capability.
fn keep_net_admin() -> std::io::Result<()> {
    let err = |e: caps::errors::CapsError| std::io::Error::other(e.to_string());
    caps::raise(None, CapSet::Inheritable, Capability::CAP_NET_ADMIN).map_err(err)?;
    caps::raise(None, CapSet::Ambient, Capability::CAP_NET_ADMIN).map_err(err)
}

pub fn load(nft: &Path, ruleset: &str) -> Result<(), String> {
    let mut cmd = Command::new(nft);
    // SAFETY: runs in the forked child before exec; the holder is single-threaded, and the
    // closure only changes that child's own capability sets.
    unsafe {
        cmd.pre_exec(keep_net_admin);
    }
    let mut child = cmd
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
