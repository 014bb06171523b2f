//! Conversations owned by another node (cluster mode). A conversation has
//! one owner node, whose actor is its single writer; a frame about it that
//! reaches another node travels to the owner as a [`ConvCall`] and its
//! answer comes back as a [`ConvAnswer`]. The server implements the
//! [`Router`] (placement in Redis, the bus between nodes); this module
//! holds the calls, their answers, and [`execute`], which runs a call that
//! arrived from another node against the local actor exactly as a local
//! socket's frame would run.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::call::{CallWire, Key};
use crate::conversation::{Delivered, React, Read, Screenshot, Typing, Unsend, View, Viewed};
use crate::directory::Directory;
use crate::frames::{ErrorCode, FrameError};
use crate::ids::{ConvId, DeviceId, Id, MsgId, UserId};
use crate::send::{AckTo, Post};
use crate::store::{AckRecord, ReadError, StoredMessage, ViewPolicy};

/// Where a conversation lives, as far as this node knows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Place {
    /// Here: its actor runs on this node.
    Local,
    /// On another node, by id.
    Remote(Arc<str>),
}

/// A boxed future, as the router's calls return them.
pub type BoxFuture<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>>;

/// What the actors need from the cluster. Absent on a single node.
pub trait Router: Send + Sync + 'static {
    /// This node's id.
    fn node_id(&self) -> &str;
    /// Where `conv` lives, if known without asking Redis.
    fn cached(&self, conv: ConvId) -> Option<Place>;
    /// Finds where `conv` lives; with `create`, a conversation nobody owns
    /// yet becomes this node's. `not_found` if nobody owns it and `create`
    /// is false.
    fn locate(&self, conv: ConvId, create: bool) -> BoxFuture<Result<Place, FrameError>>;
    /// Runs `call` on the node that owns its conversation and returns the
    /// answer; `unavailable` with `retry_after_ms` if that node is down.
    fn call(&self, node: Arc<str>, call: ConvCall) -> BoxFuture<Result<ConvAnswer, FrameError>>;
    /// A user's first device attached here (`true`), or their last one left
    /// (`false`): the session registry, which says where to send their
    /// events. It also keeps presence cluster-wide: the user's contacts
    /// hear `online` when their first device anywhere attaches and
    /// `offline` when their last one anywhere leaves (the user actor
    /// announces neither in cluster mode).
    fn user_here(&self, user: UserId, here: bool);
    /// What a device of `user` attaching here learns from the cluster, in
    /// one round trip: which of `contacts` are online anywhere, and the
    /// calls ringing `user`. Blocks: call it from a blocking thread.
    fn attach_blocking(&self, user: UserId, contacts: &[UserId]) -> Result<Attaching, ReadError>;
    /// A frame that is not stored (typing, presence) for `user`'s devices
    /// on other nodes.
    fn tell_elsewhere(&self, user: UserId, text: Arc<str>, except_device: Option<DeviceId>);
    /// Rings `callee`'s devices on the other live nodes they are on with
    /// `ring` (a [`CallWire::Ring`]), and notes the call as ringing them
    /// for up to `ringing` (a device that attaches meanwhile anywhere is
    /// rung too); resolves to those nodes (none if Redis cannot say).
    fn ring_elsewhere(
        &self,
        callee: UserId,
        ring: CallWire,
        ringing: std::time::Duration,
    ) -> BoxFuture<Vec<Arc<str>>>;
    /// The call `key` rings `callee` no more (answered or ended).
    fn ringing_over(&self, callee: UserId, key: Key);
    /// Sends a call's message to `node`, which hands it to
    /// [`crate::call::from_node`]. Not waited for: lost if Redis is away.
    fn call_elsewhere(&self, node: Arc<str>, wire: CallWire);
}

/// What a device attaching learns from the cluster
/// ([`Router::attach_blocking`]).
#[derive(Debug, Default)]
pub struct Attaching {
    /// Whether each contact asked about is online on some node, in order.
    pub online: Vec<bool>,
    /// The calls ringing the user, with the node each one's actor is on.
    pub ringing: Vec<(Key, Arc<str>)>,
}

/// A conversation frame on its way to the owner node: the same fields the
/// local actor messages carry.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "call", rename_all = "snake_case")]
pub enum ConvCall {
    /// A validated `send`.
    Post(PostCall),
    /// `view`.
    View {
        /// The message.
        msg: MsgId,
        /// The viewer.
        by: UserId,
    },
    /// `delivered`.
    Delivered {
        /// The message.
        msg: MsgId,
        /// Who.
        by: UserId,
    },
    /// `screenshot`.
    Screenshot {
        /// The message.
        msg: MsgId,
        /// Who.
        by: UserId,
    },
    /// `unsend`.
    Unsend {
        /// The message.
        msg: MsgId,
        /// Who.
        by: UserId,
    },
    /// `react`.
    React {
        /// The message.
        msg: MsgId,
        /// Who.
        by: UserId,
        /// The emoji, or `None` to take it back.
        emoji: Option<String>,
    },
    /// `read`.
    Read {
        /// The conversation.
        conv: ConvId,
        /// Who.
        by: UserId,
        /// Up to which seq.
        up_to_seq: u64,
    },
    /// `typing`.
    Typing {
        /// The conversation.
        conv: ConvId,
        /// Who.
        by: UserId,
        /// From which device.
        device: DeviceId,
        /// Started or stopped.
        is_typing: bool,
    },
}

/// A validated `send`: what a [`Post`] carries besides where its answer
/// goes, and what crosses to the owner node when the conversation is
/// another node's.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PostCall {
    /// The conversation.
    pub conv: ConvId,
    /// The sender.
    pub from: UserId,
    /// The sending device.
    pub device: DeviceId,
    /// The idempotency key.
    pub client_msg_id: String,
    /// For a first direct message: the pair.
    pub direct: Option<(UserId, UserId)>,
    /// Text content (crosses the bus, is never stored off the owner).
    pub body: Option<String>,
    /// Media content.
    pub media_key: Option<Id>,
    /// Timed or once.
    pub view_policy: ViewPolicy,
    /// Lifetime.
    pub ttl_seconds: u64,
    /// Burn this long after the first view.
    pub burn_after_view_seconds: Option<u64>,
    /// A reply (`false`) or reaction (`true`) to this story.
    #[serde(default)]
    pub story: Option<(crate::store::StoryId, bool)>,
}

impl ConvCall {
    /// The conversation the call is about.
    pub fn conv(&self) -> ConvId {
        match self {
            ConvCall::Post(PostCall { conv, .. })
            | ConvCall::Read { conv, .. }
            | ConvCall::Typing { conv, .. } => *conv,
            ConvCall::View { msg, .. }
            | ConvCall::Delivered { msg, .. }
            | ConvCall::Screenshot { msg, .. }
            | ConvCall::Unsend { msg, .. }
            | ConvCall::React { msg, .. } => msg.conv,
        }
    }

    /// The user the call is from.
    pub fn by(&self) -> UserId {
        match self {
            ConvCall::Post(p) => p.from,
            ConvCall::View { by, .. }
            | ConvCall::Delivered { by, .. }
            | ConvCall::Screenshot { by, .. }
            | ConvCall::Unsend { by, .. }
            | ConvCall::React { by, .. }
            | ConvCall::Read { by, .. }
            | ConvCall::Typing { by, .. } => *by,
        }
    }
}

/// The owner's answer to a [`ConvCall`].
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "answer", rename_all = "snake_case")]
pub enum ConvAnswer {
    /// Done; nothing to say (receipts, typing...).
    Done,
    /// A send is durable: its ack.
    Ack {
        /// The ack, as the sender gets it.
        ack: AckRecord,
    },
    /// A view was granted: the content.
    Granted {
        /// The message.
        message: Box<StoredMessage>,
        /// For media: the owner's grant (the key and blob are there).
        #[serde(default)]
        grant: Option<crate::store::MediaGrant>,
    },
    /// A view found the message burned.
    Burned,
    /// Refused: the frame error.
    Refused {
        /// The error.
        error: WireError,
    },
}

/// A [`FrameError`] on the wire.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WireError {
    /// The code.
    pub code: ErrorCode,
    /// The message (one of the server's fixed texts).
    pub message: String,
    /// The retry hint.
    pub retry_after_ms: Option<u64>,
}

impl From<&FrameError> for WireError {
    fn from(e: &FrameError) -> Self {
        WireError {
            code: e.code,
            message: e.message.to_owned(),
            retry_after_ms: e.retry_after_ms,
        }
    }
}

impl WireError {
    /// Back to a frame error: the message is one of ours, interned.
    pub fn into_frame_error(self) -> FrameError {
        FrameError {
            code: self.code,
            message: intern(self.message),
            retry_after_ms: self.retry_after_ms,
        }
    }
}

/// The server's error texts are a small fixed set; one copy of each is
/// kept for good. A peer sending more than that gets a generic text.
fn intern(s: String) -> &'static str {
    use std::collections::HashSet;
    use std::sync::{Mutex, OnceLock};
    static TEXTS: OnceLock<Mutex<HashSet<&'static str>>> = OnceLock::new();
    let mut texts = TEXTS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    if let Some(t) = texts.get(s.as_str()) {
        return t;
    }
    if texts.len() >= 512 {
        return "refused by the owner node";
    }
    let t: &'static str = Box::leak(s.into_boxed_str());
    texts.insert(t);
    t
}

/// The answer as a result: refusals become frame errors.
pub fn answer_result(a: Result<ConvAnswer, FrameError>) -> Result<ConvAnswer, FrameError> {
    match a {
        Ok(ConvAnswer::Refused { error }) => Err(error.into_frame_error()),
        other => other,
    }
}

fn restarting() -> FrameError {
    FrameError::new(ErrorCode::Unavailable, "conversation restarting, retry")
}

fn done(r: Result<Result<(), FrameError>, actix::MailboxError>) -> Result<ConvAnswer, FrameError> {
    match r {
        Ok(Ok(())) => Ok(ConvAnswer::Done),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(restarting()),
    }
}

/// Runs a call that came from another node on this node's actor, as the
/// same frame from a local socket would run (membership checked by the
/// actor, a direct conversation created by its first message).
pub async fn execute(dir: &Arc<Directory>, call: ConvCall) -> ConvAnswer {
    let r = run(dir, call).await;
    match r {
        Ok(a) => a,
        Err(e) => ConvAnswer::Refused {
            error: WireError::from(&e),
        },
    }
}

/// Posts a message that does not come from a socket (a story's reply or
/// reaction) wherever its conversation lives: here, or on its owner node.
pub async fn post_anywhere(dir: &Arc<Directory>, post: PostCall) -> Result<AckRecord, FrameError> {
    let call = ConvCall::Post(post);
    let answer = match &dir.deps().router {
        Some(r) => match r.locate(call.conv(), true).await? {
            Place::Remote(node) => answer_result(r.call(node, call).await)?,
            Place::Local => run(dir, call).await?,
        },
        None => run(dir, call).await?,
    };
    match answer {
        ConvAnswer::Ack { ack } => Ok(ack),
        _ => Err(restarting()),
    }
}

async fn run(dir: &Arc<Directory>, call: ConvCall) -> Result<ConvAnswer, FrameError> {
    let conv = call.conv();
    let by = call.by();
    // Only the owner runs a conversation's frames: a caller whose idea of
    // the owner is stale (the conversation was released) is told to retry.
    if let Some(r) = &dir.deps().router {
        let create = matches!(&call, ConvCall::Post(p) if p.direct.is_some());
        if r.locate(conv, create).await? != Place::Local {
            return Err(FrameError::new(
                ErrorCode::Unavailable,
                "the conversation is not on this node, retry",
            ));
        }
    }
    if let ConvCall::Post(post) = call {
        let permit = dir.admit_send().ok_or_else(FrameError::busy)?;
        let addr = match post.direct {
            Some(_) => dir.conversation(conv),
            None => dir
                .member_conversation(post.from, conv)
                .ok_or(crate::conversation::NOT_FOUND)?,
        };
        let (reply, rx) = AckTo::call(
            post.client_msg_id.clone(),
            Arc::clone(&dir.deps().metrics),
            permit,
        );
        addr.do_send(Post { reply, send: post });
        return match rx.await {
            Ok(Ok(ack)) => Ok(ConvAnswer::Ack { ack }),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(restarting()),
        };
    }
    let addr = dir
        .member_conversation(by, conv)
        .ok_or(crate::conversation::NOT_FOUND)?;
    match call {
        ConvCall::Post(_) => unreachable!("handled above"),
        ConvCall::View { msg, by } => match addr.send(View { msg, by }).await {
            Ok(Ok(Viewed::Granted(m))) => {
                let access = match m.view_policy {
                    ViewPolicy::Once => crate::store::Access::Once,
                    ViewPolicy::Timed => crate::store::Access::Timed,
                };
                let grant = m
                    .media
                    .as_ref()
                    .and_then(|md| dir.deps().media.grant(md, access, m.expires_at));
                Ok(ConvAnswer::Granted {
                    message: Box::new(m),
                    grant,
                })
            }
            Ok(Ok(Viewed::Burned)) => Ok(ConvAnswer::Burned),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(restarting()),
        },
        ConvCall::Delivered { msg, by } => done(addr.send(Delivered { msg, by }).await),
        ConvCall::Screenshot { msg, by } => done(addr.send(Screenshot { msg, by }).await),
        ConvCall::Unsend { msg, by } => done(addr.send(Unsend { msg, by }).await),
        ConvCall::React { msg, by, emoji } => done(addr.send(React { msg, by, emoji }).await),
        ConvCall::Read { by, up_to_seq, .. } => done(addr.send(Read { by, up_to_seq }).await),
        ConvCall::Typing {
            by,
            device,
            is_typing,
            ..
        } => done(
            addr.send(Typing {
                by,
                device,
                is_typing,
            })
            .await,
        ),
    }
}
