//! The sweeper: one task, sleeping until the earliest attempt deadline of
//! the table (and at most `TICK`), that ends the lookups past their
//! deadline with `Error::Timeout` and sends the others' next attempt. It
//! parks when nothing has been in flight for `IDLE`, until a lookup
//! starts.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::table::Pending;
use super::udp::Outgoing;
use super::{deliver, lock, Exchange, OnAnswer};
use crate::error::Error;

/// The sweeper sleeps until the next attempt deadline, and at most this
/// long, so that a lookup started meanwhile with an earlier deadline is
/// late by at most this much. (Tokio's timers have a 1 ms resolution.)
const TICK: Duration = Duration::from_millis(5);
/// The sweeper parks after this long without anything in flight.
const IDLE: Duration = Duration::from_secs(1);

impl Exchange {
    pub(super) async fn sweep(self: Arc<Self>) {
        let mut idle_since = Instant::now();
        // The earliest deadline as of the last sweep.
        let mut next: Option<Instant> = None;
        loop {
            let wake_at = tokio::time::Instant::now() + TICK;
            let wake_at = match next {
                Some(due) => wake_at.min(tokio::time::Instant::from_std(due)),
                None => wake_at,
            };
            tokio::time::sleep_until(wake_at).await;
            let now = Instant::now();
            // A panic here must not end the sweeper: nothing else ends
            // lookups at their deadline.
            let (expired, empty, due) = catch_unwind(AssertUnwindSafe(|| self.expire(now)))
                .unwrap_or((Vec::new(), false, None));
            next = due;
            for reply in expired {
                deliver(reply, Err(Error::Timeout));
            }
            if !empty {
                idle_since = now;
                continue;
            }
            if now.duration_since(idle_since) < IDLE {
                continue;
            }
            self.sweeping.store(false, Ordering::Release);
            // Re-check: a lookup may have started just before the flag fell.
            let empty_now = lock(&self.lookups).table.is_empty();
            if empty_now {
                self.wake.notified().await;
            }
            self.sweeping.store(true, Ordering::Release);
            idle_since = Instant::now();
        }
    }

    /// Ends the lookups past their deadline (or out of attempts) and
    /// resends those past their attempt deadline, earliest first. Returns
    /// the replies of the ended ones, whether the table is now empty, and
    /// the next deadline.
    fn expire(self: &Arc<Self>, now: Instant) -> (Vec<OnAnswer>, bool, Option<Instant>) {
        let mut lookups = lock(&self.lookups);
        let mut done = Vec::new();
        let mut retry = Vec::new();
        for id in lookups.table.take_due(now) {
            match lookups.table.get(id) {
                Some(p) if now >= p.deadline || p.attempts_left == 0 => done.push(id),
                Some(_) => retry.push(id),
                None => {}
            }
        }
        // An attempt that had no answer in time: its server goes behind
        // the others. A TCP query whose attempt timed out on a connection
        // that answers nothing: that connection is closed, so neither its
        // retry nor the next lookup is sent on it.
        let mut silent = Vec::new();
        for id in done.iter().chain(&retry) {
            if let Some(p) = lookups.table.get(*id).filter(|p| !p.queued) {
                let (last, sent) = p.last_attempt();
                silent.push(last);
                if p.tcp {
                    self.tcp.reset_stalled(last, sent);
                }
            }
        }
        for server in silent {
            lookups.health.failed(server, now);
        }
        let removed: Vec<Pending> = done
            .iter()
            .filter_map(|id| lookups.table.remove(*id))
            .collect();
        let mut finished: HashMap<SocketAddr, usize> = HashMap::new();
        for p in removed.iter().filter(|p| p.slot) {
            *finished.entry(p.servers[0]).or_default() += 1;
        }
        let expired = removed
            .into_iter()
            .map(|p| {
                p.ended.notify_waiters();
                p.reply
            })
            .collect();
        let released: Vec<Outgoing> = finished
            .into_iter()
            .flat_map(|(server, count)| self.finished(&mut lookups, server, count))
            .collect();
        let mut sends = Vec::with_capacity(retry.len());
        for id in retry {
            if let Some(pending) = lookups.table.get_mut(id) {
                sends.push(self.next_attempt(pending, now));
                lookups.table.schedule(id);
            }
        }
        let empty = lookups.table.is_empty();
        let next = lookups.table.next_due();
        drop(lookups);
        for send in sends {
            self.udp.send_now(self, send);
        }
        for outgoing in released {
            self.udp.send_now(self, Some(outgoing));
        }
        (expired, empty, next)
    }
}
