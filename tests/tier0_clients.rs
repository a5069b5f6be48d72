//! Tier 0 end to end: real clients (curl, git, python `requests` and `websocket-client`) run
//! under `netcage run --tier env` against a recording HTTPS upstream on 127.0.0.1. Every test
//! checks what the upstream received and what the client saw.

mod common;
mod tier0;

const TIER: &str = "env";

include!("tier0/clients_body.rs");
include!("tier0/websocket_body.rs");
