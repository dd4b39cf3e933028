//! The chat bus in the loop: two connections to Redis, spoken to on non-blocking sockets like
//! any client's, so the loop never waits for Redis.
//!
//! What travels and why Redis orders it is [`crate::protocol::bus`]'s subject; this is the
//! transport. One connection carries commands (`PUBLISH`, the name scripts, `HKEYS`, the
//! heartbeat) and their replies, which Redis sends in the order of the commands, so the loop
//! keeps a queue of what each coming reply answers ([`Awaiting`]). The other is subscribed to
//! every shared room's channel (a subscribed connection can send nothing else): the room's
//! broadcasts come back on it, in the room's order, and become [`BusEvent`]s the loop hands to
//! its rooms (`reactor::chat_bus`).
//!
//! ## Why RESP in the loop, not a thread with a blocking client
//!
//! The other design is a bridge thread running the standard `redis` crate, with channels and a
//! `mio::Waker` in each direction. It costs a thread hand-off (a channel send and an `eventfd`
//! write) per line each way, and the blocking client's subscription can only be interrupted
//! by a read timeout. Here the loop's own turn batches: every line a turn publishes leaves in
//! one `write` at the turn's end, every message that came back is read in one `read`, and no
//! lock or thread is involved. `redis-protocol` frames RESP without I/O, exactly the sans-I/O
//! shape of the rest of the loop.
//!
//! ## Never waiting, and when the bus counts as lost
//!
//! * Connecting is a non-blocking `connect`; the host name is resolved once, at start, before
//!   the loop runs.
//! * Commands wait in a bounded queue while Redis does not take them: past
//!   [`Bus::queue_limit`](Bus) bytes the bus is lost for this instance — the slow-member rule
//!   one level up, as Redis applies its `client-output-buffer-limit pubsub` to us.
//! * A reply later than [`REPLY_TIMEOUT`] (Redis stopped, a `DEBUG SLEEP` longer than that, a
//!   partition), an error, a reset or an end of stream on either connection: lost too.
//! * Once lost, the bus tries again after 250 ms, doubling up to [`MAX_RETRY`] (the contract's
//!   "at most 5 s between tries"), each time with a new session name, so that what the old
//!   session held is reaped by whoever sees its heartbeat expire.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{debug, info, trace, warn};
use mio::{Registry, Token};

use crate::protocol::bus::{
    decode_event, encode_event, heartbeat_key, holder, next_reply, BusUrl, Reply, RoomKeys,
    DEAD_HOLDERS_SCRIPT, HEARTBEAT_EVERY, HEARTBEAT_PREFIX, HEARTBEAT_TTL, RELEASE_HOLDER_SCRIPT,
    RELEASE_SCRIPT,
};
use crate::protocol::room::{left_notice, members_line};

use link::{Filled, Link, READ_CHUNK};

mod link;
mod requests;

/// The token of the connection that carries commands.
pub(crate) const BUS_COMMANDS_TOKEN: Token = Token(usize::MAX - 2);

/// The token of the connection subscribed to the rooms' channels.
pub(crate) const BUS_SUBSCRIPTION_TOKEN: Token = Token(usize::MAX - 3);

/// How late a reply from Redis may be before the bus counts as lost. A heartbeat goes every
/// [`HEARTBEAT_EVERY`], so a Redis that stopped answering is noticed within this plus that.
pub(crate) const REPLY_TIMEOUT: Duration = Duration::from_secs(3);

/// The first wait before connecting again, doubled at each failure up to [`MAX_RETRY`].
const FIRST_RETRY: Duration = Duration::from_millis(250);

/// The longest wait between two tries (the contract: at most 5 s).
pub(crate) const MAX_RETRY: Duration = Duration::from_secs(5);

/// Most bytes read from the subscription in one turn: a room busy on other instances must not
/// keep this loop from its own clients. The rest is read at the turn's end ([`Bus::has_more`]).
const READ_BUDGET: usize = 16 * READ_CHUNK;

/// One shared room: which endpoint serves it, and its names in Redis.
#[derive(Debug)]
pub(super) struct BusRoom {
    /// The chat endpoint (its index in the loop's endpoints, and so its room).
    pub(super) endpoint: usize,
    /// The room's name on the bus (the port, the socket file's name, the passed socket's name).
    pub(super) name: String,
    keys: RoomKeys,
}

impl BusRoom {
    /// Endpoint `endpoint`'s room, called `name` on database `db`.
    pub(super) fn new(endpoint: usize, name: String, db: u32) -> BusRoom {
        let keys = RoomKeys::new(db, &name);
        BusRoom {
            endpoint,
            name,
            keys,
        }
    }
}

/// What the bus has to tell the loop, collected during a call and handed over after it.
#[derive(Debug)]
pub(super) enum BusEvent {
    /// The connection to Redis is gone: every shared room's members (and newcomers waiting for
    /// their names) must be told and closed.
    Lost,
    /// The member (slab key, connection serial) that asked to join has the name `name`, and
    /// the room has `count` members on all instances.
    Joined {
        /// The room (endpoint index).
        room: usize,
        /// The member's slab key.
        key: usize,
        /// Its connection's serial.
        serial: u64,
        /// The name claimed for it.
        name: String,
        /// Members of the whole room, the newcomer included.
        count: usize,
    },
    /// A `/nick` was answered: renamed (`taken` false) or refused.
    Renamed {
        /// The room.
        room: usize,
        /// The member's slab key.
        key: usize,
        /// Its connection's serial.
        serial: u64,
        /// The name it asked for.
        name: Arc<str>,
        /// Whether another member holds it.
        taken: bool,
    },
    /// A `/who` was answered: `line` is the formatted reply.
    Who {
        /// The room.
        room: usize,
        /// The member's slab key.
        key: usize,
        /// Its connection's serial.
        serial: u64,
        /// `* members: ...`.
        line: Vec<u8>,
    },
    /// A broadcast came back from the room's channel, at its place in the room's order.
    Line {
        /// The room.
        room: usize,
        /// The member of *this* instance not to send it to (its sender), by key and serial.
        except: Option<(usize, u64)>,
        /// Whether this instance published it (its bytes were counted in flight).
        ours: bool,
        /// The room's bytes.
        bytes: Rc<[u8]>,
    },
}

/// What a reply on the command connection answers, in the order the commands were sent.
#[derive(Debug)]
enum Awaiting {
    /// `AUTH`, `SELECT`, the first heartbeat: must be `+OK`.
    Handshake,
    /// A join's name claim.
    Join {
        room: usize,
        key: usize,
        serial: u64,
    },
    /// A `/nick`'s claim.
    Rename {
        room: usize,
        key: usize,
        serial: u64,
        name: Arc<str>,
    },
    /// A `/who`'s `HKEYS`.
    Who {
        room: usize,
        key: usize,
        serial: u64,
    },
    /// The names of a room whose holders' heartbeats are gone.
    DeadHolders { room: usize },
    /// A refresh of this session's heartbeat (`SET ... XX`), sent at `sent`: `nil` means the
    /// key had expired — the others have announced this instance's members as left and freed
    /// their names — so the bus counts as lost.
    Heartbeat { sent: Instant },
    /// A reply nothing depends on (`PUBLISH`'s count, a release, a heartbeat), though its
    /// lateness still counts.
    Nothing,
}

/// Where the bus stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Not connected; the next try is due at `retry_at`.
    Down { retry_at: Instant },
    /// Connecting, since `since`: handshake replies and subscriptions are awaited.
    Connecting { since: Instant },
    /// Connected and subscribed.
    Up,
}

/// The chat bus: its two connections to Redis, what their replies answer, and its state.
#[derive(Debug)]
pub(super) struct Bus {
    url: BusUrl,
    addr: SocketAddr,
    rooms: Vec<BusRoom>,
    state: State,
    /// This connection's session name (new at every connection: see the module doc).
    session: String,
    /// How many sessions this process has started.
    sessions: u64,
    commands: Option<Link>,
    subscription: Option<Link>,
    /// What each reply to come on the command connection answers, with when it was sent.
    awaiting: VecDeque<(Instant, Awaiting)>,
    /// Replies the subscription owes before it is ready (`AUTH`, one per room's `SUBSCRIBE`).
    unconfirmed: usize,
    /// The wait before the next try, after a failure.
    retry: Duration,
    /// When the next heartbeat (and look for dead holders) is due, while up.
    next_heartbeat: Instant,
    /// Unsent command bytes past which the bus counts as lost.
    queue_limit: usize,
    /// Whether the subscription stopped on its read budget with bytes left.
    more_to_read: bool,
    /// Whether the loss was logged at `warn` (once per outage; retries log at debug).
    warned: bool,
    /// A reused buffer for framing a broadcast.
    scratch: Vec<u8>,
    /// When the last heartbeat Redis confirmed was sent: the session's key lives at least
    /// [`HEARTBEAT_TTL`] from then. Past that without a newer confirmation (this process was
    /// stopped, or Redis lags), the others may have reaped this instance's members.
    beat_confirmed: Instant,
    /// A graceful shutdown has ended this session ([`Bus::end_session`]): no more heartbeats
    /// (its key is gone on purpose) and no reconnecting, only the answers still awaited.
    ending: bool,
    /// What the last call found, for the loop to act on.
    pub(super) events: Vec<BusEvent>,
    /// The names this instance's members held when the bus was lost, as `(room, name, holder)`:
    /// released with their `left` notices first thing when the bus is back (before any newcomer
    /// claims a name), so the others hear at once, not when the old session's heartbeat expires.
    /// Without a name: a newcomer's claim whose answer was lost, or not yet announced — its name,
    /// whatever the claim gave, is released by holder, unannounced.
    orphans: Vec<(usize, Option<String>, String)>,
    /// The session whose heartbeat to delete when the bus is back.
    orphaned_session: Option<String>,
    /// Names claimed while connecting, handed over once the subscription is confirmed too: a
    /// newcomer's `joined` notice must not be published before this instance hears the channel
    /// (it takes its place when the notice comes back).
    deferred: Vec<BusEvent>,
}

impl Bus {
    /// A bus on `url` (resolved to `addr`) for `rooms`, not connected yet ([`Bus::start`]).
    /// `queue_limit`: unsent command bytes past which Redis counts as too slow.
    pub(super) fn new(
        url: BusUrl,
        addr: SocketAddr,
        rooms: Vec<BusRoom>,
        queue_limit: usize,
    ) -> Bus {
        Bus {
            url,
            addr,
            rooms,
            state: State::Down {
                retry_at: Instant::now(),
            },
            session: String::new(),
            sessions: 0,
            commands: None,
            subscription: None,
            awaiting: VecDeque::new(),
            unconfirmed: 0,
            retry: FIRST_RETRY,
            next_heartbeat: Instant::now(),
            queue_limit,
            more_to_read: false,
            warned: false,
            scratch: Vec::new(),
            events: Vec::new(),
            ending: false,
            beat_confirmed: Instant::now(),
            orphans: Vec::new(),
            orphaned_session: None,
            deferred: Vec::new(),
        }
    }

    /// Whether a newcomer can ask for its name: the bus is up, or connecting (its claim waits
    /// behind the handshake, so a client that arrives just after the server started, or while
    /// Redis comes back, is not turned away; if the connection fails, it is).
    pub(super) fn takes_members(&self) -> bool {
        self.commands.is_some()
    }

    /// Starts connecting (the first try, at start, or a retry).
    pub(super) fn start(&mut self, registry: &Registry, now: Instant) {
        self.sessions += 1;
        // Unique among every instance on the bus: the process, the time and the try.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        self.session = format!("{:x}.{:x}.{}", std::process::id(), nanos, self.sessions);
        let opened = Link::open(self.addr, registry, BUS_COMMANDS_TOKEN).and_then(|commands| {
            Ok((
                commands,
                Link::open(self.addr, registry, BUS_SUBSCRIPTION_TOKEN)?,
            ))
        });
        let (mut commands, mut subscription) = match opened {
            Ok(links) => links,
            Err(e) => return self.lose(registry, now, &format!("cannot connect: {e}")),
        };
        debug!(
            "chat bus {}: connecting to {} (session {})",
            self.url, self.addr, self.session
        );
        let auth = auth_command(&self.url);
        let db = self.url.db.to_string();
        let heartbeat = heartbeat_key(&self.session);
        let ttl = HEARTBEAT_TTL.as_millis().to_string();
        if let Some(auth) = &auth {
            let auth: Vec<&[u8]> = auth.iter().map(Vec::as_slice).collect();
            commands.queue(&auth);
            subscription.queue(&auth);
            self.awaiting.push_back((now, Awaiting::Handshake));
        }
        commands.queue(&[b"SELECT", db.as_bytes()]);
        commands.queue(&[b"SET", &heartbeat, b"1", b"PX", ttl.as_bytes()]);
        self.awaiting.push_back((now, Awaiting::Handshake));
        self.awaiting.push_back((now, Awaiting::Handshake));
        for (room, name, holder) in &self.orphans {
            let keys = &self.rooms[*room].keys;
            match name {
                Some(name) => {
                    self.scratch.clear();
                    encode_event(&mut self.scratch, &self.session, None, &left_notice(name));
                    queue_release(&mut commands, keys, name, holder.as_bytes(), &self.scratch);
                }
                None => commands.queue(&[
                    b"EVAL",
                    RELEASE_HOLDER_SCRIPT.as_bytes(),
                    b"1",
                    &keys.names,
                    holder.as_bytes(),
                ]),
            }
            self.awaiting.push_back((now, Awaiting::Nothing));
        }
        if let Some(old) = &self.orphaned_session {
            commands.queue(&[b"DEL", &heartbeat_key(old)]);
            self.awaiting.push_back((now, Awaiting::Nothing));
        }
        for room in &self.rooms {
            subscription.queue(&[b"SUBSCRIBE", &room.keys.channel]);
        }
        self.unconfirmed = self.rooms.len() + usize::from(auth.is_some());
        self.commands = Some(commands);
        self.subscription = Some(subscription);
        self.state = State::Connecting { since: now };
        self.flush(registry, now);
    }

    /// Closes both connections and says the bus is lost (`why`, logged), then waits to retry.
    fn lose(&mut self, registry: &Registry, now: Instant, why: &str) {
        // Members to tell: those of a bus that was up, or newcomers waiting for the handshake.
        let had_members = self.state == State::Up
            || !self.deferred.is_empty()
            || self
                .awaiting
                .iter()
                .any(|(_, a)| matches!(a, Awaiting::Join { .. }));
        for mut link in [self.commands.take(), self.subscription.take()]
            .into_iter()
            .flatten()
        {
            let _ = registry.deregister(&mut link.stream);
        }
        // Claims whose answers are lost: the names they took go back when the bus is back.
        let session = &self.session;
        let unanswered = self
            .awaiting
            .iter()
            .filter_map(|(_, awaiting)| match awaiting {
                Awaiting::Join { room, key, .. } => Some((*room, None, holder(session, *key))),
                Awaiting::Rename {
                    room, key, name, ..
                } => {
                    // Its rename notice may have gone out with the claim: announced as it left.
                    Some((*room, Some(name.to_string()), holder(session, *key)))
                }
                _ => None,
            });
        let unannounced = self.deferred.iter().filter_map(|event| match event {
            BusEvent::Joined { room, key, .. } => {
                let room = self.rooms.iter().position(|r| r.endpoint == *room)?;
                Some((room, None, holder(session, *key)))
            }
            _ => None,
        });
        let lost: Vec<_> = unanswered.chain(unannounced).collect();
        if !lost.is_empty() {
            self.orphaned_session = Some(self.session.clone());
            self.orphans.extend(lost);
        }
        self.awaiting.clear();
        self.deferred.clear();
        self.more_to_read = false;
        if !std::mem::replace(&mut self.warned, true) {
            warn!(
                "chat bus {}: {why}; chat is unavailable until it is back (trying again every \
                 {} s at most)",
                self.url,
                MAX_RETRY.as_secs()
            );
        } else {
            debug!(
                "chat bus {}: {why}; trying again in {:?}",
                self.url, self.retry
            );
        }
        self.state = State::Down {
            retry_at: now + self.retry,
        };
        self.retry = (self.retry * 2).min(MAX_RETRY);
        if had_members {
            self.events.push(BusEvent::Lost);
        }
    }

    /// When the bus wants to be woken: the next try, the next heartbeat, or the deadline of the
    /// oldest reply awaited.
    pub(super) fn next_wake(&self) -> Option<Instant> {
        let deadline = self.awaiting.front().map(|(sent, _)| *sent + REPLY_TIMEOUT);
        let own = match self.state {
            State::Down { .. } | State::Connecting { .. } if self.ending => None,
            State::Down { retry_at } => Some(retry_at),
            State::Connecting { since } => Some(since + REPLY_TIMEOUT),
            State::Up if self.ending => None,
            State::Up => Some(self.next_heartbeat),
        };
        match (deadline, own) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Acts on what is due: a retry, a late reply (lost), the heartbeat.
    pub(super) fn on_timer(&mut self, registry: &Registry, now: Instant) {
        if self.ending && self.state != State::Up {
            return; // Shutting down: nothing to connect for.
        }
        if self.has_stalled(now) {
            return self.lose_stalled(registry, now);
        }
        match self.state {
            State::Down { retry_at } if now >= retry_at => return self.start(registry, now),
            State::Down { .. } => return,
            State::Connecting { since } if now >= since + REPLY_TIMEOUT => {
                return self.lose(registry, now, "no answer while connecting")
            }
            _ => {}
        }
        if let Some((sent, _)) = self.awaiting.front() {
            if now >= *sent + REPLY_TIMEOUT {
                let late = now.duration_since(*sent).as_secs_f64();
                return self.lose(
                    registry,
                    now,
                    &format!("Redis has not answered for {late:.1} s"),
                );
            }
        }
        if self.state == State::Up && now >= self.next_heartbeat && !self.ending {
            self.heartbeat(now);
            self.flush(registry, now);
        }
    }

    /// Refreshes this session's heartbeat and asks, for every room, which names are held by
    /// sessions whose heartbeat is gone (released when the answer comes).
    fn heartbeat(&mut self, now: Instant) {
        self.next_heartbeat = now + HEARTBEAT_EVERY;
        let Some(commands) = self.commands.as_mut() else {
            return;
        };
        let key = heartbeat_key(&self.session);
        let ttl = HEARTBEAT_TTL.as_millis().to_string();
        // XX: only refresh. Recreating an expired key would bring back a session whose members
        // the others have already announced as gone.
        commands.queue(&[b"SET", &key, b"1", b"PX", ttl.as_bytes(), b"XX"]);
        self.awaiting
            .push_back((now, Awaiting::Heartbeat { sent: now }));
        for (room, shared) in self.rooms.iter().enumerate() {
            commands.queue(&[
                b"EVAL",
                DEAD_HOLDERS_SCRIPT.as_bytes(),
                b"1",
                &shared.keys.names,
                HEARTBEAT_PREFIX.as_bytes(),
            ]);
            self.awaiting
                .push_back((now, Awaiting::DeadHolders { room }));
        }
    }

    /// Sends what is queued; loses the bus if the connection broke or Redis takes too little.
    pub(super) fn flush(&mut self, registry: &Registry, now: Instant) {
        if self.has_stalled(now) {
            // Lines queued by members the others may have announced as gone must not go out.
            return self.lose_stalled(registry, now);
        }
        let failed = [self.commands.as_mut(), self.subscription.as_mut()]
            .into_iter()
            .flatten()
            .find_map(|link| link.flush().err());
        if let Some(e) = failed {
            let why = match self.state {
                State::Connecting { .. } => {
                    format!("cannot connect to Redis at {}: {e}", self.addr)
                }
                _ => format!("writing to Redis failed: {e}"),
            };
            return self.lose(registry, now, &why);
        }
        let unsent = self.commands.as_ref().map_or(0, Link::unsent);
        if unsent > self.queue_limit {
            let why = format!(
                "Redis is too slow: {unsent} bytes of commands wait, over the {} allowed",
                self.queue_limit
            );
            self.lose(registry, now, &why);
        }
    }

    /// Whether this session's heartbeat may have expired: up, and no heartbeat confirmed for
    /// [`HEARTBEAT_TTL`] (the heartbeat goes every [`HEARTBEAT_EVERY`], and a reply later than
    /// [`REPLY_TIMEOUT`] loses the bus first — unless this whole process was stopped).
    fn has_stalled(&self, now: Instant) -> bool {
        self.state == State::Up && !self.ending && now >= self.beat_confirmed + HEARTBEAT_TTL
    }

    /// Loses the bus because this session's heartbeat may have expired ([`Bus::has_stalled`]).
    fn lose_stalled(&mut self, registry: &Registry, now: Instant) {
        let quiet = now.duration_since(self.beat_confirmed).as_secs_f64();
        let why = format!(
            "no heartbeat confirmed for {quiet:.1} s (was this process stopped?): the other \
             instances may have announced its members as left"
        );
        self.lose(registry, now, &why);
    }

    /// Whether the subscription has bytes left that the read budget did not take.
    pub(super) fn has_more(&self) -> bool {
        self.more_to_read
    }

    /// Whether everything sent has been answered and nothing waits to be sent (a graceful
    /// shutdown waits for that, so the others hear this instance's members leave).
    pub(super) fn is_settled(&self) -> bool {
        self.state != State::Up
            || (self.awaiting.is_empty() && self.commands.as_ref().map_or(0, Link::unsent) == 0)
    }

    /// A readiness event on one of the bus's connections (or, with `token` `None`, the rest of
    /// a read the budget cut short).
    pub(super) fn on_ready(&mut self, token: Option<Token>, registry: &Registry, now: Instant) {
        self.more_to_read = false;
        if self.has_stalled(now) {
            // Before anything it read: what the others said meanwhile assumed this instance
            // gone.
            return self.lose_stalled(registry, now);
        }
        if let Err(why) = self.serve(token, now) {
            return self.lose(registry, now, &why);
        }
        self.flush(registry, now);
    }

    fn serve(&mut self, token: Option<Token>, now: Instant) -> Result<(), String> {
        if token.map_or(true, |t| t == BUS_COMMANDS_TOKEN) {
            // Replies are few and small (they answer what this loop sent): read them all.
            while let Some(filled) = self.fill(BUS_COMMANDS_TOKEN)? {
                self.decode_replies()?;
                if !matches!(filled, Filled::Bytes) {
                    break;
                }
            }
        }
        if token.map_or(true, |t| t == BUS_SUBSCRIPTION_TOKEN) {
            let mut budget = READ_BUDGET;
            while let Some(filled) = self.fill(BUS_SUBSCRIPTION_TOKEN)? {
                self.decode_messages()?;
                if !matches!(filled, Filled::Bytes) {
                    break;
                }
                budget = budget.saturating_sub(READ_CHUNK);
                if budget == 0 {
                    self.more_to_read = true;
                    break;
                }
            }
        }
        if let State::Connecting { since } = self.state {
            // The handshake's heartbeat (sent at `since`) is confirmed with the rest of it.
            self.beat_confirmed = since;
        }
        if matches!(self.state, State::Connecting { .. })
            && self.unconfirmed == 0
            && !self
                .awaiting
                .iter()
                .any(|(_, a)| matches!(a, Awaiting::Handshake))
        {
            self.state = State::Up;
            self.retry = FIRST_RETRY;
            // Released (the commands went before any other): forgotten.
            self.orphans.clear();
            self.orphaned_session = None;
            self.next_heartbeat = now + HEARTBEAT_EVERY;
            let rooms: Vec<&str> = self.rooms.iter().map(|r| r.name.as_str()).collect();
            if std::mem::replace(&mut self.warned, false) {
                warn!("chat bus {}: connected again; chat works again", self.url);
            } else {
                info!(
                    "chat bus {}: connected; room{} {} shared",
                    self.url,
                    if rooms.len() == 1 { "" } else { "s" },
                    rooms.join(", ")
                );
            }
            self.events.append(&mut self.deferred);
        }
        Ok(())
    }

    /// One read of connection `token`: `None` if it is not open; an error (the bus is lost) if it
    /// failed, or reached its end.
    fn fill(&mut self, token: Token) -> Result<Option<Filled>, String> {
        let link = if token == BUS_COMMANDS_TOKEN {
            self.commands.as_mut()
        } else {
            self.subscription.as_mut()
        };
        let Some(link) = link else {
            return Ok(None);
        };
        if let Some(e) = link.stream.take_error().ok().flatten() {
            return Err(format!("cannot reach Redis at {}: {e}", self.addr));
        }
        match link.fill() {
            Ok(Filled::End) => Err("Redis closed the connection".to_owned()),
            Ok(filled) => Ok(Some(filled)),
            Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(Some(Filled::Blocked)),
            Err(e) if matches!(self.state, State::Connecting { .. }) => {
                Err(format!("cannot connect to Redis at {}: {e}", self.addr))
            }
            Err(e) => Err(format!("reading from Redis failed: {e}")),
        }
    }

    /// Takes every complete reply on the command connection, each answering the oldest
    /// command still awaited.
    fn decode_replies(&mut self) -> Result<(), String> {
        let Some(link) = self.commands.as_mut() else {
            return Ok(());
        };
        loop {
            let input = &link.input[link.decoded..];
            let Some((reply, used)) =
                next_reply(input).map_err(|e| format!("not RESP: {}", e.0))?
            else {
                return Ok(());
            };
            let Some((_, awaiting)) = self.awaiting.pop_front() else {
                return Err("a reply to no command".to_owned());
            };
            let event = answer(&self.rooms, &self.session, awaiting, reply)?;
            link.decoded += used;
            match event {
                Answered::Event(event) if self.state != State::Up => self.deferred.push(event),
                Answered::Event(event) => self.events.push(event),
                Answered::Release(releases) => {
                    for (room, name, holder) in releases {
                        let notice = left_notice(&name);
                        self.scratch.clear();
                        encode_event(&mut self.scratch, &self.session, None, &notice);
                        let keys = &self.rooms[room].keys;
                        debug!(
                            "chat bus: room {}: {name} was held by a session whose heartbeat \
                             expired (its instance died or lost Redis): announcing it left",
                            self.rooms[room].name
                        );
                        queue_release(link, keys, &name, &holder, &self.scratch);
                        self.awaiting.push_back((Instant::now(), Awaiting::Nothing));
                    }
                }
                Answered::Beat(sent) => self.beat_confirmed = self.beat_confirmed.max(sent),
                Answered::Nothing => {}
            }
        }
    }

    /// Takes every complete message on the subscription: the rooms' broadcasts, in order.
    fn decode_messages(&mut self) -> Result<(), String> {
        let Some(link) = self.subscription.as_mut() else {
            return Ok(());
        };
        loop {
            let input = &link.input[link.decoded..];
            let Some((reply, used)) =
                next_reply(input).map_err(|e| format!("not RESP: {}", e.0))?
            else {
                return Ok(());
            };
            let Reply::Array(parts) = reply else {
                // `+OK` to AUTH; anything else is an error.
                if let Reply::Error(e) = reply {
                    return Err(format!("Redis refused: {}", String::from_utf8_lossy(e)));
                }
                self.unconfirmed = self.unconfirmed.saturating_sub(1);
                link.decoded += used;
                continue;
            };
            match parts.first().and_then(Reply::bytes) {
                Some(b"message") => {
                    let channel = parts.get(1).and_then(Reply::bytes).unwrap_or_default();
                    let payload = parts.get(2).and_then(Reply::bytes).unwrap_or_default();
                    let room = self.rooms.iter().position(|r| r.keys.channel == channel);
                    match (room, decode_event(payload)) {
                        (Some(room), Some((origin, bytes))) => {
                            let ours = origin.session == self.session.as_bytes();
                            trace!(
                                "chat bus: room {}: {} bytes came back from its channel ({})",
                                self.rooms[room].name,
                                bytes.len(),
                                if ours {
                                    "sent from here"
                                } else {
                                    "from another instance"
                                }
                            );
                            self.events.push(BusEvent::Line {
                                room: self.rooms[room].endpoint,
                                except: origin.except.filter(|_| ours),
                                ours,
                                bytes: bytes.into(),
                            });
                        }
                        _ => debug!(
                            "chat bus: ignored a message on {:?} that is not a oneloop room's",
                            String::from_utf8_lossy(channel)
                        ),
                    }
                }
                Some(b"subscribe") => self.unconfirmed = self.unconfirmed.saturating_sub(1),
                _ => {}
            }
            link.decoded += used;
        }
    }
}

/// What one reply on the command connection leads to.
enum Answered {
    Event(BusEvent),
    /// Names to release, each with its `left` notice: `(room, name, holder)`.
    Release(Vec<(usize, String, Vec<u8>)>),
    /// The heartbeat sent at this moment is confirmed.
    Beat(Instant),
    Nothing,
}

/// Interprets `reply` as the answer to `awaiting`.
fn answer(
    rooms: &[BusRoom],
    session: &str,
    awaiting: Awaiting,
    reply: Reply<'_>,
) -> Result<Answered, String> {
    if let Reply::Error(e) = reply {
        let e = String::from_utf8_lossy(e);
        return match awaiting {
            // Looking for the dead is the one request the room does not wait on: the next look
            // comes in 2 s.
            Awaiting::DeadHolders { .. } => {
                debug!("chat bus: Redis refused the look for dead instances: {e}");
                Ok(Answered::Nothing)
            }
            // Anything else refused (a wrong password, a refused script, a PUBLISH an ACL or
            // `maxmemory` forbids) means a member would wait forever, a line would be lost,
            // or a name would leak: the bus cannot work as set up.
            _ => Err(format!("Redis refused: {e}")),
        };
    }
    Ok(match awaiting {
        Awaiting::Handshake | Awaiting::Nothing => Answered::Nothing,
        Awaiting::Heartbeat { sent } => {
            if reply == Reply::Bulk(None) {
                return Err(
                    "this instance's heartbeat had expired: the other instances have \
                            announced its members as left"
                        .to_owned(),
                );
            }
            Answered::Beat(sent)
        }
        Awaiting::Join { room, key, serial } => {
            let Reply::Array(parts) = reply else {
                return Err("a join's answer is not a name and a count".to_owned());
            };
            let name = parts.first().and_then(Reply::bytes);
            let count = match parts.get(1) {
                Some(Reply::Integer(n)) => usize::try_from(*n).unwrap_or(1),
                _ => 1,
            };
            let name = name
                .and_then(|n| std::str::from_utf8(n).ok())
                .ok_or("a join's answer has no name")?;
            Answered::Event(BusEvent::Joined {
                room: rooms[room].endpoint,
                key,
                serial,
                name: name.to_owned(),
                count,
            })
        }
        Awaiting::Rename {
            room,
            key,
            serial,
            name,
        } => Answered::Event(BusEvent::Renamed {
            room: rooms[room].endpoint,
            key,
            serial,
            name,
            taken: reply != Reply::Integer(1),
        }),
        Awaiting::Who { room, key, serial } => {
            let Reply::Array(names) = reply else {
                return Err("HKEYS did not answer a list".to_owned());
            };
            let line = members_line(names.iter().filter_map(Reply::bytes));
            Answered::Event(BusEvent::Who {
                room: rooms[room].endpoint,
                key,
                serial,
                line,
            })
        }
        Awaiting::DeadHolders { room } => {
            let Reply::Array(flat) = reply else {
                return Ok(Answered::Nothing);
            };
            let mut dead = Vec::new();
            for pair in flat.chunks_exact(2) {
                let (Some(name), Some(holder)) = (pair[0].bytes(), pair[1].bytes()) else {
                    continue;
                };
                let Ok(name) = std::str::from_utf8(name) else {
                    continue;
                };
                // Never this session's own (its heartbeat is alive; this is only a guard).
                if crate::protocol::bus::holder_session(holder) == Some(session) {
                    continue;
                }
                dead.push((room, name.to_owned(), holder.to_vec()));
            }
            Answered::Release(dead)
        }
    })
}

/// Queues on `link` the release of `name` from `holder` in the room whose keys are `keys`,
/// publishing `payload` with it (a framed `left` notice; empty: unannounced).
fn queue_release(link: &mut Link, keys: &RoomKeys, name: &str, holder: &[u8], payload: &[u8]) {
    link.queue(&[
        b"EVAL",
        RELEASE_SCRIPT.as_bytes(),
        b"2",
        &keys.names,
        &keys.channel,
        name.as_bytes(),
        holder,
        payload,
    ]);
}

/// `AUTH [USER] PASSWORD`, when the URL has credentials.
fn auth_command(url: &BusUrl) -> Option<Vec<Vec<u8>>> {
    let password = url.password.as_ref()?;
    let mut command = vec![b"AUTH".to_vec()];
    if let Some(user) = &url.user {
        command.push(user.clone().into_bytes());
    }
    command.push(password.clone().into_bytes());
    Some(command)
}
