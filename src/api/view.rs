//! From a sandbox's configuration to its filesystem view (`sandbox::layout`): where the
//! working directory, `$HOME`, the write/hide/show lists and the host's sockets are, all made
//! absolute and canonical; and the record, before the sandbox runs, that its writable
//! directories are now writable by sandboxes (`keytrust`).

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use super::{Error, Started};
use crate::ca::{CA_BUNDLE, CA_CERT, CA_TRUSTSTORE};
use crate::credfiles::{self, Context, Format};
use crate::keytrust;
use crate::proxy::SealedValue;
use crate::sandbox::layout::{self, Input, Layout, absolute, expand, tilde};
use crate::sandbox::{gitdirs, host_sockets};

/// Made (empty) when `$HOME` is writable and they are missing: they are then hidden or kept
/// read-only like the rest, instead of being the command's to create (`~/.ssh/authorized_keys`
/// lets anyone in; user units and autostart entries run at the next login).
const HOME_DIRS_TO_MAKE: &[(&str, u32)] = &[
    ("~/.ssh", 0o700),
    ("~/.config/systemd", 0o755),
    ("~/.config/autostart", 0o755),
];

fn canonical(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned())
}

/// The view for `started`, whose data dir is `data_dir` (canonical), and the real values of
/// the sealed credential files in it (for the proxy's leak guard).
pub fn filesystem_view(
    started: &Started,
    data_dir: &Path,
) -> Result<(Layout, Vec<SealedValue>), Error> {
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
    let mut hide: Vec<PathBuf> = files
        .hide
        .iter()
        .filter_map(|e| resolve(e))
        .map(|p| canonical(&p))
        .collect();
    // The user's own home by the password database, when $HOME names another (a service
    // with HOME unset or elsewhere, root under sudo -E): its credentials are as readable.
    if let Ok(Some(user)) = nix::unistd::User::from_uid(nix::unistd::getuid()) {
        let own = canonical(&user.dir);
        if own.is_absolute() && own != Path::new("/") && Some(&own) != home.as_ref() {
            hide.extend(
                crate::sandbox::credentials::HOME_SECRETS
                    .iter()
                    .filter_map(|(e, _)| expand(e, Some(&own))),
            );
        }
    }
    let show: Vec<PathBuf> = files.show.iter().filter_map(|e| resolve(e)).collect();
    let mut notes = Vec::new();
    let (sealed, values) =
        seal_files(started, home.as_deref(), &cwd, &show, &mut hide, &mut notes)?;
    let store = keytrust::Store::default_location();
    // It must exist to be hidden (the first run of all makes it).
    store.ensure().map_err(Error)?;
    let host_sockets = host_sockets::bound_paths().unwrap_or_else(|e| {
        notes.push(format!("the host's Unix sockets could not be listed ({e}); sockets outside /run, /tmp, /var/tmp and $HOME stay reachable"));
        Vec::new()
    });
    let roots = layout::writable_roots(&cwd, &write);
    let git = gitdirs::find(&roots);
    for hooks in &git.missing_hooks {
        // An empty hooks directory, so that it can be kept read-only.
        if let Err(e) = std::fs::create_dir(hooks) {
            notes.push(format!(
                "cannot make {} ({e}): a hook the command puts there would run at your next git command",
                hooks.display()
            ));
        }
    }
    if git.truncated {
        notes.push(format!(
            "more than {} entries in the writable directories: git repositories deeper in were not looked for, and their hooks are writable",
            gitdirs::BUDGET
        ));
    }
    let mut protect = git.protect;
    protect.extend(git.missing_hooks.into_iter().filter(|h| h.is_dir()));
    if let Some(h) = &home
        && roots.iter().any(|r| h.starts_with(r))
    {
        for (entry, mode) in HOME_DIRS_TO_MAKE {
            let Some(dir) = expand(entry, Some(h)) else {
                continue;
            };
            if dir.symlink_metadata().is_err() {
                use std::os::unix::fs::DirBuilderExt;
                let _ = std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(*mode)
                    .create(&dir);
            }
        }
    }
    let input = Input {
        cwd,
        home,
        data_dir: data_dir.to_owned(),
        public_files: [
            (CA_BUNDLE, Some(started.cfg.ca.bundle_path())),
            (CA_CERT, Some(started.cfg.ca.cert_path())),
            (CA_TRUSTSTORE, started.cfg.ca.truststore_path()),
        ]
        .into_iter()
        .filter_map(|(name, path)| Some((name.to_owned(), path?.to_owned())))
        .collect(),
        secret_files: started.hide.iter().map(|p| canonical(p)).collect(),
        state_dir: Some(canonical(store.dir())),
        write,
        hide,
        show,
        host_sockets,
        git: protect,
        sealed,
    };
    let mut view = layout::layout(&input);
    view.notes.extend(notes);
    // Before anything can write there: a key file that appears there later is refused.
    store.grant_writable(&view.writable).map_err(Error)?;
    Ok((view, values))
}

/// Sealed credential files: (canonical path, contents holding only tokens).
type SealedFiles = Vec<(PathBuf, Vec<u8>)>;

/// Seals the credential files: those asked for (`seal_file`, `[files] seal`), then the
/// built-in ones of [`credfiles::DEFAULTS`] that exist; a file `[files] show` shows is left
/// alone. Returns the sealed contents by canonical path and the real values. A file that does
/// not parse stays hidden (one note: its name and why); one asked for is added to `hide`.
fn seal_files(
    started: &Started,
    home: Option<&Path>,
    cwd: &Path,
    show: &[PathBuf],
    hide: &mut Vec<PathBuf>,
    notes: &mut Vec<String>,
) -> Result<(SealedFiles, Vec<SealedValue>), Error> {
    let resolve = |entry: &str| expand(entry, home).map(|p| absolute(&p, cwd));
    let mut wanted: Vec<(PathBuf, Format, bool)> = Vec::new();
    for spec in started
        .seal_files
        .iter()
        .chain(&started.cfg.policy.files.seal)
    {
        let (path, format) =
            credfiles::parse_spec(spec).map_err(|e| Error(format!("seal-file {e}")))?;
        let path =
            resolve(&path).ok_or_else(|| Error(format!("seal-file {spec}: ~/ needs a $HOME")))?;
        if !path.is_file() {
            return Err(Error(format!(
                "seal-file {}: not a file; make it first, or leave it out",
                path.display()
            )));
        }
        wanted.push((path, format, true));
    }
    for (entry, format) in credfiles::DEFAULTS {
        if let Some(path) = resolve(entry)
            && path.is_file()
        {
            wanted.push((path, *format, false));
        }
    }
    let ctx = Context {
        cargo_indexes: ["~/.cargo/config.toml", "~/.cargo/config"]
            .iter()
            .filter_map(|e| std::fs::read_to_string(resolve(e)?).ok())
            .flat_map(|text| credfiles::registry_indexes(&text))
            .collect(),
    };
    let mut sealed: SealedFiles = Vec::new();
    let mut values = Vec::new();
    for (path, format, asked) in wanted {
        if show.iter().any(|s| path.starts_with(s)) {
            continue;
        }
        let real = canonical(&path);
        if sealed.iter().any(|(p, _)| *p == real) {
            continue;
        }
        match credfiles::seal_file(&real, format, &ctx, &started.cfg.key) {
            Ok(s) => {
                sealed.push((real, s.contents));
                values.extend(s.values);
            }
            Err(why) => {
                notes.push(format!(
                    "{} stays hidden, not sealed ({} format): {why}",
                    tilde(&path, home),
                    format.name()
                ));
                if asked {
                    hide.push(real);
                }
            }
        }
    }
    Ok((sealed, values))
}
