//! Crash safety: every acked message survives `kill -9`, expired ones are
//! not delivered after a restart, and expiry timers are re-armed.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use common::socket::WAIT;
use common::{
    i64_of, is_about, is_type, new_cid, now_ms, register_user, sleep_until_ms, str_of, Server,
    TestSocket,
};
use ephemera_load::client::{timed_text, Target};
use serde_json::Value;

/// 50 acked messages (half 3 s, half 600 s) to an offline recipient, kill -9
/// right after the last ack, restart after the short ones expired: every
/// long one is delivered, every short one only as `burned` expired.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acked_messages_survive_kill9_and_expired_ones_stay_dead() {
    const N: usize = 50;
    let mut server = Server::start(&[]).await;
    let http = server.http();
    let alice = register_user(&http, "alice").await;
    let bob = register_user(&http, "bob").await;
    let a1s = alice.login(&http).await;
    let mut a1 = TestSocket::connect(&server, &a1s, "alice-1").await;

    // Pipeline all sends, then collect the acks.
    let mut frames = Vec::new();
    for i in 0..N {
        let ttl = if i % 2 == 0 { 3 } else { 600 };
        let cid = new_cid(&format!("m{i}"));
        let body = format!("message {i} ttl {ttl}");
        a1.send(timed_text(&cid, Target::User(&bob.user_id), &body, ttl))
            .await;
        frames.push((cid, body, ttl));
    }
    let mut acks: HashMap<String, Value> = HashMap::new();
    while acks.len() < N {
        let frame = a1
            .expect_within(Duration::from_secs(30), "ack", |f| {
                is_type(f, "ack") || is_type(f, "error")
            })
            .await;
        assert!(is_type(&frame, "ack"), "every send must be acked: {frame}");
        acks.insert(str_of(&frame, "client_msg_id").to_owned(), frame);
    }
    server.kill9();

    let mut short_ids = HashSet::new();
    let mut long_bodies = HashMap::new();
    let mut last_short_expiry = 0;
    for (cid, body, ttl) in &frames {
        let ack = &acks[cid];
        let msg_id = str_of(ack, "msg_id").to_owned();
        if *ttl == 3 {
            last_short_expiry = last_short_expiry.max(i64_of(ack, "expires_at"));
            short_ids.insert(msg_id);
        } else {
            long_bodies.insert(msg_id, body.clone());
        }
    }
    assert_eq!(short_ids.len() + long_bodies.len(), N, "distinct msg_ids");
    drop(a1);

    sleep_until_ms(last_short_expiry + 500).await;
    server.restart().await;
    let http = server.http();
    let b1s = bob.login(&http).await;
    let mut b1 = TestSocket::connect(&server, &b1s, "bob-1").await;
    let synced = b1.sync(0).await;

    let mut delivered = HashMap::new();
    for frame in synced.events.iter().filter(|f| is_type(f, "message")) {
        let id = str_of(frame, "msg_id").to_owned();
        assert!(
            !short_ids.contains(&id),
            "a message that expired during the outage was delivered: {frame}"
        );
        let previous = delivered.insert(id, str_of(frame, "body").to_owned());
        assert!(previous.is_none(), "delivered twice: {frame}");
    }
    let missing: Vec<_> = long_bodies
        .keys()
        .filter(|id| !delivered.contains_key(*id))
        .collect();
    assert!(
        missing.is_empty(),
        "acked messages lost by kill -9: {missing:?}"
    );
    assert_eq!(
        delivered, long_bodies,
        "exactly the long-lived messages, bodies intact"
    );

    let burned: HashSet<String> = synced
        .events
        .iter()
        .filter(|f| is_type(f, "burned"))
        .map(|f| {
            assert_eq!(str_of(f, "reason"), "expired", "burn reason: {f}");
            str_of(f, "msg_id").to_owned()
        })
        .collect();
    assert_eq!(
        burned, short_ids,
        "every short message is reported burned (expired)"
    );
    b1.assert_never(
        Duration::from_millis(300),
        "a short message as `message`",
        |f| is_type(f, "message") && short_ids.contains(str_of(f, "msg_id")),
    )
    .await;
}

/// A 4-second message sent before kill -9: after an immediate restart, the
/// recipient's online device still gets `burned` expired on time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_timer_is_rearmed_after_restart() {
    let mut server = Server::start(&[]).await;
    let http = server.http();
    let alice = register_user(&http, "alice").await;
    let bob = register_user(&http, "bob").await;
    let a1s = alice.login(&http).await;
    let mut a1 = TestSocket::connect(&server, &a1s, "alice-1").await;
    let ack = a1
        .send_ok(timed_text(
            &new_cid("timer"),
            Target::User(&bob.user_id),
            "tick",
            4,
        ))
        .await;
    let msg_id = str_of(&ack, "msg_id").to_owned();
    let expires_at = i64_of(&ack, "expires_at");
    server.kill9();
    drop(a1);

    server.restart().await;
    let http = server.http();
    let b1s = bob.login(&http).await;
    let mut b1 = TestSocket::connect(&server, &b1s, "bob-1").await;
    let synced = b1.sync(0).await;
    assert!(
        now_ms() < expires_at,
        "restart and sync took past expires_at; the timer cannot be observed"
    );
    let copies: Vec<_> = synced.about("message", &msg_id).collect();
    assert_eq!(
        copies.len(),
        1,
        "the live message survives the restart: {:?}",
        synced.events
    );
    assert_eq!(str_of(copies[0], "body"), "tick", "body");

    let wait = Duration::from_millis((expires_at - now_ms()).max(0) as u64) + WAIT;
    let burned = b1
        .expect_within(wait, "burned (expired) after restart", |f| {
            is_about(f, "burned", &msg_id)
        })
        .await;
    let lag = now_ms() - expires_at;
    println!("burn lag after restart: {lag} ms after expires_at");
    assert_eq!(str_of(&burned, "reason"), "expired", "burn reason");
    assert!(
        (-50..=150).contains(&lag),
        "a re-armed timer must burn within 150 ms of expires_at, lag was {lag} ms"
    );
}
