//! Async client for Ephemera's HTTP API and socket (PROTOCOL.md §1, §3, §6).
//!
//! [`Http`] wraps the account, session and conversation calls with typed
//! answers; [`Socket`] is one device's WebSocket, speaking JSON text frames.
//! An optional [`Observer`] on [`Http`] sees every HTTP answer (tests check
//! each against `schema/openapi.json`).
//!
//! Errors are [`anyhow::Error`]s. An HTTP answer with an error status becomes
//! an [`ApiError`] inside it (get it back with [`api_error`]) so a caller can
//! branch on the status and the JSON error code. No error built here carries
//! message content, keys or tokens: the socket URL of a `?token=` connection is
//! never quoted, and answer bodies are never echoed.

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _, Result};
use futures_util::{SinkExt as _, StreamExt as _};
use reqwest::Method;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::handshake::client::Request;
use tokio_tungstenite::tungstenite::http::header::AUTHORIZATION;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long an HTTP call may take before it fails; generous, because a
/// loaded test machine is slow but a hung server must still end a test.
const HTTP_TIMEOUT: Duration = Duration::from_secs(30);

/// How long the WebSocket handshake may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long [`Socket::close`] waits for the server to answer the close.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

/// An HTTP answer with an error status (PROTOCOL.md §2).
///
/// It travels inside the `anyhow::Error` of every [`Http`] call; tests use it
/// to assert the exact status and code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// The HTTP status, e.g. `401`.
    pub status: u16,
    /// `error.code` of the JSON error body, when the body had one.
    pub code: Option<String>,
    /// `Retry-After` in seconds, when the server sent one (with `429`).
    pub retry_after: Option<u64>,
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.code {
            Some(code) => write!(f, "HTTP {} ({code})", self.status),
            None => write!(f, "HTTP {}", self.status),
        }
    }
}

impl std::error::Error for ApiError {}

/// The [`ApiError`] inside `err`, if the failure was an HTTP error status.
pub fn api_error(err: &anyhow::Error) -> Option<&ApiError> {
    err.downcast_ref::<ApiError>()
}

// ---------------------------------------------------------------------------
// HTTP
// ---------------------------------------------------------------------------

/// A created account, as `POST /api/v1/accounts` answers it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct Account {
    /// The opaque id other users address this account by.
    pub user_id: String,
    /// The username it was registered with.
    pub username: String,
}

/// A logged-in device, as `POST /api/v1/sessions` answers it.
///
/// Each login is a new device. `Debug` never prints the token.
#[derive(Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct Session {
    /// Bearer token for HTTP calls and the socket; a secret.
    pub token: String,
    /// The account this session belongs to.
    pub user_id: String,
    /// The device this login created.
    pub device_id: String,
    /// When the token stops working, Unix milliseconds.
    pub expires_at: i64,
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("token", &"<redacted>")
            .field("user_id", &self.user_id)
            .field("device_id", &self.device_id)
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// One entry of `GET /api/v1/conversations`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct Conversation {
    /// The conversation's opaque id.
    pub conversation_id: String,
    /// Every member's user id, the caller included.
    pub members: Vec<String>,
    /// The highest message `seq` assigned so far.
    pub last_seq: u64,
    /// How many messages the caller has not marked read.
    pub unread: u64,
    /// The group's name, if it was given one.
    #[serde(default)]
    pub name: Option<String>,
    /// `"direct"` or `"group"`, when the server says.
    #[serde(default)]
    pub kind: Option<String>,
}

/// One live message of `GET /api/v1/conversations/{id}/messages`: a
/// `message` frame without `cursor`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct HistoryMessage {
    /// The message's opaque id.
    pub msg_id: String,
    /// The conversation it belongs to.
    pub conversation_id: String,
    /// Its position in the conversation, strictly increasing.
    pub seq: u64,
    /// The sender's user id.
    pub from: String,
    /// When the server accepted it, Unix milliseconds.
    pub sent_at: i64,
    /// When it stops being readable, Unix milliseconds.
    pub expires_at: i64,
    /// `"timed"` or `"once"`.
    pub view_policy: String,
    /// The text, for a `timed` text message.
    #[serde(default)]
    pub body: Option<String>,
    /// Every other field (`media`, `has_media`, ...), kept as sent.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, Value>,
}

/// Any HTTP answer, unchecked: what [`Http::raw`] returns so a caller can
/// assert statuses the typed calls treat as errors.
#[derive(Debug, Clone, PartialEq)]
pub struct RawResponse {
    /// The HTTP status.
    pub status: u16,
    /// The body parsed as JSON, if it was JSON.
    pub json: Option<Value>,
    /// `Retry-After` in seconds, if present.
    pub retry_after: Option<u64>,
}

impl RawResponse {
    /// `error.code` of a JSON error body (PROTOCOL.md §2).
    pub fn error_code(&self) -> Option<&str> {
        self.json.as_ref()?.get("error")?.get("code")?.as_str()
    }

    /// `Ok(self)` for a 2xx status, otherwise the matching [`ApiError`].
    fn success(self) -> Result<RawResponse> {
        if (200..300).contains(&self.status) {
            Ok(self)
        } else {
            Err(ApiError {
                status: self.status,
                code: self.error_code().map(str::to_owned),
                retry_after: self.retry_after,
            }
            .into())
        }
    }

    /// The JSON body as `T`; `what` names the call in the error.
    fn parse<T: DeserializeOwned>(self, what: &str) -> Result<T> {
        let body = self
            .json
            .ok_or_else(|| anyhow!("{what}: answer has no JSON body"))?;
        serde_json::from_value(body).map_err(|err| {
            // serde quotes offending values, which could be content or a
            // token; keep only the field-level reason.
            let reason = err.to_string();
            let reason = if reason.starts_with("missing field") {
                reason
            } else {
                "a field has an unexpected type".to_owned()
            };
            anyhow!("{what}: unexpected answer shape: {reason}")
        })
    }
}

/// One answered HTTP call, as an [`Observer`] sees it.
///
/// It carries no request headers, so no bearer token; the body is the
/// server's answer (which, for a login, does hold the new token).
#[derive(Debug, Clone, Copy)]
pub struct Exchange<'a> {
    /// The request method, e.g. `"GET"`.
    pub method: &'a str,
    /// The request path without host or query string, e.g.
    /// `/api/v1/conversations/abc/messages`.
    pub path: &'a str,
    /// The HTTP status of the answer.
    pub status: u16,
    /// The answer body parsed as JSON; `None` when it was empty or not JSON
    /// (see `body_len` to tell the two apart).
    pub body: Option<&'a Value>,
    /// The length of the answer body in bytes, `0` for an empty body.
    pub body_len: usize,
}

/// A hook [`Http`] calls once for every answer it receives, whatever the
/// status; tests use it to check every answer against `schema/openapi.json`.
pub type Observer = Arc<dyn Fn(&Exchange<'_>) + Send + Sync>;

/// Client for the public HTTP API of one server (PROTOCOL.md §1, §6).
///
/// Cheap to clone; clones share one connection pool and the observer.
#[derive(Clone)]
pub struct Http {
    /// The pooled HTTP client.
    client: reqwest::Client,
    /// `http://host:port`, without a trailing slash.
    base: String,
    /// Called with every answer, if set ([`Http::with_observer`]).
    observer: Option<Observer>,
}

impl fmt::Debug for Http {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Http")
            .field("base", &self.base)
            .field("observer", &self.observer.is_some())
            .finish_non_exhaustive()
    }
}

impl Http {
    /// A client for the server at `base`, e.g. `http://127.0.0.1:8080`.
    pub fn new(base: impl Into<String>) -> Result<Http> {
        Http::build(base, None)
    }

    /// [`Http::new`] whose connections leave from `local` (such as
    /// `127.0.0.2`: Linux answers on all of 127.0.0.0/8), so one process can
    /// act as several client addresses.
    pub fn new_from(base: impl Into<String>, local: IpAddr) -> Result<Http> {
        Http::build(base, Some(local))
    }

    fn build(base: impl Into<String>, local: Option<IpAddr>) -> Result<Http> {
        let client = reqwest::Client::builder()
            // Tests and load runs talk to local servers; a proxy from the
            // environment would only get in the way.
            .no_proxy()
            .local_address(local)
            .timeout(HTTP_TIMEOUT)
            .build()
            .context("building the HTTP client")?;
        let base = base.into().trim_end_matches('/').to_owned();
        Ok(Http {
            client,
            base,
            observer: None,
        })
    }

    /// This client with `observer` called once for every answer of every
    /// call (typed ones and [`Http::raw`]), replacing any earlier observer.
    pub fn with_observer(mut self, observer: Observer) -> Http {
        self.observer = Some(observer);
        self
    }

    /// The base URL this client talks to.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// `POST /api/v1/accounts`: create an account.
    pub async fn register(&self, username: &str, password: &str) -> Result<Account> {
        let body = json!({ "username": username, "password": password });
        self.json_call(Method::POST, "/api/v1/accounts", None, Some(&body))
            .await?
            .success()?
            .parse("register")
    }

    /// `POST /api/v1/sessions`: log in, creating a new device.
    pub async fn login(
        &self,
        username: &str,
        password: &str,
        device_name: Option<&str>,
    ) -> Result<Session> {
        let mut body = json!({ "username": username, "password": password });
        if let Some(name) = device_name {
            body["device_name"] = Value::from(name);
        }
        self.json_call(Method::POST, "/api/v1/sessions", None, Some(&body))
            .await?
            .success()?
            .parse("login")
    }

    /// `DELETE /api/v1/sessions/current`: end `session`; its token dies at once.
    pub async fn logout(&self, session: &Session) -> Result<()> {
        self.json_call(
            Method::DELETE,
            "/api/v1/sessions/current",
            Some(&session.token),
            None,
        )
        .await?
        .success()?;
        Ok(())
    }

    /// `POST /api/v1/conversations`: create a group with `members` (the
    /// caller is always a member) and return its `conversation_id`.
    pub async fn create_group<S: AsRef<str>>(
        &self,
        session: &Session,
        members: &[S],
        name: Option<&str>,
    ) -> Result<String> {
        let members: Vec<&str> = members.iter().map(AsRef::as_ref).collect();
        let mut body = json!({ "members": members });
        if let Some(name) = name {
            body["name"] = Value::from(name);
        }
        #[derive(Deserialize)]
        struct Created {
            conversation_id: String,
        }
        let created: Created = self
            .json_call(
                Method::POST,
                "/api/v1/conversations",
                Some(&session.token),
                Some(&body),
            )
            .await?
            .success()?
            .parse("create_group")?;
        Ok(created.conversation_id)
    }

    /// `GET /api/v1/conversations`: every conversation `session`'s user is in.
    pub async fn list_conversations(&self, session: &Session) -> Result<Vec<Conversation>> {
        #[derive(Deserialize)]
        struct List {
            conversations: Vec<Conversation>,
        }
        let list: List = self
            .json_call(
                Method::GET,
                "/api/v1/conversations",
                Some(&session.token),
                None,
            )
            .await?
            .success()?
            .parse("list_conversations")?;
        Ok(list.conversations)
    }

    /// `GET /api/v1/conversations/{id}/messages`: live messages with
    /// `seq > after_seq`, at most `limit` of them.
    pub async fn history(
        &self,
        session: &Session,
        conversation_id: &str,
        after_seq: u64,
        limit: u32,
    ) -> Result<Vec<HistoryMessage>> {
        #[derive(Deserialize)]
        struct Page {
            messages: Vec<HistoryMessage>,
        }
        let path = format!(
            "/api/v1/conversations/{}/messages?after_seq={after_seq}&limit={limit}",
            encode_segment(conversation_id)
        );
        let page: Page = self
            .json_call(Method::GET, &path, Some(&session.token), None)
            .await?
            .success()?
            .parse("history")?;
        Ok(page.messages)
    }

    /// Any call, unchecked: `body` is sent verbatim as `application/json`
    /// (so it may be deliberately malformed) and every status is returned.
    pub async fn raw(
        &self,
        method: Method,
        path: &str,
        bearer: Option<&str>,
        body: Option<&str>,
    ) -> Result<RawResponse> {
        self.call(method, path, bearer, body.map(|b| b.as_bytes().to_vec()))
            .await
    }

    /// A call with an optional JSON body.
    async fn json_call(
        &self,
        method: Method,
        path: &str,
        bearer: Option<&str>,
        body: Option<&Value>,
    ) -> Result<RawResponse> {
        let body = body
            .map(serde_json::to_vec)
            .transpose()
            .context("serialising request body")?;
        self.call(method, path, bearer, body).await
    }

    /// The one place requests are sent.
    async fn call(
        &self,
        method: Method,
        path: &str,
        bearer: Option<&str>,
        body: Option<Vec<u8>>,
    ) -> Result<RawResponse> {
        let bare_path = path.split('?').next().unwrap_or(path);
        let what = format!("{method} {bare_path}");
        let mut request = self
            .client
            .request(method.clone(), format!("{}{path}", self.base));
        if let Some(token) = bearer {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body);
        }
        let response = request
            .send()
            .await
            .map_err(|err| anyhow!("{what}: request failed: {}", err.without_url()))?;
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse().ok());
        let bytes = response
            .bytes()
            .await
            .map_err(|err| anyhow!("{what}: reading answer failed: {}", err.without_url()))?;
        let json = serde_json::from_slice(&bytes).ok();
        if let Some(observer) = &self.observer {
            observer(&Exchange {
                method: method.as_str(),
                path: bare_path,
                status,
                body: json.as_ref(),
                body_len: bytes.len(),
            });
        }
        Ok(RawResponse {
            status,
            json,
            retry_after,
        })
    }
}

/// Percent-encode one URL path segment (ids are opaque, so be safe).
fn encode_segment(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for byte in segment.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(byte as char)
            }
            _ => out.push_str(&format!("%{byte:02X}")),
        }
    }
    out
}

// ---------------------------------------------------------------------------
// Frames
// ---------------------------------------------------------------------------

/// Where a `send` goes: a user (1:1) or an existing conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target<'a> {
    /// `to`: the 1:1 conversation with this user id.
    User(&'a str),
    /// `conversation_id`: an existing conversation.
    Conversation(&'a str),
}

/// A `send` frame for a `timed` text message.
pub fn timed_text(client_msg_id: &str, target: Target<'_>, body: &str, ttl_seconds: u64) -> Value {
    let mut frame = json!({
        "type": "send",
        "client_msg_id": client_msg_id,
        "body": body,
        "view_policy": "timed",
        "ttl_seconds": ttl_seconds,
    });
    match target {
        Target::User(user_id) => frame["to"] = Value::from(user_id),
        Target::Conversation(id) => frame["conversation_id"] = Value::from(id),
    }
    frame
}

/// A `ping` frame.
pub fn ping() -> Value {
    json!({ "type": "ping" })
}

/// A `sync` frame asking for every event after `cursor`.
pub fn sync(after: u64) -> Value {
    json!({ "type": "sync", "after": after })
}

// ---------------------------------------------------------------------------
// Socket
// ---------------------------------------------------------------------------

/// What [`Socket::recv_event`] saw next.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A text frame, parsed as JSON.
    Frame(Value),
    /// The connection is closed; the close code if the server sent one
    /// (`None` for a close without a code or a dropped connection).
    Closed(Option<u16>),
    /// Nothing arrived in time.
    Timeout,
}

/// Frames read until a predicate matched; see [`Socket::collect_until`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Collected {
    /// Every frame that did not match, in arrival order.
    pub skipped: Vec<Value>,
    /// The first matching frame, or `None` on timeout.
    pub matched: Option<Value>,
}

/// One device's WebSocket to `/api/v1/ws`, exchanging JSON text frames.
pub struct Socket {
    /// The connection.
    stream: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// `Some(code)` once the connection is closed, so later reads answer
    /// at once with the same close code.
    closed: Option<Option<u16>>,
}

impl fmt::Debug for Socket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Socket")
            .field("closed", &self.closed)
            .finish_non_exhaustive()
    }
}

impl Socket {
    /// Connect to `ws_url` (`ws://host:port/api/v1/ws`) with the token in
    /// the `Authorization: Bearer` header.
    pub async fn connect(ws_url: &str, token: &str) -> Result<Socket> {
        let mut request = client_request(ws_url)?;
        let value = HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|_| anyhow!("token is not a valid header value"))?;
        request.headers_mut().insert(AUTHORIZATION, value);
        Self::open(request).await
    }

    /// Connect to `ws_url` with the token as `?token=`, the browser way.
    pub async fn connect_with_query_token(ws_url: &str, token: &str) -> Result<Socket> {
        let separator = if ws_url.contains('?') { '&' } else { '?' };
        let url = format!("{ws_url}{separator}token={}", encode_segment(token));
        Self::open(client_request(&url)?).await
    }

    /// Connect to `ws_url` with no token at all (the server should close
    /// with 4401).
    pub async fn connect_anonymous(ws_url: &str) -> Result<Socket> {
        Self::open(client_request(ws_url)?).await
    }

    /// Run the handshake for `request`.
    async fn open(request: Request) -> Result<Socket> {
        // Nagle off: frames are small and latency is what we measure.
        let handshake = tokio_tungstenite::connect_async_with_config(request, None, true);
        let (stream, _response) = tokio::time::timeout(CONNECT_TIMEOUT, handshake)
            .await
            .map_err(|_| anyhow!("websocket handshake timed out"))?
            .map_err(|err| anyhow!("websocket handshake failed: {}", describe_ws_error(&err)))?;
        Ok(Socket {
            stream,
            closed: None,
        })
    }

    /// Send `frame` as one text frame.
    pub async fn send(&mut self, frame: &Value) -> Result<()> {
        let text = serde_json::to_string(frame).context("serialising frame")?;
        self.send_raw(text).await
    }

    /// Send `text` verbatim as one text frame (it need not be JSON).
    pub async fn send_raw(&mut self, text: impl Into<String>) -> Result<()> {
        if let Some(code) = self.closed {
            bail!("socket already closed (close code {code:?})");
        }
        self.stream
            .send(Message::text(text.into()))
            .await
            .map_err(|err| anyhow!("websocket send failed: {}", describe_ws_error(&err)))
    }

    /// The next text frame, a close, or [`Event::Timeout`] after `timeout`.
    ///
    /// Pings and pongs are answered and skipped. Once closed, every call
    /// returns the same [`Event::Closed`].
    pub async fn recv_event(&mut self, timeout: Duration) -> Result<Event> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(code) = self.closed {
                return Ok(Event::Closed(code));
            }
            let next = match tokio::time::timeout_at(deadline, self.stream.next()).await {
                Err(_) => return Ok(Event::Timeout),
                Ok(next) => next,
            };
            match next {
                Some(Ok(Message::Text(text))) => {
                    let value = serde_json::from_str(text.as_str()).map_err(|_| {
                        anyhow!(
                            "server sent a text frame that is not JSON ({} bytes)",
                            text.len()
                        )
                    })?;
                    return Ok(Event::Frame(value));
                }
                Some(Ok(Message::Close(frame))) => {
                    self.closed = Some(frame.map(|f| u16::from(f.code)));
                }
                Some(Ok(Message::Binary(bytes))) => {
                    bail!("server sent a binary frame ({} bytes)", bytes.len());
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                // The stream ended or broke without a close frame.
                None => self.closed = Some(None),
                Some(Err(
                    WsError::ConnectionClosed
                    | WsError::AlreadyClosed
                    | WsError::Io(_)
                    | WsError::Protocol(_),
                )) => self.closed = Some(None),
                Some(Err(err)) => {
                    bail!("websocket receive failed: {}", describe_ws_error(&err));
                }
            }
        }
    }

    /// The next text frame, or `None` if nothing arrived within `timeout`.
    /// A closed socket is an error.
    pub async fn recv(&mut self, timeout: Duration) -> Result<Option<Value>> {
        match self.recv_event(timeout).await? {
            Event::Frame(frame) => Ok(Some(frame)),
            Event::Timeout => Ok(None),
            Event::Closed(code) => bail!("socket closed by the server (close code {code:?})"),
        }
    }

    /// The first frame within `timeout` for which `matches` is true,
    /// discarding the frames before it; `None` on timeout.
    pub async fn recv_until(
        &mut self,
        timeout: Duration,
        matches: impl FnMut(&Value) -> bool,
    ) -> Result<Option<Value>> {
        Ok(self.collect_until(timeout, matches).await?.matched)
    }

    /// Like [`Socket::recv_until`], but keeps the frames it skipped.
    pub async fn collect_until(
        &mut self,
        timeout: Duration,
        mut matches: impl FnMut(&Value) -> bool,
    ) -> Result<Collected> {
        let deadline = Instant::now() + timeout;
        let mut collected = Collected::default();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.recv(left).await? {
                None => return Ok(collected),
                Some(frame) if matches(&frame) => {
                    collected.matched = Some(frame);
                    return Ok(collected);
                }
                Some(frame) => collected.skipped.push(frame),
            }
        }
    }

    /// Whether the connection is known to be closed.
    pub fn is_closed(&self) -> bool {
        self.closed.is_some()
    }

    /// The server's close code, once a close frame carrying one arrived.
    pub fn close_code(&self) -> Option<u16> {
        self.closed.flatten()
    }

    /// Close the connection normally (1000) and wait briefly for the
    /// server's answer.
    pub async fn close(mut self) -> Result<()> {
        if self.closed.is_some() {
            return Ok(());
        }
        let frame = CloseFrame {
            code: CloseCode::Normal,
            reason: "".into(),
        };
        // The peer may already be gone; then there is nothing to finish.
        if self.stream.close(Some(frame)).await.is_err() {
            return Ok(());
        }
        let deadline = Instant::now() + CLOSE_GRACE;
        while let Ok(Some(Ok(_))) = tokio::time::timeout_at(deadline, self.stream.next()).await {}
        Ok(())
    }
}

/// Parse a socket URL into a handshake request, without quoting the URL
/// (it may carry a token) in the error.
fn client_request(url: &str) -> Result<Request> {
    url.into_client_request()
        .map_err(|err| anyhow!("invalid websocket url: {}", describe_ws_error(&err)))
}

/// Describe a WebSocket error without echoing payloads or URLs.
fn describe_ws_error(err: &WsError) -> String {
    match err {
        WsError::Io(io) => format!("io error ({})", io.kind()),
        WsError::Http(response) => format!("HTTP {}", response.status()),
        WsError::Url(_) => "bad url".to_owned(),
        WsError::WriteBufferFull(_) => "write buffer full".to_owned(),
        WsError::Utf8(_) => "invalid UTF-8".to_owned(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_are_percent_encoded() {
        assert_eq!(encode_segment("abc-_.~09"), "abc-_.~09");
        assert_eq!(encode_segment("a/b c"), "a%2Fb%20c");
    }

    #[test]
    fn session_debug_hides_the_token() {
        let session = Session {
            token: "secret-token-value".into(),
            user_id: "u".into(),
            device_id: "d".into(),
            expires_at: 1,
        };
        assert!(!format!("{session:?}").contains("secret-token-value"));
    }

    #[test]
    fn timed_text_targets() {
        let to_user = timed_text("c1", Target::User("u1"), "hi", 5);
        assert_eq!(to_user["to"], "u1");
        assert!(to_user.get("conversation_id").is_none());
        let to_conv = timed_text("c2", Target::Conversation("k1"), "hi", 5);
        assert_eq!(to_conv["conversation_id"], "k1");
        assert_eq!(to_conv["type"], "send");
    }
}
