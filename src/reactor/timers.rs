//! The loop's deadlines: one binary heap for every timer, and what each one does when it fires.
//!
//! Finding the next deadline is O(1) and adding one O(log n). The idle timeout does not move
//! its heap entry on every byte — that would be a heap update per request. Each connection has
//! one idle entry; when it fires, the connection is closed only if it has really been quiet that
//! long, and otherwise the entry is pushed again for `last_active + timeout`: one heap operation
//! per timeout period per connection, whatever the traffic. A timer names its connection by
//! slab key *and* serial number, so one that outlives its connection cannot fire on the key's
//! next tenant.

use std::cmp::Reverse;
use std::time::{Duration, Instant};

use log::debug;

use crate::clock::Now;

use super::counters::EndCause;
use super::Reactor;

/// What a deadline is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Wake {
    /// Check whether connection `key` (serial number `id`) has been idle too long.
    Idle { key: usize, id: u64 },
    /// End connection `key`'s lingering close.
    Linger { key: usize, id: u64 },
    /// Close connection `key` if its PROXY header is still incomplete (`--proxy-protocol`).
    Header { key: usize, id: u64 },
    /// Close connection `key` if its TLS handshake is still under way (`tls:`).
    Handshake { key: usize, id: u64 },
    /// Send connection `key`'s held replies that are due (`--reply-delay`).
    Reply { key: usize, id: u64 },
    /// Try accepting on listener `index` again after running out of file descriptors.
    Accept { index: usize },
    /// Tell systemd's watchdog the loop still turns (and update the status line).
    Watchdog,
    /// Look again at chat room `room`, which has waited for its members to drain since the
    /// timer was set (flow control's grace, see [`super::chat`]).
    Room { room: usize },
    /// The chat bus: a retry, a heartbeat, or a reply's deadline is due (`super::bus`).
    Bus,
}

/// A deadline: when, and what for. The connection's serial number travels with its key, so a
/// timer that outlives its connection cannot fire on the slab key's next tenant.
pub(super) type Timer = Reverse<(Instant, Wake)>;

impl Reactor {
    /// Acts on every deadline that has passed.
    pub(super) fn fire_timers(&mut self, now: &Now) {
        while let Some(&Reverse((at, wake))) = self.timers.peek() {
            if at > now.instant {
                break;
            }
            self.timers.pop();
            match wake {
                Wake::Accept { index } => {
                    self.endpoints[index].paused = false;
                    self.accept_ready(index, now);
                }
                Wake::Watchdog => {
                    // Sent from the loop's own turn: a loop that hangs stops sending, and
                    // systemd restarts it.
                    self.notifier.watchdog();
                    self.notifier
                        .status(&format!("{} connections", self.open_connection_count()));
                    if let Some(every) = self.watchdog_every {
                        self.timers
                            .push(Reverse((now.instant + every, Wake::Watchdog)));
                    }
                }
                Wake::Room { room } => self.list_room(room),
                Wake::Bus => self.bus_timer(now),
                Wake::Reply { key, id } => {
                    let Some(client) = self.clients.get_mut(key) else {
                        continue;
                    };
                    if client.conn.id != id {
                        continue; // The connection this timer was for is gone.
                    }
                    let verdict = client.release_replies(&mut self.shared, now);
                    self.apply(key, verdict);
                }
                Wake::Idle { key, id }
                | Wake::Linger { key, id }
                | Wake::Header { key, id }
                | Wake::Handshake { key, id } => {
                    let Some(client) = self.clients.get_mut(key) else {
                        continue;
                    };
                    if client.conn.id != id || client.conn.is_closed() {
                        continue; // The connection this timer was for is gone.
                    }
                    if let Wake::Linger { .. } = wake {
                        client.conn.on_linger_deadline();
                    } else if let Wake::Header { .. } = wake {
                        // Closes it only if it is still waiting: once read, the header's
                        // deadline means nothing.
                        client.on_header_deadline();
                    } else if let Wake::Handshake { .. } = wake {
                        client.on_handshake_deadline();
                    } else if let Some(idle) = self.config.idle_timeout {
                        let quiet_until = if client.server_is_waiting() {
                            now.instant + idle // the server's wait, not the client's silence
                        } else {
                            client.conn.last_active() + idle
                        };
                        if quiet_until <= now.instant {
                            debug!("conn #{id}: idle for {} s; closing", idle.as_secs_f64());
                            client
                                .conn
                                .close_notifying(EndCause::IdleTimeout, "idle timeout");
                        } else {
                            self.timers.push(Reverse((quiet_until, wake)));
                        }
                    }
                    self.settle(key, false);
                }
            }
        }
    }

    /// Drops the timers of connections that are gone, once they outnumber the live ones.
    ///
    /// A closed connection's idle timer stays in the heap until it fires (removing from the
    /// middle of a binary heap is O(n)), so a client that connects and leaves in a loop would
    /// grow the heap by one entry per connection for a whole idle-timeout period. Rebuilding it
    /// when it holds twice what is live keeps it bounded by the open connections, at O(1)
    /// amortised per connection.
    pub(super) fn compact_timers(&mut self) {
        let live_bound = 2 * (self.clients.len() + self.endpoints.len()) + 1024;
        if self.timers.len() <= live_bound {
            return;
        }
        let clients = &self.clients;
        let before = self.timers.len();
        self.timers.retain(|Reverse((_, wake))| match *wake {
            Wake::Idle { key, id }
            | Wake::Linger { key, id }
            | Wake::Header { key, id }
            | Wake::Handshake { key, id }
            | Wake::Reply { key, id } => clients.get(key).is_some_and(|c| c.conn.id == id),
            Wake::Accept { .. } | Wake::Watchdog | Wake::Room { .. } | Wake::Bus => true,
        });
        self.timers.shrink_to(2 * self.timers.len());
        debug!(
            "timers: dropped {} of closed connections",
            before - self.timers.len()
        );
    }

    /// Zero if work is left over from the last turn; otherwise until the nearest deadline.
    pub(super) fn poll_timeout(&self) -> Option<Duration> {
        if !self.still_ready.is_empty()
            || self.chat_output_waiting()
            || self.bus.as_ref().is_some_and(|bus| bus.has_more())
        {
            return Some(Duration::ZERO);
        }
        let next_timer = self.timers.peek().map(|Reverse((at, _))| *at);
        let next = match (next_timer, self.shutdown_deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }?;
        Some(next.saturating_duration_since(Instant::now()))
    }
}

/// What `poll`'s timeout means, in words, for the trace.
pub(super) fn describe_timeout(timeout: Option<Duration>) -> String {
    match timeout {
        None => "waiting for an event (no timer is set)".to_string(),
        Some(Duration::ZERO) => {
            "only looking, not waiting: connections still have work from last turn".to_string()
        }
        Some(d) => format!(
            "waiting for an event, at most {:.3} s (then the next timer is due)",
            d.as_secs_f64()
        ),
    }
}
