//! The embedded S3-compatible blob endpoint: media ciphertext on local disk,
//! so a single machine needs no object store. It speaks the part of S3 that
//! the server and its clients use, path-style, and verifies the same SigV4
//! signatures an external S3 does, so the server treats both alike.
//!
//! | request on `<prefix>/<bucket>/<key>` | authentication | answer |
//! |---|---|---|
//! | `PUT` | presigned | `200`; the body is streamed to a temporary file, fsynced, renamed into place |
//! | `GET` | presigned | `200`, the object streamed; `Cache-Control` from the signed `response-cache-control`, else `no-store` |
//! | `HEAD` | presigned or header-signed | `200` with `Content-Length` |
//! | `DELETE` | presigned or header-signed | `204`, whether or not the object existed (as S3) |
//! | `GET` on `<prefix>/<bucket>?list-type=2` | presigned or header-signed | `200`, S3's `ListObjectsV2` XML: keys in order, `prefix`, `start-after`, `continuation-token`, `max-keys` (at most 1000) |
//!
//! A `PUT` is bounded twice. A presigned URL that signs `content-length`
//! (see [`sigv4::presign_with_headers`]) only verifies for a request that
//! sends exactly that length, as on S3. And the store's owner may install
//! an [`UploadGate`], asked before the body is read and again just before
//! the object is committed: it closes keys that are not, or no longer,
//! open for upload (`403`, nothing kept), and may demand an exact size.
//!
//! Authentication comes first: a request without a valid signature for
//! exactly its method, bucket and key gets `403` before anything touches
//! the disk, so a refusal says nothing about what exists. Errors are S3's
//! XML, `<Error><Code>..</Code><Message>..</Message></Error>`, with fixed
//! messages; see [`BlobError`] for the table. Signed `response-content-type`
//! and `response-content-disposition` are honoured as well; `Range` is not
//! (objects are AES-GCM ciphertext, only ever read whole), so a `GET` is
//! always the full `200`.
//!
//! # Mounting
//!
//! [`service`] is the whole store as one scope at [`BlobStore::prefix`]
//! (`/blobs` by default, so objects are `/blobs/<bucket>/<key>`):
//! `App::new().service(blobstore::service(store.clone()))`. On a listener
//! of its own, give it the prefix `""`. [`configure`] registers the same
//! routes inside a scope of the caller's, which must then be mounted at the
//! store's prefix with the `web::Data<BlobStore>` in its app data. The
//! signature covers the path as the client sent it, so no path-rewriting
//! middleware may sit in front, and a reverse proxy must pass `Host` on.
//!
//! # On disk
//!
//! Objects of bucket `b` are files in `<root>/b/`, flat: key `m/abc` is the
//! file `m+abc`. Keys are 1 to 255 bytes of `/`-separated segments of
//! `A-Za-z0-9._-`, none empty, `.` or `..`; anything else is refused, so no
//! key can name a file outside that directory and the mapping is one to
//! one (`+` is not a key character). Uploads are written to `~tmp-<random>`
//! in the same directory (`~` is not a key character either), removed on
//! any failure, and swept when the store opens after a crash.
//!
//! Nothing here logs signatures, secrets, keys or content: refusals are
//! logged at `debug` with their S3 code only.

use std::collections::HashMap;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use actix_web::body::SizedStream;
use actix_web::http::header::{self, HeaderName, HeaderValue};
use actix_web::http::{Method, StatusCode};
use actix_web::web::{self, Bytes};
use actix_web::{HttpRequest, HttpResponse, ResponseError};
use futures_util::{stream, Stream, StreamExt};

use super::sigv4::{self, Addressing, Endpoint, Region, SigError, Verified};

/// The default mount point: objects are `/blobs/<bucket>/<key>`.
pub const DEFAULT_PREFIX: &str = "/blobs";
/// The longest key: a key is a file name, and file names stop at 255 bytes.
pub const MAX_KEY_BYTES: usize = 255;
/// File names of uploads in progress start with this (never a key's).
const TEMP_PREFIX: &str = "~tmp-";
/// Uploads are written in batches of about this many bytes, one blocking
/// task each.
const WRITE_BATCH: usize = 256 * 1024;
/// Downloads are read in chunks of this many bytes, one blocking task each,
/// so a slow reader holds no thread.
const READ_CHUNK: usize = 128 * 1024;

/// From access key id to secret access key: who may sign for the store.
pub type KeyLookup = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// What the store's owner says about a `PUT` to an object key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// Accept an object of exactly this many bytes, and no other.
    Exactly(u64),
    /// Accept any object within the store's limit.
    Any,
    /// Refuse: the key is not, or no longer, open for upload (`403`).
    Closed,
    /// The owner cannot tell now (its own storage failed): `503`.
    Unknown,
}

/// Decides whether a `PUT` to an object key is accepted (see [`Admission`]).
/// It may block: the store calls it off the event loop.
pub type UploadGate = Arc<dyn Fn(&str) -> Admission + Send + Sync>;

/// Most keys one `ListObjectsV2` answer holds (S3's limit too).
pub const MAX_LIST_KEYS: usize = 1000;

/// A [`KeyLookup`] over a fixed set of key pairs.
pub fn static_keys(keys: impl IntoIterator<Item = sigv4::Credentials>) -> KeyLookup {
    let keys: HashMap<String, String> = keys
        .into_iter()
        .map(|c| (c.access_key_id, c.secret_access_key))
        .collect();
    Arc::new(move |id| keys.get(id).cloned())
}

/// The store: one bucket in a directory, and who may sign for it. Shared by
/// the handlers as `web::Data<BlobStore>`.
pub struct BlobStore {
    /// The store's directory; the bucket's objects are in `<root>/<bucket>`.
    root: PathBuf,
    /// `<root>/<bucket>`, where object and temporary files live.
    dir: PathBuf,
    /// The one bucket served; requests for others get `404 NoSuchBucket`.
    bucket: String,
    /// The region signatures must be scoped to.
    region: Region,
    /// Secrets by access key id, to verify signatures.
    lookup: KeyLookup,
    /// Uploads larger than this are refused (`400 EntityTooLarge`).
    max_object_bytes: u64,
    /// Where the store is mounted: `""` or `/a/b` (default `/blobs`).
    prefix: String,
    /// Who says which keys are open for upload, and at which size; `None`
    /// accepts every validly signed `PUT`.
    gate: Option<UploadGate>,
}

impl fmt::Debug for BlobStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BlobStore")
            .field("root", &self.root)
            .field("bucket", &self.bucket)
            .field("region", &self.region)
            .field("max_object_bytes", &self.max_object_bytes)
            .field("prefix", &self.prefix)
            .field("gate", &self.gate.is_some())
            .finish_non_exhaustive()
    }
}

impl BlobStore {
    /// Opens (creating it if need be) the store in `root` serving `bucket`
    /// (S3 naming rules), for signatures scoped to `region` by a key that
    /// `lookup` knows, refusing objects over `max_object_bytes`. Removes the
    /// temporary files of uploads a crash interrupted. Mounted at
    /// [`DEFAULT_PREFIX`]; see [`BlobStore::with_prefix`].
    pub fn open(
        root: impl Into<PathBuf>,
        bucket: &str,
        region: Region,
        lookup: KeyLookup,
        max_object_bytes: u64,
    ) -> io::Result<Self> {
        // The bucket and region rules are the signer's: reuse its checks.
        Endpoint::new("http://localhost", bucket, region.clone(), Addressing::Path)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let root = root.into();
        let dir = root.join(bucket);
        fs::create_dir_all(&dir)?;
        for entry in fs::read_dir(&dir)? {
            let entry = entry?;
            if entry.file_name().to_string_lossy().starts_with(TEMP_PREFIX) {
                fs::remove_file(entry.path())?;
            }
        }
        Ok(BlobStore {
            root,
            dir,
            bucket: bucket.to_owned(),
            region,
            lookup,
            max_object_bytes,
            prefix: DEFAULT_PREFIX.to_owned(),
            gate: None,
        })
    }

    /// The same store, asking `gate` about every `PUT` (see [`Admission`]):
    /// once the signature is verified, before the body is read, and again
    /// just before the object is committed, so an upload that stopped
    /// being welcome while its body streamed is not kept either.
    pub fn with_upload_gate(mut self, gate: UploadGate) -> Self {
        self.gate = Some(gate);
        self
    }

    /// The same store mounted at `prefix`: `""` (a listener of its own) or
    /// `/a/b`, segments of unreserved characters (`A-Za-z0-9-_.~`).
    pub fn with_prefix(mut self, prefix: &str) -> io::Result<Self> {
        let ok = prefix.is_empty()
            || (prefix.starts_with('/')
                && prefix.split('/').skip(1).all(|s| {
                    !s.is_empty()
                        && s != "."
                        && s != ".."
                        && s.bytes().all(|b| {
                            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~')
                        })
                }));
        if !ok {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "blob store prefix must be empty or /segment[/segment...]",
            ));
        }
        self.prefix = prefix.to_owned();
        Ok(self)
    }

    /// The store's directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The bucket served.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// The region signatures are scoped to.
    pub fn region(&self) -> &Region {
        &self.region
    }

    /// Where the store is mounted (`""` or `/a/b`).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The largest object accepted, in bytes.
    pub fn max_object_bytes(&self) -> u64 {
        self.max_object_bytes
    }

    /// The endpoint to presign for, as clients reach the store at
    /// `public_base` (`scheme://host[:port]` of the listener serving it):
    /// path-style, with the store's prefix, bucket and region.
    pub fn endpoint(&self, public_base: &str) -> Result<Endpoint, SigError> {
        Endpoint::new(
            &format!("{}{}", public_base.trim_end_matches('/'), self.prefix),
            &self.bucket,
            self.region.clone(),
            Addressing::Path,
        )
    }
}

/// The whole store as a scope at its prefix, with its state:
/// `App::new().service(blobstore::service(store.clone()))`.
pub fn service(store: web::Data<BlobStore>) -> actix_web::Scope {
    web::scope(&store.prefix)
        .app_data(store)
        .configure(configure)
        // Paths the resource does not match (the bare prefix) still get an
        // S3 answer: 403 unless signed.
        .default_service(web::to(handle))
}

/// Registers the store's one route, every method on `/{tail:.*}`, in a
/// scope mounted at the store's prefix whose app data holds the
/// `web::Data<BlobStore>` (see [`service`], which does all that).
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(web::resource("/{tail:.*}").to(handle));
}

/// Why a request was refused or failed. [`BlobError::table`] gives the
/// status, S3 code and fixed message of each.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    /// The signature does not verify: `403` with the code of the
    /// [`SigError`] (`SignatureDoesNotMatch`, `AccessDenied` when expired,
    /// `InvalidAccessKeyId`, `AuthorizationQueryParametersError`).
    #[error(transparent)]
    Auth(#[from] SigError),
    /// Neither a presigned URL nor an `Authorization` header: `403`.
    #[error("request is not signed")]
    Unsigned,
    /// A header-signed `GET` or `PUT`: those take a presigned URL: `403`.
    #[error("header-signed requests may only HEAD or DELETE")]
    HeaderAuthNotAllowed,
    /// Validly signed, for a bucket this store does not serve: `404`.
    #[error("no such bucket")]
    NoSuchBucket,
    /// Validly signed, for a key the store refuses (see the module doc):
    /// `400 InvalidArgument`.
    #[error("object key is not allowed")]
    InvalidKey,
    /// A signed `response-*` override is not a valid header value: `400`.
    #[error("invalid argument: {0}")]
    InvalidArgument(&'static str),
    /// No object under that key (`GET`, `HEAD`): `404`.
    #[error("no such key")]
    NoSuchKey,
    /// The body is larger than the store's limit, or than the size the
    /// [`UploadGate`] demands: `400 EntityTooLarge` (S3's status for it);
    /// nothing is kept.
    #[error("object is larger than the limit")]
    EntityTooLarge,
    /// The body is smaller than the size the [`UploadGate`] demands:
    /// `400 EntityTooSmall`; nothing is kept.
    #[error("object is smaller than required")]
    EntityTooSmall,
    /// The [`UploadGate`] closed the key: `403`; nothing is kept.
    #[error("object is not open for upload")]
    UploadClosed,
    /// The [`UploadGate`] could not tell: `503`; nothing is kept.
    #[error("upload gate unavailable")]
    Unavailable,
    /// The client stopped sending mid-body: `400`; nothing is kept.
    #[error("request body ended early")]
    IncompleteBody,
    /// Validly signed, for a method the store does not serve: `405`.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// Mounted at another prefix than the store's, or without its state:
    /// `500`.
    #[error("blob store is mounted wrongly")]
    Misconfigured,
    /// The disk failed: `500`. The detail goes to the log, not the client.
    #[error("blob store I/O error")]
    Io(#[from] io::Error),
}

impl BlobError {
    /// The one table: status, S3 code and message of each error.
    pub fn table(&self) -> (StatusCode, &'static str, &'static str) {
        match self {
            BlobError::Auth(e) => (StatusCode::FORBIDDEN, e.s3_code(), e.s3_message()),
            BlobError::Unsigned => (StatusCode::FORBIDDEN, "AccessDenied", "Access Denied"),
            BlobError::HeaderAuthNotAllowed => (
                StatusCode::FORBIDDEN,
                "AccessDenied",
                "Header-signed requests may only HEAD or DELETE; use a presigned URL",
            ),
            BlobError::NoSuchBucket => (
                StatusCode::NOT_FOUND,
                "NoSuchBucket",
                "The specified bucket does not exist",
            ),
            BlobError::InvalidKey => (
                StatusCode::BAD_REQUEST,
                "InvalidArgument",
                "Object keys are 1 to 255 bytes of A-Z a-z 0-9 . _ - in segments separated by /, \
                 none empty, . or ..",
            ),
            BlobError::InvalidArgument(message) => {
                (StatusCode::BAD_REQUEST, "InvalidArgument", message)
            }
            BlobError::NoSuchKey => (
                StatusCode::NOT_FOUND,
                "NoSuchKey",
                "The specified key does not exist.",
            ),
            BlobError::EntityTooLarge => (
                StatusCode::BAD_REQUEST,
                "EntityTooLarge",
                "Your proposed upload exceeds the maximum allowed object size.",
            ),
            BlobError::EntityTooSmall => (
                StatusCode::BAD_REQUEST,
                "EntityTooSmall",
                "Your proposed upload is smaller than the size this object must have.",
            ),
            BlobError::UploadClosed => (
                StatusCode::FORBIDDEN,
                "AccessDenied",
                "This object is not open for upload.",
            ),
            BlobError::Unavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                "ServiceUnavailable",
                "Please try again later.",
            ),
            BlobError::IncompleteBody => (
                StatusCode::BAD_REQUEST,
                "IncompleteBody",
                "You did not provide the number of bytes specified by the Content-Length HTTP \
                 header.",
            ),
            BlobError::MethodNotAllowed => (
                StatusCode::METHOD_NOT_ALLOWED,
                "MethodNotAllowed",
                "The specified method is not allowed against this resource.",
            ),
            BlobError::Misconfigured | BlobError::Io(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalError",
                "We encountered an internal error. Please try again.",
            ),
        }
    }
}

impl ResponseError for BlobError {
    fn status_code(&self) -> StatusCode {
        self.table().0
    }

    fn error_response(&self) -> HttpResponse {
        let (status, code, message) = self.table();
        HttpResponse::build(status)
            .content_type("application/xml")
            .insert_header((header::CACHE_CONTROL, "no-store"))
            .body(format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
                 <Error><Code>{code}</Code><Message>{}</Message></Error>",
                xml_escape(message)
            ))
    }
}

/// The handler of every request to the store.
async fn handle(req: HttpRequest, payload: web::Payload) -> Result<HttpResponse, BlobError> {
    let Some(store) = req.app_data::<web::Data<BlobStore>>().cloned() else {
        tracing::error!("blob store route mounted without web::Data<BlobStore>");
        return Err(BlobError::Misconfigured);
    };
    let result = serve(&store, &req, payload).await;
    match &result {
        Err(BlobError::Io(e)) => tracing::error!(error = %e, "blob store I/O error"),
        Err(BlobError::Misconfigured) => {
            tracing::error!(prefix = %store.prefix, "blob store mounted at another prefix")
        }
        Err(e) => tracing::debug!(
            method = %req.method(),
            code = e.table().1,
            "blob request refused"
        ),
        Ok(_) => {}
    }
    result
}

/// Authenticate, then find the object (or the bucket, for a listing),
/// then do what the method says.
async fn serve(
    store: &BlobStore,
    req: &HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, BlobError> {
    let (verified, header_signed) = authenticate(store, req)?;
    let below_prefix = verified
        .path
        .strip_prefix(store.prefix.as_str())
        .is_some_and(|rest| rest.starts_with('/'));
    if !below_prefix {
        return Err(BlobError::Misconfigured);
    }
    if let Some(bucket) = bucket_only(&verified.path, &store.prefix) {
        if bucket != store.bucket {
            return Err(BlobError::NoSuchBucket);
        }
        return match (req.method(), verified.param("list-type")) {
            (&Method::GET, Some("2")) => list(store, &verified).await,
            (&Method::GET, _) => Err(BlobError::InvalidArgument(
                "only ListObjectsV2 (list-type=2) is served on a bucket",
            )),
            _ => Err(BlobError::MethodNotAllowed),
        };
    }
    let (bucket, key) = verified
        .bucket_and_key(&store.prefix)
        .ok_or(BlobError::InvalidKey)?;
    if bucket != store.bucket {
        return Err(BlobError::NoSuchBucket);
    }
    let path = store.dir.join(object_file_name(key)?);
    // Header signing is for the server's own bodiless requests on objects.
    if header_signed && !matches!(*req.method(), Method::HEAD | Method::DELETE) {
        return Err(BlobError::HeaderAuthNotAllowed);
    }
    match *req.method() {
        Method::PUT => put(store, req, payload, key, path).await,
        Method::GET => read(&verified, path, false).await,
        Method::HEAD => read(&verified, path, true).await,
        Method::DELETE => delete(store.dir.clone(), path).await,
        _ => Err(BlobError::MethodNotAllowed),
    }
}

/// The bucket of a path naming a bucket only, `<prefix>/<bucket>` with or
/// without a trailing `/`; `None` when it names an object (or nothing).
fn bucket_only<'a>(path: &'a str, prefix: &str) -> Option<&'a str> {
    let rest = path.strip_prefix(prefix)?.strip_prefix('/')?;
    let bucket = rest.strip_suffix('/').unwrap_or(rest);
    (!bucket.is_empty() && !bucket.contains('/')).then_some(bucket)
}

/// A presigned URL for any method, or header signing for `HEAD`, `DELETE`
/// and the `GET` of a listing (the server's own requests, which have no
/// body). Returns what was verified, and whether it was header-signed.
fn authenticate(store: &BlobStore, req: &HttpRequest) -> Result<(Verified, bool), BlobError> {
    let method = req.method().as_str();
    let target = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
    let lookup = |id: &str| (store.lookup)(id);
    let now = SystemTime::now();
    let has_authorization = req.headers().contains_key(header::AUTHORIZATION);
    if sigv4::has_query_auth(req.query_string()) {
        if has_authorization {
            return Err(SigError::Malformed(
                "only one of query and header authentication is allowed",
            )
            .into());
        }
        if host_header(req).is_none() {
            return Err(SigError::Malformed("the Host header is missing").into());
        }
        // Headers the URL signs besides `host` (such as `content-length`)
        // are read from the request: a missing one fails, another value
        // fails the signature.
        let verified = sigv4::verify_presigned_with(
            method,
            target,
            |name| header_value(req, name),
            lookup,
            &store.region,
            now,
        )?;
        return Ok((verified, false));
    }
    if !has_authorization {
        return Err(BlobError::Unsigned);
    }
    // A header-signed GET may only list (checked again once routed).
    let listing = *req.method() == Method::GET && req.query_string().contains("list-type=");
    if !(matches!(*req.method(), Method::HEAD | Method::DELETE) || listing) {
        return Err(BlobError::HeaderAuthNotAllowed);
    }
    let verified = sigv4::verify_header_signed(
        method,
        target,
        |name| header_value(req, name),
        lookup,
        &store.region,
        now,
    )?;
    // No body is read, so the only honest payload claims are these two.
    if verified.payload_sha256 != sigv4::EMPTY_PAYLOAD_SHA256
        && verified.payload_sha256 != sigv4::UNSIGNED_PAYLOAD
    {
        return Err(SigError::Malformed("HEAD, DELETE and listings carry no payload").into());
    }
    Ok((verified, true))
}

/// The `Host` header, or the URI's authority (HTTP/2 has no `Host`).
fn host_header(req: &HttpRequest) -> Option<String> {
    match req.headers().get(header::HOST) {
        Some(value) => value.to_str().ok().map(str::to_owned),
        None => req.uri().authority().map(|a| a.as_str().to_owned()),
    }
}

/// A request header by lowercase name, repeated values joined with `,`.
fn header_value(req: &HttpRequest, name: &str) -> Option<String> {
    if name == "host" {
        return host_header(req);
    }
    let values: Vec<&str> = req
        .headers()
        .get_all(name)
        .map(|v| v.to_str())
        .collect::<Result<_, _>>()
        .ok()?;
    (!values.is_empty()).then(|| values.join(","))
}

/// The file name of `key` in the bucket's directory (see the module doc).
fn object_file_name(key: &str) -> Result<String, BlobError> {
    let segment_ok = |s: &str| {
        !s.is_empty()
            && s != "."
            && s != ".."
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    };
    if key.len() > MAX_KEY_BYTES || !key.split('/').all(segment_ok) {
        return Err(BlobError::InvalidKey);
    }
    Ok(key.replace('/', "+"))
}

/// Asks the store's [`UploadGate`] about `key`, off the event loop.
async fn admission(store: &BlobStore, key: &str) -> Admission {
    let Some(gate) = store.gate.clone() else {
        return Admission::Any;
    };
    let key = key.to_owned();
    tokio::task::spawn_blocking(move || gate(&key))
        .await
        .unwrap_or(Admission::Unknown)
}

/// The exact size an [`Admission`] demands, or its refusal.
fn required_size(admission: Admission) -> Result<Option<u64>, BlobError> {
    match admission {
        Admission::Exactly(n) => Ok(Some(n)),
        Admission::Any => Ok(None),
        Admission::Closed => Err(BlobError::UploadClosed),
        Admission::Unknown => Err(BlobError::Unavailable),
    }
}

/// `PUT`: ask the gate, stream the body to a temporary file, ask the gate
/// again, then fsync and rename it into place, so a reader sees the whole
/// old object or the whole new one.
async fn put(
    store: &BlobStore,
    req: &HttpRequest,
    mut payload: web::Payload,
    key: &str,
    target: PathBuf,
) -> Result<HttpResponse, BlobError> {
    let required = required_size(admission(store, key).await)?;
    let max = required.map_or(store.max_object_bytes, |n| n.min(store.max_object_bytes));
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > max) {
        return Err(BlobError::EntityTooLarge);
    }
    if let (Some(len), Some(n)) = (declared, required) {
        if len < n {
            return Err(BlobError::EntityTooSmall);
        }
    }
    let dir = store.dir.clone();
    // Dropping `upload` on any early return below removes the temporary
    // file (one unlink on the event loop: cheap enough).
    let mut upload = blocking(move || Upload::create(&dir)).await?;
    let mut received: u64 = 0;
    let mut batch: Vec<u8> = Vec::with_capacity(WRITE_BATCH);
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|_| BlobError::IncompleteBody)?;
        received += chunk.len() as u64;
        if received > max {
            return Err(BlobError::EntityTooLarge);
        }
        batch.extend_from_slice(&chunk);
        if batch.len() >= WRITE_BATCH {
            let data = std::mem::replace(&mut batch, Vec::with_capacity(WRITE_BATCH));
            upload = blocking(move || upload.write(&data).map(|()| upload)).await?;
        }
    }
    if required.is_some_and(|n| received < n) {
        return Err(BlobError::EntityTooSmall);
    }
    let gate = store.gate.clone();
    let key = key.to_owned();
    blocking(move || {
        upload.write(&batch)?;
        upload.sync()?;
        // Asked again: the upload may have been used, unsent or ended
        // while its body streamed. (A reap racing the rename below can
        // still leave a blob behind; the owner's sweep of orphans is what
        // catches that.)
        if let Some(gate) = gate {
            match required_size(gate(&key)) {
                Ok(n) if n.is_none_or(|n| n == received) => {}
                Ok(_) => return Ok(Err(BlobError::EntityTooSmall)),
                Err(e) => return Ok(Err(e)),
            }
        }
        upload.commit(&target).map(Ok)
    })
    .await??;
    Ok(HttpResponse::Ok().finish())
}

/// `GET` on the bucket with `list-type=2`: S3's `ListObjectsV2`, keys in
/// order, from after `start-after` or `continuation-token` (which is the
/// last key of the previous page), at most `max-keys` (up to
/// [`MAX_LIST_KEYS`]) of them, under `prefix`.
async fn list(store: &BlobStore, verified: &Verified) -> Result<HttpResponse, BlobError> {
    let prefix = verified.param("prefix").unwrap_or("").to_owned();
    let token = verified.param("continuation-token").map(str::to_owned);
    let after = [verified.param("start-after"), token.as_deref()]
        .into_iter()
        .flatten()
        .max()
        .map(str::to_owned);
    let max_keys = match verified.param("max-keys") {
        None => MAX_LIST_KEYS,
        Some(v) => v
            .parse::<usize>()
            .map_err(|_| BlobError::InvalidArgument("max-keys must be a number"))?
            .min(MAX_LIST_KEYS),
    };
    let dir = store.dir.clone();
    let list_prefix = prefix.clone();
    let (objects, truncated) = blocking(move || {
        let mut objects = Vec::new();
        for entry in fs::read_dir(&dir)? {
            let entry = entry?;
            let name = entry.file_name();
            // Temporary files and anything not named by a key are not objects.
            let Some(name) = name.to_str() else { continue };
            let key = name.replace('+', "/");
            if object_file_name(&key).ok().as_deref() != Some(name)
                || !key.starts_with(&list_prefix)
                || after.as_deref().is_some_and(|a| key.as_str() <= a)
            {
                continue;
            }
            let meta = entry.metadata()?;
            if meta.is_file() {
                objects.push((key, meta.len()));
            }
        }
        objects.sort();
        let truncated = objects.len() > max_keys;
        objects.truncate(max_keys);
        Ok((objects, truncated))
    })
    .await?;
    let mut xml = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
         <ListBucketResult xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">\
         <Name>{}</Name><Prefix>{}</Prefix><KeyCount>{}</KeyCount><MaxKeys>{max_keys}</MaxKeys>\
         <IsTruncated>{truncated}</IsTruncated>",
        xml_escape(&store.bucket),
        xml_escape(&prefix),
        objects.len(),
    );
    if let Some(token) = &token {
        xml.push_str(&format!(
            "<ContinuationToken>{}</ContinuationToken>",
            xml_escape(token)
        ));
    }
    for (key, size) in &objects {
        xml.push_str(&format!(
            "<Contents><Key>{}</Key><Size>{size}</Size></Contents>",
            xml_escape(key)
        ));
    }
    if let (true, Some((last, _))) = (truncated, objects.last()) {
        xml.push_str(&format!(
            "<NextContinuationToken>{}</NextContinuationToken>",
            xml_escape(last)
        ));
    }
    xml.push_str("</ListBucketResult>");
    Ok(HttpResponse::Ok()
        .content_type("application/xml")
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .body(xml))
}

/// `GET` and `HEAD`: the object's length, and for `GET` its bytes.
async fn read(verified: &Verified, path: PathBuf, head: bool) -> Result<HttpResponse, BlobError> {
    // Check the signed overrides before touching the disk.
    let headers = object_headers(verified)?;
    let (file, len) = blocking(move || {
        let file = File::open(&path)?;
        let meta = file.metadata()?;
        if !meta.is_file() {
            return Err(io::ErrorKind::NotFound.into());
        }
        Ok((file, meta.len()))
    })
    .await
    .map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => BlobError::NoSuchKey,
        _ => BlobError::Io(e),
    })?;
    let mut response = HttpResponse::Ok();
    for header in headers {
        response.insert_header(header);
    }
    // A sized body sets Content-Length; for HEAD, actix sends the length
    // and never polls the body, so an empty stream stands in for it.
    Ok(if head {
        drop(file);
        response.body(SizedStream::new(len, stream::empty::<io::Result<Bytes>>()))
    } else {
        response.body(SizedStream::new(len, file_stream(file)))
    })
}

/// `DELETE`: unlink, and make the unlink durable. Absent is success (S3).
async fn delete(dir: PathBuf, path: PathBuf) -> Result<HttpResponse, BlobError> {
    blocking(move || match fs::remove_file(&path) {
        Ok(()) => sync_dir(&dir),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    })
    .await?;
    Ok(HttpResponse::NoContent().finish())
}

/// The headers of a `GET` or `HEAD` answer: S3's signed `response-*`
/// overrides, and defaults fit for ephemeral ciphertext (never cached
/// unless the signer said so, never sniffed as something to render).
fn object_headers(verified: &Verified) -> Result<Vec<(HeaderName, HeaderValue)>, BlobError> {
    let overrides = [
        (
            header::CACHE_CONTROL,
            "response-cache-control",
            Some("no-store"),
        ),
        (
            header::CONTENT_TYPE,
            "response-content-type",
            Some("application/octet-stream"),
        ),
        (
            header::CONTENT_DISPOSITION,
            "response-content-disposition",
            None,
        ),
    ];
    let mut headers = Vec::with_capacity(overrides.len() + 1);
    for (name, param, default) in overrides {
        let Some(value) = verified.param(param).or(default) else {
            continue;
        };
        let value = HeaderValue::from_str(value).map_err(|_| {
            BlobError::InvalidArgument("a response- override is not a valid header value")
        })?;
        headers.push((name, value));
    }
    headers.push((
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    ));
    Ok(headers)
}

/// The file's bytes, one blocking read per chunk.
fn file_stream(file: File) -> impl Stream<Item = io::Result<Bytes>> {
    stream::unfold(Some(file), |file| async move {
        let mut file = file?;
        let read = tokio::task::spawn_blocking(move || {
            let mut buf = vec![0u8; READ_CHUNK];
            let n = loop {
                match file.read(&mut buf) {
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    other => break other?,
                }
            };
            buf.truncate(n);
            Ok::<_, io::Error>((file, buf))
        })
        .await;
        match read {
            Ok(Ok((_, buf))) if buf.is_empty() => None,
            Ok(Ok((file, buf))) => Some((Ok(Bytes::from(buf)), Some(file))),
            Ok(Err(e)) => Some((Err(e), None)),
            Err(_) => Some((Err(io::Error::other("blob read task failed")), None)),
        }
    })
}

/// Runs blocking file work off the event loop.
async fn blocking<T, F>(f: F) -> io::Result<T>
where
    F: FnOnce() -> io::Result<T> + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|_| Err(io::Error::other("blob store task failed")))
}

/// An upload in progress: a temporary file beside its target, removed
/// unless committed.
struct Upload {
    /// The temporary file's path.
    path: PathBuf,
    /// The directory, fsynced after the rename.
    dir: PathBuf,
    /// The open temporary file.
    file: File,
    /// Renamed into place: nothing to remove.
    committed: bool,
}

impl Upload {
    /// A new temporary file `~tmp-<random>` in `dir`, readable by the owner
    /// only.
    fn create(dir: &Path) -> io::Result<Upload> {
        let mut random = [0u8; 16];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut random)
            .map_err(|_| io::Error::other("no randomness for a temporary name"))?;
        let name: String = random.iter().map(|b| format!("{b:02x}")).collect();
        let path = dir.join(format!("{TEMP_PREFIX}{name}"));
        let mut options = OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let file = options.open(&path)?;
        Ok(Upload {
            path,
            dir: dir.to_owned(),
            file,
            committed: false,
        })
    }

    /// Appends `data`.
    fn write(&mut self, data: &[u8]) -> io::Result<()> {
        self.file.write_all(data)
    }

    /// Makes the bytes durable (before [`Upload::commit`]).
    fn sync(&mut self) -> io::Result<()> {
        self.file.sync_all()
    }

    /// Makes the name durable: rename the synced file to `target`
    /// (replacing any old object atomically), fsync the directory.
    fn commit(mut self, target: &Path) -> io::Result<()> {
        fs::rename(&self.path, target)?;
        self.committed = true;
        sync_dir(&self.dir)
    }
}

impl Drop for Upload {
    fn drop(&mut self) {
        if !self.committed {
            // Best effort: `BlobStore::open` sweeps what is left.
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// Makes the directory's entries (a rename, an unlink) durable.
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// The XML text of a message (they are fixed, but stay well-formed if one
/// ever holds `<` or `&`).
fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;
    use std::time::Duration;

    use actix_web::dev::ServerHandle;
    use actix_web::{App, HttpServer};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::sigv4::{presign, sign_request_headers, Credentials, EMPTY_PAYLOAD_SHA256};
    use super::*;

    const AKID: &str = "EPHEMERA-BLOBS";
    const SECRET: &str = "test-secret-do-not-log";
    const REGION: &str = "eph-1";

    fn creds() -> Credentials {
        Credentials::new(AKID, SECRET)
    }

    /// A store on a real socket, and what a client needs to talk to it.
    struct Server {
        /// `127.0.0.1:port`.
        addr: String,
        endpoint: Endpoint,
        store: web::Data<BlobStore>,
        client: reqwest::Client,
        handle: ServerHandle,
        _dir: tempfile::TempDir,
    }

    async fn start(max_object_bytes: u64, prefix: &str) -> Server {
        start_gated(max_object_bytes, prefix, None).await
    }

    async fn start_gated(max_object_bytes: u64, prefix: &str, gate: Option<UploadGate>) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let mut store = BlobStore::open(
            dir.path(),
            "media",
            Region::new(REGION),
            static_keys([creds()]),
            max_object_bytes,
        )
        .unwrap()
        .with_prefix(prefix)
        .unwrap();
        if let Some(gate) = gate {
            store = store.with_upload_gate(gate);
        }
        let store = web::Data::new(store);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let app_store = store.clone();
        let server = HttpServer::new(move || App::new().service(service(app_store.clone())))
            .workers(1)
            .disable_signals()
            .listen(listener)
            .unwrap()
            .run();
        let handle = server.handle();
        actix_web::rt::spawn(server);
        let endpoint = store.endpoint(&format!("http://{addr}")).unwrap();
        Server {
            addr,
            endpoint,
            store,
            client: reqwest::Client::new(),
            handle,
            _dir: dir,
        }
    }

    impl Server {
        /// A URL presigned now.
        fn url(&self, method: &str, key: &str, extra: &[(&str, &str)]) -> String {
            self.url_at(method, key, SystemTime::now(), 60, extra)
        }

        fn url_at(
            &self,
            method: &str,
            key: &str,
            now: SystemTime,
            expires: u64,
            extra: &[(&str, &str)],
        ) -> String {
            presign(method, &self.endpoint, key, &creds(), now, expires, extra).unwrap()
        }

        /// A header-signed request, as the server sends its own.
        fn signed(
            &self,
            method: reqwest::Method,
            key: &str,
            credentials: &Credentials,
        ) -> reqwest::RequestBuilder {
            let url = self.endpoint.object_url(key).unwrap();
            let headers = sign_request_headers(
                method.as_str(),
                &url,
                credentials,
                &Region::new(REGION),
                SystemTime::now(),
                EMPTY_PAYLOAD_SHA256,
            )
            .unwrap();
            let mut request = self.client.request(method, &url);
            for (name, value) in headers {
                request = request.header(name, value);
            }
            request
        }

        /// The names of the files in the bucket's directory.
        fn files(&self) -> Vec<String> {
            let mut names: Vec<String> = fs::read_dir(&self.store.dir)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            names
        }

        /// One raw HTTP/1.1 exchange (for targets a URL library would
        /// normalise, and chunked bodies): status and body.
        async fn raw(&self, head: &str, body: &[u8]) -> (u16, String) {
            let mut socket = tokio::net::TcpStream::connect(&self.addr).await.unwrap();
            let mut request = head.replace("{host}", &self.addr).into_bytes();
            request.extend_from_slice(body);
            // The server may answer and stop reading before the end.
            let _ = socket.write_all(&request).await;
            let mut answer = Vec::new();
            let _ = socket.read_to_end(&mut answer).await;
            let answer = String::from_utf8_lossy(&answer).into_owned();
            let status = answer.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
            let body = answer
                .split_once("\r\n\r\n")
                .map(|(_, b)| b.to_owned())
                .unwrap_or_default();
            (status, body)
        }

        async fn stop(self) {
            self.handle.stop(true).await;
        }
    }

    /// Status and S3 error code of a refusal.
    async fn refusal(response: reqwest::Response) -> (u16, String) {
        let status = response.status().as_u16();
        let body = response.text().await.unwrap();
        (status, error_code(&body))
    }

    fn error_code(body: &str) -> String {
        body.split_once("<Code>")
            .and_then(|(_, rest)| rest.split_once("</Code>"))
            .map(|(code, _)| code.to_owned())
            .unwrap_or_else(|| format!("no code in {body:?}"))
    }

    /// The request target of a URL.
    fn target(url: &str) -> &str {
        let rest = url.strip_prefix("http://").unwrap();
        &rest[rest.find('/').unwrap()..]
    }

    #[actix_web::test]
    async fn put_get_head_delete_round_trip() {
        let s = start(1 << 20, DEFAULT_PREFIX).await;
        let body: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();

        let put = s.url("PUT", "m/one", &[]);
        assert!(put.contains("/blobs/media/m/one?"), "{put}");
        let r = s.client.put(&put).body(body.clone()).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(s.files(), ["m+one"]);

        let get = s.url("GET", "m/one", &[("response-cache-control", "max-age=30")]);
        let r = s.client.get(&get).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["cache-control"], "max-age=30");
        assert_eq!(r.headers()["content-type"], "application/octet-stream");
        assert_eq!(r.headers()["x-content-type-options"], "nosniff");
        assert_eq!(
            r.headers()["content-length"],
            body.len().to_string().as_str()
        );
        assert_eq!(r.bytes().await.unwrap().as_ref(), body.as_slice());

        // Not cacheable unless the signer says so.
        let r = s
            .client
            .get(s.url("GET", "m/one", &[]))
            .send()
            .await
            .unwrap();
        assert_eq!(r.headers()["cache-control"], "no-store");

        let r = s
            .client
            .head(s.url("HEAD", "m/one", &[]))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(
            r.headers()["content-length"],
            body.len().to_string().as_str()
        );
        let r = s
            .signed(reqwest::Method::HEAD, "m/one", &creds())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(
            r.headers()["content-length"],
            body.len().to_string().as_str()
        );

        // Overwrite, then an empty object.
        let r = s
            .client
            .put(s.url("PUT", "m/one", &[]))
            .body("v2")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let r = s
            .client
            .get(s.url("GET", "m/one", &[]))
            .send()
            .await
            .unwrap();
        assert_eq!(r.text().await.unwrap(), "v2");
        let r = s
            .client
            .put(s.url("PUT", "empty", &[]))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let r = s
            .client
            .get(s.url("GET", "empty", &[]))
            .send()
            .await
            .unwrap();
        assert_eq!(
            (r.status().as_u16(), r.text().await.unwrap()),
            (200, String::new())
        );

        let r = s
            .signed(reqwest::Method::DELETE, "m/one", &creds())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 204);
        assert_eq!(s.files(), ["empty"]);
        let r = s
            .client
            .get(s.url("GET", "m/one", &[]))
            .send()
            .await
            .unwrap();
        assert_eq!(refusal(r).await, (404, "NoSuchKey".into()));
        let r = s
            .client
            .head(s.url("HEAD", "m/one", &[]))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404);
        // Deleting what is not there is still a success, as on S3.
        let r = s
            .client
            .delete(s.url("DELETE", "m/one", &[]))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 204);
        let r = s
            .client
            .delete(s.url("DELETE", "empty", &[]))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 204);
        assert!(s.files().is_empty());
        s.stop().await;
    }

    #[actix_web::test]
    async fn bad_signatures_are_refused_with_403() {
        let s = start(1 << 20, DEFAULT_PREFIX).await;
        let r = s
            .client
            .put(s.url("PUT", "k1", &[]))
            .body("secret bytes")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let plain = s.endpoint.object_url("k1").unwrap();
        let get = s.url("GET", "k1", &[]);
        let c = &s.client;

        // Unsigned.
        assert_eq!(
            refusal(c.get(&plain).send().await.unwrap()).await,
            (403, "AccessDenied".into())
        );
        // Tampered signature.
        let (rest, sig) = get.rsplit_once('=').unwrap();
        let flipped = format!(
            "{rest}={}{}",
            if sig.starts_with('0') { "1" } else { "0" },
            &sig[1..]
        );
        assert_eq!(
            refusal(c.get(&flipped).send().await.unwrap()).await,
            (403, "SignatureDoesNotMatch".into())
        );
        // Expired.
        let old = s.url_at(
            "GET",
            "k1",
            SystemTime::now() - Duration::from_secs(120),
            60,
            &[],
        );
        assert_eq!(
            refusal(c.get(&old).send().await.unwrap()).await,
            (403, "AccessDenied".into())
        );
        // Wrong method: a GET URL used to PUT, HEAD or DELETE; a PUT URL to GET.
        let r = c.put(&get).body("overwritten").send().await.unwrap();
        assert_eq!(refusal(r).await, (403, "SignatureDoesNotMatch".into()));
        assert_eq!(c.head(&get).send().await.unwrap().status(), 403);
        let r = c.delete(&get).send().await.unwrap();
        assert_eq!(refusal(r).await, (403, "SignatureDoesNotMatch".into()));
        let r = c.get(s.url("PUT", "k1", &[])).send().await.unwrap();
        assert_eq!(refusal(r).await, (403, "SignatureDoesNotMatch".into()));
        // Wrong key: the URL of k1 on k2's path.
        let r = c.get(get.replace("/k1?", "/k2?")).send().await.unwrap();
        assert_eq!(refusal(r).await, (403, "SignatureDoesNotMatch".into()));
        // A signed parameter changed.
        let cached = s.url("GET", "k1", &[("response-cache-control", "no-store")]);
        let r = c
            .get(cached.replace("=no-store", "=max-age%3D86400"))
            .send()
            .await
            .unwrap();
        assert_eq!(refusal(r).await, (403, "SignatureDoesNotMatch".into()));
        // Another region, an unknown key, a wrong secret.
        let elsewhere = Endpoint::new(
            &format!("http://{}/blobs", s.addr),
            "media",
            Region::new("us-east-1"),
            Addressing::Path,
        )
        .unwrap();
        let url = presign(
            "GET",
            &elsewhere,
            "k1",
            &creds(),
            SystemTime::now(),
            60,
            &[],
        )
        .unwrap();
        assert_eq!(
            refusal(c.get(&url).send().await.unwrap()).await,
            (403, "AuthorizationQueryParametersError".into())
        );
        let stranger = Credentials::new("NOBODY", SECRET);
        let url = presign(
            "GET",
            &s.endpoint,
            "k1",
            &stranger,
            SystemTime::now(),
            60,
            &[],
        )
        .unwrap();
        assert_eq!(
            refusal(c.get(&url).send().await.unwrap()).await,
            (403, "InvalidAccessKeyId".into())
        );
        let forger = Credentials::new(AKID, "guessed");
        let url = presign(
            "GET",
            &s.endpoint,
            "k1",
            &forger,
            SystemTime::now(),
            60,
            &[],
        )
        .unwrap();
        assert_eq!(
            refusal(c.get(&url).send().await.unwrap()).await,
            (403, "SignatureDoesNotMatch".into())
        );
        let r = s
            .signed(reqwest::Method::DELETE, "k1", &forger)
            .send()
            .await
            .unwrap();
        assert_eq!(refusal(r).await, (403, "SignatureDoesNotMatch".into()));
        // Header signing is for HEAD and DELETE only.
        let r = s
            .signed(reqwest::Method::GET, "k1", &creds())
            .send()
            .await
            .unwrap();
        assert_eq!(refusal(r).await, (403, "AccessDenied".into()));
        let r = s
            .signed(reqwest::Method::PUT, "k1", &creds())
            .body("x")
            .send()
            .await
            .unwrap();
        assert_eq!(refusal(r).await, (403, "AccessDenied".into()));
        // Both at once.
        let mut both = c.get(&get);
        for (name, value) in sign_request_headers(
            "GET",
            &plain,
            &creds(),
            &Region::new(REGION),
            SystemTime::now(),
            EMPTY_PAYLOAD_SHA256,
        )
        .unwrap()
        {
            both = both.header(name, value);
        }
        assert_eq!(refusal(both.send().await.unwrap()).await.0, 403);
        // The bare prefix, unsigned.
        let r = c
            .get(format!("http://{}/blobs", s.addr))
            .send()
            .await
            .unwrap();
        assert_eq!(refusal(r).await, (403, "AccessDenied".into()));

        // Nothing changed, and the original URL still works.
        let r = c.get(&get).send().await.unwrap();
        assert_eq!(r.text().await.unwrap(), "secret bytes");
        assert_eq!(s.files(), ["k1"]);
        s.stop().await;
    }

    #[actix_web::test]
    async fn signed_but_unservable_requests() {
        let s = start(1 << 20, DEFAULT_PREFIX).await;
        // Another bucket.
        let other = Endpoint::new(
            &format!("http://{}/blobs", s.addr),
            "other",
            Region::new(REGION),
            Addressing::Path,
        )
        .unwrap();
        let url = presign("GET", &other, "k", &creds(), SystemTime::now(), 60, &[]).unwrap();
        assert_eq!(
            refusal(s.client.get(&url).send().await.unwrap()).await,
            (404, "NoSuchBucket".into())
        );
        // A method S3 objects do not have.
        let r = s.client.post(s.url("POST", "k", &[])).send().await.unwrap();
        assert_eq!(refusal(r).await, (405, "MethodNotAllowed".into()));
        // A response override that is no header value.
        let url = s.url("GET", "k", &[("response-content-type", "a\nb")]);
        assert_eq!(
            refusal(s.client.get(&url).send().await.unwrap()).await,
            (400, "InvalidArgument".into())
        );
        s.stop().await;
    }

    #[actix_web::test]
    async fn oversize_uploads_are_refused_and_leave_nothing() {
        let s = start(1024, DEFAULT_PREFIX).await;
        // Exactly the limit is fine.
        let r = s
            .client
            .put(s.url("PUT", "fits", &[]))
            .body(vec![7u8; 1024])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        // Declared too large.
        let r = s
            .client
            .put(s.url("PUT", "big", &[]))
            .body(vec![7u8; 1025])
            .send()
            .await
            .unwrap();
        assert_eq!(refusal(r).await, (400, "EntityTooLarge".into()));
        // Streamed too large, without a Content-Length.
        let url = s.url("PUT", "big", &[]);
        let head = format!(
            "PUT {} HTTP/1.1\r\nHost: {{host}}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
            target(&url)
        );
        let chunk = format!("258\r\n{}\r\n", "x".repeat(600));
        let body = format!("{chunk}{chunk}{chunk}0\r\n\r\n");
        let (status, answer) = s.raw(&head, body.as_bytes()).await;
        assert_eq!(
            (status, error_code(&answer)),
            (400, "EntityTooLarge".into())
        );
        // A chunked upload under the limit works.
        let url = s.url("PUT", "chunked", &[]);
        let head = format!(
            "PUT {} HTTP/1.1\r\nHost: {{host}}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
            target(&url)
        );
        let (status, _) = s.raw(&head, format!("{chunk}0\r\n\r\n").as_bytes()).await;
        assert_eq!(status, 200);
        assert_eq!(s.files(), ["chunked", "fits"]);
        s.stop().await;
    }

    #[actix_web::test]
    async fn traversal_is_refused() {
        let s = start(1 << 20, DEFAULT_PREFIX).await;
        let root = s.store.root().to_owned();
        let request = |method: &str, target: &str| {
            format!("{method} {target} HTTP/1.1\r\nHost: {{host}}\r\nContent-Length: 4\r\nConnection: close\r\n\r\n")
        };
        // Validly signed URLs whose keys would leave the directory, or are
        // otherwise not keys here: refused after the signature, with 400.
        for key in [
            "../escape",
            "a/../../escape",
            "..",
            ".",
            "a//b",
            "a/",
            "/a",
            "a\\b",
            "a+b",
            "a%b",
            "é",
            &"k".repeat(256),
        ] {
            let url = s.url("PUT", key, &[]);
            let (status, body) = s.raw(&request("PUT", target(&url)), b"evil").await;
            assert_eq!(
                (status, error_code(&body)),
                (400, "InvalidArgument".into()),
                "{key}"
            );
        }
        // The same with the dots percent-encoded: decoded before the check.
        let url = s.url("PUT", "../escape", &[]);
        let encoded = target(&url).replace("/../", "/%2E%2E/");
        assert!(encoded.contains("%2E%2E"));
        let (status, _) = s.raw(&request("PUT", &encoded), b"evil").await;
        assert_eq!(status, 400);
        // Unsigned, the same paths are refused before anything else.
        for path in [
            "/blobs/media/../escape",
            "/blobs/../../escape",
            "/blobs/media/%2e%2e/escape",
        ] {
            let (status, body) = s.raw(&request("PUT", path), b"evil").await;
            assert_eq!(
                (status, error_code(&body)),
                (403, "AccessDenied".into()),
                "{path}"
            );
        }
        // Nothing was written anywhere.
        assert!(s.files().is_empty());
        let entries: Vec<_> = fs::read_dir(&root)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(entries, ["media"]);
        assert!(!root.parent().unwrap().join("escape").exists());
        // The longest allowed key works.
        let long = "k".repeat(MAX_KEY_BYTES);
        let r = s
            .client
            .put(s.url("PUT", &long, &[]))
            .body("ok")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        s.stop().await;
    }

    #[actix_web::test]
    async fn served_on_its_own_listener_without_prefix() {
        let s = start(1 << 20, "").await;
        let url = s.url("PUT", "a/b", &[]);
        assert_eq!(target(&url).split('?').next(), Some("/media/a/b"));
        let r = s.client.put(&url).body("x").send().await.unwrap();
        assert_eq!(r.status(), 200);
        let r = s.client.get(s.url("GET", "a/b", &[])).send().await.unwrap();
        assert_eq!(r.text().await.unwrap(), "x");
        let r = s
            .client
            .get(format!("http://{}/", s.addr))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403);
        s.stop().await;
    }

    /// A gate that says `Exactly(5)` for `open/*`, `Any` for `any/*`,
    /// `Unknown` for `down/*` and `Closed` for everything else.
    fn test_gate() -> UploadGate {
        Arc::new(|key: &str| {
            if key.starts_with("open/") {
                Admission::Exactly(5)
            } else if key.starts_with("any/") {
                Admission::Any
            } else if key.starts_with("down/") {
                Admission::Unknown
            } else {
                Admission::Closed
            }
        })
    }

    #[actix_web::test]
    async fn the_upload_gate_closes_keys_and_demands_sizes() {
        let s = start_gated(1024, DEFAULT_PREFIX, Some(test_gate())).await;
        let put =
            |key: &str, body: &'static str| s.client.put(s.url("PUT", key, &[])).body(body).send();
        assert_eq!(put("open/a", "12345").await.unwrap().status(), 200);
        assert_eq!(put("any/a", "anything").await.unwrap().status(), 200);
        let cases = [
            ("closed/a", "12345", 403, "AccessDenied"),
            ("open/b", "123456", 400, "EntityTooLarge"),
            ("open/b", "1234", 400, "EntityTooSmall"),
            ("open/b", "", 400, "EntityTooSmall"),
            ("down/a", "12345", 503, "ServiceUnavailable"),
        ];
        for (key, body, status, code) in cases {
            let r = put(key, body).await.unwrap();
            assert_eq!(refusal(r).await, (status, code.into()), "{key} {body:?}");
        }
        // Chunked (no Content-Length): the size is counted as it streams.
        let chunked = |key: &str, body: &str| {
            let url = s.url("PUT", key, &[]);
            let head = format!(
                "PUT {} HTTP/1.1\r\nHost: {{host}}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
                target(&url)
            );
            let body = format!("{:x}\r\n{body}\r\n0\r\n\r\n", body.len());
            (head, body)
        };
        let (head, body) = chunked("open/c", "1234");
        let (status, answer) = s.raw(&head, body.as_bytes()).await;
        assert_eq!(
            (status, error_code(&answer)),
            (400, "EntityTooSmall".into())
        );
        let (head, body) = chunked("open/c", "123456");
        let (status, answer) = s.raw(&head, body.as_bytes()).await;
        assert_eq!(
            (status, error_code(&answer)),
            (400, "EntityTooLarge".into())
        );
        let (head, body) = chunked("open/c", "12345");
        assert_eq!(s.raw(&head, body.as_bytes()).await.0, 200);
        // Reading is not gated.
        let r = s
            .client
            .get(s.url("GET", "open/a", &[]))
            .send()
            .await
            .unwrap();
        assert_eq!(r.text().await.unwrap(), "12345");
        assert_eq!(s.files(), ["any+a", "open+a", "open+c"]);
        s.stop().await;
    }

    #[actix_web::test]
    async fn a_signed_content_length_binds_the_put() {
        let s = start(1 << 20, DEFAULT_PREFIX).await;
        let url = sigv4::presign_with_headers(
            "PUT",
            &s.endpoint,
            "m/sized",
            &creds(),
            SystemTime::now(),
            60,
            &[],
            &[("content-length", "5")],
        )
        .unwrap();
        for body in ["1234", "123456"] {
            let r = s.client.put(&url).body(body).send().await.unwrap();
            assert_eq!(
                refusal(r).await,
                (403, "SignatureDoesNotMatch".into()),
                "{body:?}"
            );
        }
        // An empty body goes without a Content-Length: the signed header
        // is missing.
        let r = s.client.put(&url).body("").send().await.unwrap();
        assert_eq!(
            refusal(r).await,
            (403, "AuthorizationQueryParametersError".into())
        );
        // Chunked: the signed header is missing altogether.
        let head = format!(
            "PUT {} HTTP/1.1\r\nHost: {{host}}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
            target(&url)
        );
        let (status, answer) = s.raw(&head, b"5\r\n12345\r\n0\r\n\r\n").await;
        assert_eq!(
            (status, error_code(&answer)),
            (403, "AuthorizationQueryParametersError".into())
        );
        assert!(s.files().is_empty());
        let r = s.client.put(&url).body("12345").send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(s.files(), ["m+sized"]);
        s.stop().await;
    }

    /// Keys of a `ListObjectsV2` answer, and its continuation token.
    fn listed(xml: &str) -> (Vec<String>, Option<String>) {
        let field = |text: &str, tag: &str| -> Vec<String> {
            text.split(&format!("<{tag}>"))
                .skip(1)
                .filter_map(|rest| rest.split_once(&format!("</{tag}>")))
                .map(|(v, _)| v.to_owned())
                .collect()
        };
        let token = field(xml, "NextContinuationToken").pop();
        (field(xml, "Key"), token)
    }

    #[actix_web::test]
    async fn objects_are_listed_in_pages() {
        let s = start(1 << 20, DEFAULT_PREFIX).await;
        for key in ["m/b", "m/a", "m/c", "x/other"] {
            let r = s
                .client
                .put(s.url("PUT", key, &[]))
                .body(key.to_owned())
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
        }
        // A half-written upload is no object.
        fs::write(s.store.dir.join("~tmp-0123"), b"half").unwrap();
        let bucket_url = |query: &[(&str, &str)]| s.endpoint.bucket_url(query);
        let list = |query: Vec<(&'static str, String)>| {
            let query: Vec<(&str, &str)> = query.iter().map(|(n, v)| (*n, v.as_str())).collect();
            let url = bucket_url(&query);
            let headers = sign_request_headers(
                "GET",
                &url,
                &creds(),
                &Region::new(REGION),
                SystemTime::now(),
                sigv4::UNSIGNED_PAYLOAD,
            )
            .unwrap();
            let mut request = s.client.get(&url);
            for (name, value) in headers {
                request = request.header(name, value);
            }
            async move {
                let r = request.send().await.unwrap();
                assert_eq!(r.status(), 200);
                listed(&r.text().await.unwrap())
            }
        };
        let all = list(vec![("list-type", "2".into())]).await;
        assert_eq!(
            all,
            (
                vec!["m/a".into(), "m/b".into(), "m/c".into(), "x/other".into()],
                None
            )
        );
        let first = list(vec![
            ("list-type", "2".into()),
            ("prefix", "m/".into()),
            ("max-keys", "2".into()),
        ])
        .await;
        assert_eq!(
            first,
            (vec!["m/a".into(), "m/b".into()], Some("m/b".into()))
        );
        let rest = list(vec![
            ("list-type", "2".into()),
            ("prefix", "m/".into()),
            ("max-keys", "2".into()),
            ("continuation-token", "m/b".into()),
        ])
        .await;
        assert_eq!(rest, (vec!["m/c".into()], None));
        // Unsigned: refused.
        let plain = bucket_url(&[("list-type", "2")]);
        let r = s.client.get(&plain).send().await.unwrap();
        assert_eq!(refusal(r).await, (403, "AccessDenied".into()));
        // Header signing still opens no object to GET.
        let r = s
            .signed(reqwest::Method::GET, "m/a", &creds())
            .send()
            .await
            .unwrap();
        assert_eq!(refusal(r).await, (403, "AccessDenied".into()));
        s.stop().await;
    }

    #[test]
    fn open_sweeps_interrupted_uploads() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("media")).unwrap();
        fs::write(dir.path().join("media/~tmp-0123"), b"half an upload").unwrap();
        fs::write(dir.path().join("media/kept"), b"an object").unwrap();
        let store = BlobStore::open(
            dir.path(),
            "media",
            Region::new(REGION),
            static_keys([]),
            10,
        )
        .unwrap();
        let names: Vec<_> = fs::read_dir(dir.path().join("media"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["kept"]);
        assert!(store.with_prefix("blobs").is_err());
        let bad = BlobStore::open(dir.path(), "../x", Region::new(REGION), static_keys([]), 10);
        assert!(bad.is_err());
    }

    #[test]
    fn keys_map_to_flat_file_names() {
        assert_eq!(object_file_name("m/abc-1_2.bin").unwrap(), "m+abc-1_2.bin");
        assert_eq!(object_file_name(".hidden").unwrap(), ".hidden");
        for bad in [
            "", "/", "a/", "/a", "a//b", ".", "..", "a/../b", "a b", "a+b", "~tmp-1", "a\0b",
        ] {
            assert!(object_file_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn debug_shows_no_secret() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(
            dir.path(),
            "media",
            Region::new(REGION),
            static_keys([creds()]),
            10,
        )
        .unwrap();
        assert!(!format!("{store:?}").contains(SECRET));
    }
}
