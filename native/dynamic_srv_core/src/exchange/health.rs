//! Which servers answer: a server whose attempt timed out or was refused
//! (ICMP port unreachable) goes behind the others in every lookup's order
//! until it answers again. While it is behind, a copy of a lookup's query
//! is sent to it now and then (a probe, which costs the lookup nothing:
//! the lookup itself goes to a server that answers), first after
//! `FIRST_RETRY`, then at twice the last wait, at most `LAST_RETRY`; the
//! first answer, from a probe or a lookup, puts it back in its place.
//!
//! Pure bookkeeping, under the exchange's lookups lock.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// The wait before the first probe of a server that failed.
pub(super) const FIRST_RETRY: Duration = Duration::from_secs(1);
/// The longest wait between two probes: a server that comes back is used
/// again at most this long (plus one probe's round trip) after it does,
/// as soon as a lookup runs.
pub(super) const LAST_RETRY: Duration = Duration::from_secs(30);
/// Servers remembered as failed; past this, the oldest failures are
/// forgotten (a forgotten server is simply asked in its place again).
const MAX_FAILED: usize = 256;

#[derive(Debug, Clone, Copy)]
struct Failed {
    since: Instant,
    /// When the next probe is due, and the wait that led to it.
    retry_at: Instant,
    wait: Duration,
    probing: bool,
}

#[derive(Default)]
pub(super) struct Health {
    failed: HashMap<SocketAddr, Failed>,
}

impl Health {
    /// `servers` in the order a lookup should ask them: those not known to
    /// fail in their given order, then the failed ones, the one due for a
    /// probe first.
    pub(super) fn order(&self, servers: &[SocketAddr]) -> Vec<SocketAddr> {
        let (mut failed, mut ordered): (Vec<SocketAddr>, Vec<SocketAddr>) = servers
            .iter()
            .partition(|server| self.failed.contains_key(server));
        failed.sort_by_key(|server| self.failed.get(server).map(|f| f.retry_at));
        ordered.append(&mut failed);
        ordered
    }

    /// An attempt at `server` had no answer in time, was refused, or a
    /// probe of it failed.
    pub(super) fn failed(&mut self, server: SocketAddr, now: Instant) {
        match self.failed.get_mut(&server) {
            Some(entry) => {
                // A failure while it was already behind: wait twice as long
                // before the next probe (only once per probe round).
                if entry.probing || entry.retry_at <= now {
                    entry.wait = (entry.wait * 2).min(LAST_RETRY);
                    entry.retry_at = now + entry.wait;
                }
                entry.probing = false;
            }
            None => {
                if self.failed.len() >= MAX_FAILED {
                    if let Some(oldest) = self
                        .failed
                        .iter()
                        .min_by_key(|(_, f)| f.since)
                        .map(|(server, _)| *server)
                    {
                        self.failed.remove(&oldest);
                    }
                }
                self.failed.insert(
                    server,
                    Failed {
                        since: now,
                        retry_at: now + FIRST_RETRY,
                        wait: FIRST_RETRY,
                        probing: false,
                    },
                );
            }
        }
    }

    /// `server` answered: it is asked in its place again.
    pub(super) fn answered(&mut self, server: SocketAddr) {
        self.failed.remove(&server);
    }

    /// A failed server among `servers` that is due for a probe, now marked
    /// as being probed (one probe at a time per server).
    pub(super) fn probe_due(&mut self, servers: &[SocketAddr], now: Instant) -> Option<SocketAddr> {
        let server = servers.iter().copied().find(|server| {
            self.failed
                .get(server)
                .is_some_and(|f| !f.probing && f.retry_at <= now)
        })?;
        if let Some(entry) = self.failed.get_mut(&server) {
            entry.probing = true;
        }
        Some(server)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(text: &str) -> SocketAddr {
        text.parse().expect("address")
    }

    #[test]
    fn a_failed_server_goes_behind_until_it_answers() {
        let (a, b, c) = (
            addr("127.0.0.1:1"),
            addr("127.0.0.2:2"),
            addr("127.0.0.3:3"),
        );
        let mut health = Health::default();
        let t0 = Instant::now();
        assert_eq!(health.order(&[a, b, c]), vec![a, b, c]);
        health.failed(a, t0);
        assert_eq!(health.order(&[a, b, c]), vec![b, c, a]);
        health.failed(b, t0 + Duration::from_millis(10));
        // Both behind, the one whose probe is due first ahead.
        assert_eq!(health.order(&[a, b, c]), vec![c, a, b]);
        health.answered(a);
        assert_eq!(health.order(&[a, b, c]), vec![a, c, b]);
    }

    #[test]
    fn probes_are_spaced_doubling_up_to_the_last_retry() {
        let dead = addr("127.0.0.1:1");
        let mut health = Health::default();
        let t0 = Instant::now();
        health.failed(dead, t0);
        assert_eq!(health.probe_due(&[dead], t0), None);
        let mut at = t0;
        let mut wait = FIRST_RETRY;
        for _ in 0..10 {
            at += wait;
            assert_eq!(
                health.probe_due(&[dead], at - Duration::from_millis(1)),
                None
            );
            assert_eq!(health.probe_due(&[dead], at), Some(dead));
            // One probe at a time.
            assert_eq!(health.probe_due(&[dead], at), None);
            health.failed(dead, at);
            wait = (wait * 2).min(LAST_RETRY);
        }
        assert_eq!(wait, LAST_RETRY);
        // Failures of lookups between probes do not push the probe back.
        health.failed(dead, at + Duration::from_millis(5));
        assert_eq!(health.probe_due(&[dead], at + wait), Some(dead));
        health.answered(dead);
        assert_eq!(health.probe_due(&[dead], at + 10 * wait), None);
        assert!(health.failed.is_empty());
    }

    #[test]
    fn failed_servers_are_bounded() {
        let mut health = Health::default();
        let t0 = Instant::now();
        for port in 1..=(MAX_FAILED as u16 + 10) {
            health.failed(SocketAddr::from(([127, 0, 0, 1], port)), t0);
        }
        assert_eq!(health.failed.len(), MAX_FAILED);
    }
}
