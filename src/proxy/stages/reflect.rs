//! The values substituted on one client connection: responses on it (and, after an upgrade,
//! WebSocket messages from the server) must not show them, so every value a request had
//! substituted joins the connection's set, and the redactor is compiled from that set.

use std::sync::{Arc, Mutex};

use zeroize::Zeroizing;

use crate::proxy::decide::Decider;
use crate::scan::{RedactSet, Redactor};

/// Values substituted on one client connection; responses on it must not show them.
pub type ReflectSet = Arc<Mutex<Reflect>>;

/// The (value, token) pairs of one connection and their compiled matcher, rebuilt only when a
/// new value joins.
#[derive(Default)]
pub struct Reflect {
    pairs: Vec<(Zeroizing<Vec<u8>>, Vec<u8>)>,
    compiled: Option<Arc<RedactSet>>,
}

/// Adds the values `decider` substituted to the connection's set and returns the redactor for
/// everything substituted on the connection so far (`None` while nothing was).
pub(in crate::proxy) fn learn(reflect: &ReflectSet, decider: &Decider) -> Option<Redactor> {
    let mut set = reflect.lock().unwrap_or_else(|p| p.into_inner());
    let record = decider.record.lock().unwrap_or_else(|p| p.into_inner());
    let mut grew = false;
    for (value, token) in &record.substituted {
        if !set.pairs.iter().any(|(v, _)| v == value) {
            set.pairs.push((value.clone(), token.clone()));
            grew = true;
        }
    }
    if grew {
        let pairs: Vec<(&[u8], &[u8])> = set
            .pairs
            .iter()
            .map(|(v, t)| (v.as_slice(), t.as_slice()))
            .collect();
        set.compiled = RedactSet::new(&pairs);
    }
    set.compiled.as_ref().map(RedactSet::redactor)
}

/// The redactor for everything substituted on the connection so far (`None` while nothing
/// was).
pub(in crate::proxy) fn current(reflect: &ReflectSet) -> Option<Redactor> {
    let set = reflect.lock().unwrap_or_else(|p| p.into_inner());
    set.compiled.as_ref().map(RedactSet::redactor)
}
