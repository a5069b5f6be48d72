//! Dropping every capability (bounding set too) and setting `no_new_privs` for the command.

use caps::CapSet;

/// Leaves the calling process with no capabilities it could ever regain.
pub fn drop_all() -> std::io::Result<()> {
    let err = |e: caps::errors::CapsError| std::io::Error::other(e.to_string());
    for cap in caps::all() {
        // Dropping from the bounding set needs CAP_SETPCAP, which we still hold here.
        if caps::has_cap(None, CapSet::Bounding, cap).unwrap_or(false) {
            caps::drop(None, CapSet::Bounding, cap).map_err(err)?;
        }
    }
    caps::clear(None, CapSet::Ambient).map_err(err)?;
    caps::clear(None, CapSet::Inheritable).map_err(err)?;
    caps::clear(None, CapSet::Effective).map_err(err)?;
    caps::clear(None, CapSet::Permitted).map_err(err)?;
    nix::sys::prctl::set_no_new_privs().map_err(std::io::Error::from)?;
    Ok(())
}
