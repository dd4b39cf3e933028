//! What a shared room asks of the bus, queued on the command connection: publishing a broadcast,
//! claiming, renaming and releasing names, listing them.

use std::sync::Arc;
use std::time::Instant;

use crate::protocol::bus::{encode_event, heartbeat_key, holder, JOIN_SCRIPT, NICK_SCRIPT};

use super::{queue_release, Awaiting, Bus, State};

/// The room's requests, queued on the command connection (the loop's side calls them while
/// routing what a shared room decided). A claim may be queued while the bus connects (it goes
/// behind the handshake); a broadcast only once the bus is up (a newcomer's `joined` notice
/// must come back to this instance). Each is a no-op while the bus is down: the loop has no
/// shared member then.
impl Bus {
    /// Publishes a broadcast of room `endpoint` from this instance (`except`: the sender, by
    /// key and serial).
    pub(in crate::reactor) fn publish(
        &mut self,
        endpoint: usize,
        except: Option<(usize, u64)>,
        bytes: &[u8],
    ) {
        let Some(room) = self.rooms.iter().position(|r| r.endpoint == endpoint) else {
            return;
        };
        let (Some(commands), State::Up) = (self.commands.as_mut(), self.state) else {
            return;
        };
        self.scratch.clear();
        encode_event(&mut self.scratch, &self.session, except, bytes);
        commands.queue(&[b"PUBLISH", &self.rooms[room].keys.channel, &self.scratch]);
        self.awaiting.push_back((Instant::now(), Awaiting::Nothing));
    }

    /// Claims `name` (or the first free suffix of it) for joining member `key`.
    pub(in crate::reactor) fn join(
        &mut self,
        endpoint: usize,
        key: usize,
        serial: u64,
        name: &str,
    ) {
        let Some(room) = self.rooms.iter().position(|r| r.endpoint == endpoint) else {
            return;
        };
        let holder = holder(&self.session, key);
        let Some(commands) = self.commands.as_mut() else {
            return;
        };
        commands.queue(&[
            b"EVAL",
            JOIN_SCRIPT.as_bytes(),
            b"1",
            &self.rooms[room].keys.names,
            name.as_bytes(),
            holder.as_bytes(),
        ]);
        self.awaiting
            .push_back((Instant::now(), Awaiting::Join { room, key, serial }));
    }

    /// Asks for `name` for member `key` (now `old`), publishing `notice` if it is free.
    pub(in crate::reactor) fn rename(
        &mut self,
        endpoint: usize,
        (key, serial): (usize, u64),
        old: &str,
        name: Arc<str>,
        notice: &[u8],
    ) {
        let Some(room) = self.rooms.iter().position(|r| r.endpoint == endpoint) else {
            return;
        };
        let holder = holder(&self.session, key);
        let Some(commands) = self.commands.as_mut() else {
            return;
        };
        self.scratch.clear();
        encode_event(&mut self.scratch, &self.session, None, notice);
        let keys = &self.rooms[room].keys;
        commands.queue(&[
            b"EVAL",
            NICK_SCRIPT.as_bytes(),
            b"2",
            &keys.names,
            &keys.channel,
            old.as_bytes(),
            name.as_bytes(),
            holder.as_bytes(),
            &self.scratch,
        ]);
        self.awaiting.push_back((
            Instant::now(),
            Awaiting::Rename {
                room,
                key,
                serial,
                name,
            },
        ));
    }

    /// Asks for every name in room `endpoint`, for member `key`'s `/who`.
    pub(in crate::reactor) fn who(&mut self, endpoint: usize, key: usize, serial: u64) {
        let Some(room) = self.rooms.iter().position(|r| r.endpoint == endpoint) else {
            return;
        };
        let Some(commands) = self.commands.as_mut() else {
            return;
        };
        commands.queue(&[b"HKEYS", &self.rooms[room].keys.names]);
        self.awaiting
            .push_back((Instant::now(), Awaiting::Who { room, key, serial }));
    }

    /// Frees member `key`'s `name`, publishing `notice` (nothing if empty) with it.
    pub(in crate::reactor) fn release(
        &mut self,
        endpoint: usize,
        key: usize,
        name: &str,
        notice: &[u8],
    ) {
        let Some(room) = self.rooms.iter().position(|r| r.endpoint == endpoint) else {
            return;
        };
        let holder = holder(&self.session, key);
        let Some(commands) = self.commands.as_mut() else {
            return;
        };
        self.scratch.clear();
        if !notice.is_empty() {
            encode_event(&mut self.scratch, &self.session, None, notice);
        }
        let keys = &self.rooms[room].keys;
        queue_release(commands, keys, name, holder.as_bytes(), &self.scratch);
        self.awaiting.push_back((Instant::now(), Awaiting::Nothing));
    }

    /// The bus was lost while member `key` of room `endpoint` held `name`: it is released,
    /// announced, when the bus is back.
    pub(in crate::reactor) fn orphan(&mut self, endpoint: usize, key: usize, name: &str) {
        let Some(room) = self.rooms.iter().position(|r| r.endpoint == endpoint) else {
            return;
        };
        let holder = holder(&self.session, key);
        self.orphaned_session = Some(self.session.clone());
        self.orphans.push((room, Some(name.to_owned()), holder));
    }

    /// At a graceful shutdown: this session's heartbeat goes at once (whatever is left of its
    /// names is reaped by the other instances at their next look).
    pub(in crate::reactor) fn end_session(&mut self) {
        self.ending = true;
        let key = heartbeat_key(&self.session);
        if let (Some(commands), State::Up) = (self.commands.as_mut(), self.state) {
            commands.queue(&[b"DEL", &key]);
            self.awaiting.push_back((Instant::now(), Awaiting::Nothing));
        }
    }
}
