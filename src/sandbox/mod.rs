//! Everything privileged or `unsafe`: process attributes, tier detection, and the Tier 1
//! namespaces the command runs in.
//!
//! `plan` computes what to set up (pure, unit-tested); `launch` applies it through `netlink`,
//! `nft`, mounts and `caps`, and hands the listeners to the proxy through `fdpass`.

mod caps;
pub mod detect;
mod fdpass;
pub mod launch;
mod netlink;
pub mod nflog;
mod nft;
pub mod plan;
pub mod process;
