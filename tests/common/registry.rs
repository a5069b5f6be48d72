//! Package registries and a git repository for the client matrix (tests/tier0/matrix_body.rs),
//! as files the test upstream serves under `/files/` ([`super::upstream::Upstream::serve_files`]),
//! each answering 401 unless the request carries the secret (Bearer, raw `Authorization`, or
//! the Basic password or user).
//!
//! Made on the host with ordinary tools (python3's zipfile and hashlib, tar, git), in the formats
//! the clients read: a PEP 503 simple index with one wheel (pip, uv), an npm registry document
//! and tarball (npm), a sparse cargo registry with `auth-required` (cargo), a GOPROXY tree (go),
//! and a bare repository for git's dumb HTTP protocol (git clone).

use std::path::Path;
use std::process::Command;

/// The package every registry serves, and what importing it shows.
pub const PACKAGE: &str = "nctest";
pub const VALUE: &str = "netcage-matrix-42";
/// The Go module path.
pub const GO_MODULE: &str = "example.test/nctest";

fn sh(dir: &Path, script: &str, args: &[&str]) {
    let mut cmd = Command::new("sh");
    cmd.arg("-ec").arg(script).arg("sh").args(args);
    fixture(dir, cmd, script);
}

fn python(dir: &Path, script: &str, args: &[&str]) {
    let mut cmd = Command::new("python3");
    cmd.arg("-c").arg(script).args(args);
    fixture(dir, cmd, script);
}

/// Runs one step of making the fixtures in `dir`; panics with its output if it fails.
fn fixture(dir: &Path, mut cmd: Command, script: &str) {
    let out = cmd.current_dir(dir).output().expect("a fixture tool runs");
    assert!(
        out.status.success(),
        "fixture script failed: {script}\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Writes every registry under `root` (the directory served as `/files/`); `base` is the URL
/// of `/files` as the clients reach it (`https://HOST:PORT/files`).
pub fn make_all(root: &Path, base: &str) {
    std::fs::create_dir_all(root).unwrap();
    python(root, PYTHON_REGISTRIES, &[base, PACKAGE, VALUE, GO_MODULE]);
    npm(root, base);
    cargo(root, base);
    git(root);
}

/// The wheel, the simple index, the GOPROXY tree (zip files are python's).
const PYTHON_REGISTRIES: &str = r#"
import base64, hashlib, json, os, sys, zipfile
base, pkg, value, gomod = sys.argv[1:5]

# PEP 427 wheel and a PEP 503 simple index.
os.makedirs('pypi', exist_ok=True)
files = {
    f'{pkg}/__init__.py': f'VALUE = {value!r}\n',
    f'{pkg}-0.1.0.dist-info/METADATA': f'Metadata-Version: 2.1\nName: {pkg}\nVersion: 0.1.0\n',
    f'{pkg}-0.1.0.dist-info/WHEEL': 'Wheel-Version: 1.0\nGenerator: netcage-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n',
}
record = []
for name, text in files.items():
    data = text.encode()
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b'=').decode()
    record.append(f'{name},sha256={digest},{len(data)}')
record.append(f'{pkg}-0.1.0.dist-info/RECORD,,')
files[f'{pkg}-0.1.0.dist-info/RECORD'] = '\n'.join(record) + '\n'
wheel = f'{pkg}-0.1.0-py3-none-any.whl'
with zipfile.ZipFile(f'pypi/{wheel}', 'w') as z:
    for name, text in files.items():
        z.writestr(name, text)
sha = hashlib.sha256(open(f'pypi/{wheel}', 'rb').read()).hexdigest()
os.makedirs(f'simple/{pkg}', exist_ok=True)
with open('simple/index.html', 'w') as f:
    f.write(f'<!DOCTYPE html><html><body><a href="{pkg}/">{pkg}</a></body></html>\n')
with open(f'simple/{pkg}/index.html', 'w') as f:
    f.write(f'<!DOCTYPE html><html><body><a href="../../pypi/{wheel}#sha256={sha}">{wheel}</a></body></html>\n')

# GOPROXY protocol: list, .info, .mod, .zip.
d = f'goproxy/{gomod}/@v'
os.makedirs(d, exist_ok=True)
mod = f'module {gomod}\n\ngo 1.19\n'
open(f'{d}/list', 'w').write('v0.1.0\n')
open(f'{d}/v0.1.0.info', 'w').write(json.dumps({'Version': 'v0.1.0', 'Time': '2026-01-01T00:00:00Z'}))
open(f'{d}/v0.1.0.mod', 'w').write(mod)
with zipfile.ZipFile(f'{d}/v0.1.0.zip', 'w') as z:
    z.writestr(f'{gomod}@v0.1.0/go.mod', mod)
    z.writestr(f'{gomod}@v0.1.0/{pkg}.go', f'package {pkg}\n\nconst Value = "{value}"\n')
"#;

fn npm(root: &Path, base: &str) {
    let stage = root.join("npm-stage/package");
    std::fs::create_dir_all(&stage).unwrap();
    std::fs::write(
        stage.join("package.json"),
        format!(r#"{{"name":"{PACKAGE}","version":"0.1.0","main":"index.js"}}"#),
    )
    .unwrap();
    std::fs::write(
        stage.join("index.js"),
        format!("module.exports = {{ value: '{VALUE}' }};\n"),
    )
    .unwrap();
    let dir = root.join(format!("npm/{PACKAGE}/-"));
    std::fs::create_dir_all(&dir).unwrap();
    let tgz = dir.join(format!("{PACKAGE}-0.1.0.tgz"));
    sh(
        &root.join("npm-stage"),
        "tar czf \"$1\" package",
        &[tgz.to_str().unwrap()],
    );
    std::fs::remove_dir_all(root.join("npm-stage")).unwrap();
    python(
        root,
        r#"
import base64, hashlib, json, sys
base, pkg, tgz = sys.argv[1:4]
data = open(tgz, 'rb').read()
doc = {'name': pkg, 'dist-tags': {'latest': '0.1.0'}, 'versions': {'0.1.0': {
    'name': pkg, 'version': '0.1.0', 'main': 'index.js',
    'dist': {'tarball': f'{base}/npm/{pkg}/-/{pkg}-0.1.0.tgz',
             'integrity': 'sha512-' + base64.b64encode(hashlib.sha512(data).digest()).decode(),
             'shasum': hashlib.sha1(data).hexdigest()}}}}
open(f'npm/{pkg}/index.json', 'w').write(json.dumps(doc))
"#,
        &[base, PACKAGE, tgz.to_str().unwrap()],
    );
}

/// A sparse registry: `config.json` (`auth-required`), the index line, the `.crate`.
fn cargo(root: &Path, base: &str) {
    let stage = root.join(format!("cargo-stage/{PACKAGE}-0.1.0"));
    std::fs::create_dir_all(stage.join("src")).unwrap();
    std::fs::write(
        stage.join("Cargo.toml"),
        format!("[package]\nname = \"{PACKAGE}\"\nversion = \"0.1.0\"\nedition = \"2021\"\n"),
    )
    .unwrap();
    std::fs::write(
        stage.join("src/lib.rs"),
        format!("pub const VALUE: &str = \"{VALUE}\";\n"),
    )
    .unwrap();
    let dl = root.join(format!("cargo/dl/{PACKAGE}/0.1.0"));
    std::fs::create_dir_all(&dl).unwrap();
    let krate = dl.join("download");
    sh(
        &root.join("cargo-stage"),
        "tar czf \"$1\" \"$2\"",
        &[krate.to_str().unwrap(), &format!("{PACKAGE}-0.1.0")],
    );
    std::fs::remove_dir_all(root.join("cargo-stage")).unwrap();
    python(
        root,
        r#"
import hashlib, json, os, sys
base, pkg, krate = sys.argv[1:4]
os.makedirs(f'cargo/index/{pkg[:2]}/{pkg[2:4]}', exist_ok=True)
open('cargo/index/config.json', 'w').write(json.dumps({'dl': f'{base}/cargo/dl', 'auth-required': True}))
line = {'name': pkg, 'vers': '0.1.0', 'deps': [], 'features': {}, 'yanked': False,
        'cksum': hashlib.sha256(open(krate, 'rb').read()).hexdigest()}
open(f'cargo/index/{pkg[:2]}/{pkg[2:4]}/{pkg}', 'w').write(json.dumps(line) + '\n')
"#,
        &[base, PACKAGE, krate.to_str().unwrap()],
    );
}

/// A bare repository with one commit (README holding [`VALUE`]), ready for dumb HTTP.
fn git(root: &Path) {
    sh(
        root,
        r#"
export GIT_CONFIG_NOSYSTEM=1 HOME="$PWD" GIT_AUTHOR_NAME=t GIT_AUTHOR_EMAIL=t@t GIT_COMMITTER_NAME=t GIT_COMMITTER_EMAIL=t@t
git init -q -b main work
echo "$1" > work/README
git -C work add README
git -C work commit -q -m one
git clone -q --bare work repo.git
git -C repo.git update-server-info
rm -rf work .gitconfig
"#,
        &[VALUE],
    );
}
