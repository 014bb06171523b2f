//! View-once over real sockets: the race between two devices of the
//! recipient, the burn on every device, per-member views in groups, and
//! `burn_after_view_seconds` on timed messages.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::socket::{QUIET, WAIT};
use common::{i64_of, is_type, new_cid, now_ms, register_user, str_of, Server, TestSocket};
use serde_json::{json, Value};

fn once_text(cid: &str, to: (&str, &str), body: &str) -> Value {
    let mut f = json!({
        "type": "send",
        "client_msg_id": cid,
        "body": body,
        "view_policy": "once",
        "ttl_seconds": 600,
    });
    f[to.0] = Value::from(to.1);
    f
}

fn view(msg_id: &str) -> Value {
    json!({ "type": "view", "msg_id": msg_id })
}

/// Every frame of type `ty` this socket has received, reading on until there
/// are `want` of them (or `limit` passes).
async fn collect(sock: &mut TestSocket, ty: &str, want: usize, limit: Duration) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let have: Vec<Value> = sock
            .seen()
            .iter()
            .filter(|f| is_type(f, ty))
            .cloned()
            .collect();
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if have.len() >= want || left.is_zero() {
            return have;
        }
        if sock.next_frame(left).await.is_none() {
            return sock
                .seen()
                .iter()
                .filter(|f| is_type(f, ty))
                .cloned()
                .collect();
        }
    }
}

/// 200 view-once messages; for each, both of the recipient's devices send
/// `view` at the same instant. Exactly one wins each race, and every one of
/// the four devices receives exactly one `burned` per message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_devices_race_and_exactly_one_wins_every_time() {
    const N: usize = 200;
    let server = Server::start(&[]).await;
    let http = server.http();
    let alice = register_user(&http, "alice").await;
    let bob = register_user(&http, "bob").await;
    let (a1s, a2s) = (alice.login(&http).await, alice.login(&http).await);
    let (b1s, b2s) = (bob.login(&http).await, bob.login(&http).await);
    let mut a1 = TestSocket::connect(&server, &a1s, "alice-1").await;
    let mut a2 = TestSocket::connect(&server, &a2s, "alice-2").await;
    let mut b1 = TestSocket::connect(&server, &b1s, "bob-1").await;
    let mut b2 = TestSocket::connect(&server, &b2s, "bob-2").await;

    let mut ids = Vec::new();
    for i in 0..N {
        let ack = a1
            .send_ok(once_text(
                &new_cid("once"),
                ("to", &bob.user_id),
                &format!("secret {i}"),
            ))
            .await;
        ids.push(str_of(&ack, "msg_id").to_owned());
    }
    // The pushed `message` of a view-once message carries no content.
    let pushed = collect(&mut b1, "message", N, WAIT * 4).await;
    assert_eq!(pushed.len(), N, "bob-1 gets every view-once message");
    for m in &pushed {
        assert_eq!(str_of(m, "view_policy"), "once");
        assert!(
            m.get("body").is_none() && m.get("media").is_none(),
            "no content pushed: {m}"
        );
        assert_eq!(m["has_media"], false);
    }

    for id in &ids {
        let (r1, r2) = tokio::join!(b1.send(view(id)), b2.send(view(id)));
        let _ = (r1, r2);
    }
    let res1 = collect(&mut b1, "view_result", N, WAIT * 6).await;
    let res2 = collect(&mut b2, "view_result", N, WAIT * 6).await;
    assert_eq!((res1.len(), res2.len()), (N, N), "every view is answered");
    let mut granted: HashMap<String, usize> = HashMap::new();
    for r in res1.iter().chain(res2.iter()) {
        let id = str_of(r, "msg_id").to_owned();
        match str_of(r, "result") {
            "granted" => {
                *granted.entry(id.clone()).or_default() += 1;
                let i = ids
                    .iter()
                    .position(|x| *x == id)
                    .expect("a message we sent");
                assert_eq!(
                    str_of(r, "body"),
                    format!("secret {i}"),
                    "the winner gets the content"
                );
            }
            "burned" => assert!(r.get("body").is_none(), "a loser gets no content: {r}"),
            other => panic!("unexpected result {other}"),
        }
    }
    for id in &ids {
        assert_eq!(granted.get(id), Some(&1), "exactly one device wins {id}");
    }
    for sock in [&mut a1, &mut a2, &mut b1, &mut b2] {
        let burned = collect(sock, "burned", N, WAIT * 4).await;
        let mut per: HashMap<String, usize> = HashMap::new();
        for b in &burned {
            assert_eq!(str_of(b, "reason"), "viewed");
            *per.entry(str_of(b, "msg_id").to_owned()).or_default() += 1;
        }
        assert_eq!(per.len(), N, "{}: a burn for every message", sock.label());
        assert!(
            per.values().all(|n| *n == 1),
            "{}: exactly one burn per message",
            sock.label()
        );
        sock.assert_never(QUIET, "a second burn", |_| false).await;
        let all = sock.seen().iter().filter(|f| is_type(f, "burned")).count();
        assert_eq!(all, N, "{}: no burn beyond one per message", sock.label());
    }

    // A later view, and a sync from the start, both say burned.
    b1.send(view(&ids[0])).await;
    let late = b1.expect_type("view_result").await;
    assert_eq!(str_of(&late, "result"), "burned");
    let synced = b2.sync(0).await;
    assert_eq!(
        synced.about("message", &ids[0]).count(),
        0,
        "a burned once-message is not replayed"
    );
    let burns: Vec<_> = synced.about("burned", &ids[0]).collect();
    assert_eq!(burns.len(), 1, "sync says it burned, once");
    assert_eq!(str_of(burns[0], "reason"), "viewed");
}

/// In a group each member may open a view-once message once; the sender's
/// devices learn it burned when everyone has.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_members_each_view_once() {
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
    let conv = http
        .create_group(&a, &[&bob.user_id, &carol.user_id], Some("trio"))
        .await
        .expect("group");
    let mut a1 = TestSocket::connect(&server, &a, "alice-1").await;
    let mut b1 = TestSocket::connect(&server, &b, "bob-1").await;
    let mut c1 = TestSocket::connect(&server, &c, "carol-1").await;
    let ack = a1
        .send_ok(once_text(
            &new_cid("g"),
            ("conversation_id", &conv),
            "for each of you",
        ))
        .await;
    let id = str_of(&ack, "msg_id").to_owned();

    a1.send(view(&id)).await;
    let own = a1.expect_type("error").await;
    assert_eq!(
        str_of(&own, "code"),
        "forbidden",
        "the sender cannot open it"
    );

    b1.send(view(&id)).await;
    assert_eq!(
        str_of(&b1.expect_type("view_result").await, "result"),
        "granted"
    );
    b1.expect_about("burned", &id).await;
    a1.assert_never(QUIET, "a burn before everyone viewed", |f| {
        is_type(f, "burned")
    })
    .await;
    b1.send(view(&id)).await;
    assert_eq!(
        str_of(&b1.expect_type("view_result").await, "result"),
        "burned",
        "bob's second view"
    );

    c1.send(view(&id)).await;
    let r = c1.expect_type("view_result").await;
    assert_eq!(str_of(&r, "result"), "granted", "carol still may open it");
    assert_eq!(str_of(&r, "body"), "for each of you");
    let burned = a1.expect_about("burned", &id).await;
    assert_eq!(str_of(&burned, "reason"), "viewed");
}

/// `burn_after_view_seconds` pulls `expires_at` forward on the first view,
/// and the message then burns on every device at the new time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn burn_after_view_pulls_expiry_forward() {
    let server = Server::start(&[]).await;
    let http = server.http();
    let alice = register_user(&http, "alice").await;
    let bob = register_user(&http, "bob").await;
    let (a, b) = (alice.login(&http).await, bob.login(&http).await);
    let mut a1 = TestSocket::connect(&server, &a, "alice-1").await;
    let mut b1 = TestSocket::connect(&server, &b, "bob-1").await;
    let mut frame = json!({
        "type": "send", "client_msg_id": new_cid("bav"), "to": bob.user_id, "body": "read me fast",
        "view_policy": "timed", "ttl_seconds": 600, "burn_after_view_seconds": 2,
    });
    let ack = a1.send_ok(frame.take()).await;
    let id = str_of(&ack, "msg_id").to_owned();
    let original = i64_of(&ack, "expires_at");
    let pushed = b1.expect_about("message", &id).await;
    assert_eq!(
        str_of(&pushed, "body"),
        "read me fast",
        "timed content is pushed"
    );

    let before = now_ms();
    b1.send(view(&id)).await;
    let r = b1.expect_type("view_result").await;
    assert_eq!(str_of(&r, "result"), "granted");
    let pulled = i64_of(&r, "expires_at");
    assert!(
        pulled < original,
        "expires_at moved forward: {pulled} < {original}"
    );
    assert!(
        (before + 1_900..=now_ms() + 2_100).contains(&pulled),
        "about two seconds after the view"
    );

    for sock in [&mut a1, &mut b1] {
        let burned = sock
            .expect_within(Duration::from_secs(5), "the pulled-forward burn", |f| {
                is_type(f, "burned") && f["msg_id"] == id.as_str()
            })
            .await;
        assert_eq!(str_of(&burned, "reason"), "expired");
        let lag = now_ms() - pulled;
        assert!(
            lag < 150,
            "{}: burned {lag} ms after the new expires_at",
            sock.label()
        );
    }
    b1.send(view(&id)).await;
    assert_eq!(
        str_of(&b1.expect_type("view_result").await, "result"),
        "burned"
    );
}

/// Two members of a group open the same view-once messages at the same
/// instant: both are granted, and every message then burns for the sender
/// too (the content is gone for good), exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_group_views_burn_the_content_for_everyone() {
    const N: usize = 20;
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
    let conv = http
        .create_group(&a, &[&bob.user_id, &carol.user_id], None)
        .await
        .expect("group");
    let mut a1 = TestSocket::connect(&server, &a, "alice-1").await;
    let mut b1 = TestSocket::connect(&server, &b, "bob-1").await;
    let mut c1 = TestSocket::connect(&server, &c, "carol-1").await;
    let mut ids = Vec::new();
    for i in 0..N {
        let ack = a1
            .send_ok(once_text(
                &new_cid("g"),
                ("conversation_id", &conv),
                &format!("g{i}"),
            ))
            .await;
        ids.push(str_of(&ack, "msg_id").to_owned());
    }
    for id in &ids {
        let _ = tokio::join!(b1.send(view(id)), c1.send(view(id)));
    }
    for sock in [&mut b1, &mut c1] {
        let results = collect(sock, "view_result", N, WAIT * 4).await;
        assert_eq!(results.len(), N);
        assert!(
            results.iter().all(|r| str_of(r, "result") == "granted"),
            "{}: each member opens each once",
            sock.label()
        );
    }
    let burns = collect(&mut a1, "burned", N, WAIT * 4).await;
    let mut per: HashMap<String, usize> = HashMap::new();
    for b in &burns {
        *per.entry(str_of(b, "msg_id").to_owned()).or_default() += 1;
    }
    a1.assert_never(QUIET, "a second burn", |_| false).await;
    for id in &ids {
        let n = a1
            .seen()
            .iter()
            .filter(|f| is_type(f, "burned") && f["msg_id"] == id.as_str())
            .count();
        assert_eq!(
            n, 1,
            "the sender learns {id} burned exactly once, when both viewed"
        );
    }
    let history = http.history(&a, &conv, 0, 100).await.expect("history");
    assert!(
        history.is_empty(),
        "no burned message is left in history: {}",
        history.len()
    );
}
