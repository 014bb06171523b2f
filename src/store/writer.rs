//! The group-commit writer: one thread that takes every queued transaction,
//! checks their guards, applies all that pass in one `WriteBatch` (one WAL
//! write, one fsync in `fsync` mode), assigns per-user cursors in commit
//! order, answers each transaction, and hands the committed events to the
//! fanout in cursor order.

use std::collections::HashMap;
use std::sync::Arc;

use ephemera_actors::ids::UserId;
use ephemera_actors::store::{AckRecord, CommitError, Delivery, Done, Fanout, Guard, Op, Txn};
use rocksdb::{Direction, IteratorMode, WriteBatch, WriteOptions, DB};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::{cf_handle, filter, json, keys, Cf, MessageRow, StoreError};
use crate::keystore::KeyStore;
use ephemera_actors::metrics::Metrics;

/// Most transactions in one write batch.
const MAX_GROUP: usize = 2_048;

/// A transaction and what runs with its outcome.
pub struct Job {
    /// The transaction.
    pub txn: Txn,
    /// Runs on this thread once the outcome is known.
    pub done: Done,
}

/// Test-only (feature `faults`): makes the writer fail write batches, so
/// tests can see what a failed write answers.
#[cfg(feature = "faults")]
#[derive(Default)]
pub struct WriterFaults {
    /// Before it collects its next group, the writer waits this long (so
    /// the transactions queued meanwhile land in one batch).
    stall_ms: std::sync::atomic::AtomicU64,
    /// How many of the next batches fail as if the disk refused them.
    fail_batches: std::sync::atomic::AtomicUsize,
}

#[cfg(feature = "faults")]
impl WriterFaults {
    /// Fails the next `batches` batches, after a stall of `stall_ms`.
    pub fn arm(&self, stall_ms: u64, batches: usize) {
        use std::sync::atomic::Ordering::SeqCst;
        self.fail_batches.store(batches, SeqCst);
        self.stall_ms.store(stall_ms, SeqCst);
    }

    fn take_stall(&self) -> Option<std::time::Duration> {
        let ms = self.stall_ms.swap(0, std::sync::atomic::Ordering::SeqCst);
        (ms > 0).then(|| std::time::Duration::from_millis(ms))
    }

    fn fail_this_batch(&self) -> bool {
        self.fail_batches
            .fetch_update(
                std::sync::atomic::Ordering::SeqCst,
                std::sync::atomic::Ordering::SeqCst,
                |n| n.checked_sub(1),
            )
            .is_ok()
    }
}

/// An inbox event committed in cluster mode, on its way to the cluster:
/// its cursor comes from Redis (see `cluster::bus`), not from this node.
#[derive(Clone, Debug)]
pub struct OutEntry {
    /// Its place in this node's outbound queue.
    pub seq: u64,
    /// The recipient.
    pub user: UserId,
    /// What the inbox keeps of it (references, never content).
    pub record: ephemera_actors::store::EventRecord,
    /// When the inbox may forget it.
    pub until: u64,
    /// The event itself, for live delivery (`None` when rebuilt after a
    /// restart and its message is gone).
    pub event: Option<ephemera_actors::store::Event>,
    /// A device that must not get it live.
    pub except_device: Option<ephemera_actors::ids::DeviceId>,
}

/// The outbound row of an [`OutEntry`] (family `outbound`, key: its seq).
#[derive(Serialize, Deserialize)]
pub struct OutRow {
    /// The recipient.
    pub user: UserId,
    /// The inbox record.
    pub record: ephemera_actors::store::EventRecord,
    /// A device that must not get it live.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub except_device: Option<ephemera_actors::ids::DeviceId>,
}

/// Where committed inbox events go in cluster mode, in seq order.
pub trait Outbound: Send + Sync + 'static {
    /// Takes one committed batch's events (already durable in `outbound`).
    fn forward(&self, entries: Vec<OutEntry>);
}

/// The key under which the last outbound seq handed out is kept (family
/// `cursors`, whose other keys are 16-byte user ids).
pub const OUTBOUND_HEAD: &[u8] = b"outbound-head";

/// Starts the writer thread; it ends when every sender of `rx` is gone.
#[allow(clippy::too_many_arguments)]
pub fn spawn(
    db: Arc<DB>,
    keys: Arc<KeyStore>,
    rx: mpsc::Receiver<Job>,
    fanout: Arc<dyn Fanout>,
    outbound: Option<(Arc<dyn Outbound>, u64)>,
    metrics: Arc<Metrics>,
    sync: bool,
    #[cfg(feature = "faults")] faults: Arc<WriterFaults>,
) -> std::thread::JoinHandle<()> {
    let (outbound, out_head) = match outbound {
        Some((o, head)) => (Some(o), head),
        None => (None, 0),
    };
    let mut w = Writer {
        db,
        keys,
        fanout,
        outbound,
        out_head,
        metrics,
        heads: HashMap::new(),
        sync,
        #[cfg(feature = "faults")]
        faults,
    };
    std::thread::Builder::new()
        .name("ephemera-writer".into())
        .spawn(move || w.run(rx))
        .expect("the writer thread starts")
}

struct Writer {
    db: Arc<DB>,
    /// Seals message bodies before they reach the database.
    keys: Arc<KeyStore>,
    fanout: Arc<dyn Fanout>,
    /// Cluster mode: inbox events leave through here, with the last
    /// outbound seq handed out.
    outbound: Option<Arc<dyn Outbound>>,
    out_head: u64,
    metrics: Arc<Metrics>,
    /// Last cursor given out per user (loaded from the inbox on first use).
    heads: HashMap<UserId, u64>,
    sync: bool,
    #[cfg(feature = "faults")]
    faults: Arc<WriterFaults>,
}

/// What the batch being built has already written, so guards see earlier
/// transactions of the same batch.
#[derive(Default)]
struct Overlay {
    dedup: HashMap<[u8; 32], AckRecord>,
    messages: HashMap<[u8; 24], bool>,
    views: std::collections::HashSet<[u8; 40]>,
    media: HashMap<[u8; 16], super::MediaRecord>,
    heads: HashMap<UserId, u64>,
    /// Follow rows written (true) or deleted (false) by this batch.
    follows: HashMap<[u8; 32], bool>,
    /// (followers, following) as this batch left them.
    counts: HashMap<UserId, (u64, u64)>,
    /// Story rows written (true) or deleted (false) by this batch.
    stories: HashMap<[u8; 16], bool>,
    /// Messages (their keys) that this batch put a reaction to.
    reacted: std::collections::HashSet<[u8; 24]>,
    /// Cluster mode: the events this batch queued outbound.
    outbound: Vec<OutEntry>,
}

impl Writer {
    fn run(&mut self, mut rx: mpsc::Receiver<Job>) {
        let mut jobs = Vec::with_capacity(MAX_GROUP);
        while let Some(first) = rx.blocking_recv() {
            #[cfg(feature = "faults")]
            if let Some(stall) = self.faults.take_stall() {
                std::thread::sleep(stall);
            }
            jobs.push(first);
            while jobs.len() < MAX_GROUP {
                match rx.try_recv() {
                    Ok(j) => jobs.push(j),
                    Err(_) => break,
                }
            }
            self.commit_group(&mut jobs);
        }
        tracing::info!("writer stopped: every sender is gone");
    }

    /// The last cursor handed out to `user`: the persisted head (which
    /// never expires), or the newest inbox row for a database written
    /// before heads were persisted, whichever is higher.
    fn head(&self, overlay: &Overlay, user: UserId) -> Result<u64, StoreError> {
        if let Some(h) = overlay.heads.get(&user).or_else(|| self.heads.get(&user)) {
            return Ok(*h);
        }
        let stored = match self
            .db
            .get_pinned_cf(cf_handle(&self.db, Cf::Cursors), keys::cursor(user))?
        {
            Some(v) => filter::split(&v)
                .and_then(|(_, p)| <[u8; 8]>::try_from(p).ok())
                .map(u64::from_be_bytes)
                .ok_or(StoreError::Corrupt("cursors"))?,
            None => 0,
        };
        let top = keys::inbox(user, u64::MAX);
        let mut it = self.db.iterator_cf(
            cf_handle(&self.db, Cf::Inbox),
            IteratorMode::From(&top, Direction::Reverse),
        );
        let newest_row = match it.next() {
            Some(Ok((k, _))) if k[..16] == user.0 => keys::decode_inbox_cursor(&k).unwrap_or(0),
            Some(Err(e)) => return Err(e.into()),
            _ => 0,
        };
        Ok(stored.max(newest_row))
    }

    fn media_record(
        &self,
        overlay: &Overlay,
        id: [u8; 16],
    ) -> Result<Option<super::MediaRecord>, StoreError> {
        if let Some(r) = overlay.media.get(&id) {
            return Ok(Some(r.clone()));
        }
        let Some(v) = self.db.get_pinned_cf(cf_handle(&self.db, Cf::Media), id)? else {
            return Ok(None);
        };
        let (_, p) = filter::split(&v).ok_or(StoreError::Corrupt("media"))?;
        serde_json::from_slice(p)
            .map(Some)
            .map_err(|_| StoreError::Corrupt("media"))
    }

    /// Writes a media record into the batch (and its overlay), its key's
    /// life set to the record's `until` first: the key store write is
    /// synced before the batch that uses it, so the key lives exactly as
    /// long as the content.
    fn put_media(
        &self,
        b: &mut WriteBatch,
        overlay: &mut Overlay,
        id: [u8; 16],
        rec: super::MediaRecord,
    ) -> Result<(), StoreError> {
        self.keys.set_media_until(&id, rec.until)?;
        b.put_cf(
            cf_handle(&self.db, Cf::Media),
            id,
            filter::with_expiry(u64::MAX, &json(&rec)),
        );
        overlay.media.insert(id, rec);
        Ok(())
    }

    /// The stored form of a message: its body sealed under the key of its
    /// expiry bucket, bound to its storage key.
    fn seal(
        &self,
        key: &[u8],
        m: &ephemera_actors::store::StoredMessage,
    ) -> Result<Vec<u8>, StoreError> {
        let mut meta = m.clone();
        let sealed = self.seal_text(m.expires_at, key, meta.body.take())?;
        Ok(json(&MessageRow { meta, sealed }))
    }

    /// Content text sealed under the key of its expiry bucket, bound to its
    /// row's key, in base64 (`None` for none).
    fn seal_text(
        &self,
        expires_at: u64,
        key: &[u8],
        text: Option<String>,
    ) -> Result<Option<String>, StoreError> {
        use base64::Engine;
        Ok(match text {
            Some(t) => Some(
                base64::engine::general_purpose::STANDARD.encode(self.keys.seal_body(
                    expires_at,
                    key,
                    t.as_bytes(),
                )?),
            ),
            None => None,
        })
    }

    /// Whether any stored row of `cf` starts with `prefix`.
    fn has_prefix(&self, cf: Cf, prefix: &[u8]) -> Result<bool, StoreError> {
        let mut it = self.db.iterator_cf(
            cf_handle(&self.db, cf),
            IteratorMode::From(prefix, Direction::Forward),
        );
        match it.next() {
            Some(Ok((k, _))) => Ok(k.starts_with(prefix)),
            Some(Err(e)) => Err(e.into()),
            None => Ok(false),
        }
    }

    /// Whether a follow row exists, as this batch has left it.
    fn following(&self, overlay: &Overlay, k: &[u8; 32]) -> Result<bool, StoreError> {
        if let Some(p) = overlay.follows.get(k) {
            return Ok(*p);
        }
        Ok(self
            .db
            .get_pinned_cf(cf_handle(&self.db, Cf::Follows), k)?
            .is_some())
    }

    /// Changes a user's (followers, following) by the given steps, in the
    /// batch and its overlay.
    fn count(
        &self,
        b: &mut WriteBatch,
        overlay: &mut Overlay,
        user: UserId,
        followers: i64,
        following: i64,
    ) -> Result<(), StoreError> {
        let (f, g) = match overlay.counts.get(&user) {
            Some(c) => *c,
            None => match self.db.get_pinned_cf(
                cf_handle(&self.db, Cf::FollowCounts),
                keys::follow_counts(user),
            )? {
                Some(v) => {
                    let (_, p) = filter::split(&v).ok_or(StoreError::Corrupt("follow_counts"))?;
                    super::stories::decode_counts(p)?
                }
                None => (0, 0),
            },
        };
        let next = (
            f.saturating_add_signed(followers),
            g.saturating_add_signed(following),
        );
        overlay.counts.insert(user, next);
        let mut v = [0u8; 16];
        v[..8].copy_from_slice(&next.0.to_be_bytes());
        v[8..].copy_from_slice(&next.1.to_be_bytes());
        b.put_cf(
            cf_handle(&self.db, Cf::FollowCounts),
            keys::follow_counts(user),
            filter::with_expiry(u64::MAX, &v),
        );
        Ok(())
    }

    /// The stored form of a story: its caption sealed like a message body.
    fn seal_story(
        &self,
        key: &[u8],
        story: &ephemera_actors::store::StoryRecord,
    ) -> Result<Vec<u8>, StoreError> {
        let mut meta = story.clone();
        let sealed = self.seal_text(story.expires_at, key, meta.caption.take())?;
        Ok(json(&super::stories::StoryRow { meta, sealed }))
    }

    /// A presence guard: the row as this batch left it (`written`: `Some`
    /// if the batch wrote or deleted it), else as stored; `Gone` if absent.
    fn present(&self, written: Option<&bool>, cf: Cf, key: &[u8]) -> Result<(), CommitError> {
        let present = match written {
            Some(p) => *p,
            None => self
                .db
                .get_pinned_cf(cf_handle(&self.db, cf), key)
                .map_err(|e| {
                    tracing::error!(error = %e, "guard read failed");
                    CommitError::Failed
                })?
                .is_some(),
        };
        if present {
            Ok(())
        } else {
            Err(CommitError::Gone)
        }
    }

    fn check(&self, overlay: &Overlay, guard: &Guard) -> Result<(), CommitError> {
        let failed = |e: rocksdb::Error| {
            tracing::error!(error = %e, "guard read failed");
            CommitError::Failed
        };
        match guard {
            Guard::DedupAbsent {
                user,
                client_msg_id,
            } => {
                let k = keys::dedup(*user, client_msg_id);
                if let Some(ack) = overlay.dedup.get(&k) {
                    return Err(CommitError::Duplicate(ack.clone()));
                }
                let Some(v) = self
                    .db
                    .get_pinned_cf(cf_handle(&self.db, Cf::Dedup), k)
                    .map_err(failed)?
                else {
                    return Ok(());
                };
                match filter::split(&v) {
                    Some((exp, p)) if exp > ephemera_actors::store::now_ms() => {
                        let ack = serde_json::from_slice(p).map_err(|_| CommitError::Failed)?;
                        Err(CommitError::Duplicate(ack))
                    }
                    _ => Ok(()),
                }
            }
            Guard::MediaUnbound(id) => match self.media_record(overlay, id.0).map_err(|e| {
                tracing::error!(error = %e, "media guard read failed");
                CommitError::Failed
            })? {
                Some(rec) if !rec.is_bound() => Ok(()),
                _ => Err(CommitError::Gone),
            },
            Guard::StoryPresent(id) => {
                let k = keys::story(*id);
                self.present(overlay.stories.get(&k), Cf::Stories, &k)
            }
            Guard::ViewAbsent { msg, user } => {
                let k = keys::view(*msg, *user);
                let seen = overlay.views.contains(&k)
                    || self
                        .db
                        .get_pinned_cf(cf_handle(&self.db, Cf::Views), k)
                        .map_err(failed)?
                        .is_some();
                if seen {
                    Err(CommitError::Gone)
                } else {
                    Ok(())
                }
            }
            Guard::MessagePresent(msg) => {
                let k = keys::message(*msg);
                self.present(overlay.messages.get(&k), Cf::Messages, &k)
            }
        }
    }

    /// Adds one transaction's writes to the batch. Returns its deliveries.
    fn apply(
        &self,
        b: &mut WriteBatch,
        overlay: &mut Overlay,
        txn: Txn,
        out: &mut Vec<(UserId, Delivery)>,
    ) -> Result<(), StoreError> {
        let db = &*self.db;
        let now = ephemera_actors::store::now_ms();
        for op in txn.ops {
            match op {
                Op::PutConversation(rec) => {
                    // The row says which kind of conversation it is, so a
                    // user's groups can be counted without reading them.
                    let kind = super::membership_kind(rec.kind);
                    for m in &rec.members {
                        b.put_cf(
                            cf_handle(db, Cf::Memberships),
                            keys::membership(*m, rec.id),
                            filter::with_expiry(u64::MAX, &[kind]),
                        );
                    }
                    b.put_cf(
                        cf_handle(db, Cf::Conversations),
                        keys::conversation(rec.id),
                        filter::with_expiry(u64::MAX, &json(&rec)),
                    );
                }
                Op::DeleteMembership { user, conv } => {
                    b.delete_cf(cf_handle(db, Cf::Memberships), keys::membership(user, conv));
                }
                Op::PutSeq { conv, seq } => {
                    b.put_cf(
                        cf_handle(db, Cf::Sequences),
                        keys::conversation(conv),
                        filter::with_expiry(u64::MAX, &seq.to_be_bytes()),
                    );
                }
                Op::PutMessage(m) => {
                    let k = keys::message(m.id);
                    overlay.messages.insert(k, true);
                    b.put_cf(
                        cf_handle(db, Cf::Messages),
                        k,
                        filter::with_expiry(m.expires_at, &self.seal(&k, &m)?),
                    );
                }
                Op::DeleteMessage(id) => {
                    let k = keys::message(id);
                    overlay.messages.insert(k, false);
                    b.delete_cf(cf_handle(db, Cf::Messages), k);
                    // Its reactions burn with it, in this batch. Most
                    // messages have none: a range delete only where one is
                    // stored or being written.
                    if overlay.reacted.contains(&k) || self.has_prefix(Cf::Reactions, &k)? {
                        if let Some(end) = keys::prefix_end(&k) {
                            b.delete_range_cf(cf_handle(db, Cf::Reactions), &k[..], &end[..]);
                        }
                    }
                }
                Op::PutReaction {
                    msg,
                    by,
                    emoji,
                    until,
                } => {
                    let k = keys::reaction(msg, by);
                    let sealed = self.keys.seal_body(until, &k, emoji.as_bytes())?;
                    b.put_cf(
                        cf_handle(db, Cf::Reactions),
                        k,
                        filter::with_expiry(until, &sealed),
                    );
                    overlay.reacted.insert(keys::message(msg));
                }
                Op::DeleteReaction { msg, by } => {
                    b.delete_cf(cf_handle(db, Cf::Reactions), keys::reaction(msg, by));
                }
                Op::BindMedia { media, msg, until } => {
                    let mut rec = self
                        .media_record(overlay, media.0)?
                        .ok_or(StoreError::Corrupt("media"))?;
                    rec.bound = Some(msg);
                    rec.until = until;
                    self.put_media(b, overlay, media.0, rec)?;
                }
                Op::PutView {
                    msg,
                    user,
                    at,
                    until,
                } => {
                    let k = keys::view(msg, user);
                    overlay.views.insert(k);
                    b.put_cf(
                        cf_handle(db, Cf::Views),
                        k,
                        filter::with_expiry(until, &at.to_be_bytes()),
                    );
                }
                Op::PutTombstone { msg, reason, until } => {
                    b.put_cf(
                        cf_handle(db, Cf::Tombstones),
                        keys::message(msg),
                        filter::with_expiry(until, &json(&reason)),
                    );
                }
                Op::PutDedup { user, ack, until } => {
                    let k = keys::dedup(user, &ack.client_msg_id);
                    b.put_cf(
                        cf_handle(db, Cf::Dedup),
                        k,
                        filter::with_expiry(until, &json(&ack)),
                    );
                    overlay.dedup.insert(k, ack);
                }
                // The two indexes of deadlines change together: the global
                // one wakes conversations, the per-conversation one re-arms
                // an actor that (re)starts.
                Op::PutDeadline(d) => {
                    let none = filter::with_expiry(u64::MAX, &[]);
                    b.put_cf(cf_handle(db, Cf::Deadlines), keys::deadline(d), &none);
                    b.put_cf(
                        cf_handle(db, Cf::ConversationDeadlines),
                        keys::conversation_deadline(d),
                        &none,
                    );
                }
                Op::DeleteDeadline(d) => {
                    b.delete_cf(cf_handle(db, Cf::Deadlines), keys::deadline(d));
                    b.delete_cf(
                        cf_handle(db, Cf::ConversationDeadlines),
                        keys::conversation_deadline(d),
                    );
                }
                Op::PutReadState {
                    conv,
                    user,
                    up_to_seq,
                } => {
                    b.put_cf(
                        cf_handle(db, Cf::ReadStates),
                        keys::read_state(conv, user),
                        filter::with_expiry(u64::MAX, &up_to_seq.to_be_bytes()),
                    );
                }
                Op::Follow { follower, author } => {
                    let k = keys::follow(follower, author);
                    if !self.following(overlay, &k)? {
                        let none = filter::with_expiry(u64::MAX, &[]);
                        b.put_cf(cf_handle(db, Cf::Follows), k, &none);
                        b.put_cf(
                            cf_handle(db, Cf::Followers),
                            keys::follower(author, follower),
                            &none,
                        );
                        overlay.follows.insert(k, true);
                        self.count(b, overlay, author, 1, 0)?;
                        self.count(b, overlay, follower, 0, 1)?;
                    }
                }
                Op::Unfollow { follower, author } => {
                    let k = keys::follow(follower, author);
                    if self.following(overlay, &k)? {
                        b.delete_cf(cf_handle(db, Cf::Follows), k);
                        b.delete_cf(
                            cf_handle(db, Cf::Followers),
                            keys::follower(author, follower),
                        );
                        overlay.follows.insert(k, false);
                        self.count(b, overlay, author, -1, 0)?;
                        self.count(b, overlay, follower, 0, -1)?;
                    }
                    // The author's stories leave the follower's tray.
                    let start = keys::tray_ref(follower, author, ephemera_actors::ids::Id([0; 16]));
                    if let Some(end) = keys::prefix_end(&start[..32]) {
                        b.delete_range_cf(cf_handle(db, Cf::TrayRefs), &start[..], &end[..]);
                    }
                }
                Op::SetCloseFriend {
                    owner,
                    friend,
                    close,
                } => {
                    let k = keys::close_friend(owner, friend);
                    if close {
                        b.put_cf(
                            cf_handle(db, Cf::CloseFriends),
                            k,
                            filter::with_expiry(u64::MAX, &[]),
                        );
                    } else {
                        b.delete_cf(cf_handle(db, Cf::CloseFriends), k);
                    }
                }
                Op::PutStory(story) => {
                    let k = keys::story(story.id);
                    overlay.stories.insert(k, true);
                    let exp = story.expires_at;
                    b.put_cf(
                        cf_handle(db, Cf::Stories),
                        k,
                        filter::with_expiry(exp, &self.seal_story(&k, &story)?),
                    );
                    let by_author = keys::author_story(story.author, story.posted_at, story.id);
                    let audience = [super::stories::audience_byte(story.audience)];
                    b.put_cf(
                        cf_handle(db, Cf::AuthorStories),
                        by_author,
                        filter::with_expiry(exp, &audience),
                    );
                    // The fanout has not started: it resumes from here if
                    // the story's actor stops before it completes.
                    b.put_cf(
                        cf_handle(db, Cf::StoryFanout),
                        k,
                        filter::with_expiry(exp, &[0u8; 16]),
                    );
                    if !story.fanned_out {
                        b.put_cf(
                            cf_handle(db, Cf::Broadcasts),
                            by_author,
                            filter::with_expiry(exp, &audience),
                        );
                    }
                    b.put_cf(
                        cf_handle(db, Cf::StoryDeadlines),
                        keys::story_deadline(ephemera_actors::store::StoryDeadline {
                            at: exp,
                            story: story.id,
                        }),
                        filter::with_expiry(u64::MAX, &[]),
                    );
                }
                Op::DeleteStory { story, trays } => {
                    let k = keys::story(story.id);
                    overlay.stories.insert(k, false);
                    b.delete_cf(cf_handle(db, Cf::Stories), k);
                    b.delete_cf(cf_handle(db, Cf::StoryFanout), k);
                    let by_author = keys::author_story(story.author, story.posted_at, story.id);
                    b.delete_cf(cf_handle(db, Cf::AuthorStories), by_author);
                    b.delete_cf(cf_handle(db, Cf::Broadcasts), by_author);
                    b.delete_cf(
                        cf_handle(db, Cf::StoryDeadlines),
                        keys::story_deadline(ephemera_actors::store::StoryDeadline {
                            at: story.expires_at,
                            story: story.id,
                        }),
                    );
                    if let Some(end) = keys::prefix_end(&k) {
                        let start = keys::story_view(story.id, ephemera_actors::ids::Id([0; 16]));
                        b.delete_range_cf(cf_handle(db, Cf::StoryViews), &start[..], &end[..]);
                    }
                    for viewer in trays {
                        b.delete_cf(
                            cf_handle(db, Cf::TrayRefs),
                            keys::tray_ref(viewer, story.author, story.id),
                        );
                    }
                    // The data key dies with the story (now, for a deletion)
                    // and the media sweeper then deletes the blob.
                    if let Some(mut rec) = self.media_record(overlay, story.media.id.0)? {
                        rec.until = rec.until.min(now);
                        self.put_media(b, overlay, story.media.id.0, rec)?;
                    }
                }
                Op::DeleteStoryDeadline(d) => {
                    b.delete_cf(cf_handle(db, Cf::StoryDeadlines), keys::story_deadline(d));
                }
                Op::PutTrayRef {
                    viewer,
                    story,
                    told,
                } => {
                    b.put_cf(
                        cf_handle(db, Cf::TrayRefs),
                        keys::tray_ref(viewer, story.author, story.story),
                        filter::with_expiry(
                            story.expires_at + super::stories::TRAY_GRACE_MS,
                            &super::stories::tray_value(&story, told),
                        ),
                    );
                }
                Op::PutFanoutProgress { story, last, until } => {
                    let v = match last {
                        Some(u) => u.0.to_vec(),
                        None => Vec::new(),
                    };
                    b.put_cf(
                        cf_handle(db, Cf::StoryFanout),
                        keys::story(story),
                        filter::with_expiry(until, &v),
                    );
                }
                Op::PutStoryView {
                    story,
                    viewer,
                    at,
                    until,
                } => {
                    b.put_cf(
                        cf_handle(db, Cf::StoryViews),
                        keys::story_view(story, viewer),
                        filter::with_expiry(until, &at.to_be_bytes()),
                    );
                    b.put_cf(
                        cf_handle(db, Cf::Viewed),
                        keys::viewed(viewer, story),
                        filter::with_expiry(until, &[]),
                    );
                }
                Op::BindStoryMedia {
                    media,
                    story,
                    until,
                } => {
                    let mut rec = self
                        .media_record(overlay, media.0)?
                        .ok_or(StoreError::Corrupt("media"))?;
                    rec.story = Some(story);
                    rec.until = until;
                    self.put_media(b, overlay, media.0, rec)?;
                }
                Op::Notify {
                    user,
                    event,
                    except_device,
                } if self.outbound.is_some() => {
                    // Cluster mode: the user's cursor is the cluster's;
                    // the event waits here, durable, until Redis has it.
                    let seq = overlay.outbound.last().map_or(self.out_head, |e| e.seq) + 1;
                    let (record, until) = event.record(now);
                    let row = OutRow {
                        user,
                        record: record.clone(),
                        except_device,
                    };
                    b.put_cf(
                        cf_handle(db, Cf::Outbound),
                        seq.to_be_bytes(),
                        filter::with_expiry(until, &json(&row)),
                    );
                    overlay.outbound.push(OutEntry {
                        seq,
                        user,
                        record,
                        until,
                        event: Some(event),
                        except_device,
                    });
                }
                Op::Notify {
                    user,
                    event,
                    except_device,
                } => {
                    let cursor = self.head(overlay, user)? + 1;
                    overlay.heads.insert(user, cursor);
                    let (rec, until) = event.record(now);
                    b.put_cf(
                        cf_handle(db, Cf::Inbox),
                        keys::inbox(user, cursor),
                        filter::with_expiry(until, &json(&rec)),
                    );
                    out.push((
                        user,
                        Delivery {
                            cursor,
                            event,
                            except_device,
                        },
                    ));
                }
            }
        }
        Ok(())
    }

    fn commit_group(&mut self, jobs: &mut Vec<Job>) {
        let mut batch = WriteBatch::default();
        let mut overlay = Overlay::default();
        let mut deliveries = Vec::new();
        let mut outcomes: Vec<(Done, Result<(), CommitError>)> = Vec::with_capacity(jobs.len());
        let mut build_failed = false;
        for job in jobs.drain(..) {
            let Job { txn, done } = job;
            let verdict = txn.guards.iter().try_for_each(|g| self.check(&overlay, g));
            let verdict = verdict.and_then(|()| {
                self.apply(&mut batch, &mut overlay, txn, &mut deliveries)
                    .map_err(|e| {
                        tracing::error!(error = %e, "building a write batch failed");
                        build_failed = true;
                        CommitError::Failed
                    })
            });
            outcomes.push((done, verdict));
        }
        // Heads are persisted with the rows that use them, so a cursor is
        // never handed out twice, even after every inbox row has expired.
        for (user, head) in &overlay.heads {
            batch.put_cf(
                cf_handle(&self.db, Cf::Cursors),
                keys::cursor(*user),
                filter::with_expiry(u64::MAX, &head.to_be_bytes()),
            );
        }
        if let Some(last) = overlay.outbound.last() {
            batch.put_cf(
                cf_handle(&self.db, Cf::Cursors),
                OUTBOUND_HEAD,
                filter::with_expiry(u64::MAX, &last.seq.to_be_bytes()),
            );
        }
        #[cfg(feature = "faults")]
        let injected = self.faults.fail_this_batch();
        #[cfg(not(feature = "faults"))]
        let injected = false;
        let written = if build_failed {
            Err(None)
        } else if injected {
            tracing::warn!("injected fault: failing a write batch");
            Err(None)
        } else if batch.is_empty() {
            Ok(())
        } else {
            let mut wo = WriteOptions::default();
            wo.set_sync(self.sync);
            let started = std::time::Instant::now();
            let r = self.db.write_opt(batch, &wo).map_err(Some);
            self.metrics
                .write_batch_seconds
                .observe(started.elapsed().as_secs_f64());
            self.metrics.write_batch_size.observe(outcomes.len() as f64);
            r
        };
        if let Err(e) = written {
            if let Some(e) = e {
                tracing::error!(error = %e, "group commit failed");
            }
            // Nothing of this batch is durable: every transaction in it
            // fails, whatever its guards said. A guard's verdict may rest
            // on an earlier transaction of this very batch (a duplicate
            // `client_msg_id` answered with the first one's ack), and that
            // transaction is not stored: a failed write never acks.
            for (done, _) in outcomes {
                done(Err(CommitError::Failed));
            }
            return;
        }
        self.heads.extend(overlay.heads);
        for (done, r) in outcomes {
            done(r);
        }
        if let Some(out) = &self.outbound {
            if let Some(last) = overlay.outbound.last() {
                self.out_head = last.seq;
            }
            out.forward(overlay.outbound);
            return;
        }
        // Group per user, keeping cursor order.
        let mut by_user: HashMap<UserId, Vec<Delivery>> = HashMap::new();
        for (u, d) in deliveries {
            by_user.entry(u).or_default().push(d);
        }
        self.fanout.deliver(by_user.into_iter().collect());
    }
}
