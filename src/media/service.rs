//! The media service: mints upload URLs and data keys (within each user's
//! quota), claims an upload for the one message that may use it, grants
//! short-lived GET URLs to entitled readers, and shreds (key first, then
//! blob) when the content ends. One code path serves the embedded store
//! and an external S3: both are spoken to with presigned URLs and
//! header-signed requests.
//!
//! What bounds an upload, and where:
//! * `bytes` is the exact size of the object (PROTOCOL 4: the sealed file,
//!   plaintext + 28). The `put_url` signs `content-length`, so S3 and the
//!   embedded store alike refuse a `PUT` of any other length; the `HEAD`
//!   at send time checks it again.
//! * The embedded store asks [`upload_gate`] about every `PUT`: only an
//!   upload whose record exists, unused by any message and not ended, is
//!   accepted. An external S3 cannot ask: there a still-valid `put_url`
//!   can recreate an object after its upload ended (unsent, burned,
//!   expired), and the sweep's walk of the bucket deletes it.
//! * [`super::quota`] bounds each user's pending uploads, their bytes and
//!   the rate of upload URLs.
//! * The sweeper deletes the blobs of records whose life is over, and
//!   walks the bucket for blobs no record knows (orphans) and deletes them.
//!
//! A highlight's media is not an upload: [`MediaService::copy_sealed`]
//! re-encrypts a story's object under a key of its own, and the copy is
//! kept (record and key `until` [`KEPT`]) until it is shredded. A kept
//! record is never open for upload nor claimable by a message.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use base64::Engine;
use ephemera_actors::frames::{ErrorCode, FrameError};
use ephemera_actors::ids::{random_bytes, Id, UserId};
use ephemera_actors::store::{now_ms, Access, MediaAccess, MediaGrant, MediaRef, Millis};
use ring::aead::{Aad, Nonce, NONCE_LEN};
use serde::{Deserialize, Serialize};

use super::blobstore::{Admission, UploadGate};
use super::quota::{Refusal, UploadLimits, UploadQuota};
use super::sigv4::{self, Credentials, Endpoint};
use crate::keystore::{aead, KeyStore};
use crate::store::{MediaRecord, RocksStore, StoreError};

/// How long a `put_url` is valid.
pub const UPLOAD_URL_SECS: u64 = 900;
/// How long an upload that no message claimed keeps its key and blob
/// after its URL expired.
const UNCLAIMED_GRACE_MS: Millis = 3_600_000;
/// Longest validity of a `get_url` for timed content (PROTOCOL 4: 5 minutes).
const GET_URL_SECS: u64 = 300;
/// Longest validity of a `get_url` for view-once content.
const ONCE_GET_URL_SECS: u64 = 60;
/// The largest object a client may declare (PROTOCOL 4: 100 MiB, sealed).
pub const MAX_MEDIA_BYTES: u64 = 100 << 20;
/// Bytes a sealed object has beyond its plaintext (nonce and GCM tag): the
/// smallest object a client may declare.
pub const SEAL_OVERHEAD: u64 = 28;
/// Every media object's key starts with this (see [`object_key`]).
const OBJECT_PREFIX: &str = "m/";
/// The quarantine's blob copies (`quarantine/<case_id>`, see
/// `crate::quarantine`) live under this prefix of the same bucket: outside
/// [`OBJECT_PREFIX`], so the orphan walk never lists them.
pub const QUARANTINE_PREFIX: &str = "quarantine/";
/// How long a moderator's `get_url` for a quarantined blob is valid.
const QUARANTINE_GET_URL_SECS: u64 = 300;
/// Objects one step of the orphan walk lists (S3's page size).
const ORPHAN_PAGE: &str = "1000";
/// The `until` of a media record and key kept until they are shredded (a
/// highlight's copy): such a record is not an upload, so it is never open
/// for upload, counted in a quota or claimable by a message.
pub const KEPT: Millis = u64::MAX;
/// How long the server's own URLs for a copy (the GET of the source, the
/// PUT of the copy) are valid: each is used at once.
const COPY_URL_SECS: u64 = 60;
/// Longest a copy's GET or PUT may take, body included (the client's 10 s
/// is too short for 100 MiB from an external S3).
const COPY_TRANSFER: Duration = Duration::from_secs(120);
/// The life of a copy's key and record until the copy is complete: if the
/// server dies in between, the sweeper reaps what was made after this.
/// Longer than a GET and a PUT can take, so no copy is reaped while it runs.
const COPY_PENDING_MS: Millis = 600_000;
/// Copies running at once. Each holds its whole object in memory (at most
/// [`MAX_MEDIA_BYTES`]), so this bounds their memory to 200 MiB.
const COPIES_AT_ONCE: usize = 2;

/// What `POST /api/v1/media/upload-urls` answers.
pub struct UploadGrant {
    /// The new media object's id.
    pub media_key: Id,
    /// Presigned PUT.
    pub put_url: String,
    /// Seconds `put_url` stays valid.
    pub expires_in: u64,
    /// The data key, base64 (also kept in the key store).
    pub data_key: String,
}

/// Why a copy of a media object was not made. Nothing of the copy is
/// left behind, and no message carries content, keys or URLs.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    /// The source's key or object is gone (its content ended).
    #[error("the source media is gone")]
    Gone,
    /// The stored object is not the sealed file its reference declares
    /// (another size, or it does not open under its key).
    #[error("the source object does not match its media record")]
    Damaged,
    /// Object storage failed or refused; worth a retry.
    #[error("object storage unavailable")]
    Unavailable,
    /// Storage (the key store or the media records) failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Why an upload URL was not minted.
#[derive(Debug)]
pub enum MintError {
    /// Over a quota of the user (see [`Refusal`]).
    Quota(Refusal),
    /// Storage failed.
    Store(StoreError),
}

impl From<StoreError> for MintError {
    fn from(e: StoreError) -> Self {
        MintError::Store(e)
    }
}

struct Inner {
    store: Arc<RocksStore>,
    keys: Arc<KeyStore>,
    endpoint: Endpoint,
    credentials: Credentials,
    http: reqwest::Client,
    quota: UploadQuota,
    /// Places for copies running at once (see [`COPIES_AT_ONCE`]).
    copies: tokio::sync::Semaphore,
    /// Cluster mode: grants other nodes minted for media they hold, kept
    /// [`REMEMBERED`] for readers here (see [`MediaAccess::remember`]).
    remembered: std::sync::Mutex<HashMap<Id, (MediaGrant, std::time::Instant)>>,
}

/// How long a grant minted by another node is handed out here.
const REMEMBERED: Duration = Duration::from_secs(30);

/// The media service (cheap to clone).
#[derive(Clone)]
pub struct MediaService(Arc<Inner>);

/// The object key of a media id in the bucket.
fn object_key(id: Id) -> String {
    format!("{OBJECT_PREFIX}{id}")
}

/// The object key of a quarantine case's blob copy.
fn quarantine_key(case: Id) -> String {
    format!("{QUARANTINE_PREFIX}{case}")
}

/// The media object an object key names (`m/<id>`), if it names one.
pub fn media_id(key: &str) -> Option<Id> {
    key.strip_prefix(OBJECT_PREFIX).and_then(Id::parse)
}

/// Whether a media record is open for upload at `now`: no message uses it,
/// it is not a kept copy and its life has not ended.
fn open_for_upload(rec: &MediaRecord, now: Millis) -> bool {
    !rec.is_bound() && rec.until != KEPT && rec.until > now
}

/// Opens a sealed file (nonce, ciphertext, tag; no AAD) with `from` and
/// seals the same plaintext under `to` with a fresh random nonce, in the
/// same buffer (no second copy of a large object). `None` if it does not
/// open; the buffer is wiped then.
fn reseal(from: &[u8; 32], to: &[u8; 32], mut sealed: Vec<u8>) -> Option<Vec<u8>> {
    if (sealed.len() as u64) < SEAL_OVERHEAD {
        return None;
    }
    let (nonce, body) = sealed.split_at_mut(NONCE_LEN);
    let opened = aead(from)
        .open_in_place(
            Nonce::try_assume_unique_for_key(nonce).ok()?,
            Aad::empty(),
            body,
        )
        .map(|plain| plain.len());
    let Ok(len) = opened else {
        body.fill(0);
        return None;
    };
    random_bytes(nonce);
    let (plain, tag_out) = body.split_at_mut(len);
    // Sealing only fails for inputs over GCM's limit (64 GiB).
    let tag = aead(to)
        .seal_in_place_separate_tag(
            Nonce::try_assume_unique_for_key(nonce).ok()?,
            Aad::empty(),
            plain,
        )
        .ok()?;
    tag_out.copy_from_slice(tag.as_ref());
    Some(sealed)
}

/// The embedded store's [`UploadGate`]: a `PUT` to `m/<id>` is accepted
/// only while the media record exists, no message uses it, it is not a
/// kept copy and its life has not ended, and only at exactly its declared
/// size. So a `put_url` dies
/// with its upload: after a send it cannot replace the object a message
/// uses, and after an unsend, a burn or an expiry it cannot bring a
/// deleted blob back.
pub fn upload_gate(store: Arc<RocksStore>) -> UploadGate {
    Arc::new(move |key: &str| {
        let Some(id) = media_id(key) else {
            return Admission::Closed;
        };
        match store.media(id) {
            Ok(Some(rec)) if open_for_upload(&rec, now_ms()) => Admission::Exactly(rec.bytes),
            Ok(_) => Admission::Closed,
            Err(e) => {
                tracing::error!(error = %e, "upload gate could not read a media record");
                Admission::Unknown
            }
        }
    })
}

impl MediaService {
    /// A service storing objects at `endpoint` with `credentials`, holding
    /// users to `limits`. Counts the uploads already pending in `store`
    /// (a scan of the media records: once, at start).
    pub fn new(
        store: Arc<RocksStore>,
        keys: Arc<KeyStore>,
        endpoint: Endpoint,
        credentials: Credentials,
        limits: UploadLimits,
        extra_roots: Vec<reqwest::Certificate>,
    ) -> Result<Self, StoreError> {
        // https endpoints are verified against the system's roots and
        // `extra_roots` (rustls).
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .tls_certs_merge(extra_roots)
            .build()
            .expect("an HTTP client with valid roots always builds");
        let quota = UploadQuota::new(limits);
        let now = now_ms();
        for (id, rec) in store.media_records()? {
            if open_for_upload(&rec, now) {
                quota.restore(rec.owner, id, rec.bytes, rec.until);
            }
        }
        Ok(MediaService(Arc::new(Inner {
            store,
            keys,
            endpoint,
            credentials,
            http,
            quota,
            copies: tokio::sync::Semaphore::new(COPIES_AT_ONCE),
            remembered: Default::default(),
        })))
    }

    /// Mints a media object for `owner`, an upload of exactly `bytes` (the
    /// sealed file): its id, data key and upload URL, which signs that
    /// length. Refused when `owner` is over a quota. Blocks (storage).
    pub fn mint_upload(
        &self,
        owner: UserId,
        content_type: &str,
        bytes: u64,
    ) -> Result<UploadGrant, MintError> {
        let id = Id::random();
        let now = now_ms();
        let until = now + UPLOAD_URL_SECS * 1000 + UNCLAIMED_GRACE_MS;
        let store = &self.0.store;
        let still_pending = |id: Id| match store.media(id) {
            Ok(Some(rec)) => open_for_upload(&rec, now_ms()),
            Ok(None) => false,
            // Unreadable: go on counting it (the safe side for the disk).
            Err(_) => true,
        };
        self.0
            .quota
            .reserve(owner, id, bytes, until, now, still_pending)
            .map_err(MintError::Quota)?;
        let minted = self.mint(id, owner, content_type, bytes, now, until);
        if minted.is_err() {
            self.0.quota.release(owner, id);
        }
        minted
    }

    /// The minting proper, once the quota holds a place for it.
    fn mint(
        &self,
        id: Id,
        owner: UserId,
        content_type: &str,
        bytes: u64,
        now: Millis,
        until: Millis,
    ) -> Result<UploadGrant, MintError> {
        let mut key = [0u8; 32];
        random_bytes(&mut key);
        // Key first: a record (and so an upload) never exists without it.
        self.0.keys.put_media_key(&id.0, &key, until)?;
        let rec = MediaRecord {
            owner,
            content_type: content_type.to_owned(),
            bytes,
            created_at: now,
            bound: None,
            story: None,
            until,
        };
        self.0.store.put_media(id, &rec)?;
        let length = bytes.to_string();
        let put_url = sigv4::presign_with_headers(
            "PUT",
            &self.0.endpoint,
            &object_key(id),
            &self.0.credentials,
            SystemTime::now(),
            UPLOAD_URL_SECS,
            &[],
            &[("content-length", &length)],
        )
        .map_err(|_| StoreError::Corrupt("presign"))?;
        Ok(UploadGrant {
            media_key: id,
            put_url,
            expires_in: UPLOAD_URL_SECS,
            data_key: base64::engine::general_purpose::STANDARD.encode(key),
        })
    }

    /// Copies the sealed object `src` (a story's media) into a new media
    /// object of `owner` under a new data key: reads the source's key,
    /// GETs its object (exactly `src.bytes`), opens it and seals the same
    /// plaintext under the new key with a fresh nonce, and PUTs that. The
    /// copy's key and record are kept until shredded (`until` [`KEPT`]):
    /// it outlives the source. Returns the copy and its key.
    ///
    /// The caller stores the copy's id with whatever keeps it (a
    /// highlight), and ends it with [`MediaAccess::shred`]`(&copy, 0)`,
    /// which destroys the key and hands the blob to the sweeper. If that
    /// storing fails, it shreds the copy the same way. The record's
    /// `until` must stay [`KEPT`] until then.
    ///
    /// On any failure nothing of the copy is left: its key is destroyed
    /// and its record and blob deleted (by the sweeper, if object storage
    /// fails on the way). A crash half way leaves a record and key that
    /// end by themselves after [`COPY_PENDING_MS`].
    ///
    /// The copy runs to its end on a task of its own, so a caller that
    /// goes away (a dropped request) leaves nothing either: a copy made
    /// for nobody is undone.
    ///
    /// The whole object is buffered in memory (at most 100 MiB, and at
    /// most [`COPIES_AT_ONCE`] copies run at once): AES-GCM opens only a
    /// whole file, and the plaintext is re-sealed in the same buffer.
    pub async fn copy_sealed(
        &self,
        src: &MediaRef,
        owner: UserId,
    ) -> Result<(MediaRef, [u8; 32]), CopyError> {
        let (done, made) = tokio::sync::oneshot::channel();
        let svc = self.clone();
        let src = src.clone();
        actix_web::rt::spawn(async move {
            if let Err(Ok((copy, _))) = done.send(svc.make_copy(&src, owner).await) {
                svc.undo_copy(copy.id).await;
            }
        });
        made.await.map_err(|_| CopyError::Unavailable)?
    }

    /// The copy of [`MediaService::copy_sealed`], undone on failure.
    async fn make_copy(
        &self,
        src: &MediaRef,
        owner: UserId,
    ) -> Result<(MediaRef, [u8; 32]), CopyError> {
        if !(SEAL_OVERHEAD..=MAX_MEDIA_BYTES).contains(&src.bytes) {
            return Err(CopyError::Damaged);
        }
        // Never closed: acquiring only waits.
        let _place = self
            .0
            .copies
            .acquire()
            .await
            .map_err(|_| CopyError::Unavailable)?;
        let keys = Arc::clone(&self.0.keys);
        let src_id = src.id;
        let src_key = tokio::task::spawn_blocking(move || keys.media_key(&src_id.0))
            .await
            .map_err(|_| CopyError::Unavailable)??
            .ok_or(CopyError::Gone)?;
        let sealed = self.fetch(src.id, src.bytes).await?;
        let mut key = [0u8; 32];
        random_bytes(&mut key);
        // About 0.1 s for 100 MiB: off the event loop.
        let sealed = tokio::task::spawn_blocking(move || reseal(&src_key, &key, sealed))
            .await
            .map_err(|_| CopyError::Unavailable)?
            .ok_or(CopyError::Damaged)?;

        let id = Id::random();
        let now = now_ms();
        let rec = MediaRecord {
            owner,
            content_type: src.content_type.clone(),
            bytes: src.bytes,
            created_at: now,
            bound: None,
            story: None,
            until: now + COPY_PENDING_MS,
        };
        let inner = Arc::clone(&self.0);
        let pending = rec.clone();
        // Key first: a record (and so a blob) never exists without it.
        let begun = tokio::task::spawn_blocking(move || {
            inner.keys.put_media_key(&id.0, &key, pending.until)?;
            inner.store.put_media(id, &pending)
        })
        .await;
        let made = match begun {
            Ok(Ok(())) => self.finish_copy(id, &key, rec, sealed).await,
            Ok(Err(e)) => Err(CopyError::Store(e)),
            Err(_) => Err(CopyError::Unavailable),
        };
        if let Err(e) = made {
            self.undo_copy(id).await;
            return Err(e);
        }
        Ok((
            MediaRef {
                id,
                content_type: src.content_type.clone(),
                bytes: src.bytes,
            },
            key,
        ))
    }

    /// The stored object `id`, which must be exactly `bytes` long (read
    /// whole; see [`MediaService::copy_sealed`]).
    async fn fetch(&self, id: Id, bytes: u64) -> Result<Vec<u8>, CopyError> {
        self.fetch_object(&object_key(id), bytes).await
    }

    /// The stored object at `key`, exactly `bytes` long.
    async fn fetch_object(&self, key: &str, bytes: u64) -> Result<Vec<u8>, CopyError> {
        if bytes > MAX_MEDIA_BYTES {
            return Err(CopyError::Damaged);
        }
        // Presigned, as the embedded store takes header signing only for
        // HEAD, DELETE and listings.
        let url = sigv4::presign(
            "GET",
            &self.0.endpoint,
            key,
            &self.0.credentials,
            SystemTime::now(),
            COPY_URL_SECS,
            &[],
        )
        .map_err(|_| CopyError::Unavailable)?;
        let mut resp = self
            .0
            .http
            .get(&url)
            .timeout(COPY_TRANSFER)
            .send()
            .await
            .map_err(|e| {
                tracing::warn!(error = %e.without_url(), "object storage GET failed");
                CopyError::Unavailable
            })?;
        match resp.status().as_u16() {
            200 => {}
            404 => return Err(CopyError::Gone),
            status => {
                tracing::warn!(status, "object storage refused a GET");
                return Err(CopyError::Unavailable);
            }
        }
        if resp.content_length().is_some_and(|n| n != bytes) {
            return Err(CopyError::Damaged);
        }
        // `bytes` is at most MAX_MEDIA_BYTES (checked by the caller).
        let mut body = Vec::with_capacity(bytes as usize);
        while let Some(chunk) = resp.chunk().await.map_err(|e| {
            tracing::warn!(error = %e.without_url(), "reading an object failed");
            CopyError::Unavailable
        })? {
            if (body.len() + chunk.len()) as u64 > bytes {
                return Err(CopyError::Damaged);
            }
            body.extend_from_slice(&chunk);
        }
        if body.len() as u64 != bytes {
            return Err(CopyError::Damaged);
        }
        Ok(body)
    }

    /// The rest of a copy once its key and pending record exist: the PUT
    /// of `sealed` (through a presigned URL that signs its length, as an
    /// upload's), then the key and record kept for good (key first: a
    /// crash in between leaves a record that still ends, and reaps both).
    async fn finish_copy(
        &self,
        id: Id,
        key: &[u8; 32],
        mut rec: MediaRecord,
        sealed: Vec<u8>,
    ) -> Result<(), CopyError> {
        self.put_object(&object_key(id), sealed).await?;
        let inner = Arc::clone(&self.0);
        let key = *key;
        rec.until = KEPT;
        tokio::task::spawn_blocking(move || {
            inner.keys.put_media_key(&id.0, &key, KEPT)?;
            inner.store.put_media(id, &rec)
        })
        .await
        .map_err(|_| CopyError::Unavailable)??;
        Ok(())
    }

    /// The PUT of `sealed` to `key`, through a presigned URL that signs
    /// its length, as an upload's.
    async fn put_object(&self, key: &str, sealed: Vec<u8>) -> Result<(), CopyError> {
        let length = sealed.len().to_string();
        let put_url = sigv4::presign_with_headers(
            "PUT",
            &self.0.endpoint,
            key,
            &self.0.credentials,
            SystemTime::now(),
            COPY_URL_SECS,
            &[],
            &[("content-length", &length)],
        )
        .map_err(|_| CopyError::Unavailable)?;
        let resp = self
            .0
            .http
            .put(&put_url)
            .timeout(COPY_TRANSFER)
            .body(sealed)
            .send()
            .await
            .map_err(|e| {
                tracing::warn!(error = %e.without_url(), "object storage PUT failed");
                CopyError::Unavailable
            })?;
        if !resp.status().is_success() {
            tracing::warn!(
                status = resp.status().as_u16(),
                "object storage refused the PUT of a copy"
            );
            return Err(CopyError::Unavailable);
        }
        Ok(())
    }

    /// The live data key of media `id` (`None` once its life is over).
    /// Blocks (key store).
    pub fn media_data_key(&self, id: Id) -> Result<Option<[u8; 32]>, StoreError> {
        self.0.keys.media_key(&id.0)
    }

    /// The sealed object of media `media`, read whole (it must be exactly
    /// its declared size): what a report copies into quarantine.
    pub async fn fetch_media(&self, media: &MediaRef) -> Result<Vec<u8>, CopyError> {
        self.fetch(media.id, media.bytes).await
    }

    /// Stores `sealed` as the blob copy of quarantine case `case`.
    pub async fn put_quarantine(&self, case: Id, sealed: Vec<u8>) -> Result<(), CopyError> {
        self.put_object(&quarantine_key(case), sealed).await
    }

    /// A presigned GET of quarantine case `case`'s blob copy, never cached.
    pub fn quarantine_get_url(&self, case: Id) -> Option<String> {
        sigv4::presign(
            "GET",
            &self.0.endpoint,
            &quarantine_key(case),
            &self.0.credentials,
            SystemTime::now(),
            QUARANTINE_GET_URL_SECS,
            &[("response-cache-control", "no-store")],
        )
        .ok()
    }

    /// Deletes quarantine case `case`'s blob copy (signed DELETE); whether
    /// it is gone (absent counts as gone).
    pub async fn delete_quarantine(&self, case: Id) -> bool {
        match self
            .signed_key(reqwest::Method::DELETE, &quarantine_key(case))
            .await
        {
            Ok(r) if r.status().is_success() || r.status().as_u16() == 404 => true,
            Ok(r) => {
                tracing::warn!(
                    status = r.status().as_u16(),
                    "object storage refused to delete a quarantine blob; retrying later"
                );
                false
            }
            Err(()) => false,
        }
    }

    /// Undoes a copy that failed after its key and record were written:
    /// the key is destroyed at once, the record ends now, and the blob (if
    /// the PUT got that far) and record are deleted, here or, if object
    /// storage fails, by the sweeper.
    async fn undo_copy(&self, id: Id) {
        let inner = Arc::clone(&self.0);
        let ended = tokio::task::spawn_blocking(move || {
            inner.keys.destroy_media_key(&id.0)?;
            if let Some(mut rec) = inner.store.media(id)? {
                rec.until = 0;
                inner.store.put_media(id, &rec)?;
            }
            Ok::<_, StoreError>(())
        })
        .await;
        if !matches!(ended, Ok(Ok(()))) {
            tracing::error!("undoing a failed copy failed; its record still ends by itself");
            return;
        }
        if !self.reap(id).await {
            tracing::warn!("a failed copy's blob is left to the sweeper");
        }
    }

    /// Seals a short text (a highlight's caption) under the data key of
    /// media `media`, bound to `aad` (see
    /// [`KeyStore::seal_with_media_key`]): shredding the media shreds the
    /// text. `Ok(None)` when the key is gone. Blocks (key store).
    pub fn seal_with_media_key(
        &self,
        media: Id,
        aad: &[u8],
        plaintext: &[u8],
    ) -> Result<Option<Vec<u8>>, StoreError> {
        self.0.keys.seal_with_media_key(&media.0, aad, plaintext)
    }

    /// Opens what [`MediaService::seal_with_media_key`] sealed; `None`
    /// once the media's key is destroyed, for another `aad`, or if it was
    /// tampered with. Blocks (key store).
    pub fn open_with_media_key(&self, media: Id, aad: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
        self.0.keys.open_with_media_key(&media.0, aad, sealed)
    }

    /// A server-side request (HEAD, DELETE) on a media object, signed in
    /// headers.
    async fn signed(&self, method: reqwest::Method, id: Id) -> Result<reqwest::Response, ()> {
        self.signed_key(method, &object_key(id)).await
    }

    /// A server-side request (HEAD, DELETE) on the object at `key`, signed
    /// in headers.
    async fn signed_key(
        &self,
        method: reqwest::Method,
        key: &str,
    ) -> Result<reqwest::Response, ()> {
        let url = self.0.endpoint.object_url(key).map_err(|_| ())?;
        self.signed_url(method, url).await
    }

    /// A server-side request without a body to `url`, signed in headers.
    async fn signed_url(
        &self,
        method: reqwest::Method,
        url: String,
    ) -> Result<reqwest::Response, ()> {
        let headers = sigv4::sign_request_headers(
            method.as_str(),
            &url,
            &self.0.credentials,
            self.0.endpoint.region(),
            SystemTime::now(),
            sigv4::UNSIGNED_PAYLOAD,
        )
        .map_err(|_| ())?;
        let mut req = self.0.http.request(method, &url);
        for (k, v) in headers {
            if k != "host" {
                req = req.header(k, v);
            }
        }
        req.send()
            .await
            .map_err(|e| tracing::warn!(error = %e.without_url(), "object storage request failed"))
    }

    /// The stored object's size, `None` if it is not there.
    async fn head(&self, id: Id) -> Result<Option<u64>, ()> {
        let resp = self.signed(reqwest::Method::HEAD, id).await?;
        match resp.status().as_u16() {
            // Not `content_length()`: for a HEAD reqwest reports the (empty)
            // body's length, 0, not the header.
            200 => Ok(resp
                .headers()
                .get(reqwest::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())),
            404 => Ok(None),
            status => {
                tracing::warn!(status, "object storage refused a HEAD");
                Err(())
            }
        }
    }

    /// Deletes the blob of a media object whose life is over, then its
    /// key and record. Returns whether it is all gone.
    async fn reap(&self, id: Id) -> bool {
        match self.signed(reqwest::Method::DELETE, id).await {
            Ok(r) if r.status().is_success() || r.status().as_u16() == 404 => {}
            Ok(r) => {
                tracing::warn!(
                    status = r.status().as_u16(),
                    "object storage refused a DELETE; retrying later"
                );
                return false;
            }
            Err(()) => return false,
        }
        let inner = Arc::clone(&self.0);
        let done = tokio::task::spawn_blocking(move || {
            inner.keys.destroy_media_key(&id.0)?;
            inner.store.delete_media(id)
        })
        .await;
        matches!(done, Ok(Ok(())))
    }

    /// One page of media object keys in the bucket (S3's
    /// `ListObjectsV2`, header-signed), from after `token`, and the token
    /// of the next page (`None` after the last).
    async fn list_page(&self, token: Option<&str>) -> Result<(Vec<String>, Option<String>), ()> {
        let mut query = vec![
            ("list-type", "2"),
            ("prefix", OBJECT_PREFIX),
            ("max-keys", ORPHAN_PAGE),
        ];
        if let Some(token) = token {
            query.push(("continuation-token", token));
        }
        let url = self.0.endpoint.bucket_url(&query);
        let resp = self.signed_url(reqwest::Method::GET, url).await?;
        if !resp.status().is_success() {
            tracing::warn!(
                status = resp.status().as_u16(),
                "object storage refused a listing"
            );
            return Err(());
        }
        let xml = resp.text().await.map_err(
            |e| tracing::warn!(error = %e.without_url(), "reading an object listing failed"),
        )?;
        Ok(parse_listing(&xml))
    }

    /// One step of the walk of the bucket for orphans: a page of objects,
    /// and the deletion of those no media record knows. Such a blob is
    /// nobody's: a record is written before its `put_url` exists and
    /// deleted only after its blob, so an orphan is a `PUT` that raced a
    /// reap, or (on an external S3, which cannot refuse it) a still-valid
    /// `put_url` used after its upload ended. Returns where the next step
    /// starts (`None`: at the beginning).
    async fn sweep_orphans(&self, token: Option<String>) -> Option<String> {
        let Ok((keys, next)) = self.list_page(token.as_deref()).await else {
            return token;
        };
        let ids: Vec<Id> = keys.iter().filter_map(|k| media_id(k)).collect();
        let store = Arc::clone(&self.0.store);
        // A record that cannot be read is not taken for absent.
        let orphans = tokio::task::spawn_blocking(move || {
            ids.into_iter()
                .filter(|id| matches!(store.media(*id), Ok(None)))
                .collect::<Vec<Id>>()
        })
        .await
        .unwrap_or_default();
        let mut deleted = 0usize;
        for id in &orphans {
            match self.signed(reqwest::Method::DELETE, *id).await {
                Ok(r) if r.status().is_success() || r.status().as_u16() == 404 => deleted += 1,
                Ok(r) => tracing::warn!(
                    status = r.status().as_u16(),
                    "object storage refused to delete an orphaned blob; retrying later"
                ),
                Err(()) => {}
            }
        }
        if deleted > 0 {
            tracing::info!(deleted, "deleted orphaned blobs");
        }
        next
    }

    /// One step of the media part of the sweep (see `crate::sweep`):
    /// deletes the blobs whose life is over (then their keys and records),
    /// takes one step of the walk of the bucket for orphaned blobs from
    /// `orphan_walk`, and forgets uploads that no longer count against a
    /// quota. Returns where the walk goes on.
    pub async fn sweep_step(&self, orphan_walk: Option<String>) -> Option<String> {
        let store = Arc::clone(&self.0.store);
        let due = tokio::task::spawn_blocking(move || store.media_due(now_ms(), 1_000)).await;
        match due {
            Ok(Ok(due)) => {
                for id in due {
                    self.reap(id).await;
                }
            }
            _ => tracing::error!("media sweep could not read the media records"),
        }
        let next = self.sweep_orphans(orphan_walk).await;
        self.0.quota.prune(now_ms());
        next
    }
}

/// The keys of a `ListObjectsV2` answer and, if it is truncated, the
/// token of the next page. S3's XML is regular enough to take apart by
/// its tags (keys and tokens are element text, entity-escaped).
fn parse_listing(xml: &str) -> (Vec<String>, Option<String>) {
    let texts = |tag: &str| -> Vec<String> {
        let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
        xml.split(open.as_str())
            .skip(1)
            .filter_map(|rest| rest.split_once(close.as_str()))
            .map(|(text, _)| xml_unescape(text))
            .collect()
    };
    let truncated = texts("IsTruncated").first().map(String::as_str) == Some("true");
    let next = texts("NextContinuationToken").pop().filter(|_| truncated);
    (texts("Key"), next)
}

/// XML element text with its five predefined entities (and numeric ones)
/// decoded.
fn xml_unescape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('&') {
        out.push_str(&rest[..at]);
        let tail = &rest[at..];
        let Some(end) = tail.find(';') else {
            out.push_str(tail);
            return out;
        };
        let entity = &tail[1..end];
        let decoded = match entity {
            "amp" => Some('&'),
            "lt" => Some('<'),
            "gt" => Some('>'),
            "quot" => Some('"'),
            "apos" => Some('\''),
            _ => entity
                .strip_prefix("#x")
                .and_then(|h| u32::from_str_radix(h, 16).ok())
                .or_else(|| entity.strip_prefix('#').and_then(|d| d.parse().ok()))
                .and_then(char::from_u32),
        };
        match decoded {
            Some(c) => out.push(c),
            None => out.push_str(&tail[..=end]),
        }
        rest = &tail[end + 1..];
    }
    out.push_str(rest);
    out
}

/// Ends media `id` at `until` (its key destroyed now with `destroy`, else
/// set to die then; its record ended then, for the sweep to delete its
/// blob and record). Blocks (storage).
fn end_media(inner: &Inner, id: Id, until: Millis, destroy: bool) -> Result<(), StoreError> {
    if destroy {
        inner.keys.destroy_media_key(&id.0)?;
    } else {
        inner.keys.set_media_until(&id.0, until)?;
    }
    if let Some(mut rec) = inner.store.media(id)? {
        rec.until = rec.until.min(until);
        inner.store.put_media(id, &rec)?;
    }
    Ok(())
}

/// An upload on its way from the uploader's home node to the node that
/// owns the conversation of the message using it (cluster mode): its
/// record and data key; the sealed object travels beside it.
#[derive(Debug, Serialize, Deserialize)]
pub struct HandOver {
    /// Declared type.
    pub content_type: String,
    /// The sealed object's exact size.
    pub bytes: u64,
    /// When its key and blob go.
    pub until: Millis,
    /// The data key, base64.
    pub key: String,
}

/// What the uploader's home says of an upload asked for.
pub enum Handed {
    /// Here it is; it is gone from the home node.
    Over(HandOver, Vec<u8>),
    /// Not a live, unused upload of that user.
    Unknown,
    /// Its object is not (completely) uploaded yet.
    Incomplete,
}

impl MediaService {
    /// At the uploader's home (cluster mode): gives up upload `id` of
    /// `owner` if it is live, complete and unused, for the node that owns
    /// the conversation of the message using it. From then on it is gone
    /// here (its key destroyed and its record ended before the answer, so
    /// a second claim finds nothing; the sweep deletes the blob).
    pub async fn hand_over(&self, id: Id, owner: UserId) -> Result<Handed, CopyError> {
        // One at a time: a check and its end are not split by another's.
        static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
        let _one = ONE_AT_A_TIME.lock().await;
        let inner = Arc::clone(&self.0);
        let found = tokio::task::spawn_blocking(move || -> Result<_, StoreError> {
            let Some(rec) = inner.store.media(id)? else {
                return Ok(None);
            };
            if rec.owner != owner || rec.until <= now_ms() || rec.until == KEPT || rec.is_bound() {
                return Ok(None);
            }
            Ok(inner.keys.media_key(&id.0)?.map(|k| (rec, k)))
        })
        .await
        .map_err(|_| CopyError::Unavailable)??;
        let Some((rec, key)) = found else {
            return Ok(Handed::Unknown);
        };
        let sealed = match self.fetch(id, rec.bytes).await {
            Ok(b) => b,
            Err(CopyError::Damaged | CopyError::Gone) => return Ok(Handed::Incomplete),
            Err(e) => return Err(e),
        };
        let inner = Arc::clone(&self.0);
        tokio::task::spawn_blocking(move || end_media(&inner, id, now_ms(), true))
            .await
            .map_err(|_| CopyError::Unavailable)??;
        Ok(Handed::Over(
            HandOver {
                content_type: rec.content_type,
                bytes: rec.bytes,
                until: rec.until,
                key: base64::engine::general_purpose::STANDARD.encode(key),
            },
            sealed,
        ))
    }

    /// At the conversation's owner: keeps a handed-over upload as one of
    /// this node's own (key first, then record, then object, as a mint and
    /// an upload would leave them).
    pub async fn take_over(
        &self,
        id: Id,
        owner: UserId,
        h: HandOver,
        sealed: Vec<u8>,
    ) -> Result<(), CopyError> {
        let key: [u8; 32] = base64::engine::general_purpose::STANDARD
            .decode(&h.key)
            .ok()
            .and_then(|k| k.try_into().ok())
            .ok_or(CopyError::Damaged)?;
        if sealed.len() as u64 != h.bytes {
            return Err(CopyError::Damaged);
        }
        let rec = MediaRecord {
            owner,
            content_type: h.content_type,
            bytes: h.bytes,
            created_at: now_ms(),
            bound: None,
            story: None,
            until: h.until,
        };
        let inner = Arc::clone(&self.0);
        tokio::task::spawn_blocking(move || -> Result<(), StoreError> {
            inner.keys.put_media_key(&id.0, &key, rec.until)?;
            inner.store.put_media(id, &rec)
        })
        .await
        .map_err(|_| CopyError::Unavailable)??;
        self.put_object(&object_key(id), sealed).await
    }

    /// Cluster mode: the record of upload `id` of `owner` after moving it
    /// here from the owner's home node, if it is there (`None`: no such
    /// upload anywhere).
    async fn moved_here(&self, id: Id, owner: UserId) -> Result<Option<MediaRecord>, FrameError> {
        let unavailable = || refuse(ErrorCode::Unavailable, "media lookup failed, retry");
        let Some(cluster) = self.0.store.cluster().cloned() else {
            return Ok(None);
        };
        let Some(bus) = cluster.bus().cloned() else {
            return Ok(None);
        };
        let node = match bus.owner(owner, false).await {
            Ok(Some(ephemera_actors::remote::Place::Remote(node))) => node,
            Ok(_) => return Ok(None),
            Err(_) => return Err(unavailable()),
        };
        match crate::cluster::route::fetch_upload(&cluster, &node, id, owner).await {
            Some(Handed::Over(h, sealed)) => {
                self.take_over(id, owner, h, sealed).await.map_err(|e| {
                    tracing::error!(error = %e, "keeping an upload handed over failed");
                    unavailable()
                })?;
                let store = Arc::clone(&self.0.store);
                tokio::task::spawn_blocking(move || store.media(id))
                    .await
                    .map_err(|_| unavailable())?
                    .map_err(|_| refuse(ErrorCode::Internal, "storage failure"))
            }
            Some(Handed::Unknown) => Ok(None),
            Some(Handed::Incomplete) => {
                Err(refuse(ErrorCode::Invalid, "the upload is not complete"))
            }
            None => Err(unavailable()),
        }
    }
}

fn refuse(code: ErrorCode, message: &'static str) -> FrameError {
    FrameError::new(code, message)
}

impl MediaAccess for MediaService {
    fn claimable(
        &self,
        id: Id,
        owner: UserId,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<MediaRef, FrameError>> + Send>>
    {
        let svc = self.clone();
        Box::pin(async move {
            let store = Arc::clone(&svc.0.store);
            let rec = tokio::task::spawn_blocking(move || store.media(id))
                .await
                .map_err(|_| refuse(ErrorCode::Unavailable, "media lookup failed, retry"))?
                .map_err(|_| refuse(ErrorCode::Internal, "storage failure"))?;
            // Cluster mode: an upload made at the sender's home moves to the
            // conversation's owner when a message first uses it.
            let rec = match rec {
                None => svc.moved_here(id, owner).await?,
                found => found,
            };
            // Someone else's upload is indistinguishable from none at all.
            let rec = match rec {
                Some(r) if r.owner == owner && r.until > now_ms() => r,
                _ => return Err(refuse(ErrorCode::NotFound, "no such media_key")),
            };
            // A highlight's copy: its key lives until the highlight does,
            // and a message binding it would end it with the message.
            if rec.until == KEPT {
                return Err(refuse(ErrorCode::Invalid, "media_key is already used"));
            }
            // `bytes` is the object's exact size (PROTOCOL 4). The put_url
            // binds it already; this also covers URLs minted before it did.
            match svc.head(id).await {
                Ok(Some(n)) if n == rec.bytes => {}
                Ok(Some(_)) => {
                    return Err(refuse(
                        ErrorCode::Invalid,
                        "the upload does not match its declared size",
                    ))
                }
                Ok(None) => return Err(refuse(ErrorCode::Invalid, "the upload is not complete")),
                Err(()) => {
                    return Err(refuse(
                        ErrorCode::Unavailable,
                        "object storage unavailable, retry",
                    ))
                }
            }
            Ok(MediaRef {
                id,
                content_type: rec.content_type,
                bytes: rec.bytes,
            })
        })
    }

    fn grant(&self, media: &MediaRef, access: Access, expires_at: Millis) -> Option<MediaGrant> {
        let Some(key) = self.0.keys.media_key(&media.id.0).ok()? else {
            // Not this node's: a grant its owner minted, if one came lately.
            let remembered = self.0.remembered.lock().unwrap_or_else(|p| p.into_inner());
            return remembered
                .get(&media.id)
                .filter(|(_, at)| at.elapsed() < REMEMBERED)
                .map(|(g, _)| g.clone());
        };
        let left = expires_at.saturating_sub(now_ms()) / 1000;
        let cap = match access {
            Access::Once => ONCE_GET_URL_SECS,
            Access::Timed | Access::Story => GET_URL_SECS,
        };
        // Never outlive the content; a cached copy never outlives it either.
        // A cache's max-age runs from when the object is served, which may
        // be as late as the URL's last second: for a story the seconds left
        // are split between the URL and the cache (the URL takes at most
        // half), so served at any time and kept for max-age, the copy is
        // gone by `expires_at`.
        let (secs, caching) = match access {
            Access::Timed | Access::Once => (left.clamp(1, cap), "no-store".to_owned()),
            Access::Story => {
                let secs = (left / 2).clamp(1, cap);
                let max_age = left.saturating_sub(secs);
                (secs, format!("private, max-age={max_age}"))
            }
        };
        let get_url = sigv4::presign(
            "GET",
            &self.0.endpoint,
            &object_key(media.id),
            &self.0.credentials,
            SystemTime::now(),
            secs,
            &[("response-cache-control", &caching)],
        )
        .ok()?;
        Some(MediaGrant {
            get_url,
            data_key: base64::engine::general_purpose::STANDARD.encode(key),
        })
    }

    fn remember(&self, media: Id, grant: MediaGrant) {
        let mut remembered = self.0.remembered.lock().unwrap_or_else(|p| p.into_inner());
        if remembered.len() >= 4_096 {
            remembered.retain(|_, (_, at)| at.elapsed() < REMEMBERED);
        }
        remembered.insert(media, (grant, std::time::Instant::now()));
    }

    fn shred(&self, media: &MediaRef, fuse_ms: u64) {
        let inner = Arc::clone(&self.0);
        let id = media.id;
        let until = now_ms() + fuse_ms;
        tokio::task::spawn_blocking(move || {
            if let Err(e) = end_media(&inner, id, until, fuse_ms == 0) {
                tracing::error!(error = %e, "shredding a media key failed; it still dies at its expiry");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;

    use actix_web::dev::ServerHandle;
    use actix_web::{web, App, HttpServer};

    use super::super::blobstore::{self, BlobStore};
    use super::super::sigv4::Region;
    use super::*;
    use crate::config::Durability;

    /// The service over a real key store, media records and embedded blob
    /// store (with its upload gate) on a socket of its own.
    struct Rig {
        svc: MediaService,
        store: Arc<RocksStore>,
        keys: Arc<KeyStore>,
        /// The bucket's directory (object `m/<id>` is the file `m+<id>`).
        bucket_dir: std::path::PathBuf,
        http: reqwest::Client,
        handle: ServerHandle,
        _dir: tempfile::TempDir,
    }

    async fn rig(max_object_bytes: u64) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let keys = Arc::new(KeyStore::open(&dir.path().join("keys")).unwrap());
        let store = Arc::new(
            RocksStore::open(
                &dir.path().join("db"),
                Arc::clone(&keys),
                Durability::Wal,
                3600,
            )
            .unwrap(),
        );
        let credentials = Credentials::new("ephemera-test", "test-secret-do-not-log");
        let blobs = BlobStore::open(
            dir.path().join("blobs"),
            "media",
            Region::new("us-east-1"),
            blobstore::static_keys([credentials.clone()]),
            max_object_bytes,
        )
        .unwrap()
        .with_upload_gate(upload_gate(Arc::clone(&store)));
        let bucket_dir = blobs.root().join("media");
        let blobs = web::Data::new(blobs);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let app_blobs = blobs.clone();
        let server =
            HttpServer::new(move || App::new().service(blobstore::service(app_blobs.clone())))
                .workers(1)
                .disable_signals()
                .listen(listener)
                .unwrap()
                .run();
        let handle = server.handle();
        actix_web::rt::spawn(server);
        let endpoint = blobs.endpoint(&format!("http://{addr}")).unwrap();
        let limits = UploadLimits {
            rate_per_second: 100,
            burst: 100,
            max_pending: 100,
            max_pending_bytes: 1 << 30,
        };
        let svc = MediaService::new(
            Arc::clone(&store),
            Arc::clone(&keys),
            endpoint,
            credentials,
            limits,
            Vec::new(),
        )
        .unwrap();
        Rig {
            svc,
            store,
            keys,
            bucket_dir,
            http: reqwest::Client::new(),
            handle,
            _dir: dir,
        }
    }

    /// A client's sealed file: nonce, ciphertext, tag.
    fn seal_file(key: &[u8; 32], plain: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        random_bytes(&mut nonce);
        let mut out = nonce.to_vec();
        out.extend_from_slice(plain);
        let tag = aead(key)
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::empty(),
                &mut out[NONCE_LEN..],
            )
            .unwrap();
        out.extend_from_slice(tag.as_ref());
        out
    }

    /// A client's opening of a sealed file.
    fn open_file(key: &[u8; 32], sealed: &[u8]) -> Option<Vec<u8>> {
        let nonce = Nonce::try_assume_unique_for_key(&sealed[..NONCE_LEN]).ok()?;
        let mut buf = sealed[NONCE_LEN..].to_vec();
        let plain = aead(key)
            .open_in_place(nonce, Aad::empty(), &mut buf)
            .ok()?;
        Some(plain.to_vec())
    }

    /// The value of query parameter `name` of `url`, percent-decoded.
    fn query_param(url: &str, name: &str) -> Option<String> {
        let query = url.split_once('?')?.1;
        let raw = query
            .split('&')
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))?;
        let bytes = raw.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] == b'%' {
                out.push(u8::from_str_radix(raw.get(i + 1..i + 3)?, 16).ok()?);
                i += 3;
            } else {
                out.push(bytes[i]);
                i += 1;
            }
        }
        String::from_utf8(out).ok()
    }

    impl Rig {
        /// An upload as a client makes one: minted, sealed, PUT, claimed.
        async fn upload(&self, owner: UserId, plain: &[u8]) -> (MediaRef, [u8; 32]) {
            let bytes = plain.len() as u64 + SEAL_OVERHEAD;
            let grant = self.svc.mint_upload(owner, "image/jpeg", bytes).unwrap();
            let key: [u8; 32] = base64::engine::general_purpose::STANDARD
                .decode(&grant.data_key)
                .unwrap()
                .try_into()
                .unwrap();
            let r = self
                .http
                .put(&grant.put_url)
                .body(seal_file(&key, plain))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            let media = self.svc.claimable(grant.media_key, owner).await.unwrap();
            (media, key)
        }

        /// The stored object, through a GET URL the service grants.
        async fn get(&self, media: &MediaRef) -> (u16, Vec<u8>) {
            let grant = self
                .svc
                .grant(media, Access::Timed, now_ms() + 60_000)
                .expect("the key is live");
            let r = self.http.get(&grant.get_url).send().await.unwrap();
            (r.status().as_u16(), r.bytes().await.unwrap().to_vec())
        }

        /// The files in the bucket's directory.
        fn files(&self) -> Vec<String> {
            let mut names: Vec<String> = std::fs::read_dir(&self.bucket_dir)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            names
        }

        /// Puts an object straight into the bucket's directory.
        fn put_file(&self, id: Id, body: &[u8]) {
            std::fs::write(self.bucket_dir.join(format!("m+{id}")), body).unwrap();
        }

        async fn stop(self) {
            self.handle.stop(true).await;
        }
    }

    #[actix_web::test]
    async fn a_copy_is_the_same_file_under_a_key_of_its_own_until_shredded() {
        let rig = rig(MAX_MEDIA_BYTES).await;
        let owner = Id::random();
        let plain: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let (src, src_key) = rig.upload(owner, &plain).await;

        let (copy, key) = rig.svc.copy_sealed(&src, owner).await.unwrap();
        assert_ne!(copy.id, src.id);
        assert_ne!(key, src_key);
        assert_eq!(copy.bytes, src.bytes);
        assert_eq!(copy.content_type, "image/jpeg");
        assert_eq!(rig.keys.media_key(&copy.id.0).unwrap(), Some(key));
        let rec = rig.store.media(copy.id).unwrap().unwrap();
        assert_eq!(
            (rec.owner, rec.bytes, rec.bound, rec.until),
            (owner, src.bytes, None, KEPT)
        );

        let (status, stored) = rig.get(&copy).await;
        assert_eq!(status, 200);
        assert_eq!(stored.len() as u64, copy.bytes);
        let (_, source) = rig.get(&src).await;
        assert_ne!(stored[..NONCE_LEN], source[..NONCE_LEN], "a fresh nonce");
        assert_eq!(open_file(&key, &stored).as_deref(), Some(&plain[..]));
        assert_eq!(
            open_file(&src_key, &stored),
            None,
            "not under the story's key"
        );
        // The highlight's caption, sealed under the copy's key.
        let highlight = Id::random();
        let caption = rig
            .svc
            .seal_with_media_key(copy.id, &highlight.0, b"caption canary")
            .unwrap()
            .unwrap();
        assert_eq!(
            rig.svc
                .open_with_media_key(copy.id, &highlight.0, &caption)
                .as_deref(),
            Some(&b"caption canary"[..])
        );

        // Kept: not an upload (the gate is shut, the quota does not count
        // it) and no message may bind it.
        let gate = upload_gate(Arc::clone(&rig.store));
        assert_eq!(gate(&object_key(copy.id)), Admission::Closed);
        assert!(!open_for_upload(&rec, now_ms()));
        let refused = rig.svc.claimable(copy.id, owner).await.unwrap_err();
        assert_eq!(refused.code, ErrorCode::Invalid);
        assert!(!rig
            .store
            .media_due(now_ms(), 1000)
            .unwrap()
            .contains(&copy.id));

        // The story ends: the copy lives on.
        rig.svc.shred(&src, 0);
        for _ in 0..100 {
            if rig.store.media(src.id).unwrap().unwrap().until <= now_ms() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(rig.svc.reap(src.id).await);
        assert_eq!(rig.get(&copy).await.1, stored);
        let gone = rig.svc.copy_sealed(&src, owner).await.unwrap_err();
        assert!(matches!(gone, CopyError::Gone), "{gone:?}");

        // The highlight is deleted: shred (key at once), then the sweeper's
        // pass finds the record due and deletes blob and record.
        let url = rig
            .svc
            .grant(&copy, Access::Timed, now_ms() + 60_000)
            .unwrap();
        rig.svc.shred(&copy, 0);
        for _ in 0..100 {
            if rig.store.media(copy.id).unwrap().unwrap().until <= now_ms() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(rig.keys.media_key(&copy.id.0).unwrap(), None);
        assert_eq!(
            rig.svc.open_with_media_key(copy.id, &highlight.0, &caption),
            None,
            "the caption is shredded with the copy"
        );
        assert!(rig
            .svc
            .grant(&copy, Access::Timed, now_ms() + 60_000)
            .is_none());
        assert!(rig
            .store
            .media_due(now_ms(), 1000)
            .unwrap()
            .contains(&copy.id));
        assert!(rig.svc.reap(copy.id).await);
        assert!(rig.store.media(copy.id).unwrap().is_none());
        let r = rig.http.get(&url.get_url).send().await.unwrap();
        assert_eq!(r.status(), 404);
        assert!(rig.files().is_empty(), "{:?}", rig.files());
        rig.stop().await;
    }

    #[actix_web::test]
    async fn a_copy_that_fails_leaves_nothing() {
        // Objects over 1,000 bytes are refused on PUT: a source put
        // straight on disk reads, its copy cannot be written.
        let rig = rig(1_000).await;
        let owner = Id::random();
        let mut src_key = [0u8; 32];
        random_bytes(&mut src_key);
        let src = MediaRef {
            id: Id::random(),
            content_type: "video/mp4".to_owned(),
            bytes: 2_000,
        };
        rig.keys
            .put_media_key(&src.id.0, &src_key, now_ms() + 60_000)
            .unwrap();
        let only_source = vec![format!("m+{}", src.id)];

        // The blob is not there (yet).
        let e = rig.svc.copy_sealed(&src, owner).await.unwrap_err();
        assert!(matches!(e, CopyError::Gone), "{e:?}");

        let sealed = seal_file(&src_key, &[7u8; 2_000 - 28]);
        rig.put_file(src.id, &sealed);
        // The PUT of the copy is refused after its key and record exist.
        let e = rig.svc.copy_sealed(&src, owner).await.unwrap_err();
        assert!(matches!(e, CopyError::Unavailable), "{e:?}");
        assert!(rig.store.media_records().unwrap().is_empty());
        assert_eq!(rig.files(), only_source);

        // Another size than declared; not sealed under the key.
        let shorter = MediaRef {
            bytes: 1_999,
            ..src.clone()
        };
        let e = rig.svc.copy_sealed(&shorter, owner).await.unwrap_err();
        assert!(matches!(e, CopyError::Damaged), "{e:?}");
        let mut tampered = sealed.clone();
        tampered[100] ^= 1;
        rig.put_file(src.id, &tampered);
        let e = rig.svc.copy_sealed(&src, owner).await.unwrap_err();
        assert!(matches!(e, CopyError::Damaged), "{e:?}");
        let e = rig
            .svc
            .copy_sealed(
                &MediaRef {
                    bytes: 27,
                    ..src.clone()
                },
                owner,
            )
            .await
            .unwrap_err();
        assert!(matches!(e, CopyError::Damaged), "{e:?}");
        assert!(rig.store.media_records().unwrap().is_empty());
        assert_eq!(rig.files(), only_source);

        // The source's key is gone: nothing to copy.
        rig.put_file(src.id, &sealed);
        rig.keys.destroy_media_key(&src.id.0).unwrap();
        let e = rig.svc.copy_sealed(&src, owner).await.unwrap_err();
        assert!(matches!(e, CopyError::Gone), "{e:?}");
        assert!(format!("{e} {e:?}").len() < 100, "no content in errors");
        rig.stop().await;
    }

    #[actix_web::test]
    async fn a_copy_whose_caller_went_away_is_undone() {
        let rig = rig(MAX_MEDIA_BYTES).await;
        let owner = Id::random();
        let (src, _) = rig.upload(owner, &[5u8; 100_000]).await;
        let only_source = vec![format!("m+{}", src.id)];

        // Polled once (the copy starts on its task), then dropped, as a
        // request whose client disconnected.
        let mut copying = Box::pin(rig.svc.copy_sealed(&src, owner));
        let first = std::future::poll_fn(|cx| {
            std::task::Poll::Ready(std::future::Future::poll(copying.as_mut(), cx))
        })
        .await;
        assert!(first.is_pending());
        drop(copying);

        // The task runs once this one yields; then it finishes the copy
        // and finds nobody to take it.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut clean = false;
        for _ in 0..200 {
            let records: Vec<Id> = rig
                .store
                .media_records()
                .unwrap()
                .into_iter()
                .map(|(id, _)| id)
                .collect();
            clean = rig.svc.0.copies.available_permits() == COPIES_AT_ONCE
                && records == [src.id]
                && rig.files() == only_source;
            if clean {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(clean, "left behind: {:?}", rig.files());
        rig.stop().await;
    }

    #[test]
    fn reseal_moves_a_file_to_another_key() {
        let (mut a, mut b) = ([0u8; 32], [0u8; 32]);
        random_bytes(&mut a);
        random_bytes(&mut b);
        let sealed = seal_file(&a, b"the same plaintext");
        let moved = reseal(&a, &b, sealed.clone()).unwrap();
        assert_eq!(moved.len(), sealed.len());
        assert_ne!(moved[..NONCE_LEN], sealed[..NONCE_LEN]);
        assert_eq!(open_file(&b, &moved).unwrap(), b"the same plaintext");
        assert_eq!(open_file(&a, &moved), None);
        assert_eq!(reseal(&b, &a, sealed.clone()), None, "wrong key");
        assert_eq!(reseal(&a, &b, sealed[..27].to_vec()), None, "too short");
        let empty = seal_file(&a, b"");
        assert_eq!(open_file(&b, &reseal(&a, &b, empty).unwrap()).unwrap(), b"");
    }

    #[actix_web::test]
    async fn story_grants_are_cacheable_for_at_most_the_seconds_left() {
        let rig = rig(MAX_MEDIA_BYTES).await;
        let media = MediaRef {
            id: Id::random(),
            content_type: "image/jpeg".to_owned(),
            bytes: 40,
        };
        let mut key = [0u8; 32];
        random_bytes(&mut key);
        rig.keys.put_media_key(&media.id.0, &key, KEPT).unwrap();
        rig.put_file(media.id, &seal_file(&key, &[1u8; 12]));

        for left_ms in [86_400_000u64, 90_500, 1_500, 400, 0] {
            let before = now_ms();
            let expires_at = before + left_ms;
            let grant = rig.svc.grant(&media, Access::Story, expires_at).unwrap();
            let caching = query_param(&grant.get_url, "response-cache-control").unwrap();
            let n: u64 = caching
                .strip_prefix("private, max-age=")
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("{caching}"));
            assert!(n <= left_ms / 1000, "max-age {n} with {left_ms} ms left");
            let valid: u64 = query_param(&grant.get_url, "X-Amz-Expires")
                .unwrap()
                .parse()
                .unwrap();
            assert!((1..=GET_URL_SECS).contains(&valid));
            // Served in the URL's last second and kept for max-age: still
            // gone by the end (a URL lives at least 1 s, so with under 2 s
            // left nothing may be cached).
            assert!(
                valid + n <= (left_ms / 1000).max(1),
                "valid {valid} s + max-age {n} with {left_ms} ms left"
            );
            if left_ms >= 2 * GET_URL_SECS * 1000 {
                assert_eq!(valid, GET_URL_SECS);
                assert!(n + valid + 1 >= left_ms / 1000, "cacheable for the rest");
            }
            // The embedded store answers with exactly that.
            let r = rig.http.get(&grant.get_url).send().await.unwrap();
            assert_eq!(r.status(), 200);
            assert_eq!(r.headers()["cache-control"], caching.as_str());
        }
        // Messages' media is never cached.
        for access in [Access::Timed, Access::Once] {
            let grant = rig.svc.grant(&media, access, now_ms() + 60_000).unwrap();
            assert_eq!(
                query_param(&grant.get_url, "response-cache-control").as_deref(),
                Some("no-store")
            );
            let r = rig.http.get(&grant.get_url).send().await.unwrap();
            assert_eq!(r.headers()["cache-control"], "no-store");
        }
        rig.stop().await;
    }

    #[test]
    fn listings_are_taken_apart() {
        let page = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<ListBucketResult \
            xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Name>media</Name>\
            <Prefix>m/</Prefix><KeyCount>2</KeyCount><MaxKeys>2</MaxKeys>\
            <IsTruncated>true</IsTruncated><Contents><Key>m/a</Key><Size>3</Size></Contents>\
            <Contents><Key>m/b&amp;c</Key><Size>4</Size></Contents>\
            <NextContinuationToken>1ueGcxLPRx1Tr/XYExHnhbYLgveDs2J/wm36Hy4vbOwM=\
            </NextContinuationToken></ListBucketResult>";
        let (keys, next) = parse_listing(page);
        assert_eq!(keys, ["m/a", "m/b&c"]);
        assert_eq!(
            next.as_deref(),
            Some("1ueGcxLPRx1Tr/XYExHnhbYLgveDs2J/wm36Hy4vbOwM=")
        );
        let last = "<ListBucketResult><IsTruncated>false</IsTruncated>\
            <Contents><Key>m/z</Key></Contents></ListBucketResult>";
        assert_eq!(parse_listing(last), (vec!["m/z".to_owned()], None));
        assert_eq!(parse_listing(""), (Vec::new(), None));
    }

    #[test]
    fn xml_entities() {
        assert_eq!(xml_unescape("a&lt;b&gt;&amp;&quot;&apos;"), "a<b>&\"'");
        assert_eq!(xml_unescape("&#65;&#x42;"), "AB");
        assert_eq!(xml_unescape("&bogus; & tail"), "&bogus; & tail");
    }

    #[test]
    fn object_keys_are_under_the_prefix() {
        let id = Id([0xab; 16]);
        assert_eq!(object_key(id), format!("m/{id}"));
        assert_eq!(media_id(&object_key(id)), Some(id));
        // The quarantine's copies are outside the prefix the orphan walk
        // lists, so it never deletes them.
        assert_eq!(quarantine_key(id), format!("quarantine/{id}"));
        assert!(!quarantine_key(id).starts_with(OBJECT_PREFIX));
        assert_eq!(media_id(&quarantine_key(id)), None);
    }
}
