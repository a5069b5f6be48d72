//! Git repositories in the writable directories, whose hooks and configuration would run the
//! command's code at the user's next `git` outside: found here (reading only), kept
//! read-only by the filesystem view.
//!
//! Looked for: a `.git` in each writable directory and in its subdirectories down to
//! [`DEPTH`] levels (skipping dependency and build trees), and in each git dir the
//! submodules' git dirs (`.git/modules/…`). Protected in each git dir: `hooks/` and
//! `config`; a `.git` *file* (worktrees, submodules) itself, so it cannot be pointed at
//! another git dir.

use std::path::{Path, PathBuf};

/// How deep below a writable directory repositories are looked for.
pub const DEPTH: usize = 3;

/// How many directory entries the search reads at most (per start of a sandbox).
pub const BUDGET: usize = 20_000;

/// Directories not searched: dependencies, build output, caches.
const SKIP: &[&str] = &[
    "node_modules",
    "target",
    ".venv",
    "venv",
    "__pycache__",
    ".tox",
    "dist",
    "build",
    ".cache",
    ".cargo",
    ".rustup",
    ".npm",
];

/// What the search found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Found {
    /// Paths to keep read-only: hooks directories, config files, `.git` files.
    pub protect: Vec<PathBuf>,
    /// Git dirs without a `hooks/` directory: one must exist to be kept read-only.
    pub missing_hooks: Vec<PathBuf>,
    /// The budget ran out: repositories further in were not looked for.
    pub truncated: bool,
}

/// Searches `roots`.
pub fn find(roots: &[PathBuf]) -> Found {
    let mut found = Found::default();
    let mut budget = BUDGET;
    for root in roots {
        walk(root, 0, &mut budget, &mut found);
    }
    found.protect.sort();
    found.protect.dedup();
    found.missing_hooks.sort();
    found.missing_hooks.dedup();
    found
}

fn walk(dir: &Path, depth: usize, budget: &mut usize, found: &mut Found) {
    let git = dir.join(".git");
    match git.symlink_metadata() {
        Ok(m) if m.is_dir() => git_dir(&git, 0, budget, found),
        Ok(m) if m.is_file() => found.protect.push(git),
        _ => {}
    }
    if depth >= DEPTH {
        return;
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if *budget == 0 {
            found.truncated = true;
            return;
        }
        *budget -= 1;
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            continue;
        };
        if name == ".git" || SKIP.contains(&name) {
            continue;
        }
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            walk(&entry.path(), depth + 1, budget, found);
        }
    }
}

/// A git dir: its hooks and config, and its submodules' git dirs below `modules/`.
fn git_dir(git: &Path, depth: usize, budget: &mut usize, found: &mut Found) {
    let hooks = git.join("hooks");
    if hooks.symlink_metadata().is_ok() {
        found.protect.push(hooks);
    } else if git.join("HEAD").is_file() {
        found.missing_hooks.push(hooks);
    }
    let config = git.join("config");
    if config.symlink_metadata().is_ok() {
        found.protect.push(config);
    }
    if depth >= 2 * DEPTH {
        return;
    }
    // modules/NAME is a git dir; NAME may have slashes (modules/a/b).
    let Ok(entries) = std::fs::read_dir(git.join("modules")) else {
        return;
    };
    for entry in entries.flatten() {
        if *budget == 0 {
            found.truncated = true;
            return;
        }
        *budget -= 1;
        let path = entry.path();
        if !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        if path.join("HEAD").is_file() {
            git_dir(&path, depth + 1, budget, found);
        } else {
            // A namespace directory (a submodule named a/b): look one level further.
            if let Ok(inner) = std::fs::read_dir(&path) {
                for e in inner.flatten() {
                    if e.path().join("HEAD").is_file() {
                        git_dir(&e.path(), depth + 1, budget, found);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo(dir: &Path, hooks: bool) {
        std::fs::create_dir_all(dir.join(".git")).unwrap();
        std::fs::write(dir.join(".git/HEAD"), "ref: refs/heads/main\n").unwrap();
        std::fs::write(dir.join(".git/config"), "").unwrap();
        if hooks {
            std::fs::create_dir(dir.join(".git/hooks")).unwrap();
        }
    }

    #[test]
    fn finds_repositories_submodules_and_git_files() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().to_owned();
        repo(&root, true);
        repo(&root.join("src/project"), false);
        repo(&root.join("node_modules/dep"), true);
        let sub = root.join(".git/modules/lib");
        std::fs::create_dir_all(sub.join("hooks")).unwrap();
        std::fs::write(sub.join("HEAD"), "x").unwrap();
        std::fs::write(sub.join("config"), "").unwrap();
        std::fs::create_dir_all(root.join("wt")).unwrap();
        std::fs::write(root.join("wt/.git"), "gitdir: elsewhere\n").unwrap();
        let found = find(std::slice::from_ref(&root));
        for p in [
            ".git/hooks",
            ".git/config",
            "src/project/.git/config",
            ".git/modules/lib/hooks",
            ".git/modules/lib/config",
            "wt/.git",
        ] {
            assert!(found.protect.contains(&root.join(p)), "{p}: {found:?}");
        }
        assert_eq!(
            found.missing_hooks,
            vec![root.join("src/project/.git/hooks")]
        );
        assert!(
            !found
                .protect
                .iter()
                .any(|p| p.starts_with(root.join("node_modules")))
        );
        assert!(!found.truncated);
    }

    #[test]
    fn the_budget_bounds_the_search() {
        let t = tempfile::tempdir().unwrap();
        for i in 0..50 {
            std::fs::create_dir_all(t.path().join(format!("d{i}/e"))).unwrap();
        }
        let mut found = Found::default();
        let mut budget = 10;
        walk(t.path(), 0, &mut budget, &mut found);
        assert!(found.truncated);
    }
}
