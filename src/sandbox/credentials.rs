//! The well-known places where credentials and code-that-runs-later live: one table each, so
//! README and the sandbox's filesystem view (`layout`) agree. Pure data.

/// Credential locations under `$HOME`, hidden from the command (an empty directory or file in
/// their place): `[files] show` opts one out, `[files] hide` adds more.
pub const HOME_SECRETS: &[(&str, &str)] = &[
    ("~/.ssh", "SSH keys, agent sockets, known hosts"),
    ("~/.gnupg", "GnuPG keys and agent sockets"),
    ("~/.password-store", "pass(1) store"),
    ("~/.aws", "AWS credentials and SSO cache"),
    ("~/.azure", "Azure CLI tokens"),
    ("~/.config/gcloud", "Google Cloud credentials"),
    ("~/.oci", "Oracle Cloud keys"),
    ("~/.kube", "Kubernetes kubeconfig"),
    ("~/.docker/config.json", "Docker registry auth"),
    ("~/.config/containers/auth.json", "Podman registry auth"),
    ("~/.netrc", "machine/login/password lines"),
    ("~/.git-credentials", "git credential store"),
    ("~/.config/git/credentials", "git credential store"),
    ("~/.config/gh", "GitHub CLI token"),
    ("~/.config/hub", "hub token"),
    ("~/.config/glab-cli", "GitLab CLI token"),
    ("~/.npmrc", "npm auth tokens"),
    ("~/.yarnrc.yml", "Yarn npmAuthToken"),
    ("~/.pypirc", "PyPI upload tokens"),
    ("~/.cargo/credentials.toml", "crates.io token"),
    ("~/.cargo/credentials", "crates.io token (old name)"),
    ("~/.gem/credentials", "RubyGems API key"),
    ("~/.m2/settings.xml", "Maven server passwords"),
    ("~/.m2/settings-security.xml", "Maven master password"),
    ("~/.gradle/gradle.properties", "Gradle credentials"),
    ("~/.config/composer/auth.json", "Composer tokens"),
    ("~/.composer/auth.json", "Composer tokens"),
    (
        "~/.terraform.d/credentials.tfrc.json",
        "Terraform Cloud token",
    ),
    ("~/.vault-token", "HashiCorp Vault token"),
    ("~/.config/op", "1Password CLI"),
    ("~/.config/rclone/rclone.conf", "rclone remotes"),
    ("~/.s3cfg", "s3cmd keys"),
    ("~/.boto", "boto keys"),
    ("~/.config/doctl", "DigitalOcean token"),
    ("~/.config/hcloud", "Hetzner Cloud token"),
    ("~/.fly", "Fly.io token"),
    ("~/.config/sops", "SOPS age keys"),
    ("~/.config/age", "age keys"),
    ("~/.pgpass", "PostgreSQL passwords"),
    ("~/.my.cnf", "MySQL passwords"),
    ("~/.claude/.credentials.json", "Claude Code login"),
    ("~/.codex/auth.json", "Codex CLI login"),
    ("~/.config/github-copilot", "Copilot tokens"),
    ("~/.local/share/keyrings", "GNOME keyring"),
    ("~/.bash_history", "commands typed, tokens exported on them"),
    ("~/.zsh_history", "commands typed"),
    ("~/.local/share/fish/fish_history", "commands typed"),
    ("~/.python_history", "lines typed"),
    ("~/.node_repl_history", "lines typed"),
    ("~/.psql_history", "queries typed"),
    ("~/.mysql_history", "queries typed"),
    ("~/.mozilla", "Firefox profiles (cookies, saved passwords)"),
    (
        "~/.config/google-chrome",
        "Chrome profiles (cookies, saved passwords)",
    ),
    (
        "~/.config/chromium",
        "Chromium profiles (cookies, saved passwords)",
    ),
];

/// Credential files of the machine itself; as root (uid 0, even with no capabilities) the
/// command could read them.
pub const SYSTEM_SECRETS: &[(&str, &str)] = &[
    ("/etc/shadow", "password hashes"),
    ("/etc/gshadow", "group password hashes"),
    ("/etc/security/opasswd", "old password hashes"),
    ("/etc/ssh/ssh_host_rsa_key", "SSH host key"),
    ("/etc/ssh/ssh_host_ecdsa_key", "SSH host key"),
    ("/etc/ssh/ssh_host_ed25519_key", "SSH host key"),
    ("/etc/ssl/private", "TLS private keys"),
    ("/etc/letsencrypt", "TLS private keys"),
    ("/etc/kubernetes", "cluster admin credentials"),
    ("/var/lib/kubelet/pki", "kubelet keys"),
    ("/etc/wireguard", "WireGuard keys"),
    (
        "/etc/NetworkManager/system-connections",
        "Wi-Fi and VPN passwords",
    ),
    ("/etc/credstore", "systemd credentials"),
    ("/etc/credstore.encrypted", "systemd credentials"),
];

/// Files under `$HOME` that make code run later, outside the sandbox: shell start-up files,
/// git's global configuration, user services. Where `$HOME` is writable in the sandbox (the
/// working directory is `$HOME`, or `--write` covers it) they stay read-only. (Elsewhere
/// `$HOME` is a throwaway layer and nothing persists anyway.)
pub const HOME_CODE: &[&str] = &[
    "~/.bashrc",
    "~/.bash_profile",
    "~/.bash_login",
    "~/.bash_logout",
    "~/.profile",
    "~/.bashrc.d",
    "~/.profile.d",
    "~/.zshrc",
    "~/.zshenv",
    "~/.zprofile",
    "~/.zlogin",
    "~/.zlogout",
    "~/.config/fish",
    "~/.config/environment.d",
    "~/.config/systemd",
    "~/.config/autostart",
    "~/.gitconfig",
    "~/.config/git",
    "~/.pam_environment",
    "~/.xprofile",
    "~/.xsession",
    "~/.xinitrc",
    "~/.local/bin",
    "~/bin",
    "~/.cargo/bin",
    "~/.cargo/config.toml",
    "~/.cargo/config",
];

// (Git repositories in writable directories are `gitdirs`'s.)

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lists_are_well_formed() {
        for (path, what) in HOME_SECRETS {
            assert!(path.starts_with("~/") && !what.is_empty(), "{path}");
        }
        for (path, _) in SYSTEM_SECRETS {
            assert!(path.starts_with('/'), "{path}");
        }
        for path in HOME_CODE {
            assert!(path.starts_with("~/"), "{path}");
        }
        let mut all: Vec<&str> = HOME_SECRETS.iter().map(|(p, _)| *p).collect();
        all.extend(HOME_CODE);
        let n = all.len();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), n, "an entry is listed twice");
    }

    /// README lists every entry (the table here is the one place in the code).
    #[test]
    fn readme_names_every_entry() {
        let readme = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"));
        let entries = HOME_SECRETS
            .iter()
            .chain(SYSTEM_SECRETS)
            .map(|(p, _)| *p)
            .chain(HOME_CODE.iter().copied());
        for entry in entries {
            assert!(
                readme.contains(&format!("`{entry}`")),
                "README lacks `{entry}`"
            );
        }
        for r in crate::sandbox::seccomp::REFUSED {
            assert!(
                readme.contains(&format!("`{}`", r.name)),
                "README lacks `{}`",
                r.name
            );
        }
    }
}
