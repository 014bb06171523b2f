//! The `Call` actor: one per call in progress (PROTOCOL 10). It owns the
//! call's state, in memory only: who the caller is (the socket that sent
//! the offer), which callee sockets ring, which one answered, and the ring
//! timer. It relays `call` frames between the two sides as written and
//! ends the call (stops, forgetting everything) on a hangup, a reject, the
//! ring timeout, or a bound socket going away. Nothing of a call is stored,
//! and SDP or ICE text (`data`) is never logged.
//!
//! A call is found by its two parties and the caller's `call_id`
//! ([`Calls`]), so a frame from either side names it the same way: its
//! own `call_id` and the other party in `to`.
//!
//! # Across nodes (cluster mode)
//! The actor stays on the caller's node (the home). The offer also rings
//! the callee's devices on every other live node they are on
//! ([`CallWire::Ring`], over the bus); such a node remembers the call's
//! home, forwards its devices' frames there ([`CallWire::Signal`]), and
//! reports the answering socket going away ([`CallWire::Gone`]). Frames
//! for those devices travel back as [`CallWire::Frame`]; the home says
//! [`CallWire::Ended`] when the call ends. While it rings, the call is
//! noted in Redis, so a device of the callee that attaches to any node
//! meanwhile asks the home to ring it ([`CallWire::RingMe`]). A callee
//! online on no node gets a push.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use actix::prelude::*;
use actix_web_actors::ws;
use serde::{Deserialize, Serialize};

use crate::directory::Directory;
use crate::frames::{parse_id, CallAction, CallEnd, CallFrame, ErrorCode, FrameError, ServerFrame};
use crate::ids::{DeviceId, UserId};
use crate::metrics::Kind;
use crate::session::{Session, SessionLink};
use crate::store::{blocking, now_ms};

/// Longest `call_id`, in characters.
pub const MAX_CALL_ID_CHARS: usize = 64;
/// Largest `data` (SDP or ICE text), in bytes.
pub const MAX_DATA_BYTES: usize = 16 * 1024;

const KIND: Kind = Kind { kind: "call" };

/// The answer to a frame about a call that does not exist (any more), or
/// that this socket is not part of: the same either way.
const NO_SUCH_CALL: FrameError = FrameError::new(ErrorCode::NotFound, "no such call");

/// A frame of one side of a call, for the call's actor.
#[derive(Message)]
#[rtype(result = "Result<(), FrameError>")]
pub struct Signal {
    /// The sending user.
    pub user: UserId,
    /// Their device.
    pub device: DeviceId,
    /// The sending socket: the one a call binds to.
    pub link: PartyLink,
    /// Closes when the sending socket is gone (a socket here).
    pub alive: Option<crate::AliveWatch>,
    /// What the frame does.
    pub action: CallAction,
    /// Its opaque text.
    pub data: Option<String>,
}

/// A socket of `user` attached: a call ringing that user rings it too (a
/// device woken by a push gets the offer when it connects).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Ring {
    /// The user who attached.
    pub user: UserId,
    /// Their device.
    pub device: DeviceId,
    /// The socket.
    pub link: SessionLink,
}

/// A device of the callee attached to another node while the call rings.
#[derive(Message)]
#[rtype(result = "()")]
pub struct RingRemote {
    /// Its node.
    pub node: Arc<str>,
    /// Its device.
    pub device: DeviceId,
}

/// The callee's socket that answered, on another node, went away.
#[derive(Message)]
#[rtype(result = "()")]
pub struct RemoteGone {
    /// Its node.
    pub node: Arc<str>,
    /// Its device.
    pub device: DeviceId,
}

/// A call's key: its two parties in order, and the caller's `call_id`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, Serialize, Deserialize)]
pub struct Key {
    lo: UserId,
    hi: UserId,
    call_id: Arc<str>,
}

/// What crosses between nodes about a call (cluster mode; see the module
/// doc). Its `text` fields are rendered frames, which may carry SDP or
/// ICE text: never logged (its `Debug` names the kind only).
#[derive(Clone, Serialize, Deserialize)]
#[serde(tag = "k", rename_all = "snake_case")]
pub enum CallWire {
    /// Ring the callee's devices there with the offer `text`.
    Ring {
        /// The call.
        key: Key,
        /// The callee.
        callee: UserId,
        /// The offer frame.
        text: String,
    },
    /// A frame for `user`'s sockets there: those of device `only`, or all
    /// but device `except`'s.
    Frame {
        /// Whose sockets.
        user: UserId,
        /// Only this device's.
        only: Option<DeviceId>,
        /// Not this device's.
        except: Option<DeviceId>,
        /// The frame.
        text: String,
    },
    /// A callee device's frame, for the call's actor at its home.
    Signal {
        /// The call.
        key: Key,
        /// The sending user.
        user: UserId,
        /// Their device.
        device: DeviceId,
        /// What the frame does.
        action: CallAction,
        /// Its opaque text.
        data: Option<String>,
    },
    /// The callee socket that answered went away.
    Gone {
        /// The call.
        key: Key,
        /// Its device.
        device: DeviceId,
    },
    /// A device of the callee attached there while the call rings: ring
    /// it too.
    RingMe {
        /// The call.
        key: Key,
        /// The device.
        device: DeviceId,
    },
    /// The call ended at its home: forget it.
    Ended {
        /// The call.
        key: Key,
    },
}

impl std::fmt::Debug for CallWire {
    /// The kind only: frames may carry SDP or ICE text.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CallWire::Ring { .. } => "Ring",
            CallWire::Frame { .. } => "Frame",
            CallWire::Signal { .. } => "Signal",
            CallWire::Gone { .. } => "Gone",
            CallWire::RingMe { .. } => "RingMe",
            CallWire::Ended { .. } => "Ended",
        })
    }
}

impl Key {
    fn new(a: UserId, b: UserId, call_id: &str) -> Self {
        Key {
            lo: a.min(b),
            hi: a.max(b),
            call_id: call_id.into(),
        }
    }
}

/// The calls in progress on this node, and the calls each user is in
/// (bounded by `Limits::max_calls_per_user`).
#[derive(Default)]
pub struct Calls {
    inner: Mutex<Registry>,
}

#[derive(Default)]
struct Registry {
    by_key: HashMap<Key, Addr<Call>>,
    by_user: HashMap<UserId, Vec<Addr<Call>>>,
    /// Calls of other nodes that rang devices here: their home node, and
    /// when they rang (a home that died never says `Ended`).
    remote: HashMap<Key, (Arc<str>, std::time::Instant)>,
}

/// Remote calls remembered before the old ones are dropped, and how old
/// such a call must be to be dropped.
const MAX_REMOTE_CALLS: usize = 1_024;
const REMOTE_CALL_KEPT: std::time::Duration = std::time::Duration::from_secs(12 * 3_600);

/// Where a call named by a socket's frame is.
enum Found {
    /// Its actor runs here.
    Here(Addr<Call>),
    /// Its actor runs on that node.
    Home(Arc<str>),
}

/// What became of an offer.
pub enum Offered {
    /// The call's actor started: it rings the callee.
    Ringing,
    /// The callee is in too many calls already.
    Busy,
}

impl Calls {
    fn lock(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The call between `user` and `peer` named `call_id`, if any.
    fn find(&self, user: UserId, peer: UserId, call_id: &str) -> Option<Found> {
        let key = Key::new(user, peer, call_id);
        let reg = self.lock();
        if let Some(a) = reg.by_key.get(&key) {
            return Some(Found::Here(a.clone()));
        }
        reg.remote
            .get(&key)
            .map(|(home, _)| Found::Home(Arc::clone(home)))
    }

    /// Starts a call for an `offer` (its fields already checked).
    fn offer(
        &self,
        dir: &Arc<Directory>,
        caller: Party,
        caller_alive: crate::AliveWatch,
        callee: UserId,
        call_id: &str,
        sdp: String,
    ) -> Result<Offered, FrameError> {
        let max = dir.deps().limits.max_calls_per_user;
        let key = Key::new(caller.user, callee, call_id);
        let caller_user = caller.user;
        let mut reg = self.lock();
        if reg.by_key.contains_key(&key) {
            return Err(IN_USE);
        }
        let count = |u: UserId| reg.by_user.get(&u).map_or(0, Vec::len);
        if count(caller_user) >= max {
            return Err(FrameError {
                retry_after_ms: Some(1_000),
                ..FrameError::new(ErrorCode::RateLimited, "too many calls at once")
            });
        }
        if count(callee) >= max {
            return Ok(Offered::Busy);
        }
        let addr = Call {
            dir: Arc::clone(dir),
            key: key.clone(),
            caller,
            caller_alive,
            callee,
            offer: Some(sdp),
            rung: Vec::new(),
            rung_nodes: Vec::new(),
            bound: None,
            timer: None,
        }
        .start();
        reg.by_key.insert(key, addr.clone());
        for u in [caller_user, callee] {
            reg.by_user.entry(u).or_default().push(addr.clone());
        }
        Ok(Offered::Ringing)
    }

    /// Forgets a call that ended.
    fn remove(&self, key: &Key, addr: &Addr<Call>) {
        let mut reg = self.lock();
        if reg.by_key.get(key) == Some(addr) {
            reg.by_key.remove(key);
        }
        for u in [key.lo, key.hi] {
            if let Some(list) = reg.by_user.get_mut(&u) {
                list.retain(|a| a != addr);
                if list.is_empty() {
                    reg.by_user.remove(&u);
                }
            }
        }
    }

    /// A socket of `user` attached: every call ringing them rings it too.
    pub(crate) fn attached(&self, user: UserId, device: DeviceId, link: &SessionLink) {
        let Some(calls) = self.lock().by_user.get(&user).cloned() else {
            return;
        };
        for call in calls {
            call.do_send(Ring {
                user,
                device,
                link: link.clone(),
            });
        }
    }

    /// Calls in progress.
    pub fn len(&self) -> usize {
        self.lock().by_key.len()
    }

    /// Whether no call is in progress.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The answer to an offer whose `call_id` names a call in progress.
const IN_USE: FrameError = FrameError::new(
    ErrorCode::Invalid,
    "call_id is already in use between these users",
);

/// Where a party's socket is.
#[derive(Clone)]
pub enum PartyLink {
    /// On this node.
    Here(SessionLink),
    /// On that node (cluster mode).
    Node(Arc<str>),
}

/// One side's socket in a call.
#[derive(Clone)]
struct Party {
    user: UserId,
    device: DeviceId,
    link: PartyLink,
}

impl Party {
    /// Whether `self` and `other` are the same socket (for a socket on
    /// another node: the same device there).
    fn same(&self, other: &Party) -> bool {
        match (&self.link, &other.link) {
            (PartyLink::Here(a), PartyLink::Here(b)) => a.addr == b.addr,
            (PartyLink::Node(a), PartyLink::Node(b)) => a == b && self.device == other.device,
            _ => false,
        }
    }

    /// Sends a frame to this party's socket.
    fn push(&self, dir: &Directory, text: Arc<str>) {
        match &self.link {
            PartyLink::Here(l) => l.push(None, text),
            PartyLink::Node(node) => {
                if let Some(r) = &dir.deps().router {
                    r.call_elsewhere(
                        Arc::clone(node),
                        CallWire::Frame {
                            user: self.user,
                            only: Some(self.device),
                            except: None,
                            text: text.to_string(),
                        },
                    );
                }
            }
        }
    }
}

/// One call in progress.
pub struct Call {
    dir: Arc<Directory>,
    key: Key,
    /// The socket that sent the offer.
    caller: Party,
    /// Closes when the caller's socket is gone.
    caller_alive: crate::AliveWatch,
    callee: UserId,
    /// The offer's SDP, kept while the call rings (for sockets of the
    /// callee that attach meanwhile), dropped once answered.
    offer: Option<String>,
    /// The callee's sockets here that were rung.
    rung: Vec<Party>,
    /// The other nodes where the callee's sockets were rung.
    rung_nodes: Vec<Arc<str>>,
    /// The callee's socket that answered.
    bound: Option<Party>,
    /// The ring timeout, until answered.
    timer: Option<SpawnHandle>,
}

impl Call {
    /// A `call` frame's text, from `from`'s side.
    fn frame(
        &self,
        from: &Party,
        action: CallAction,
        data: Option<&str>,
        reason: Option<CallEnd>,
    ) -> Arc<str> {
        ServerFrame::Call {
            call_id: &self.key.call_id,
            from: from.user,
            from_device: Some(from.device),
            action,
            data,
            reason,
        }
        .to_text()
        .into()
    }

    /// The same frame to every rung socket of the callee but `except`,
    /// here and on the other nodes that were rung.
    fn to_rung(&self, text: &Arc<str>, except: Option<&Party>) {
        for p in &self.rung {
            if except.is_none_or(|e| !e.same(p)) {
                p.push(&self.dir, Arc::clone(text));
            }
        }
        let Some(router) = &self.dir.deps().router else {
            return;
        };
        for node in &self.rung_nodes {
            let except = except.and_then(|e| match &e.link {
                PartyLink::Node(n) if n == node => Some(e.device),
                _ => None,
            });
            router.call_elsewhere(
                Arc::clone(node),
                CallWire::Frame {
                    user: self.callee,
                    only: None,
                    except,
                    text: text.to_string(),
                },
            );
        }
    }

    /// The caller's `hangup` with `reason` to every rung socket of the
    /// callee but `except`: they stop ringing.
    fn stop_ringing(&self, reason: CallEnd, except: Option<&Party>) {
        let text = self.frame(&self.caller, CallAction::Hangup, None, Some(reason));
        self.to_rung(&text, except);
    }

    /// Rings one socket of the callee with the offer (once).
    fn ring(&mut self, p: Party) {
        let Some(sdp) = self.offer.as_deref() else {
            return;
        };
        if self.rung.iter().any(|r| r.same(&p)) {
            return;
        }
        let text = self.frame(&self.caller, CallAction::Offer, Some(sdp), None);
        p.push(&self.dir, text);
        self.rung.push(p);
    }

    /// Rings every socket of the callee online now, here and (cluster
    /// mode) on every other node they are on, or pushes when none is.
    /// Nothing else is handled until the other nodes were rung.
    fn ring_all(&mut self, ctx: &mut Context<Self>) {
        let callee = self.callee;
        let sessions: Vec<Party> = match self.dir.sessions_of(callee) {
            Some(s) => s
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .map(|a| Party {
                    user: callee,
                    device: a.device,
                    link: PartyLink::Here(a.link.clone()),
                })
                .collect(),
            None => Vec::new(),
        };
        let here = !sessions.is_empty();
        for p in sessions {
            self.ring(p);
        }
        let (Some(router), Some(sdp)) = (self.dir.deps().router.clone(), self.offer.as_deref())
        else {
            if !here {
                self.push_call();
            }
            return;
        };
        let ringing = self.dir.deps().limits.call_ring_timeout;
        let ring = CallWire::Ring {
            key: self.key.clone(),
            callee,
            text: self
                .frame(&self.caller, CallAction::Offer, Some(sdp), None)
                .to_string(),
        };
        ctx.wait(
            router
                .ring_elsewhere(callee, ring, ringing)
                .into_actor(self)
                .map(move |nodes, act, _| {
                    if !here && nodes.is_empty() {
                        act.push_call();
                    }
                    act.rung_nodes = nodes;
                }),
        );
    }

    /// The callee is online nowhere: a push, if a webhook is configured.
    fn push_call(&self) {
        if let Some(push) = &self.dir.deps().push {
            push.call(self.callee, self.caller.user, now_ms());
        }
    }

    /// The end of the call: its actor stops, and with it all it knew.
    fn end(&mut self, ctx: &mut Context<Self>, how: &'static str) {
        tracing::debug!(how, "call ended");
        ctx.stop();
    }

    /// Nobody answered in time: both sides hear `timeout`.
    fn timed_out(&mut self, ctx: &mut Context<Self>) {
        if self.bound.is_some() {
            return;
        }
        let to_caller: Arc<str> = ServerFrame::Call {
            call_id: &self.key.call_id,
            from: self.callee,
            from_device: None,
            action: CallAction::Hangup,
            data: None,
            reason: Some(CallEnd::Timeout),
        }
        .to_text()
        .into();
        self.caller.push(&self.dir, to_caller);
        self.stop_ringing(CallEnd::Timeout, None);
        self.end(ctx, "timeout");
    }

    /// The caller's socket went away.
    fn caller_gone(&mut self, ctx: &mut Context<Self>) {
        match &self.bound {
            Some(b) => {
                let reason = Some(CallEnd::Disconnected);
                b.push(
                    &self.dir,
                    self.frame(&self.caller, CallAction::Hangup, None, reason),
                );
            }
            None => self.stop_ringing(CallEnd::Disconnected, None),
        }
        self.end(ctx, "caller disconnected");
    }

    /// The callee's bound socket went away.
    fn callee_gone(&mut self, ctx: &mut Context<Self>) {
        let Some(b) = &self.bound else {
            return;
        };
        let text = self.frame(b, CallAction::Hangup, None, Some(CallEnd::Disconnected));
        self.caller.push(&self.dir, text);
        self.end(ctx, "callee disconnected");
    }

    /// Watches a socket: `then` runs when it is gone.
    fn watch(
        &self,
        alive: crate::AliveWatch,
        ctx: &mut Context<Self>,
        then: fn(&mut Self, &mut Context<Self>),
    ) {
        ctx.spawn(
            actix::fut::wrap_future::<_, Self>(crate::gone(alive))
                .map(move |(), act, ctx| then(act, ctx)),
        );
    }

    /// A frame from the caller's socket.
    fn from_caller(&mut self, s: Signal, ctx: &mut Context<Self>) -> Result<(), FrameError> {
        match s.action {
            CallAction::Offer => Err(IN_USE),
            CallAction::Answer | CallAction::Reject => Err(FrameError::new(
                ErrorCode::Invalid,
                "only the callee answers or rejects a call",
            )),
            // Before the answer, the caller's candidates go to every
            // ringing socket: any of them may answer.
            CallAction::Ice | CallAction::Hangup => {
                let text = self.frame(&self.caller, s.action, s.data.as_deref(), None);
                match &self.bound {
                    Some(b) => b.push(&self.dir, text),
                    None => self.to_rung(&text, None),
                }
                if s.action == CallAction::Hangup {
                    self.end(ctx, "hangup");
                }
                Ok(())
            }
        }
    }

    /// A frame from one of the callee's sockets.
    fn from_callee(&mut self, s: Signal, ctx: &mut Context<Self>) -> Result<(), FrameError> {
        let me = Party {
            user: s.user,
            device: s.device,
            link: s.link,
        };
        match (&self.bound, s.action) {
            (_, CallAction::Offer) => Err(IN_USE),
            (None, CallAction::Answer) => {
                if let Some(t) = self.timer.take() {
                    ctx.cancel_future(t);
                }
                self.offer = None;
                if let Some(r) = &self.dir.deps().router {
                    r.ringing_over(self.callee, self.key.clone());
                }
                let text = self.frame(&me, CallAction::Answer, s.data.as_deref(), None);
                self.caller.push(&self.dir, text);
                self.stop_ringing(CallEnd::AnsweredElsewhere, Some(&me));
                self.rung.clear();
                self.bound = Some(me);
                // A socket on another node: its node says when it is gone.
                if let Some(alive) = s.alive {
                    self.watch(alive, ctx, Self::callee_gone);
                }
                Ok(())
            }
            // A hangup before answering declines, like a reject.
            (None, CallAction::Reject | CallAction::Hangup) => {
                let text = self.frame(&me, s.action, s.data.as_deref(), Some(CallEnd::Rejected));
                self.caller.push(&self.dir, text);
                self.stop_ringing(CallEnd::Rejected, Some(&me));
                self.end(ctx, "rejected");
                Ok(())
            }
            (None, CallAction::Ice) => Err(FrameError::new(
                ErrorCode::Invalid,
                "answer the call before sending ice",
            )),
            // Another socket of the callee's: the call is not theirs now.
            (Some(b), _) if !b.same(&me) => Err(NO_SUCH_CALL),
            (Some(_), CallAction::Ice | CallAction::Hangup) => {
                let text = self.frame(&me, s.action, s.data.as_deref(), None);
                self.caller.push(&self.dir, text);
                if s.action == CallAction::Hangup {
                    self.end(ctx, "hangup");
                }
                Ok(())
            }
            (Some(_), CallAction::Answer | CallAction::Reject) => Err(FrameError::new(
                ErrorCode::Invalid,
                "the call is already answered",
            )),
        }
    }
}

impl Actor for Call {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.dir
            .deps()
            .metrics
            .live_actors
            .get_or_create(&KIND)
            .inc();
        let timeout = self.dir.deps().limits.call_ring_timeout;
        self.timer = Some(ctx.run_later(timeout, |act, ctx| act.timed_out(ctx)));
        self.watch(self.caller_alive.clone(), ctx, Self::caller_gone);
        // Nothing else is handled until the callee is known to exist: a
        // frame that follows the offer at once still finds the call.
        let store = Arc::clone(&self.dir.deps().store);
        let callee = self.callee;
        ctx.wait(
            blocking(move || store.user_exists(callee))
                .into_actor(self)
                .map(|res, act, ctx| {
                    let refusal = match res {
                        Ok(true) => return act.ring_all(ctx),
                        Ok(false) => FrameError::new(ErrorCode::NotFound, "no such user"),
                        _ => FrameError::new(ErrorCode::Unavailable, "storage unavailable, retry"),
                    };
                    let text = crate::frames::error(&refusal, Some(&act.key.call_id));
                    if let PartyLink::Here(l) = &act.caller.link {
                        l.reply(text);
                    }
                    act.end(ctx, "no such callee");
                }),
        );
    }

    fn stopped(&mut self, ctx: &mut Self::Context) {
        self.dir
            .deps()
            .metrics
            .live_actors
            .get_or_create(&KIND)
            .dec();
        self.dir.calls().remove(&self.key, &ctx.address());
        // The other nodes that know of the call forget it.
        if let Some(router) = &self.dir.deps().router {
            if self.offer.is_some() {
                router.ringing_over(self.callee, self.key.clone());
            }
            let mut nodes = std::mem::take(&mut self.rung_nodes);
            if let Some(Party {
                link: PartyLink::Node(n),
                ..
            }) = &self.bound
            {
                if !nodes.contains(n) {
                    nodes.push(Arc::clone(n));
                }
            }
            for node in nodes {
                router.call_elsewhere(
                    node,
                    CallWire::Ended {
                        key: self.key.clone(),
                    },
                );
            }
        }
    }
}

impl Handler<Signal> for Call {
    type Result = Result<(), FrameError>;

    fn handle(&mut self, s: Signal, ctx: &mut Self::Context) -> Self::Result {
        if s.user != self.caller.user {
            return self.from_callee(s, ctx);
        }
        let me = Party {
            user: s.user,
            device: s.device,
            link: s.link.clone(),
        };
        if !me.same(&self.caller) {
            // Another socket of the caller's: not in this call.
            return Err(NO_SUCH_CALL);
        }
        self.from_caller(s, ctx)
    }
}

impl Handler<Ring> for Call {
    type Result = ();

    fn handle(&mut self, r: Ring, _: &mut Self::Context) {
        if r.user == self.callee && self.bound.is_none() {
            self.ring(Party {
                user: r.user,
                device: r.device,
                link: PartyLink::Here(r.link),
            });
        }
    }
}

impl Handler<RingRemote> for Call {
    type Result = ();

    fn handle(&mut self, r: RingRemote, _: &mut Self::Context) {
        let Some(sdp) = self.offer.as_deref() else {
            return;
        };
        let text = self.frame(&self.caller, CallAction::Offer, Some(sdp), None);
        let p = Party {
            user: self.callee,
            device: r.device,
            link: PartyLink::Node(Arc::clone(&r.node)),
        };
        p.push(&self.dir, text);
        // What follows the offer goes to the callee's sockets on that node.
        if !self.rung_nodes.contains(&r.node) {
            self.rung_nodes.push(r.node);
        }
    }
}

impl Handler<RemoteGone> for Call {
    type Result = ();

    fn handle(&mut self, g: RemoteGone, ctx: &mut Self::Context) {
        let gone = Party {
            user: self.callee,
            device: g.device,
            link: PartyLink::Node(g.node),
        };
        if self.bound.as_ref().is_some_and(|b| b.same(&gone)) {
            self.callee_gone(ctx);
        }
    }
}

/// A call's message from another node (cluster mode), `from` being the
/// node that sent it. Runs on the bus's tokio runtime.
pub fn from_node(dir: &Arc<Directory>, from: Arc<str>, wire: CallWire) {
    let calls = dir.calls();
    match wire {
        CallWire::Ring { key, callee, text } => {
            {
                let mut reg = calls.lock();
                if reg.remote.len() >= MAX_REMOTE_CALLS {
                    reg.remote
                        .retain(|_, (_, at)| at.elapsed() < REMOTE_CALL_KEPT);
                }
                reg.remote.insert(key, (from, std::time::Instant::now()));
            }
            to_devices(dir, callee, None, None, text.into());
        }
        CallWire::Frame {
            user,
            only,
            except,
            text,
        } => to_devices(dir, user, only, except, text.into()),
        CallWire::Signal {
            key,
            user,
            device,
            action,
            data,
        } => {
            let call_id = Arc::clone(&key.call_id);
            let Some(call) = calls.lock().by_key.get(&key).cloned() else {
                let text = crate::frames::error(&NO_SUCH_CALL, Some(&call_id));
                reply_to(dir, from, user, device, text);
                return;
            };
            let req = call.send(Signal {
                user,
                device,
                link: PartyLink::Node(Arc::clone(&from)),
                alive: None,
                action,
                data,
            });
            let dir = Arc::clone(dir);
            // On the bus's runtime (not an actor's thread).
            tokio::spawn(async move {
                let err = match req.await {
                    Ok(Ok(())) => return,
                    Ok(Err(e)) => e,
                    Err(_) => NO_SUCH_CALL,
                };
                let text = crate::frames::error(&err, Some(&call_id));
                reply_to(&dir, from, user, device, text);
            });
        }
        CallWire::RingMe { key, device } => {
            if let Some(call) = calls.lock().by_key.get(&key) {
                call.do_send(RingRemote { node: from, device });
            }
        }
        CallWire::Gone { key, device } => {
            if let Some(call) = calls.lock().by_key.get(&key) {
                call.do_send(RemoteGone { node: from, device });
            }
        }
        CallWire::Ended { key } => {
            calls.lock().remote.remove(&key);
        }
    }
}

/// A device attached here while calls of other nodes ring its user
/// (`ringing`: each call and its home node): each home rings it, and its
/// frames about the call go there.
pub(crate) fn ring_here(dir: &Directory, device: DeviceId, ringing: Vec<(Key, Arc<str>)>) {
    let Some(router) = &dir.deps().router else {
        return;
    };
    for (key, home) in ringing {
        // A call of this node's rings the device already (`attached`).
        if *home == *router.node_id() {
            continue;
        }
        {
            let mut reg = dir.calls().lock();
            if reg.remote.len() >= MAX_REMOTE_CALLS {
                reg.remote
                    .retain(|_, (_, at)| at.elapsed() < REMOTE_CALL_KEPT);
            }
            reg.remote
                .insert(key.clone(), (Arc::clone(&home), std::time::Instant::now()));
        }
        router.call_elsewhere(home, CallWire::RingMe { key, device });
    }
}

/// A refusal for a device on another node.
fn reply_to(dir: &Directory, node: Arc<str>, user: UserId, device: DeviceId, text: String) {
    if let Some(r) = &dir.deps().router {
        r.call_elsewhere(
            node,
            CallWire::Frame {
                user,
                only: Some(device),
                except: None,
                text,
            },
        );
    }
}

/// A frame to `user`'s sockets here: device `only`'s, or all but `except`'s.
fn to_devices(
    dir: &Directory,
    user: UserId,
    only: Option<DeviceId>,
    except: Option<DeviceId>,
    text: Arc<str>,
) {
    let Some(sessions) = dir.sessions_of(user) else {
        return;
    };
    let sessions = sessions.lock().unwrap_or_else(|p| p.into_inner());
    for a in sessions.iter() {
        if only.is_none_or(|d| d == a.device) && except != Some(a.device) {
            a.link.push(None, Arc::clone(&text));
        }
    }
}

/// Checks the fields of a `call` frame that need no call: the `call_id`,
/// the size of `data` and whether the action needs it, and `to`.
fn check(f: &CallFrame, me: UserId) -> Result<UserId, FrameError> {
    let invalid = |m| Err(FrameError::new(ErrorCode::Invalid, m));
    if f.call_id.is_empty() || f.call_id.chars().count() > MAX_CALL_ID_CHARS {
        return invalid("call_id must be 1 to 64 characters");
    }
    match &f.data {
        Some(d) if d.len() > MAX_DATA_BYTES => {
            return Err(FrameError::new(ErrorCode::TooLarge, "data is over 16 KiB"));
        }
        None if matches!(
            f.action,
            CallAction::Offer | CallAction::Answer | CallAction::Ice
        ) =>
        {
            return invalid("offer, answer and ice need data");
        }
        _ => {}
    }
    let to = parse_id(&f.to).map_err(|_| FrameError::new(ErrorCode::NotFound, "no such user"))?;
    if to == me {
        return invalid("a call needs another user");
    }
    Ok(to)
}

impl Session {
    /// A `call` frame: an offer starts a call's actor, any other action goes
    /// to the call it names. Refusals come back as error frames with the
    /// `call_id` as `ref`.
    pub(crate) fn on_call(&mut self, f: CallFrame, ctx: &mut ws::WebsocketContext<Self>) {
        let to = match check(&f, self.user) {
            Ok(to) => to,
            Err(e) => return Self::reply_error(ctx, &e, Some(&f.call_id)),
        };
        let link = self.link(ctx);
        let alive = self.alive.subscribe();
        let calls = self.dir.calls();
        if f.action == CallAction::Offer {
            let caller = Party {
                user: self.user,
                device: self.device,
                link: PartyLink::Here(link),
            };
            let sdp = f.data.unwrap_or_default();
            match calls.offer(&self.dir, caller, alive, to, &f.call_id, sdp) {
                Ok(Offered::Ringing) => {}
                Ok(Offered::Busy) => ctx.text(
                    ServerFrame::Call {
                        call_id: &f.call_id,
                        from: to,
                        from_device: None,
                        action: CallAction::Hangup,
                        data: None,
                        reason: Some(CallEnd::Busy),
                    }
                    .to_text(),
                ),
                Err(e) => Self::reply_error(ctx, &e, Some(&f.call_id)),
            }
            return;
        }
        let call = match calls.find(self.user, to, &f.call_id) {
            Some(Found::Here(call)) => call,
            Some(Found::Home(home)) => return self.signal_home(home, to, f, alive),
            None => return Self::reply_error(ctx, &NO_SUCH_CALL, Some(&f.call_id)),
        };
        let req = call.send(Signal {
            user: self.user,
            device: self.device,
            link: PartyLink::Here(link),
            alive: Some(alive),
            action: f.action,
            data: f.data,
        });
        let call_id = f.call_id;
        self.reply_later(ctx, async move {
            let err = match req.await {
                Ok(Ok(())) => return None,
                Ok(Err(e)) => e,
                // It ended meanwhile.
                Err(_) => NO_SUCH_CALL,
            };
            Some(crate::frames::error(&err, Some(&call_id)))
        });
    }

    /// A frame for a call whose actor is on another node (cluster mode):
    /// it goes there, and a refusal comes back as a frame. An answer's
    /// socket is watched, so the call hears when it is gone.
    fn signal_home(&self, home: Arc<str>, to: UserId, f: CallFrame, alive: crate::AliveWatch) {
        let Some(router) = self.dir.deps().router.clone() else {
            return;
        };
        let key = Key::new(self.user, to, &f.call_id);
        if f.action == CallAction::Answer {
            let (home, key, device) = (Arc::clone(&home), key.clone(), self.device);
            let router = Arc::clone(&router);
            actix::spawn(async move {
                crate::gone(alive).await;
                router.call_elsewhere(home, CallWire::Gone { key, device });
            });
        }
        router.call_elsewhere(
            home,
            CallWire::Signal {
                key,
                user: self.user,
                device: self.device,
                action: f.action,
                data: f.data,
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::Id;

    fn frame(call_id: &str, to: Id, action: CallAction, data: Option<&str>) -> CallFrame {
        CallFrame {
            call_id: call_id.into(),
            to: to.to_string(),
            action,
            data: data.map(Into::into),
        }
    }

    #[test]
    fn checks_call_id_data_and_peer() {
        let (me, you) = (Id([1; 16]), Id([2; 16]));
        let ok = |f: CallFrame| check(&f, me).ok();
        let code = |f: CallFrame| check(&f, me).unwrap_err().code;
        assert_eq!(
            ok(frame("c", you, CallAction::Offer, Some("v=0"))),
            Some(you)
        );
        assert_eq!(ok(frame("c", you, CallAction::Hangup, None)), Some(you));
        assert_eq!(
            ok(frame(&"é".repeat(64), you, CallAction::Reject, None)),
            Some(you)
        );
        assert_eq!(
            code(frame("", you, CallAction::Hangup, None)),
            ErrorCode::Invalid
        );
        let long = "x".repeat(65);
        assert_eq!(
            code(frame(&long, you, CallAction::Hangup, None)),
            ErrorCode::Invalid
        );
        assert_eq!(
            code(frame("c", you, CallAction::Ice, None)),
            ErrorCode::Invalid
        );
        let big = "a".repeat(MAX_DATA_BYTES + 1);
        assert_eq!(
            code(frame("c", you, CallAction::Ice, Some(&big))),
            ErrorCode::TooLarge
        );
        assert_eq!(
            code(frame("c", me, CallAction::Hangup, None)),
            ErrorCode::Invalid
        );
        let mut bad = frame("c", you, CallAction::Hangup, None);
        bad.to = "nope".into();
        assert_eq!(code(bad), ErrorCode::NotFound);
    }

    #[test]
    fn a_key_is_the_same_from_either_side() {
        let (a, b) = (Id([1; 16]), Id([2; 16]));
        assert_eq!(Key::new(a, b, "k"), Key::new(b, a, "k"));
        assert_ne!(Key::new(a, b, "k"), Key::new(a, b, "j"));
    }
}
