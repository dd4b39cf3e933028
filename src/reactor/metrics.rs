//! What the loop counts, and the exposition the `metrics` service renders from it.
//!
//! ## Counted where it happens, read only when scraped
//!
//! Every counter is a plain `u64` in a struct the loop owns (`counters.rs`) — one beside each
//! endpoint, one for the loop itself in the reactor, the bytes in each connection's
//! [`Wire`](super::wire::Wire) — so counting an event is one add in memory the loop is
//! already touching: no atomic, no lock, no allocation. Nothing is formatted until a scraper
//! asks; then [`Reactor::render_metrics`] reads them and writes the text
//! (`protocol::exposition`).
//!
//! ## What a scrape walks
//!
//! The families come from the counters, except the bytes of connections still open: those
//! live in the connections, and the scrape adds them up by walking the slab once — a few
//! additions per connection, about 50 µs at 10,000 connections (`docs/BENCHMARKS.md`).
//! Copying each connection's bytes into its endpoint's counters as they move would make the
//! walk unnecessary, at one more add per read and write for every request served; a scrape a
//! second is the cheaper side of that trade. A connection's bytes join its endpoint's
//! `closed_*` totals when it is reaped, so a counter never goes back.
//!
//! ## Exact
//!
//! A connection is counted accepted when it enters the slab and ended (by cause) when it
//! leaves it; `oneloop_connections_open` is the difference, so it is exact too. A chat
//! delivery is counted when a line has been written whole to a member's socket; an upload
//! when its `saved` or `error` answer is queued.

use std::time::Instant;

use log::trace;

use super::access;
use super::connection::FirstInput;
use super::counters::{EndCause, UploadFailure};
use super::handler::metrics::Drive;
use super::handler::{self, Client, Handler};
use super::{EndpointSocket, Reactor};
use crate::clock::Now;
use crate::process::ProcessStats;
use crate::protocol::exposition::{Exposition, Kind};

/// Counting and logging the end of a connection.
impl Reactor {
    /// Connection `client` has just left the slab: its end is counted for
    /// the metrics and, while the access log is on, logged.
    pub(super) fn count_and_log_end(&mut self, client: &Client) {
        let conn = &client.conn;
        let cause = conn.end_cause().unwrap_or(EndCause::Error);
        let endpoint = conn.endpoint();
        self.count_end(endpoint, cause, conn.bytes_moved());
        if let Some(endpoint) = self.endpoints.get(endpoint) {
            access::log_end(conn, endpoint.service(), cause);
        }
    }
}

/// One endpoint's labels, owned for the length of a scrape.
struct EndpointLabels {
    protocol: &'static str,
    transport: &'static str,
    address: String,
}

impl EndpointLabels {
    fn labels(&self) -> [(&str, &str); 3] {
        [
            ("protocol", self.protocol),
            ("transport", self.transport),
            ("address", &self.address),
        ]
    }
}

/// The scrape's rendering.
impl Reactor {
    /// Counts connection `key`, about to leave the slab, as ended.
    pub(super) fn count_end(&mut self, endpoint: usize, cause: EndCause, bytes: (u64, u64)) {
        if let Some(endpoint) = self.endpoints.get_mut(endpoint) {
            let counters = &mut endpoint.counters;
            counters.ended[cause.index()] += 1;
            counters.closed_received += bytes.0;
            counters.closed_sent += bytes.1;
        }
    }

    /// Appends the whole exposition to `out`: every family the contract names, each declared
    /// even while it has no sample.
    pub(super) fn render_metrics(&self, out: &mut Vec<u8>) {
        let labels: Vec<EndpointLabels> = self
            .endpoints
            .iter()
            .map(|e| EndpointLabels {
                protocol: e.protocol.name(),
                transport: e.local.transport(),
                address: e.local.to_string(),
            })
            .collect();
        // The bytes of connections still open, by endpoint (see the module docs).
        let mut live = vec![(0u64, 0u64); self.endpoints.len()];
        for (_, client) in &self.clients {
            if let Some(sum) = live.get_mut(client.conn.endpoint()) {
                let (received, sent) = client.conn.bytes_moved();
                sum.0 += received;
                sum.1 += sent;
            }
        }
        let mut exposition = Exposition::new(out);
        self.render_connections(&mut exposition, &labels, &live);
        self.render_datagrams(&mut exposition, &labels);
        self.render_chat(&mut exposition, &labels);
        self.render_uploads(&mut exposition, &labels);
        self.render_loop(&mut exposition);
        render_process(&mut exposition);
    }

    /// The stream endpoints' connection families, and every endpoint's bytes.
    fn render_connections(
        &self,
        e: &mut Exposition<'_>,
        labels: &[EndpointLabels],
        live: &[(u64, u64)],
    ) {
        let streams = || {
            self.endpoints
                .iter()
                .zip(labels)
                .filter(|(endpoint, _)| !is_datagram(endpoint))
        };
        let name = "oneloop_connections_accepted_total";
        e.family(name, Kind::Counter, "Connections accepted and served.");
        for (endpoint, labels) in streams() {
            e.sample(name, &labels.labels(), endpoint.counters.accepted);
        }
        let name = "oneloop_connections_open";
        e.family(name, Kind::Gauge, "Connections open now.");
        for (endpoint, labels) in streams() {
            e.sample(name, &labels.labels(), endpoint.counters.open());
        }
        let name = "oneloop_connections_refused_total";
        e.family(
            name,
            Kind::Counter,
            "Connections refused: closed at the accept (max_connections, out_of_descriptors) \
             or at their first step (proxy_header, tls_handshake).",
        );
        for (endpoint, labels) in streams() {
            let c = &endpoint.counters;
            let reasons = [
                ("max_connections", c.refused_max_connections),
                ("out_of_descriptors", c.refused_out_of_descriptors),
                ("proxy_header", c.ended[EndCause::ProxyHeader.index()]),
                ("tls_handshake", c.ended[EndCause::TlsHandshake.index()]),
            ];
            for (reason, count) in reasons {
                e.sample(name, &with(&labels.labels(), ("reason", reason)), count);
            }
        }
        let name = "oneloop_connections_closed_total";
        e.family(
            name,
            Kind::Counter,
            "Connections ended, by why (as the access log says it).",
        );
        for (endpoint, labels) in streams() {
            for cause in EndCause::ALL {
                let count = endpoint.counters.ended[cause.index()];
                e.sample(
                    name,
                    &with(&labels.labels(), ("reason", cause.label())),
                    count,
                );
            }
        }
        for (name, help, sent) in [
            (
                "oneloop_received_bytes_total",
                "Bytes received from clients (TLS records under TLS; datagram payloads).",
                false,
            ),
            (
                "oneloop_sent_bytes_total",
                "Bytes sent to clients (TLS records under TLS; datagram payloads).",
                true,
            ),
        ] {
            e.family(name, Kind::Counter, help);
            for (index, (endpoint, labels)) in self.endpoints.iter().zip(labels).enumerate() {
                let c = &endpoint.counters;
                let (stats, (live_received, live_sent)) = (&endpoint.stats, live[index]);
                let value = match sent {
                    false => c.closed_received + live_received + stats.received_bytes,
                    true => c.closed_sent + live_sent + stats.sent_bytes,
                };
                e.sample(name, &labels.labels(), value);
            }
        }
    }

    /// The datagram endpoints' families.
    fn render_datagrams(&self, e: &mut Exposition<'_>, labels: &[EndpointLabels]) {
        let datagrams = || {
            self.endpoints
                .iter()
                .zip(labels)
                .filter(|(endpoint, _)| is_datagram(endpoint))
        };
        let name = "oneloop_datagrams_received_total";
        e.family(name, Kind::Counter, "Datagrams received.");
        for (endpoint, labels) in datagrams() {
            e.sample(name, &labels.labels(), endpoint.stats.received);
        }
        let name = "oneloop_datagrams_dropped_total";
        e.family(
            name,
            Kind::Counter,
            "Datagrams not answered: oversize (over 65,507 bytes), source_port (from a port \
             below 1024), reply_dropped (the socket would not take the reply).",
        );
        for (endpoint, labels) in datagrams() {
            let stats = &endpoint.stats;
            let reasons = [
                ("oversize", stats.oversize),
                ("source_port", stats.reflection),
                ("reply_dropped", stats.replies_dropped),
            ];
            for (reason, count) in reasons {
                e.sample(name, &with(&labels.labels(), ("reason", reason)), count);
            }
        }
    }

    /// The chat endpoints' families.
    fn render_chat(&self, e: &mut Exposition<'_>, labels: &[EndpointLabels]) {
        let rooms = || {
            self.endpoints
                .iter()
                .zip(labels)
                .zip(&self.rooms)
                .filter_map(|((endpoint, labels), room)| Some((endpoint, labels, room.as_ref()?)))
        };
        let name = "oneloop_chat_members";
        e.family(name, Kind::Gauge, "Members in the room, of this process.");
        for (_, labels, chat) in rooms() {
            e.sample(name, &labels.labels(), chat.room.len());
        }
        let name = "oneloop_chat_deliveries_total";
        e.family(
            name,
            Kind::Counter,
            "Lines written whole to one member, notices and replies included.",
        );
        for (_, labels, chat) in rooms() {
            e.sample(name, &labels.labels(), chat.delivered);
        }
        let name = "oneloop_chat_members_dropped_total";
        e.family(
            name,
            Kind::Counter,
            "Members disconnected for falling behind (--output-limit).",
        );
        for (endpoint, labels, _) in rooms() {
            let dropped = endpoint.counters.ended[EndCause::FellBehind.index()];
            e.sample(name, &labels.labels(), dropped);
        }
    }

    /// The upload endpoints' families.
    fn render_uploads(&self, e: &mut Exposition<'_>, labels: &[EndpointLabels]) {
        let uploads = || {
            self.endpoints
                .iter()
                .zip(labels)
                .filter(|(endpoint, _)| endpoint.protocol == crate::service::ProtocolKind::Upload)
        };
        let name = "oneloop_uploads_stored_total";
        e.family(name, Kind::Counter, "Uploads stored (answered saved).");
        for (endpoint, labels) in uploads() {
            e.sample(name, &labels.labels(), endpoint.counters.uploads_stored);
        }
        let name = "oneloop_upload_stored_bytes_total";
        e.family(name, Kind::Counter, "Bytes of the uploads stored.");
        for (endpoint, labels) in uploads() {
            e.sample(
                name,
                &labels.labels(),
                endpoint.counters.upload_stored_bytes,
            );
        }
        let name = "oneloop_uploads_failed_total";
        e.family(
            name,
            Kind::Counter,
            "Uploads refused or not stored, by reason.",
        );
        for (endpoint, labels) in uploads() {
            for reason in UploadFailure::ALL {
                let count = endpoint.counters.uploads_failed[reason.index()];
                e.sample(
                    name,
                    &with(&labels.labels(), ("reason", reason.label())),
                    count,
                );
            }
        }
    }

    /// The loop's own families.
    fn render_loop(&self, e: &mut Exposition<'_>) {
        let counters = &self.loop_counters;
        let name = "oneloop_loop_turns_total";
        e.family(
            name,
            Kind::Counter,
            "Turns of the event loop (returns from poll).",
        );
        e.sample(name, &[], counters.turns);
        let name = "oneloop_loop_events_total";
        e.family(name, Kind::Counter, "Readiness events the poll returned.");
        e.sample(name, &[], counters.events);
        let name = "oneloop_loop_busy_seconds_total";
        e.family(
            name,
            Kind::Counter,
            "Time the loop spent working, not waiting in poll.",
        );
        e.sample(name, &[], counters.busy.as_secs_f64());
        let name = "oneloop_loop_events_per_turn";
        e.family(
            name,
            Kind::Histogram,
            "Events each turn of the loop served.",
        );
        counters.events_per_turn.write(e, name);
        let name = "oneloop_loop_turn_duration_seconds";
        e.family(
            name,
            Kind::Histogram,
            "How long each turn's work took (from poll's return to the next poll).",
        );
        counters.turn_seconds.write(e, name);
    }
}

/// The `metrics` service's arm of the loop's seam.
impl Reactor {
    /// Drives scraper `key`: its requests are answered, each `GET /metrics` with the
    /// exposition rendered at that moment.
    pub(super) fn drive_scraper(&mut self, key: usize, now: &Now, first: Option<FirstInput>) {
        let mut first = first;
        let mut rendered = false;
        let verdict = loop {
            let Some(Client {
                conn,
                handler: Handler::Metrics(requests),
            }) = self.clients.get_mut(key)
            else {
                return;
            };
            let exposition = rendered.then_some(&self.exposition[..]);
            let drive = handler::metrics::drive(
                conn,
                requests,
                &mut self.shared,
                now,
                exposition,
                first.take(),
            );
            match drive {
                Drive::Done(verdict) => break verdict,
                Drive::NeedsExposition => {
                    let mut exposition = std::mem::take(&mut self.exposition);
                    exposition.clear();
                    let started = Instant::now();
                    self.render_metrics(&mut exposition);
                    trace!(
                        "conn #{}: GET /metrics: {} bytes of exposition, rendered in {:?}",
                        self.clients[key].conn.id,
                        exposition.len(),
                        started.elapsed()
                    );
                    self.exposition = exposition;
                    rendered = true;
                }
            }
        };
        self.apply(key, verdict);
    }
}

/// Whether an endpoint answers datagrams (its socket, or for a closed one its address, says).
fn is_datagram(endpoint: &super::Endpoint) -> bool {
    match &endpoint.socket {
        Some(EndpointSocket::Datagram(_)) => true,
        Some(EndpointSocket::Listener(_)) => false,
        None => endpoint.local.transport() == "udp",
    }
}

/// `labels` and one more.
fn with<'a>(labels: &[(&'a str, &'a str); 3], more: (&'a str, &'a str)) -> [(&'a str, &'a str); 4] {
    [labels[0], labels[1], labels[2], more]
}

/// One process family: its name, type, help, and its value among the readings.
type ProcessFamily = (&'static str, Kind, &'static str, fn(&ProcessStats) -> f64);

/// The standard process families, as every Prometheus client names them. If `/proc` cannot be
/// read they are declared without samples (and the reason is logged at debug).
fn render_process(e: &mut Exposition<'_>) {
    let stats = crate::process::ProcessStats::read()
        .map_err(|error| log::debug!("metrics: cannot read the process's figures: {error}"))
        .ok();
    let families: [ProcessFamily; 5] = [
        (
            "process_cpu_seconds_total",
            Kind::Counter,
            "Total user and system CPU time spent in seconds.",
            |s| s.cpu_seconds,
        ),
        (
            "process_resident_memory_bytes",
            Kind::Gauge,
            "Resident memory size in bytes.",
            |s| s.resident_bytes as f64,
        ),
        (
            "process_open_fds",
            Kind::Gauge,
            "Number of open file descriptors.",
            |s| s.open_fds as f64,
        ),
        (
            "process_max_fds",
            Kind::Gauge,
            "Maximum number of open file descriptors.",
            |s| s.max_fds as f64,
        ),
        (
            "process_start_time_seconds",
            Kind::Gauge,
            "Start time of the process since unix epoch in seconds.",
            |s| s.start_time_seconds,
        ),
    ];
    for (name, kind, help, value) in families {
        e.family(name, kind, help);
        if let Some(stats) = &stats {
            e.sample(name, &[], value(stats));
        }
    }
}
