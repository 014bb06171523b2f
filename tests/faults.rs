//! Supervision under injected faults (the test-only `faults` feature,
//! which the test command enables): an actor that panics is restarted, its
//! devices carry on, its timers come back, and other actors never notice.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::socket::{QUIET, WAIT};
use common::{
    i64_of, is_about, is_type, new_cid, now_ms, register_user, str_of, Server, TestSocket,
};
use ephemera_load::client::{timed_text, Target};
use serde_json::Value;

async fn panic_actor(server: &Server, kind: &str, id: &str) -> u16 {
    server
        .admin_post(&format!("/admin/faults/{kind}/{id}/panic"))
        .await
}

/// Sends until acked, retrying `unavailable` with the same client_msg_id
/// (at-least-once from the client's side, deduplicated by the server).
async fn send_acked(sock: &mut TestSocket, frame: Value) -> Value {
    let cid = str_of(&frame, "client_msg_id").to_owned();
    for _ in 0..50 {
        sock.send(frame.clone()).await;
        let answer = sock
            .expect(&format!("ack or error for {cid}"), |f| {
                f.get("client_msg_id").or(f.get("ref")) == Some(&Value::from(cid.as_str()))
            })
            .await;
        if is_type(&answer, "ack") {
            return answer;
        }
        assert_eq!(
            str_of(&answer, "code"),
            "unavailable",
            "only unavailable may answer a send during a crash: {answer}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{cid} was never acked");
}

#[cfg_attr(
    not(feature = "faults"),
    ignore = "needs the faults feature (scripts/test.sh enables it)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_conversation_is_restarted_and_nothing_is_lost() {
    let server = Server::start(&[]).await;
    let http = server.http();
    let alice = register_user(&http, "alice").await;
    let bob = register_user(&http, "bob").await;
    let carol = register_user(&http, "carol").await;
    let (a, b, c) = (
        alice.login(&http).await,
        bob.login(&http).await,
        carol.login(&http).await,
    );
    let mut a1 = TestSocket::connect(&server, &a, "alice-1").await;
    let mut b1 = TestSocket::connect(&server, &b, "bob-1").await;
    let mut c1 = TestSocket::connect(&server, &c, "carol-1").await;

    let first = send_acked(
        &mut a1,
        timed_text(&new_cid("pre"), Target::User(&bob.user_id), "pre", 600),
    )
    .await;
    let conv = str_of(&first, "conversation_id").to_owned();
    let short = send_acked(
        &mut a1,
        timed_text(&new_cid("short"), Target::Conversation(&conv), "short", 3),
    )
    .await;
    let short_id = str_of(&short, "msg_id").to_owned();
    let other = send_acked(
        &mut a1,
        timed_text(
            &new_cid("other"),
            Target::User(&carol.user_id),
            "other",
            600,
        ),
    )
    .await;
    let other_conv = str_of(&other, "conversation_id").to_owned();

    assert_eq!(panic_actor(&server, "conversation", &conv).await, 202);
    // The other conversation never notices.
    for i in 0..5 {
        let ack = send_acked(
            &mut a1,
            timed_text(
                &new_cid("c"),
                Target::Conversation(&other_conv),
                &format!("c{i}"),
                600,
            ),
        )
        .await;
        c1.expect_about("message", str_of(&ack, "msg_id")).await;
    }
    // The crashed one is back: sends are acked (retrying any `unavailable`)
    // and delivered exactly once.
    let mut ids = vec![str_of(&first, "msg_id").to_owned()];
    for i in 0..20 {
        let ack = send_acked(
            &mut a1,
            timed_text(
                &new_cid("post"),
                Target::Conversation(&conv),
                &format!("p{i}"),
                600,
            ),
        )
        .await;
        ids.push(str_of(&ack, "msg_id").to_owned());
    }
    for id in &ids {
        b1.expect_about("message", id).await;
    }
    b1.assert_never(QUIET, "a message twice", |_| false).await;
    let mut seen: HashMap<String, usize> = HashMap::new();
    for f in b1.seen().iter().filter(|f| is_type(f, "message")) {
        *seen.entry(str_of(f, "msg_id").to_owned()).or_default() += 1;
    }
    assert!(
        seen.values().all(|n| *n == 1),
        "no message delivered twice: {seen:?}"
    );
    // Its timer came back with it.
    let expires_at = i64_of(&short, "expires_at");
    let wait = Duration::from_millis((expires_at - now_ms()).max(0) as u64) + WAIT;
    b1.expect_within(wait, "the burn after the crash", |f| {
        is_about(f, "burned", &short_id)
    })
    .await;
    let lag = now_ms() - expires_at;
    println!("burn lag after a conversation crash: {lag} ms");
    assert!(lag < 150, "burned {lag} ms after expires_at");
}

#[cfg_attr(
    not(feature = "faults"),
    ignore = "needs the faults feature (scripts/test.sh enables it)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_user_actor_is_replaced_and_its_devices_miss_nothing() {
    let server = Server::start(&[]).await;
    let http = server.http();
    let alice = register_user(&http, "alice").await;
    let bob = register_user(&http, "bob").await;
    let (a, b) = (alice.login(&http).await, bob.login(&http).await);
    let mut a1 = TestSocket::connect(&server, &a, "alice-1").await;
    let mut b1 = TestSocket::connect(&server, &b, "bob-1").await;
    let m = send_acked(
        &mut a1,
        timed_text(&new_cid("x"), Target::User(&bob.user_id), "before", 600),
    )
    .await;
    b1.expect_about("message", str_of(&m, "msg_id")).await;

    assert_eq!(panic_actor(&server, "user", &bob.user_id).await, 202);
    let mut ids = Vec::new();
    for i in 0..20 {
        let ack = send_acked(
            &mut a1,
            timed_text(
                &new_cid("y"),
                Target::User(&bob.user_id),
                &format!("n{i}"),
                600,
            ),
        )
        .await;
        ids.push(str_of(&ack, "msg_id").to_owned());
    }
    // Without reconnecting, bob's device gets every one, once.
    for id in &ids {
        b1.expect_about("message", id).await;
    }
    b1.assert_never(QUIET, "nothing else", |_| false).await;
    for id in &ids {
        let n = b1
            .seen()
            .iter()
            .filter(|f| is_about(f, "message", id))
            .count();
        assert_eq!(n, 1, "{id} delivered exactly once");
    }
    let text = server.metrics_text().await;
    assert!(
        text.lines().any(
            |l| l.starts_with("ephemera_actor_restarts_total{kind=\"user\"}") && !l.ends_with(" 0")
        ),
        "the restart is counted:\n{text}"
    );
}
