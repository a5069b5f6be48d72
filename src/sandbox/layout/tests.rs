use std::path::{Path, PathBuf};

use super::*;

/// A scratch tree: `home/`, `home/proj/` (the working directory) and `data/`.
struct Tree {
    _dir: tempfile::TempDir,
    root: PathBuf,
}

impl Tree {
    /// Not under /tmp: that is a fresh tmpfs in the sandbox, which changes the view.
    fn new() -> Tree {
        let dir = tempfile::tempdir_in(concat!(env!("CARGO_MANIFEST_DIR"), "/target")).unwrap();
        let root = std::fs::canonicalize(dir.path()).unwrap();
        std::fs::create_dir_all(root.join("home/proj")).unwrap();
        Tree { _dir: dir, root }
    }

    fn p(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    fn dir(&self, rel: &str) -> PathBuf {
        let p = self.p(rel);
        std::fs::create_dir_all(&p).unwrap();
        p
    }

    fn file(&self, rel: &str) -> PathBuf {
        let p = self.p(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, "x").unwrap();
        p
    }

    /// Working directory `home/proj`, `$HOME` = `home`, data dir `home/proj/.starpod/db`.
    fn input(&self) -> Input {
        Input {
            cwd: self.p("home/proj"),
            home: Some(self.p("home")),
            data_dir: self.dir("home/proj/.starpod/db"),
            ..Input::default()
        }
    }
}

fn pos(ops: &[Op], want: &Op) -> usize {
    ops.iter()
        .position(|op| op == want)
        .unwrap_or_else(|| panic!("{want:?} is not in {ops:#?}"))
}

fn has(ops: &[Op], want: &Op) -> bool {
    ops.iter().any(|op| op == want)
}

/// The ops that concern paths under `root` (the machine's own /etc/shadow etc. aside).
fn under(ops: &[Op], root: &Path) -> Vec<Op> {
    ops.iter()
        .filter(|op| match op {
            Op::HideDir { path }
            | Op::HideFile { path }
            | Op::Pin { path }
            | Op::ReadOnly { path } => path.starts_with(root),
            _ => true,
        })
        .cloned()
        .collect()
}

#[test]
fn the_working_directory_is_kept_writable_around_a_read_only_root() {
    let t = Tree::new();
    let input = t.input();
    let l = layout(&input);
    let cwd = input.cwd.clone();
    let capture = pos(
        &l.ops,
        &Op::Capture {
            slot: 0,
            path: cwd.clone(),
        },
    );
    let ro = pos(&l.ops, &Op::ReadOnlyRoot);
    let attach = pos(
        &l.ops,
        &Op::Attach {
            slot: 0,
            path: cwd.clone(),
        },
    );
    assert!(capture < ro && ro < attach, "{:#?}", l.ops);
    if Path::new("/tmp").is_dir() && !Path::new("/tmp").is_symlink() {
        let tmp = pos(
            &l.ops,
            &Op::Tmpfs {
                path: "/tmp".into(),
                mode: 0o1777,
            },
        );
        // The working directory may live in /tmp: it goes back on top of the fresh tmpfs.
        assert!(ro < tmp && tmp < attach, "{:#?}", l.ops);
    }
    assert!(has(&l.ops, &Op::Dev));
    assert_eq!(l.writable, vec![cwd]);
}

#[test]
fn home_gets_a_throwaway_layer_and_its_credentials_are_hidden() {
    let t = Tree::new();
    let ssh = t.file("home/.ssh/id_ed25519").parent().unwrap().to_owned();
    let netrc = t.file("home/.netrc");
    let bashrc = t.file("home/.bashrc");
    let l = layout(&t.input());
    let home = t.p("home");
    let overlay = pos(&l.ops, &Op::Overlay { path: home.clone() });
    let attach = pos(
        &l.ops,
        &Op::Attach {
            slot: 0,
            path: t.p("home/proj"),
        },
    );
    assert!(
        overlay < attach,
        "the working directory goes on top of the layer"
    );
    assert!(has(&l.ops, &Op::HideDir { path: ssh.clone() }));
    assert!(has(
        &l.ops,
        &Op::HideFile {
            path: netrc.clone()
        }
    ));
    assert!(l.hidden.contains(&ssh) && l.hidden.contains(&netrc));
    // Behind the throwaway layer nothing persists: no pins, start-up files stay as they are.
    let ops = under(&l.ops, &home);
    assert!(
        !ops.iter()
            .any(|op| matches!(op, Op::Pin { path } if !path.starts_with(t.p("home/proj")))),
        "{ops:#?}"
    );
    assert!(!has(&l.ops, &Op::ReadOnly { path: bashrc }));
}

#[test]
fn with_home_as_the_working_directory_start_up_files_stay_read_only_and_parents_are_pinned() {
    let t = Tree::new();
    let home = t.p("home");
    let gh = t
        .file("home/.config/gh/hosts.yml")
        .parent()
        .unwrap()
        .to_owned();
    let fish = t
        .file("home/.config/fish/config.fish")
        .parent()
        .unwrap()
        .to_owned();
    let bashrc = t.file("home/.bashrc");
    let mut input = t.input();
    input.cwd = home.clone();
    let l = layout(&input);
    assert!(
        !l.ops.iter().any(|op| matches!(op, Op::Overlay { .. })),
        "{:#?}",
        l.ops
    );
    let config = t.p("home/.config");
    let pin = pos(
        &l.ops,
        &Op::Pin {
            path: config.clone(),
        },
    );
    assert!(pin < pos(&l.ops, &Op::HideDir { path: gh }));
    assert!(pin < pos(&l.ops, &Op::ReadOnly { path: fish }));
    assert!(has(&l.ops, &Op::ReadOnly { path: bashrc }));
    assert_eq!(
        l.ops
            .iter()
            .filter(|op| **op
                == Op::Pin {
                    path: config.clone()
                })
            .count(),
        1,
        "one pin per directory"
    );
}

#[test]
fn every_directory_between_the_working_directory_and_the_data_dir_is_pinned() {
    let t = Tree::new();
    let input = t.input();
    let l = layout(&input);
    let starpod = t.p("home/proj/.starpod");
    let pin = pos(&l.ops, &Op::Pin { path: starpod });
    let data = pos(
        &l.ops,
        &Op::DataDir {
            path: input.data_dir.clone(),
            files: vec![],
        },
    );
    assert!(
        pos(
            &l.ops,
            &Op::Attach {
                slot: 0,
                path: input.cwd.clone()
            }
        ) < pin
    );
    assert!(pin < data, "{:#?}", l.ops);
    // The working directory itself is a mount point already (its attach).
    assert!(!has(
        &l.ops,
        &Op::Pin {
            path: input.cwd.clone()
        }
    ));
}

#[test]
fn key_file_audit_log_and_state_outside_the_data_dir_are_covered() {
    let t = Tree::new();
    let mut input = t.input();
    let key = t.file("home/proj/keys/k");
    let audit = t.file("home/proj/audit.jsonl");
    let inside = t.file("home/proj/.starpod/db/.vault_key");
    let state = t.dir("home/.local/share/netcage");
    input.secret_files = vec![key.clone(), audit.clone(), inside.clone()];
    input.state_dir = Some(state.clone());
    let l = layout(&input);
    assert!(has(&l.ops, &Op::HideFile { path: key }));
    assert!(has(
        &l.ops,
        &Op::Pin {
            path: t.p("home/proj/keys")
        }
    ));
    assert!(has(&l.ops, &Op::HideFile { path: audit }));
    assert!(has(&l.ops, &Op::HideDir { path: state }));
    assert!(
        !has(&l.ops, &Op::HideFile { path: inside }),
        "covered by the data dir"
    );
}

#[test]
fn show_opts_out_hide_adds_and_write_wins() {
    let t = Tree::new();
    let npmrc = t.file("home/.npmrc");
    let aws = t.dir("home/.aws");
    let mine = t.file("home/.config/myapp/token");
    let mut input = t.input();
    input.show = vec![npmrc.clone()];
    input.hide = vec![mine.clone()];
    input.write = vec![aws.clone()];
    let l = layout(&input);
    assert!(!has(&l.ops, &Op::HideFile { path: npmrc }));
    assert!(has(&l.ops, &Op::HideFile { path: mine }));
    assert!(
        !has(&l.ops, &Op::HideDir { path: aws.clone() }),
        "--write ~/.aws wins"
    );
    assert!(l.writable.contains(&aws));
}

#[test]
fn a_symlinked_credential_directory_hides_its_target() {
    let t = Tree::new();
    let real = t.dir("home/dotfiles/ssh");
    std::os::unix::fs::symlink(&real, t.p("home/.ssh")).unwrap();
    let l = layout(&t.input());
    assert!(
        has(&l.ops, &Op::HideDir { path: real.clone() }),
        "{:#?}",
        l.ops
    );
    assert!(l.hidden.contains(&real));
}

#[test]
fn git_hooks_and_config_in_a_writable_repository_are_read_only() {
    let t = Tree::new();
    let hooks = t.dir("home/proj/.git/hooks");
    let config = t.file("home/proj/.git/config");
    t.file("home/proj/.git/HEAD");
    let mut input = t.input();
    input.git = crate::sandbox::gitdirs::find(&writable_roots(&input.cwd, &input.write)).protect;
    let l = layout(&input);
    let pin = pos(
        &l.ops,
        &Op::Pin {
            path: t.p("home/proj/.git"),
        },
    );
    assert!(pin < pos(&l.ops, &Op::ReadOnly { path: hooks }));
    assert!(pin < pos(&l.ops, &Op::ReadOnly { path: config }));
}

#[test]
fn a_start_up_file_linked_into_the_working_directory_stays_read_only() {
    let t = Tree::new();
    let real = t.file("home/proj/dotfiles/bashrc");
    std::os::unix::fs::symlink(&real, t.p("home/.bashrc")).unwrap();
    let l = layout(&t.input());
    assert!(has(&l.ops, &Op::ReadOnly { path: real }), "{:#?}", l.ops);
    assert!(has(
        &l.ops,
        &Op::Pin {
            path: t.p("home/proj/dotfiles")
        }
    ));
}

#[test]
fn a_system_directory_as_working_directory_stays_read_only() {
    let t = Tree::new();
    let mut input = t.input();
    input.cwd = PathBuf::from("/");
    let l = layout(&input);
    assert!(l.writable.is_empty(), "{l:#?}");
    assert!(!l.ops.iter().any(|op| matches!(op, Op::Attach { .. })));
    assert!(l.notes[0].contains("read-only"), "{:?}", l.notes);
    input.cwd = PathBuf::from("/usr/lib");
    assert!(layout(&input).writable.is_empty());
}

#[test]
fn host_sockets_are_covered_where_nothing_else_covers_them() {
    let t = Tree::new();
    let in_cwd = t.p("home/proj/host.sock");
    let in_home = t.p("home/agent.sock");
    let _a = std::os::unix::net::UnixListener::bind(&in_cwd).unwrap();
    let _b = std::os::unix::net::UnixListener::bind(&in_home).unwrap();
    let not_a_socket = t.file("home/proj/was.sock");
    let mut input = t.input();
    input.host_sockets = vec![in_cwd.clone(), in_home.clone(), not_a_socket.clone()];
    let l = layout(&input);
    assert!(has(&l.ops, &Op::HideFile { path: in_cwd }));
    assert!(
        !has(
            &l.ops,
            &Op::HideFile {
                path: in_home.clone()
            }
        ),
        "the $HOME layer covers it"
    );
    assert!(!has(&l.ops, &Op::HideFile { path: not_a_socket }));
    input.cwd = t.p("home");
    let l = layout(&input);
    assert!(
        has(&l.ops, &Op::HideFile { path: in_home }),
        "a writable $HOME has no layer"
    );
}

#[test]
fn paths_are_made_absolute_without_the_filesystem() {
    let cwd = Path::new("/work/proj");
    assert_eq!(
        absolute(Path::new("a/../b/./c"), cwd),
        PathBuf::from("/work/proj/b/c")
    );
    assert_eq!(absolute(Path::new("/x/y/.."), cwd), PathBuf::from("/x"));
    assert_eq!(
        expand("~/.ssh", Some(Path::new("/h"))),
        Some(PathBuf::from("/h/.ssh"))
    );
    assert_eq!(expand("~/.ssh", None), None);
    assert_eq!(tilde(Path::new("/h/.ssh"), Some(Path::new("/h"))), "~/.ssh");
    assert_eq!(
        tilde(Path::new("/etc/shadow"), Some(Path::new("/h"))),
        "/etc/shadow"
    );
}

#[test]
fn sealed_files_are_shown_in_place_of_the_real_ones() {
    let t = Tree::new();
    let netrc = t.file("home/.netrc");
    let hosts = t.file("home/.config/gh/hosts.yml");
    let gh = hosts.parent().unwrap().to_owned();
    let npmrc = t.file("home/.npmrc");
    let elsewhere = t.file("home/proj/creds/.netrc");
    let mut input = t.input();
    input.sealed = vec![
        (netrc.clone(), b"machine a password T1".to_vec()),
        (hosts.clone(), b"github.com:\n  oauth_token: T2\n".to_vec()),
        (npmrc.clone(), b"_authToken=T3".to_vec()),
        (elsewhere.clone(), b"machine b password T4".to_vec()),
    ];
    input.show = vec![npmrc.clone()];
    let l = layout(&input);
    assert!(has(
        &l.ops,
        &Op::SealedFile {
            path: netrc.clone(),
            contents: b"machine a password T1".to_vec()
        }
    ));
    assert!(!has(
        &l.ops,
        &Op::HideFile {
            path: netrc.clone()
        }
    ));
    // The hidden directory becomes a tmpfs holding only the sealed file.
    assert!(has(
        &l.ops,
        &Op::SealedDir {
            path: gh.clone(),
            files: vec![(
                "hosts.yml".into(),
                b"github.com:\n  oauth_token: T2\n".to_vec()
            )]
        }
    ));
    assert!(!has(&l.ops, &Op::HideDir { path: gh.clone() }));
    // Shown after all: neither sealed nor hidden.
    assert!(!l.ops.iter().any(
        |op| matches!(op, Op::SealedFile { path, .. } | Op::HideFile { path } if *path == npmrc)
    ));
    // Asked for in a writable directory: covered, its parent pinned.
    let creds = t.p("home/proj/creds");
    assert!(
        pos(&l.ops, &Op::Pin { path: creds })
            < pos(
                &l.ops,
                &Op::SealedFile {
                    path: elsewhere.clone(),
                    contents: b"machine b password T4".to_vec()
                }
            )
    );
    assert_eq!(l.sealed.len(), 3, "{:?}", l.sealed);
    assert!(l.hidden.contains(&gh) && !l.hidden.contains(&netrc));
}
