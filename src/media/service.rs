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

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use base64::Engine;
use ephemera_actors::frames::{ErrorCode, FrameError};
use ephemera_actors::ids::{random_bytes, Id, UserId};
use ephemera_actors::store::{now_ms, Access, MediaAccess, MediaGrant, MediaRef, Millis};

use super::blobstore::{Admission, UploadGate};
use super::quota::{Refusal, UploadLimits, UploadQuota};
use super::sigv4::{self, Credentials, Endpoint};
use crate::keystore::KeyStore;
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
/// How often the media sweeper looks for blobs to delete.
const SWEEP_EVERY: Duration = Duration::from_secs(5);
/// Every media object's key starts with this (see [`object_key`]).
const OBJECT_PREFIX: &str = "m/";
/// Objects one step of the orphan walk lists (S3's page size).
const ORPHAN_PAGE: &str = "1000";

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
}

/// The media service (cheap to clone).
#[derive(Clone)]
pub struct MediaService(Arc<Inner>);

/// The object key of a media id in the bucket.
fn object_key(id: Id) -> String {
    format!("{OBJECT_PREFIX}{id}")
}

/// Whether a media record is open for upload at `now`: no message uses it
/// and its life has not ended.
fn open_for_upload(rec: &MediaRecord, now: Millis) -> bool {
    !rec.is_bound() && rec.until > now
}

/// The embedded store's [`UploadGate`]: a `PUT` to `m/<id>` is accepted
/// only while the media record exists, no message uses it and its life has
/// not ended, and only at exactly its declared size. So a `put_url` dies
/// with its upload: after a send it cannot replace the object a message
/// uses, and after an unsend, a burn or an expiry it cannot bring a
/// deleted blob back.
pub fn upload_gate(store: Arc<RocksStore>) -> UploadGate {
    Arc::new(move |key: &str| {
        let Some(id) = key.strip_prefix(OBJECT_PREFIX).and_then(Id::parse) else {
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

    /// A server-side request (HEAD, DELETE) on a media object, signed in
    /// headers.
    async fn signed(&self, method: reqwest::Method, id: Id) -> Result<reqwest::Response, ()> {
        let url = self
            .0
            .endpoint
            .object_url(&object_key(id))
            .map_err(|_| ())?;
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
        let ids: Vec<Id> = keys
            .iter()
            .filter_map(|k| k.strip_prefix(OBJECT_PREFIX).and_then(Id::parse))
            .collect();
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

    /// Every few seconds, forever: deletes the blobs whose life is over,
    /// takes one step of the walk for orphaned blobs, and forgets uploads
    /// that no longer count against a quota.
    pub fn start_sweeper(&self) {
        let svc = self.clone();
        actix_web::rt::spawn(async move {
            let mut tick = tokio::time::interval(SWEEP_EVERY);
            let mut orphan_walk: Option<String> = None;
            loop {
                tick.tick().await;
                let store = Arc::clone(&svc.0.store);
                let due =
                    tokio::task::spawn_blocking(move || store.media_due(now_ms(), 1_000)).await;
                match due {
                    Ok(Ok(due)) => {
                        for id in due {
                            svc.reap(id).await;
                        }
                    }
                    _ => tracing::error!("media sweep could not read the media records"),
                }
                orphan_walk = svc.sweep_orphans(orphan_walk.take()).await;
                svc.0.quota.prune(now_ms());
            }
        });
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
            // Someone else's upload is indistinguishable from none at all.
            let rec = match rec {
                Some(r) if r.owner == owner && r.until > now_ms() => r,
                _ => return Err(refuse(ErrorCode::NotFound, "no such media_key")),
            };
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
        let key = self.0.keys.media_key(&media.id.0).ok()??;
        let left = expires_at.saturating_sub(now_ms()) / 1000;
        let cap = match access {
            Access::Once => ONCE_GET_URL_SECS,
            Access::Timed | Access::Story => GET_URL_SECS,
        };
        // Never outlive the content; a cached copy never outlives it either.
        let secs = left.clamp(1, cap);
        let caching = match access {
            Access::Timed | Access::Once => "no-store".to_owned(),
            Access::Story => format!("private, max-age={left}"),
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

    fn shred(&self, media: &MediaRef, fuse_ms: u64) {
        let inner = Arc::clone(&self.0);
        let id = media.id;
        let until = now_ms() + fuse_ms;
        tokio::task::spawn_blocking(move || {
            let shortened = (|| {
                if fuse_ms == 0 {
                    inner.keys.destroy_media_key(&id.0)?;
                } else {
                    inner.keys.set_media_until(&id.0, until)?;
                }
                if let Some(mut rec) = inner.store.media(id)? {
                    rec.until = rec.until.min(until);
                    inner.store.put_media(id, &rec)?;
                }
                Ok::<_, StoreError>(())
            })();
            if let Err(e) = shortened {
                tracing::error!(error = %e, "shredding a media key failed; it still dies at its expiry");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(
            object_key(id)
                .strip_prefix(OBJECT_PREFIX)
                .and_then(Id::parse),
            Some(id)
        );
    }
}
