//! The quarantine store (PROTOCOL 7, DESIGN.md "Storage"): the one door
//! out of the ephemeral world. A reported message or story is copied here
//! while it is still live, and kept until its case's retention (or a later
//! legal hold) ends, or until a moderator closes the case.
//!
//! It is a RocksDB instance of its own at `DATA_DIR/quarantine`, without
//! the TTL filter (nothing here expires by a row's header; the cases' clock
//! is [`Quarantine::sweep`]). Column families ([`QCf`]):
//! * `cases`: case id -> [`CaseRecord`] (JSON). Its content (the message
//!   body or story caption, and the media's `data_key`) is sealed with
//!   AES-256-GCM under the case's own key, the case id as AAD.
//! * `case_keys`: case id -> the case's 32-byte key. Destroying a case's
//!   content deletes its key and its sealed content, then flushes and
//!   compacts the whole instance (bottommost forced, as the key store's
//!   purge), so no memtable, WAL or SST file keeps either.
//! * `access_log`: seq (u64, big-endian) -> [`LogEntry`] (JSON), append-only.
//! * `moderators`: user id -> grant time (u64, big-endian).
//!
//! A reported media blob is copied, still sealed under the media's
//! `data_key`, to the object key `quarantine/<case_id>` of the same bucket
//! (outside the media prefix `m/` that the media sweeper walks), and is
//! deleted with a signed DELETE when the case's content is destroyed.

pub mod backup;

use std::path::Path;
use std::sync::{Arc, Mutex};

use base64::Engine;
use ephemera_actors::ids::{random_bytes, Id, UserId};
use ephemera_actors::store::{now_ms, Millis};
use ring::aead::{Aad, Nonce, NONCE_LEN};
use rocksdb::{
    BottommostLevelCompaction, ColumnFamily, ColumnFamilyDescriptor, CompactOptions, FlushOptions,
    IteratorMode, Options, WriteBatch, WriteOptions, DB,
};
use serde::{Deserialize, Serialize};

use crate::keystore::aead;
use crate::media::blobstore::{Admission, UploadGate};
use crate::media::service::{MediaService, QUARANTINE_PREFIX};
use crate::store::StoreError;

/// How long a case whose blob copy never completed (the server died half
/// way through a report) is kept before it is undone: longer than any
/// copy can take.
const COPY_PENDING_MS: Millis = 600_000;
/// Access-log entries one page answers at most.
pub const LOG_PAGE: usize = 1_000;

/// The quarantine store's column families. Code names them through this
/// enum, never by string.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QCf {
    /// case id -> case record.
    Cases,
    /// case id -> the case's key.
    CaseKeys,
    /// seq -> access-log entry.
    AccessLog,
    /// user id -> when the role was granted.
    Moderators,
}

impl QCf {
    /// Every family, opened (created if missing) at start.
    pub const ALL: [QCf; 4] = [QCf::Cases, QCf::CaseKeys, QCf::AccessLog, QCf::Moderators];

    /// Its name in RocksDB.
    pub const fn name(self) -> &'static str {
        match self {
            QCf::Cases => "cases",
            QCf::CaseKeys => "case_keys",
            QCf::AccessLog => "access_log",
            QCf::Moderators => "moderators",
        }
    }
}

/// What was reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CaseKind {
    /// A message (`msg_id`).
    Message,
    /// A story (`story_id`).
    Story,
}

/// Open until a moderator closes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CaseStatus {
    /// Not closed.
    Open,
    /// Closed by a moderator (its content destroyed, or destroyed when a
    /// hold in force ends).
    Closed,
}

/// Where the case's copy of a media blob stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BlobState {
    /// No blob (a text message, or already deleted).
    None,
    /// The copy is being made: the embedded store admits its PUT.
    Copying,
    /// The copy is held.
    Held,
    /// The content is destroyed; the blob's DELETE has not succeeded yet.
    Deleting,
}

/// The reported media object as the case keeps it (its blob is
/// `quarantine/<case_id>`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct QuarantinedMedia {
    /// The type declared at upload.
    pub content_type: String,
    /// The sealed object's size.
    pub bytes: u64,
}

/// A case as stored. Everything here but `sealed` is metadata a moderator
/// sees in the case list; `sealed` is the content, under the case key.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CaseRecord {
    /// Its id.
    pub case_id: Id,
    /// Message or story.
    pub kind: CaseKind,
    /// The reported `msg_id` or `story_id` (an opaque id).
    pub subject: String,
    /// The reporter's reason (their words, shown to moderators).
    pub reason: String,
    /// Who reported it.
    pub reported_by: UserId,
    /// When.
    pub reported_at: Millis,
    /// Who wrote or posted it.
    pub author: UserId,
    /// Until when the content is kept (reported_at + retention).
    pub retain_until: Millis,
    /// A legal hold: kept at least until then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold_until: Option<Millis>,
    /// Open or closed.
    pub status: CaseStatus,
    /// The media, if the content had any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media: Option<QuarantinedMedia>,
    /// The blob copy's state.
    pub blob: BlobState,
    /// The sealed content (base64 of nonce, ciphertext, tag); `None` once
    /// destroyed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sealed: Option<String>,
    /// When its content was destroyed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destroyed_at: Option<Millis>,
}

impl CaseRecord {
    /// Whether the content must be destroyed at `now`: its retention and
    /// any hold are over, or it is closed and no hold is in force.
    pub fn due(&self, now: Millis) -> bool {
        if self.sealed.is_none() {
            return false;
        }
        let hold = self.hold_until.unwrap_or(0);
        let held = hold > now;
        match self.status {
            CaseStatus::Closed => !held,
            CaseStatus::Open => now >= self.retain_until.max(hold),
        }
    }
}

/// The content of a case, sealed as one JSON document.
#[derive(Clone, Default, Serialize, Deserialize)]
pub struct Content {
    /// A text message's body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// A story's caption.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caption: Option<String>,
    /// The media's data key (base64), which opens the blob copy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_key: Option<String>,
}

/// What a moderator did (an access-log entry's `action`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Listed the cases.
    List,
    /// Read a case with its content.
    Read,
    /// Placed or changed a hold.
    Hold,
    /// Closed a case.
    Close,
}

/// One access-log entry (PROTOCOL 8).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LogEntry {
    /// Strictly increasing, never reused.
    pub seq: u64,
    /// When.
    pub at: Millis,
    /// Who.
    pub moderator: UserId,
    /// Which case (`None` for a list).
    pub case_id: Option<Id>,
    /// What.
    pub action: Action,
}

/// Counts for the deletion report and `verify-deletion`, which report
/// quarantined content apart from the ephemeral world.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct QuarantineCensus {
    /// Cases not closed.
    pub open_cases: usize,
    /// Closed cases whose content is still held (a hold in force, or the
    /// destruction not yet done).
    pub closed_holding_content: usize,
    /// Cases of any status still holding content (sealed content and key).
    pub cases_holding_content: usize,
    /// Blob copies under `quarantine/` not yet deleted.
    pub blobs_held: usize,
    /// Cases whose content is destroyed (their metadata remains).
    pub destroyed_cases: usize,
}

/// The quarantine's RocksDB instance.
pub struct QuarantineStore {
    db: DB,
    /// Serialises access-log appends and holds the next seq.
    next_seq: Mutex<u64>,
    /// Serialises changes to case records (read-modify-write).
    cases_lock: Mutex<()>,
}

fn synced() -> WriteOptions {
    // A case is durable before its report is answered; a log entry before
    // the read it records is answered.
    let mut w = WriteOptions::default();
    w.set_sync(true);
    w
}

/// The options of the instance: no WAL kept beyond its use (no recycling,
/// no archive), as the key store's.
fn options() -> Options {
    let mut opts = Options::default();
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    crate::store::no_wal_leftovers(&mut opts);
    opts.set_keep_log_file_num(2);
    opts.set_max_open_files(64);
    opts
}

/// Opens the instance at `dir` read-only (for a backup while the server
/// runs): it sees every synced write.
fn open_read_only(dir: &Path) -> Result<DB, StoreError> {
    let names: Vec<&str> = QCf::ALL.iter().map(|c| c.name()).collect();
    Ok(DB::open_cf_for_read_only(&options(), dir, names, false)?)
}

/// Opens (or creates) the instance at `dir` read-write.
pub(crate) fn open_db(dir: &Path) -> Result<DB, StoreError> {
    let cfs = QCf::ALL
        .iter()
        .map(|c| ColumnFamilyDescriptor::new(c.name(), Options::default()));
    Ok(DB::open_cf_descriptors(&options(), dir, cfs)?)
}

/// The handle of family `c` of an instance opened by [`open_db`] or
/// [`open_read_only`].
pub(crate) fn cf(db: &DB, c: QCf) -> &ColumnFamily {
    // Every family in `QCf::ALL` is opened in `open_db`/`open_read_only`.
    db.cf_handle(c.name())
        .expect("quarantine column family opened")
}

/// Seals `content` under `key`, bound to `case`: nonce, ciphertext, tag.
fn seal(key: &[u8; 32], case: Id, content: &Content) -> Result<Vec<u8>, StoreError> {
    let mut nonce = [0u8; NONCE_LEN];
    random_bytes(&mut nonce);
    let plain = serde_json::to_vec(content).map_err(|_| StoreError::Corrupt("case content"))?;
    let mut out = Vec::with_capacity(NONCE_LEN + plain.len() + 16);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&plain);
    let tag = aead(key)
        .seal_in_place_separate_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(&case.0),
            &mut out[NONCE_LEN..],
        )
        .map_err(|_| StoreError::Corrupt("seal"))?;
    out.extend_from_slice(tag.as_ref());
    Ok(out)
}

/// Opens what [`seal`] sealed; `None` if it does not open.
fn unseal(key: &[u8; 32], case: Id, sealed: &[u8]) -> Option<Content> {
    if sealed.len() < NONCE_LEN + 16 {
        return None;
    }
    let nonce = Nonce::try_assume_unique_for_key(&sealed[..NONCE_LEN]).ok()?;
    let mut buf = sealed[NONCE_LEN..].to_vec();
    let plain = aead(key)
        .open_in_place(nonce, Aad::from(&case.0), &mut buf)
        .ok()?;
    let content = serde_json::from_slice(plain).ok();
    buf.fill(0);
    content
}

impl QuarantineStore {
    /// Opens (or creates) the store in `dir`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        Self::over(open_db(dir)?)
    }

    /// Opens the store in `dir` read-only, beside a running server (it
    /// sees every synced write): for a backup, or for `verify-deletion`'s
    /// [`QuarantineStore::census`]. Writes through it fail.
    pub fn open_read_only(dir: &Path) -> Result<Self, StoreError> {
        Self::over(open_read_only(dir)?)
    }

    /// The store over an open instance.
    fn over(db: DB) -> Result<Self, StoreError> {
        let last = db
            .iterator_cf(cf(&db, QCf::AccessLog), IteratorMode::End)
            .next()
            .transpose()?
            .map(|(k, _)| {
                k.as_ref()
                    .try_into()
                    .map(u64::from_be_bytes)
                    .map_err(|_| StoreError::Corrupt("access_log"))
            })
            .transpose()?
            .unwrap_or(0);
        Ok(QuarantineStore {
            db,
            next_seq: Mutex::new(last + 1),
            cases_lock: Mutex::new(()),
        })
    }

    fn get_case(&self, id: Id) -> Result<Option<CaseRecord>, StoreError> {
        match self.db.get_pinned_cf(cf(&self.db, QCf::Cases), id.0)? {
            None => Ok(None),
            Some(v) => serde_json::from_slice(&v)
                .map(Some)
                .map_err(|_| StoreError::Corrupt("cases")),
        }
    }

    fn encode(rec: &CaseRecord) -> Result<Vec<u8>, StoreError> {
        serde_json::to_vec(rec).map_err(|_| StoreError::Corrupt("cases"))
    }

    /// Creates a case holding `content` under a new key of its own (key
    /// and case in one synced batch). `rec.sealed` is filled here.
    pub fn create(&self, mut rec: CaseRecord, content: &Content) -> Result<CaseRecord, StoreError> {
        let mut key = [0u8; 32];
        random_bytes(&mut key);
        let sealed = seal(&key, rec.case_id, content)?;
        rec.sealed = Some(base64::engine::general_purpose::STANDARD.encode(sealed));
        let mut batch = WriteBatch::default();
        batch.put_cf(cf(&self.db, QCf::CaseKeys), rec.case_id.0, key);
        batch.put_cf(cf(&self.db, QCf::Cases), rec.case_id.0, Self::encode(&rec)?);
        key.fill(0);
        self.db.write_opt(batch, &synced())?;
        Ok(rec)
    }

    /// A case.
    pub fn case(&self, id: Id) -> Result<Option<CaseRecord>, StoreError> {
        self.get_case(id)
    }

    /// Every case, oldest report first.
    pub fn cases(&self) -> Result<Vec<CaseRecord>, StoreError> {
        let mut out = Vec::new();
        for item in self
            .db
            .iterator_cf(cf(&self.db, QCf::Cases), IteratorMode::Start)
        {
            let (_, v) = item?;
            out.push(
                serde_json::from_slice::<CaseRecord>(&v)
                    .map_err(|_| StoreError::Corrupt("cases"))?,
            );
        }
        out.sort_by_key(|c| (c.reported_at, c.case_id));
        Ok(out)
    }

    /// The content of a case, `None` once destroyed.
    pub fn content(&self, rec: &CaseRecord) -> Result<Option<Content>, StoreError> {
        let Some(sealed) = &rec.sealed else {
            return Ok(None);
        };
        let Some(key) = self
            .db
            .get_pinned_cf(cf(&self.db, QCf::CaseKeys), rec.case_id.0)?
        else {
            return Ok(None);
        };
        let key: [u8; 32] = key
            .as_ref()
            .try_into()
            .map_err(|_| StoreError::Corrupt("case_keys"))?;
        let sealed = base64::engine::general_purpose::STANDARD
            .decode(sealed)
            .map_err(|_| StoreError::Corrupt("cases"))?;
        unseal(&key, rec.case_id, &sealed)
            .map(Some)
            .ok_or(StoreError::Corrupt("cases"))
    }

    /// Changes a case with `f` (read, change, synced write, under the
    /// cases lock). `Ok(None)` if there is no such case.
    pub fn update(
        &self,
        id: Id,
        f: impl FnOnce(&mut CaseRecord),
    ) -> Result<Option<CaseRecord>, StoreError> {
        let _g = self.cases_lock.lock().unwrap_or_else(|p| p.into_inner());
        let Some(mut rec) = self.get_case(id)? else {
            return Ok(None);
        };
        f(&mut rec);
        self.db.put_cf_opt(
            cf(&self.db, QCf::Cases),
            id.0,
            Self::encode(&rec)?,
            &synced(),
        )?;
        Ok(Some(rec))
    }

    /// Destroys a case's content: its key and sealed content are deleted
    /// (the case's metadata stays, with `destroyed_at`), its blob marked
    /// for deletion, and the instance flushed and compacted so no file
    /// keeps them. Returns the case as it now stands.
    pub fn destroy_content(&self, id: Id, now: Millis) -> Result<Option<CaseRecord>, StoreError> {
        let rec = {
            let _g = self.cases_lock.lock().unwrap_or_else(|p| p.into_inner());
            let Some(mut rec) = self.get_case(id)? else {
                return Ok(None);
            };
            if rec.sealed.is_some() || rec.destroyed_at.is_none() {
                rec.sealed = None;
                rec.destroyed_at.get_or_insert(now);
                if rec.blob != BlobState::None {
                    rec.blob = BlobState::Deleting;
                }
                let mut batch = WriteBatch::default();
                batch.delete_cf(cf(&self.db, QCf::CaseKeys), id.0);
                batch.put_cf(cf(&self.db, QCf::Cases), id.0, Self::encode(&rec)?);
                self.db.write_opt(batch, &synced())?;
            }
            rec
        };
        self.purge()?;
        Ok(Some(rec))
    }

    /// Removes a case entirely (a report undone before it was answered),
    /// then purges.
    pub fn remove(&self, id: Id) -> Result<(), StoreError> {
        {
            let _g = self.cases_lock.lock().unwrap_or_else(|p| p.into_inner());
            let mut batch = WriteBatch::default();
            batch.delete_cf(cf(&self.db, QCf::CaseKeys), id.0);
            batch.delete_cf(cf(&self.db, QCf::Cases), id.0);
            self.db.write_opt(batch, &synced())?;
        }
        self.purge()
    }

    /// Flushes every family and compacts every file (bottommost forced),
    /// so deleted keys and content leave the memtables, the WAL and the
    /// SST files.
    pub fn purge(&self) -> Result<(), StoreError> {
        let cfs: Vec<&ColumnFamily> = QCf::ALL.iter().map(|c| cf(&self.db, *c)).collect();
        self.db.flush_cfs_opt(&cfs, &FlushOptions::default())?;
        self.db.flush_wal(true)?;
        let mut co = CompactOptions::default();
        co.set_bottommost_level_compaction(BottommostLevelCompaction::Force);
        co.set_exclusive_manual_compaction(true);
        for c in cfs {
            self.db
                .compact_range_cf_opt(c, None::<&[u8]>, None::<&[u8]>, &co);
        }
        Ok(())
    }

    /// Appends an access-log entry (synced); returns it.
    pub fn log(
        &self,
        moderator: UserId,
        case_id: Option<Id>,
        action: Action,
    ) -> Result<LogEntry, StoreError> {
        let mut next = self.next_seq.lock().unwrap_or_else(|p| p.into_inner());
        let entry = LogEntry {
            seq: *next,
            at: now_ms(),
            moderator,
            case_id,
            action,
        };
        let v = serde_json::to_vec(&entry).map_err(|_| StoreError::Corrupt("access_log"))?;
        self.db.put_cf_opt(
            cf(&self.db, QCf::AccessLog),
            entry.seq.to_be_bytes(),
            v,
            &synced(),
        )?;
        *next += 1;
        Ok(entry)
    }

    /// Access-log entries with a seq above `after`, in order, at most `limit`.
    pub fn log_after(&self, after: u64, limit: usize) -> Result<Vec<LogEntry>, StoreError> {
        let from = after.saturating_add(1).to_be_bytes();
        let mut out = Vec::new();
        let iter = self.db.iterator_cf(
            cf(&self.db, QCf::AccessLog),
            IteratorMode::From(&from, rocksdb::Direction::Forward),
        );
        for item in iter.take(limit) {
            let (_, v) = item?;
            out.push(serde_json::from_slice(&v).map_err(|_| StoreError::Corrupt("access_log"))?);
        }
        Ok(out)
    }

    /// Grants or revokes the moderator role.
    pub fn set_moderator(&self, user: UserId, moderator: bool) -> Result<(), StoreError> {
        let c = cf(&self.db, QCf::Moderators);
        if moderator {
            self.db
                .put_cf_opt(c, user.0, now_ms().to_be_bytes(), &synced())?;
        } else {
            self.db.delete_cf_opt(c, user.0, &synced())?;
        }
        Ok(())
    }

    /// Whether `user` is a moderator.
    pub fn is_moderator(&self, user: UserId) -> Result<bool, StoreError> {
        Ok(self
            .db
            .get_pinned_cf(cf(&self.db, QCf::Moderators), user.0)?
            .is_some())
    }

    /// Whether the embedded blob store takes a `PUT` of `quarantine/<id>`:
    /// only while that case's copy is being made, at its exact size.
    pub fn blob_admission(&self, case: &str) -> Admission {
        let Some(id) = Id::parse(case) else {
            return Admission::Closed;
        };
        match self.get_case(id) {
            Ok(Some(rec)) if rec.blob == BlobState::Copying && rec.sealed.is_some() => {
                match &rec.media {
                    Some(m) => Admission::Exactly(m.bytes),
                    None => Admission::Closed,
                }
            }
            Ok(_) => Admission::Closed,
            Err(e) => {
                tracing::error!(error = %e, "upload gate could not read a case");
                Admission::Unknown
            }
        }
    }

    /// The counts of [`QuarantineCensus`].
    pub fn census(&self) -> Result<QuarantineCensus, StoreError> {
        let mut c = QuarantineCensus::default();
        for rec in self.cases()? {
            let holding = rec.sealed.is_some();
            match rec.status {
                CaseStatus::Open => c.open_cases += 1,
                CaseStatus::Closed if holding => c.closed_holding_content += 1,
                CaseStatus::Closed => {}
            }
            if holding {
                c.cases_holding_content += 1;
            } else {
                c.destroyed_cases += 1;
            }
            if rec.blob != BlobState::None {
                c.blobs_held += 1;
            }
        }
        Ok(c)
    }
}

/// The quarantine: its store and the object storage its blob copies live
/// in (cheap to clone).
#[derive(Clone)]
pub struct Quarantine {
    store: Arc<QuarantineStore>,
    media: MediaService,
    /// How long a case keeps its content after its report.
    retention_ms: Millis,
}

impl Quarantine {
    /// The quarantine over `store`, its blobs in `media`'s bucket, keeping
    /// content `retention_ms` after each report.
    pub fn new(store: Arc<QuarantineStore>, media: MediaService, retention_ms: Millis) -> Self {
        Quarantine {
            store,
            media,
            retention_ms,
        }
    }

    /// The store (blocking calls).
    pub fn store(&self) -> &Arc<QuarantineStore> {
        &self.store
    }

    /// The object storage of the blob copies.
    pub fn media(&self) -> &MediaService {
        &self.media
    }

    /// How long a case keeps its content after its report.
    pub fn retention_ms(&self) -> Millis {
        self.retention_ms
    }

    /// Destroys a case's content now (key and sealed content, then the
    /// blob copy). Returns the case as it then stands. Blocks on storage
    /// off the event loop.
    pub async fn destroy(&self, id: Id) -> Result<Option<CaseRecord>, StoreError> {
        let store = Arc::clone(&self.store);
        let now = now_ms();
        let rec = tokio::task::spawn_blocking(move || store.destroy_content(id, now))
            .await
            .map_err(|_| StoreError::Corrupt("destroy task"))??;
        match rec {
            Some(rec) if rec.blob == BlobState::Deleting => Ok(Some(self.delete_blob(rec).await)),
            other => Ok(other),
        }
    }

    /// The signed DELETE of a destroyed case's blob copy; on success the
    /// case no longer counts a blob. (On failure the next sweep retries.)
    async fn delete_blob(&self, rec: CaseRecord) -> CaseRecord {
        if !self.media.delete_quarantine(rec.case_id).await {
            return rec;
        }
        let store = Arc::clone(&self.store);
        let id = rec.case_id;
        let updated = tokio::task::spawn_blocking(move || {
            store.update(id, |r| {
                if r.blob == BlobState::Deleting {
                    r.blob = BlobState::None;
                }
            })
        })
        .await;
        match updated {
            Ok(Ok(Some(r))) => r,
            _ => rec,
        }
    }

    /// THE entry point of the physical-deletion sweep for quarantined
    /// content: destroys every case whose content is due at `now_ms`
    /// (retention and hold over, or closed with no hold in force), retries
    /// blob DELETEs that failed, and undoes reports whose copy never
    /// completed. Returns how many cases' content it destroyed.
    pub async fn sweep(&self, now_ms: u64) -> usize {
        let store = Arc::clone(&self.store);
        let cases = match tokio::task::spawn_blocking(move || store.cases()).await {
            Ok(Ok(c)) => c,
            _ => {
                tracing::error!("quarantine sweep could not read the cases");
                return 0;
            }
        };
        let mut destroyed = 0;
        for rec in cases {
            if rec.blob == BlobState::Copying
                && now_ms.saturating_sub(rec.reported_at) > COPY_PENDING_MS
            {
                // A report the server died in the middle of: never answered.
                self.undo(rec.case_id).await;
            } else if rec.due(now_ms) {
                match self.destroy(rec.case_id).await {
                    Ok(_) => destroyed += 1,
                    Err(e) => tracing::error!(error = %e, "destroying a case's content failed"),
                }
            } else if rec.blob == BlobState::Deleting {
                self.delete_blob(rec).await;
            }
        }
        if destroyed > 0 {
            tracing::info!(destroyed, "quarantined content destroyed");
        }
        destroyed
    }

    /// Removes a case that was never answered (its blob copy, then its
    /// key and record).
    pub async fn undo(&self, id: Id) {
        if !self.media.delete_quarantine(id).await {
            tracing::warn!("undoing a report: the blob copy's DELETE failed; retried by the sweep");
            return;
        }
        let store = Arc::clone(&self.store);
        if !matches!(
            tokio::task::spawn_blocking(move || store.remove(id)).await,
            Ok(Ok(()))
        ) {
            tracing::error!("undoing a report failed");
        }
    }

    /// Counts for the deletion report and `verify-deletion`. Blocks.
    pub fn census(&self) -> Result<QuarantineCensus, StoreError> {
        self.store.census()
    }

    /// Until the sweep owner wires [`Quarantine::sweep`] into the one
    /// sweep, a task calling it every `every`.
    pub fn start_interim_sweep(&self, every: std::time::Duration) {
        let q = self.clone();
        // TODO(sweep): called by the sweep
        actix_web::rt::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                q.sweep(now_ms()).await;
            }
        });
    }
}

/// The embedded blob store's upload gate with the quarantine's prefix:
/// `quarantine/<case_id>` is admitted by [`QuarantineStore::blob_admission`],
/// everything else by `media_gate`.
pub fn upload_gate(quarantine: Arc<QuarantineStore>, media_gate: UploadGate) -> UploadGate {
    Arc::new(move |key: &str| match key.strip_prefix(QUARANTINE_PREFIX) {
        Some(case) => quarantine.blob_admission(case),
        None => media_gate(key),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn case(now: Millis) -> CaseRecord {
        CaseRecord {
            case_id: Id::random(),
            kind: CaseKind::Message,
            subject: "s".into(),
            reason: "spam".into(),
            reported_by: Id::random(),
            reported_at: now,
            author: Id::random(),
            retain_until: now + 1_000,
            hold_until: None,
            status: CaseStatus::Open,
            media: None,
            blob: BlobState::None,
            sealed: None,
            destroyed_at: None,
        }
    }

    #[test]
    fn due_follows_retention_hold_and_close() {
        let mut c = case(10_000);
        c.sealed = Some("x".into());
        assert!(!c.due(10_500), "within retention");
        assert!(c.due(11_000), "retention over");
        c.hold_until = Some(20_000);
        assert!(!c.due(11_000), "held past retention");
        assert!(c.due(20_000), "hold over");
        c.status = CaseStatus::Closed;
        assert!(!c.due(15_000), "closed under a hold in force");
        c.hold_until = None;
        assert!(c.due(10_001), "closed, no hold: at once");
        c.sealed = None;
        assert!(!c.due(30_000), "already destroyed");
    }

    #[test]
    fn content_is_sealed_and_destroyed_from_every_file() {
        let dir = tempfile::tempdir().unwrap();
        let q = QuarantineStore::open(dir.path()).unwrap();
        let canary = "quarantine-canary-3f9a1c";
        let rec = q
            .create(
                case(now_ms()),
                &Content {
                    body: Some(canary.into()),
                    ..Content::default()
                },
            )
            .unwrap();
        let stored = rec.sealed.clone().unwrap().into_bytes();
        let sealed = base64::engine::general_purpose::STANDARD
            .decode(&stored)
            .unwrap();
        assert!(!sealed.windows(canary.len()).any(|w| w == canary.as_bytes()));
        let got = q
            .content(&q.case(rec.case_id).unwrap().unwrap())
            .unwrap()
            .unwrap();
        assert_eq!(got.body.as_deref(), Some(canary));
        let key =
            q.db.get_cf(cf(&q.db, QCf::CaseKeys), rec.case_id.0)
                .unwrap()
                .unwrap();
        q.purge().unwrap();

        let after = q.destroy_content(rec.case_id, now_ms()).unwrap().unwrap();
        assert!(after.sealed.is_none() && after.destroyed_at.is_some());
        assert!(q.content(&after).unwrap().is_none());
        for entry in std::fs::read_dir(dir.path()).unwrap() {
            let bytes = std::fs::read(entry.unwrap().path()).unwrap_or_default();
            assert!(!bytes.windows(32).any(|w| w == key.as_slice()), "key left");
            assert!(
                !bytes.windows(stored.len()).any(|w| w == stored.as_slice()),
                "sealed content left"
            );
        }
        let census = q.census().unwrap();
        assert_eq!(census.destroyed_cases, 1);
        assert_eq!(census.cases_holding_content, 0);
    }

    #[test]
    fn the_access_log_is_ordered_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let m = Id::random();
        {
            let q = QuarantineStore::open(dir.path()).unwrap();
            assert_eq!(q.log(m, None, Action::List).unwrap().seq, 1);
            assert_eq!(q.log(m, Some(Id::random()), Action::Read).unwrap().seq, 2);
        }
        let q = QuarantineStore::open(dir.path()).unwrap();
        assert_eq!(q.log(m, None, Action::List).unwrap().seq, 3);
        let all = q.log_after(0, 10).unwrap();
        assert_eq!(all.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![1, 2, 3]);
        assert_eq!(q.log_after(2, 10).unwrap().len(), 1);
        assert_eq!(q.log_after(0, 2).unwrap().len(), 2);
    }
}
