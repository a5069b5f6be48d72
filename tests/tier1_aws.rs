//! SigV4 re-signing (`--seal-aws`) in Tier 1 (`--tier netns`, root): the aws CLI and boto3
//! intercepted transparently, without proxy variables (tests/tier0/aws_body.rs).

mod common;

const TIER: &str = "netns";

include!("tier0/aws_body.rs");
