//! The TLS-handshake phase (`tls:` services): the step before a connection's handler, after its
//! PROXY header if there is one.
//!
//! Like a connection reading its PROXY header, one in its handshake is nobody's yet: no byte is
//! its protocol's, nothing is owed to it, a chat member has not joined. The handshake runs in
//! the connection's TLS session ([`Connection::drive_handshake`]); once it is complete the loop
//! gives the connection its real handler (`reactor::handshake`), named by its client
//! certificate when it presented one.

use log::debug;

use crate::net::Peer;

use super::super::connection::Connection;
use super::super::counters::EndCause;

/// A connection in its TLS handshake: who it is, and where its protocol will start.
#[derive(Debug)]
pub(crate) struct AwaitingHandshake {
    /// The client (its PROXY header's address, if it sent one).
    pub peer: Peer,
    /// The endpoint it was accepted on.
    pub endpoint: usize,
}

/// The handshake deadline has passed: a connection still in its handshake is closed (quietly:
/// there is nobody to answer).
pub(crate) fn on_deadline(conn: &mut Connection, waiting: &AwaitingHandshake) {
    debug!(
        "conn #{}: no complete TLS handshake from {} in time; closing",
        conn.id, waiting.peer
    );
    conn.close(EndCause::TlsHandshake, "TLS handshake deadline");
}
