//! Push without content (PROTOCOL 9), against a webhook receiver inside the
//! test: a minimal HTTP/1.1 server that records every request and answers
//! `500` to the first few when asked to.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::media::blob_client;
use common::schema::assert_document;
use common::stories::{expect_status, post_story, reply};
use common::{new_cid, now_ms, random_hex, register_user, str_of, Server, TestSocket, TestUser};
use ephemera_load::client::{timed_text, Target};
use ring::hmac;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// The webhook secret the servers here are given (by environment).
const SECRET: &str = "push-secret-5f0c2d9e7a";

/// How long a push may take to arrive (retries included).
const ARRIVAL: Duration = Duration::from_secs(10);

/// How long no push must arrive when none is expected (one arrives in
/// milliseconds).
const QUIET: Duration = Duration::from_secs(1);

/// One request the receiver got.
struct Request {
    /// The request line and headers, as sent.
    head: String,
    /// The body, as sent.
    body: Vec<u8>,
}

impl Request {
    /// The value of header `name` (case-insensitive).
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }

    /// The body as JSON.
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("a push body is JSON")
    }
}

/// The receiver: its URL, what it got, and how many requests it answers
/// `500` before it answers `200`.
struct Hook {
    url: String,
    got: mpsc::UnboundedReceiver<Request>,
}

impl Hook {
    /// A receiver on a loopback port that refuses its first `failures`
    /// requests with `500`.
    async fn start(failures: usize) -> Hook {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let (tx, got) = mpsc::unbounded_channel();
        let left = Arc::new(AtomicUsize::new(failures));
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let (tx, left) = (tx.clone(), Arc::clone(&left));
                tokio::spawn(async move {
                    let (read, mut write) = socket.into_split();
                    let mut read = BufReader::new(read);
                    // Requests on one connection, until it closes.
                    loop {
                        let mut head = String::new();
                        loop {
                            let mut line = String::new();
                            if read.read_line(&mut line).await.unwrap_or(0) == 0 {
                                return;
                            }
                            if line == "\r\n" {
                                break;
                            }
                            head.push_str(&line);
                        }
                        let mut request = Request { head, body: vec![] };
                        let length: usize = request
                            .header("content-length")
                            .map_or(0, |v| v.parse().expect("a numeric Content-Length"));
                        request.body = vec![0; length];
                        if read.read_exact(&mut request.body).await.is_err() {
                            return;
                        }
                        let fail = left
                            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                            .is_ok();
                        let status = if fail {
                            "500 Internal Server Error"
                        } else {
                            "200 OK"
                        };
                        let _ = tx.send(request);
                        let answer = format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\n\r\n");
                        if write.write_all(answer.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Hook { url, got }
    }

    /// The next request, within [`ARRIVAL`].
    async fn next(&mut self) -> Request {
        tokio::time::timeout(ARRIVAL, self.got.recv())
            .await
            .expect("a push within the time allowed")
            .expect("the receiver runs")
    }

    /// Panics if a request arrives within `quiet`.
    async fn assert_none(&mut self, quiet: Duration) {
        if let Ok(Some(r)) = tokio::time::timeout(quiet, self.got.recv()).await {
            panic!("no push expected, got {}", String::from_utf8_lossy(&r.body));
        }
    }
}

/// A timed text from `socket` to `to`: its ack.
async fn send_text(socket: &mut TestSocket, to: &TestUser, body: &str) -> Value {
    let frame = timed_text(&new_cid("push"), Target::User(&to.user_id), body, 600);
    socket.send_ok(frame).await
}

/// A server pushing to `hook`, the secret given by environment.
async fn start(hook: &Hook) -> Server {
    Server::start_with_env(
        &["--push-webhook-url", &hook.url],
        &[("EPHEMERA_PUSH_WEBHOOK_SECRET", SECRET)],
    )
    .await
}

/// Who a push is for and about: kind, user, sender's id and username,
/// conversation.
type Expected<'a> = (&'a str, &'a str, (&'a str, &'a str), &'a str);

/// A server pushing to a receiver failing its first `failures` requests,
/// with Alice online (socket `a`) and Bob registered, offline.
struct Scene {
    hook: Hook,
    server: Server,
    alice: TestUser,
    bob: TestUser,
    a: TestSocket,
}

impl Scene {
    async fn start(failures: usize) -> Scene {
        let hook = Hook::start(failures).await;
        let server = start(&hook).await;
        let http = server.http();
        let alice = register_user(&http, "alice").await;
        let bob = register_user(&http, "bob").await;
        let a = TestSocket::connect(&server, &alice.login(&http).await, "alice").await;
        Scene {
            hook,
            server,
            alice,
            bob,
            a,
        }
    }
}

/// Panics unless `request` is a push POSTed to the receiver, signed, and
/// valid against `schema/push.json`; the push and its field names, sorted.
fn signed_push(request: &Request) -> (Value, Vec<String>) {
    assert!(
        request.head.starts_with("POST /hook HTTP/1.1\r\n"),
        "{}",
        request.head
    );
    let key = hmac::Key::new(hmac::HMAC_SHA256, SECRET.as_bytes());
    let tag = hmac::sign(&key, &request.body);
    let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(
        request.header("x-ephemera-signature"),
        Some(format!("sha256={hex}").as_str()),
        "the signature is the HMAC-SHA256 of the exact body"
    );
    let push = request.json();
    assert_document("push.json", &push);
    let mut keys: Vec<String> = push.as_object().unwrap().keys().cloned().collect();
    keys.sort_unstable();
    (push, keys)
}

/// Panics unless `request` is a signed push with exactly the documented
/// fields and the `expected` values; its `at`.
fn assert_push(request: &Request, (kind, user, from, conversation): Expected<'_>) -> i64 {
    let (push, keys) = signed_push(request);
    assert_eq!(
        keys,
        [
            "at",
            "conversation_id",
            "from",
            "from_username",
            "kind",
            "user_id"
        ],
        "exactly the documented fields: {push}"
    );
    assert_eq!(str_of(&push, "kind"), kind);
    assert_eq!(str_of(&push, "user_id"), user);
    assert_eq!(str_of(&push, "from"), from.0);
    assert_eq!(str_of(&push, "from_username"), from.1);
    assert_eq!(str_of(&push, "conversation_id"), conversation);
    push["at"].as_i64().expect("at is an integer")
}

/// A message to a user with no device online is pushed: the documented
/// fields only, signed, without the body anywhere in the request; once the
/// user is online, messages are not pushed; neither the body nor the
/// secret reaches the server's logs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_to_an_offline_user_is_pushed_signed_and_without_content() {
    let Scene {
        mut hook,
        server,
        alice,
        bob,
        mut a,
    } = Scene::start(0).await;

    let canary = format!("canary-{}", random_hex(8));
    let before = now_ms();
    let ack = send_text(&mut a, &bob, &canary).await;
    let request = hook.next().await;
    let conversation = str_of(&ack, "conversation_id");
    let at = assert_push(
        &request,
        (
            "message",
            &bob.user_id,
            (alice.user_id.as_str(), alice.username.as_str()),
            conversation,
        ),
    );
    assert!(
        before - 1_000 <= at && at <= now_ms(),
        "at is the message's sent_at: {at}"
    );
    let whole = format!("{}{}", request.head, String::from_utf8_lossy(&request.body));
    assert!(!whole.contains(&canary), "no content in a push: {whole}");
    // The sender, offline on no other device, gets no push of their own.
    hook.assert_none(QUIET).await;

    // Online: delivered to the socket, not pushed.
    let mut b = TestSocket::connect(&server, &bob.login(&server.http()).await, "bob").await;
    let ack = send_text(&mut a, &bob, &canary).await;
    b.expect_about("message", str_of(&ack, "msg_id")).await;
    hook.assert_none(QUIET).await;

    let logs = server.logs();
    assert!(!logs.contains(&canary), "the body is not in the logs");
    assert!(!logs.contains(SECRET), "the secret is not in the logs");
}

/// A webhook that fails the first two attempts still gets the push, on
/// the third, and the retries are counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_webhook_gets_the_push_on_a_retry() {
    let Scene {
        mut hook,
        server,
        alice,
        bob,
        mut a,
    } = Scene::start(2).await;
    let ack = send_text(&mut a, &bob, "hi").await;
    let attempts = [hook.next().await, hook.next().await, hook.next().await];
    let from = (alice.user_id.as_str(), alice.username.as_str());
    let conversation = str_of(&ack, "conversation_id");
    for r in &attempts {
        assert_push(r, ("message", &bob.user_id, from, conversation));
        assert_eq!(r.body, attempts[0].body, "a retry posts the same body");
    }
    hook.assert_none(QUIET).await;
    let retried = r#"ephemera_pushes_retried_total{kind="message",outcome="status"}"#;
    assert_eq!(server.metric(retried).await, 2.0);
    let sent = r#"ephemera_pushes_sent_total{kind="message",outcome="ok"}"#;
    assert_eq!(server.metric(sent).await, 1.0);
    let logs = server.logs();
    assert!(
        !logs.contains(&hook.url),
        "the webhook URL is not in the logs"
    );
    assert!(logs.contains("push refused"), "the failures are logged");
}

/// A reply to a story of an author with no device online is pushed as
/// `story_reply`, without the reply's text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_story_reply_to_an_offline_author_is_pushed_as_story_reply() {
    let mut hook = Hook::start(0).await;
    let server = start(&hook).await;
    let http = server.http();
    let author = register_user(&http, "author").await;
    let viewer = register_user(&http, "viewer").await;
    let a = author.login(&http).await;
    let v = viewer.login(&http).await;
    let story = post_story(&http, &blob_client(), &a, "everyone", Some(600), None).await;
    let canary = format!("canary-{}", random_hex(8));
    let replied = expect_status(
        reply(&http, &v, &story.story_id, &canary).await,
        201,
        "reply",
    );
    let request = hook.next().await;
    let from = (viewer.user_id.as_str(), viewer.username.as_str());
    let conversation = str_of(&replied, "conversation_id");
    assert_push(
        &request,
        ("story_reply", &author.user_id, from, conversation),
    );
    assert!(!String::from_utf8_lossy(&request.body).contains(&canary));
    hook.assert_none(QUIET).await;
    assert!(!server.logs().contains(&canary));
}

/// A call to a user with no device online is pushed as `call`, with no
/// conversation and none of the offer's SDP; a callee online is rung, not
/// pushed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_to_an_offline_user_is_pushed_as_call_without_the_sdp() {
    let Scene {
        mut hook,
        server,
        alice,
        bob,
        mut a,
    } = Scene::start(0).await;
    let sdp = format!("v=0 canary-sdp-{}", random_hex(8));
    let before = now_ms();
    let offer = serde_json::json!({
        "type": "call", "call_id": "push-call", "to": bob.user_id,
        "action": "offer", "data": sdp,
    });
    a.send(offer).await;
    let request = hook.next().await;
    assert!(!String::from_utf8_lossy(&request.body).contains(&sdp));
    assert!(!request.head.contains(&sdp));
    let (push, keys) = signed_push(&request);
    assert_eq!(
        keys,
        ["at", "from", "from_username", "kind", "user_id"],
        "a call has no conversation: {push}"
    );
    assert_eq!(str_of(&push, "kind"), "call");
    assert_eq!(str_of(&push, "user_id"), bob.user_id);
    assert_eq!(str_of(&push, "from"), alice.user_id);
    assert_eq!(str_of(&push, "from_username"), alice.username);
    assert!(push["at"].as_i64().unwrap() >= before);

    // Bob online: his device rings, nothing is pushed.
    let mut b = TestSocket::connect(&server, &bob.login(&server.http()).await, "bob").await;
    b.expect("the first call ringing", |f| {
        f["type"] == "call" && f["call_id"] == "push-call"
    })
    .await;
    b.ping().await;
    let offer = serde_json::json!({
        "type": "call", "call_id": "push-call-2", "to": bob.user_id,
        "action": "offer", "data": "v=0",
    });
    a.send(offer).await;
    b.expect("the second call ringing", |f| {
        f["type"] == "call" && f["call_id"] == "push-call-2"
    })
    .await;
    hook.assert_none(QUIET).await;
}
