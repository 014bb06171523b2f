//! One `send`, from the frame to the ack and the fanout, in the order it
//! happens. The actors keep what is theirs (timers, views, receipts,
//! presence); this module is the path every message takes:
//!
//! 1. **The socket's thread** ([`Session::on_send`]): the frame is checked
//!    (fields, limits, the user's send bucket), admitted under
//!    `max_sends_in_flight` (or refused at once with `unavailable`), and
//!    handed to the conversation's actor as a [`Post`] with `do_send`, so a
//!    socket's sends reach it in the order they were sent.
//! 2. **The conversation's actor** (`impl Handler<Post> for Conversation`):
//!    a direct conversation is created by its first message, membership is
//!    checked, a media object is claimed; then the message gets its `seq`
//!    and its transaction ([`message_txn`]): the sealed message row, the
//!    dedup record, the deadline and one inbox event per member, guarded by
//!    the dedup key (and the media object being unbound). Its expiry timer
//!    is armed here, and the transaction goes to the group-commit writer.
//! 3. **The writer's thread** (`src/store/writer.rs` in the server): the
//!    guards are checked, the batch written (WAL; fsync in `fsync` mode),
//!    cursors given out per user in commit order. Then, on that thread, the
//!    outcome runs [`Committed`]: the `ack` (or the refusal) goes straight
//!    to the sending socket's outbox, and the admission slot is released.
//! 4. **Still on the writer's thread**, the committed events reach
//!    [`deliver`]: each message is rendered once for the whole batch, the
//!    member's cursor spliced in, and the same text is pushed to every
//!    session of every member (but the sending device). A member with no
//!    session here gets a push instead, if a webhook is configured: queued
//!    for `src/push.rs` in the server, which posts it off this thread.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use actix::prelude::*;
use actix_web_actors::ws;

use crate::conversation::{self, Conversation};
use crate::directory::Directory;
use crate::frames::{
    self, error, reaction, render_record, ErrorCode, FrameError, MessageView, SendFrame,
    ServerFrame,
};
use crate::ids::{Id, MsgId, UserId};
use crate::session::{Session, SessionLink};
use crate::store::{
    blocking, now_ms, Access, AckRecord, CommitError, ConvKind, ConversationRecord, Deadline,
    Delivery, Event, Guard, MediaRef, Millis, Op, StoredMessage, Txn, ViewPolicy,
};
use crate::user::push;

// 1. The socket's thread.

impl Session {
    /// The frame's own checks and the user's send bucket: the policy,
    /// `burn_after_view_seconds` and media key it asks for, or why not.
    fn check_send(
        &mut self,
        f: &SendFrame,
    ) -> Result<(ViewPolicy, Option<u64>, Option<Id>), FrameError> {
        let limits = &self.deps.limits;
        let invalid = |m| Err(FrameError::new(ErrorCode::Invalid, m));
        if f.client_msg_id.is_empty() || f.client_msg_id.chars().count() > 128 {
            return invalid("client_msg_id must be 1 to 128 characters");
        }
        let policy = match f.view_policy.as_str() {
            "timed" => ViewPolicy::Timed,
            "once" => ViewPolicy::Once,
            _ => return invalid("view_policy must be \"once\" or \"timed\""),
        };
        if f.ttl_seconds < limits.min_ttl_seconds as i64
            || f.ttl_seconds > limits.max_ttl_seconds as i64
        {
            return invalid("ttl_seconds is out of range");
        }
        let burn_after = match f.burn_after_view_seconds {
            None => None,
            Some(s) if s >= 1 && s <= limits.max_ttl_seconds as i64 => Some(s as u64),
            Some(_) => return invalid("burn_after_view_seconds is out of range"),
        };
        if f.to.is_some() == f.conversation_id.is_some() {
            return invalid("exactly one of to and conversation_id is required");
        }
        if f.body.is_some() == f.media_key.is_some() {
            return invalid("exactly one of body and media_key is required");
        }
        if let Some(body) = &f.body {
            if body.len() > limits.max_body_bytes {
                return Err(FrameError::new(
                    ErrorCode::TooLarge,
                    "body is over the size limit",
                ));
            }
        }
        let media_key = match &f.media_key {
            None => None,
            Some(k) => Some(
                Id::parse(k).ok_or(FrameError::new(ErrorCode::NotFound, "no such media_key"))?,
            ),
        };
        if let Err(wait) = Self::take(&self.send_bucket) {
            return Err(FrameError {
                retry_after_ms: Some(wait),
                ..FrameError::new(ErrorCode::RateLimited, "sending too fast")
            });
        }
        Ok((policy, burn_after, media_key))
    }

    /// A `send` frame: checked, admitted, and handed to its conversation
    /// as a [`Post`]; every outcome is answered on this socket.
    pub(crate) fn on_send(&mut self, f: SendFrame, ctx: &mut ws::WebsocketContext<Self>) {
        let received = Instant::now();
        let (view_policy, burn_after_view_seconds, media_key) = match self.check_send(&f) {
            Ok(v) => v,
            Err(e) => return Self::reply_error(ctx, &e, Some(&f.client_msg_id)),
        };
        let me = self.user;
        let client_msg_id = f.client_msg_id.clone();
        let (conv, direct) = match (f.to, f.conversation_id) {
            (Some(to), _) => match frames::parse_id(&to) {
                Ok(peer) if peer == me => {
                    let e = FrameError::new(
                        ErrorCode::Invalid,
                        "cannot send a direct message to oneself",
                    );
                    return Self::reply_error(ctx, &e, Some(&client_msg_id));
                }
                Ok(peer) => (Id::direct(me, peer), Some((me, peer))),
                Err(_) => {
                    let e = FrameError::new(ErrorCode::NotFound, "no such user");
                    return Self::reply_error(ctx, &e, Some(&client_msg_id));
                }
            },
            (None, Some(c)) => match conversation::conversation_id(&c) {
                Ok(id) => (id, None),
                Err(e) => return Self::reply_error(ctx, &e, Some(&client_msg_id)),
            },
            (None, None) => unreachable!("check_send requires one of to and conversation_id"),
        };
        let Some(permit) = self.dir.admit_send() else {
            return Self::reply_error(ctx, &FrameError::busy(), Some(&client_msg_id));
        };
        // Cluster mode: a conversation another node owns is sent there, and
        // the ack (or refusal) comes back from it. Here, a direct
        // conversation is created by its first message (the actor checks
        // that the peer exists); any other must be ours.
        let owner = match (self.remote_owner(conv), self.deps.router.clone()) {
            (Some(node), Some(router)) => Err((node, router)),
            _ => Ok(match direct {
                Some(_) => self.dir.conversation(conv),
                None => match self.conversation(conv) {
                    Ok(addr) => addr,
                    Err(e) => return Self::reply_error(ctx, &e, Some(&client_msg_id)),
                },
            }),
        };
        let reply = AckTo {
            dest: AckDest::Socket(self.link(ctx)),
            client_msg_id,
            received,
            metrics: Arc::clone(&self.deps.metrics),
            permit: Some(permit),
        };
        let post = crate::remote::PostCall {
            conv,
            from: me,
            device: self.device,
            client_msg_id: f.client_msg_id,
            direct,
            body: f.body,
            media_key,
            view_policy,
            ttl_seconds: f.ttl_seconds as u64,
            burn_after_view_seconds,
            story: None,
        };
        match owner {
            // do_send: this socket's sends reach the conversation in order.
            Ok(addr) => addr.do_send(Post { reply, send: post }),
            Err((node, router)) => {
                let answer = router.call(node, crate::remote::ConvCall::Post(post));
                actix::spawn(async move {
                    reply.answer(match crate::remote::answer_result(answer.await) {
                        Ok(crate::remote::ConvAnswer::Ack { ack }) => Ok(ack),
                        Ok(_) => Err(FrameError::new(ErrorCode::Internal, "unexpected answer")),
                        Err(e) => Err(e),
                    });
                });
            }
        }
    }
}

/// A validated `send`. Sent with `do_send`, so a socket's sends reach the
/// conversation in the order the device sent them; the answer comes back
/// through `reply`.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Post {
    /// Where the ack (or the refusal) goes.
    pub reply: AckTo,
    /// The send itself: the same fields whether it came from a socket here
    /// or from another node.
    pub send: crate::remote::PostCall,
}

/// Where the answer to one `send` goes: straight to the sending socket,
/// rendered by whoever has the outcome (the writer's thread, once the
/// message is durable), with no task or channel in between. It holds the
/// send's admission slot until then. Dropped unanswered (the conversation
/// went down with the send in its mailbox), it answers `unavailable`.
pub struct AckTo {
    dest: AckDest,
    client_msg_id: String,
    received: Instant,
    metrics: Arc<crate::metrics::Metrics>,
    permit: Option<crate::directory::SendPermit>,
}

/// Where an ack goes.
enum AckDest {
    /// A socket's `send`: the frame.
    Socket(SessionLink),
    /// An HTTP call (a story reply or reaction): the outcome itself.
    Call(tokio::sync::oneshot::Sender<Result<crate::store::AckRecord, FrameError>>),
    /// Answered.
    Gone,
}

impl AckTo {
    /// An answer for a post made by an HTTP call rather than a socket,
    /// holding `permit`: the outcome arrives through the returned channel.
    pub fn call(
        client_msg_id: String,
        metrics: Arc<crate::metrics::Metrics>,
        permit: crate::directory::SendPermit,
    ) -> (
        Self,
        tokio::sync::oneshot::Receiver<Result<crate::store::AckRecord, FrameError>>,
    ) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let to = AckTo {
            dest: AckDest::Call(tx),
            client_msg_id,
            received: Instant::now(),
            metrics,
            permit: Some(permit),
        };
        (to, rx)
    }

    /// Sends the ack, or the error, to the socket.
    pub fn answer(mut self, outcome: Result<crate::store::AckRecord, FrameError>) {
        self.send(outcome);
    }

    fn send(&mut self, outcome: Result<crate::store::AckRecord, FrameError>) {
        if self.permit.take().is_none() {
            return; // answered already
        }
        if outcome.is_ok() {
            self.metrics
                .ack_latency
                .observe(self.received.elapsed().as_secs_f64());
        }
        let link = match std::mem::replace(&mut self.dest, AckDest::Gone) {
            AckDest::Socket(link) => link,
            AckDest::Call(tx) => {
                let _ = tx.send(outcome);
                return;
            }
            AckDest::Gone => return,
        };
        let text = match outcome {
            Ok(ack) => ServerFrame::Ack {
                client_msg_id: &ack.client_msg_id,
                msg_id: ack.msg_id,
                conversation_id: ack.msg_id.conv,
                seq: ack.msg_id.seq,
                state: "sent",
                sent_at: ack.sent_at,
                expires_at: ack.expires_at,
            }
            .to_text(),
            Err(e) => error(&e, Some(&self.client_msg_id)),
        };
        link.reply(text);
    }
}

impl Drop for AckTo {
    fn drop(&mut self) {
        self.send(Err(FrameError::new(
            ErrorCode::Unavailable,
            "conversation restarting, retry",
        )));
    }
}

// 2. The conversation's actor.

/// How long a `client_msg_id` is remembered at least, so a client that
/// retries after a long outage still gets its first ack.
const DEDUP_MIN_MS: Millis = 86_400_000;

impl Handler<Post> for Conversation {
    type Result = ();

    fn handle(&mut self, msg: Post, ctx: &mut Self::Context) {
        let span = self.span.clone();
        let _in = span.enter();
        self.last_active = std::time::Instant::now();
        match (self.record.is_none() && !self.broken, msg.send.direct) {
            (true, Some((a, b))) => {
                // The first message of a direct conversation creates it, if
                // the other user exists. The mailbox waits meanwhile, so
                // later sends keep their order.
                let peer = if a == msg.send.from { b } else { a };
                let store = Arc::clone(&self.deps.store);
                ctx.wait(
                    blocking(move || store.user_exists(peer))
                        .into_actor(self)
                        .map(move |res, act, ctx| match res {
                            Ok(true) => {
                                act.record = Some(ConversationRecord {
                                    id: act.id,
                                    kind: ConvKind::Direct,
                                    members: vec![a, b],
                                    name: None,
                                    created_at: now_ms(),
                                    speakers: Some(vec![msg.send.from]),
                                });
                                act.post(msg, ctx);
                            }
                            Ok(false) => {
                                msg.reply.answer(Err(FrameError::new(
                                    ErrorCode::NotFound,
                                    "no such user",
                                )));
                            }
                            Err(_) => {
                                msg.reply.answer(Err(FrameError::new(
                                    ErrorCode::Internal,
                                    "storage failure",
                                )));
                            }
                        }),
                );
            }
            _ => self.post(msg, ctx),
        }
    }
}

impl Conversation {
    /// Checks membership and resolves the media object, if any, then posts.
    /// The mailbox waits while the media is looked up, so sends keep order.
    fn post(&mut self, msg: Post, ctx: &mut Context<Self>) {
        if let Err(e) = self.check_member(msg.send.from) {
            msg.reply.answer(Err(e));
            return;
        }
        let Some(media) = msg.send.media_key else {
            return self.post_resolved(msg, None, ctx);
        };
        let claim = self.deps.media.claimable(media, msg.send.from);
        ctx.wait(claim.into_actor(self).map(move |res, act, ctx| match res {
            Ok(m) => act.post_resolved(msg, Some(m), ctx),
            Err(e) => {
                msg.reply.answer(Err(e));
            }
        }));
    }

    /// Gives the message its `seq`, arms its timer and submits its
    /// transaction; the writer answers through `reply` ([`Committed`]).
    fn post_resolved(&mut self, msg: Post, media: Option<MediaRef>, ctx: &mut Context<Self>) {
        self.last_seq += 1;
        let creating = !self.record_persisted;
        // The sender's first message makes it a speaker: its presence now
        // goes to the other members.
        let mut record_changed = creating;
        if let Some(speakers) = self.record.as_mut().and_then(|r| r.speakers.as_mut()) {
            if !speakers.contains(&msg.send.from) {
                speakers.push(msg.send.from);
                record_changed = true;
            }
        }
        let record = self.record.as_ref().filter(|_| record_changed);
        let mut msg = msg;
        let (txn, ack, deadline) = message_txn(
            MsgId {
                conv: self.id,
                seq: self.last_seq,
            },
            &mut msg.send,
            media.as_ref(),
            self.members(),
            record,
        );
        self.timers.insert(deadline);
        self.rearm(ctx);
        self.writes_in_flight
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        let committed = Committed {
            reply: msg.reply,
            ack,
            deadline,
            creating,
            media: media.is_some(),
            conversation: ctx.address(),
            in_flight: Arc::clone(&self.writes_in_flight),
            metrics: Arc::clone(&self.deps.metrics),
        };
        self.deps
            .store
            .submit_then(txn, Box::new(move |res| committed.run(res)));
    }
}

/// The transaction that stores message `id`: the conversation's record
/// when it changed (`record`), the message, its `seq`, the dedup record,
/// the deadline, the media binding, and one inbox event per member (but
/// the sending device), guarded by the dedup key and, for media, by the
/// object being unbound. Returns it with the ack it earns and the deadline.
pub fn message_txn(
    id: MsgId,
    msg: &mut crate::remote::PostCall,
    media: Option<&MediaRef>,
    members: &[UserId],
    record: Option<&ConversationRecord>,
) -> (Txn, AckRecord, Deadline) {
    let sent_at = now_ms();
    let expires_at = sent_at + msg.ttl_seconds * 1000;
    let stored = Arc::new(StoredMessage {
        id,
        from: msg.from,
        sent_at,
        expires_at,
        view_policy: msg.view_policy,
        body: msg.body.take(),
        media: media.cloned(),
        burn_after_view_seconds: msg.burn_after_view_seconds,
        story_id: msg.story.map(|(s, _)| s),
        reaction: msg.story.is_some_and(|(_, r)| r),
    });
    let ack = AckRecord {
        client_msg_id: msg.client_msg_id.clone(),
        msg_id: id,
        sent_at,
        expires_at,
    };
    let deadline = Deadline {
        at: expires_at,
        msg: id,
    };
    let mut ops = Vec::with_capacity(6 + members.len());
    if let Some(r) = record {
        ops.push(Op::PutConversation(r.clone()));
    }
    ops.push(Op::PutMessage(Arc::clone(&stored)));
    ops.push(Op::PutSeq {
        conv: id.conv,
        seq: id.seq,
    });
    ops.push(Op::PutDedup {
        user: msg.from,
        ack: ack.clone(),
        until: expires_at.max(sent_at + DEDUP_MIN_MS),
    });
    ops.push(Op::PutDeadline(deadline));
    if let Some(m) = media {
        ops.push(Op::BindMedia {
            media: m.id,
            msg: id,
            until: expires_at,
        });
    }
    let event = Event::Message(stored);
    for m in members {
        ops.push(Op::Notify {
            user: *m,
            event: event.clone(),
            except_device: (*m == msg.from).then_some(msg.device),
        });
    }
    // The dedup guard comes first: a retried send gets its first ack
    // even though its media object is now bound.
    let mut guards = vec![Guard::DedupAbsent {
        user: msg.from,
        client_msg_id: std::mem::take(&mut msg.client_msg_id),
    }];
    if let Some(m) = media {
        guards.push(Guard::MediaUnbound(m.id));
    }
    (Txn { guards, ops }, ack, deadline)
}

// 3. The writer's thread.

/// What runs on the writer's thread with a post's outcome. The answer goes
/// straight to the socket and does not depend on the conversation's actor
/// living on: a restart while the write is in flight must not turn a
/// durable message into an `unavailable`. Only bookkeeping goes back to
/// the actor, and only when there is some.
struct Committed {
    reply: AckTo,
    ack: AckRecord,
    deadline: Deadline,
    /// The post creates its conversation's record.
    creating: bool,
    /// The post binds a media object.
    media: bool,
    conversation: Addr<Conversation>,
    in_flight: Arc<std::sync::atomic::AtomicUsize>,
    metrics: Arc<crate::metrics::Metrics>,
}

impl Committed {
    fn run(self, res: Result<(), CommitError>) {
        let committed = res.is_ok();
        if committed {
            // Counted before the ack leaves, so whoever sees the ack sees
            // the count.
            self.metrics.messages_sent.inc();
        }
        let answer = match res {
            Ok(()) => Ok(self.ack),
            // A retry of an earlier message: the first ack, nothing new stored.
            Err(CommitError::Duplicate(first)) => Ok(first),
            Err(CommitError::Gone) if self.media => Err(FrameError::new(
                ErrorCode::Invalid,
                "media_key is already used by another message",
            )),
            Err(e) => Err(conversation::commit_error(e)),
        };
        // A conversation just created, or a timer for nothing stored.
        if self.creating || !committed {
            self.conversation.do_send(Posted {
                deadline: self.deadline,
                committed,
                created: self.creating && committed,
            });
        }
        self.in_flight
            .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
        self.reply.answer(answer);
    }
}

/// The outcome of a post's write, for the actor's bookkeeping.
#[derive(Message)]
#[rtype(result = "()")]
struct Posted {
    deadline: Deadline,
    committed: bool,
    created: bool,
}

impl Handler<Posted> for Conversation {
    type Result = ();

    fn handle(&mut self, msg: Posted, _: &mut Self::Context) {
        if msg.created {
            self.record_persisted = true;
        }
        if !msg.committed {
            // Nothing new was stored: no timer for it.
            self.timers.remove(&msg.deadline);
        }
    }
}

// 4. The fanout.

/// The start of every `message` frame, up to where its cursor goes.
const MESSAGE_HEAD: &str = r#"{"type":"message","#;

/// A `message` frame rendered without a cursor (and, for timed media, with
/// its grant): rendered once per committed batch and shared by every
/// member, each getting it with their own cursor spliced in.
pub fn render_shared(dir: &Directory, m: &StoredMessage) -> String {
    let grant = match m.view_policy {
        ViewPolicy::Timed => m
            .media
            .as_ref()
            .and_then(|md| dir.deps().media.grant(md, Access::Timed, m.expires_at)),
        ViewPolicy::Once => None,
    };
    ServerFrame::Message(MessageView::of(m, None, grant.as_ref())).to_text()
}

/// `shared` (from [`render_shared`]) as the frame of one member's `cursor`:
/// the same text as rendering the message with that cursor.
pub fn with_cursor(cursor: u64, shared: &str) -> String {
    use std::fmt::Write as _;
    let rest = shared
        .strip_prefix(MESSAGE_HEAD)
        .expect("a message frame starts with its type");
    let mut text = String::with_capacity(shared.len() + 32);
    text.push_str(MESSAGE_HEAD);
    let _ = write!(text, "\"cursor\":{cursor},");
    text.push_str(rest);
    text
}

/// Pushes one committed batch of events to the online sessions: per user
/// in cursor order, to every session but the device an event excludes.
/// Each message is rendered once for the batch ([`render_shared`]) and each
/// user's frame is shared by their devices. Runs on the storage writer's
/// thread, with no hop through any actor. Logical expiry holds on this
/// path too: a message is never pushed after its time.
pub fn deliver(dir: &Directory, batch: Vec<(UserId, Vec<Delivery>)>) {
    let metrics = &dir.deps().metrics;
    let now = now_ms();
    let mut rendered: HashMap<*const StoredMessage, String> = HashMap::new();
    for (user, events) in batch {
        let sessions = dir.sessions_of(user);
        let sessions = sessions
            .as_ref()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()))
            .filter(|s| !s.is_empty());
        let Some(sessions) = sessions else {
            push_offline(dir, user, &events, now);
            continue;
        };
        for d in events {
            let text: Arc<str> = match &d.event {
                Event::Message(m) if m.expires_at <= now => continue,
                Event::StoryPosted { expires_at, .. } if *expires_at <= now => continue,
                Event::Reaction { expires_at, .. } if *expires_at <= now => continue,
                Event::Reaction { msg, by, emoji, .. } => {
                    reaction(d.cursor, *msg, *by, emoji.as_deref()).into()
                }
                Event::Message(m) => {
                    metrics
                        .delivery_latency
                        .observe(now.saturating_sub(m.sent_at) as f64 / 1000.0);
                    let shared = rendered
                        .entry(Arc::as_ptr(m))
                        .or_insert_with(|| render_shared(dir, m));
                    with_cursor(d.cursor, shared).into()
                }
                // Everything else renders from its persisted form, exactly
                // as a sync replays it.
                other => render_record(d.cursor, &other.record(0).0)
                    .expect("only message events need their message to render")
                    .into(),
            };
            let pushed = push(&sessions, Some(d.cursor), text, d.except_device);
            if matches!(d.event, Event::Message(_)) {
                metrics.messages_delivered.inc_by(pushed as u64);
            }
        }
    }
}

/// No device of `user` is online here: each new message from someone else
/// goes to the push webhook, if one is configured (a queue, so the writer
/// never waits for it). Not in cluster mode: there the owner node pushes
/// when the user is online on no node (the server's bus), and a node that
/// got the event for a device that left meanwhile pushes nothing.
fn push_offline(dir: &Directory, user: UserId, events: &[Delivery], now: Millis) {
    let Some(webhook) = &dir.deps().push else {
        return;
    };
    if dir.deps().router.is_some() {
        return;
    }
    for d in events {
        if let Event::Message(m) = &d.event {
            // One's own message reaches one's other devices by sync, not
            // by a push; an expired one is no news.
            if m.from != user && m.expires_at > now {
                webhook.offline(user, m);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(view_policy: ViewPolicy, body: Option<&str>) -> StoredMessage {
        let conv = Id([7; 16]);
        StoredMessage {
            id: MsgId { conv, seq: 9 },
            from: Id([1; 16]),
            sent_at: 1_700_000_000_000,
            expires_at: 1_700_000_060_000,
            view_policy,
            body: body.map(str::to_owned),
            media: None,
            burn_after_view_seconds: Some(5),
            story_id: Some(Id([3; 16])),
            reaction: true,
        }
    }

    #[test]
    fn a_message_rendered_once_reads_as_one_rendered_with_each_cursor() {
        let messages = [
            message(
                ViewPolicy::Timed,
                Some("h\u{e9} \"quoted\" {\"type\":\"message\",}"),
            ),
            message(ViewPolicy::Once, None),
        ];
        for m in &messages {
            let shared = ServerFrame::Message(MessageView::of(m, None, None)).to_text();
            for cursor in [0, 1, 42, u64::MAX] {
                let whole = ServerFrame::Message(MessageView::of(m, Some(cursor), None)).to_text();
                assert_eq!(with_cursor(cursor, &shared), whole);
            }
        }
    }
}
