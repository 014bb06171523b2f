//! The media service: mints upload URLs and data keys, claims an upload
//! for the one message that may use it, grants short-lived GET URLs to
//! entitled readers, and shreds (key first, then blob) when the content
//! ends. One code path serves the embedded store and an external S3: both
//! are spoken to with presigned URLs and header-signed requests.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use base64::Engine;
use ephemera_actors::frames::{ErrorCode, FrameError};
use ephemera_actors::ids::{random_bytes, Id, UserId};
use ephemera_actors::store::{now_ms, MediaAccess, MediaGrant, MediaRef, Millis};

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
/// The largest object a client may declare.
pub const MAX_MEDIA_BYTES: u64 = 100 << 20;
/// Bytes a sealed object has beyond its plaintext (nonce and GCM tag).
pub const SEAL_OVERHEAD: u64 = 28;
/// How often the media sweeper looks for blobs to delete.
const SWEEP_EVERY: Duration = Duration::from_secs(5);

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

struct Inner {
    store: Arc<RocksStore>,
    keys: Arc<KeyStore>,
    endpoint: Endpoint,
    credentials: Credentials,
    http: reqwest::Client,
}

/// The media service (cheap to clone).
#[derive(Clone)]
pub struct MediaService(Arc<Inner>);

/// The object key of a media id in the bucket.
fn object_key(id: Id) -> String {
    format!("m/{id}")
}

impl MediaService {
    /// A service storing objects at `endpoint` with `credentials`.
    pub fn new(
        store: Arc<RocksStore>,
        keys: Arc<KeyStore>,
        endpoint: Endpoint,
        credentials: Credentials,
    ) -> Self {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .expect("an HTTP client without TLS always builds");
        MediaService(Arc::new(Inner {
            store,
            keys,
            endpoint,
            credentials,
            http,
        }))
    }

    /// Mints a media object for `owner`: its id, data key and upload URL.
    pub fn mint_upload(
        &self,
        owner: UserId,
        content_type: &str,
        bytes: u64,
    ) -> Result<UploadGrant, StoreError> {
        let id = Id::random();
        let mut key = [0u8; 32];
        random_bytes(&mut key);
        let now = now_ms();
        let until = now + UPLOAD_URL_SECS * 1000 + UNCLAIMED_GRACE_MS;
        // Key first: a record (and so an upload) never exists without it.
        self.0.keys.put_media_key(&id.0, &key, until)?;
        let rec = MediaRecord {
            owner,
            content_type: content_type.to_owned(),
            bytes,
            created_at: now,
            bound: None,
            until,
        };
        self.0.store.put_media(id, &rec)?;
        let put_url = sigv4::presign(
            "PUT",
            &self.0.endpoint,
            &object_key(id),
            &self.0.credentials,
            SystemTime::now(),
            UPLOAD_URL_SECS,
            &[],
        )
        .map_err(|_| StoreError::Corrupt("presign"))?;
        Ok(UploadGrant {
            media_key: id,
            put_url,
            expires_in: UPLOAD_URL_SECS,
            data_key: base64::engine::general_purpose::STANDARD.encode(key),
        })
    }

    /// A server-side request (HEAD, DELETE) signed in headers.
    async fn signed(&self, method: reqwest::Method, id: Id) -> Result<reqwest::Response, ()> {
        let url = self
            .0
            .endpoint
            .object_url(&object_key(id))
            .map_err(|_| ())?;
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

    /// Deletes blobs whose life is over, every few seconds, forever.
    pub fn start_sweeper(&self) {
        let svc = self.clone();
        actix_web::rt::spawn(async move {
            let mut tick = tokio::time::interval(SWEEP_EVERY);
            loop {
                tick.tick().await;
                let store = Arc::clone(&svc.0.store);
                let due =
                    tokio::task::spawn_blocking(move || store.media_due(now_ms(), 1_000)).await;
                let Ok(Ok(due)) = due else {
                    tracing::error!("media sweep could not read the media records");
                    continue;
                };
                for id in due {
                    svc.reap(id).await;
                }
            }
        });
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
            // Someone else's upload is indistinguishable from none at all.
            let rec = match rec {
                Some(r) if r.owner == owner && r.until > now_ms() => r,
                _ => return Err(refuse(ErrorCode::NotFound, "no such media_key")),
            };
            match svc.head(id).await {
                Ok(Some(n)) if n == rec.bytes + SEAL_OVERHEAD => {}
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

    fn grant(&self, media: &MediaRef, once: bool, expires_at: Millis) -> Option<MediaGrant> {
        let key = self.0.keys.media_key(&media.id.0).ok()??;
        let left = expires_at.saturating_sub(now_ms()) / 1000;
        let cap = if once {
            ONCE_GET_URL_SECS
        } else {
            GET_URL_SECS
        };
        // Never outlive the content, never be cached.
        let secs = left.clamp(1, cap);
        let get_url = sigv4::presign(
            "GET",
            &self.0.endpoint,
            &object_key(media.id),
            &self.0.credentials,
            SystemTime::now(),
            secs,
            &[("response-cache-control", "no-store")],
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
