//! An agent server in miniature: one netcage sandbox for the whole session, and every tool
//! call the "model" makes runs in it as a `bash -c` command. The commands see a token in
//! `$API_TOKEN`; the real value reaches only the API host, and the audit log names the tool
//! call behind every request.
//!
//! ```text
//! cargo build && NETCAGE=target/debug/netcage API_TOKEN=real-secret \
//!   cargo run --example agent_server -- https://api.example.com/v1/ping
//! ```
//! (as root for the rootful sandbox, or as any user where unprivileged user namespaces are
//! allowed; `netcage doctor` says which). `tests/library.rs` runs this same code against a
//! local HTTPS server and checks what it received.

use std::time::Duration;

use netcage::audit::AuditLog;
use netcage::{Sandbox, SandboxBuilder, Stdio};

/// What one tool call produced.
#[derive(Debug)]
pub struct ToolResult {
    pub exec_id: String,
    pub exit_code: Option<i32>,
    pub stdout: String,
}

/// The sandbox this agent needs: `API_TOKEN` usable towards `api_host` only, everything
/// audited. `builder` lets the caller add its own settings (data dir, pins, extra CAs).
pub fn agent_sandbox(
    builder: SandboxBuilder,
    secret: &str,
    api_host: &str,
    audit: std::sync::Arc<AuditLog>,
) -> SandboxBuilder {
    builder.seal("API_TOKEN", secret, &[api_host]).audit(audit)
}

/// One tool call: a shell command line in the sandbox, its output collected.
pub async fn tool_call(sandbox: &Sandbox, line: &str) -> Result<ToolResult, netcage::Error> {
    let child = sandbox
        .command("bash")
        .arg("-c")
        .arg(line)
        .stdin(Stdio::Null)
        .stdout(Stdio::Piped)
        .spawn()
        .await?;
    let exec_id = child.exec_id.clone();
    let out = child
        .wait_with_output()
        .await
        .map_err(|e| netcage::Error(e.to_string()))?;
    Ok(ToolResult {
        exec_id,
        exit_code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
    })
}

/// The session: a few tool calls at once, as a model that plans in parallel would make.
pub async fn session(sandbox: &Sandbox, url: &str) -> Result<Vec<ToolResult>, netcage::Error> {
    let first = format!("curl -sS --fail -H \"Authorization: Bearer $API_TOKEN\" {url}/1");
    let second = format!("curl -sS --fail -H \"Authorization: Bearer $API_TOKEN\" {url}/2");
    // What the tool itself can see: a token, not the secret.
    let third = "printf '%s' \"$API_TOKEN\"";
    let (a, b, c) = tokio::join!(
        tool_call(sandbox, &first),
        tool_call(sandbox, &second),
        tool_call(sandbox, third)
    );
    Ok(vec![a?, b?, c?])
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let Some(url) = std::env::args().nth(1) else {
        eprintln!("usage: API_TOKEN=... agent_server https://HOST/PATH");
        return std::process::ExitCode::from(2);
    };
    let Ok(secret) = std::env::var("API_TOKEN") else {
        eprintln!(
            "agent_server: set API_TOKEN to the real secret (the tools will only see a token)"
        );
        return std::process::ExitCode::from(2);
    };
    let host = url
        .split("://")
        .nth(1)
        .and_then(|rest| rest.split(['/', ':', '?']).next())
        .unwrap_or_default()
        .to_owned();
    let audit =
        std::sync::Arc::new(AuditLog::open("agent-audit.jsonl").expect("open agent-audit.jsonl"));
    let builder = agent_sandbox(Sandbox::builder(), &secret, &host, audit.clone())
        // The tools must not inherit this server's own secrets.
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin");
    let sandbox = match builder.start().await {
        Ok(sandbox) => sandbox,
        Err(e) => {
            eprintln!("agent_server: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    match session(&sandbox, &url).await {
        Ok(results) => {
            for r in results {
                println!(
                    "[{}] exit {:?}: {}",
                    r.exec_id,
                    r.exit_code,
                    r.stdout.trim()
                );
            }
        }
        Err(e) => eprintln!("agent_server: {e}"),
    }
    sandbox.shutdown(Duration::from_secs(2)).await;
    audit.flush();
    println!("audit log: agent-audit.jsonl");
    std::process::ExitCode::SUCCESS
}
