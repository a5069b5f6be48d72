//! From a sandbox's configuration to its filesystem view (`sandbox::layout`): where the
//! working directory, `$HOME`, the write/hide/show lists and the host's sockets are, all made
//! absolute and canonical; and the record, before the sandbox runs, that its writable
//! directories are now writable by sandboxes (`keytrust`).

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use super::{Error, Started};
use crate::ca::{CA_BUNDLE, CA_CERT};
use crate::keytrust;
use crate::sandbox::host_sockets;
use crate::sandbox::layout::{self, Input, Layout, absolute, expand};

fn canonical(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned())
}

/// The view for `started`, whose data dir is `data_dir` (canonical).
pub fn filesystem_view(started: &Started, data_dir: &Path) -> Result<Layout, Error> {
    let cwd = std::env::current_dir()
        .map_err(|e| Error(format!("cannot tell the working directory: {e}")))?;
    let cwd = canonical(&cwd);
    // The command's $HOME is the one in its environment.
    let home = started
        .base_env
        .iter()
        .find(|(k, _)| k == OsStr::new("HOME"))
        .map(|(_, v)| PathBuf::from(v))
        .filter(|h| h.is_absolute())
        .map(|h| canonical(&h));
    let files = &started.cfg.policy.files;
    let resolve = |entry: &str| -> Option<PathBuf> {
        expand(entry, home.as_deref()).map(|p| absolute(&p, &cwd))
    };
    let mut write = Vec::new();
    let wanted = started
        .write
        .iter()
        .map(|p| (absolute(p, &cwd), "--write"))
        .chain(
            files
                .write
                .iter()
                .filter_map(|e| Some((resolve(e)?, "files.write"))),
        );
    for (path, from) in wanted {
        match std::fs::canonicalize(&path) {
            Ok(real) => write.push(real),
            Err(e) => {
                return Err(Error(format!(
                    "{from} {}: {e}; make it first, or remove it from the list",
                    path.display()
                )));
            }
        }
    }
    let hide = files
        .hide
        .iter()
        .filter_map(|e| resolve(e))
        .map(|p| canonical(&p))
        .collect();
    let show = files.show.iter().filter_map(|e| resolve(e)).collect();
    let store = keytrust::Store::default_location();
    let mut notes = Vec::new();
    let host_sockets = host_sockets::bound_paths().unwrap_or_else(|e| {
        notes.push(format!("the host's Unix sockets could not be listed ({e}); sockets outside /run, /tmp, /var/tmp and $HOME stay reachable"));
        Vec::new()
    });
    let input = Input {
        cwd,
        home,
        data_dir: data_dir.to_owned(),
        public_files: vec![
            (
                CA_BUNDLE.to_owned(),
                started.cfg.ca.bundle_path().to_owned(),
            ),
            (CA_CERT.to_owned(), started.cfg.ca.cert_path().to_owned()),
        ],
        secret_files: started.hide.iter().map(|p| canonical(p)).collect(),
        state_dir: Some(canonical(store.dir())),
        write,
        hide,
        show,
        host_sockets,
    };
    let mut view = layout::layout(&input);
    view.notes.extend(notes);
    // Before anything can write there: a key file that appears there later is refused.
    store.grant_writable(&view.writable).map_err(Error)?;
    Ok(view)
}
