//! Property tests (see `src/fuzz.rs`) for the serve wire protocol: what `netcage serve` reads
//! from a caller ([`Request`]) and a caller from the serve ([`Reply`]), as postcard packets.
//! Arbitrary bytes and mutated valid messages; no panic, and nothing decoded larger than the
//! packet (no length field makes up a big value).

use proptest::prelude::*;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{Reply, Request};
use crate::fuzz::{bytes, check, mutated};

fn blob() -> impl Strategy<Value = Vec<u8>> {
    bytes(24)
}

fn request() -> impl Strategy<Value = Request> {
    prop_oneof![
        (
            prop::collection::vec(blob(), 0..4),
            prop::collection::vec((blob(), blob()), 0..4),
            prop::option::of(blob()),
            any::<[bool; 3]>(),
        )
            .prop_map(|(argv, env, cwd, stdio)| Request::Exec {
                argv,
                env,
                cwd,
                stdio
            }),
        any::<i32>().prop_map(Request::Signal),
        prop::strategy::LazyJust::new(|| Request::Status),
    ]
}

fn reply() -> impl Strategy<Value = Reply> {
    prop_oneof![
        (".{0,16}", any::<i32>()).prop_map(|(exec, pid)| Reply::Started { exec, pid }),
        ".{0,40}".prop_map(Reply::Refused),
        any::<i32>().prop_map(|status| Reply::Exited { status }),
        ".{0,80}".prop_map(Reply::Status),
    ]
}

fn encoded<T: Serialize + std::fmt::Debug>(
    valid: impl Strategy<Value = T>,
) -> impl Strategy<Value = Vec<u8>> {
    valid.prop_map(|v| postcard::to_allocvec(&v).unwrap())
}

/// Decoded as `fdpass::recv` does: no panic; re-encoded, no longer than the input.
fn decodes_within<T: Serialize + DeserializeOwned>(bytes: &[u8]) -> Result<(), TestCaseError> {
    if let Ok(value) = postcard::from_bytes::<T>(bytes) {
        let again = postcard::to_allocvec(&value).unwrap();
        prop_assert!(
            again.len() <= bytes.len(),
            "{} > {}",
            again.len(),
            bytes.len()
        );
    }
    Ok(())
}

#[test]
fn wire_messages_on_any_bytes() {
    let strategy = prop_oneof![
        bytes(512),
        // A variant tag, then a length field asking for a huge vector.
        (0u8..4, bytes(16)).prop_map(|(tag, rest)| [
            &[tag, 0xff, 0xff, 0xff, 0xff, 0x0f][..],
            &rest
        ]
        .concat()),
    ];
    check("wire_any", 512, strategy, |bytes| {
        decodes_within::<Request>(&bytes)?;
        decodes_within::<Reply>(&bytes)
    });
}

#[test]
fn wire_messages_on_mutated_messages() {
    let strategy = mutated(prop_oneof![encoded(request()), encoded(reply())]);
    check("wire_mutated", 512, strategy, |(valid, bytes)| {
        // Unchanged, a message decodes as one of the two.
        let request = postcard::from_bytes::<Request>(&valid).is_ok();
        prop_assert!(request || postcard::from_bytes::<Reply>(&valid).is_ok());
        decodes_within::<Request>(&bytes)?;
        decodes_within::<Reply>(&bytes)
    });
}
