//! Property tests (see `crate::fuzz`) for token decoding: a command writes the token text, so
//! [`open`] sees arbitrary and altered tokens; a vault may hold odd payloads, so the payload
//! parser sees arbitrary JSON under a valid seal; key files are parsed from any bytes.

use proptest::prelude::*;

use super::*;
use crate::fuzz::{bytes, check, mutated};

const CASES: u32 = 256;

fn key() -> Key {
    Key::from_bytes([7u8; 32])
}

fn hosts() -> impl Strategy<Value = Vec<String>> {
    prop::collection::vec("[a-z0-9*.-]{0,24}", 0..4)
}

/// Token text: arbitrary text behind the prefix, arbitrary bytes, or a valid token altered.
#[test]
fn open_on_any_text_and_altered_tokens() {
    let valid = (any::<String>(), hosts());
    let strategy = prop_oneof![
        bytes(512).prop_map(|b| (None, b)),
        bytes(512).prop_map(|b| (None, [PREFIX.as_bytes(), &b].concat())),
        mutated(valid.prop_map(|(v, h)| seal(&key(), &v, &h).into_bytes()))
            .prop_map(|(orig, m)| (Some(orig), m)),
    ];
    check("token_open", CASES, strategy, |(original, text)| {
        let text = String::from_utf8_lossy(&text);
        if let Ok(secret) = open(&key(), &text) {
            prop_assert!(secret.value.len() <= text.len());
            // Authenticated: an altered token opens only to what was sealed (base64 that
            // decodes to the same bytes, e.g. other unused low bits, is the same token).
            let original = original.expect("only sealed tokens open");
            let original = open(&key(), std::str::from_utf8(&original).unwrap()).unwrap();
            prop_assert_eq!(secret.value.as_str(), original.value.as_str());
            prop_assert_eq!(secret.hosts, original.hosts);
        }
        Ok(())
    });
}

/// Valid `{"v": …, "h": […]}` payloads, altered, then sealed with the key.
fn payload() -> impl Strategy<Value = Vec<u8>> {
    (any::<String>(), hosts()).prop_map(|(v, h)| {
        serde_json::to_vec(&serde_json::json!({"v": v, "h": h, "x": [1, {"y": null}]})).unwrap()
    })
}

#[test]
fn open_on_any_payload_under_a_valid_seal() {
    let strategy = prop_oneof![bytes(512), mutated(payload()).prop_map(|(_, m)| m)];
    check("token_payload", CASES, strategy, |plain| {
        let mut raw = vec![3u8; NONCE_LEN];
        let sealed = key()
            .cipher()
            .encrypt(Nonce::from_slice(&raw), plain.as_slice())
            .unwrap();
        raw.extend_from_slice(&sealed);
        let token = format!("{PREFIX}{}", B64.encode(&raw));
        match open(&key(), &token) {
            Ok(secret) => {
                prop_assert!(secret.value.len() <= plain.len());
                prop_assert!(secret.hosts.iter().map(String::len).sum::<usize>() <= plain.len());
            }
            Err(e) => prop_assert_eq!(e, TokenError::Payload),
        }
        Ok(())
    });
}

#[test]
fn key_parse_on_any_bytes() {
    let forms = prop_oneof![
        prop::array::uniform32(any::<u8>()).prop_map(|k| k.to_vec()),
        prop::array::uniform32(any::<u8>()).prop_map(|k| {
            k.iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
                .into_bytes()
        }),
        prop::array::uniform32(any::<u8>()).prop_map(|k| B64.encode(k).into_bytes()),
    ];
    let strategy = prop_oneof![bytes(128), mutated(forms).prop_map(|(_, m)| m)];
    check("key_parse", CASES, strategy, |contents| {
        let _ = Key::parse(&contents);
        Ok(())
    });
}
