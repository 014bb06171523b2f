//! The `Session` actor: one per WebSocket. It parses and checks frames,
//! enforces limits, keeps the heartbeat, routes each frame to the actor
//! that owns it, and writes frames to its socket. It holds no state that
//! matters after it dies: everything a device missed comes back by `sync`.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix::prelude::*;
use actix_web_actors::ws;

use crate::conversation::{self, Delivered, React, Read, Screenshot, Typing, Unsend, View, Viewed};
use crate::directory::Directory;
use crate::frames::{
    burned, error, parse_msg_id, reaction, render_record, salvage_ref, ClientFrame, ErrorCode,
    FrameError, MediaView, MessageView, ServerFrame, MAX_EMOJI_BYTES,
};
use crate::ids::{DeviceId, Id, MsgId, UserId};
use crate::metrics::Kind;
use crate::outbox::{Abort, Admit, Outbox};
use crate::ratelimit::TokenBucket;
use crate::store::{
    blocking, now_ms, Access, BurnReason, EventRecord, MediaAccess, ReadError, Store, ViewPolicy,
};
use crate::user::{Attach, Detach};

static SERIAL: AtomicU64 = AtomicU64::new(1);

/// How often the server pings a quiet socket.
const PING_EVERY: Duration = Duration::from_secs(10);

/// Events read from storage per page while replaying a sync. A page is
/// written to the socket before the next is read, and the next is read
/// only once the socket has taken the last one (see [`Session::on_sync`]).
const SYNC_PAGE: usize = 128;

/// Syncs a socket may queue behind the one replaying; past it a `sync` is
/// refused with `rate_limited`.
const MAX_QUEUED_SYNCS: usize = 4;

/// A frame for this socket, from the user actor.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Push {
    /// The event's cursor (`None` for typing and presence).
    pub cursor: Option<u64>,
    /// The frame's text.
    pub text: Arc<str>,
}

/// A frame answering one of this socket's requests (ack, view result,
/// error): sent at once, even while a sync replays.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Reply(pub String);

/// Where frames for one socket go: its session, behind its [`Outbox`].
#[derive(Clone)]
pub struct SessionLink {
    /// The session.
    pub addr: Addr<Session>,
    /// What waits for its socket.
    pub outbox: Arc<Outbox>,
    /// The session's thread: the cut of a socket that fell behind is timed
    /// there, whichever thread noticed (the storage writer's has no
    /// runtime of its own).
    pub arbiter: actix::ArbiterHandle,
}

impl SessionLink {
    /// Queues a live event for the socket, unless it has fallen too far
    /// behind: then it is closed instead (4408) and its device resumes by
    /// `sync`.
    pub fn push(&self, cursor: Option<u64>, text: Arc<str>) {
        if self.admit(text.len()) {
            self.addr.do_send(Push { cursor, text });
        }
    }

    /// Queues an answer to one of the socket's requests, likewise.
    pub(crate) fn reply(&self, text: String) {
        if self.admit(text.len()) {
            self.addr.do_send(Reply(text));
        }
    }

    fn admit(&self, len: usize) -> bool {
        match self.outbox.admit(len) {
            Admit::Queued => true,
            Admit::Refused => false,
            Admit::Overflowed => {
                tracing::info!(
                    queued_bytes = self.outbox.queued_bytes(),
                    "socket fell too far behind; closing it"
                );
                self.addr.do_send(CloseSocket {
                    code: crate::outbox::SLOW_CLOSE_CODE,
                    reason: "too far behind: reconnect and sync",
                });
                let outbox = Arc::clone(&self.outbox);
                self.arbiter.spawn(async move {
                    tokio::time::sleep(crate::outbox::ABORT_AFTER).await;
                    outbox.abort_if_stuck();
                });
                false
            }
        }
    }
}

/// Close the socket with a code (4401 when the token was revoked).
#[derive(Message)]
#[rtype(result = "()")]
pub struct CloseSocket {
    /// The close code.
    pub code: u16,
    /// A content-free reason.
    pub reason: &'static str,
}

/// One WebSocket of one device.
pub struct Session {
    pub(crate) dir: Arc<Directory>,
    pub(crate) deps: Arc<crate::directory::Deps>,
    pub(crate) user: UserId,
    pub(crate) device: DeviceId,
    serial: u64,
    pub(crate) send_bucket: Option<Arc<Mutex<TokenBucket>>>,
    /// The user's bucket for other frames that store an event.
    event_bucket: Option<Arc<Mutex<TokenBucket>>>,
    /// The user actor this socket is attached to.
    user_addr: Option<Addr<crate::user::User>>,
    /// The connection's span: every log line of this socket carries it.
    span: tracing::Span,
    /// The highest cursor pushed live, to resume from if the user actor
    /// has to be replaced.
    last_cursor: u64,
    frame_bucket: TokenBucket,
    last_heard: Instant,
    /// The sync replaying now, if any: one at a time per socket.
    replaying: Option<Replay>,
    /// Syncs asked for while one replays (their `after`), in order.
    queued_syncs: VecDeque<u64>,
    /// What waits for this socket (see [`Outbox`]).
    outbox: Arc<Outbox>,
    /// A text message arriving in fragments, until its last one.
    fragments: Option<Vec<u8>>,
    /// When the token that opened this socket expires (Unix ms).
    token_expires_at: Option<u64>,
    /// Whatever the server holds for as long as the socket is open (its
    /// place in the per-address count), dropped with the session.
    _held: Option<Box<dyn std::any::Any>>,
    /// Dropped with this session (a crash included): its user actor waits
    /// on it to forget the session, and a call it is in, to end it.
    pub(crate) alive: crate::Alive,
    /// Cluster mode: frames waiting, in order, while the owner of a
    /// conversation is looked up.
    held: VecDeque<ClientFrame>,
    /// Whether a lookup is in progress (frames wait behind it).
    locating: bool,
}

/// Frames a socket may have waiting behind an owner lookup.
const MAX_HELD_FRAMES: usize = 256;

/// How soon a session retries attaching while its user actor is held back
/// by crash-loop backoff.
const REATTACH_AFTER: Duration = Duration::from_millis(250);

impl Session {
    /// A session for an authenticated device; `abort` cuts its connection
    /// if it stops reading (see [`Outbox`]).
    pub fn new(dir: Arc<Directory>, user: UserId, device: DeviceId, abort: Option<Abort>) -> Self {
        let frame_bucket = TokenBucket::new(
            dir.deps().limits.frame_rate_per_second,
            dir.deps().limits.frame_burst,
        );
        let outbox = Arc::new(Outbox::new(
            dir.deps().limits.max_outbound_bytes,
            dir.deps().limits.max_outbound_frames,
            abort,
        ));
        Session {
            deps: Arc::clone(dir.deps()),
            dir,
            user,
            device,
            serial: SERIAL.fetch_add(1, Ordering::Relaxed),
            send_bucket: None,
            event_bucket: None,
            user_addr: None,
            span: tracing::info_span!("connection", user = %user, device = %device),
            last_cursor: 0,
            frame_bucket,
            last_heard: Instant::now(),
            replaying: None,
            queued_syncs: VecDeque::new(),
            outbox,
            fragments: None,
            token_expires_at: None,
            _held: None,
            alive: crate::alive(),
            held: VecDeque::new(),
            locating: false,
        }
    }

    /// Holds `held` for as long as the socket is open.
    pub fn holding(mut self, held: Box<dyn std::any::Any>) -> Self {
        self._held = Some(held);
        self
    }

    /// Closes the socket (4401) when its token expires.
    pub fn token_expires_at(mut self, at: u64) -> Self {
        self.token_expires_at = Some(at);
        self
    }

    pub(crate) fn reply_error(
        ctx: &mut ws::WebsocketContext<Self>,
        err: &FrameError,
        reference: Option<&str>,
    ) {
        ctx.text(error(err, reference));
    }

    fn on_text(&mut self, text: &str, ctx: &mut ws::WebsocketContext<Self>) {
        if let Err(wait) = self.frame_bucket.take() {
            let err = FrameError {
                retry_after_ms: Some(wait),
                ..FrameError::new(ErrorCode::RateLimited, "too many frames")
            };
            return Self::reply_error(ctx, &err, salvage_ref(text).as_deref());
        }
        let frame = match serde_json::from_str::<ClientFrame>(text) {
            Ok(f) => f,
            Err(_) => {
                let err = FrameError::new(ErrorCode::BadFrame, "not a valid frame: malformed JSON, unknown type, or a missing or mistyped field");
                return Self::reply_error(ctx, &err, salvage_ref(text).as_deref());
            }
        };
        let stores_event = matches!(
            frame,
            ClientFrame::Read { .. }
                | ClientFrame::Delivered { .. }
                | ClientFrame::Screenshot { .. }
                | ClientFrame::Unsend { .. }
                | ClientFrame::React { .. }
        );
        if stores_event {
            if let Err(wait) = Self::take(&self.event_bucket) {
                let err = FrameError {
                    retry_after_ms: Some(wait),
                    ..FrameError::new(ErrorCode::RateLimited, "too many receipts and notices")
                };
                return Self::reply_error(ctx, &err, salvage_ref(text).as_deref());
            }
        }
        if self.locating || !self.held.is_empty() {
            if self.held.len() >= MAX_HELD_FRAMES {
                let err = FrameError {
                    retry_after_ms: Some(100),
                    ..FrameError::new(ErrorCode::RateLimited, "too many frames waiting")
                };
                return Self::reply_error(ctx, &err, salvage_ref(text).as_deref());
            }
            self.held.push_back(frame);
            return;
        }
        self.route(frame, ctx);
    }

    /// Cluster mode: a frame about a conversation whose owner is not known
    /// yet waits (with every frame after it) until it is; one owned by
    /// another node goes there. Everything else is handled here.
    fn route(&mut self, frame: ClientFrame, ctx: &mut ws::WebsocketContext<Self>) {
        if let Some(router) = self.deps.router.clone() {
            if let Some((conv, create)) = frame_conv(&frame, self.user) {
                if router.cached(conv).is_none() {
                    self.held.push_front(frame);
                    self.locating = true;
                    let lookup = router.locate(conv, create);
                    ctx.spawn(
                        actix::fut::wrap_future::<_, Self>(lookup).map(|res, act, ctx| {
                            act.locating = false;
                            if let Err(e) = res {
                                if let Some(f) = act.held.pop_front() {
                                    Self::reply_error(ctx, &e, frame_ref(&f).as_deref());
                                }
                            }
                            while !act.locating {
                                let Some(f) = act.held.pop_front() else { break };
                                act.route(f, ctx);
                            }
                        }),
                    );
                    return;
                }
            }
        }
        self.dispatch(frame, ctx);
    }

    /// Where `conv` lives, when it is another node (cluster mode).
    pub(crate) fn remote_owner(&self, conv: Id) -> Option<Arc<str>> {
        match self.deps.router.as_ref()?.cached(conv)? {
            crate::remote::Place::Remote(node) => Some(node),
            crate::remote::Place::Local => None,
        }
    }

    /// Sends `call` to the node that owns its conversation; a refusal
    /// comes back as an error frame referring to `reference`.
    fn call_remote(
        &mut self,
        node: Arc<str>,
        call: crate::remote::ConvCall,
        reference: Option<String>,
        ctx: &mut ws::WebsocketContext<Self>,
    ) {
        let Some(router) = self.deps.router.clone() else {
            return;
        };
        let answer = router.call(node, call);
        self.reply_later(ctx, async move {
            match crate::remote::answer_result(answer.await) {
                Ok(_) => None,
                Err(e) => Some(error(&e, reference.as_deref())),
            }
        });
    }

    fn dispatch(&mut self, frame: ClientFrame, ctx: &mut ws::WebsocketContext<Self>) {
        use crate::remote::ConvCall;
        match frame {
            ClientFrame::Ping => ctx.text(ServerFrame::Pong.to_text()),
            ClientFrame::Send(f) => self.on_send(f, ctx),
            ClientFrame::Sync { after } => self.on_sync(after, ctx),
            ClientFrame::Typing {
                conversation_id,
                is_typing,
            } => {
                let by = self.user;
                let device = self.device;
                self.route_conv(
                    &conversation_id,
                    None,
                    ctx,
                    move |_| Typing {
                        by,
                        device,
                        is_typing,
                    },
                    move |conv| ConvCall::Typing {
                        conv,
                        by,
                        device,
                        is_typing,
                    },
                );
            }
            ClientFrame::Read {
                conversation_id,
                up_to_seq,
            } => {
                let by = self.user;
                self.route_conv(
                    &conversation_id,
                    None,
                    ctx,
                    move |_| Read { by, up_to_seq },
                    move |conv| ConvCall::Read {
                        conv,
                        by,
                        up_to_seq,
                    },
                );
            }
            ClientFrame::Delivered { msg_id } => {
                let by = self.user;
                self.route_msg(
                    msg_id,
                    ctx,
                    move |msg| Delivered { msg, by },
                    move |msg| ConvCall::Delivered { msg, by },
                );
            }
            ClientFrame::Screenshot { msg_id } => {
                let by = self.user;
                self.route_msg(
                    msg_id,
                    ctx,
                    move |msg| Screenshot { msg, by },
                    move |msg| ConvCall::Screenshot { msg, by },
                );
            }
            ClientFrame::Unsend { msg_id } => {
                let by = self.user;
                self.route_msg(
                    msg_id,
                    ctx,
                    move |msg| Unsend { msg, by },
                    move |msg| ConvCall::Unsend { msg, by },
                );
            }
            ClientFrame::View { msg_id } => self.on_view(msg_id, ctx),
            ClientFrame::React { msg_id, emoji } => {
                if emoji
                    .as_ref()
                    .is_some_and(|e| e.is_empty() || e.len() > MAX_EMOJI_BYTES)
                {
                    let err = FrameError::new(
                        ErrorCode::Invalid,
                        "emoji must be 1 to 32 bytes of UTF-8, or null",
                    );
                    return Self::reply_error(ctx, &err, Some(&msg_id));
                }
                let by = self.user;
                let remote_emoji = emoji.clone();
                self.route_msg(
                    msg_id,
                    ctx,
                    move |msg| React { msg, by, emoji },
                    move |msg| ConvCall::React {
                        msg,
                        by,
                        emoji: remote_emoji,
                    },
                );
            }
            ClientFrame::Call(f) => self.on_call(f, ctx),
        }
    }

    /// Sends a msg_id-scoped frame to the message's conversation.
    fn route_msg<M, F, R>(
        &mut self,
        msg_id: String,
        ctx: &mut ws::WebsocketContext<Self>,
        make: F,
        remote: R,
    ) where
        F: FnOnce(MsgId) -> M,
        R: FnOnce(MsgId) -> crate::remote::ConvCall,
        M: Message<Result = Result<(), FrameError>> + Send + 'static,
        conversation::Conversation: Handler<crate::Counted<M>>,
    {
        match parse_msg_id(&msg_id) {
            Ok(msg) if self.remote_owner(msg.conv).is_some() => {
                let node = self.remote_owner(msg.conv).expect("just checked");
                self.call_remote(node, remote(msg), Some(msg_id), ctx);
            }
            Ok(msg) => match self.conversation(msg.conv) {
                Ok(addr) => self.answer(addr.send(make(msg)), Some(msg_id), ctx),
                Err(e) => Self::reply_error(ctx, &e, Some(&msg_id)),
            },
            Err(e) => Self::reply_error(ctx, &e, Some(&msg_id)),
        }
    }

    /// Sends a conversation-scoped frame to its conversation.
    fn route_conv<M, F, R>(
        &mut self,
        conv: &str,
        reference: Option<String>,
        ctx: &mut ws::WebsocketContext<Self>,
        make: F,
        remote: R,
    ) where
        F: FnOnce(Id) -> M,
        R: FnOnce(Id) -> crate::remote::ConvCall,
        M: Message<Result = Result<(), FrameError>> + Send + 'static,
        conversation::Conversation: Handler<crate::Counted<M>>,
    {
        if let Ok(id) = conversation::conversation_id(conv) {
            if let Some(node) = self.remote_owner(id) {
                return self.call_remote(node, remote(id), reference, ctx);
            }
        }
        match conversation::conversation_id(conv).and_then(|id| Ok((id, self.conversation(id)?))) {
            Ok((id, addr)) => self.answer(addr.send(make(id)), reference, ctx),
            Err(e) => Self::reply_error(ctx, &e, reference.as_deref()),
        }
    }

    /// The actor of a conversation this user names in a frame; a
    /// conversation that does not exist or is someone else's starts none
    /// and gets the same answer either way.
    pub(crate) fn conversation(&self, id: Id) -> Result<crate::directory::ConvHandle, FrameError> {
        self.dir
            .member_conversation(self.user, id)
            .ok_or(conversation::NOT_FOUND)
    }

    /// Answers a routed frame: nothing on success, an error frame otherwise.
    fn answer<M>(
        &mut self,
        req: Request<conversation::Conversation, crate::Counted<M>>,
        reference: Option<String>,
        ctx: &mut ws::WebsocketContext<Self>,
    ) where
        M: Message<Result = Result<(), FrameError>> + Send + 'static,
        conversation::Conversation: Handler<crate::Counted<M>>,
    {
        self.reply_later(ctx, async move {
            let err = match req.await {
                Ok(Ok(())) => return None,
                Ok(Err(e)) => e,
                Err(_) => FrameError::new(ErrorCode::Unavailable, "conversation restarting, retry"),
            };
            Some(error(&err, reference.as_deref()))
        });
    }

    /// Sends the frame `answer` resolves to, when it does. The wait runs as
    /// a task of its own, not inside this actor's context (whose spawned
    /// futures are polled together: thousands in flight would cost
    /// quadratic time), and the frame comes back as a [`Reply`].
    pub(crate) fn reply_later(
        &self,
        ctx: &mut ws::WebsocketContext<Self>,
        answer: impl std::future::Future<Output = Option<String>> + 'static,
    ) {
        let me = self.link(ctx);
        actix::spawn(async move {
            if let Some(text) = answer.await {
                me.reply(text);
            }
        });
    }

    /// This session as the user actor and answers reach it.
    pub(crate) fn link(&self, ctx: &ws::WebsocketContext<Self>) -> SessionLink {
        SessionLink {
            addr: ctx.address(),
            outbox: Arc::clone(&self.outbox),
            arbiter: actix::Arbiter::current(),
        }
    }

    /// Takes a token from a per-user bucket (none yet: not attached, let
    /// it pass).
    pub(crate) fn take(bucket: &Option<Arc<Mutex<TokenBucket>>>) -> Result<(), u64> {
        match bucket {
            Some(b) => b.lock().unwrap_or_else(|p| p.into_inner()).take(),
            None => Ok(()),
        }
    }

    fn on_view(&mut self, msg_id: String, ctx: &mut ws::WebsocketContext<Self>) {
        let msg = match parse_msg_id(&msg_id) {
            Ok(m) => m,
            Err(e) => return Self::reply_error(ctx, &e, Some(&msg_id)),
        };
        let by = self.user;
        let req: crate::remote::BoxFuture<Result<Result<Viewed, FrameError>, MailboxError>> =
            match (self.remote_owner(msg.conv), self.deps.router.clone()) {
                (Some(node), Some(router)) => {
                    let answer = router.call(node, crate::remote::ConvCall::View { msg, by });
                    Box::pin(async move {
                        Ok(match crate::remote::answer_result(answer.await) {
                            Ok(crate::remote::ConvAnswer::Granted { message, .. }) => {
                                Ok(Viewed::Granted(*message))
                            }
                            Ok(_) => Ok(Viewed::Burned),
                            Err(e) => Err(e),
                        })
                    })
                }
                _ => match self.conversation(msg.conv) {
                    Ok(addr) => Box::pin(addr.send(View { msg, by })),
                    Err(e) => return Self::reply_error(ctx, &e, Some(&msg_id)),
                },
            };
        let media = Arc::clone(&self.deps.media);
        self.reply_later(ctx, async move {
            let res = req.await;
            let burned = ServerFrame::ViewResult {
                msg_id: msg,
                result: "burned",
                body: None,
                media: None,
                expires_at: None,
            };
            match res {
                Ok(Ok(Viewed::Granted(m))) => {
                    let access = match m.view_policy {
                        ViewPolicy::Once => Access::Once,
                        ViewPolicy::Timed => Access::Timed,
                    };
                    let grant = m
                        .media
                        .as_ref()
                        .map(|md| media.grant(md, access, m.expires_at));
                    let frame = match (&m.media, &grant) {
                        // The key is already gone: nothing to open.
                        (Some(_), Some(None)) => burned,
                        (Some(md), Some(Some(g))) => ServerFrame::ViewResult {
                            msg_id: m.id,
                            result: "granted",
                            body: None,
                            media: Some(MediaView::of(md, g)),
                            expires_at: Some(m.expires_at),
                        },
                        _ => ServerFrame::ViewResult {
                            msg_id: m.id,
                            result: "granted",
                            body: m.body.as_deref(),
                            media: None,
                            expires_at: Some(m.expires_at),
                        },
                    };
                    Some(frame.to_text())
                }
                Ok(Ok(Viewed::Burned)) => Some(burned.to_text()),
                Ok(Err(e)) => Some(error(&e, Some(&msg_id))),
                Err(_) => Some(error(
                    &FrameError::new(ErrorCode::Unavailable, "conversation restarting, retry"),
                    Some(&msg_id),
                )),
            }
        });
    }

    /// Starts replaying the inbox after `after`, or queues the request
    /// behind the replay in progress (one replays at a time per socket).
    fn on_sync(&mut self, after: u64, ctx: &mut ws::WebsocketContext<Self>) {
        if self.replaying.is_some() {
            if self.queued_syncs.len() >= MAX_QUEUED_SYNCS {
                let err = FrameError {
                    retry_after_ms: Some(100),
                    ..FrameError::new(ErrorCode::RateLimited, "too many syncs at once")
                };
                return Self::reply_error(ctx, &err, None);
            }
            self.queued_syncs.push_back(after);
            return;
        }
        self.replaying = Some(Replay {
            after,
            next: after,
            newest_live: 0,
            burned_once: HashSet::new(),
            failures: 0,
        });
        self.next_page(ctx);
    }

    /// Reads and writes the next page of the replay in progress. The
    /// read's answer is handled when this actor next runs, which is when
    /// its socket has taken what was written before (the HTTP layer stops
    /// polling a connection whose output is backed up): a replay goes at
    /// the pace of its reader and holds one page in memory.
    fn next_page(&mut self, ctx: &mut ws::WebsocketContext<Self>) {
        let Some(r) = self.replaying.as_mut() else {
            return;
        };
        let store = Arc::clone(&self.deps.store);
        let media = Arc::clone(&self.deps.media);
        let user = self.user;
        let from = r.next;
        let mut burned_once = std::mem::take(&mut r.burned_once);
        ctx.spawn(
            blocking(move || {
                let page = replay_page(&*store, &*media, user, from, now_ms(), &mut burned_once);
                Ok((page, burned_once))
            })
            .into_actor(self)
            .map(move |res, act, ctx| {
                let Some(r) = act.replaying.as_mut() else {
                    return;
                };
                let page = match res {
                    Ok((Ok(page), burned_once)) => {
                        r.burned_once = burned_once;
                        r.failures = 0;
                        page
                    }
                    other => {
                        if let Ok((_, burned_once)) = other {
                            r.burned_once = burned_once;
                        }
                        // Events pushed live while this replays are left to
                        // it: a failed read is tried again (storage, or in
                        // cluster mode another node, may answer shortly)
                        // rather than dropping them.
                        r.failures += 1;
                        if r.failures < REPLAY_ATTEMPTS {
                            ctx.run_later(REPLAY_RETRY_AFTER, |act, ctx| act.next_page(ctx));
                            return;
                        }
                        let absorbed = r.newest_live > act.last_cursor;
                        act.replaying = None;
                        Self::reply_error(
                            ctx,
                            &FrameError::new(ErrorCode::Internal, "sync failed, retry"),
                            None,
                        );
                        if absorbed {
                            // Live events went to the failed replay: this
                            // socket cannot show them, so it closes and the
                            // device resumes with `sync` on a new one.
                            ctx.notify(CloseSocket {
                                code: SYNC_FAILED_CLOSE_CODE,
                                reason: "sync failed: reconnect and sync",
                            });
                            return;
                        }
                        return act.next_sync(ctx);
                    }
                };
                for f in &page.frames {
                    ctx.text(f.as_str());
                }
                r.next = page.last;
                // Events pushed live meanwhile were not sent: they are in
                // storage, and the replay goes on until it has read them.
                // (A page may come back empty while an event pushed during
                // its read is already stored: read again then, or that
                // event would reach this device neither live nor replayed.)
                if page.scanned == SYNC_PAGE || r.newest_live > page.last {
                    return act.next_page(ctx);
                }
                let Replay { after, next, .. } = *r;
                act.replaying = None;
                ctx.text(ServerFrame::Synced { cursor: next }.to_text());
                if next > after {
                    // A cursor read from storage (not the client's own
                    // `after`, which may be anything): live pushes up to it
                    // are duplicates of this replay.
                    act.last_cursor = act.last_cursor.max(next);
                }
                act.next_sync(ctx);
            }),
        );
    }

    /// Starts the next queued sync, if any.
    fn next_sync(&mut self, ctx: &mut ws::WebsocketContext<Self>) {
        if let Some(after) = self.queued_syncs.pop_front() {
            self.on_sync(after, ctx);
        }
    }

    /// Attaches to the user's actor (a new one if it died), and watches it:
    /// if it dies (a crash), the session attaches to its replacement and
    /// replays what this device may have missed meanwhile (`resync`), so
    /// the device sees nothing but a `synced` and loses nothing. Waiting
    /// costs nothing while the actor lives (no polling).
    fn attach(&mut self, ctx: &mut ws::WebsocketContext<Self>, resync: bool) {
        let handle = self.dir.attach_user(self.user);
        if handle.alive.has_changed().is_err() {
            // Dead, and not replaced yet (still unwinding, or crash-loop
            // backoff): try again shortly.
            ctx.run_later(REATTACH_AFTER, move |act, ctx| act.attach(ctx, resync));
            return;
        }
        handle.addr.do_send(Attach {
            serial: self.serial,
            device: self.device,
            link: self.link(ctx),
            alive: self.alive.subscribe(),
        });
        self.send_bucket = Some(handle.send_bucket);
        self.event_bucket = Some(handle.event_bucket);
        self.user_addr = Some(handle.addr);
        // A call ringing this user rings this socket too.
        self.dir
            .calls()
            .attached(self.user, self.device, &self.link(ctx));
        ctx.spawn(
            actix::fut::wrap_future::<_, Self>(crate::gone(handle.alive)).map(|(), act, ctx| {
                tracing::warn!("user actor gone; attaching to its replacement");
                act.attach(ctx, true);
            }),
        );
        if resync {
            let from = self.last_cursor;
            self.on_sync(from, ctx);
        }
    }

    /// Reassembles a text message sent in fragments (RFC 6455 5.4) and
    /// handles it whole; the whole is held to the frame size limit.
    fn on_fragment(&mut self, item: actix_http::ws::Item, ctx: &mut ws::WebsocketContext<Self>) {
        let (first, last, bytes) = match item {
            actix_http::ws::Item::FirstText(b) => (true, false, b),
            actix_http::ws::Item::Continue(b) => (false, false, b),
            actix_http::ws::Item::Last(b) => (false, true, b),
            actix_http::ws::Item::FirstBinary(_) => {
                self.fragments = None;
                return Self::reply_error(
                    ctx,
                    &FrameError::new(ErrorCode::BadFrame, "only text frames are accepted"),
                    None,
                );
            }
        };
        if first {
            self.fragments = Some(Vec::with_capacity(bytes.len()));
        }
        // Fragments of a binary message (refused above) are dropped.
        let Some(buf) = self.fragments.as_mut() else {
            return;
        };
        if buf.len() + bytes.len() > self.deps.limits.max_frame_bytes {
            self.fragments = None;
            ctx.close(Some(ws::CloseReason {
                code: ws::CloseCode::Size,
                description: Some("frame too large".into()),
            }));
            return ctx.stop();
        }
        buf.extend_from_slice(&bytes);
        if !last {
            return;
        }
        let whole = self.fragments.take().unwrap_or_default();
        match std::str::from_utf8(&whole) {
            Ok(text) => self.on_text(text, ctx),
            Err(_) => {
                ctx.close(Some(ws::CloseCode::Invalid.into()));
                ctx.stop();
            }
        }
    }

    fn heartbeat(&self, ctx: &mut ws::WebsocketContext<Self>) {
        let timeout = self.deps.limits.heartbeat_timeout;
        ctx.run_interval(PING_EVERY.min(timeout), move |act, ctx| {
            if act.last_heard.elapsed() > timeout {
                tracing::debug!("socket silent past the heartbeat timeout; closing");
                ctx.stop();
            } else {
                ctx.ping(b"");
            }
        });
    }
}

/// A sync being replayed, page by page.
struct Replay {
    /// The cursor the client asked from.
    after: u64,
    /// Where the next page starts (the last cursor read so far).
    next: u64,
    /// The newest cursor pushed live while this replays.
    newest_live: u64,
    /// Messages already reported burned by this replay (once each).
    burned_once: HashSet<MsgId>,
    /// Page reads that failed in a row.
    failures: u32,
}

/// Reads of one replay page tried before the replay gives up.
const REPLAY_ATTEMPTS: u32 = 10;
/// The pause between them.
const REPLAY_RETRY_AFTER: Duration = Duration::from_millis(500);
/// The close code of a socket whose replay failed after taking live events
/// (1011: the server met an unexpected condition).
const SYNC_FAILED_CLOSE_CODE: u16 = 1011;

/// One page of a replay.
pub struct Page {
    /// The frames to write, in cursor order.
    pub frames: Vec<String>,
    /// The last cursor read (`from` if none).
    pub last: u64,
    /// How many inbox rows were read: fewer than a page means the end.
    pub scanned: usize,
}

/// Reads one page of a user's inbox after `from`: every live event in
/// cursor order, a message that has expired or been burned replaced by its
/// `burned` (once per message across the pages of one replay, which
/// `burned_once` remembers).
pub fn replay_page(
    store: &dyn Store,
    media: &dyn MediaAccess,
    user: UserId,
    from: u64,
    now: u64,
    burned_once: &mut HashSet<MsgId>,
) -> Result<Page, ReadError> {
    let batch = store.inbox_after(user, from, SYNC_PAGE)?;
    let mut page = Page {
        frames: Vec::with_capacity(batch.len()),
        last: from,
        scanned: batch.len(),
    };
    for (c, rec) in batch {
        page.last = c;
        let frame = match rec {
            EventRecord::Message { msg } => match store.message(msg)? {
                Some(m) if m.expires_at > now => {
                    let grant = match (&m.media, m.view_policy) {
                        (Some(md), ViewPolicy::Timed) => {
                            media.grant(md, Access::Timed, m.expires_at)
                        }
                        _ => None,
                    };
                    ServerFrame::Message(MessageView::of(&m, Some(c), grant.as_ref())).to_text()
                }
                _ => {
                    if !burned_once.insert(msg) {
                        continue;
                    }
                    let reason = store.tombstone(msg)?.unwrap_or(BurnReason::Expired);
                    burned(c, msg, reason)
                }
            },
            EventRecord::Burned { msg, .. } if !burned_once.insert(msg) => continue,
            // A reaction is replayed while its message lives, with the
            // emoji as it now stands; after the message burned, never.
            EventRecord::Reaction { msg, by } => match store.message(msg)? {
                Some(m) if m.expires_at > now => {
                    reaction(c, msg, by, store.reaction(msg, by)?.as_deref())
                }
                _ => continue,
            },
            // A story that ended is never announced again: its
            // `story_gone` comes later in the inbox.
            EventRecord::StoryPosted { story, .. }
                if !store.story(story)?.is_some_and(|s| s.live(now)) =>
            {
                continue
            }
            other => match render_record(c, &other) {
                Some(frame) => frame,
                None => continue,
            },
        };
        page.frames.push(frame);
    }
    Ok(page)
}

impl Actor for Session {
    type Context = ws::WebsocketContext<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        if let Some(at) = self.token_expires_at {
            let left = Duration::from_millis(at.saturating_sub(now_ms()));
            ctx.run_later(left, |_, ctx| {
                tracing::debug!("token expired; closing the socket");
                ctx.close(Some(ws::CloseReason {
                    code: ws::CloseCode::Other(4401),
                    description: Some("token expired".into()),
                }));
                ctx.stop();
            });
        }
        self.attach(ctx, false);
        self.deps.metrics.connections.inc();
        self.deps
            .metrics
            .live_actors
            .get_or_create(&Kind { kind: "session" })
            .inc();
        self.heartbeat(ctx);
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        self.outbox.finish();
        self.deps.metrics.connections.dec();
        self.deps
            .metrics
            .live_actors
            .get_or_create(&Kind { kind: "session" })
            .dec();
        self.dir.tell_user(
            self.user,
            Detach {
                serial: self.serial,
            },
        );
    }
}

impl StreamHandler<Result<ws::Message, ws::ProtocolError>> for Session {
    fn handle(&mut self, msg: Result<ws::Message, ws::ProtocolError>, ctx: &mut Self::Context) {
        let span = self.span.clone();
        let _in = span.enter();
        self.last_heard = Instant::now();
        match msg {
            Ok(ws::Message::Text(t)) => self.on_text(&t, ctx),
            Ok(ws::Message::Continuation(item)) => self.on_fragment(item, ctx),
            Ok(ws::Message::Binary(_)) => Self::reply_error(
                ctx,
                &FrameError::new(ErrorCode::BadFrame, "only text frames are accepted"),
                None,
            ),
            Ok(ws::Message::Ping(p)) => ctx.pong(&p),
            Ok(ws::Message::Pong(_)) | Ok(ws::Message::Nop) => {}
            Ok(ws::Message::Close(reason)) => {
                ctx.close(reason);
                ctx.stop();
            }
            Err(ws::ProtocolError::Overflow) => {
                ctx.close(Some(ws::CloseReason {
                    code: ws::CloseCode::Size,
                    description: Some("frame too large".into()),
                }));
                ctx.stop();
            }
            Err(_) => {
                ctx.close(Some(ws::CloseCode::Protocol.into()));
                ctx.stop();
            }
        }
    }
}

impl Handler<Push> for Session {
    type Result = ();

    fn handle(&mut self, msg: Push, ctx: &mut Self::Context) {
        self.outbox.release(msg.text.len());
        if let Some(c) = msg.cursor {
            if let Some(r) = self.replaying.as_mut() {
                // Stored before it was pushed: the replay reads it (and
                // goes on until it has), in order.
                r.newest_live = r.newest_live.max(c);
                return;
            }
            // Events reach a session in cursor order, so one at or below
            // the last cursor sent was already sent, by a replay that read
            // it from storage before its live push got here.
            if c <= self.last_cursor {
                return;
            }
            self.last_cursor = c;
        }
        ctx.text(&*msg.text);
    }
}

/// Replay what this socket may have missed since the last cursor it got
/// (cluster mode: the bus was away for a while).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Resync;

impl Handler<Resync> for Session {
    type Result = ();

    fn handle(&mut self, _: Resync, ctx: &mut Self::Context) {
        let from = self.last_cursor;
        self.on_sync(from, ctx);
    }
}

impl Handler<Reply> for Session {
    type Result = ();

    fn handle(&mut self, msg: Reply, ctx: &mut Self::Context) {
        self.outbox.release(msg.0.len());
        ctx.text(msg.0);
    }
}

impl Handler<CloseSocket> for Session {
    type Result = ();

    fn handle(&mut self, msg: CloseSocket, ctx: &mut Self::Context) {
        ctx.close(Some(ws::CloseReason {
            code: ws::CloseCode::Other(msg.code),
            description: Some(msg.reason.into()),
        }));
        ctx.stop();
    }
}

/// The conversation a frame is about, and whether a conversation nobody
/// owns yet may be created by it (a first direct message): what cluster
/// mode must place before the frame can go anywhere. `None` for frames
/// about no conversation, or whose ids do not parse (answered as usual).
fn frame_conv(frame: &ClientFrame, me: UserId) -> Option<(Id, bool)> {
    match frame {
        ClientFrame::Send(f) => match (&f.to, &f.conversation_id) {
            (Some(to), None) => match crate::frames::parse_id(to) {
                Ok(peer) if peer != me => Some((Id::direct(me, peer), true)),
                _ => None,
            },
            (None, Some(c)) => conversation::conversation_id(c).ok().map(|id| (id, false)),
            _ => None,
        },
        ClientFrame::View { msg_id }
        | ClientFrame::Delivered { msg_id }
        | ClientFrame::Screenshot { msg_id }
        | ClientFrame::Unsend { msg_id }
        | ClientFrame::React { msg_id, .. } => parse_msg_id(msg_id).ok().map(|m| (m.conv, false)),
        ClientFrame::Read {
            conversation_id, ..
        }
        | ClientFrame::Typing {
            conversation_id, ..
        } => conversation::conversation_id(conversation_id)
            .ok()
            .map(|id| (id, false)),
        _ => None,
    }
}

/// What an error about a held frame refers to.
fn frame_ref(frame: &ClientFrame) -> Option<String> {
    match frame {
        ClientFrame::Send(f) => Some(f.client_msg_id.clone()),
        ClientFrame::View { msg_id }
        | ClientFrame::Delivered { msg_id }
        | ClientFrame::Screenshot { msg_id }
        | ClientFrame::Unsend { msg_id }
        | ClientFrame::React { msg_id, .. } => Some(msg_id.clone()),
        _ => None,
    }
}
