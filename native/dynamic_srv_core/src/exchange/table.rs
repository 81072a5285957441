//! The lookups in flight: each one's state (`Pending`), found by query ID,
//! with a heap of attempt deadlines so that the sweeper pops what is due
//! instead of walking every lookup, and the choice of a free query ID.
//!
//! Pure bookkeeping: nothing here sends, locks or replies. The exchange
//! holds the table behind its lookups lock (see `exchange`).

use std::cmp::Reverse;
use std::collections::hash_map::RandomState;
use std::collections::{BinaryHeap, HashMap};
use std::hash::{BuildHasher, Hasher};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use hickory_resolver::proto::op::Message;
use tokio::sync::Notify;

use super::OnAnswer;
use crate::config::Settings;
use crate::types::Kind;
use crate::wire;

pub(super) struct Pending {
    /// The name asked, as given to `start`.
    pub(super) name: String,
    pub(super) kind: Kind,
    /// The query as sent; its question (from byte 12) is what an answer
    /// must echo.
    pub(super) packet: Vec<u8>,
    pub(super) servers: Arc<[SocketAddr]>,
    pub(super) next_server: usize,
    pub(super) attempts_left: usize,
    /// Waiting for room in the window of queries sent.
    pub(super) queued: bool,
    /// Holds a slot of the window of `servers[0]`: it went out over UDP
    /// and has not ended. Only such a lookup frees a slot when it ends.
    pub(super) slot: bool,
    /// Sent over TCP (the settings ask for it, the name's answers are big,
    /// or the UDP answer came back truncated).
    pub(super) tcp: bool,
    /// Moved to TCP by a truncated UDP answer.
    pub(super) switched: bool,
    /// Times sent again because its TCP connection closed.
    pub(super) resent: u8,
    pub(super) attempt_deadline: Instant,
    pub(super) deadline: Instant,
    /// Notified when the lookup ends, so that its UDP sockets close.
    pub(super) ended: Arc<Notify>,
    pub(super) settings: Settings,
    pub(super) reply: OnAnswer,
}

impl Pending {
    /// Books the next attempt: the server it goes to (the servers in turn)
    /// and its deadline, never past the lookup's.
    pub(super) fn book_attempt(&mut self, now: Instant) -> SocketAddr {
        let server = self.servers[self.next_server % self.servers.len()];
        self.next_server += 1;
        self.attempts_left = self.attempts_left.saturating_sub(1);
        self.attempt_deadline = (now + self.settings.attempt_timeout()).min(self.deadline);
        server
    }

    /// The server of the last attempt booked, and when it was sent.
    pub(super) fn last_attempt(&self) -> (SocketAddr, Instant) {
        let server = self.servers[(self.next_server + self.servers.len() - 1) % self.servers.len()];
        let sent = self
            .attempt_deadline
            .checked_sub(self.settings.attempt_timeout())
            .unwrap_or(self.attempt_deadline);
        (server, sent)
    }

    /// An answer is ours when it comes from one of the servers asked and
    /// answers our query (see `wire::is_answer`).
    pub(super) fn is_answered_by(&self, message: &Message, raw: &[u8], server: SocketAddr) -> bool {
        self.servers.contains(&server) && wire::is_answer(&self.packet, message, raw)
    }
}

/// The lookups in flight, by query ID, and when each is next due.
#[derive(Default)]
pub(super) struct Table {
    lookups: HashMap<u16, Pending>,
    /// (attempt deadline, ID), earliest first: the sweeper pops what is due
    /// instead of walking every lookup. An entry is stale once its lookup
    /// has ended or been given a new deadline, and is skipped when popped.
    due: BinaryHeap<Reverse<(Instant, u16)>>,
    /// Query IDs are drawn by hashing a sequence number with a key chosen
    /// at random, so that they cannot be guessed.
    ids: RandomState,
    /// The sequence number of the next ID drawn.
    next_draw: u64,
}

impl Table {
    pub(super) fn len(&self) -> usize {
        self.lookups.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.lookups.is_empty()
    }

    pub(super) fn get(&self, id: u16) -> Option<&Pending> {
        self.lookups.get(&id)
    }

    pub(super) fn get_mut(&mut self, id: u16) -> Option<&mut Pending> {
        self.lookups.get_mut(&id)
    }

    /// Adds lookup `id`, due at its attempt deadline.
    pub(super) fn insert(&mut self, id: u16, pending: Pending) {
        self.lookups.insert(id, pending);
        self.schedule(id);
    }

    pub(super) fn remove(&mut self, id: u16) -> Option<Pending> {
        self.lookups.remove(&id)
    }

    pub(super) fn lookups_mut(&mut self) -> impl Iterator<Item = &mut Pending> {
        self.lookups.values_mut()
    }

    /// An ID for a probe (see `health`), drawn as lookups' IDs are; it may
    /// equal a lookup's, as a probe's answer is read on its own socket.
    pub(super) fn probe_id(&mut self) -> u16 {
        self.draw()
    }

    fn draw(&mut self) -> u16 {
        let mut hasher = self.ids.build_hasher();
        hasher.write_u64(self.next_draw);
        self.next_draw = self.next_draw.wrapping_add(1);
        hasher.finish() as u16
    }

    /// An ID no lookup in flight has; `None` when all are taken.
    pub(super) fn free_id(&mut self) -> Option<u16> {
        if self.lookups.len() >= usize::from(u16::MAX) {
            return None;
        }
        loop {
            let id = self.draw();
            if !self.lookups.contains_key(&id) {
                return Some(id);
            }
        }
    }

    /// Records that lookup `id` is due at its (new) attempt deadline.
    pub(super) fn schedule(&mut self, id: u16) {
        let Some(at) = self.lookups.get(&id).map(|p| p.attempt_deadline) else {
            return;
        };
        // Answered lookups leave stale entries behind; past a bound the
        // heap is rebuilt from the live lookups.
        if self.due.len() > 2 * self.lookups.len() + 1024 {
            self.due = self
                .lookups
                .iter()
                .map(|(id, p)| Reverse((p.attempt_deadline, *id)))
                .collect();
        } else {
            self.due.push(Reverse((at, id)));
        }
    }

    /// The lookups whose attempt deadline has passed, earliest first.
    pub(super) fn take_due(&mut self, now: Instant) -> Vec<u16> {
        let mut ids = Vec::new();
        let mut last = None;
        while let Some(&Reverse(entry)) = self.due.peek() {
            let (at, id) = entry;
            if at > now {
                break;
            }
            self.due.pop();
            // Equal entries (scheduled twice) pop one after the other.
            let live = self
                .lookups
                .get(&id)
                .is_some_and(|p| p.attempt_deadline == at);
            if live && last != Some(entry) {
                ids.push(id);
            }
            last = Some(entry);
        }
        ids
    }

    pub(super) fn next_due(&self) -> Option<Instant> {
        self.due.peek().map(|Reverse((at, _))| *at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Nameservers, Protocol};
    use crate::wire::encode;
    use hickory_resolver::proto::op::{OpCode, Query};
    use hickory_resolver::proto::rr::Name;
    use std::str::FromStr;
    use std::time::Duration;

    fn name(text: &str) -> Name {
        Name::from_str(text).expect("test name")
    }

    fn pending_for(server: SocketAddr, packet: Vec<u8>) -> Pending {
        Pending {
            name: "app.test.".into(),
            kind: Kind::Srv,
            packet,
            servers: vec![server].into(),
            next_server: 0,
            attempts_left: 1,
            queued: false,
            slot: false,
            tcp: false,
            switched: false,
            resent: 0,
            attempt_deadline: Instant::now(),
            deadline: Instant::now(),
            ended: Arc::new(Notify::new()),
            settings: Settings::new(Nameservers::Explicit(vec![server]), 100, 1, Protocol::Udp)
                .expect("settings"),
            reply: Box::new(|_| {}),
        }
    }

    #[test]
    fn due_lookups_come_out_earliest_first_and_stale_entries_are_skipped() {
        let server: SocketAddr = "127.0.0.1:53".parse().expect("address");
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let mut table = Table::default();
        for (id, ms) in [(3, 30), (1, 10), (2, 20)] {
            let mut p = pending_for(server, Vec::new());
            p.attempt_deadline = at(ms);
            table.lookups.insert(id, p);
            table.schedule(id);
        }
        assert_eq!(table.next_due(), Some(at(10)));
        assert_eq!(table.take_due(at(5)), Vec::<u16>::new());
        assert_eq!(table.take_due(at(20)), vec![1, 2]);
        // Lookup 1 was not removed: its entry is gone all the same.
        assert_eq!(table.take_due(at(20)), Vec::<u16>::new());
        // Lookup 3 gets a later deadline; its first entry goes stale.
        if let Some(p) = table.lookups.get_mut(&3) {
            p.attempt_deadline = at(50);
        }
        table.schedule(3);
        assert_eq!(table.take_due(at(40)), Vec::<u16>::new());
        assert_eq!(table.take_due(at(50)), vec![3]);
        // An ended lookup is never due.
        table.schedule(2);
        table.lookups.remove(&2);
        assert_eq!(table.take_due(at(100)), Vec::<u16>::new());
        assert_eq!(table.next_due(), None);
    }

    #[test]
    fn stale_entries_are_bounded() {
        let server: SocketAddr = "127.0.0.1:53".parse().expect("address");
        let mut table = Table::default();
        table.lookups.insert(7, pending_for(server, Vec::new()));
        for _ in 0..10_000 {
            table.schedule(7);
        }
        assert!(table.due.len() <= 2 * table.lookups.len() + 1025);
        assert_eq!(table.take_due(Instant::now()), vec![7]);
    }

    #[test]
    fn answers_must_echo_the_question_in_any_case() {
        let packet = encode(9, "app.test.", Kind::Srv).expect("encodes");
        let server: SocketAddr = "127.0.0.1:53".parse().expect("address");
        let pending = pending_for(server, packet.clone());
        let answer_to = |text: &str, kind: Kind| {
            let mut message = Message::response(9, OpCode::Query);
            message.add_query(Query::query(name(text), kind.record_type()));
            let raw = message.to_vec().expect("encodes");
            (message, raw)
        };
        let (same, raw) = answer_to("APP.test.", Kind::Srv);
        assert!(pending.is_answered_by(&same, &raw, server));
        let other_server: SocketAddr = "127.0.0.2:53".parse().expect("address");
        assert!(!pending.is_answered_by(&same, &raw, other_server));
        let (other_name, raw) = answer_to("app.test2.", Kind::Srv);
        assert!(!pending.is_answered_by(&other_name, &raw, server));
        let (other_type, raw) = answer_to("app.test.", Kind::A);
        assert!(!pending.is_answered_by(&other_type, &raw, server));
        let query = Message::from_vec(&packet).expect("decodes");
        assert!(!pending.is_answered_by(&query, &packet, server));
    }

    #[test]
    fn free_ids_are_not_taken() {
        let server: SocketAddr = "127.0.0.1:53".parse().expect("address");
        let mut table = Table::default();
        for _ in 0..1_000 {
            let id = table.free_id().expect("a free ID");
            assert!(table.get(id).is_none());
            table.insert(id, pending_for(server, Vec::new()));
        }
        assert_eq!(table.len(), 1_000);
    }
}
