//! Push without content (PROTOCOL 9), against a webhook receiver inside the
//! test: a minimal HTTP/1.1 server that records every request and answers
//! `500` to the first few when asked to.

mod common;

use std::time::Duration;

use common::media::blob_client;
use common::push::{send_text, Hook, Request};
use common::schema::assert_document;
use common::stories::{expect_status, post_story, reply};
use common::{now_ms, random_hex, register_user, str_of, Server, TestSocket, TestUser};
use ring::hmac;
use serde_json::Value;

/// The webhook secret the servers here are given (by environment).
const SECRET: &str = "push-secret-5f0c2d9e7a";

/// How long no push must arrive when none is expected (one arrives in
/// milliseconds).
const QUIET: Duration = Duration::from_secs(1);

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
