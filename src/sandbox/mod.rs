//! Everything privileged or `unsafe`: process attributes, tier detection, and the Tier 1
//! namespaces the command runs in.
//!
//! `plan` computes what to set up (pure, unit-tested); `launch` starts the holder process
//! (`holder`), which applies it (`build`: `netlink`, `nft`, mounts) and hands the listeners to
//! the proxy through `fdpass`; its init then starts commands on request (`control` is the
//! protocol, `execs` the proxy side's client, `owner` tells which exec opened a connection).

pub mod bpf;
mod build;
mod caps;
pub mod cgroups;
pub mod control;
pub mod credentials;
pub mod detect;
pub mod execs;
pub mod fdpass;
pub mod gitdirs;
pub mod holder;
pub mod host_sockets;
pub mod landlock;
pub mod launch;
pub mod layout;
mod mounts;
mod netlink;
pub mod nflog;
pub mod nft;
pub mod owner;
pub mod plan;
pub mod process;
pub mod seccomp;

#[cfg(test)]
mod props;
