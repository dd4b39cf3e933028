//! What the loop counts and records: plain data, no I/O.
//!
//! Every counter here is a plain integer in a struct the loop owns — [`EndpointCounters`]
//! beside each endpoint, [`LoopCounters`] in the reactor, the bytes in each connection's
//! `Wire` — so counting an event is one add in memory the loop is already touching: no atomic,
//! no lock, no allocation. `reactor::metrics` reads them when a scraper asks, and
//! `reactor::access` writes the access log from a connection's [`AccessRecord`] and
//! [`EndCause`].

use std::fmt::Display;
use std::time::{Duration, Instant};

use log::{log_enabled, Level};

use crate::clock::Now;
use crate::protocol::exposition::Exposition;
use crate::protocol::upload::Refusal;

/// The log target of the access log (`RUST_LOG=oneloop::access=info` shows it alone).
pub(crate) const ACCESS_TARGET: &str = "oneloop::access";

/// Why a connection ended, as the access log says it and the metrics count it. The first cause
/// sticks: a connection the shutdown ended lingers and then sees its peer close, and it ended
/// for the shutdown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum EndCause {
    /// The client closed (its end of stream, or its close_notify), or went away while the
    /// server was ending the conversation it had asked to end.
    ClientClosed,
    /// The protocol ended the conversation: an error reply, `quit`, a refused upload.
    ServerEnded,
    /// `--idle-timeout`: no byte moved for that long.
    IdleTimeout,
    /// A socket error (a reset, a broken pipe), a TLS error after the handshake, or the poller
    /// refusing it.
    Error,
    /// A chat member dropped for falling behind (`--output-limit`).
    FellBehind,
    /// A graceful shutdown.
    Shutdown,
    /// No valid PROXY header (`--proxy-protocol`) within its deadline: refused.
    ProxyHeader,
    /// The TLS handshake failed, or was not complete within its deadline: refused.
    TlsHandshake,
}

impl EndCause {
    /// Every cause, in the order of their index.
    pub(crate) const ALL: [EndCause; 8] = [
        EndCause::ClientClosed,
        EndCause::ServerEnded,
        EndCause::IdleTimeout,
        EndCause::Error,
        EndCause::FellBehind,
        EndCause::Shutdown,
        EndCause::ProxyHeader,
        EndCause::TlsHandshake,
    ];

    /// Its place in [`EndCause::ALL`], for per-cause counters.
    pub(crate) fn index(self) -> usize {
        self as usize
    }

    /// In words, for the access log.
    pub(crate) fn describe(self) -> &'static str {
        match self {
            EndCause::ClientClosed => "client closed",
            EndCause::ServerEnded => "server ended it",
            EndCause::IdleTimeout => "idle timeout",
            EndCause::Error => "error",
            EndCause::FellBehind => "dropped for falling behind",
            EndCause::Shutdown => "shutdown",
            EndCause::ProxyHeader => "refused: no valid PROXY header",
            EndCause::TlsHandshake => "refused: TLS handshake failed",
        }
    }

    /// As a metric label value (`oneloop_connections_closed_total{reason}`).
    pub(crate) fn label(self) -> &'static str {
        match self {
            EndCause::ClientClosed => "client_closed",
            EndCause::ServerEnded => "server_ended",
            EndCause::IdleTimeout => "idle_timeout",
            EndCause::Error => "error",
            EndCause::FellBehind => "fell_behind",
            EndCause::Shutdown => "shutdown",
            EndCause::ProxyHeader => "proxy_header",
            EndCause::TlsHandshake => "tls_handshake",
        }
    }
}

/// What one endpoint has done, for the metrics (its datagrams are in its `DatagramStats`).
#[derive(Clone, Debug, Default)]
pub(super) struct EndpointCounters {
    /// Connections accepted into the slab.
    pub accepted: u64,
    /// Connections closed at once at the accept: past `--max-connections`.
    pub refused_max_connections: u64,
    /// Connections closed at once at the accept: out of descriptors (the reserve's).
    pub refused_out_of_descriptors: u64,
    /// Connections reaped, by [`EndCause::index`].
    pub ended: [u64; EndCause::ALL.len()],
    /// Bytes read by the connections already reaped.
    pub closed_received: u64,
    /// Bytes written by the connections already reaped.
    pub closed_sent: u64,
    /// Uploads stored, and their bytes.
    pub uploads_stored: u64,
    /// Bytes of the uploads stored.
    pub upload_stored_bytes: u64,
    /// Uploads that failed, by [`UploadFailure::index`].
    pub uploads_failed: [u64; UploadFailure::ALL.len()],
}

impl EndpointCounters {
    /// Connections accepted and not reaped yet.
    pub(super) fn open(&self) -> u64 {
        self.accepted - self.ended.iter().sum::<u64>()
    }
}

/// Why an upload failed (`oneloop_uploads_failed_total{reason}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum UploadFailure {
    /// `error bad header`.
    BadHeader,
    /// `error too large`.
    TooLarge,
    /// `error bad name`.
    BadName,
    /// `error line too long`.
    LineTooLong,
    /// `error no space` (`--min-free`).
    NoSpace,
    /// `error storage failed: ...`.
    StorageFailed,
    /// The body did not all arrive: the client went away, or a shutdown cut it short.
    CutShort,
}

impl UploadFailure {
    /// Every reason, in the order of their index.
    pub(crate) const ALL: [UploadFailure; 7] = [
        UploadFailure::BadHeader,
        UploadFailure::TooLarge,
        UploadFailure::BadName,
        UploadFailure::LineTooLong,
        UploadFailure::NoSpace,
        UploadFailure::StorageFailed,
        UploadFailure::CutShort,
    ];

    /// Its place in [`UploadFailure::ALL`].
    pub(crate) fn index(self) -> usize {
        self as usize
    }

    /// The reason a session's refusal gives.
    pub(crate) fn of(refusal: &Refusal) -> UploadFailure {
        match refusal {
            Refusal::BadHeader => UploadFailure::BadHeader,
            Refusal::TooLarge => UploadFailure::TooLarge,
            Refusal::BadName(_) => UploadFailure::BadName,
            Refusal::LineTooLong => UploadFailure::LineTooLong,
        }
    }

    /// As a metric label value.
    pub(super) fn label(self) -> &'static str {
        match self {
            UploadFailure::BadHeader => "bad_header",
            UploadFailure::TooLarge => "too_large",
            UploadFailure::BadName => "bad_name",
            UploadFailure::LineTooLong => "line_too_long",
            UploadFailure::NoSpace => "no_space",
            UploadFailure::StorageFailed => "storage_failed",
            UploadFailure::CutShort => "cut_short",
        }
    }
}

/// Observations in fixed buckets: `counts[i]` are those at most `bounds[i]` (and above the
/// bound before it), `over` those above the last. Fixed memory, one comparison per bucket at
/// most.
#[derive(Clone, Debug)]
pub(super) struct Histogram<const N: usize> {
    bounds: [f64; N],
    counts: [u64; N],
    over: u64,
    sum: f64,
}

impl<const N: usize> Histogram<N> {
    const fn new(bounds: [f64; N]) -> Histogram<N> {
        Histogram {
            bounds,
            counts: [0; N],
            over: 0,
            sum: 0.0,
        }
    }

    /// Counts one observation of `value`.
    pub(super) fn observe(&mut self, value: f64) {
        let bucket = self.bounds.partition_point(|&bound| bound < value);
        match self.counts.get_mut(bucket) {
            Some(count) => *count += 1,
            None => self.over += 1,
        }
        self.sum += value;
    }

    /// Its samples, as series `name` (the family is declared already).
    pub(super) fn write(&self, exposition: &mut Exposition<'_>, name: &str) {
        let buckets: Vec<(f64, u64)> = self.bounds.iter().copied().zip(self.counts).collect();
        exposition.histogram(name, &[], &buckets, self.over, self.sum);
    }
}

/// The loop's own figures: how many turns, how many events, how long it was busy.
#[derive(Clone, Debug)]
pub(super) struct LoopCounters {
    /// Returns from `poll`.
    pub turns: u64,
    /// Events those returns brought.
    pub events: u64,
    /// Time from `poll`'s return to the next call: the loop at work.
    pub busy: Duration,
    /// Events per turn.
    pub events_per_turn: Histogram<12>,
    /// How long each turn's work took, in seconds.
    pub turn_seconds: Histogram<11>,
}

impl Default for LoopCounters {
    fn default() -> Self {
        LoopCounters {
            turns: 0,
            events: 0,
            busy: Duration::ZERO,
            events_per_turn: Histogram::new([
                0.0, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
            ]),
            turn_seconds: Histogram::new([
                0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005,
                0.01, 0.1,
            ]),
        }
    }
}

impl LoopCounters {
    /// One turn is over: it had `events` events and its work took `busy`.
    pub(super) fn end_turn(&mut self, events: usize, busy: Duration) {
        self.turns += 1;
        self.events += events as u64;
        self.busy += busy;
        self.events_per_turn.observe(events as f64);
        self.turn_seconds.observe(busy.as_secs_f64());
    }
}

/// What the access log needs to remember about a connection until it ends.
#[derive(Debug)]
pub(crate) struct AccessRecord {
    opened: Instant,
    /// The client's address: the PROXY header's client once that is read.
    pub peer: String,
    /// A chat member's name, or a TLS client certificate's common name, once known.
    pub name: Option<String>,
    /// Whether it joined a chat room (so it leaves one when it ends).
    joined: bool,
}

impl AccessRecord {
    /// A record for a connection from `peer` accepted now — or `None` while the access log is
    /// off, so that nothing is kept.
    pub(super) fn if_logging(peer: &dyn Display, now: &Now) -> Option<Box<AccessRecord>> {
        log_enabled!(target: ACCESS_TARGET, Level::Info).then(|| {
            Box::new(AccessRecord {
                opened: now.instant,
                peer: peer.to_string(),
                name: None,
                joined: false,
            })
        })
    }

    /// It joined a chat room as `name`.
    pub(super) fn joined(&mut self, name: &str) {
        self.joined = true;
        self.name = Some(name.to_owned());
    }

    /// Whether it joined a chat room (so its end is also a leave).
    pub(super) fn has_joined(&self) -> bool {
        self.joined
    }

    /// How long since the connection opened.
    pub(super) fn lasted(&self) -> Duration {
        self.opened.elapsed()
    }

    /// A chat member's name as its room has it now (`None`: not in the room, or gone from it
    /// already, and the name it had stays).
    pub(super) fn note_name(&mut self, name: Option<&str>) {
        if let Some(name) = name.filter(|name| self.name.as_deref() != Some(name)) {
            self.name = Some(name.to_owned());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_cause_is_at_its_index() {
        for (index, cause) in EndCause::ALL.into_iter().enumerate() {
            assert_eq!(cause.index(), index);
        }
    }
}
