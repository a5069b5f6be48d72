//! The client matrix in Tier 0 (`--tier env`): real clients (pip, uv, npm, cargo, git, go, the
//! OpenAI and Anthropic SDKs) do their real jobs through the proxy with only a token.

mod common;
mod tier0;

const TIER: &str = "env";

include!("tier0/matrix_body.rs");
