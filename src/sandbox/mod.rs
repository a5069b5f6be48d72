//! Everything privileged or `unsafe`: process attributes, tier detection, and (Tier 1) the
//! namespaces the child runs in.

pub mod detect;
pub mod process;
