//! [`TestSocket`]: one device's socket for tests. Every frame sent through
//! [`TestSocket::send`] is checked against the client schemas, every frame
//! received against the server schemas, and every received frame is kept so
//! a test can assert what a device did *not* get.

use std::time::Duration;

use ephemera_load::client::{self, Event, Session, Socket};
use serde_json::{json, Value};
use tokio::time::Instant;

use super::schema::{assert_client_frame, assert_server_frame};
use super::{is_type, str_of, u64_of, Server};

/// How long to wait for a frame that must arrive.
pub const WAIT: Duration = Duration::from_secs(5);

/// How long to listen when asserting that something does not arrive.
pub const QUIET: Duration = Duration::from_millis(300);

/// A device's socket with schema checks and a record of what it received.
pub struct TestSocket {
    /// The underlying client socket.
    inner: Socket,
    /// Names the device in panic messages ("alice-1").
    label: String,
    /// Every frame received so far, in order.
    seen: Vec<Value>,
    /// Frames that an `expect` skipped over: a later `expect` may still
    /// want them (a frame can arrive before the test starts waiting for it).
    backlog: std::collections::VecDeque<Value>,
}

/// What a `sync` returned: see [`TestSocket::sync`].
#[derive(Debug, Clone)]
pub struct Synced {
    /// Every frame carrying a `cursor` received between the `sync` and the
    /// `synced` (live events included), in arrival order.
    pub events: Vec<Value>,
    /// The `cursor` of the `synced` frame.
    pub cursor: u64,
}

impl Synced {
    /// The events about message `msg_id` with type `ty`.
    pub fn about<'a>(&'a self, ty: &'a str, msg_id: &'a str) -> impl Iterator<Item = &'a Value> {
        self.events
            .iter()
            .filter(move |f| super::is_about(f, ty, msg_id))
    }
}

impl TestSocket {
    /// Connect with the token in the `Authorization` header, then prove the
    /// session serves frames with a `ping`/`pong`.
    pub async fn connect(server: &Server, session: &Session, label: &str) -> TestSocket {
        let inner = Socket::connect(&server.ws_url(), &session.token)
            .await
            .unwrap_or_else(|err| panic!("{label}: connect failed: {err:#}"));
        let mut socket = Self::wrap(inner, label);
        socket.ping().await;
        socket
    }

    /// Connect with `?token=`, then `ping`/`pong`.
    pub async fn connect_query(server: &Server, session: &Session, label: &str) -> TestSocket {
        let inner = Socket::connect_with_query_token(&server.ws_url(), &session.token)
            .await
            .unwrap_or_else(|err| panic!("{label}: connect (?token=) failed: {err:#}"));
        let mut socket = Self::wrap(inner, label);
        socket.ping().await;
        socket
    }

    /// Connect without the `ping` check, for sockets the server should
    /// refuse: `token` in the header, in the query (`via_query`), or none.
    pub async fn connect_unchecked(
        server: &Server,
        token: Option<&str>,
        via_query: bool,
        label: &str,
    ) -> TestSocket {
        let url = server.ws_url();
        let inner = match (token, via_query) {
            (Some(token), false) => Socket::connect(&url, token).await,
            (Some(token), true) => Socket::connect_with_query_token(&url, token).await,
            (None, _) => Socket::connect_anonymous(&url).await,
        }
        .unwrap_or_else(|err| panic!("{label}: the upgrade must succeed: {err:#}"));
        Self::wrap(inner, label)
    }

    /// Wrap a connected socket.
    fn wrap(inner: Socket, label: &str) -> TestSocket {
        TestSocket {
            inner,
            label: label.to_owned(),
            seen: Vec::new(),
            backlog: std::collections::VecDeque::new(),
        }
    }

    /// The device's name in messages.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Every frame received so far.
    pub fn seen(&self) -> &[Value] {
        &self.seen
    }

    /// Send a well-formed frame (checked against the client schemas).
    pub async fn send(&mut self, frame: Value) {
        assert_client_frame(&frame);
        self.inner
            .send(&frame)
            .await
            .unwrap_or_else(|err| panic!("{}: send failed: {err:#}", self.label));
    }

    /// Send `text` verbatim, unchecked: for deliberately bad frames.
    pub async fn send_raw(&mut self, text: &str) -> anyhow::Result<()> {
        self.inner.send_raw(text).await
    }

    /// The next event; frames are schema-checked and recorded.
    pub async fn next_event(&mut self, timeout: Duration) -> Event {
        let event = self
            .inner
            .recv_event(timeout)
            .await
            .unwrap_or_else(|err| panic!("{}: receive failed: {err:#}", self.label));
        if let Event::Frame(frame) = &event {
            assert_server_frame(frame);
            self.seen.push(frame.clone());
        }
        event
    }

    /// The next frame, `None` on timeout; a close panics.
    pub async fn next_frame(&mut self, timeout: Duration) -> Option<Value> {
        match self.next_event(timeout).await {
            Event::Frame(frame) => Some(frame),
            Event::Timeout => None,
            Event::Closed(code) => panic!(
                "{}: socket closed unexpectedly (code {code:?}); last frames:\n{}",
                self.label,
                self.recent()
            ),
        }
    }

    /// The first frame within `timeout` for which `matches` holds, skipping
    /// (but recording) others; panics with `what` on timeout or close.
    pub async fn expect_within(
        &mut self,
        timeout: Duration,
        what: &str,
        mut matches: impl FnMut(&Value) -> bool,
    ) -> Value {
        if let Some(pos) = self.backlog.iter().position(&mut matches) {
            return self.backlog.remove(pos).expect("position is in range");
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_event(left).await {
                Event::Frame(frame) if matches(&frame) => return frame,
                Event::Frame(frame) => self.backlog.push_back(frame),
                Event::Timeout => panic!(
                    "{}: no {what} within {timeout:?}; last frames:\n{}",
                    self.label,
                    self.recent()
                ),
                Event::Closed(code) => panic!(
                    "{}: socket closed (code {code:?}) while waiting for {what}; last frames:\n{}",
                    self.label,
                    self.recent()
                ),
            }
        }
    }

    /// [`TestSocket::expect_within`] with the default [`WAIT`].
    pub async fn expect(&mut self, what: &str, matches: impl FnMut(&Value) -> bool) -> Value {
        self.expect_within(WAIT, what, matches).await
    }

    /// The first frame of type `ty`.
    pub async fn expect_type(&mut self, ty: &str) -> Value {
        self.expect(&format!("`{ty}` frame"), |f| is_type(f, ty))
            .await
    }

    /// The first frame of type `ty` about `msg_id`.
    pub async fn expect_about(&mut self, ty: &str, msg_id: &str) -> Value {
        self.expect(&format!("`{ty}` for {msg_id}"), |f| {
            super::is_about(f, ty, msg_id)
        })
        .await
    }

    /// Listen for `window`, then panic if any frame received over the
    /// socket's whole life matches `matches`.
    pub async fn assert_never(
        &mut self,
        window: Duration,
        what: &str,
        mut matches: impl FnMut(&Value) -> bool,
    ) {
        let deadline = Instant::now() + window;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            match self.next_event(left).await {
                Event::Frame(_) => {}
                Event::Timeout | Event::Closed(_) => break,
            }
        }
        let hits: Vec<&Value> = self.seen.iter().filter(|f| matches(f)).collect();
        assert!(
            hits.is_empty(),
            "{}: must never receive {what}, but got:\n{}",
            self.label,
            hits.iter()
                .map(|f| format!("  {f}"))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }

    /// Wait for the server to close the socket; the close code.
    pub async fn expect_closed(&mut self, timeout: Duration) -> Option<u16> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_event(left).await {
                Event::Closed(code) => return code,
                Event::Frame(_) => {}
                Event::Timeout => panic!(
                    "{}: the server did not close the socket within {timeout:?}; last frames:\n{}",
                    self.label,
                    self.recent()
                ),
            }
        }
    }

    /// `ping`, then wait for the `pong`.
    pub async fn ping(&mut self) {
        self.send(client::ping()).await;
        self.expect_type("pong").await;
    }

    /// Send a `send` frame and return its `ack`; an `error` about it panics.
    pub async fn send_ok(&mut self, frame: Value) -> Value {
        let cid = str_of(&frame, "client_msg_id").to_owned();
        self.send(frame).await;
        let answer = self
            .expect(&format!("ack or error for {cid}"), |f| answers(f, &cid))
            .await;
        assert!(
            is_type(&answer, "ack"),
            "{}: send {cid} must be acked, got {answer}",
            self.label
        );
        answer
    }

    /// Send a frame (schema-checked) and return the `error` answering it,
    /// recognised by `ref == reference` or, without a reference, as the next
    /// `error` frame.
    pub async fn send_expect_error(&mut self, frame: Value, reference: Option<&str>) -> Value {
        self.send(frame).await;
        self.expect_error(reference).await
    }

    /// The next `error` frame (with `ref == reference` if given); an `ack`
    /// for `reference` instead panics.
    pub async fn expect_error(&mut self, reference: Option<&str>) -> Value {
        let answer = match reference {
            Some(reference) => {
                self.expect(&format!("error for {reference}"), |f| answers(f, reference))
                    .await
            }
            None => self.expect_type("error").await,
        };
        assert!(
            is_type(&answer, "error"),
            "{}: expected an error for {reference:?}, got {answer}",
            self.label
        );
        answer
    }

    /// `sync` after `after`: the cursor events up to `synced`, and its cursor.
    pub async fn sync(&mut self, after: u64) -> Synced {
        let from = self.seen.len();
        self.send(client::sync(after)).await;
        let synced = self.expect_type("synced").await;
        let events = self.seen[from..self.seen.len() - 1]
            .iter()
            .filter(|f| f.get("cursor").is_some())
            .cloned()
            .collect();
        Synced {
            events,
            cursor: u64_of(&synced, "cursor"),
        }
    }

    /// Typing indicator frame for `conversation_id`.
    pub async fn typing(&mut self, conversation_id: &str, is_typing: bool) {
        self.send(json!({
            "type": "typing",
            "conversation_id": conversation_id,
            "is_typing": is_typing,
        }))
        .await;
    }

    /// Close normally.
    pub async fn close(self) {
        let label = self.label;
        self.inner
            .close()
            .await
            .unwrap_or_else(|err| panic!("{label}: close failed: {err:#}"));
    }

    /// The last frames received, one a line, for panic messages.
    fn recent(&self) -> String {
        let start = self.seen.len().saturating_sub(15);
        self.seen[start..]
            .iter()
            .map(|f| format!("  {f}"))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// Whether `frame` is the `ack` or `error` answering `reference`.
fn answers(frame: &Value, reference: &str) -> bool {
    (is_type(frame, "ack") && frame.get("client_msg_id").and_then(Value::as_str) == Some(reference))
        || (is_type(frame, "error") && frame.get("ref").and_then(Value::as_str) == Some(reference))
}
