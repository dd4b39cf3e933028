//! Accepting: new clients off the listeners, within the turn's budget, and what happens when
//! the process runs out of descriptors or the server is full.

use std::cmp::Reverse;
use std::io::{self, Write};

use log::{debug, trace, warn};
use mio::{Interest, Token};

use crate::clock::Now;
use crate::net::reserve::{is_out_of_descriptors, is_out_of_memory, ACCEPT_PAUSE};
use crate::net::{Peer, Shed, Stream, TOO_MANY_CONNECTIONS_REPLY};
use crate::protocol::proxy::HEADER_TIMEOUT;
use crate::protocol::Session;
use crate::service::ProtocolKind;

use super::connection::Connection;
use super::counters::AccessRecord;
use super::handler::{Client, Handler};
use super::timers::Wake;
use super::{EndpointSocket, Reactor, LISTENER_TOKEN_BASE, MAX_ACCEPTS_PER_TURN};

impl Reactor {
    /// Accepts until the listener would block or the turn's accept budget is spent.
    pub(super) fn accept_ready(&mut self, index: usize, now: &Now) {
        if self.endpoints[index].paused {
            return; // Its timer will bring it back.
        }
        for _ in 0..MAX_ACCEPTS_PER_TURN {
            let listener = &mut self.endpoints[index];
            let Some(EndpointSocket::Listener(socket)) = listener.socket.as_ref() else {
                return; // Closed for shutdown.
            };
            match socket.accept() {
                Ok((stream, peer)) => {
                    let protocol = listener.protocol;
                    self.open_connection(stream, peer, protocol, index, now);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    trace!(
                        "accept: WouldBlock: no more clients waiting on {}",
                        listener.local
                    );
                    return;
                }
                // The client gave up before we got to it, or a signal interrupted us: next one.
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::ConnectionAborted | io::ErrorKind::Interrupted
                    ) =>
                {
                    debug!("accept on {}: {e}", listener.local);
                }
                Err(e) if is_out_of_descriptors(&e) => match self.shed_one_connection(index, &e) {
                    Shed::ClosedOne => {
                        self.endpoints[index].counters.refused_out_of_descriptors += 1;
                    }
                    Shed::BacklogEmpty => return,
                    Shed::NoReserve => return self.pause_listener(index, now),
                },
                // Out of kernel memory: nothing to do but wait a moment.
                Err(e) if is_out_of_memory(&e) => {
                    warn!("accept on {}: {e}; pausing", listener.local);
                    return self.pause_listener(index, now);
                }
                // Anything else is about that one connection (EPROTO, ENETDOWN, EHOSTUNREACH...):
                // accept(2) says to treat it like EAGAIN and carry on with the next.
                Err(e) => debug!("accept on {}: {e}", listener.local),
            }
        }
        let listener = &mut self.endpoints[index];
        if !listener.queued {
            trace!("listener {index}: accept budget spent; more clients may be waiting");
            listener.queued = true;
            self.still_ready.push(Token(LISTENER_TOKEN_BASE + index));
        }
    }

    /// Rests a listener for [`ACCEPT_PAUSE`] (one timer, however many events arrive meanwhile).
    fn pause_listener(&mut self, index: usize, now: &Now) {
        let listener = &mut self.endpoints[index];
        if !listener.paused {
            listener.paused = true;
            self.timers.push(Reverse((
                now.instant + ACCEPT_PAUSE,
                Wake::Accept { index },
            )));
        }
    }

    /// Out of descriptors: spends the reserve descriptor on one waiting client of listener
    /// `index` (see [`ReserveFd`](crate::net::ReserveFd)).
    ///
    /// Without this, a listener whose backlog cannot be drained stays readable: level-triggered
    /// loops spin at 100% CPU on it, and edge-triggered ones leave the clients hanging.
    fn shed_one_connection(&mut self, index: usize, error: &io::Error) -> Shed {
        let socket = self.endpoints[index].socket.as_ref();
        self.reserve_fd.shed_one(error, || match socket {
            Some(EndpointSocket::Listener(socket)) => socket.accept(),
            _ => Err(io::ErrorKind::WouldBlock.into()),
        })
    }

    /// Whether the server is at `--max-connections`: then `stream`, just accepted on
    /// `endpoint`, is refused (told so, unless it is TLS) and counted.
    fn is_full(&mut self, stream: &mut Stream, peer: Peer, endpoint: usize) -> bool {
        let open = self.open_connection_count();
        if open < self.config.max_connections {
            self.refusing = false;
            return false;
        }
        if !self.refusing {
            warn!("{open} connections open (--max-connections): closing new ones until some leave");
        }
        self.refusing = true;
        debug!("refusing {peer}: too many connections");
        if let Some(endpoint) = self.endpoints.get_mut(endpoint) {
            endpoint.counters.refused_max_connections += 1;
        }
        // One best-effort write: the socket is new, so its buffer has room. Not to a TLS
        // client, for which a plaintext line is a broken record: it just sees the close.
        if !self
            .endpoints
            .get(endpoint)
            .is_some_and(|e| e.local.is_tls())
        {
            let _ = stream.write(TOO_MANY_CONNECTIONS_REPLY);
        }
        true
    }

    /// Makes an accepted `stream` from `peer` a client of `endpoint` (speaking `protocol`):
    /// refused at once past `--max-connections`, else registered for `READABLE`, given its idle
    /// timer and its handler — or, under `--proxy-protocol`, its header deadline first.
    pub(super) fn open_connection(
        &mut self,
        mut stream: Stream,
        peer: Peer,
        protocol: ProtocolKind,
        endpoint: usize,
        now: &Now,
    ) {
        if self.is_full(&mut stream, peer, endpoint) {
            return;
        }
        let id = self.next_connection_id;
        self.next_connection_id += 1;
        // Replies are written whole, once per request: Nagle's delay would only add latency.
        if let Err(e) = stream.set_nodelay() {
            debug!("conn #{id}: cannot set TCP_NODELAY: {e}");
        }
        let session = Session::new(protocol, self.config.limits);
        let storage_ready = protocol != ProtocolKind::Upload || self.uploads.is_some();
        if session.is_none() && protocol != ProtocolKind::Chat && !storage_ready {
            warn!("conn #{id}: {protocol} is not served by this build; closing");
            return;
        }
        let entry = self.clients.vacant_entry();
        let key = entry.key();
        if let Err(e) = self
            .poll
            .registry()
            .register(&mut stream, Token(key), Interest::READABLE)
        {
            warn!("conn #{id}: cannot register with the poller: {e}; closing");
            return;
        }
        trace!(
            "accept: conn #{id} from {peer} for {protocol}; token {key}, registered for READABLE"
        );
        if let Some(endpoint) = self.endpoints.get_mut(endpoint) {
            endpoint.counters.accepted += 1;
        }
        // Endpoints are the command line's services: `Reactor::new` refuses more than fit.
        let endpoint_index = u16::try_from(endpoint).unwrap_or(u16::MAX);
        let access = AccessRecord::if_logging(&peer, now);
        let conn = Connection::new(id, stream, endpoint_index, access, now);
        if let Some(idle) = self.config.idle_timeout {
            self.timers
                .push(Reverse((now.instant + idle, Wake::Idle { key, id })));
        }
        if self.config.proxy_protocol {
            // The protocol starts once the header is read (`proxy.rs`); until then the
            // connection is nobody's member and is owed nothing, not even a greeting.
            trace!(
                "conn #{id}: waiting for its PROXY header (at most {} s) before any byte of {protocol}",
                HEADER_TIMEOUT.as_secs()
            );
            let handler = Handler::awaiting_header(peer, endpoint);
            entry.insert(Client::new(conn, handler));
            let deadline = now.instant + HEADER_TIMEOUT;
            self.timers
                .push(Reverse((deadline, Wake::Header { key, id })));
            return;
        }
        if self
            .endpoints
            .get(endpoint)
            .is_some_and(|e| e.local.is_tls())
        {
            // The protocol starts once the handshake is complete (`handshake.rs`).
            let handler = Handler::handshake(peer, endpoint);
            entry.insert(Client::new(conn, handler));
            return self.start_handshake(key, endpoint, &[], now);
        }
        let handler = match session {
            Some(session) => Handler::stream(session, &self.shared),
            None if protocol == ProtocolKind::Upload => Handler::upload(self.config.limits),
            None if protocol == ProtocolKind::Metrics => Handler::Metrics(Default::default()),
            None => {
                let Some(chat) = self.rooms[endpoint].as_ref() else {
                    return; // Not a chat endpoint: cannot happen, checked above.
                };
                Handler::chat(endpoint as u32, &chat.log)
            }
        };
        entry.insert(Client::new(conn, handler));
        if protocol == ProtocolKind::Chat {
            self.join_room(key, endpoint, &peer.to_string());
        }
    }
}
