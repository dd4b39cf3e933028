//! The access log: one line when a connection ends, and one per chat join, chat leave and
//! stored upload — at `info`, under the log target `oneloop::access`.
//!
//! ```text
//! [... INFO  oneloop::access] event=close conn=7 protocol=echo transport=tcp address=127.0.0.1:9000 peer=127.0.0.1:50412 duration=0.004 bytes_in=6 bytes_out=6 end="client closed"
//! ```
//!
//! Each line is `key=value` pairs (*logfmt*, what HAProxy's and Heroku's logs taught tools to
//! read): a value with a space, a quote, an `=` or a control character is quoted and escaped,
//! so one line is one event whatever a name or a path holds. `peer` is the PROXY header's
//! client when there is one; `name` is a chat member's name, or a TLS client certificate's
//! common name. Nothing is logged per request.
//!
//! ## What it costs
//!
//! The record behind a line — when the connection opened, its peer, its name — is made at the
//! accept only if the line would be written (`log_enabled!`, checked once per connection), and
//! is a boxed [`AccessRecord`] beside the connection. At the default level (`warn`) no record
//! exists, nothing is formatted, and a connection carries a null pointer. The bytes counts are
//! the connection's own ([`Wire`](super::wire::Wire)), kept anyway for the metrics.

use std::fmt::{self, Display, Write as _};

use log::info;

use crate::service::{Address, ProtocolKind};

use super::connection::Connection;
use super::counters::{AccessRecord, EndCause, ACCESS_TARGET as TARGET};

/// A service as the access log names it: its protocol and listening address.
pub(super) type Service<'a> = (ProtocolKind, &'a Address);

/// A logfmt line under construction.
struct Line(String);

impl Line {
    /// A line for `event` on connection `id` of the endpoint serving `protocol` on `local`.
    fn new(event: &str, id: u64, (protocol, local): Service<'_>) -> Line {
        let mut line = Line(String::with_capacity(160));
        line.field("event", event);
        line.field("conn", id);
        line.field("protocol", protocol);
        line.field("transport", local.transport());
        line.field("address", local);
        line
    }

    /// Appends ` key=value`, quoting the value if it needs it.
    fn field(&mut self, key: &str, value: impl Display) {
        if !self.0.is_empty() {
            self.0.push(' ');
        }
        self.0.push_str(key);
        self.0.push('=');
        let start = self.0.len();
        let _ = write!(self.0, "{value}");
        let needs_quotes = self.0[start..].is_empty()
            || self.0[start..]
                .chars()
                .any(|c| c == ' ' || c == '"' || c == '=' || c == '\\' || c.is_control());
        if needs_quotes {
            let raw = self.0.split_off(start);
            let _ = write!(self.0, "{raw:?}");
        }
    }

    /// The peer and, if known, the name.
    fn who(&mut self, record: &AccessRecord) {
        self.field("peer", &record.peer);
        if let Some(name) = &record.name {
            self.field("name", name);
        }
    }
}

impl fmt::Display for Line {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The lines for a connection of `service` that has ended (`conn`, just removed): a chat
/// member's `leave`, then its `close`.
pub(super) fn log_end(conn: &Connection, service: Service<'_>, cause: EndCause) {
    let Some(record) = conn.access() else {
        return;
    };
    if let Some(name) = record.name.as_deref().filter(|_| record.has_joined()) {
        let mut line = Line::new("leave", conn.id, service);
        line.field("peer", &record.peer);
        line.field("name", name);
        info!(target: TARGET, "{line}");
    }
    let mut line = Line::new("close", conn.id, service);
    line.who(record);
    let lasted = record.lasted();
    line.field("duration", format_args!("{:.3}", lasted.as_secs_f64()));
    let (received, sent) = conn.bytes_moved();
    line.field("bytes_in", received);
    line.field("bytes_out", sent);
    line.field("end", cause.describe());
    info!(target: TARGET, "{line}");
}

/// The line for a chat member of `service` joining its room as `name`.
pub(super) fn log_join(conn: &mut Connection, service: Service<'_>, name: &str) {
    let id = conn.id;
    let Some(record) = conn.access_mut() else {
        return;
    };
    record.joined(name);
    let mut line = Line::new("join", id, service);
    line.field("peer", &record.peer);
    line.field("name", name);
    info!(target: TARGET, "{line}");
}

/// The line for an upload of `service` stored as `name`, `size` bytes.
pub(super) fn log_stored(conn: &Connection, service: Service<'_>, name: &str, size: u64) {
    let Some(record) = conn.access() else {
        return;
    };
    let mut line = Line::new("stored", conn.id, service);
    line.field("peer", &record.peer);
    line.field("name", name);
    line.field("size", size);
    info!(target: TARGET, "{line}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_quoted_only_when_they_must_be() {
        let mut line = Line(String::new());
        line.field("a", "plain");
        line.field("b", "two words");
        line.field("c", "x=\"y\"\n");
        line.field("d", "");
        line.field("e", 42);
        assert_eq!(line.0, r#"a=plain b="two words" c="x=\"y\"\n" d="" e=42"#);
    }
}
