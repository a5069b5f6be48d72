//! The Tier 0 client suite again, in Tier 1 (`--tier netns`): everything Tier 0 proves must hold
//! in Tier 1 too — there the clients get no proxy variables and are intercepted transparently.

mod common;
mod tier0;

const TIER: &str = "netns";

include!("tier0/clients_body.rs");
include!("tier0/websocket_body.rs");
