//! The storage port: what the actors need from storage, as records and a
//! trait. The RocksDB implementation lives in the server crate
//! (`src/store/`), so this crate never links RocksDB.
//!
//! Reads are blocking calls: actors run them on the blocking pool
//! (`blocking`). Writes are transactions handed to the group-commit writer,
//! which applies many of them in one write batch and answers each when it
//! is durable; it also assigns every inbox event its per-user cursor and
//! hands committed events to the [`Fanout`] in cursor order.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::ids::{ConvId, DeviceId, Id, MsgId, UserId};

/// Identifies a story.
pub type StoryId = Id;

/// Milliseconds since the Unix epoch, the unit of every `*_at`.
pub type Millis = u64;

/// Now, in Unix milliseconds.
pub fn now_ms() -> Millis {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// How far ahead of a deadline its conversation arms a timer for it; later
/// deadlines are handed over by the sweeper when they come this close.
pub const LOOKAHEAD_MS: Millis = 3_000;

/// How long non-content events (receipts, burns) stay replayable by `sync`:
/// the longest message lifetime, so a device that missed a message's whole
/// life still learns of its burn.
pub const EVENT_RETENTION_MS: Millis = 604_800_000;

/// Direct (two people, created by the first `send` with `to`) or group.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConvKind {
    /// A 1:1 conversation whose id derives from the pair of users.
    Direct,
    /// A group created through the HTTP API.
    Group,
}

/// A conversation's membership, as stored.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ConversationRecord {
    /// Its id.
    pub id: ConvId,
    /// Direct or group.
    pub kind: ConvKind,
    /// Every member, the creator included.
    pub members: Vec<UserId>,
    /// The group's display name, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// When it was created.
    pub created_at: Millis,
    /// The members who have sent a message in it (or created it): only
    /// their presence goes to the other members. `None` in records written
    /// before this was kept: everyone counts then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub speakers: Option<Vec<UserId>>,
}

impl ConversationRecord {
    /// Whether `user`'s presence may go to the other members.
    pub fn speaks(&self, user: UserId) -> bool {
        self.speakers.as_ref().is_none_or(|s| s.contains(&user))
    }
}

/// Whether content is pushed (`timed`) or opened once on demand (`once`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ViewPolicy {
    /// Delivered to every device, readable until it expires.
    Timed,
    /// Never pushed; the first `view` wins.
    Once,
}

/// A message as stored: the only row that holds a body.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StoredMessage {
    /// The conversation and seq.
    pub id: MsgId,
    /// The sender.
    pub from: UserId,
    /// When the server accepted it.
    pub sent_at: Millis,
    /// When it stops being readable anywhere.
    pub expires_at: Millis,
    /// Timed or once.
    pub view_policy: ViewPolicy,
    /// The text, for text messages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// The media object, for media messages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media: Option<MediaRef>,
    /// Pulls `expires_at` forward on the first view.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burn_after_view_seconds: Option<u64>,
    /// A reply or reaction to this story (PROTOCOL 5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub story_id: Option<StoryId>,
    /// A reaction to `story_id`: the body is the emoji.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub reaction: bool,
}

/// A media object as a message refers to it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MediaRef {
    /// The `media_key` (an opaque id).
    pub id: Id,
    /// The type declared at upload.
    pub content_type: String,
    /// The size declared at upload: the stored (sealed) object's, in bytes.
    pub bytes: u64,
}

/// What an entitled reader gets to fetch and open a media object.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MediaGrant {
    /// A presigned GET of the ciphertext.
    pub get_url: String,
    /// The data key, base64.
    pub data_key: String,
}

/// Who may see a story.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Audience {
    /// Every signed-in user (the tray lists it to followers).
    Everyone,
    /// The users in the author's close-friends list, checked at every fetch.
    CloseFriends,
}

/// A story as stored: the only row that holds its caption.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StoryRecord {
    /// Its id.
    pub id: StoryId,
    /// Who posted it.
    pub author: UserId,
    /// When.
    pub posted_at: Millis,
    /// When it ends everywhere.
    pub expires_at: Millis,
    /// Who may see it.
    pub audience: Audience,
    /// The caption, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caption: Option<String>,
    /// The photo or video.
    pub media: MediaRef,
    /// Whether tray references were pushed to the followers (`false`: the
    /// author had more followers than `story_fanout_max_followers`; trays
    /// merge the story in at read time, and only the followers online when
    /// it was posted get a reference and `story_posted`).
    pub fanned_out: bool,
}

impl StoryRecord {
    /// Whether it is live at `now`.
    pub fn live(&self, now: Millis) -> bool {
        self.expires_at > now
    }

    /// What a tray reference to it says.
    pub fn tray_ref(&self) -> TrayRef {
        TrayRef {
            author: self.author,
            story: self.id,
            posted_at: self.posted_at,
            expires_at: self.expires_at,
            audience: self.audience,
        }
    }
}

/// A story as a tray knows it: enough to order and filter without reading
/// the story itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TrayRef {
    /// The author.
    pub author: UserId,
    /// The story.
    pub story: StoryId,
    /// When it was posted.
    pub posted_at: Millis,
    /// When it ends.
    pub expires_at: Millis,
    /// Who may see it.
    pub audience: Audience,
}

/// Why a story ended before anyone asked for it again.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StoryEnd {
    /// Its lifetime ran out.
    Expired,
    /// Its author deleted it.
    Deleted,
}

/// A story's deadline in the persistent index: its end.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct StoryDeadline {
    /// When.
    pub at: Millis,
    /// Which story.
    pub story: StoryId,
}

/// What a media grant is for: it decides how long the GET URL lives and
/// what `Cache-Control` the object is served with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Timed message content: a URL valid at most 5 minutes, `no-store`.
    Timed,
    /// View-once content: a URL valid at most 60 s, `no-store`.
    Once,
    /// A story: a URL valid at most 5 minutes, cacheable for at most the
    /// seconds the story has left (`private, max-age=N`), so no cache
    /// outlives it.
    Story,
}

/// Media: claiming an upload for a message, granting access, shredding.
/// The server implements it over its key store and object storage.
pub trait MediaAccess: Send + Sync + 'static {
    /// The media object `id` if `owner` uploaded it completely and no
    /// message uses it yet; otherwise the frame error to answer.
    fn claimable(
        &self,
        id: Id,
        owner: UserId,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<MediaRef, crate::frames::FrameError>> + Send>,
    >;
    /// A short-lived presigned GET and the data key, minted for someone
    /// entitled to the content now, for the kind of content `access` says
    /// (see [`Access`]). `None` once the key is destroyed.
    fn grant(&self, media: &MediaRef, access: Access, expires_at: Millis) -> Option<MediaGrant>;
    /// The content ended: destroy the key (and then the blob) after `fuse_ms`.
    fn shred(&self, media: &MediaRef, fuse_ms: u64);
    /// Cluster mode: a grant the owner node minted for media it holds, for
    /// a reader here (a delivery, a view, a replay); [`MediaAccess::grant`]
    /// hands it out for a short while when the media is not this node's.
    fn remember(&self, _media: Id, _grant: MediaGrant) {}
}

/// What the sender is told once a message is durable; kept so a resend of
/// the same `client_msg_id` gets the very same answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AckRecord {
    /// The client's idempotency key.
    pub client_msg_id: String,
    /// The message.
    pub msg_id: MsgId,
    /// When it was accepted.
    pub sent_at: Millis,
    /// When it expires.
    pub expires_at: Millis,
}

/// Why a message stopped being readable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BurnReason {
    /// Opened once.
    Viewed,
    /// Its lifetime ran out.
    Expired,
    /// Its sender took it back.
    Unsent,
}

/// What a receipt acknowledges.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReceiptState {
    /// Reached a device of the recipient.
    Delivered,
    /// Read up to a seq.
    Read,
}

/// An event in a user's inbox, as delivered live. Every one gets a cursor.
/// It crosses between nodes in cluster mode (content included, for live
/// delivery; never stored off the node that owns it).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "k", rename_all = "snake_case")]
pub enum Event {
    /// A new message (content included only for live delivery).
    Message(Arc<StoredMessage>),
    /// A message burned.
    Burned {
        /// The message.
        msg: MsgId,
        /// Why.
        reason: BurnReason,
    },
    /// A delivery receipt for one message, or a read receipt up to a seq.
    Receipt {
        /// The conversation.
        conv: ConvId,
        /// The message (delivered) ...
        msg: Option<MsgId>,
        /// ... or the read position (read).
        up_to_seq: Option<u64>,
        /// Delivered or read.
        state: ReceiptState,
        /// Who.
        by: UserId,
    },
    /// Someone captured their screen on a message.
    Screenshot {
        /// The message.
        msg: MsgId,
        /// Who.
        by: UserId,
    },
    /// Someone followed posted a story.
    StoryPosted {
        /// The story.
        story: StoryId,
        /// Its author.
        author: UserId,
        /// When it ends.
        expires_at: Millis,
    },
    /// A story this user was told of ended.
    StoryGone {
        /// The story.
        story: StoryId,
        /// Its author.
        author: UserId,
        /// Why.
        reason: StoryEnd,
    },
    /// A member reacted to a message, or took their reaction back (PROTOCOL 11).
    Reaction {
        /// The message.
        msg: MsgId,
        /// Who.
        by: UserId,
        /// The emoji (content: live delivery only, never in the inbox row),
        /// `None` for taken back.
        emoji: Option<Arc<str>>,
        /// The message's `expires_at`: the event lives no longer.
        expires_at: Millis,
    },
}

/// The persisted form of an [`Event`]: references, never content.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "k", rename_all = "snake_case")]
pub enum EventRecord {
    /// A message, by reference.
    Message {
        /// The message.
        msg: MsgId,
    },
    /// A burn.
    Burned {
        /// The message.
        msg: MsgId,
        /// Why.
        reason: BurnReason,
    },
    /// A receipt.
    Receipt {
        /// The conversation.
        conv: ConvId,
        /// Delivered: the message.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        msg: Option<MsgId>,
        /// Read: the position.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        up_to_seq: Option<u64>,
        /// Delivered or read.
        state: ReceiptState,
        /// Who.
        by: UserId,
    },
    /// A screenshot notice.
    Screenshot {
        /// The message.
        msg: MsgId,
        /// Who.
        by: UserId,
    },
    /// A story was posted (kept until it ends).
    StoryPosted {
        /// The story.
        story: StoryId,
        /// Its author.
        author: UserId,
        /// When it ends.
        expires_at: Millis,
    },
    /// A story ended.
    StoryGone {
        /// The story.
        story: StoryId,
        /// Its author.
        author: UserId,
        /// Why.
        reason: StoryEnd,
    },
    /// A reaction, by reference: `sync` reads the reaction row (which
    /// burns with its message) for the emoji as it now stands.
    Reaction {
        /// The message.
        msg: MsgId,
        /// Who.
        by: UserId,
    },
}

impl Event {
    /// The persisted reference form and the time after which it may go.
    pub fn record(&self, now: Millis) -> (EventRecord, Millis) {
        let keep = now.saturating_add(EVENT_RETENTION_MS);
        match self {
            Event::Message(m) => (EventRecord::Message { msg: m.id }, m.expires_at),
            Event::Burned { msg, reason } => (
                EventRecord::Burned {
                    msg: *msg,
                    reason: *reason,
                },
                keep,
            ),
            Event::Receipt {
                conv,
                msg,
                up_to_seq,
                state,
                by,
            } => (
                EventRecord::Receipt {
                    conv: *conv,
                    msg: *msg,
                    up_to_seq: *up_to_seq,
                    state: *state,
                    by: *by,
                },
                keep,
            ),
            Event::Screenshot { msg, by } => (EventRecord::Screenshot { msg: *msg, by: *by }, keep),
            // Replayable while the story lives, and no longer.
            Event::StoryPosted {
                story,
                author,
                expires_at,
            } => (
                EventRecord::StoryPosted {
                    story: *story,
                    author: *author,
                    expires_at: *expires_at,
                },
                *expires_at,
            ),
            Event::StoryGone {
                story,
                author,
                reason,
            } => (
                EventRecord::StoryGone {
                    story: *story,
                    author: *author,
                    reason: *reason,
                },
                keep,
            ),
            // Replayable while the message lives, and no longer.
            Event::Reaction {
                msg,
                by,
                expires_at,
                ..
            } => (EventRecord::Reaction { msg: *msg, by: *by }, *expires_at),
        }
    }
}

/// A deadline in the persistent index: a message to burn at `at`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Deadline {
    /// When.
    pub at: Millis,
    /// Which message.
    pub msg: MsgId,
}

/// A precondition checked by the writer, atomically with the write.
#[derive(Clone, Debug)]
pub enum Guard {
    /// No earlier message of `user` used this `client_msg_id`; if one did,
    /// the transaction fails with [`CommitError::Duplicate`].
    DedupAbsent {
        /// The sender.
        user: UserId,
        /// Their idempotency key.
        client_msg_id: String,
    },
    /// The message row still exists; otherwise [`CommitError::Gone`].
    MessagePresent(MsgId),
    /// The media object exists and no message uses it yet; otherwise
    /// [`CommitError::Gone`].
    MediaUnbound(Id),
    /// The story row still exists; otherwise [`CommitError::Gone`].
    StoryPresent(StoryId),
    /// `user` has not viewed the message yet; otherwise [`CommitError::Gone`].
    ViewAbsent {
        /// The message.
        msg: MsgId,
        /// The viewer.
        user: UserId,
    },
}

/// One write of a transaction.
#[derive(Clone, Debug)]
pub enum Op {
    /// Create or replace a conversation (and index it under each member).
    PutConversation(ConversationRecord),
    /// Remove a conversation from a member's index (the member left).
    DeleteMembership {
        /// The member.
        user: UserId,
        /// The conversation.
        conv: ConvId,
    },
    /// Record the highest seq handed out in a conversation.
    PutSeq {
        /// The conversation.
        conv: ConvId,
        /// Its last seq.
        seq: u64,
    },
    /// Store a message.
    PutMessage(Arc<StoredMessage>),
    /// Remove a message's row (its content).
    DeleteMessage(MsgId),
    /// Remember why a message is gone, until `until`.
    PutTombstone {
        /// The message.
        msg: MsgId,
        /// Why.
        reason: BurnReason,
        /// How long the tombstone is kept.
        until: Millis,
    },
    /// Remember the ack of a `client_msg_id`, until `until`.
    PutDedup {
        /// The sender.
        user: UserId,
        /// The ack.
        ack: AckRecord,
        /// How long.
        until: Millis,
    },
    /// Index a deadline.
    PutDeadline(Deadline),
    /// Remove a deadline from the index.
    DeleteDeadline(Deadline),
    /// Record that `user` opened a view-once message (or first viewed a
    /// timed one), until `until`.
    PutView {
        /// The message.
        msg: MsgId,
        /// The viewer.
        user: UserId,
        /// When.
        at: Millis,
        /// How long the record is kept.
        until: Millis,
    },
    /// Bind a media object to the message that uses it; its key then
    /// lives until `until`.
    BindMedia {
        /// The media object.
        media: Id,
        /// The message.
        msg: MsgId,
        /// When the message ends.
        until: Millis,
    },
    /// Record how far a member has read.
    PutReadState {
        /// The conversation.
        conv: ConvId,
        /// The reader.
        user: UserId,
        /// Up to which seq.
        up_to_seq: u64,
    },
    /// `follower` follows `author` (nothing if already; counts exact).
    Follow {
        /// Who follows.
        follower: UserId,
        /// Whom.
        author: UserId,
    },
    /// `follower` stops following `author` (nothing if not following);
    /// the author's tray references in the follower's tray go too.
    Unfollow {
        /// Who follows.
        follower: UserId,
        /// Whom.
        author: UserId,
    },
    /// `owner` puts `friend` in their close-friends list, or takes them out.
    SetCloseFriend {
        /// Whose list.
        owner: UserId,
        /// Who.
        friend: UserId,
        /// In or out.
        close: bool,
    },
    /// Store a story (its row, the author's index, its deadline, and the
    /// read-time index when it is not fanned out).
    PutStory(Arc<StoryRecord>),
    /// Remove a story and everything that refers to it: its rows, its
    /// views, its deadline, and the tray references of `trays`.
    DeleteStory {
        /// The story.
        story: Arc<StoryRecord>,
        /// Whose trays hold a reference to it.
        trays: Vec<UserId>,
    },
    /// Remove a story's entry from the deadline index (its story is gone).
    DeleteStoryDeadline(StoryDeadline),
    /// Put a story in a user's tray.
    PutTrayRef {
        /// Whose tray.
        viewer: UserId,
        /// The story.
        story: TrayRef,
        /// Whether they are told of it (`story_posted`), and so of its end.
        told: bool,
    },
    /// Record how far a story's fanout went: the last follower done, or
    /// `None` once it is complete.
    PutFanoutProgress {
        /// The story.
        story: StoryId,
        /// The last follower whose tray has it.
        last: Option<UserId>,
        /// When the story ends.
        until: Millis,
    },
    /// Record that `viewer` opened a story, at `at`; kept until `until`.
    PutStoryView {
        /// The story.
        story: StoryId,
        /// Who.
        viewer: UserId,
        /// When.
        at: Millis,
        /// When the story ends.
        until: Millis,
    },
    /// Bind a media object to the story that uses it; its key then lives
    /// until `until`.
    BindStoryMedia {
        /// The media object.
        media: Id,
        /// The story.
        story: StoryId,
        /// When the story ends.
        until: Millis,
    },
    /// Store `by`'s reaction to `msg` (replacing theirs), sealed like a
    /// body, until `until` (the message's expiry). Deleting the message
    /// deletes its reactions in the same batch.
    PutReaction {
        /// The message.
        msg: MsgId,
        /// Who.
        by: UserId,
        /// The emoji.
        emoji: String,
        /// The message's `expires_at`.
        until: Millis,
    },
    /// Remove `by`'s reaction to `msg` (taken back).
    DeleteReaction {
        /// The message.
        msg: MsgId,
        /// Who.
        by: UserId,
    },
    /// Append an event to a user's inbox and deliver it once durable.
    Notify {
        /// The recipient.
        user: UserId,
        /// The event.
        event: Event,
        /// A device that must not get it live (the one that sent it).
        except_device: Option<DeviceId>,
    },
}

/// A transaction: guards checked, then all ops applied, atomically.
#[derive(Clone, Debug, Default)]
pub struct Txn {
    /// Preconditions.
    pub guards: Vec<Guard>,
    /// Writes.
    pub ops: Vec<Op>,
}

/// Why a transaction did not apply.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CommitError {
    /// A `DedupAbsent` guard found an earlier message.
    #[error("duplicate client_msg_id")]
    Duplicate(AckRecord),
    /// A `MessagePresent` guard found no message.
    #[error("message is gone")]
    Gone,
    /// The writer is overloaded (its queue is full).
    #[error("storage is overloaded")]
    Overloaded,
    /// The storage failed; the detail is logged, never sent to clients.
    #[error("storage failure")]
    Failed,
}

/// A storage read failed; the detail is logged where it happened.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("storage read failed")]
pub struct ReadError;

/// A committed event, handed to the fanout with its cursor.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Delivery {
    /// The user's cursor for this event.
    pub cursor: u64,
    /// The event.
    pub event: Event,
    /// A device that must not get it live.
    pub except_device: Option<DeviceId>,
}

/// Where the writer hands committed events, in cursor order per user.
pub trait Fanout: Send + Sync + 'static {
    /// Delivers one committed batch: per user, their events in cursor
    /// order (an event shared by several users is one `Arc`).
    fn deliver(&self, batch: Vec<(UserId, Vec<Delivery>)>);
}

/// Where the fanout reports an event for a user with no device online on
/// this node (PROTOCOL 9). Called on the writer's thread: an implementation
/// only queues (never blocks, never reads storage) and carries no content on.
pub trait OfflinePush: Send + Sync + 'static {
    /// `message` is new for `user`, who has no session here.
    fn offline(&self, user: UserId, message: &StoredMessage);
    /// `from` calls `user`, who has no session here.
    fn call(&self, user: UserId, from: UserId, at: Millis);
}

/// What runs with a submitted transaction's outcome.
pub type Done = Box<dyn FnOnce(Result<(), CommitError>) + Send>;

/// The future answer of a submitted transaction.
pub type Pending = tokio::sync::oneshot::Receiver<Result<(), CommitError>>;

/// What the actors need from storage. Reads block: call them through
/// [`blocking`].
pub trait Store: Send + Sync + 'static {
    /// Whether an account exists.
    fn user_exists(&self, user: UserId) -> Result<bool, ReadError>;
    /// A conversation's record.
    fn conversation(&self, id: ConvId) -> Result<Option<ConversationRecord>, ReadError>;
    /// The last seq handed out in a conversation (0 if none).
    fn last_seq(&self, id: ConvId) -> Result<u64, ReadError>;
    /// A message row, expired or not (callers filter on `expires_at`).
    fn message(&self, id: MsgId) -> Result<Option<StoredMessage>, ReadError>;
    /// Why a message is gone, if it was burned.
    fn tombstone(&self, id: MsgId) -> Result<Option<BurnReason>, ReadError>;
    /// Messages of a conversation after `after_seq`, in seq order, live or not.
    fn messages_after(
        &self,
        conv: ConvId,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<StoredMessage>, ReadError>;
    /// Inbox events of a user after `after`, in cursor order.
    fn inbox_after(
        &self,
        user: UserId,
        after: u64,
        limit: usize,
    ) -> Result<Vec<(u64, EventRecord)>, ReadError>;
    /// The conversations a user belongs to.
    fn user_conversations(&self, user: UserId) -> Result<Vec<ConvId>, ReadError>;
    /// Whether `user` is a member of `conv` (one point read).
    fn is_member(&self, user: UserId, conv: ConvId) -> Result<bool, ReadError>;
    /// How many groups `user` is in, counting at most to `stop_at`.
    fn group_count(&self, user: UserId, stop_at: usize) -> Result<usize, ReadError>;
    /// `by`'s reaction to `msg`, if any (`None` too once its key is gone).
    fn reaction(&self, msg: MsgId, by: UserId) -> Result<Option<String>, ReadError>;
    /// The users who have viewed a message.
    fn viewers(&self, msg: MsgId) -> Result<Vec<UserId>, ReadError>;
    /// How far a member has read.
    fn read_state(&self, conv: ConvId, user: UserId) -> Result<u64, ReadError>;
    /// Deadlines due strictly after `after` and at or before `until`, oldest first.
    fn deadlines(
        &self,
        after: Option<Deadline>,
        until: Millis,
        limit: usize,
    ) -> Result<Vec<Deadline>, ReadError>;
    /// One conversation's deadlines at or before `until`, oldest first.
    fn conversation_deadlines(
        &self,
        conv: ConvId,
        until: Millis,
        limit: usize,
    ) -> Result<Vec<Deadline>, ReadError>;
    /// A story's row, ended or not (callers filter on `expires_at`); its
    /// caption is `None` once its key is gone.
    fn story(&self, id: StoryId) -> Result<Option<StoryRecord>, ReadError>;
    /// Who viewed a story and when, oldest view first.
    fn story_views(&self, story: StoryId) -> Result<Vec<(UserId, Millis)>, ReadError>;
    /// An author's followers after `after` (in id order), at most `limit`.
    fn followers_after(
        &self,
        author: UserId,
        after: Option<UserId>,
        limit: usize,
    ) -> Result<Vec<UserId>, ReadError>;
    /// How many followers an author has (exact).
    fn follower_count(&self, author: UserId) -> Result<u64, ReadError>;
    /// Whether `friend` is in `owner`'s close-friends list.
    fn is_close_friend(&self, owner: UserId, friend: UserId) -> Result<bool, ReadError>;
    /// Whether `viewer`'s tray holds a reference to the story (`None` if
    /// not), and whether they were told of it (`story_posted`).
    fn tray_ref_told(
        &self,
        viewer: UserId,
        author: UserId,
        story: StoryId,
    ) -> Result<Option<bool>, ReadError>;
    /// How far a story's fanout went: `None` if it has no fanout row (not
    /// fanned out, or ended), `Some(None)` if complete, `Some(Some(last))`
    /// if it stopped after follower `last` (or `Some(Some(zero id))` if it
    /// has not started).
    fn fanout_progress(&self, story: StoryId) -> Result<Option<Option<UserId>>, ReadError>;
    /// Story deadlines due at or before `until`, oldest first.
    fn story_deadlines(&self, until: Millis, limit: usize)
        -> Result<Vec<StoryDeadline>, ReadError>;
    /// Stories whose fanout has not completed (to resume after a restart).
    fn pending_fanouts(&self, limit: usize) -> Result<Vec<StoryId>, ReadError>;
    /// Hands a transaction to the group-commit writer; `done` runs with its
    /// outcome on the writer's thread, as soon as the batch is durable (or
    /// failed), so it must be quick: hand results on, do not work there.
    fn submit_then(&self, txn: Txn, done: Done);

    /// Hands a transaction to the group-commit writer; the answer comes
    /// back through the returned channel.
    fn submit(&self, txn: Txn) -> Pending {
        let (reply, rx) = tokio::sync::oneshot::channel();
        self.submit_then(
            txn,
            Box::new(move |r| {
                let _ = reply.send(r);
            }),
        );
        rx
    }
}

/// Runs a blocking storage call on the blocking pool, off the event loops.
pub async fn blocking<T, F>(f: F) -> Result<T, ReadError>
where
    F: FnOnce() -> Result<T, ReadError> + Send + 'static,
    T: Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r,
        Err(_) => Err(ReadError),
    }
}

/// Submits a transaction and waits for it to be durable.
pub async fn commit(store: &dyn Store, txn: Txn) -> Result<(), CommitError> {
    match store.submit(txn).await {
        Ok(r) => r,
        Err(_) => Err(CommitError::Failed),
    }
}
