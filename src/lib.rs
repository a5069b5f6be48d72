//! netcage: run a command that can *use* credentials without being able to *read* them.
//!
//! # Layout
//! - [`token`]: the `starpod:v1` codec and key loading (pure).
//! - [`hosts`]: host patterns and matching (pure).
//! - [`datadir`]: the default data dir (`./.starpod/db` in a Starpod project, else the user's).
//! - [`keytrust`]: which key files are used without asking (a planted one is refused).
//! - [`scan`]: finding and substituting tokens in headers, targets and streamed bodies, finding
//!   real values there (the leak guard), and redacting real values from responses (pure).
//! - [`policy`]: `netcage.toml` and egress decisions (pure).
//! - [`seal`]: `--seal NAME[=HOSTS]` and the default hosts of well-known variables.
//! - [`aws`]: `--seal-aws`: real AWS keys, their stand-ins for the command, profile reading.
//! - [`credfiles`]: credential files (`~/.git-credentials`, `~/.npmrc`, …) rewritten with
//!   tokens in place of their secrets, one small rewriter per format (pure).
//! - [`vault`]: the Starpod vault (`vault.db`) read-only, its entries decrypted for `--vault`.
//! - [`env`]: the command's environment: sealed values replaced by tokens, credential-named
//!   variables and agent sockets withheld (pure).
//! - [`audit`]: audit events and the JSONL sink.
//! - [`learn`]: `--learn`, the hosts a run reached as a default-deny policy.
//! - [`ca`]: the local CA, leaf certificates, the trust bundle.
//! - [`proxy`]: listeners, TLS interception, the HTTP service, the upstream client.
//! - [`sandbox`]: tiers, process attributes, namespaces — the only place with `unsafe`, with
//!   [`allocator`] (the process's allocator: glibc's malloc, large blocks on cache lines).
//!
//! Data flows: the CLI resolves a [`proxy::ProxyConfig`]; the proxy accepts a connection,
//! terminates TLS with a leaf from [`ca`], and for each request asks [`policy`] whether the host
//! may be reached, looks for the real values it holds that may not go there (the leak guard:
//! [`scan::LeakSet`] over what the client sent), runs [`scan`] over headers, target and body with
//! a decision callback that opens each token ([`token`]) and checks its hosts ([`hosts`]),
//! forwards upstream, redacts the response, and writes one [`audit`] line.

pub mod allocator;
#[deny(missing_docs)]
mod api;
pub mod audit;
pub mod aws;
pub mod ca;
pub mod credfiles;
pub mod datadir;
mod der;
pub mod env;
pub mod hosts;
pub mod keytrust;
pub mod learn;
pub mod policy;
pub mod proxy;
pub mod sandbox;
pub mod scan;
pub mod seal;
pub mod stats;
pub mod timing;
pub mod token;
pub mod vault;

#[cfg(test)]
mod fuzz;

pub use api::{
    Child, Command, Error, Launching, Output, Sandbox, SandboxBuilder, Signaller, Started, Stdio,
};
