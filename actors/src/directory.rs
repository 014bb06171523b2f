//! The directory of live actors: finds or activates the `User` actor of a
//! user and the `Conversation` actor of a conversation, spreads them over
//! a fixed set of arbiters (threads), and is the [`Fanout`] through which
//! the storage writer hands committed events to online users.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use actix::{Actor, Addr, ArbiterHandle, Message};

use crate::conversation::Conversation;
use crate::ids::{ConvId, Id, UserId};
use crate::metrics::{Kind, Metrics};
use crate::ratelimit::TokenBucket;
use crate::store::{Delivery, Fanout, MediaAccess, OfflinePush, Store, StoryId};
use crate::story::Story;
use crate::user::User;
use crate::{user, Counted, Depth};

/// The limits the actors enforce, from the server's configuration.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Largest text frame accepted; a larger one closes the socket (1009).
    pub max_frame_bytes: usize,
    /// Largest message body, in UTF-8 bytes.
    pub max_body_bytes: usize,
    /// Shortest message lifetime.
    pub min_ttl_seconds: u64,
    /// Longest message lifetime.
    pub max_ttl_seconds: u64,
    /// `send` frames a second per user, across devices.
    pub send_rate_per_second: u32,
    /// Sends a user may save up.
    pub send_burst: u32,
    /// Other event-storing frames a second per user, across devices.
    pub event_rate_per_second: u32,
    /// Such frames a user may save up.
    pub event_burst: u32,
    /// Frames a second per socket, of every type.
    pub frame_rate_per_second: u32,
    /// Frames a socket may save up.
    pub frame_burst: u32,
    /// A socket silent this long is closed.
    pub heartbeat_timeout: Duration,
    /// A conversation actor idle this long stops (passivation).
    pub passivate_after: Duration,
    /// Sends accepted and not yet answered, server-wide; past it a send is
    /// refused at once with `unavailable` instead of queueing.
    pub max_sends_in_flight: usize,
    /// Bytes of frames queued for one socket; a socket that falls this far
    /// behind its events is closed (4408) and its device resumes by `sync`.
    pub max_outbound_bytes: usize,
    /// Frames queued for one socket, likewise.
    pub max_outbound_frames: usize,
    /// Authors with more followers than this are not fanned out: their
    /// stories are merged into trays at read time.
    pub story_fanout_max_followers: u64,
    /// A call nobody answers within this ends with `timeout`.
    pub call_ring_timeout: Duration,
    /// Calls one user may be in at once (calling or called).
    pub max_calls_per_user: usize,
}

/// One send admitted under [`Limits::max_sends_in_flight`]; the slot is
/// given back when this is dropped (when the send is answered, whatever
/// the answer).
pub struct SendPermit {
    metrics: Arc<Metrics>,
}

impl Drop for SendPermit {
    fn drop(&mut self) {
        self.metrics.sends_in_flight.dec();
    }
}

struct UserEntry {
    addr: Addr<User>,
    /// The actor's sessions, for the writer's fanout.
    sessions: crate::user::Sessions,
    /// Closes when the actor is gone.
    alive: crate::AliveWatch,
    depth: Depth,
    /// When this actor was started, and the crashes in a row before it.
    started: std::time::Instant,
    crash_streak: u32,
    send_bucket: Arc<Mutex<TokenBucket>>,
    event_bucket: Arc<Mutex<TokenBucket>>,
    /// Sessions that got this entry but whose `Attach` is not yet handled;
    /// the actor may retire only when this is zero.
    attaching: usize,
    /// Whether the cluster's session registry was told this user is here.
    registered: bool,
}

/// An actor the directory keeps one of per id (a conversation, a story):
/// activated on first use, supervised (restarted after a crash, with
/// backoff), restarted by the operator, passivated when idle.
pub trait Keyed: Actor<Context = actix::Context<Self>> + actix::Handler<crate::Restart> {
    /// Its kind, as metrics and operators name it.
    const KIND: Kind;
    /// A fresh actor for `id` (it loads its state when started, after
    /// `predecessor`, the actor it replaces, is gone).
    fn create(
        dir: Arc<Directory>,
        id: Id,
        restarts: u64,
        depth: Depth,
        alive: crate::Alive,
        predecessor: Option<crate::AliveWatch>,
    ) -> Self;
}

/// A live keyed actor and how often it was restarted.
struct Entry<A: Actor> {
    addr: Addr<A>,
    /// Closes when the actor is gone: its successor waits for that.
    alive: crate::AliveWatch,
    depth: Depth,
    restarts: u64,
    /// When this actor was started, and how many crashes in a row came
    /// before it: a crash loop is slowed down by exponential backoff.
    started: std::time::Instant,
    crash_streak: u32,
}

/// A keyed actor's address; what is sent through it is counted in the
/// actor's mailbox depth until handled.
pub struct Handle<A: Actor> {
    addr: Addr<A>,
    depth: Depth,
}

impl<A: Actor> Clone for Handle<A> {
    fn clone(&self) -> Self {
        Handle {
            addr: self.addr.clone(),
            depth: self.depth.clone(),
        }
    }
}

/// A conversation actor's address.
pub type ConvHandle = Handle<Conversation>;

impl<A: Actor> Entry<A> {
    fn handle(&self) -> Handle<A> {
        Handle {
            addr: self.addr.clone(),
            depth: self.depth.clone(),
        }
    }
}

impl<A: Actor> Handle<A> {
    /// Sends without waiting for an answer.
    pub fn do_send<M>(&self, msg: M)
    where
        M: Message + Send + 'static,
        M::Result: Send,
        A: actix::Handler<Counted<M>>,
        A::Context: actix::dev::ToEnvelope<A, Counted<M>>,
    {
        if self.addr.connected() {
            self.depth.push();
        }
        self.addr.do_send(Counted(msg));
    }

    /// Sends and returns the answer's future.
    pub fn send<M>(&self, msg: M) -> actix::dev::Request<A, Counted<M>>
    where
        M: Message + Send + 'static,
        M::Result: Send,
        A: actix::Handler<Counted<M>>,
        A::Context: actix::dev::ToEnvelope<A, Counted<M>>,
    {
        if self.addr.connected() {
            self.depth.push();
        }
        self.addr.send(Counted(msg))
    }
}

/// The live actors of one keyed kind.
struct Registry<A: Actor> {
    map: Mutex<HashMap<Id, Entry<A>>>,
}

impl<A: Keyed> Registry<A> {
    fn new() -> Self {
        Registry {
            map: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Id, Entry<A>>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The live actor of `id`, if there is one.
    fn live(&self, id: Id) -> Option<Handle<A>> {
        self.lock()
            .get(&id)
            .filter(|e| e.addr.connected())
            .map(Entry::handle)
    }

    /// Finds or activates the actor of `id`. One that died (a crash) is
    /// replaced here: the directory is these actors' supervisor.
    fn get(&self, dir: &Arc<Directory>, id: Id) -> Handle<A> {
        let mut map = self.lock();
        let metrics = &dir.deps.metrics;
        let (restarts, streak) = match map.get(&id) {
            Some(e) if e.addr.connected() => return e.handle(),
            Some(e) => {
                let lived = e.started.elapsed();
                let streak = if lived >= HEALTHY_AFTER {
                    1
                } else {
                    e.crash_streak + 1
                };
                if lived < backoff(streak) {
                    // A crash loop: not yet. Callers get the dead address
                    // (their requests are answered `unavailable`).
                    return e.handle();
                }
                tracing::warn!(kind = A::KIND.kind, id = %id, streak, "actor died; restarting it");
                metrics.restarts.get_or_create(&A::KIND).inc();
                (e.restarts + 1, streak)
            }
            None => {
                metrics.live_actors.get_or_create(&A::KIND).inc();
                (0, 0)
            }
        };
        let predecessor = map.get(&id).map(|e| e.alive.clone());
        Self::start(dir, &mut map, id, restarts, predecessor);
        let e = map.get_mut(&id).expect("just inserted");
        e.crash_streak = streak;
        e.handle()
    }

    fn start(
        dir: &Arc<Directory>,
        map: &mut HashMap<Id, Entry<A>>,
        id: Id,
        restarts: u64,
        predecessor: Option<crate::AliveWatch>,
    ) {
        let for_actor = Arc::clone(dir);
        let depth = Depth::new(
            dir.deps
                .metrics
                .mailbox_depth
                .get_or_create(&A::KIND)
                .clone(),
        );
        let actor_depth = depth.clone();
        let alive = crate::alive();
        let watch = alive.subscribe();
        let addr = A::start_in_arbiter(dir.arbiter(), move |_| {
            <A as Keyed>::create(for_actor, id, restarts, actor_depth, alive, predecessor)
        });
        map.insert(
            id,
            Entry {
                addr,
                alive: watch,
                depth,
                restarts,
                started: std::time::Instant::now(),
                crash_streak: 0,
            },
        );
    }

    /// A fresh actor takes the place of `old` at once, so new requests go
    /// to it; it handles nothing until the old one has handled what was
    /// already in its mailbox, stopped, and had its writes committed.
    fn replace(&self, dir: &Arc<Directory>, id: Id, old: &Addr<A>) {
        let mut map = self.lock();
        let (restarts, predecessor) = match map.get(&id) {
            Some(e) if e.addr == *old => (e.restarts + 1, e.alive.clone()),
            _ => return,
        };
        dir.deps.metrics.restarts.get_or_create(&A::KIND).inc();
        Self::start(dir, &mut map, id, restarts, Some(predecessor));
    }

    /// Forgets an idle actor if it is still the live one. Returns whether
    /// it may stop.
    fn passivate(&self, metrics: &Metrics, id: Id, addr: &Addr<A>) -> bool {
        let mut map = self.lock();
        match map.get(&id) {
            Some(e) if e.addr == *addr => {
                map.remove(&id);
                // A map sized for a past peak keeps its memory: give it back.
                if map.capacity() > 1_024 && map.len() < map.capacity() / 4 {
                    let keep = map.len() * 2;
                    map.shrink_to(keep);
                }
                metrics.live_actors.get_or_create(&A::KIND).dec();
                true
            }
            _ => false,
        }
    }

    /// Restarts every actor that died (a crash). Returns how many.
    fn revive_dead(&self, dir: &Arc<Directory>) -> usize {
        let dead: Vec<Id> = self
            .lock()
            .iter()
            .filter(|(_, e)| !e.addr.connected())
            .map(|(id, _)| *id)
            .collect();
        for id in &dead {
            self.get(dir, *id);
        }
        dead.len()
    }

    /// Asks a live actor to restart. Returns whether it was live.
    fn restart(&self, id: Id) -> bool {
        match self.lock().get(&id) {
            Some(e) if e.addr.connected() => {
                e.addr.do_send(crate::Restart);
                true
            }
            _ => false,
        }
    }

    /// Up to `limit` live actors' addresses.
    fn addrs(&self, limit: usize) -> Vec<Addr<A>> {
        self.lock()
            .values()
            .take(limit)
            .map(|e| e.addr.clone())
            .collect()
    }

    fn len(&self) -> usize {
        self.lock().len()
    }
}

/// The first wait before restarting an actor that crashed again soon after
/// its last start; it doubles with every further crash, up to [`MAX_BACKOFF`].
const BASE_BACKOFF: Duration = Duration::from_millis(100);
/// The longest wait between restarts of a crash-looping actor.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// An actor that lived this long is healthy again: its streak resets.
const HEALTHY_AFTER: Duration = Duration::from_secs(60);

/// How long to wait before restarting an actor with this crash streak.
pub fn backoff(streak: u32) -> Duration {
    if streak == 0 {
        return Duration::ZERO;
    }
    BASE_BACKOFF
        .saturating_mul(1u32 << (streak - 1).min(20))
        .min(MAX_BACKOFF)
}

/// What a new session gets from [`Directory::attach_user`].
pub struct UserHandle {
    /// The user's actor.
    pub addr: Addr<User>,
    /// The user's send-rate bucket, shared by all their devices.
    pub send_bucket: Arc<Mutex<TokenBucket>>,
    /// The user's bucket for the other frames that store an event
    /// (`delivered`, `read`, `screenshot`, `unsend`), shared likewise.
    pub event_bucket: Arc<Mutex<TokenBucket>>,
    /// Closes when the actor is gone (a crash included).
    pub alive: crate::AliveWatch,
}

/// What every actor is built with: one struct, handed to each actor when
/// it starts (an actor keeps its own `Arc<Deps>` beside the directory,
/// which it uses only to find other actors).
pub struct Deps {
    /// Storage.
    pub store: Arc<dyn Store>,
    /// Media keys and object storage.
    pub media: Arc<dyn MediaAccess>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Limits.
    pub limits: Limits,
    /// The push webhook for users offline here, if one is configured.
    pub push: Option<Arc<dyn OfflinePush>>,
    /// Cluster mode: where conversations live and how to reach them.
    pub router: Option<Arc<dyn crate::remote::Router>>,
}

/// Live actors by id, and the dependencies they are built with.
pub struct Directory {
    deps: Arc<Deps>,
    arbiters: Vec<ArbiterHandle>,
    next_arbiter: AtomicUsize,
    users: RwLock<HashMap<UserId, UserEntry>>,
    conversations: Registry<Conversation>,
    stories: Registry<Story>,
    calls: crate::call::Calls,
}

impl Directory {
    /// A directory whose actors run on `arbiters`, built with `deps`.
    pub fn new(deps: Arc<Deps>, arbiters: Vec<ArbiterHandle>) -> Arc<Self> {
        assert!(
            !arbiters.is_empty(),
            "the directory needs at least one arbiter"
        );
        Arc::new(Directory {
            deps,
            arbiters,
            next_arbiter: AtomicUsize::new(0),
            users: RwLock::new(HashMap::new()),
            conversations: Registry::new(),
            stories: Registry::new(),
            calls: Default::default(),
        })
    }

    /// The dependencies the actors are built with.
    pub fn deps(&self) -> &Arc<Deps> {
        &self.deps
    }

    /// The calls in progress.
    pub fn calls(&self) -> &crate::call::Calls {
        &self.calls
    }

    /// A slot for one more send in flight, or `None` when the server is at
    /// its limit: the caller refuses the send (shedding load keeps the
    /// latency of accepted sends and the server's memory bounded).
    pub fn admit_send(&self) -> Option<SendPermit> {
        let gauge = &self.deps.metrics.sends_in_flight;
        if gauge.inc() as usize >= self.deps.limits.max_sends_in_flight {
            gauge.dec();
            self.deps.metrics.sends_shed.inc();
            return None;
        }
        Some(SendPermit {
            metrics: Arc::clone(&self.deps.metrics),
        })
    }

    fn arbiter(&self) -> &ArbiterHandle {
        let i = self.next_arbiter.fetch_add(1, Ordering::Relaxed);
        &self.arbiters[i % self.arbiters.len()]
    }

    /// Finds or starts the user's actor for a session about to attach.
    pub fn attach_user(self: &Arc<Self>, user: UserId) -> UserHandle {
        let mut users = self.users.write().unwrap_or_else(|p| p.into_inner());
        // A user actor that died (a crash) is replaced; its sessions notice
        // and attach again (see `Session`).
        let mut streak = 0;
        if let Some(dead) = users.get(&user).filter(|e| !e.addr.connected()) {
            let lived = dead.started.elapsed();
            streak = if lived >= HEALTHY_AFTER {
                1
            } else {
                dead.crash_streak + 1
            };
            if lived < backoff(streak) {
                // A crash loop: not yet (the session tries again shortly).
                return UserHandle {
                    addr: dead.addr.clone(),
                    send_bucket: Arc::clone(&dead.send_bucket),
                    event_bucket: Arc::clone(&dead.event_bucket),
                    alive: dead.alive.clone(),
                };
            }
            tracing::warn!(user = %user, streak, "user actor died; restarting it");
            self.deps
                .metrics
                .restarts
                .get_or_create(&Kind { kind: "user" })
                .inc();
            if let Some(dead) = users.remove(&user) {
                dead.depth.drain();
            }
        }
        let entry = users.entry(user).or_insert_with(|| {
            let dir = Arc::clone(self);
            let depth = Depth::new(
                self.deps
                    .metrics
                    .mailbox_depth
                    .get_or_create(&Kind { kind: "user" })
                    .clone(),
            );
            let actor_depth = depth.clone();
            let alive_tx = crate::alive();
            let alive = alive_tx.subscribe();
            let sessions = crate::user::Sessions::default();
            let actor_sessions = Arc::clone(&sessions);
            UserEntry {
                addr: actix::Supervisor::start_in_arbiter(self.arbiter(), move |_| {
                    User::new(dir, user, actor_sessions, actor_depth, alive_tx)
                }),
                sessions,
                alive,
                depth,
                send_bucket: Arc::new(Mutex::new(TokenBucket::new(
                    self.deps.limits.send_rate_per_second,
                    self.deps.limits.send_burst,
                ))),
                event_bucket: Arc::new(Mutex::new(TokenBucket::new(
                    self.deps.limits.event_rate_per_second,
                    self.deps.limits.event_burst,
                ))),
                attaching: 0,
                registered: false,
                started: std::time::Instant::now(),
                crash_streak: streak,
            }
        });
        if entry.attaching == 0 && !entry.registered {
            entry.registered = true;
            if let Some(r) = &self.deps.router {
                r.user_here(user, true);
            }
        }
        entry.attaching += 1;
        UserHandle {
            addr: entry.addr.clone(),
            send_bucket: Arc::clone(&entry.send_bucket),
            event_bucket: Arc::clone(&entry.event_bucket),
            alive: entry.alive.clone(),
        }
    }

    /// Called by the user actor when it handled an `Attach`.
    pub(crate) fn attached(&self, user: UserId) {
        let mut users = self.users.write().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = users.get_mut(&user) {
            e.attaching = e.attaching.saturating_sub(1);
        }
    }

    /// Removes the user's actor if no session is on its way to it. Returns
    /// whether it was removed (and so must stop).
    pub(crate) fn retire_user(&self, user: UserId, addr: &Addr<User>) -> bool {
        let mut users = self.users.write().unwrap_or_else(|p| p.into_inner());
        match users.get(&user) {
            Some(e) if e.attaching == 0 && e.addr == *addr => {
                users.remove(&user);
                if let Some(r) = &self.deps.router {
                    r.user_here(user, false);
                }
                true
            }
            _ => false,
        }
    }

    /// Whether the user has a device online on this node.
    pub fn is_online(&self, user: UserId) -> bool {
        self.users
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(&user)
    }

    /// Sends a message to the user's actor if they are online.
    pub fn tell_user<M>(&self, user: UserId, msg: M)
    where
        M: Message + Send + 'static,
        M::Result: Send,
        User: actix::Handler<Counted<M>>,
    {
        if let Some(e) = self
            .users
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&user)
        {
            if e.addr.connected() {
                e.depth.push();
            }
            e.addr.do_send(Counted(msg));
        }
    }

    /// A frame that is not stored (typing, presence) for every device of
    /// `user`: here through their actor, elsewhere (cluster mode) through
    /// the nodes their other devices are on.
    pub fn tell_ephemeral(&self, user: UserId, text: Arc<str>) {
        if let Some(r) = &self.deps.router {
            r.tell_elsewhere(user, Arc::clone(&text), None);
        }
        self.tell_user(
            user,
            user::Ephemeral {
                text,
                except_device: None,
            },
        );
    }

    /// A conversation's actor for a frame from `user`: the live actor (which
    /// checks membership itself), or a new one only if `user` is a member
    /// (one point read of the membership index). `None` for a conversation
    /// that does not exist or is someone else's: a frame naming a random id
    /// starts no actor.
    pub fn member_conversation(self: &Arc<Self>, user: UserId, id: ConvId) -> Option<ConvHandle> {
        if let Some(h) = self.conversations.live(id) {
            return Some(h);
        }
        match self.deps.store.is_member(user, id) {
            Ok(true) => Some(self.conversation(id)),
            Ok(false) => None,
            // Let the actor answer (it loads, with backoff, and says
            // `unavailable` meanwhile) rather than guess.
            Err(_) => Some(self.conversation(id)),
        }
    }

    /// Finds or activates a conversation's actor.
    pub fn conversation(self: &Arc<Self>, id: ConvId) -> ConvHandle {
        self.conversations.get(self, id)
    }

    /// Finds or activates a story's actor (it answers `not_found` for a
    /// story that does not exist or has ended).
    pub fn story(self: &Arc<Self>, id: StoryId) -> Handle<Story> {
        self.stories.get(self, id)
    }

    /// Called by a conversation actor that is about to stop for a restart.
    pub(crate) fn replace_conversation(self: &Arc<Self>, id: ConvId, old: &Addr<Conversation>) {
        self.conversations.replace(self, id, old);
    }

    /// Called by a story actor that is about to stop for a restart.
    pub(crate) fn replace_story(self: &Arc<Self>, id: StoryId, old: &Addr<Story>) {
        self.stories.replace(self, id, old);
    }

    /// Called by an idle conversation actor: forgets it if it is still the
    /// live one. Returns whether it may stop (its deadlines are in the
    /// persistent index and will wake a new actor when due).
    pub(crate) fn passivate(&self, id: ConvId, addr: &Addr<Conversation>) -> bool {
        self.conversations.passivate(&self.deps.metrics, id, addr)
    }

    /// Called by an idle story actor, likewise (its end is in the story
    /// deadline index).
    pub(crate) fn passivate_story(&self, id: StoryId, addr: &Addr<Story>) -> bool {
        self.stories.passivate(&self.deps.metrics, id, addr)
    }

    /// Restarts every conversation and story actor that died (a crash), so
    /// its timers are re-armed even if nobody writes to it. Returns how many.
    pub fn revive_dead(self: &Arc<Self>) -> usize {
        self.conversations.revive_dead(self) + self.stories.revive_dead(self)
    }

    /// Restarts a live actor through its supervisor: its state is reloaded
    /// from storage and its timers re-armed. Returns whether it was live.
    pub fn restart(&self, kind: &str, id: crate::ids::Id) -> bool {
        match kind {
            "conversation" => self.conversations.restart(id),
            "story" => self.stories.restart(id),
            "user" => match self
                .users
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .get(&id)
            {
                Some(e) => {
                    e.addr.do_send(user::Restart);
                    true
                }
                None => false,
            },
            _ => false,
        }
    }

    /// Summaries of the live actors of a kind (at most `limit`).
    pub async fn summaries(&self, kind: &str, limit: usize) -> Vec<crate::ActorSummary> {
        let mut out = Vec::new();
        match kind {
            "conversation" => {
                for a in self.conversations.addrs(limit) {
                    if let Ok(s) = a.send(crate::Summarize).await {
                        out.push(s);
                    }
                }
            }
            "story" => {
                for a in self.stories.addrs(limit) {
                    if let Ok(s) = a.send(crate::Summarize).await {
                        out.push(s);
                    }
                }
            }
            "user" => {
                let addrs: Vec<_> = {
                    let users = self.users.read().unwrap_or_else(|p| p.into_inner());
                    users.values().take(limit).map(|e| e.addr.clone()).collect()
                };
                for a in addrs {
                    if let Ok(s) = a.send(crate::Summarize).await {
                        out.push(s);
                    }
                }
            }
            _ => {}
        }
        out
    }

    /// Test-only: makes a live actor panic.
    #[cfg(feature = "faults")]
    pub fn inject_panic(&self, kind: &str, id: crate::ids::Id) -> bool {
        match kind {
            "conversation" => self
                .conversations
                .lock()
                .get(&id)
                .map(|e| e.addr.do_send(crate::Panic))
                .is_some(),
            "story" => self
                .stories
                .lock()
                .get(&id)
                .map(|e| e.addr.do_send(crate::Panic))
                .is_some(),
            "user" => {
                let users = self.users.read().unwrap_or_else(|p| p.into_inner());
                users
                    .get(&id)
                    .map(|e| e.addr.do_send(crate::Panic))
                    .is_some()
            }
            _ => false,
        }
    }

    /// Makes every socket on this node replay what it may have missed
    /// (cluster mode: live events were lost while the bus was away).
    pub fn resync_all(&self) {
        let all: Vec<crate::user::Sessions> = self
            .users
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .map(|e| Arc::clone(&e.sessions))
            .collect();
        for sessions in all {
            let addrs: Vec<_> = sessions
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .map(|a| a.link.addr.clone())
                .collect();
            for addr in addrs {
                addr.do_send(crate::session::Resync);
            }
        }
    }

    /// Closes every socket on this node with `code` (1001 at shutdown).
    pub fn close_all_sessions(&self, code: u16, reason: &'static str) {
        for e in self
            .users
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
        {
            e.addr.do_send(user::CloseAll { code, reason });
        }
    }

    /// How many actors of each kind are live: (users, conversations, stories).
    pub fn live_counts(&self) -> (usize, usize, usize) {
        let users = self.users.read().unwrap_or_else(|p| p.into_inner()).len();
        (users, self.conversations.len(), self.stories.len())
    }
}

impl Fanout for Directory {
    fn deliver(&self, batch: Vec<(UserId, Vec<Delivery>)>) {
        crate::send::deliver(self, batch);
    }
}

impl Directory {
    /// The sessions of a user whose actor is live, for the fanout.
    pub(crate) fn sessions_of(&self, user: UserId) -> Option<crate::user::Sessions> {
        self.users
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&user)
            .map(|e| Arc::clone(&e.sessions))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crash_loops_back_off_exponentially_up_to_a_cap() {
        assert_eq!(backoff(0), Duration::ZERO);
        assert_eq!(
            backoff(1),
            Duration::from_millis(100),
            "a first crash waits a little"
        );
        assert_eq!(backoff(2), Duration::from_millis(200));
        assert_eq!(backoff(3), Duration::from_millis(400));
        assert_eq!(backoff(10), MAX_BACKOFF);
        assert_eq!(backoff(u32::MAX), MAX_BACKOFF);
    }
}
