//! A shared room in the loop: what the chat bus brings back, handed to the room and its members.
//!
//! With `--chat-bus`, a room's broadcasts do not go into its log when the room decides them:
//! `reactor::chat` publishes them ([`Bus::publish`]) and they enter the log here, when they come
//! back from Redis at their place in the room's order ([`BusEvent::Line`]) — a member's own
//! line too, which the log skips for it as in one process. The loop's flow control counts what
//! is in flight, so a flood waits for its round trip instead of piling up in the bus's queue.
//!
//! Names wait for the bus: a newcomer is not read (and not written to) until its name is
//! claimed ([`BusEvent::Joined`]), and a member that sent `/nick` is not read until the answer
//! ([`BusEvent::Renamed`]), so its next line carries the name it asked for, or follows the
//! refusal. When the bus is lost, every member of a shared room is told `* chat bus lost` and
//! closed, and newcomers get `error chat unavailable`, until it is back.

use log::{debug, trace};
use slab::Slab;

use crate::clock::Now;
use crate::protocol::room::{BusRequest, Delivery, MemberId, Room};

use super::access;
use super::bus::{Bus, BusEvent};
use super::counters::EndCause;
use super::handler::Client;
use super::Reactor;

/// What a member of a shared room is told when the bus is lost, before its connection ends.
pub(crate) const BUS_LOST_NOTICE: &[u8] = b"* chat bus lost\n";

/// What a chat client is told when it connects while the bus is down, before it is closed.
pub(crate) const CHAT_UNAVAILABLE_REPLY: &[u8] = b"error chat unavailable\n";

impl Reactor {
    /// A readiness event on one of the bus's connections.
    pub(super) fn on_bus_ready(&mut self, token: mio::Token, now: &Now) {
        if let Some(bus) = self.bus.as_mut() {
            bus.on_ready(Some(token), self.poll.registry(), now.instant);
            self.apply_bus_events();
        }
    }

    /// At the turn's end: reads what the subscription's budget left, sends what the turn
    /// queued for Redis (every line published this turn leaves in one write), and keeps the
    /// bus's timer.
    pub(super) fn serve_bus(&mut self, now: &Now) {
        let Some(bus) = self.bus.as_mut() else {
            return;
        };
        if bus.has_more() {
            bus.on_ready(None, self.poll.registry(), now.instant);
        }
        bus.flush(self.poll.registry(), now.instant);
        self.apply_bus_events();
        self.schedule_bus();
    }

    /// The bus's timer fired: a retry, a heartbeat, or the deadline of a reply.
    pub(super) fn bus_timer(&mut self, now: &Now) {
        if let Some(bus) = self.bus.as_mut() {
            self.bus_wake = None;
            bus.on_timer(self.poll.registry(), now.instant);
            self.apply_bus_events();
            self.schedule_bus();
        }
    }

    /// Sets the bus's timer, if it wants one earlier than the one already set.
    pub(super) fn schedule_bus(&mut self) {
        let Some(at) = self.bus.as_ref().and_then(Bus::next_wake) else {
            return;
        };
        if self.bus_wake.map_or(true, |set| at < set) {
            self.bus_wake = Some(at);
            self.timers.push(std::cmp::Reverse((at, super::Wake::Bus)));
        }
    }

    /// Hands what the bus found to the rooms and their members.
    fn apply_bus_events(&mut self) {
        let Some(bus) = self.bus.as_mut() else {
            return;
        };
        let mut events = std::mem::take(&mut bus.events);
        for event in events.drain(..) {
            match event {
                BusEvent::Lost => self.evict_shared_members(),
                BusEvent::Line {
                    room,
                    except,
                    ours,
                    bytes,
                } => {
                    let Some(chat) = self.rooms[room].as_mut() else {
                        continue;
                    };
                    // Only members' broadcasts were counted in flight (the notices the
                    // scripts publish were not).
                    if ours && except.is_some() {
                        chat.pace.returned(bytes.len());
                    }
                    // The sender is skipped only if it is still the same connection.
                    let except = except
                        .filter(|&(key, serial)| serial_of(&self.clients, key) == Some(serial));
                    if let Some((key, serial)) = except {
                        self.take_place(room, key, serial);
                    }
                    if let Some(chat) = self.rooms[room].as_mut() {
                        chat.log.append(bytes, except.map(|(key, _)| MemberId(key)));
                    }
                    self.list_room(room);
                }
                BusEvent::Joined {
                    room,
                    key,
                    serial,
                    name,
                    count,
                } => self.joined(room, (key, serial), &name, count),
                BusEvent::Renamed {
                    room,
                    key,
                    serial,
                    name,
                    taken,
                } => {
                    if self.waiting_member(room, key, serial).is_none() {
                        if !taken {
                            // It left while asking: the name it got goes, announced.
                            let notice = crate::protocol::room::left_notice(&name);
                            if let Some(bus) = self.bus.as_mut() {
                                bus.release(room, key, &name, &notice);
                            }
                        }
                        continue;
                    };
                    let Some(chat) = self.rooms[room].as_mut() else {
                        continue;
                    };
                    if taken {
                        chat.room
                            .rename_refused(MemberId(key), &mut self.deliveries);
                    } else {
                        trace!("chat bus: conn #{serial} is {name} now, on every instance");
                        chat.room.renamed(MemberId(key), &name);
                        if let Some(record) =
                            self.clients.get_mut(key).and_then(|c| c.conn.access_mut())
                        {
                            record.note_name(Some(&name));
                        }
                    }
                    self.route(room);
                    self.resume_member(key);
                }
                BusEvent::Who {
                    room,
                    key,
                    serial,
                    line,
                } => {
                    if self.waiting_member(room, key, serial).is_some() {
                        self.deliveries.push(Delivery::To {
                            member: MemberId(key),
                            bytes: line,
                        });
                        self.route(room);
                        self.resume_member(key);
                    }
                }
            }
        }
        if let Some(bus) = self.bus.as_mut() {
            if bus.events.is_empty() {
                bus.events = events; // keep the allocation
            }
        }
    }

    /// If member `key` (serial `serial`) is a newcomer, the broadcast that skips it and comes
    /// back now is its own `joined` notice: its place in the room's order. It is owed every
    /// line from here on, after its greeting, and is read from now on.
    fn take_place(&mut self, room: usize, key: usize, serial: u64) {
        let Some(chat) = self.rooms[room].as_mut() else {
            return;
        };
        if chat.greetings.get(&key).map_or(true, |(s, _)| *s != serial) {
            return; // The steady state: a member's line, not a newcomer's notice.
        }
        let Some((_, greeting)) = chat.greetings.remove(&key) else {
            return;
        };
        let Some((conn, member)) = self.clients.get_mut(key).and_then(Client::as_member_mut) else {
            return;
        };
        member.joined_via_bus(&chat.log);
        trace!("chat bus: conn #{serial}'s joined notice is back: it is in the room's order now");
        if member.queue_own_line(conn, &chat.log, greeting.into()) {
            self.outbox.members.push(key);
        }
        self.resume_member(key);
    }

    /// The bus claimed `name` for the newcomer `key`: it joins the room (its `joined` notice
    /// published), and its greeting waits for that notice to come back (`take_place`). A
    /// newcomer gone meanwhile gives the name back, unannounced.
    fn joined(&mut self, room: usize, (key, serial): (usize, u64), name: &str, count: usize) {
        let Some(chat) = self.rooms[room].as_mut() else {
            return;
        };
        let waiting = self
            .clients
            .get_mut(key)
            .filter(|c| c.conn.id == serial && !c.conn.is_closed())
            .and_then(Client::as_member_mut);
        // Gone meanwhile, or the server is shutting down (its members have left the room for
        // the other instances already): the name goes back, never announced.
        if waiting.is_none() || self.shutdown_deadline.is_some() {
            if let Some(client) = self
                .clients
                .get_mut(key)
                .filter(|c| c.conn.id == serial && !c.conn.is_closed())
            {
                client
                    .conn
                    .close(EndCause::Shutdown, "shutting down before it joined");
                self.finished.push(key);
            }
            if let Some(bus) = self.bus.as_mut() {
                bus.release(room, key, name, b"");
            }
            return;
        }
        trace!("chat bus: conn #{serial} joins as {name}; {count} in the room on every instance");
        let before = self.deliveries.len();
        chat.room
            .join_as(MemberId(key), name, count, &mut self.deliveries);
        if let Some(client) = self.clients.get_mut(key) {
            access::log_join(&mut client.conn, self.endpoints[room].service(), name);
        }
        // The greeting is the room's reply to it alone: it waits for its place.
        if let Some(at) = self.deliveries[before..]
            .iter()
            .position(|d| matches!(d, Delivery::To { member, .. } if member.0 == key))
        {
            if let Delivery::To { bytes, .. } = self.deliveries.remove(before + at) {
                chat.greetings.insert(key, (serial, bytes));
            }
        }
        self.route(room);
    }

    /// Whether member `key` (serial `serial`) of `room` is still that member, there to get
    /// the bus's answer: if so, it no longer waits for it.
    fn waiting_member(&mut self, room: usize, key: usize, serial: u64) -> Option<()> {
        self.rooms[room].as_ref()?;
        let (conn, member) = self.clients.get_mut(key).and_then(Client::as_member_mut)?;
        if conn.id != serial || conn.is_closed() {
            return None;
        }
        member.bus_answered();
        Some(())
    }

    /// A member the bus has answered is read again: on the still-ready queue, since no new edge
    /// will come for input that already waits.
    fn resume_member(&mut self, key: usize) {
        if let Some(client) = self.clients.get_mut(key) {
            if !client.conn.queued && !client.conn.is_closed() {
                client.conn.queued = true;
                self.still_ready.push(mio::Token(key));
            }
        }
    }

    /// A chat client arrived on a shared room's endpoint: its name is claimed first, or, with
    /// the bus down, it is told chat is unavailable and closed.
    pub(super) fn join_through_bus(&mut self, key: usize, room: usize, name: &str) {
        let serial = serial_of(&self.clients, key).unwrap_or_default();
        match self.bus.as_mut().filter(|bus| bus.takes_members()) {
            Some(bus) => {
                if let Some((_, member)) = self.clients.get_mut(key).and_then(Client::as_member_mut)
                {
                    member.wait_for_bus();
                }
                trace!("chat bus: conn #{serial} waits for its name ({name}) to be claimed");
                bus.join(room, key, serial, name);
            }
            None => {
                debug!("conn #{serial}: chat refused, the chat bus is down");
                self.deliveries.push(Delivery::To {
                    member: MemberId(key),
                    bytes: CHAT_UNAVAILABLE_REPLY.to_vec(),
                });
                self.deliveries.push(Delivery::Close {
                    member: MemberId(key),
                });
                self.route(room);
            }
        }
    }

    /// The bus is lost: every member of a shared room is told and closed; the rooms are empty
    /// (the other instances reap the names when this session's heartbeat expires).
    fn evict_shared_members(&mut self) {
        let members: Vec<(usize, usize, bool)> = self
            .clients
            .iter()
            .filter_map(|(key, client)| {
                let room = client.chat_room()?;
                let (conn, member) = client.as_member()?;
                (!conn.is_closed()).then_some((key, room, member.is_joining()))
            })
            .collect();
        for (key, room, joining) in members {
            let Some(chat) = self.rooms[room].as_mut() else {
                continue;
            };
            if !chat.room.is_shared() {
                continue;
            }
            if let Some((_, member)) = self.clients.get_mut(key).and_then(Client::as_member_mut) {
                if joining {
                    member.joined_via_bus(&chat.log);
                } else {
                    member.bus_answered();
                }
            }
            let bytes = if joining {
                CHAT_UNAVAILABLE_REPLY
            } else {
                BUS_LOST_NOTICE
            };
            self.deliveries.push(Delivery::To {
                member: MemberId(key),
                bytes: bytes.to_vec(),
            });
            self.deliveries.push(Delivery::Close {
                member: MemberId(key),
            });
        }
        for room in 0..self.rooms.len() {
            let Some(chat) = self.rooms[room].as_mut() else {
                continue;
            };
            if chat.room.is_shared() {
                if let Some(bus) = self.bus.as_mut() {
                    for member in chat.room.members() {
                        if let Some(name) = chat.room.name(member) {
                            bus.orphan(room, member.0, name);
                        }
                    }
                }
                chat.room.clear();
                chat.pace.reset();
                chat.greetings.clear();
                self.route(room);
            }
        }
    }

    /// At a graceful shutdown: every member of a shared room leaves the room for the other
    /// instances (`* NAME left` there), and this session ends.
    pub(super) fn leave_bus(&mut self) {
        let Some(bus) = self.bus.as_mut() else {
            return;
        };
        for (index, chat) in self.rooms.iter().enumerate() {
            let Some(chat) = chat.as_ref().filter(|c| c.room.is_shared()) else {
                continue;
            };
            for member in chat.room.members() {
                if let Some(name) = chat.room.name(member) {
                    bus.release(
                        index,
                        member.0,
                        name,
                        &crate::protocol::room::left_notice(name),
                    );
                }
            }
        }
        bus.end_session();
    }
}

/// Sends one of a shared room's decisions to the bus (called by `route`): a broadcast is
/// published, a request asked. `room` is the room as it is now (a member that asks `/nick`
/// still has its old name).
pub(super) fn send_to_bus(
    bus: &mut Bus,
    clients: &Slab<Client>,
    room: &Room,
    endpoint: usize,
    delivery: Delivery,
) {
    match delivery {
        Delivery::Broadcast { except, bytes } => {
            let except = except.and_then(|m| Some((m.0, serial_of(clients, m.0)?)));
            bus.publish(endpoint, except, &bytes);
        }
        Delivery::Bus(BusRequest::Rename {
            member,
            name,
            notice,
        }) => {
            let (Some(serial), Some(old)) = (serial_of(clients, member.0), room.name(member))
            else {
                return;
            };
            bus.rename(endpoint, (member.0, serial), old, name, &notice);
        }
        Delivery::Bus(BusRequest::Who { member }) => {
            if let Some(serial) = serial_of(clients, member.0) {
                bus.who(endpoint, member.0, serial);
            }
        }
        Delivery::Bus(BusRequest::Release {
            member,
            name,
            notice,
        }) => bus.release(endpoint, member.0, &name, &notice),
        Delivery::To { .. } | Delivery::Close { .. } => {
            unreachable!("routed by the loop itself")
        }
    }
}

/// The connection serial of slab entry `key`, if there is one.
fn serial_of(clients: &Slab<Client>, key: usize) -> Option<u64> {
    clients.get(key).map(|c| c.conn.id)
}
