//! Media helpers (PROTOCOL 4): mint an upload through the API (so the answer
//! is checked against `schema/openapi.json`), seal and `PUT` the ciphertext,
//! fetch it back, and take presigned URLs apart to forge bad ones.
//!
//! Requests to object storage go through a plain `reqwest` client
//! ([`blob_client`]): they are S3, not our API, so no OpenAPI check applies.

use std::time::Duration;

use ephemera_load::client::{Http, Session};
use ephemera_load::crypto;
use reqwest::Method;
use serde_json::{json, Value};

/// Timeout of one request to object storage.
const BLOB_TIMEOUT: Duration = Duration::from_secs(20);

/// An answered `POST /api/v1/media/upload-urls`.
#[derive(Debug, Clone)]
pub struct Upload {
    /// The media id to put in a `send`.
    pub media_key: String,
    /// Presigned PUT for the ciphertext.
    pub put_url: String,
    /// Seconds `put_url` stays valid.
    pub expires_in: u64,
    /// The data key exactly as the server sent it (standard base64).
    pub data_key_b64: String,
    /// The data key's 32 raw bytes.
    pub data_key: [u8; 32],
    /// The declared `bytes`: the exact size of the object to `PUT`.
    pub bytes: usize,
    /// The declared `content_type`, which `media` in a `message` repeats.
    pub content_type: String,
}

/// `POST /api/v1/media/upload-urls` for a file of `plaintext_len` bytes,
/// declaring as PROTOCOL 4 says the size of the sealed object
/// (`plaintext_len + 28`); see [`mint_upload`].
pub async fn mint_for_file(
    http: &Http,
    session: &Session,
    content_type: &str,
    plaintext_len: usize,
) -> Upload {
    mint_upload(
        http,
        session,
        content_type,
        crypto::sealed_len(plaintext_len),
    )
    .await
}

/// `POST /api/v1/media/upload-urls {"content_type","bytes"}` as `session`
/// and its raw answer (status, JSON, headers checked against the schema).
pub async fn request_upload(
    http: &Http,
    session: &Session,
    content_type: &str,
    bytes: u64,
) -> ephemera_load::client::RawResponse {
    let body = json!({ "content_type": content_type, "bytes": bytes }).to_string();
    http.raw(
        Method::POST,
        "/api/v1/media/upload-urls",
        Some(&session.token),
        Some(&body),
    )
    .await
    .expect("calling POST /api/v1/media/upload-urls")
}

/// `POST /api/v1/media/upload-urls {"content_type","bytes"}` as `session`,
/// `bytes` being the exact size of the object to `PUT`; asserts `200`,
/// `cipher == "AES-256-GCM"` and a 32-byte data key.
pub async fn mint_upload(
    http: &Http,
    session: &Session,
    content_type: &str,
    bytes: usize,
) -> Upload {
    let response = request_upload(http, session, content_type, bytes as u64).await;
    assert_eq!(
        response.status, 200,
        "upload-urls for {content_type} ({bytes} bytes) must answer 200, got {response:?}"
    );
    let json = response.json.expect("upload-urls answered JSON");
    let text = |key: &str| {
        json.get(key)
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("upload-urls answer has no string {key:?}: {json}"))
            .to_owned()
    };
    assert_eq!(text("cipher"), "AES-256-GCM", "the one cipher: {json}");
    let data_key_b64 = text("data_key");
    let data_key = crypto::data_key(&data_key_b64)
        .unwrap_or_else(|err| panic!("data_key must be base64 of 32 bytes: {err:#}"));
    Upload {
        media_key: text("media_key"),
        put_url: text("put_url"),
        expires_in: json
            .get("expires_in")
            .and_then(Value::as_u64)
            .unwrap_or_else(|| panic!("upload-urls answer has no expires_in: {json}")),
        data_key_b64,
        data_key,
        bytes,
        content_type: content_type.to_owned(),
    }
}

/// A client for object storage: no proxy, bounded time, and a fresh
/// connection for every request. A server that refuses an upload without
/// reading its body (s3s-fs does, rightly) closes that connection after
/// answering; a pooled client would then send the next request on it and
/// fail with "connection closed before message completed".
pub fn blob_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(0)
        .timeout(BLOB_TIMEOUT)
        .build()
        .expect("building the blob HTTP client")
}

/// An answer of object storage.
#[derive(Debug, Clone)]
pub struct BlobResponse {
    /// The HTTP status.
    pub status: u16,
    /// The `Cache-Control` header, if any.
    pub cache_control: Option<String>,
    /// The whole body.
    pub body: Vec<u8>,
}

impl BlobResponse {
    /// The body as (lossy) text, for messages and XML checks.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// `<Code>` of an S3 XML `<Error>` body, if the body is one.
    pub fn s3_error_code(&self) -> Option<String> {
        let text = self.text();
        let error = &text[text.find("<Error>")?..];
        let start = error.find("<Code>")? + "<Code>".len();
        let len = error[start..].find("</Code>")?;
        let code = error[start..start + len].trim();
        (!code.is_empty()).then(|| code.to_owned())
    }

    /// A short description for panic messages (the body only if small).
    pub fn describe(&self) -> String {
        let text = self.text();
        let body = if self.body.len() <= 600 && !text.contains('\u{fffd}') {
            text
        } else {
            format!("<{} bytes>", self.body.len())
        };
        format!(
            "status {}, cache-control {:?}, body {body}",
            self.status, self.cache_control
        )
    }
}

/// One request to object storage: `method` on `url`, with `body` if given
/// (sent with a `Content-Length`).
pub async fn blob_request(
    client: &reqwest::Client,
    method: Method,
    url: &str,
    body: Option<Vec<u8>>,
) -> BlobResponse {
    let mut request = client.request(method.clone(), url);
    if let Some(body) = body {
        request = request.body(body);
    }
    let response = request.send().await.unwrap_or_else(|err| {
        panic!(
            "{method} to object storage failed: {}",
            error_chain(&err.without_url())
        )
    });
    let status = response.status().as_u16();
    let cache_control = response
        .headers()
        .get(reqwest::header::CACHE_CONTROL)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = response
        .bytes()
        .await
        .unwrap_or_else(|err| {
            panic!(
                "reading the {method} answer of object storage: {}",
                error_chain(&err.without_url())
            )
        })
        .to_vec();
    BlobResponse {
        status,
        cache_control,
        body,
    }
}

/// An error and its sources, `: `-separated (reqwest's own message hides
/// the cause).
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}

/// Seal `plaintext` with the upload's key and `PUT` it to `put_url`;
/// asserts `200` and returns the ciphertext sent.
pub async fn seal_and_put(client: &reqwest::Client, upload: &Upload, plaintext: &[u8]) -> Vec<u8> {
    let sealed = crypto::seal(&upload.data_key, plaintext).expect("sealing the media");
    assert_eq!(
        sealed.len(),
        plaintext.len() + crypto::OVERHEAD,
        "sealed size = plaintext + 28 (nonce and tag)"
    );
    let response = blob_request(client, Method::PUT, &upload.put_url, Some(sealed.clone())).await;
    assert_eq!(
        response.status,
        200,
        "PUT of the ciphertext to put_url must answer 200: {}",
        response.describe()
    );
    sealed
}

/// Panic unless `response` is a `403` with an S3 XML `<Error><Code>` body;
/// returns the code.
pub fn assert_s3_refusal(response: &BlobResponse, what: &str) -> String {
    assert_eq!(
        response.status,
        403,
        "{what}: object storage must refuse with 403: {}",
        response.describe()
    );
    response.s3_error_code().unwrap_or_else(|| {
        panic!(
            "{what}: the 403 must carry an S3 XML <Error><Code> body: {}",
            response.describe()
        )
    })
}

/// `size` random bytes that start like a JPEG file.
pub fn photo(size: usize) -> Vec<u8> {
    use ring::rand::SecureRandom as _;
    let mut bytes = vec![0u8; size];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .expect("system randomness");
    let header = [0xFF, 0xD8, 0xFF, 0xE0];
    let n = header.len().min(size);
    bytes[..n].copy_from_slice(&header[..n]);
    bytes
}

/// `size` random bytes that start like an Ogg Opus voice note.
pub fn voice_note(size: usize) -> Vec<u8> {
    with_header(b"OggS\0\x02", size)
}

/// `size` random bytes that start like a PDF document.
pub fn pdf(size: usize) -> Vec<u8> {
    with_header(b"%PDF-1.7\n", size)
}

fn with_header(header: &[u8], size: usize) -> Vec<u8> {
    let mut bytes = photo(size);
    let n = header.len().min(size);
    bytes[..n].copy_from_slice(&header[..n]);
    bytes
}

/// A `send` of media `media_key` to user `to`.
pub fn media_send(
    client_msg_id: &str,
    to: &str,
    media_key: &str,
    view_policy: &str,
    ttl_seconds: u64,
) -> Value {
    json!({
        "type": "send",
        "client_msg_id": client_msg_id,
        "to": to,
        "media_key": media_key,
        "view_policy": view_policy,
        "ttl_seconds": ttl_seconds,
    })
}

// ---------------------------------------------------------------------------
// Presigned URLs
// ---------------------------------------------------------------------------

/// The raw (still percent-encoded) value of query parameter `name`.
pub fn query_param<'a>(url: &'a str, name: &str) -> Option<&'a str> {
    let query = url.split_once('?')?.1;
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then_some(v)
    })
}

/// `url` with query parameter `name` set to the raw `value`; panics if the
/// parameter is absent.
pub fn with_query_param(url: &str, name: &str, value: &str) -> String {
    let (base, query) = url
        .split_once('?')
        .unwrap_or_else(|| panic!("URL without a query: {url}"));
    let mut found = false;
    let pairs: Vec<String> = query
        .split('&')
        .map(|pair| {
            let key = pair.split_once('=').map_or(pair, |(k, _)| k);
            if key == name {
                found = true;
                format!("{name}={value}")
            } else {
                pair.to_owned()
            }
        })
        .collect();
    assert!(found, "URL has no {name} parameter: {url}");
    format!("{base}?{}", pairs.join("&"))
}

/// `url` with one hex digit of `X-Amz-Signature` changed.
pub fn tamper_signature(url: &str) -> String {
    let signature = query_param(url, "X-Amz-Signature")
        .unwrap_or_else(|| panic!("not a presigned URL (no X-Amz-Signature): {url}"));
    assert!(
        signature.len() == 64 && signature.bytes().all(|b| b.is_ascii_hexdigit()),
        "X-Amz-Signature must be 64 hex digits: {signature}"
    );
    let mut chars: Vec<char> = signature.chars().collect();
    let i = chars.len() / 2;
    chars[i] = if chars[i] == '0' { '1' } else { '0' };
    let forged: String = chars.into_iter().collect();
    with_query_param(url, "X-Amz-Signature", &forged)
}

/// `url` with the access key id of `X-Amz-Credential` replaced by
/// `access_key_id` (the scope after it kept).
pub fn with_access_key_id(url: &str, access_key_id: &str) -> String {
    let credential = query_param(url, "X-Amz-Credential")
        .unwrap_or_else(|| panic!("not a presigned URL (no X-Amz-Credential): {url}"));
    let (old, scope) = credential
        .split_once("%2F")
        .or_else(|| credential.split_once('/'))
        .unwrap_or_else(|| panic!("X-Amz-Credential without a scope: {credential}"));
    assert_ne!(old, access_key_id, "the forged key id must differ");
    with_query_param(
        url,
        "X-Amz-Credential",
        &format!("{access_key_id}%2F{scope}"),
    )
}

/// The access key id in a presigned URL's `X-Amz-Credential`.
pub fn access_key_id(url: &str) -> String {
    let credential = query_param(url, "X-Amz-Credential")
        .unwrap_or_else(|| panic!("not a presigned URL (no X-Amz-Credential): {url}"));
    credential
        .split_once("%2F")
        .or_else(|| credential.split_once('/'))
        .map(|(ak, _)| ak.to_owned())
        .unwrap_or_else(|| panic!("X-Amz-Credential without a scope: {credential}"))
}

/// `X-Amz-Expires` of a presigned URL, in seconds.
pub fn url_expires_in(url: &str) -> u64 {
    query_param(url, "X-Amz-Expires")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("presigned URL without a numeric X-Amz-Expires: {url}"))
}

/// When a presigned URL stops being valid: `X-Amz-Date + X-Amz-Expires`,
/// Unix milliseconds.
pub fn url_valid_until_ms(url: &str) -> i64 {
    let date = query_param(url, "X-Amz-Date")
        .unwrap_or_else(|| panic!("presigned URL without X-Amz-Date: {url}"));
    (amz_date_unix_secs(date) + url_expires_in(url) as i64) * 1000
}

/// `YYYYMMDDTHHMMSSZ` as Unix seconds.
pub fn amz_date_unix_secs(date: &str) -> i64 {
    let ok = date.len() == 16
        && date.as_bytes()[8] == b'T'
        && date.ends_with('Z')
        && date[..8].bytes().all(|b| b.is_ascii_digit())
        && date[9..15].bytes().all(|b| b.is_ascii_digit());
    assert!(ok, "X-Amz-Date is not YYYYMMDDTHHMMSSZ: {date:?}");
    let num = |range: std::ops::Range<usize>| date[range].parse::<i64>().expect("digits");
    let (y, m, d) = (num(0..4), num(4..6), num(6..8));
    let (hh, mm, ss) = (num(9..11), num(11..13), num(13..15));
    // Days from 1970-01-01 to y-m-d (proleptic Gregorian; H. Hinnant).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    days * 86_400 + hh * 3600 + mm * 60 + ss
}

/// The signed header names of a presigned URL (`X-Amz-SignedHeaders`,
/// decoded): `["content-length", "host"]` for a `put_url`.
pub fn signed_headers(url: &str) -> Vec<String> {
    let raw = query_param(url, "X-Amz-SignedHeaders")
        .unwrap_or_else(|| panic!("presigned URL without X-Amz-SignedHeaders: {url}"));
    raw.replace("%3B", ";")
        .replace("%3b", ";")
        .split(';')
        .map(str::to_owned)
        .collect()
}

/// A `PUT` of `body` to `url` (plain `http://`) with
/// `Transfer-Encoding: chunked`, so without a `Content-Length`: one raw
/// HTTP/1.1 exchange, since a `reqwest` body of known size always gets one.
pub async fn put_chunked(url: &str, body: &[u8]) -> BlobResponse {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let rest = url
        .strip_prefix("http://")
        .unwrap_or_else(|| panic!("put_chunked speaks plain http only: {url}"));
    let slash = rest.find('/').expect("a URL with a path");
    let (authority, target) = rest.split_at(slash);
    let mut socket = tokio::net::TcpStream::connect(authority)
        .await
        .unwrap_or_else(|err| panic!("connecting to {authority}: {err}"));
    let mut request = format!(
        "PUT {target} HTTP/1.1\r\nHost: {authority}\r\nTransfer-Encoding: chunked\r\n\
         Connection: close\r\n\r\n{:x}\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(body);
    request.extend_from_slice(b"\r\n0\r\n\r\n");
    // The server may answer and close before reading the whole body.
    let _ = socket.write_all(&request).await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(BLOB_TIMEOUT, socket.read_to_end(&mut answer)).await;
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP status in the answer to a chunked PUT: {text:?}"));
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let cache_control = head.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.eq_ignore_ascii_case("cache-control")
            .then(|| value.trim().to_owned())
    });
    BlobResponse {
        status,
        cache_control,
        body: body.as_bytes().to_vec(),
    }
}
