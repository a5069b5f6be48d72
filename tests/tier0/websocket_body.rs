// The WebSocket message suite, included by tests/tier0_clients.rs (Tier 0) and
// tests/tier1_clients.rs (Tier 1); `crate::TIER` says which. The client is python
// `websocket-client`, which can send a message in frames of its choosing; the upstream's
// `/ws/messages` route records every message it receives, reassembled, with its frame count.

/// Opens `argv[1]` with websocket-client (through the proxy variables in Tier 0, intercepted
/// in Tier 1), asking for `permessage-deflate`, which netcage must take out of the upgrade.
const WS_PRELUDE: &str = r#"
import json, os, struct, sys, websocket
from websocket import ABNF
url, token = sys.argv[1], sys.argv[2]
# Tier 0 sets https_proxy (websocket-client takes it); Tier 1 intercepts without it.
assert bool(os.environ.get("https_proxy")) == (os.environ["NETCAGE_TEST_TIER"] == "env")
ws = websocket.create_connection(url, timeout=20,
    header=["Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits"],
    sslopt={"ca_certs": os.environ["SSL_CERT_FILE"]})

def send_in_frames(text, cuts):
    """One text message in len(cuts) + 1 frames, cut at the given offsets."""
    bounds = [0] + cuts + [len(text)]
    for i in range(len(bounds) - 1):
        opcode = ABNF.OPCODE_TEXT if i == 0 else ABNF.OPCODE_CONT
        fin = 1 if i == len(bounds) - 2 else 0
        ws.send_frame(ABNF.create_frame(text[bounds[i]:bounds[i + 1]], opcode, fin=fin))

def until(opcode):
    """Frames up to the first with `opcode`: (that frame, opcodes seen before it)."""
    seen = []
    while True:
        op, frame = ws.recv_data_frame(True)
        if op == opcode:
            return frame, seen
        seen.append(op)

def close_code(frame):
    return struct.unpack("!H", frame.data[:2])[0] if len(frame.data) >= 2 else None
"#;

/// The `/ws/messages` URL on the bound host; `query` may be empty.
fn ws_messages_url(fx: &Fx, query: &str) -> String {
    format!("wss://{BOUND}:{}/ws/messages{query}", fx.up.port())
}

fn data_messages(fx: &Fx) -> Vec<WsMessage> {
    fx.up
        .ws_messages()
        .into_iter()
        .filter(|m| m.opcode == common::ws::OP_TEXT || m.opcode == common::ws::OP_BINARY)
        .collect()
}

#[test]
fn websocket_messages_get_tokens_substituted_and_echoed_values_redacted() {
    let fx = Fx::new();
    let script = format!(
        "{WS_PRELUDE}{}",
        r#"
out = {}
# A text message in three frames, the token cut across the first two.
msg = '{"auth":"' + token + '","n":1}'
at = msg.index(token)
send_in_frames(msg, [at + 12, len(msg) - 3])
out["text"] = ws.recv()
# A binary message with the token between bytes that are not text.
ws.send_binary(b"\x00\xff" + token.encode() + b"\xfe\x01")
out["binary"] = ws.recv().hex()
# Pings pass both ways, and pongs come back.
ws.ping("hb-1")
pong, _ = until(ABNF.OPCODE_PONG)
out["pong"] = pong.data.decode()
ws.send("ping me")
out["ping me"] = ws.recv()
ping, _ = until(ABNF.OPCODE_PING)
out["server ping"] = ping.data.decode()
# The close passes to the server, and its close comes back.
ws.send_close(1000, b"bye")
closed, _ = until(ABNF.OPCODE_CLOSE)
out["close"] = close_code(closed)
print(json.dumps(out))
"#
    );
    let token = fx.token();
    // The server echoes each message in 3 frames: the value comes back cut across frames.
    let url = ws_messages_url(&fx, "?echo_frames=3");
    let out = fx.python(&[], &script, &[&url, &token]);
    let result = stdout_json(&out);
    let sent = format!("{{\"auth\":\"{token}\",\"n\":1}}");
    let binary = [&b"\x00\xff"[..], token.as_bytes(), b"\xfe\x01"].concat();
    // What the command saw: its own messages as it sent them, tokens and never the value.
    assert_eq!(result["text"], sent.as_str(), "{}", describe(&out));
    assert_eq!(result["binary"], hex(&binary).as_str(), "{}", describe(&out));
    assert_eq!(result["pong"], "hb-1", "{result}");
    assert_eq!(result["ping me"], "ping me", "{result}");
    assert_eq!(result["server ping"], "srv-ping", "{result}");
    assert_eq!(result["close"], 1000, "{result}");
    assert!(free_of(&out.stdout, SECRET.as_bytes()), "{}", describe(&out));
    assert!(free_of(&out.stderr, SECRET.as_bytes()), "{}", describe(&out));

    // What the server received: the value, each message whole (one frame, however the
    // command cut it), no token.
    let rec = fx.up.wait_for_requests(1, WAIT).remove(0);
    assert_eq!(rec.path(), "/ws/messages");
    assert_eq!(
        rec.header("sec-websocket-extensions"),
        None,
        "permessage-deflate reached the server: {rec:#?}"
    );
    let messages = fx.up.wait_for_ws_message(WAIT, |m| m.close_code() == Some(1000));
    let data = data_messages(&fx);
    assert_eq!(data.len(), 3, "{messages:#?}");
    assert_eq!(data[0].opcode, common::ws::OP_TEXT);
    assert_eq!(
        String::from_utf8_lossy(&data[0].payload),
        format!("{{\"auth\":\"{SECRET}\",\"n\":1}}")
    );
    assert_eq!(data[0].frames, 1, "not reassembled: {:#?}", data[0]);
    assert_eq!(data[1].opcode, common::ws::OP_BINARY);
    assert_eq!(
        data[1].payload,
        [&b"\x00\xff"[..], SECRET.as_bytes(), b"\xfe\x01"].concat()
    );
    assert_eq!(data[2].payload, b"ping me");
    for m in &messages {
        assert!(!contains(&m.payload, b"starpod:"), "a token reached the server: {m:#?}");
    }
    let ping = messages.iter().find(|m| m.opcode == common::ws::OP_PING);
    assert_eq!(ping.map(|m| &m.payload[..]), Some(&b"hb-1"[..]), "{messages:#?}");
    let close = messages.iter().find(|m| m.opcode == common::ws::OP_CLOSE).unwrap();
    assert_eq!(&close.payload[2..], b"bye", "{close:#?}");
    // The server's ping got the command's pong (and netcage's own answer): two pongs.
    let pongs = fx.up.wait_for_ws_message(WAIT, |_| {
        fx.up.ws_messages().iter().filter(|m| m.opcode == common::ws::OP_PONG).count() >= 2
    });
    assert!(
        pongs.iter().filter(|m| m.opcode == common::ws::OP_PONG).all(|m| m.payload == b"srv-ping"),
        "{pongs:#?}"
    );

    // One audit line for each message that carried a token, none for the others.
    fx.wait_audit_count("the WebSocket substitutions", 2, |l| {
        field(l, "kind") == "websocket"
    });
    std::thread::sleep(std::time::Duration::from_millis(300));
    let lines: Vec<Value> = fx
        .audit_lines()
        .into_iter()
        .filter(|l| field(l, "kind") == "websocket")
        .collect();
    assert_eq!(lines.len(), 2, "{lines:#?}");
    for (line, kind) in lines.iter().zip(["text", "binary"]) {
        assert_eq!(field(line, "decision"), "allow", "{line}");
        assert_eq!(field(line, "host"), BOUND, "{line}");
        assert_eq!(line["tokens"][0]["action"], "substitute", "{line}");
        assert_eq!(line["tokens"][0]["where"], format!("websocket:{kind}"), "{line}");
    }
}

#[test]
fn a_websocket_message_with_a_token_for_another_host_closes_with_1008_and_sends_nothing() {
    let fx = Fx::new();
    let script = format!(
        "{WS_PRELUDE}{}",
        r#"
out = {}
ws.send("hello before")
out["first"] = ws.recv()
# The refused message, in two frames: nothing of it may reach the server.
send_in_frames("leading words " + token + " trailing words", [20])
closed, seen = until(ABNF.OPCODE_CLOSE)
out["close"] = close_code(closed)
out["reason"] = closed.data[2:].decode()
out["seen"] = seen
print(json.dumps(out))
"#
    );
    let other = fx.env.seal("other-host-secret-value-77", &[OTHER]);
    let url = ws_messages_url(&fx, "");
    let out = fx.python(&[], &script, &[&url, &other]);
    let result = stdout_json(&out);
    assert_eq!(result["first"], "hello before", "{}", describe(&out));
    assert_eq!(result["close"], 1008, "{}", describe(&out));
    assert!(
        result["reason"].as_str().unwrap().contains("may not go to this host"),
        "{result}"
    );
    assert_eq!(result["seen"], json!([]), "{result}");

    // The server got the first message, then netcage's close: nothing of the refused one.
    let messages = fx.up.wait_for_ws_message(WAIT, |m| m.opcode == common::ws::OP_CLOSE);
    let data = data_messages(&fx);
    assert_eq!(data.len(), 1, "{messages:#?}");
    assert_eq!(data[0].payload, b"hello before");
    let close = messages.iter().find(|m| m.opcode == common::ws::OP_CLOSE).unwrap();
    assert_eq!(close.close_code(), Some(1008), "{close:#?}");
    for m in &messages {
        assert!(
            !contains(&m.payload, b"leading")
                && !contains(&m.payload, b"starpod")
                && !contains(&m.payload, b"other-host-secret"),
            "part of the refused message reached the server: {m:#?}"
        );
    }
    let line = fx.wait_audit("the refused WebSocket message", |l| {
        field(l, "kind") == "websocket" && field(l, "decision") == "block"
    });
    assert_eq!(line["tokens"][0]["action"], "block", "{line}");
    assert_eq!(line["tokens"][0]["where"], "websocket:text", "{line}");
    assert_eq!(line["tokens"][0]["bound_hosts"], json!([OTHER]), "{line}");
    assert!(!line.to_string().contains("other-host-secret"), "{line}");
}

#[test]
fn a_websocket_message_over_the_size_limit_closes_with_1009() {
    let fx = Fx::new();
    let policy = fx.env.path("ws-limit.toml");
    std::fs::write(&policy, "[limits]\nwebsocket_message_mib = 1\n").unwrap();
    let script = format!(
        "{WS_PRELUDE}{}",
        r#"
out = {}
ws.send("small")
out["first"] = ws.recv()
# 1.5 MiB in three frames: over the 1 MiB limit once reassembled.
part = "x" * (512 * 1024)
send_in_frames(part * 3, [len(part), 2 * len(part)])
closed, _ = until(ABNF.OPCODE_CLOSE)
out["close"] = close_code(closed)
print(json.dumps(out))
"#
    );
    let url = ws_messages_url(&fx, "");
    let token = fx.token();
    let out = fx.python(&["--policy", policy.to_str().unwrap()], &script, &[&url, &token]);
    let result = stdout_json(&out);
    assert_eq!(result, json!({"first": "small", "close": 1009}), "{}", describe(&out));
    let messages = fx.up.wait_for_ws_message(WAIT, |m| m.opcode == common::ws::OP_CLOSE);
    let data = data_messages(&fx);
    assert_eq!(data.len(), 1, "{messages:#?}");
    assert_eq!(data[0].payload, b"small");
}

/// Messages being reassembled take their memory from the body budget: while one connection
/// holds a large message unfinished (all of the command's half of the 4 MiB budget), another
/// connection's message finds no room and is closed with 1009 (nothing of it sent); once the
/// first finishes, the room is back.
#[test]
fn websocket_messages_being_reassembled_share_the_body_budget() {
    let fx = Fx::new();
    let policy = fx.env.path("ws-budget.toml");
    std::fs::write(
        &policy,
        "[limits]\nbody_memory_mib = 4\nbody_wait_secs = 1\nwebsocket_message_mib = 4\n",
    )
    .unwrap();
    let script = format!(
        "{WS_PRELUDE}{}",
        r#"
import time
def connect():
    return websocket.create_connection(url, timeout=20,
        sslopt={"ca_certs": os.environ["SSL_CERT_FILE"]})
out = {}
part = "a" * (768 * 1024)
# The first connection sends 1.5 MiB of a message and waits: the proxy holds it.
ws.send_frame(ABNF.create_frame(part, ABNF.OPCODE_TEXT, fin=0))
ws.send_frame(ABNF.create_frame(part, ABNF.OPCODE_CONT, fin=0))
time.sleep(1)
# A second connection's 1 MiB message finds no room. (recv_frame: no close reply, which
# could meet a reset: netcage stops reading that connection.)
other = connect()
other.send("b" * (1024 * 1024))
while True:
    frame = other.recv_frame()
    if frame.opcode == ABNF.OPCODE_CLOSE:
        out["second"] = [close_code(frame), frame.data[2:].decode()]
        break
# The first message ends; its echo comes back; then there is room again.
ws.send_frame(ABNF.create_frame("end", ABNF.OPCODE_CONT, fin=1))
out["first"] = len(ws.recv())
third = connect()
third.send("c" * (1024 * 1024))
out["third"] = len(third.recv())
print(json.dumps(out))
"#
    );
    let url = ws_messages_url(&fx, "");
    let token = fx.token();
    let out = fx.python(&["--policy", policy.to_str().unwrap()], &script, &[&url, &token]);
    let result = stdout_json(&out);
    assert_eq!(result["second"][0], 1009, "{}", describe(&out));
    assert!(
        result["second"][1]
            .as_str()
            .unwrap()
            .contains("limits.body_memory_mib"),
        "{result}"
    );
    assert_eq!(result["first"], 2 * 768 * 1024 + 3, "{result}");
    assert_eq!(result["third"], 1024 * 1024, "{result}");
    // What the upstream received: the first and third messages whole, nothing of the second.
    fx.up.wait_for_ws_message(WAIT, |m| m.payload.first() == Some(&b'c'));
    let data = data_messages(&fx);
    let firsts: Vec<u8> = data.iter().filter_map(|m| m.payload.first().copied()).collect();
    assert_eq!(firsts, b"ac", "{data:#?}");
    assert_eq!(data[0].payload.len(), 2 * 768 * 1024 + 3);
}

#[test]
fn a_websocket_message_with_a_guarded_real_value_for_another_host_closes_with_1008() {
    let fx = Fx::new();
    let script = format!(
        "{WS_PRELUDE}{}",
        r#"
# `token` is the real value here: it reached the command by accident.
send_in_frames("value: " + token + " end", [12])
closed, seen = until(ABNF.OPCODE_CLOSE)
print(json.dumps({"close": close_code(closed), "seen": seen}))
"#
    );
    let url = format!("wss://{OTHER}:{}/ws/messages", fx.up.port());
    let mut cmd = fx.run_cmd(
        &["--seal", "TIER0_TOKEN=api.github.com"],
        &["python3", "-c", &script, &url, SECRET],
    );
    cmd.env("TIER0_TOKEN", SECRET);
    let out = run_with_timeout(&mut cmd, RUN_TIMEOUT);
    let result = stdout_json(&out);
    assert_eq!(result, json!({"close": 1008, "seen": []}), "{}", describe(&out));
    let messages = fx.up.wait_for_ws_message(WAIT, |m| m.close_code() == Some(1008));
    assert!(data_messages(&fx).is_empty(), "{messages:#?}");
    for m in &messages {
        assert!(!contains(&m.payload, SECRET.as_bytes()), "{m:#?}");
    }
    let line = fx.wait_audit("the guarded value in a WebSocket message", |l| {
        field(l, "kind") == "websocket" && field(l, "decision") == "block"
    });
    assert_eq!(line["host"], OTHER, "{line}");
    assert_eq!(line["tokens"][0]["where"], "websocket:text", "{line}");
}

#[test]
fn strip_mode_takes_another_hosts_token_out_of_a_websocket_message_and_server_closes_pass() {
    let fx = Fx::new();
    let policy = fx.env.path("ws-strip.toml");
    std::fs::write(&policy, "[secrets]\non_host_mismatch = \"strip\"\n").unwrap();
    let script = format!(
        "{WS_PRELUDE}{}",
        r#"
out = {}
ws.send("a " + token + " b")
out["echo"] = ws.recv()
# The server closes with its own code and reason: they reach the command.
ws.send("close me")
closed, seen = until(ABNF.OPCODE_CLOSE)
out["close"] = close_code(closed)
out["reason"] = closed.data[2:].decode()
print(json.dumps(out))
"#
    );
    let other = fx.env.seal("other-host-secret-value-77", &[OTHER]);
    let url = ws_messages_url(&fx, "");
    let out = fx.python(&["--policy", policy.to_str().unwrap()], &script, &[&url, &other]);
    let result = stdout_json(&out);
    assert_eq!(
        result,
        json!({"echo": "a  b", "close": 4000, "reason": "server bye"}),
        "{}",
        describe(&out)
    );
    fx.up.wait_for_ws_message(WAIT, |m| m.opcode == common::ws::OP_CLOSE);
    let data = data_messages(&fx);
    assert_eq!(data.len(), 2, "{data:#?}");
    assert_eq!(data[0].payload, b"a  b");
    assert_eq!(data[1].payload, b"close me");
    let line = fx.wait_audit("the stripped WebSocket token", |l| {
        field(l, "kind") == "websocket"
    });
    assert_eq!(field(&line, "decision"), "allow", "{line}");
    assert_eq!(line["tokens"][0]["action"], "strip", "{line}");
}
