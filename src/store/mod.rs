//! Storage on RocksDB (embedded): one column family per kind of row, typed
//! keys (`keys`), every value prefixed with its expiry and a compaction
//! filter that drops expired rows (`filter`), and a group-commit writer
//! (`writer`) through which every actor write goes; stories and the
//! social graph (`stories`); the key directory's public keys (`prekeys`).

pub mod filter;
pub mod keys;
pub mod prekeys;
pub mod stories;
pub mod writer;

use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};

use ephemera_actors::ids::{ConvId, DeviceId, MsgId, UserId};
use ephemera_actors::store::{
    now_ms, BurnReason, CommitError, ConvKind, ConversationRecord, Deadline, Done, EventRecord,
    Fanout, Millis, ReadError, Store, StoredMessage, StoryDeadline, StoryId, StoryRecord, Txn,
};
use rocksdb::{
    BlockBasedOptions, BottommostLevelCompaction, ColumnFamily, ColumnFamilyDescriptor,
    CompactOptions, Direction, IteratorMode, Options, WriteBatch, WriteOptions, DB,
};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::config::Durability;
use crate::keystore::KeyStore;

/// A message row as stored: the message without its body, and the body
/// sealed under its expiry bucket's key (base64), so the main database
/// never holds a plaintext body.
#[derive(Serialize, Deserialize)]
pub(crate) struct MessageRow {
    #[serde(flatten)]
    pub meta: StoredMessage,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sealed: Option<String>,
}

impl RocksStore {
    /// Decodes a message row and opens its body; `None` once the body's
    /// key is destroyed (the message is then gone for everyone).
    fn decode_message(
        &self,
        key: &[u8],
        payload: &[u8],
    ) -> Result<Option<StoredMessage>, StoreError> {
        let row: MessageRow =
            serde_json::from_slice(payload).map_err(|_| StoreError::Corrupt("messages"))?;
        let mut m = row.meta;
        if let Some(sealed) = row.sealed {
            use base64::Engine;
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(sealed)
                .map_err(|_| StoreError::Corrupt("messages"))?;
            match self.keys.open_body(key, &bytes) {
                Some(plain) => {
                    m.body = Some(
                        String::from_utf8(plain).map_err(|_| StoreError::Corrupt("messages"))?,
                    )
                }
                None => return Ok(None),
            }
        }
        Ok(Some(m))
    }
}

/// A storage failure. Details stay in the server log; clients only ever
/// see a generic `internal`/`unavailable`.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// RocksDB failed.
    #[error("rocksdb: {0}")]
    Rocks(#[from] rocksdb::Error),
    /// A stored value did not decode (corruption or a format change).
    #[error("undecodable {0} row")]
    Corrupt(&'static str),
    /// A unique row already exists.
    #[error("already exists")]
    Conflict,
    /// A column family the caller needs is not open.
    #[error("column family {0} is not open")]
    NotOpen(&'static str),
    /// Listing or reading the store's files failed.
    #[error("storage files: {0}")]
    Io(#[from] std::io::Error),
    /// The cluster's Redis, which holds accounts and logins in cluster
    /// mode, did not answer.
    #[error("{0}")]
    Shared(#[from] crate::cluster::RedisDown),
}

/// The column families, one per kind of row. Code names them through this
/// enum, never by string.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Cf {
    /// user id -> account (username, password hash).
    Accounts,
    /// username digest -> user id.
    Usernames,
    /// token digest -> token record (user, device, expiry).
    Tokens,
    /// conversation id -> membership record.
    Conversations,
    /// conversation id -> last seq handed out.
    Sequences,
    /// (user, conversation) -> () : a user's conversations.
    Memberships,
    /// (conversation, user) -> read position.
    ReadStates,
    /// (conversation, seq) -> message (the only rows with content).
    Messages,
    /// (conversation, seq) -> why it was burned.
    Tombstones,
    /// (conversation, seq, user) -> when they opened it.
    Views,
    /// media id -> media record (owner, type, size, binding, end of life).
    Media,
    /// (user, cursor) -> event reference.
    Inbox,
    /// (user, client_msg_id digest) -> first ack.
    Dedup,
    /// (at, conversation, seq) -> () : the deadline index.
    Deadlines,
    /// (conversation, at, seq) -> () : the same index by conversation,
    /// written and deleted with its twin in the same batch.
    ConversationDeadlines,
    /// user id -> last cursor handed out. Never expires: inbox rows do,
    /// and cursors must stay strictly increasing across restarts.
    Cursors,
    /// (follower, author) -> () : whom a user follows.
    Follows,
    /// (author, follower) -> () : an author's followers, written and
    /// deleted with its twin in `follows`.
    Followers,
    /// user id -> (followers, following), both exact.
    FollowCounts,
    /// (owner, friend) -> () : a user's close-friends list.
    CloseFriends,
    /// story id -> story (the only rows with a caption, sealed).
    Stories,
    /// (author, posted_at, story) -> audience : an author's stories.
    AuthorStories,
    /// (author, posted_at, story) -> audience : the stories not fanned
    /// out (their authors have too many followers), merged into trays at
    /// read time.
    Broadcasts,
    /// (viewer, author, story) -> posted_at, expires_at, audience, told :
    /// a tray reference; trays skip it from the story's end, which deletes
    /// it (the row itself is kept a day longer, for a late end to read).
    TrayRefs,
    /// (story, viewer) -> when they first opened it.
    StoryViews,
    /// (viewer, story) -> () : the stories a user has opened, so a tray
    /// reads them in one scan; expires with the story.
    Viewed,
    /// (at, story) -> () : stories' ends, which wake passivated actors.
    StoryDeadlines,
    /// story id -> the last follower its fanout reached (empty: done).
    StoryFanout,
    /// highlight id -> highlight (caption sealed under its own media key).
    /// Outlives stories: the TTL filter is not installed here.
    Highlights,
    /// (author, created_at, highlight) -> () : an author's highlights.
    AuthorHighlights,
    /// (conversation, seq, user) -> emoji, sealed like a body: reactions
    /// (PROTOCOL 11). Expire with their message and are deleted with it.
    Reactions,
    /// (user, device) -> identity key and signed prekey (public keys,
    /// PROTOCOL 12); deleted when the device logs out.
    DeviceKeys,
    /// (user, device, key_id) -> a one-time prekey (public), deleted when
    /// claimed or when the device logs out.
    Prekeys,
    /// Cluster mode: outbound seq -> an inbox event committed here and not
    /// yet in Redis (references only; deleted once Redis has it).
    Outbound,
}

impl Cf {
    /// Every column family, in the order they are opened.
    pub const ALL: [Cf; 34] = [
        Cf::Accounts,
        Cf::Usernames,
        Cf::Tokens,
        Cf::Conversations,
        Cf::Sequences,
        Cf::Memberships,
        Cf::ReadStates,
        Cf::Messages,
        Cf::Tombstones,
        Cf::Views,
        Cf::Media,
        Cf::Inbox,
        Cf::Dedup,
        Cf::Deadlines,
        Cf::ConversationDeadlines,
        Cf::Cursors,
        Cf::Follows,
        Cf::Followers,
        Cf::FollowCounts,
        Cf::CloseFriends,
        Cf::Stories,
        Cf::AuthorStories,
        Cf::Broadcasts,
        Cf::TrayRefs,
        Cf::StoryViews,
        Cf::Viewed,
        Cf::StoryDeadlines,
        Cf::StoryFanout,
        Cf::Highlights,
        Cf::AuthorHighlights,
        Cf::Reactions,
        Cf::DeviceKeys,
        Cf::Prekeys,
        Cf::Outbound,
    ];

    /// The name on disk.
    pub const fn name(self) -> &'static str {
        match self {
            Cf::Accounts => "accounts",
            Cf::Usernames => "usernames",
            Cf::Tokens => "tokens",
            Cf::Conversations => "conversations",
            Cf::Sequences => "sequences",
            Cf::Memberships => "memberships",
            Cf::ReadStates => "read_states",
            Cf::Messages => "messages",
            Cf::Tombstones => "tombstones",
            Cf::Views => "views",
            Cf::Media => "media",
            Cf::Inbox => "inbox",
            Cf::Dedup => "dedup",
            Cf::Deadlines => "deadlines",
            Cf::ConversationDeadlines => "conversation_deadlines",
            Cf::Cursors => "cursors",
            Cf::Follows => "follows",
            Cf::Followers => "followers",
            Cf::FollowCounts => "follow_counts",
            Cf::CloseFriends => "close_friends",
            Cf::Stories => "stories",
            Cf::AuthorStories => "author_stories",
            Cf::Broadcasts => "broadcasts",
            Cf::TrayRefs => "tray_refs",
            Cf::StoryViews => "story_views",
            Cf::Viewed => "viewed",
            Cf::StoryDeadlines => "story_deadlines",
            Cf::StoryFanout => "story_fanout",
            Cf::Highlights => "highlights",
            Cf::AuthorHighlights => "author_highlights",
            Cf::Reactions => "reactions",
            Cf::DeviceKeys => "device_keys",
            Cf::Prekeys => "prekeys",
            Cf::Outbound => "outbound",
        }
    }

    /// Whether the TTL compaction filter runs on this family: everywhere
    /// but on highlights, which live until their author deletes them.
    pub const fn expires(self) -> bool {
        !matches!(self, Cf::Highlights | Cf::AuthorHighlights)
    }
}

/// An account as stored.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AccountRecord {
    /// Its id.
    pub user_id: UserId,
    /// The login name.
    pub username: String,
    /// PBKDF2 salt.
    pub salt: Vec<u8>,
    /// PBKDF2-HMAC-SHA256 output.
    pub hash: Vec<u8>,
    /// PBKDF2 iterations used for `hash`.
    pub iterations: u32,
    /// When it was created.
    pub created_at: u64,
}

/// A media object, from its upload URL until its blob is deleted. Its row
/// never expires by itself (`u64::MAX` header): the media sweeper deletes
/// it after deleting the blob, so a blob does not outlive its record. One
/// that does anyway (a `PUT` racing that deletion, or a late `PUT` an
/// external S3 cannot refuse) is an orphan, and the sweep's walk of the
/// bucket deletes it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MediaRecord {
    /// Who uploaded it.
    pub owner: UserId,
    /// Declared type.
    pub content_type: String,
    /// Declared size: the exact size of the stored object, the sealed file
    /// (plaintext + 28; PROTOCOL 4). The `put_url` signs it.
    pub bytes: u64,
    /// When the upload URL was minted.
    pub created_at: u64,
    /// The message that uses it, once sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bound: Option<MsgId>,
    /// The story (or highlight) that uses it, once posted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub story: Option<ephemera_actors::ids::Id>,
    /// When its key and blob go.
    pub until: u64,
}

impl MediaRecord {
    /// Whether a message or story uses it (a media object serves one only).
    pub fn is_bound(&self) -> bool {
        self.bound.is_some() || self.story.is_some()
    }
}

/// A login (one device), stored under the digest of its token.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TokenRecord {
    /// The user.
    pub user_id: UserId,
    /// The device this login is.
    pub device_id: DeviceId,
    /// When the token stops working.
    pub expires_at: u64,
    /// The device's name as the client gave it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_name: Option<String>,
}

/// The RocksDB store.
pub struct RocksStore {
    db: Arc<DB>,
    keys: Arc<KeyStore>,
    write_opts: WriteOptions,
    writer: OnceLock<mpsc::Sender<writer::Job>>,
    /// The writer thread, joined when the store is dropped.
    writer_thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Serialises account creation (username uniqueness).
    accounts_lock: Mutex<()>,
    /// Serialise writes and claims of a user's public keys (by user).
    prekey_locks: [Mutex<()>; prekeys::LOCKS],
    /// Usernames already read (they never change), for trays.
    names: std::sync::RwLock<std::collections::HashMap<UserId, Arc<str>>>,
    durability: Durability,
    /// In cluster mode: where accounts and logins live (Redis), and the
    /// lease without which this node must not write.
    cluster: OnceLock<Arc<crate::cluster::Cluster>>,
    /// Test-only: failures the writer injects on request.
    #[cfg(feature = "faults")]
    pub writer_faults: Arc<writer::WriterFaults>,
}

impl Drop for RocksStore {
    /// Closes the writer's queue and waits for the writer to finish what
    /// it holds and let go of the database, so the database closes here
    /// and not on a thread racing the process's exit (RocksDB aborts when
    /// its mutexes are torn down under a closing database).
    fn drop(&mut self) {
        drop(self.writer.take());
        let thread = self
            .writer_thread
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(t) = thread {
            if t.thread().id() != std::thread::current().id() {
                let _ = t.join();
            }
        }
    }
}

/// Bound of the writer's queue; past it, writes are refused with
/// `unavailable` instead of piling up.
const WRITER_QUEUE: usize = 65_536;

/// Memtable size per column family.
const WRITE_BUFFER_BYTES: usize = 4 << 20;

fn cf_options(cf: Cf, periodic_compaction: u64) -> Options {
    let mut o = Options::default();
    if cf.expires() {
        o.set_compaction_filter(filter::NAME, filter::filter);
        // Every file passes through the filter within this period, so
        // expired rows cannot sit forever in a file that nothing else
        // compacts.
        o.set_periodic_compaction_seconds(periodic_compaction);
    }
    // Small memtables: every message inserts six keys, and a skiplist
    // search through a 64 MiB memtable (the default) is a chain of cache
    // misses; at 4 MiB the writer thread spent about a tenth less CPU per
    // message under load, for more (cheap) flushes.
    o.set_write_buffer_size(WRITE_BUFFER_BYTES);
    if matches!(
        cf,
        Cf::Dedup | Cf::Tokens | Cf::Messages | Cf::StoryViews | Cf::CloseFriends
    ) {
        // Point lookups (dedup on every send) mostly miss: a bloom filter
        // answers those without touching data blocks.
        let mut t = BlockBasedOptions::default();
        t.set_bloom_filter(10.0, false);
        o.set_block_based_table_factory(&t);
        // And in the memtables: the writer's dedup lookup on every send
        // (6 % of server CPU in a perf profile) mostly misses, and a miss
        // then skips the skiplist searches. The end-to-end gain was within
        // run-to-run noise (158 -> 153 us of server CPU per message).
        o.set_memtable_prefix_bloom_ratio(0.1);
        o.set_memtable_whole_key_filtering(true);
    }
    o
}

/// Deleted content must not survive in recycled or archived WALs: no WAL
/// recycling, and no archive (DESIGN.md "Storage"). For every instance that
/// holds content.
pub fn no_wal_leftovers(opts: &mut Options) {
    opts.set_recycle_log_file_num(0);
    opts.set_wal_ttl_seconds(0);
    opts.set_wal_size_limit_mb(0);
}

/// Opens (or creates) the database in `dir` with every column family and
/// its options: the server's store, and `ephemera restore` writing a new one.
pub fn open_db(dir: &Path, periodic_compaction_seconds: u64) -> Result<DB, StoreError> {
    let mut opts = Options::default();
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    no_wal_leftovers(&mut opts);
    // A quiet column family cannot pin an old WAL (and its bytes) for long.
    opts.set_max_total_wal_size(64 << 20);
    opts.set_keep_log_file_num(4);
    opts.increase_parallelism(2);
    // Table files held open are bounded: descriptors are shared with
    // the sockets (see `fds`).
    opts.set_max_open_files(crate::fds::DB_OPEN_FILES);
    let cfs = Cf::ALL.iter().map(|cf| {
        ColumnFamilyDescriptor::new(cf.name(), cf_options(*cf, periodic_compaction_seconds))
    });
    Ok(DB::open_cf_descriptors(&opts, dir, cfs)?)
}

impl RocksStore {
    /// Opens (or creates) the database in `dir`.
    pub fn open(
        dir: &Path,
        keys: Arc<KeyStore>,
        durability: Durability,
        periodic_compaction_seconds: u64,
    ) -> Result<Self, StoreError> {
        let db = open_db(dir, periodic_compaction_seconds)?;
        let mut write_opts = WriteOptions::default();
        write_opts.set_sync(durability == Durability::Fsync);
        Ok(RocksStore {
            db: Arc::new(db),
            keys,
            write_opts,
            writer: OnceLock::new(),
            accounts_lock: Mutex::new(()),
            prekey_locks: Default::default(),
            names: Default::default(),
            writer_thread: Mutex::new(None),
            durability,
            cluster: OnceLock::new(),
            #[cfg(feature = "faults")]
            writer_faults: Default::default(),
        })
    }

    /// Starts the group-commit writer, which hands committed events to
    /// `fanout`, or in cluster mode to `outbound`.
    pub fn start_writer(
        &self,
        fanout: Arc<dyn Fanout>,
        outbound: Option<Arc<dyn writer::Outbound>>,
        metrics: Arc<ephemera_actors::metrics::Metrics>,
    ) -> Result<(), StoreError> {
        let outbound = match outbound {
            None => None,
            Some(o) => Some((o, self.outbound_head()?)),
        };
        let (tx, rx) = mpsc::channel(WRITER_QUEUE);
        let db = Arc::clone(&self.db);
        let thread = writer::spawn(
            db,
            Arc::clone(&self.keys),
            rx,
            fanout,
            outbound,
            metrics,
            self.durability == Durability::Fsync,
            #[cfg(feature = "faults")]
            Arc::clone(&self.writer_faults),
        );
        let _ = self.writer.set(tx);
        *self.writer_thread.lock().unwrap_or_else(|p| p.into_inner()) = Some(thread);
        Ok(())
    }

    /// The last outbound seq handed out: the persisted head, or the last
    /// row still queued if that is higher.
    pub fn outbound_head(&self) -> Result<u64, StoreError> {
        let head = self
            .db
            .get_pinned_cf(self.cf(Cf::Cursors), writer::OUTBOUND_HEAD)?
            .and_then(|v| filter::split(&v).and_then(|(_, p)| p.try_into().ok()))
            .map(u64::from_be_bytes)
            .unwrap_or(0);
        let last = self
            .db
            .iterator_cf(self.cf(Cf::Outbound), rocksdb::IteratorMode::End)
            .next()
            .transpose()?
            .and_then(|(k, _)| (*k).try_into().ok())
            .map(u64::from_be_bytes)
            .unwrap_or(0);
        Ok(head.max(last))
    }

    /// Cluster mode: the inbox events committed here and not yet in Redis,
    /// oldest first (after a restart, or while Redis was away).
    pub fn outbound_pending(
        &self,
        limit: usize,
    ) -> Result<Vec<(u64, u64, writer::OutRow)>, StoreError> {
        let mut out = Vec::new();
        for item in self
            .db
            .iterator_cf(self.cf(Cf::Outbound), rocksdb::IteratorMode::Start)
        {
            let (k, v) = item?;
            let seq = (*k)
                .try_into()
                .map(u64::from_be_bytes)
                .map_err(|_| StoreError::Corrupt("outbound"))?;
            let Some((until, p)) = filter::split(&v) else {
                continue;
            };
            let row: writer::OutRow =
                serde_json::from_slice(p).map_err(|_| StoreError::Corrupt("outbound"))?;
            out.push((seq, until, row));
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    /// Cluster mode: Redis has every outbound event up to `seq`.
    pub fn outbound_done(&self, seq: u64) -> Result<(), StoreError> {
        self.db.delete_range_cf_opt(
            self.cf(Cf::Outbound),
            0u64.to_be_bytes(),
            (seq + 1).to_be_bytes(),
            &self.write_opts,
        )?;
        Ok(())
    }

    /// Joins a cluster: accounts and logins are Redis's from now on, and
    /// transactions are refused while the node does not hold its lease.
    pub fn join_cluster(&self, cluster: Arc<crate::cluster::Cluster>) {
        let _ = self.cluster.set(cluster);
    }

    /// Cluster mode: the bus and the node that owns `conv`, when that is
    /// another node (its rows are there, not here).
    #[allow(clippy::type_complexity)]
    fn remote_owner(
        &self,
        conv: ConvId,
    ) -> Result<Option<(&Arc<crate::cluster::bus::Bus>, Arc<str>)>, ReadError> {
        let Some(bus) = self.cluster.get().and_then(|c| c.bus()) else {
            return Ok(None);
        };
        let owner = read(bus.remote_owner_blocking(conv).map_err(StoreError::from))?;
        Ok(owner.map(|node| (bus, node)))
    }

    /// A message row of this node, expired or not (the caller decides, and
    /// burns the expired ones).
    pub fn local_message(&self, id: MsgId) -> Result<Option<StoredMessage>, StoreError> {
        let Some(v) = self
            .db
            .get_pinned_cf(self.cf(Cf::Messages), keys::message(id))?
        else {
            return Ok(None);
        };
        let (_, p) = filter::split(&v).ok_or(StoreError::Corrupt("messages"))?;
        self.decode_message(&keys::message(id), p)
    }

    /// Why a message of this node is gone, if it burned.
    pub fn local_tombstone(&self, id: MsgId) -> Result<Option<BurnReason>, StoreError> {
        self.get_json(Cf::Tombstones, &keys::message(id))
    }

    /// A reaction stored on this node (`None` once its key is gone).
    pub fn local_reaction(&self, msg: MsgId, by: UserId) -> Result<Option<String>, StoreError> {
        let k = keys::reaction(msg, by);
        self.get_live(Cf::Reactions, &k).and_then(|v| {
            // A key already destroyed opens nothing: the reaction is gone.
            v.and_then(|sealed| self.keys.open_body(&k, &sealed))
                .map(|plain| String::from_utf8(plain).map_err(|_| StoreError::Corrupt("reactions")))
                .transpose()
        })
    }

    /// A conversation's record on this node.
    pub fn local_conversation(&self, id: ConvId) -> Result<Option<ConversationRecord>, StoreError> {
        self.get_json(Cf::Conversations, &keys::conversation(id))
    }

    /// Whether `user` is a member of a conversation of this node.
    pub fn local_is_member(&self, user: UserId, conv: ConvId) -> Result<bool, StoreError> {
        self.get_live(Cf::Memberships, &keys::membership(user, conv))
            .map(|v| v.is_some())
    }

    /// The conversations of `user` that this node holds.
    pub fn local_user_conversations(&self, user: UserId) -> Result<Vec<ConvId>, StoreError> {
        let mut out = Vec::new();
        let from = keys::membership(user, ephemera_actors::ids::Id([0; 16]));
        self.scan_prefix(Cf::Memberships, &from, 16, usize::MAX, |k, _| {
            out.push(keys::id_at(k, 16));
            Ok(Step::Take)
        })?;
        Ok(out)
    }

    /// Cluster mode: this node in the cluster.
    pub fn cluster(&self) -> Option<&Arc<crate::cluster::Cluster>> {
        self.cluster.get()
    }

    /// Cluster mode: the cross-node side.
    pub fn cluster_bus(&self) -> Option<Arc<crate::cluster::bus::Bus>> {
        self.cluster.get().and_then(|c| c.bus().cloned())
    }

    /// The account of a user, from wherever accounts live.
    pub fn account(&self, user: UserId) -> Result<Option<AccountRecord>, StoreError> {
        match self.cluster.get() {
            Some(c) => Ok(c.account(user)?),
            None => self.get_json(Cf::Accounts, &keys::account(user)),
        }
    }

    fn cf(&self, cf: Cf) -> &ColumnFamily {
        cf_handle(&self.db, cf)
    }

    /// A value's payload if the row exists and has not expired.
    fn get_live(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let Some(v) = self.db.get_pinned_cf(self.cf(cf), key)? else {
            return Ok(None);
        };
        match filter::split(&v) {
            Some((exp, payload)) if exp > now_ms() => Ok(Some(payload.to_vec())),
            Some(_) => Ok(None),
            None => Err(StoreError::Corrupt(cf.name())),
        }
    }

    fn get_json<T: for<'de> Deserialize<'de>>(
        &self,
        cf: Cf,
        key: &[u8],
    ) -> Result<Option<T>, StoreError> {
        match self.get_live(cf, key)? {
            Some(p) => serde_json::from_slice(&p)
                .map(Some)
                .map_err(|_| StoreError::Corrupt(cf.name())),
            None => Ok(None),
        }
    }

    /// Creates an account; `Conflict` if the username is taken.
    pub fn create_account(&self, rec: &AccountRecord) -> Result<(), StoreError> {
        if let Some(c) = self.cluster.get() {
            return match c.create_account(rec)? {
                true => Ok(()),
                false => Err(StoreError::Conflict),
            };
        }
        let _guard = self.accounts_lock.lock().unwrap_or_else(|p| p.into_inner());
        let uk = keys::username(&rec.username);
        if self.get_live(Cf::Usernames, &uk)?.is_some() {
            return Err(StoreError::Conflict);
        }
        let mut b = WriteBatch::default();
        b.put_cf(
            self.cf(Cf::Usernames),
            uk,
            filter::with_expiry(u64::MAX, &rec.user_id.0),
        );
        b.put_cf(
            self.cf(Cf::Accounts),
            keys::account(rec.user_id),
            filter::with_expiry(u64::MAX, &json(rec)),
        );
        self.db.write_opt(b, &self.write_opts)?;
        Ok(())
    }

    /// The account with this username.
    pub fn account_by_username(&self, name: &str) -> Result<Option<AccountRecord>, StoreError> {
        if let Some(c) = self.cluster.get() {
            return Ok(c.account_by_username(name)?);
        }
        let Some(id) = self.get_live(Cf::Usernames, &keys::username(name))? else {
            return Ok(None);
        };
        if id.len() != 16 {
            return Err(StoreError::Corrupt("usernames"));
        }
        self.get_json(Cf::Accounts, &id)
    }

    /// Stores a login under the digest of its token.
    pub fn put_token(&self, token: &str, rec: &TokenRecord) -> Result<(), StoreError> {
        if let Some(c) = self.cluster.get() {
            return Ok(c.put_token(token, rec)?);
        }
        let v = filter::with_expiry(rec.expires_at, &json(rec));
        self.db
            .put_cf_opt(self.cf(Cf::Tokens), keys::token(token), v, &self.write_opts)?;
        Ok(())
    }

    /// The live login of a token.
    pub fn token(&self, token: &str) -> Result<Option<TokenRecord>, StoreError> {
        if let Some(c) = self.cluster.get() {
            return Ok(c.token(token)?);
        }
        self.get_json(Cf::Tokens, &keys::token(token))
    }

    /// A media record.
    pub fn media(&self, id: ephemera_actors::ids::Id) -> Result<Option<MediaRecord>, StoreError> {
        self.get_json(Cf::Media, &id.0)
    }

    /// Writes a media record directly (minting, shortening its life).
    pub fn put_media(
        &self,
        id: ephemera_actors::ids::Id,
        rec: &MediaRecord,
    ) -> Result<(), StoreError> {
        let v = filter::with_expiry(u64::MAX, &json(rec));
        self.db
            .put_cf_opt(self.cf(Cf::Media), id.0, v, &self.write_opts)?;
        Ok(())
    }

    /// Deletes a media record (after its blob is gone).
    pub fn delete_media(&self, id: ephemera_actors::ids::Id) -> Result<(), StoreError> {
        self.db
            .delete_cf_opt(self.cf(Cf::Media), id.0, &self.write_opts)?;
        Ok(())
    }

    /// How many deadlines are more than `grace_ms` past due (burns not yet
    /// committed), counting at most `limit`.
    pub fn overdue_deadlines(
        &self,
        now: u64,
        grace_ms: u64,
        limit: usize,
    ) -> Result<usize, StoreError> {
        let mut n = 0;
        for item in self
            .db
            .iterator_cf(self.cf(Cf::Deadlines), IteratorMode::Start)
        {
            let (k, _) = item?;
            match keys::decode_deadline(&k) {
                Some(d) if d.at + grace_ms < now && n < limit => n += 1,
                _ => break,
            }
        }
        Ok(n)
    }

    /// Every media record (a scan: for counting pending uploads at start).
    pub fn media_records(
        &self,
    ) -> Result<Vec<(ephemera_actors::ids::Id, MediaRecord)>, StoreError> {
        let mut out = Vec::new();
        for item in self.db.iterator_cf(self.cf(Cf::Media), IteratorMode::Start) {
            let (k, v) = item?;
            let Some((_, p)) = filter::split(&v) else {
                continue;
            };
            let Ok(rec) = serde_json::from_slice::<MediaRecord>(p) else {
                continue;
            };
            if k.len() == 16 {
                out.push((keys::id_at(&k, 0), rec));
            }
        }
        Ok(out)
    }

    /// Media records whose life is over.
    pub fn media_due(
        &self,
        now: u64,
        limit: usize,
    ) -> Result<Vec<ephemera_actors::ids::Id>, StoreError> {
        let mut out = Vec::new();
        for item in self.db.iterator_cf(self.cf(Cf::Media), IteratorMode::Start) {
            let (k, v) = item?;
            let Some((_, p)) = filter::split(&v) else {
                continue;
            };
            let Ok(rec) = serde_json::from_slice::<MediaRecord>(p) else {
                continue;
            };
            if rec.until <= now && k.len() == 16 {
                out.push(keys::id_at(&k, 0));
                if out.len() >= limit {
                    break;
                }
            }
        }
        Ok(out)
    }

    /// Revokes a token at once.
    pub fn delete_token(&self, token: &str) -> Result<(), StoreError> {
        if let Some(c) = self.cluster.get() {
            return Ok(c.delete_token(token)?);
        }
        self.db
            .delete_cf_opt(self.cf(Cf::Tokens), keys::token(token), &self.write_opts)?;
        Ok(())
    }

    /// Waits until every transaction queued so far is durable, then flushes
    /// the memtables: the last step of a graceful shutdown.
    pub async fn shutdown(&self) -> Result<(), StoreError> {
        // The writer answers in queue order: once this empty transaction is
        // answered, everything queued before it has been written.
        let _ = ephemera_actors::store::commit(self, Txn::default()).await;
        self.flush_all()
    }

    /// Flushes every column family (memtables to SST) and syncs the WAL:
    /// once every family with data in a WAL file has flushed, the file is
    /// deleted, and with it what it kept of deleted rows.
    pub fn flush_all(&self) -> Result<(), StoreError> {
        let cfs: Vec<&ColumnFamily> = Cf::ALL.iter().map(|c| self.cf(*c)).collect();
        self.db
            .flush_cfs_opt(&cfs, &rocksdb::FlushOptions::default())?;
        self.db.flush_wal(true)?;
        Ok(())
    }

    /// Compacts each of `families` over its full range, forcing the
    /// bottommost level through the TTL filter too: expired rows, deleted
    /// rows and their deletion markers leave the files.
    pub fn compact(&self, families: &[Cf]) {
        let mut co = CompactOptions::default();
        co.set_bottommost_level_compaction(BottommostLevelCompaction::Force);
        co.set_exclusive_manual_compaction(true);
        for cf in families {
            self.db
                .compact_range_cf_opt(self.cf(*cf), None::<&[u8]>, None::<&[u8]>, &co);
        }
    }

    /// Flushes every column family and compacts every one now.
    pub fn flush_and_compact(&self) -> Result<(), StoreError> {
        self.flush_all()?;
        self.compact(&Cf::ALL);
        Ok(())
    }

    /// The database's census (see [`crate::deletion`]) at `now`.
    pub fn census(&self, now: u64) -> Result<crate::deletion::DbCensus, StoreError> {
        census_of(&self.db, now)
    }

    /// Media objects whose life is over and whose blob is not yet
    /// deleted: how many, and when the first of them ended.
    pub fn media_pending(&self, now: u64) -> Result<(usize, Option<u64>), StoreError> {
        let mut n = 0;
        let mut first: Option<u64> = None;
        for item in self.db.iterator_cf(self.cf(Cf::Media), IteratorMode::Start) {
            let (_, v) = item?;
            let Some((_, p)) = filter::split(&v) else {
                continue;
            };
            if let Ok(rec) = serde_json::from_slice::<MediaRecord>(p) {
                if rec.until <= now {
                    n += 1;
                    first = Some(first.map_or(rec.until, |f| f.min(rec.until)));
                }
            }
        }
        Ok((n, first))
    }
}

/// The census (see [`crate::deletion`]) at `now` of a main database with
/// every column family open: the server's own, or `verify-deletion`'s
/// secondary instance. Rows are judged by their expiry header in the
/// families the TTL filter runs on.
pub fn census_of(db: &DB, now: u64) -> Result<crate::deletion::DbCensus, StoreError> {
    let names: Vec<&str> = Cf::ALL.iter().map(|c| c.name()).collect();
    let expiring = |name: &str| Cf::ALL.iter().any(|c| c.name() == name && c.expires());
    crate::deletion::census(db, db.path(), &names, expiring, now)
}

/// The byte a membership row holds: which kind of conversation it is.
fn membership_kind(kind: ConvKind) -> u8 {
    match kind {
        ConvKind::Direct => 0,
        ConvKind::Group => 1,
    }
}

fn cf_handle(db: &DB, cf: Cf) -> &ColumnFamily {
    // Every family in `Cf::ALL` is opened (created if missing) in `open`.
    db.cf_handle(cf.name())
        .expect("column family opened at start")
}

fn json<T: Serialize>(v: &T) -> Vec<u8> {
    // Our records are plain structs of strings, numbers and ids.
    serde_json::to_vec(v).expect("records always serialise")
}

fn read<T>(r: Result<T, StoreError>) -> Result<T, ReadError> {
    r.map_err(|e| {
        tracing::error!(error = %e, "storage read failed");
        ReadError
    })
}

/// What a prefix scan does with the row it just read.
enum Step {
    /// Counted towards the limit.
    Take,
    /// Not counted.
    Skip,
    /// The scan is over.
    Stop,
}

impl RocksStore {
    fn scan_prefix(
        &self,
        cf: Cf,
        from: &[u8],
        prefix_len: usize,
        limit: usize,
        mut each: impl FnMut(&[u8], &[u8]) -> Result<Step, StoreError>,
    ) -> Result<(), StoreError> {
        let mut n = 0;
        for item in self
            .db
            .iterator_cf(self.cf(cf), IteratorMode::From(from, Direction::Forward))
        {
            let (k, v) = item?;
            if k.len() < prefix_len || k[..prefix_len] != from[..prefix_len] || n >= limit {
                break;
            }
            match each(&k, &v)? {
                Step::Take => n += 1,
                Step::Skip => {}
                Step::Stop => break,
            }
        }
        Ok(())
    }
}

impl Store for RocksStore {
    fn user_exists(&self, user: UserId) -> Result<bool, ReadError> {
        if let Some(c) = self.cluster.get() {
            return read(c.user_exists(user).map_err(StoreError::from));
        }
        read(
            self.get_live(Cf::Accounts, &keys::account(user))
                .map(|v| v.is_some()),
        )
    }

    fn conversation(&self, id: ConvId) -> Result<Option<ConversationRecord>, ReadError> {
        if let Some((bus, node)) = self.remote_owner(id)? {
            return read(bus.remote_conversation(node, id).map_err(StoreError::from));
        }
        read(self.local_conversation(id))
    }

    fn last_seq(&self, id: ConvId) -> Result<u64, ReadError> {
        read(
            self.get_live(Cf::Sequences, &keys::conversation(id))
                .and_then(|v| match v {
                    None => Ok(0),
                    Some(b) => b
                        .try_into()
                        .map(u64::from_be_bytes)
                        .map_err(|_| StoreError::Corrupt("sequences")),
                }),
        )
    }

    fn message(&self, id: MsgId) -> Result<Option<StoredMessage>, ReadError> {
        if let Some((bus, node)) = self.remote_owner(id.conv)? {
            return read(bus.remote_message(node, id).map_err(StoreError::from));
        }
        read(self.local_message(id))
    }

    fn tombstone(&self, id: MsgId) -> Result<Option<BurnReason>, ReadError> {
        if let Some((bus, node)) = self.remote_owner(id.conv)? {
            return read(bus.remote_tombstone(node, id).map_err(StoreError::from));
        }
        read(self.local_tombstone(id))
    }

    fn messages_after(
        &self,
        conv: ConvId,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<StoredMessage>, ReadError> {
        let mut out = Vec::new();
        let from = keys::message(MsgId {
            conv,
            seq: after_seq.saturating_add(1),
        });
        read(self.scan_prefix(Cf::Messages, &from, 16, limit, |k, v| {
            let (_, p) = filter::split(v).ok_or(StoreError::Corrupt("messages"))?;
            match self.decode_message(k, p)? {
                Some(m) => {
                    out.push(m);
                    Ok(Step::Take)
                }
                None => Ok(Step::Skip),
            }
        }))?;
        Ok(out)
    }

    fn inbox_after(
        &self,
        user: UserId,
        after: u64,
        limit: usize,
    ) -> Result<Vec<(u64, EventRecord)>, ReadError> {
        if let Some(bus) = self.cluster.get().and_then(|c| c.bus()) {
            return read(
                bus.inbox_after(user, after, limit)
                    .map_err(StoreError::from),
            );
        }
        let mut out = Vec::new();
        let now = now_ms();
        let from = keys::inbox(user, after.saturating_add(1));
        read(self.scan_prefix(Cf::Inbox, &from, 16, limit, |k, v| {
            let cursor = keys::decode_inbox_cursor(k).ok_or(StoreError::Corrupt("inbox"))?;
            let (exp, p) = filter::split(v).ok_or(StoreError::Corrupt("inbox"))?;
            let rec: EventRecord =
                serde_json::from_slice(p).map_err(|_| StoreError::Corrupt("inbox"))?;
            // A message reference outlives nothing (its expiry is the
            // message's) but is still returned so sync can say it burned;
            // other events past their retention are skipped.
            if exp <= now && !matches!(rec, EventRecord::Message { .. }) {
                return Ok(Step::Skip);
            }
            out.push((cursor, rec));
            Ok(Step::Take)
        }))?;
        Ok(out)
    }

    fn user_conversations(&self, user: UserId) -> Result<Vec<ConvId>, ReadError> {
        let mut out = read(self.local_user_conversations(user))?;
        // Cluster mode: and those the other nodes own.
        if let Some(bus) = self.cluster.get().and_then(|c| c.bus()) {
            out.extend(bus.remote_memberships(user));
            out.sort();
            out.dedup();
        }
        Ok(out)
    }

    fn is_member(&self, user: UserId, conv: ConvId) -> Result<bool, ReadError> {
        // This node's rows only: actors ask it from their own threads,
        // where a call to another node cannot wait (it is for conversations
        // this node owns).
        read(self.local_is_member(user, conv))
    }

    fn group_count(&self, user: UserId, stop_at: usize) -> Result<usize, ReadError> {
        let mut n = 0;
        let from = keys::membership(user, ephemera_actors::ids::Id([0; 16]));
        read(
            self.scan_prefix(Cf::Memberships, &from, 16, usize::MAX, |k, v| {
                if n >= stop_at {
                    return Ok(Step::Stop);
                }
                let (_, kind) = filter::split(v).ok_or(StoreError::Corrupt("memberships"))?;
                let group = match kind {
                    [k] => *k == membership_kind(ConvKind::Group),
                    // Written before rows carried their kind: ask the record.
                    _ => self
                        .get_json::<ConversationRecord>(
                            Cf::Conversations,
                            &keys::conversation(keys::id_at(k, 16)),
                        )?
                        .is_some_and(|r| r.kind == ConvKind::Group),
                };
                if group {
                    n += 1;
                }
                Ok(Step::Take)
            }),
        )?;
        Ok(n)
    }

    fn reaction(&self, msg: MsgId, by: UserId) -> Result<Option<String>, ReadError> {
        if let Some((bus, node)) = self.remote_owner(msg.conv)? {
            return read(bus.remote_reaction(node, msg, by).map_err(StoreError::from));
        }
        read(self.local_reaction(msg, by))
    }

    fn viewers(&self, msg: MsgId) -> Result<Vec<UserId>, ReadError> {
        let mut out = Vec::new();
        let from = keys::view(msg, ephemera_actors::ids::Id([0; 16]));
        read(self.scan_prefix(Cf::Views, &from, 24, usize::MAX, |k, _| {
            out.push(keys::id_at(k, 24));
            Ok(Step::Take)
        }))?;
        Ok(out)
    }

    fn read_state(&self, conv: ConvId, user: UserId) -> Result<u64, ReadError> {
        read(
            self.get_live(Cf::ReadStates, &keys::read_state(conv, user))
                .and_then(|v| match v {
                    None => Ok(0),
                    Some(b) => b
                        .try_into()
                        .map(u64::from_be_bytes)
                        .map_err(|_| StoreError::Corrupt("read_states")),
                }),
        )
    }

    fn deadlines(
        &self,
        after: Option<Deadline>,
        until: u64,
        limit: usize,
    ) -> Result<Vec<Deadline>, ReadError> {
        let mut out = Vec::new();
        let start = after.map(keys::deadline).unwrap_or([0u8; 32]);
        read((|| {
            for item in self.db.iterator_cf(
                self.cf(Cf::Deadlines),
                IteratorMode::From(&start, Direction::Forward),
            ) {
                let (k, _) = item?;
                let d = keys::decode_deadline(&k).ok_or(StoreError::Corrupt("deadlines"))?;
                if Some(d) == after {
                    continue;
                }
                if d.at > until || out.len() >= limit {
                    break;
                }
                out.push(d);
            }
            Ok(())
        })())?;
        Ok(out)
    }

    fn conversation_deadlines(
        &self,
        conv: ConvId,
        until: u64,
        limit: usize,
    ) -> Result<Vec<Deadline>, ReadError> {
        let mut out = Vec::new();
        let from = keys::conversation_deadline(Deadline {
            at: 0,
            msg: MsgId { conv, seq: 0 },
        });
        read(
            self.scan_prefix(Cf::ConversationDeadlines, &from, 16, limit, |k, _| {
                let d = keys::decode_conversation_deadline(k)
                    .ok_or(StoreError::Corrupt("conversation_deadlines"))?;
                if d.at > until {
                    return Ok(Step::Stop);
                }
                out.push(d);
                Ok(Step::Take)
            }),
        )?;
        Ok(out)
    }

    fn story(&self, id: StoryId) -> Result<Option<StoryRecord>, ReadError> {
        // Read whether or not it ended: the caller decides.
        read((|| {
            let k = keys::story(id);
            let Some(v) = self.db.get_pinned_cf(self.cf(Cf::Stories), k)? else {
                return Ok(None);
            };
            let (_, p) = filter::split(&v).ok_or(StoreError::Corrupt("stories"))?;
            self.decode_story(&k, p).map(Some)
        })())
    }

    fn story_views(&self, story: StoryId) -> Result<Vec<(UserId, Millis)>, ReadError> {
        let mut out = Vec::new();
        let from = keys::story_view(story, ephemera_actors::ids::Id([0; 16]));
        read(
            self.scan_prefix(Cf::StoryViews, &from, 16, usize::MAX, |k, v| {
                let (_, p) = filter::split(v).ok_or(StoreError::Corrupt("story_views"))?;
                let at = <[u8; 8]>::try_from(p)
                    .map(u64::from_be_bytes)
                    .map_err(|_| StoreError::Corrupt("story_views"))?;
                out.push((keys::id_at(k, 16), at));
                Ok(Step::Take)
            }),
        )?;
        out.sort_by_key(|(u, at)| (*at, *u));
        Ok(out)
    }

    fn followers_after(
        &self,
        author: UserId,
        after: Option<UserId>,
        limit: usize,
    ) -> Result<Vec<UserId>, ReadError> {
        let mut out = Vec::new();
        let start = after.unwrap_or(ephemera_actors::ids::Id([0; 16]));
        let from = keys::follower(author, start);
        read(self.scan_prefix(Cf::Followers, &from, 16, limit, |k, _| {
            let f = keys::id_at(k, 16);
            if Some(f) == after {
                return Ok(Step::Skip);
            }
            out.push(f);
            Ok(Step::Take)
        }))?;
        Ok(out)
    }

    fn follower_count(&self, author: UserId) -> Result<u64, ReadError> {
        read(self.follow_counts(author).map(|(followers, _)| followers))
    }

    fn is_close_friend(&self, owner: UserId, friend: UserId) -> Result<bool, ReadError> {
        read(self.close_friend(owner, friend))
    }

    fn tray_ref_told(
        &self,
        viewer: UserId,
        author: UserId,
        story: StoryId,
    ) -> Result<Option<bool>, ReadError> {
        read(RocksStore::tray_ref_told(self, viewer, author, story))
    }

    fn fanout_progress(&self, story: StoryId) -> Result<Option<Option<UserId>>, ReadError> {
        read(
            self.get_live(Cf::StoryFanout, &keys::story(story))
                .and_then(|v| match v.as_deref() {
                    None => Ok(None),
                    Some([]) => Ok(Some(None)),
                    Some(b) if b.len() == 16 => Ok(Some(Some(keys::id_at(b, 0)))),
                    Some(_) => Err(StoreError::Corrupt("story_fanout")),
                }),
        )
    }

    fn story_deadlines(
        &self,
        until: Millis,
        limit: usize,
    ) -> Result<Vec<StoryDeadline>, ReadError> {
        read(self.scan_story_deadlines(until, limit))
    }

    fn pending_fanouts(&self, limit: usize) -> Result<Vec<StoryId>, ReadError> {
        let mut out = Vec::new();
        let now = now_ms();
        read((|| {
            for item in self
                .db
                .iterator_cf(self.cf(Cf::StoryFanout), IteratorMode::Start)
            {
                let (k, v) = item?;
                let (exp, p) = filter::split(&v).ok_or(StoreError::Corrupt("story_fanout"))?;
                if exp > now && !p.is_empty() && k.len() == 16 {
                    out.push(keys::id_at(&k, 0));
                    if out.len() >= limit {
                        break;
                    }
                }
            }
            Ok(())
        })())?;
        Ok(out)
    }

    fn submit_then(&self, txn: Txn, done: Done) {
        let Some(tx) = self.writer.get() else {
            return done(Err(CommitError::Failed));
        };
        // A node without its lease writes nothing: another process may
        // hold its node id (and so its conversations) by now.
        if self.cluster.get().is_some_and(|c| !c.may_write()) {
            return done(Err(CommitError::Overloaded));
        }
        if let Err(e) = tx.try_send(writer::Job { txn, done }) {
            let (job, err) = match e {
                mpsc::error::TrySendError::Full(j) => (j, CommitError::Overloaded),
                mpsc::error::TrySendError::Closed(j) => (j, CommitError::Failed),
            };
            (job.done)(Err(err));
        }
    }
}

#[cfg(test)]
mod tests;
