//! The `Conversation` actor: one per active conversation. It is the
//! sequencer (`seq`), persists messages through the group-commit writer,
//! checks membership, turns receipts into inbox events, and holds the TTL
//! timers of its messages: when one fires it burns the message for every
//! member.

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use futures_util::future::Either;

use crate::directory::Directory;
use crate::frames::{ErrorCode, FrameError, ServerFrame};
use crate::ids::{ConvId, DeviceId, Id, MsgId, UserId};
use crate::send::Post;
use crate::store::LOOKAHEAD_MS;
use crate::store::{
    blocking, commit, now_ms, BurnReason, CommitError, ConvKind, ConversationRecord, Deadline,
    Event, Guard, Millis, Op, ReceiptState, StoredMessage, Txn, ViewPolicy, EVENT_RETENTION_MS,
};

/// How long a view-once media key and blob outlive the burn: the winning
/// device's GET URL is valid this long.
const ONCE_FUSE_MS: Millis = 60_000;

/// The delivered-receipt memory is cleared past this size (a repeated
/// receipt after that only costs one more event).
const RECEIPT_MEMORY: usize = 65_536;

/// A device of `by` received message `msg`.
#[derive(Message)]
#[rtype(result = "Result<(), FrameError>")]
pub struct Delivered {
    /// The message.
    pub msg: MsgId,
    /// The recipient.
    pub by: UserId,
}

/// `by` read up to `up_to_seq`.
#[derive(Message)]
#[rtype(result = "Result<(), FrameError>")]
pub struct Read {
    /// The reader.
    pub by: UserId,
    /// Up to which seq.
    pub up_to_seq: u64,
}

/// `by` captured their screen on `msg`.
#[derive(Message)]
#[rtype(result = "Result<(), FrameError>")]
pub struct Screenshot {
    /// The message.
    pub msg: MsgId,
    /// Who.
    pub by: UserId,
}

/// `by` reacts to `msg` with `emoji`, or takes their reaction back (`None`).
#[derive(Message)]
#[rtype(result = "Result<(), FrameError>")]
pub struct React {
    /// The message.
    pub msg: MsgId,
    /// Who.
    pub by: UserId,
    /// The emoji (checked by the session), or `None`.
    pub emoji: Option<String>,
}

/// The sender takes a message back.
#[derive(Message)]
#[rtype(result = "Result<(), FrameError>")]
pub struct Unsend {
    /// The message.
    pub msg: MsgId,
    /// Who asks.
    pub by: UserId,
}

/// Typing indicator from a member's device.
#[derive(Message)]
#[rtype(result = "Result<(), FrameError>")]
pub struct Typing {
    /// Who.
    pub by: UserId,
    /// Their device.
    pub device: DeviceId,
    /// Started or stopped.
    pub is_typing: bool,
}

/// A device of `by` opens a message: the view-once compare-and-set, or
/// the first view of a timed message that starts `burn_after_view_seconds`.
#[derive(Message)]
#[rtype(result = "Result<Viewed, FrameError>")]
pub struct View {
    /// The message.
    pub msg: MsgId,
    /// Who.
    pub by: UserId,
}

/// The answer to a `view`.
#[derive(Debug)]
pub enum Viewed {
    /// The content, with `expires_at` as it now stands.
    Granted(StoredMessage),
    /// Already opened, expired or unsent: no content, ever.
    Burned,
}

/// A member leaves a group: it gets nothing more from it and no longer
/// sees it.
#[derive(Message)]
#[rtype(result = "Result<(), FrameError>")]
pub struct Leave {
    /// The member.
    pub user: UserId,
}

pub use crate::Restart;

/// Deadlines from the persistent index that this actor must hold timers for.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Arm(pub Vec<Deadline>);

/// One conversation's actor.
pub struct Conversation {
    dir: Arc<Directory>,
    pub(crate) deps: Arc<crate::directory::Deps>,
    pub(crate) id: ConvId,
    /// `None` until loaded, or for a direct conversation before its first message.
    pub(crate) record: Option<ConversationRecord>,
    /// Whether `record` is known to be in storage.
    pub(crate) record_persisted: bool,
    /// Whether loading failed (every request then gets `unavailable`).
    pub(crate) broken: bool,
    pub(crate) last_seq: u64,
    pub(crate) timers: BTreeSet<Deadline>,
    /// Burns committed but not yet answered: a deadline handed over again
    /// meanwhile (the sweeper re-arms overdue ones) is not burned twice.
    burning: BTreeSet<Deadline>,
    armed: Option<(Millis, SpawnHandle)>,
    receipted: HashSet<(u64, UserId)>,
    /// Screenshot notices already sent, per (seq, user): one each.
    screenshotted: HashSet<(u64, UserId)>,
    /// The furthest `read` stored per member since this actor started: a
    /// `read` that does not move it forward writes nothing.
    read_marks: std::collections::HashMap<UserId, u64>,
    started_at: std::time::Instant,
    restarts: u64,
    /// When a request last reached it (for passivation).
    pub(crate) last_active: std::time::Instant,
    /// Posts submitted and not yet answered by the writer (counted down on
    /// the writer's thread, so a committed post needs no message back).
    pub(crate) writes_in_flight: Arc<std::sync::atomic::AtomicUsize>,
    /// The actor's span.
    pub(crate) span: tracing::Span,
    /// Its mailbox depth (messages routed through the directory).
    pub(crate) depth: crate::Depth,
    /// Dropped with this actor: a successor waits for that.
    _alive: crate::Alive,
    /// The actor this one replaces, if it may still be running.
    predecessor: Option<crate::AliveWatch>,
    /// Replaced by a successor: handles what is left in its mailbox, then
    /// stops.
    pub(crate) draining: bool,
}

const UNAVAILABLE: FrameError =
    FrameError::new(ErrorCode::Unavailable, "conversation unavailable, retry");
/// The answer for a conversation that does not exist (or is someone else's).
pub(crate) const NOT_FOUND: FrameError =
    FrameError::new(ErrorCode::NotFound, "no such conversation");
const NO_MESSAGE: FrameError = FrameError::new(ErrorCode::NotFound, "no such message");
/// Someone else's conversation answers exactly as one that does not exist:
/// 1:1 ids are derived from the two user ids, so a difference would tell
/// anyone who talks to whom.
const NOT_MEMBER: FrameError = NOT_FOUND;

pub(crate) fn commit_error(e: CommitError) -> FrameError {
    match e {
        CommitError::Gone => NO_MESSAGE,
        CommitError::Overloaded => FrameError::busy(),
        CommitError::Duplicate(_) | CommitError::Failed => {
            FrameError::new(ErrorCode::Internal, "storage failure")
        }
    }
}

impl Conversation {
    /// An actor for `id`; it loads its state when started.
    pub fn new(
        dir: Arc<Directory>,
        id: ConvId,
        restarts: u64,
        depth: crate::Depth,
        alive: crate::Alive,
        predecessor: Option<crate::AliveWatch>,
    ) -> Self {
        Conversation {
            deps: Arc::clone(dir.deps()),
            dir,
            id,
            record: None,
            record_persisted: false,
            broken: false,
            last_seq: 0,
            timers: BTreeSet::new(),
            burning: BTreeSet::new(),
            armed: None,
            receipted: HashSet::new(),
            screenshotted: HashSet::new(),
            read_marks: std::collections::HashMap::new(),
            started_at: std::time::Instant::now(),
            restarts,
            last_active: std::time::Instant::now(),
            writes_in_flight: Arc::default(),
            span: tracing::info_span!("conversation", conversation = %id),
            depth,
            _alive: alive,
            predecessor,
            draining: false,
        }
    }

    pub(crate) fn members(&self) -> &[UserId] {
        self.record
            .as_ref()
            .map(|r| r.members.as_slice())
            .unwrap_or(&[])
    }

    /// Checks that the conversation exists and `user` is in it.
    pub(crate) fn check_member(&self, user: UserId) -> Result<(), FrameError> {
        if self.broken {
            return Err(UNAVAILABLE);
        }
        match &self.record {
            None => Err(NOT_FOUND),
            Some(r) if r.members.contains(&user) => Ok(()),
            Some(_) => Err(NOT_MEMBER),
        }
    }

    fn notify_all(&self, ops: &mut Vec<Op>, event: &Event) {
        for m in self.members() {
            ops.push(Op::Notify {
                user: *m,
                event: event.clone(),
                except_device: None,
            });
        }
    }

    /// Keeps a timer for the earliest deadline.
    pub(crate) fn rearm(&mut self, ctx: &mut Context<Self>) {
        let Some(first) = self.timers.first().copied() else {
            if let Some((_, h)) = self.armed.take() {
                ctx.cancel_future(h);
            }
            return;
        };
        if let Some((at, h)) = self.armed {
            if at <= first.at {
                return;
            }
            ctx.cancel_future(h);
        }
        let delay = Duration::from_millis(first.at.saturating_sub(now_ms()));
        let h = ctx.run_later(delay, |act, ctx| {
            act.armed = None;
            act.fire(ctx);
        });
        self.armed = Some((first.at, h));
    }

    /// Burns every message whose deadline has come.
    fn fire(&mut self, ctx: &mut Context<Self>) {
        let span = self.span.clone();
        let _in = span.enter();
        let now = now_ms();
        while let Some(d) = self.timers.first().copied() {
            if d.at > now {
                break;
            }
            self.timers.pop_first();
            if self.burning.insert(d) {
                self.burn(d, BurnReason::Expired, ctx);
            }
        }
        self.rearm(ctx);
    }

    /// Removes a message's content, leaves a tombstone and tells every
    /// member's devices, in one transaction guarded on the message still
    /// being there (so a message is burned once). A burn that fails (the
    /// writer overloaded, a failed write) is retried here after
    /// [`BURN_RETRY`]; the sweeper also hands overdue deadlines back, so
    /// one survives this actor dying too.
    fn burn(&mut self, d: Deadline, reason: BurnReason, ctx: &mut Context<Self>) {
        let now = now_ms();
        let mut ops = vec![
            Op::DeleteMessage(d.msg),
            Op::PutTombstone {
                msg: d.msg,
                reason,
                until: now + EVENT_RETENTION_MS,
            },
            Op::DeleteDeadline(d),
        ];
        self.notify_all(&mut ops, &Event::Burned { msg: d.msg, reason });
        let txn = Txn {
            guards: vec![Guard::MessagePresent(d.msg)],
            ops,
        };
        let store = Arc::clone(&self.deps.store);
        let metrics = Arc::clone(&self.deps.metrics);
        ctx.spawn(
            async move {
                match commit(&*store, txn).await {
                    // Burned elsewhere already (unsent): only the index entry is left.
                    Err(CommitError::Gone) => {
                        commit(
                            &*store,
                            Txn {
                                guards: vec![],
                                ops: vec![Op::DeleteDeadline(d)],
                            },
                        )
                        .await
                    }
                    Err(e) => Err(e),
                    Ok(()) => {
                        metrics
                            .burn_lag
                            .observe(now_ms().saturating_sub(d.at) as f64 / 1000.0);
                        Ok(())
                    }
                }
            }
            .into_actor(self)
            .map(move |res, act, ctx| {
                act.burning.remove(&d);
                if let Err(e) = res {
                    tracing::warn!(error = %e, "burn failed; retrying");
                    ctx.run_later(BURN_RETRY, move |act, ctx| {
                        act.timers.insert(d);
                        act.rearm(ctx);
                    });
                }
            }),
        );
    }

    /// Reads a live message of this conversation for a member.
    fn live_message(
        &self,
        msg: MsgId,
        by: UserId,
    ) -> Result<impl std::future::Future<Output = Result<StoredMessage, FrameError>>, FrameError>
    {
        self.check_member(by)?;
        if msg.conv != self.id || msg.seq == 0 || msg.seq > self.last_seq {
            return Err(NO_MESSAGE);
        }
        let store = Arc::clone(&self.deps.store);
        Ok(async move {
            match blocking(move || store.message(msg)).await {
                Ok(Some(m)) if m.expires_at > now_ms() => Ok(m),
                Ok(_) => Err(NO_MESSAGE),
                Err(_) => Err(FrameError::new(ErrorCode::Internal, "storage failure")),
            }
        })
    }
}

/// How soon a burn that failed is tried again.
const BURN_RETRY: Duration = Duration::from_millis(100);

/// Most deadlines armed at (re)start; the sweeper hands over the rest.
const ARM_AT_START: usize = 100_000;

impl Actor for Conversation {
    type Context = Context<Self>;

    fn stopped(&mut self, _: &mut Self::Context) {
        self.depth.drain();
    }

    fn started(&mut self, ctx: &mut Self::Context) {
        self.watch_idle(ctx);
        // A predecessor being replaced still handles the frames already in
        // its mailbox: nothing here runs until it is gone.
        if let Some(predecessor) = self.predecessor.take() {
            ctx.wait(fut::wrap_future(crate::gone(predecessor)));
        }
        self.load(ctx, Duration::ZERO);
    }
}

/// How long a conversation that could not load waits before it tries
/// again, at first and at most (doubling in between).
const RELOAD_FIRST: Duration = Duration::from_millis(100);
const RELOAD_MAX: Duration = Duration::from_secs(10);

impl Conversation {
    /// Loads membership, the sequencer and the timers of deadlines due
    /// soon; nothing is handled before. A load that fails leaves the actor
    /// answering `unavailable` and is tried again with backoff (`waited`
    /// is the last wait), so a storage hiccup does not break the
    /// conversation for good.
    fn load(&mut self, ctx: &mut Context<Self>, waited: Duration) {
        let store = Arc::clone(&self.deps.store);
        let id = self.id;
        let until = now_ms() + LOOKAHEAD_MS;
        let load = move || {
            Ok((
                store.conversation(id)?,
                store.last_seq(id)?,
                store.conversation_deadlines(id, until, ARM_AT_START)?,
            ))
        };
        // A predecessor (before a restart, a crash or passivation) may still
        // have writes queued: the writer is first-in first-out, so once an
        // empty transaction comes back they are all in, and `last_seq` and
        // the deadlines read below are complete.
        let barrier = Arc::clone(&self.deps.store);
        let load = async move {
            let _ = commit(&*barrier, Txn::default()).await;
            blocking(load).await
        };
        ctx.wait(load.into_actor(self).map(move |res, act, ctx| match res {
            Ok((record, last_seq, deadlines)) => {
                act.broken = false;
                act.record_persisted = record.is_some();
                act.record = record;
                act.last_seq = last_seq;
                act.timers.extend(deadlines);
                act.rearm(ctx);
            }
            Err(_) => {
                let wait = (waited * 2).clamp(RELOAD_FIRST, RELOAD_MAX);
                tracing::error!(conversation = %act.id, retry_in_ms = wait.as_millis() as u64, "could not load conversation");
                act.broken = true;
                ctx.run_later(wait, move |act, ctx| act.load(ctx, wait));
            }
        }));
    }
}

impl Handler<Restart> for Conversation {
    type Result = ();

    fn handle(&mut self, _: Restart, ctx: &mut Self::Context) {
        // A fresh actor takes over now: new frames go to it, and it waits
        // until this one has handled those already queued here.
        tracing::info!(conversation = %self.id, "conversation actor restarting");
        self.dir.replace_conversation(self.id, &ctx.address());
        self.draining = true;
        crate::stop_when_drained(ctx, |a: &Self| &a.depth);
    }
}

impl Conversation {
    /// Stops the actor once it has been idle for the configured time with
    /// no deadline due soon and no write in flight; its deadlines live on
    /// in the persistent index and wake a new actor when due.
    fn watch_idle(&mut self, ctx: &mut Context<Self>) {
        let after = self.deps.limits.passivate_after;
        ctx.run_interval(
            (after / 2).max(std::time::Duration::from_millis(100)),
            move |act, ctx| {
                let soon = act
                    .timers
                    .first()
                    .is_some_and(|d| d.at <= now_ms() + LOOKAHEAD_MS);
                if act.last_active.elapsed() >= after
                    && !soon
                    && act
                        .writes_in_flight
                        .load(std::sync::atomic::Ordering::Acquire)
                        == 0
                    && act.dir.passivate(act.id, &ctx.address())
                {
                    tracing::debug!(conversation = %act.id, "passivated");
                    ctx.stop();
                }
            },
        );
    }
}

#[cfg(feature = "faults")]
impl Handler<crate::Panic> for Conversation {
    type Result = ();

    fn handle(&mut self, _: crate::Panic, _: &mut Self::Context) {
        panic!("injected fault in a conversation actor");
    }
}

// Every message routed through the directory arrives `Counted`.
crate::counted_draining!(Conversation; Post, Delivered, Read, Screenshot, Unsend, Typing, View, Arm, Leave, React);

impl crate::directory::Keyed for Conversation {
    const KIND: crate::metrics::Kind = crate::metrics::Kind {
        kind: "conversation",
    };

    fn create(
        dir: Arc<Directory>,
        id: Id,
        restarts: u64,
        depth: crate::Depth,
        alive: crate::Alive,
        predecessor: Option<crate::AliveWatch>,
    ) -> Self {
        Conversation::new(dir, id, restarts, depth, alive, predecessor)
    }
}

impl Handler<crate::Summarize> for Conversation {
    type Result = actix::MessageResult<crate::Summarize>;

    fn handle(&mut self, _: crate::Summarize, _: &mut Self::Context) -> Self::Result {
        actix::MessageResult(crate::ActorSummary {
            kind: "conversation",
            id: self.id.to_string(),
            timers_armed: self.timers.len(),
            mailbox_depth: self.depth.get(),
            attached: self.members().len(),
            uptime_seconds: self.started_at.elapsed().as_secs(),
            restarts: self.restarts,
        })
    }
}

impl Handler<Delivered> for Conversation {
    type Result = ResponseActFuture<Self, Result<(), FrameError>>;

    fn handle(&mut self, msg: Delivered, _: &mut Self::Context) -> Self::Result {
        self.last_active = std::time::Instant::now();
        let read = match self.live_message(msg.msg, msg.by) {
            Ok(f) => f,
            Err(e) => return Box::pin(fut::ready(Err(e))),
        };
        Box::pin(read.into_actor(self).then(move |res, act, _| {
            let store = Arc::clone(&act.deps.store);
            let mut txn = Txn::default();
            match res {
                Ok(m) if m.from != msg.by && act.receipted.insert((msg.msg.seq, msg.by)) => {
                    if act.receipted.len() > RECEIPT_MEMORY {
                        act.receipted.clear();
                    }
                    let event = Event::Receipt {
                        conv: act.id,
                        msg: Some(msg.msg),
                        up_to_seq: None,
                        state: ReceiptState::Delivered,
                        by: msg.by,
                    };
                    txn.ops.push(Op::Notify {
                        user: m.from,
                        event,
                        except_device: None,
                    });
                }
                Ok(_) => {}
                // The message burned between the push and this receipt (a
                // view, an unsend, its expiry): there is nothing left to
                // acknowledge, and nothing wrong with the frame.
                Err(e) if e.code == ErrorCode::NotFound => return Either::Left(fut::ready(Ok(()))),
                Err(e) => return Either::Left(fut::ready(Err(e))),
            }
            Either::Right(
                async move {
                    if txn.ops.is_empty() {
                        return Ok(());
                    }
                    commit(&*store, txn).await.map_err(commit_error)
                }
                .into_actor(act),
            )
        }))
    }
}

impl Handler<Read> for Conversation {
    type Result = ResponseFuture<Result<(), FrameError>>;

    fn handle(&mut self, msg: Read, _: &mut Self::Context) -> Self::Result {
        self.last_active = std::time::Instant::now();
        if let Err(e) = self.check_member(msg.by) {
            return Box::pin(async move { Err(e) });
        }
        if msg.up_to_seq > self.last_seq {
            return Box::pin(async {
                Err(FrameError::new(
                    ErrorCode::Invalid,
                    "up_to_seq is beyond the last message",
                ))
            });
        }
        // Read positions only move forward: repeating one stores nothing
        // and tells nobody (a flood of `read` frames writes nothing).
        let mark = self.read_marks.entry(msg.by).or_insert(0);
        if msg.up_to_seq <= *mark {
            return Box::pin(async { Ok(()) });
        }
        *mark = msg.up_to_seq;
        let mut ops = vec![Op::PutReadState {
            conv: self.id,
            user: msg.by,
            up_to_seq: msg.up_to_seq,
        }];
        let event = Event::Receipt {
            conv: self.id,
            msg: None,
            up_to_seq: Some(msg.up_to_seq),
            state: ReceiptState::Read,
            by: msg.by,
        };
        for m in self.members().iter().filter(|m| **m != msg.by) {
            ops.push(Op::Notify {
                user: *m,
                event: event.clone(),
                except_device: None,
            });
        }
        let store = Arc::clone(&self.deps.store);
        Box::pin(async move {
            commit(
                &*store,
                Txn {
                    guards: vec![],
                    ops,
                },
            )
            .await
            .map_err(commit_error)
        })
    }
}

impl Handler<Screenshot> for Conversation {
    type Result = ResponseActFuture<Self, Result<(), FrameError>>;

    fn handle(&mut self, msg: Screenshot, _: &mut Self::Context) -> Self::Result {
        self.last_active = std::time::Instant::now();
        let read = match self.live_message(msg.msg, msg.by) {
            Ok(f) => f,
            Err(e) => return Box::pin(fut::ready(Err(e))),
        };
        // One notice per message and member: repeats write nothing.
        if !self.screenshotted.insert((msg.msg.seq, msg.by)) {
            return Box::pin(fut::ready(Ok(())));
        }
        if self.screenshotted.len() > RECEIPT_MEMORY {
            self.screenshotted.clear();
        }
        let store = Arc::clone(&self.deps.store);
        Box::pin(
            async move {
                let m = read.await?;
                if m.from == msg.by {
                    return Ok(());
                }
                let event = Event::Screenshot {
                    msg: msg.msg,
                    by: msg.by,
                };
                let ops = vec![Op::Notify {
                    user: m.from,
                    event,
                    except_device: None,
                }];
                commit(
                    &*store,
                    Txn {
                        guards: vec![],
                        ops,
                    },
                )
                .await
                .map_err(commit_error)
            }
            .into_actor(self),
        )
    }
}

impl Handler<React> for Conversation {
    type Result = ResponseFuture<Result<(), FrameError>>;

    /// A reaction is stored with its message's expiry and told to every
    /// member's devices, guarded on the message still being there: a
    /// message that burns takes its reactions with it (the writer deletes
    /// them with the message), and none is stored or told after. The read
    /// and the hand-over to the writer happen in the mailbox's order, so a
    /// member's reactions to a message land in the order they were made.
    fn handle(&mut self, msg: React, ctx: &mut Self::Context) -> Self::Result {
        self.last_active = std::time::Instant::now();
        let read = match self.live_message(msg.msg, msg.by) {
            Ok(f) => f,
            Err(e) => return Box::pin(async move { Err(e) }),
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        ctx.wait(read.into_actor(self).map(move |res, act, _| {
            let submitted = res.map(|m| {
                let emoji: Option<Arc<str>> = msg.emoji.map(Into::into);
                let mut ops = vec![match &emoji {
                    Some(e) => Op::PutReaction {
                        msg: m.id,
                        by: msg.by,
                        emoji: e.to_string(),
                        until: m.expires_at,
                    },
                    None => Op::DeleteReaction {
                        msg: m.id,
                        by: msg.by,
                    },
                }];
                act.notify_all(
                    &mut ops,
                    &Event::Reaction {
                        msg: m.id,
                        by: msg.by,
                        emoji,
                        expires_at: m.expires_at,
                    },
                );
                act.deps.store.submit(Txn {
                    guards: vec![Guard::MessagePresent(m.id)],
                    ops,
                })
            });
            let _ = tx.send(submitted);
        }));
        Box::pin(async move {
            let pending = rx.await.unwrap_or(Err(UNAVAILABLE))?;
            match pending.await {
                Ok(r) => r.map_err(commit_error),
                Err(_) => Err(commit_error(CommitError::Failed)),
            }
        })
    }
}

impl Handler<Unsend> for Conversation {
    type Result = ResponseActFuture<Self, Result<(), FrameError>>;

    fn handle(&mut self, msg: Unsend, _: &mut Self::Context) -> Self::Result {
        let span = self.span.clone();
        let _in = span.enter();
        self.last_active = std::time::Instant::now();
        let read = match self.live_message(msg.msg, msg.by) {
            Ok(f) => f,
            Err(e) => return Box::pin(fut::ready(Err(e))),
        };
        Box::pin(read.into_actor(self).then(move |res, act, _| {
            let m = match res {
                Ok(m) if m.from == msg.by => m,
                Ok(_) => {
                    return Either::Left(fut::ready(Err(FrameError::new(
                        ErrorCode::Forbidden,
                        "only the sender can unsend a message",
                    ))))
                }
                Err(e) => return Either::Left(fut::ready(Err(e))),
            };
            let d = Deadline {
                at: m.expires_at,
                msg: m.id,
            };
            act.timers.remove(&d);
            let now = now_ms();
            let mut ops = vec![
                Op::DeleteMessage(m.id),
                Op::PutTombstone {
                    msg: m.id,
                    reason: BurnReason::Unsent,
                    until: now + EVENT_RETENTION_MS,
                },
                Op::DeleteDeadline(d),
            ];
            act.notify_all(
                &mut ops,
                &Event::Burned {
                    msg: m.id,
                    reason: BurnReason::Unsent,
                },
            );
            let txn = Txn {
                guards: vec![Guard::MessagePresent(m.id)],
                ops,
            };
            let store = Arc::clone(&act.deps.store);
            let media = Arc::clone(&act.deps.media);
            let unsent_media = m.media.clone();
            Either::Right(
                async move {
                    commit(&*store, txn).await.map_err(commit_error)?;
                    if let Some(md) = unsent_media {
                        media.shred(&md, 0);
                    }
                    Ok(())
                }
                .into_actor(act),
            )
        }))
    }
}

impl Handler<View> for Conversation {
    type Result = ResponseFuture<Result<Viewed, FrameError>>;

    fn handle(&mut self, msg: View, ctx: &mut Self::Context) -> Self::Result {
        let span = self.span.clone();
        let _in = span.enter();
        self.last_active = std::time::Instant::now();
        // Views of a conversation are handled one at a time (the mailbox
        // waits): in a group, the view that completes the set of viewers
        // must see all the others to burn the content for good.
        let (tx, rx) = tokio::sync::oneshot::channel();
        ctx.wait(self.view(msg).map(move |res, _, _| {
            let _ = tx.send(res);
        }));
        Box::pin(async move {
            rx.await.unwrap_or(Err(FrameError::new(
                ErrorCode::Unavailable,
                "conversation restarting, retry",
            )))
        })
    }
}

impl Conversation {
    /// The work of a `view`: read the message and its viewers, then commit
    /// the view (guarded) and answer.
    fn view(&mut self, msg: View) -> ResponseActFuture<Self, Result<Viewed, FrameError>> {
        if let Err(e) = self.check_member(msg.by) {
            return Box::pin(fut::ready(Err(e)));
        }
        if msg.msg.conv != self.id || msg.msg.seq == 0 || msg.msg.seq > self.last_seq {
            return Box::pin(fut::ready(Err(NO_MESSAGE)));
        }
        let store = Arc::clone(&self.deps.store);
        let id = msg.msg;
        let read = blocking(move || Ok((store.message(id)?, store.viewers(id)?)));
        Box::pin(read.into_actor(self).then(move |res, act, ctx| {
            let now = now_ms();
            let (m, viewers) = match res {
                Ok((Some(m), viewers)) if m.expires_at > now => (m, viewers),
                // Opened, unsent or expired: every later view is burned.
                Ok(_) => return Either::Left(fut::ready(Ok(Viewed::Burned))),
                Err(_) => {
                    return Either::Left(fut::ready(Err(FrameError::new(
                        ErrorCode::Internal,
                        "storage failure",
                    ))))
                }
            };
            let own = m.from == msg.by;
            if own && m.view_policy == ViewPolicy::Once {
                let e = FrameError::new(
                    ErrorCode::Forbidden,
                    "the sender cannot open a view-once message",
                );
                return Either::Left(fut::ready(Err(e)));
            }
            let first_view = !own && viewers.is_empty();
            let original = m.expires_at;
            let (txn, granted) = act.view_txn(m, &viewers, msg.by, first_view, now);
            act.rearm(ctx);
            let Some(txn) = txn else {
                return Either::Left(fut::ready(Ok(Viewed::Granted(granted))));
            };
            // The media key follows the content: destroyed a short fuse after
            // the last view (the winner's URL is valid that long), or at the
            // pulled-forward expiry.
            let burns = txn.ops.iter().any(|o| matches!(o, Op::DeleteMessage(_)));
            let shred =
                granted
                    .media
                    .clone()
                    .and_then(|md| match (burns, granted.expires_at < original) {
                        (true, _) => Some((md, ONCE_FUSE_MS)),
                        (false, true) => Some((md, granted.expires_at.saturating_sub(now))),
                        _ => None,
                    });
            let store = Arc::clone(&act.deps.store);
            let media = Arc::clone(&act.deps.media);
            Either::Right(
                async move {
                    match commit(&*store, txn).await {
                        Ok(()) => {
                            if let Some((md, fuse)) = shred {
                                media.shred(&md, fuse);
                            }
                            Ok(Viewed::Granted(granted))
                        }
                        // Another view won the race (or the message burned meanwhile).
                        Err(CommitError::Gone) => Ok(Viewed::Burned),
                        Err(e) => Err(commit_error(e)),
                    }
                }
                .into_actor(act),
            )
        }))
    }
}

impl Conversation {
    /// The writes of a view, and the content to grant if they commit. A
    /// view-once view is guarded so exactly one wins per recipient; the
    /// first view of anyone pulls `expires_at` forward when the message
    /// has `burn_after_view_seconds`.
    fn view_txn(
        &mut self,
        m: StoredMessage,
        viewers: &[UserId],
        by: UserId,
        first_view: bool,
        now: Millis,
    ) -> (Option<Txn>, StoredMessage) {
        let mut granted = m.clone();
        let mut txn = Txn::default();
        let old = Deadline {
            at: m.expires_at,
            msg: m.id,
        };
        let once = m.view_policy == ViewPolicy::Once;
        // Every recipient has now opened it: the content goes for good.
        let all_viewed = once
            && self
                .members()
                .iter()
                .filter(|u| **u != m.from)
                .all(|u| *u == by || viewers.contains(u));
        if once {
            txn.guards = vec![
                Guard::MessagePresent(m.id),
                Guard::ViewAbsent {
                    msg: m.id,
                    user: by,
                },
            ];
            txn.ops.push(Op::PutView {
                msg: m.id,
                user: by,
                at: now,
                until: now + EVENT_RETENTION_MS,
            });
            let burned = Event::Burned {
                msg: m.id,
                reason: BurnReason::Viewed,
            };
            txn.ops.push(Op::Notify {
                user: by,
                event: burned.clone(),
                except_device: None,
            });
            if all_viewed {
                txn.ops.push(Op::Notify {
                    user: m.from,
                    event: burned,
                    except_device: None,
                });
                txn.ops.push(Op::DeleteMessage(m.id));
                txn.ops.push(Op::PutTombstone {
                    msg: m.id,
                    reason: BurnReason::Viewed,
                    until: now + EVENT_RETENTION_MS,
                });
                txn.ops.push(Op::DeleteDeadline(old));
                self.timers.remove(&old);
            }
        }
        let pulled = m
            .burn_after_view_seconds
            .map(|s| now + s * 1000)
            .filter(|at| *at < m.expires_at);
        if let (true, false, Some(at)) = (first_view, all_viewed, pulled) {
            if !once {
                txn.guards = vec![Guard::MessagePresent(m.id)];
                txn.ops.push(Op::PutView {
                    msg: m.id,
                    user: by,
                    at: now,
                    until: m.expires_at,
                });
            }
            granted.expires_at = at;
            let new = Deadline { at, msg: m.id };
            txn.ops.push(Op::PutMessage(Arc::new(granted.clone())));
            txn.ops.push(Op::DeleteDeadline(old));
            txn.ops.push(Op::PutDeadline(new));
            self.timers.remove(&old);
            self.timers.insert(new);
        }
        ((!txn.ops.is_empty()).then_some(txn), granted)
    }
}

impl Handler<Typing> for Conversation {
    type Result = Result<(), FrameError>;

    fn handle(&mut self, msg: Typing, _: &mut Self::Context) -> Self::Result {
        self.last_active = std::time::Instant::now();
        self.check_member(msg.by)?;
        let text: Arc<str> = ServerFrame::Typing {
            conversation_id: self.id,
            user_id: msg.by,
            is_typing: msg.is_typing,
        }
        .to_text()
        .into();
        for m in self.members().iter().filter(|m| **m != msg.by) {
            self.dir.tell_ephemeral(*m, Arc::clone(&text));
        }
        Ok(())
    }
}

impl Handler<Leave> for Conversation {
    type Result = ResponseActFuture<Self, Result<(), FrameError>>;

    fn handle(&mut self, msg: Leave, _: &mut Self::Context) -> Self::Result {
        self.last_active = std::time::Instant::now();
        if let Err(e) = self.check_member(msg.user) {
            return Box::pin(fut::ready(Err(e)));
        }
        let Some(mut rec) = self.record.clone() else {
            return Box::pin(fut::ready(Err(NOT_FOUND)));
        };
        if rec.kind == ConvKind::Direct {
            return Box::pin(fut::ready(Err(FrameError::new(
                ErrorCode::Invalid,
                "a direct conversation cannot be left",
            ))));
        }
        rec.members.retain(|m| *m != msg.user);
        if let Some(s) = rec.speakers.as_mut() {
            s.retain(|m| *m != msg.user);
        }
        let txn = Txn {
            guards: vec![],
            ops: vec![
                Op::PutConversation(rec.clone()),
                Op::DeleteMembership {
                    user: msg.user,
                    conv: self.id,
                },
            ],
        };
        // In effect at once for the frames that follow (the writer applies
        // transactions in order); undone if the write fails.
        let before = self.record.replace(rec);
        let store = Arc::clone(&self.deps.store);
        Box::pin(
            async move { commit(&*store, txn).await.map_err(commit_error) }
                .into_actor(self)
                .map(move |res, act, _| {
                    if res.is_err() {
                        act.record = before;
                    }
                    res
                }),
        )
    }
}

impl Handler<Arm> for Conversation {
    type Result = ();

    fn handle(&mut self, msg: Arm, ctx: &mut Self::Context) {
        self.timers
            .extend(msg.0.into_iter().filter(|d| d.msg.conv == self.id));
        self.rearm(ctx);
    }
}

/// The id of a conversation as a user names it, or the frame error.
pub fn conversation_id(s: &str) -> Result<ConvId, FrameError> {
    Id::parse(s).ok_or(NOT_FOUND)
}
