//! The `User` actor: one per user with a device online on this node. It
//! knows the user's sessions, fans every event out to all of them (so a
//! burn reaches every device at once), and keeps presence.

use std::sync::Arc;

use actix::prelude::*;

use crate::directory::Directory;
use crate::frames::ServerFrame;
use crate::ids::{DeviceId, UserId};
use crate::metrics::Kind;
use crate::session::{CloseSocket, SessionLink};
use crate::store::{blocking, now_ms, ReadError, Store};

/// A session of this user starts; it gets the user's live events from now.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Attach {
    /// The session's serial number on this node.
    pub serial: u64,
    /// Its device.
    pub device: DeviceId,
    /// Where to push frames.
    pub link: SessionLink,
    /// Closes when the session is gone, even by a crash (no `Detach`).
    pub alive: crate::AliveWatch,
}

/// A session of this user ended.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Detach {
    /// The session's serial number.
    pub serial: u64,
}

/// A frame with no cursor (typing, presence) for every device but one.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Ephemeral {
    /// The frame's text.
    pub text: Arc<str>,
    /// A device that must not get it.
    pub except_device: Option<DeviceId>,
}

/// A device logged out: close its sockets (close code 4401).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Revoke {
    /// The device.
    pub device: DeviceId,
}

/// Close every socket of this user (server shutdown).
#[derive(Message)]
#[rtype(result = "()")]
pub struct CloseAll {
    /// The close code.
    pub code: u16,
    /// A content-free reason.
    pub reason: &'static str,
}

impl Handler<CloseAll> for User {
    type Result = ();

    fn handle(&mut self, msg: CloseAll, _: &mut Self::Context) {
        for Attached { link, .. } in self.sessions().iter() {
            link.addr.do_send(CloseSocket {
                code: msg.code,
                reason: msg.reason,
            });
        }
    }
}

/// The operator restarts this actor (through its supervisor).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Restart;

/// One user's actor.
pub struct User {
    dir: Arc<Directory>,
    deps: Arc<crate::directory::Deps>,
    id: UserId,
    /// Its sessions, shared with the directory: committed events go from
    /// the storage writer straight to them ([`crate::send::deliver`]).
    sessions: Sessions,
    /// Dropped with this actor (a crash included): its sessions wait on it
    /// to attach to a replacement.
    _alive: crate::Alive,
    started_at: std::time::Instant,
    restarts: u64,
    /// The actor's span.
    span: tracing::Span,
    /// Its mailbox depth (messages routed through the directory).
    depth: crate::Depth,
}

/// A user's attached sessions. The user actor adds and removes them; the
/// storage writer reads them to push committed events.
pub type Sessions = Arc<std::sync::Mutex<Vec<Attached>>>;

/// A session attached to a user actor.
pub struct Attached {
    /// The session's serial number on this node.
    serial: u64,
    pub(crate) device: DeviceId,
    pub(crate) link: SessionLink,
    /// Closes when the session is gone.
    alive: crate::AliveWatch,
}

impl User {
    /// A user actor with no sessions yet.
    pub fn new(
        dir: Arc<Directory>,
        id: UserId,
        sessions: Sessions,
        depth: crate::Depth,
        alive: crate::Alive,
    ) -> Self {
        User {
            deps: Arc::clone(dir.deps()),
            dir,
            id,
            sessions,
            _alive: alive,
            started_at: std::time::Instant::now(),
            restarts: 0,
            span: tracing::info_span!("user", user = %id),
            depth,
        }
    }

    fn sessions(&self) -> std::sync::MutexGuard<'_, Vec<Attached>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn push(&self, cursor: Option<u64>, text: Arc<str>, except: Option<DeviceId>) {
        push(&self.sessions(), cursor, text, except);
    }
}

/// Who sees whose presence, from one user's conversations. Presence goes
/// only from a member who speaks in a conversation (sent a message in it,
/// or created the group) to its other members: being added to a group, or
/// sent a message, reveals nothing of a user until they answer.
#[derive(Debug, Default)]
pub struct Contacts {
    /// Who gets this user's presence.
    pub audience: Vec<UserId>,
    /// Whose presence this user gets.
    pub visible: Vec<UserId>,
}

/// The presence relations of `user`.
pub fn contacts(store: &dyn Store, user: UserId) -> Result<Contacts, ReadError> {
    let mut out = Contacts::default();
    for conv in store.user_conversations(user)? {
        let Some(rec) = store.conversation(conv)? else {
            continue;
        };
        let others = rec.members.iter().copied().filter(|m| *m != user);
        if rec.speaks(user) {
            out.audience.extend(others.clone());
        }
        out.visible.extend(others.filter(|m| rec.speaks(*m)));
    }
    for list in [&mut out.audience, &mut out.visible] {
        list.sort();
        list.dedup();
    }
    Ok(out)
}

/// Tells `user`'s audience that they came online or went offline: how
/// the session registry announces presence in cluster mode.
pub async fn announce(dir: Arc<Directory>, user: UserId, online: bool, last_seen: Option<u64>) {
    let store = Arc::clone(&dir.deps().store);
    let Ok(contacts) = blocking(move || contacts(&*store, user)).await else {
        tracing::warn!(user = %user, "could not load contacts for presence");
        return;
    };
    let frame = presence_frame(user, online, last_seen);
    for c in contacts.audience {
        dir.tell_ephemeral(c, Arc::clone(&frame));
    }
}

fn presence_frame(user: UserId, online: bool, last_seen: Option<u64>) -> Arc<str> {
    let status = if online { "online" } else { "offline" };
    ServerFrame::Presence {
        user_id: user,
        status,
        last_seen,
    }
    .to_text()
    .into()
}

impl Actor for User {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.started_at = std::time::Instant::now();
        // `stopped` runs before every supervised restart too: they pair up.
        self.deps.metrics.live_actors.get_or_create(&KIND).inc();
        tracing::debug!(user = %self.id, "user actor started");
        // (Again after a supervised restart, which cancels the watches.)
        let watches: Vec<_> = self
            .sessions()
            .iter()
            .map(|a| (a.serial, a.alive.clone()))
            .collect();
        for (serial, alive) in watches {
            self.watch_session(serial, alive, ctx);
        }
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        self.deps.metrics.live_actors.get_or_create(&KIND).dec();
    }
}

const KIND: Kind = Kind { kind: "user" };

impl actix::Supervised for User {
    fn restarting(&mut self, _: &mut Self::Context) {
        // The sessions are live sockets, not state: they stay attached and
        // keep receiving; everything else is rebuilt.
        self.restarts += 1;
        self.deps.metrics.restarts.get_or_create(&KIND).inc();
        tracing::info!(user = %self.id, "user actor restarting");
    }
}

impl Handler<Restart> for User {
    type Result = ();

    fn handle(&mut self, _: Restart, ctx: &mut Self::Context) {
        ctx.stop();
    }
}

#[cfg(feature = "faults")]
impl Handler<crate::Panic> for User {
    type Result = ();

    fn handle(&mut self, _: crate::Panic, _: &mut Self::Context) {
        panic!("injected fault in a user actor");
    }
}

/// Messages routed through the directory arrive `Counted`: the mailbox
/// depth goes down, then the message's own handler runs.
macro_rules! counted {
    ($($m:ty),* $(,)?) => {$(
        impl Handler<crate::Counted<$m>> for User {
            type Result = <Self as Handler<$m>>::Result;

            fn handle(&mut self, msg: crate::Counted<$m>, ctx: &mut Self::Context) -> Self::Result {
                self.depth.pop();
                <Self as Handler<$m>>::handle(self, msg.0, ctx)
            }
        }
    )*};
}

counted!(Ephemeral, Revoke, Detach);

impl Handler<crate::Summarize> for User {
    type Result = actix::MessageResult<crate::Summarize>;

    fn handle(&mut self, _: crate::Summarize, _: &mut Self::Context) -> Self::Result {
        actix::MessageResult(crate::ActorSummary {
            kind: "user",
            id: self.id.to_string(),
            timers_armed: 0,
            mailbox_depth: self.depth.get(),
            attached: self.sessions().len(),
            uptime_seconds: self.started_at.elapsed().as_secs(),
            restarts: self.restarts,
        })
    }
}

impl Handler<Attach> for User {
    type Result = ();

    fn handle(&mut self, msg: Attach, ctx: &mut Self::Context) {
        let span = self.span.clone();
        let _in = span.enter();
        self.dir.attached(self.id);
        let came_online = self.sessions().is_empty();
        let session = msg.link.clone();
        self.watch_session(msg.serial, msg.alive.clone(), ctx);
        self.sessions().push(Attached {
            serial: msg.serial,
            device: msg.device,
            link: msg.link,
            alive: msg.alive,
        });
        let store = Arc::clone(&self.deps.store);
        let router = self.deps.router.clone();
        let id = self.id;
        // Cluster mode: a contact may be online on another node, so Redis
        // says who is online anywhere (one round trip for all of them;
        // without Redis, those online here are all this device learns).
        // The same round trip brings the calls ringing this user from
        // other nodes, which ring this device too.
        let fut = blocking(move || {
            let contacts = contacts(&*store, id)?;
            let cluster = match &router {
                Some(r) => r.attach_blocking(id, &contacts.visible).unwrap_or_default(),
                None => Default::default(),
            };
            Ok((contacts, cluster))
        });
        let device = msg.device;
        // In cluster mode the session registry announces this user (it
        // knows whether a device is online on another node).
        let announce = came_online && self.deps.router.is_none();
        ctx.spawn(fut.into_actor(self).map(move |res, act, _| {
            let Ok((contacts, cluster)) = res else {
                tracing::warn!(user = %act.id, "could not load contacts for presence");
                return;
            };
            if announce {
                let me_online = presence_frame(act.id, true, None);
                for c in contacts.audience {
                    act.dir.tell_ephemeral(c, Arc::clone(&me_online));
                }
            }
            for (i, c) in contacts.visible.into_iter().enumerate() {
                if cluster.online.get(i).copied().unwrap_or(false) || act.dir.is_online(c) {
                    session.push(None, presence_frame(c, true, None));
                }
            }
            crate::call::ring_here(&act.dir, device, cluster.ringing);
        }));
    }
}

impl Handler<Detach> for User {
    type Result = ();

    fn handle(&mut self, msg: Detach, ctx: &mut Self::Context) {
        let span = self.span.clone();
        let _in = span.enter();
        self.forget(msg.serial, ctx);
    }
}

impl User {
    /// A session that dies without detaching (a crash) is dropped when its
    /// `alive` channel closes, so presence and retirement still happen.
    /// Waiting costs nothing while the session lives (no polling).
    fn watch_session(&self, serial: u64, alive: crate::AliveWatch, ctx: &mut Context<Self>) {
        ctx.spawn(
            actix::fut::wrap_future::<_, Self>(crate::gone(alive))
                .map(move |(), act, ctx| act.forget(serial, ctx)),
        );
    }

    /// The session `serial` is gone.
    fn forget(&mut self, serial: u64, ctx: &mut Context<Self>) {
        self.sessions().retain(|a| a.serial != serial);
        self.leave_if_last(ctx);
    }

    /// When the last device has left: tell the contacts, then stop.
    fn leave_if_last(&mut self, ctx: &mut Context<Self>) {
        if !self.sessions().is_empty() || !self.dir.retire_user(self.id, &ctx.address()) {
            return;
        }
        // Cluster mode: the session registry tells the contacts, if this
        // was the user's last device anywhere.
        if self.deps.router.is_some() {
            ctx.stop();
            return;
        }
        // The last device left: tell the contacts, then stop.
        let store = Arc::clone(&self.deps.store);
        let id = self.id;
        let last_seen = now_ms();
        let fut = blocking(move || contacts(&*store, id));
        ctx.wait(fut.into_actor(self).map(move |res, act, ctx| {
            if let Ok(contacts) = res {
                let frame = presence_frame(act.id, false, Some(last_seen));
                for c in contacts.audience {
                    act.dir.tell_ephemeral(c, Arc::clone(&frame));
                }
            }
            ctx.stop();
        }));
    }
}

/// One frame to every session but `except`'s.
pub(crate) fn push(
    sessions: &[Attached],
    cursor: Option<u64>,
    text: Arc<str>,
    except: Option<DeviceId>,
) -> usize {
    let mut pushed = 0;
    for Attached { device, link, .. } in sessions {
        if Some(*device) != except {
            link.push(cursor, Arc::clone(&text));
            pushed += 1;
        }
    }
    pushed
}

impl Handler<Ephemeral> for User {
    type Result = ();

    fn handle(&mut self, msg: Ephemeral, _: &mut Self::Context) {
        self.push(None, msg.text, msg.except_device);
    }
}

impl Handler<Revoke> for User {
    type Result = ();

    fn handle(&mut self, msg: Revoke, _: &mut Self::Context) {
        for Attached { device, link, .. } in self.sessions().iter() {
            if *device == msg.device {
                link.addr.do_send(CloseSocket {
                    code: 4401,
                    reason: "session revoked",
                });
            }
        }
    }
}
