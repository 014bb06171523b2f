//! Stories and the social graph over HTTP (PROTOCOL 5 and
//! `notes/stories-contract.md`): one function a call, each returning the raw
//! answer (already checked against `schema/openapi.json` by [`Server::http`])
//! or, for the `*_ok` helpers, asserting the success status and returning the
//! body.
//!
//! [`Server::http`]: super::Server::http

use ephemera_load::client::{Http, RawResponse, Session};
use reqwest::Method;
use serde_json::{json, Value};

use super::media::{mint_for_file, photo, seal_and_put, Upload};
use super::{i64_of, str_of};

/// The content type of every story photo here.
pub const STORY_JPEG: &str = "image/jpeg";

/// One URL path segment, percent-encoded (ids are opaque).
pub fn seg(id: &str) -> String {
    let mut out = String::with_capacity(id.len());
    for byte in id.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(byte as char)
            }
            _ => out.push_str(&format!("%{byte:02X}")),
        }
    }
    out
}

/// `method path` as `session` with an optional JSON body.
pub async fn call(
    http: &Http,
    session: &Session,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> RawResponse {
    let text = body.map(|b| b.to_string());
    http.raw(method.clone(), path, Some(&session.token), text.as_deref())
        .await
        .unwrap_or_else(|err| panic!("{method} {path}: {err:#}"))
}

/// Panic unless `response` has `status` (and, for an error, the error code
/// the contract pairs with it); the JSON body, `Null` when there is none.
pub fn expect_status(response: RawResponse, status: u16, what: &str) -> Value {
    assert_eq!(
        response.status, status,
        "{what}: expected {status}, got {} {:?}",
        response.status, response.json
    );
    if status >= 400 {
        let code = match status {
            400 => "bad_request",
            401 => "unauthorized",
            403 => "forbidden",
            404 => "not_found",
            409 => "conflict",
            413 => "too_large",
            422 => "invalid",
            429 => "rate_limited",
            _ => "",
        };
        if !code.is_empty() {
            assert_eq!(
                response.error_code(),
                Some(code),
                "{what}: a {status} carries error code {code:?}: {:?}",
                response.json
            );
        }
    }
    response.json.unwrap_or(Value::Null)
}

// ---------------------------------------------------------------------------
// Social graph
// ---------------------------------------------------------------------------

/// `PUT /api/v1/following/{user_id}`.
pub async fn put_follow(http: &Http, s: &Session, user_id: &str) -> RawResponse {
    call(
        http,
        s,
        Method::PUT,
        &format!("/api/v1/following/{}", seg(user_id)),
        None,
    )
    .await
}

/// `DELETE /api/v1/following/{user_id}`.
pub async fn delete_follow(http: &Http, s: &Session, user_id: &str) -> RawResponse {
    call(
        http,
        s,
        Method::DELETE,
        &format!("/api/v1/following/{}", seg(user_id)),
        None,
    )
    .await
}

/// `PUT /api/v1/close-friends/{user_id}`.
pub async fn put_close_friend(http: &Http, s: &Session, user_id: &str) -> RawResponse {
    call(
        http,
        s,
        Method::PUT,
        &format!("/api/v1/close-friends/{}", seg(user_id)),
        None,
    )
    .await
}

/// `DELETE /api/v1/close-friends/{user_id}`.
pub async fn delete_close_friend(http: &Http, s: &Session, user_id: &str) -> RawResponse {
    call(
        http,
        s,
        Method::DELETE,
        &format!("/api/v1/close-friends/{}", seg(user_id)),
        None,
    )
    .await
}

/// `s` follows `user_id`: asserts `204`.
pub async fn follow(http: &Http, s: &Session, user_id: &str) {
    expect_status(put_follow(http, s, user_id).await, 204, "follow");
}

/// `s` stops following `user_id`: asserts `204`.
pub async fn unfollow(http: &Http, s: &Session, user_id: &str) {
    expect_status(delete_follow(http, s, user_id).await, 204, "unfollow");
}

/// `s` adds `user_id` to its close friends: asserts `204`.
pub async fn add_close_friend(http: &Http, s: &Session, user_id: &str) {
    expect_status(
        put_close_friend(http, s, user_id).await,
        204,
        "add close friend",
    );
}

/// `s` takes `user_id` off its close friends: asserts `204`.
pub async fn remove_close_friend(http: &Http, s: &Session, user_id: &str) {
    expect_status(
        delete_close_friend(http, s, user_id).await,
        204,
        "remove close friend",
    );
}

/// `GET /api/v1/users/{user_id}`.
pub async fn get_user(http: &Http, s: &Session, user_id: &str) -> RawResponse {
    call(
        http,
        s,
        Method::GET,
        &format!("/api/v1/users/{}", seg(user_id)),
        None,
    )
    .await
}

/// `(follower_count, following_count)` of `user_id`, asserting `200` and
/// the echoed `user_id`.
pub async fn counts(http: &Http, s: &Session, user_id: &str) -> (u64, u64) {
    let body = expect_status(get_user(http, s, user_id).await, 200, "GET /users/{id}");
    assert_eq!(str_of(&body, "user_id"), user_id, "profile user_id: {body}");
    (
        super::u64_of(&body, "follower_count"),
        super::u64_of(&body, "following_count"),
    )
}

// ---------------------------------------------------------------------------
// Stories
// ---------------------------------------------------------------------------

/// A story posted through [`post_story`], with what it was made from.
#[derive(Debug, Clone)]
pub struct Posted {
    /// The story.
    pub story_id: String,
    /// As `201` said.
    pub expires_at: i64,
    /// The upload (its data key is the story's).
    pub upload: Upload,
    /// The photo.
    pub plain: Vec<u8>,
    /// What was `PUT`: the photo sealed under the upload's key.
    pub sealed: Vec<u8>,
}

/// Upload a photo of `size` bytes as `s` (minted, sealed and `PUT`).
pub async fn upload_photo(
    http: &Http,
    blobs: &reqwest::Client,
    s: &Session,
    size: usize,
) -> (Upload, Vec<u8>, Vec<u8>) {
    let plain = photo(size);
    let upload = mint_for_file(http, s, STORY_JPEG, size).await;
    let sealed = seal_and_put(blobs, &upload, &plain).await;
    (upload, plain, sealed)
}

/// The body of a `POST /api/v1/stories`.
pub fn story_body(
    media_key: &str,
    audience: &str,
    ttl_seconds: Option<u64>,
    caption: Option<&str>,
) -> Value {
    let mut body = json!({ "media_key": media_key, "audience": audience });
    if let Some(ttl) = ttl_seconds {
        body["ttl_seconds"] = json!(ttl);
    }
    if let Some(caption) = caption {
        body["caption"] = json!(caption);
    }
    body
}

/// `POST /api/v1/stories` with `body`.
pub async fn create_story(http: &Http, s: &Session, body: Value) -> RawResponse {
    call(http, s, Method::POST, "/api/v1/stories", Some(body)).await
}

/// Upload a photo and post it as a story of `s`; asserts `201` and
/// `expires_at` about `now + ttl`.
pub async fn post_story(
    http: &Http,
    blobs: &reqwest::Client,
    s: &Session,
    audience: &str,
    ttl_seconds: Option<u64>,
    caption: Option<&str>,
) -> Posted {
    let (upload, plain, sealed) = upload_photo(http, blobs, s, 1500).await;
    let before = super::now_ms();
    let body = expect_status(
        create_story(
            http,
            s,
            story_body(&upload.media_key, audience, ttl_seconds, caption),
        )
        .await,
        201,
        "POST /api/v1/stories",
    );
    let after = super::now_ms();
    let expires_at = i64_of(&body, "expires_at");
    let ttl_ms = ttl_seconds.unwrap_or(86_400) as i64 * 1000;
    assert!(
        (before + ttl_ms - 50..=after + ttl_ms + 50).contains(&expires_at),
        "expires_at = posted_at + ttl ({ttl_ms} ms): {expires_at} not in \
         [{before}, {after}] + ttl"
    );
    Posted {
        story_id: str_of(&body, "story_id").to_owned(),
        expires_at,
        upload,
        plain,
        sealed,
    }
}

/// `GET /api/v1/stories/tray`: the items, asserting `200`.
pub async fn tray(http: &Http, s: &Session) -> Vec<Value> {
    let body = expect_status(
        call(http, s, Method::GET, "/api/v1/stories/tray", None).await,
        200,
        "GET /api/v1/stories/tray",
    );
    body["tray"].as_array().cloned().expect("tray is an array")
}

/// `GET /api/v1/users/{user_id}/stories`.
pub async fn get_user_stories(http: &Http, s: &Session, user_id: &str) -> RawResponse {
    call(
        http,
        s,
        Method::GET,
        &format!("/api/v1/users/{}/stories", seg(user_id)),
        None,
    )
    .await
}

/// The stories of `user_id` that `s` may see, asserting `200`.
pub async fn user_stories(http: &Http, s: &Session, user_id: &str) -> Vec<Value> {
    let body = expect_status(
        get_user_stories(http, s, user_id).await,
        200,
        "GET /users/{id}/stories",
    );
    body["stories"]
        .as_array()
        .cloned()
        .expect("stories is an array")
}

/// `GET /api/v1/stories/{story_id}`.
pub async fn get_story(http: &Http, s: &Session, story_id: &str) -> RawResponse {
    call(
        http,
        s,
        Method::GET,
        &format!("/api/v1/stories/{}", seg(story_id)),
        None,
    )
    .await
}

/// Open a story as `s`, asserting `200` and the echoed id: the body.
pub async fn open_story(http: &Http, s: &Session, story_id: &str) -> Value {
    let body = expect_status(get_story(http, s, story_id).await, 200, "GET /stories/{id}");
    assert_eq!(str_of(&body, "story_id"), story_id, "story_id: {body}");
    body
}

/// `GET /api/v1/stories/{story_id}/viewers`.
pub async fn get_viewers(http: &Http, s: &Session, story_id: &str) -> RawResponse {
    call(
        http,
        s,
        Method::GET,
        &format!("/api/v1/stories/{}/viewers", seg(story_id)),
        None,
    )
    .await
}

/// `POST /api/v1/stories/{story_id}/reactions {"emoji"}`.
pub async fn react(http: &Http, s: &Session, story_id: &str, emoji: &str) -> RawResponse {
    call(
        http,
        s,
        Method::POST,
        &format!("/api/v1/stories/{}/reactions", seg(story_id)),
        Some(json!({ "emoji": emoji })),
    )
    .await
}

/// `POST /api/v1/stories/{story_id}/replies {"body"}`.
pub async fn reply(http: &Http, s: &Session, story_id: &str, body: &str) -> RawResponse {
    call(
        http,
        s,
        Method::POST,
        &format!("/api/v1/stories/{}/replies", seg(story_id)),
        Some(json!({ "body": body })),
    )
    .await
}

/// `DELETE /api/v1/stories/{story_id}`.
pub async fn delete_story(http: &Http, s: &Session, story_id: &str) -> RawResponse {
    call(
        http,
        s,
        Method::DELETE,
        &format!("/api/v1/stories/{}", seg(story_id)),
        None,
    )
    .await
}

/// `POST /api/v1/stories/{story_id}/highlight`.
pub async fn highlight(http: &Http, s: &Session, story_id: &str) -> RawResponse {
    call(
        http,
        s,
        Method::POST,
        &format!("/api/v1/stories/{}/highlight", seg(story_id)),
        None,
    )
    .await
}

/// `GET /api/v1/users/{user_id}/highlights`: the items, asserting `200`.
pub async fn highlights(http: &Http, s: &Session, user_id: &str) -> Vec<Value> {
    let body = expect_status(
        call(
            http,
            s,
            Method::GET,
            &format!("/api/v1/users/{}/highlights", seg(user_id)),
            None,
        )
        .await,
        200,
        "GET /users/{id}/highlights",
    );
    body["highlights"]
        .as_array()
        .cloned()
        .expect("highlights is an array")
}

/// `DELETE /api/v1/highlights/{highlight_id}`.
pub async fn delete_highlight(http: &Http, s: &Session, highlight_id: &str) -> RawResponse {
    call(
        http,
        s,
        Method::DELETE,
        &format!("/api/v1/highlights/{}", seg(highlight_id)),
        None,
    )
    .await
}

// ---------------------------------------------------------------------------
// Frames
// ---------------------------------------------------------------------------

/// Whether `frame` is of type `ty` and about story `story_id`.
pub fn is_story(frame: &Value, ty: &str, story_id: &str) -> bool {
    super::is_type(frame, ty) && frame.get("story_id").and_then(Value::as_str) == Some(story_id)
}
