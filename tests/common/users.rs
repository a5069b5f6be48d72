//! Running netcage as another user (the rootless tests): a command through `setpriv`, and a
//! copy of the binary that user can reach.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::{isolate_client_env, netcage_bin};

/// `program` run directly (`uid` None: root) or through `setpriv` as `uid`, with a client
/// environment independent of this machine and `home` as HOME and working directory.
pub fn as_uid(uid: Option<u32>, program: &Path, home: &Path) -> Command {
    let mut cmd = match uid {
        None => Command::new(program),
        Some(uid) => {
            let mut cmd = Command::new("setpriv");
            cmd.args(["--reuid", &uid.to_string(), "--regid", &uid.to_string()])
                .arg("--clear-groups")
                .arg(program);
            cmd
        }
    };
    isolate_client_env(&mut cmd, home);
    cmd.current_dir(home);
    cmd
}

/// The netcage binary for users other than root: the build's own when everyone may reach
/// it, else a copy in a directory everyone may enter.
pub fn bin_for_others() -> PathBuf {
    static BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        let built = netcage_bin();
        let x = |p: &Path| std::fs::metadata(p).is_ok_and(|m| m.permissions().mode() & 0o001 != 0);
        if x(&built)
            && built
                .ancestors()
                .skip(1)
                .filter(|d| !d.as_os_str().is_empty())
                .all(x)
        {
            return built;
        }
        let dir = std::env::temp_dir().join(format!("netcage-bin-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let copy = dir.join("netcage");
        std::fs::copy(&built, &copy).unwrap();
        std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)).unwrap();
        copy
    })
    .clone()
}
