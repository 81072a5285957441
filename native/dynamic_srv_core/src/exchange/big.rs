//! The names whose answers need TCP: a name whose UDP answer came back
//! truncated (and was then answered over TCP) goes straight to TCP for
//! `BIG_FOR`, which saves the truncated UDP round trip on every lookup.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::lock;
use crate::types::Kind;

/// How long a name whose UDP answer was truncated goes straight to TCP.
const BIG_FOR: Duration = Duration::from_secs(60);
/// Names kept at most; past it the expired ones go, then all of them.
const MAX_BIG: usize = 1024;

#[derive(Default)]
pub(super) struct BigNames {
    /// (lowercase name, kind) -> until when it goes to TCP. A leaf lock:
    /// taken alone, never with another of the exchange's (see `exchange`).
    until: Mutex<HashMap<(String, Kind), Instant>>,
}

impl BigNames {
    /// Whether lookups of `name` go straight to TCP.
    pub(super) fn is_big(&self, name: &str, kind: Kind) -> bool {
        let big = lock(&self.until);
        if big.is_empty() {
            return false;
        }
        big.get(&(name.to_ascii_lowercase(), kind))
            .is_some_and(|until| *until > Instant::now())
    }

    /// Sends lookups of `name` straight to TCP for `BIG_FOR`.
    pub(super) fn mark(&self, name: &str, kind: Kind) {
        let mut big = lock(&self.until);
        if big.len() >= MAX_BIG {
            let now = Instant::now();
            big.retain(|_, until| *until > now);
            if big.len() >= MAX_BIG {
                big.clear();
            }
        }
        big.insert((name.to_ascii_lowercase(), kind), Instant::now() + BIG_FOR);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_big_name_is_known_in_any_case_and_for_its_kind_only() {
        let big = BigNames::default();
        assert!(!big.is_big("app.test.", Kind::Srv));
        big.mark("App.Test.", Kind::Srv);
        assert!(big.is_big("app.test.", Kind::Srv));
        assert!(big.is_big("APP.TEST.", Kind::Srv));
        assert!(!big.is_big("app.test.", Kind::A));
        assert!(!big.is_big("other.test.", Kind::Srv));
    }

    #[test]
    fn the_big_names_are_bounded() {
        let big = BigNames::default();
        for i in 0..3 * MAX_BIG {
            big.mark(&format!("n{i}.test."), Kind::Srv);
        }
        assert!(lock(&big.until).len() <= MAX_BIG);
        assert!(big.is_big(&format!("n{}.test.", 3 * MAX_BIG - 1), Kind::Srv));
    }
}
