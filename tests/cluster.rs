//! Many nodes on one Redis (issue 14): membership with heartbeats and
//! leases, a node id held by one process at a time, and accounts and
//! logins shared by every node. Real `redis-server`, real nodes, real
//! sockets.

mod common;

use std::time::{Duration, Instant};

use common::cluster::{await_live, cluster_view, start_node, Redis, LEASE_MS};
use common::{register_user, TestSocket};

#[tokio::test]
async fn a_killed_node_drops_out_of_the_live_set_within_seconds_and_rejoins() {
    let redis = Redis::start().await;
    let a = start_node(&redis, "node-a", &[]).await;
    let b = start_node(&redis, "node-b", &[]).await;
    let mut c = start_node(&redis, "node-c", &[]).await;
    let all = ["node-a", "node-b", "node-c"];
    await_live(&a, &all, Duration::from_secs(5)).await;
    await_live(&b, &all, Duration::from_secs(5)).await;
    let view = cluster_view(&c).await;
    assert_eq!(view["mode"], "cluster");
    assert_eq!(view["node_id"], "node-c");
    assert_eq!(view["lease_held"], true);
    let first_epoch = view["epoch"].as_u64().expect("epoch");

    c.kill9();
    let took = await_live(&a, &["node-a", "node-b"], Duration::from_secs(10)).await;
    await_live(&b, &["node-a", "node-b"], Duration::from_secs(2)).await;
    assert!(
        took <= Duration::from_millis(LEASE_MS * 2 + 1_000),
        "a dead node must leave the live set within about a lease, took {took:?}"
    );
    let view = cluster_view(&b).await;
    let gone = view["members"]
        .as_array()
        .and_then(|m| m.iter().find(|m| m["node_id"] == "node-c"))
        .unwrap_or_else(|| panic!("node-c stays registered, shown down: {view}"));
    assert_eq!(gone["live"], false);
    assert!(gone["last_heartbeat_at"].as_u64().is_some(), "{gone}");
    assert_eq!(
        a.metric("ephemera_cluster_members{state=\"down\"}").await,
        1.0
    );

    // The same data directory and node id come back: a new epoch.
    c.restart().await;
    await_live(&a, &all, Duration::from_secs(10)).await;
    let view = cluster_view(&c).await;
    assert!(
        view["epoch"].as_u64().expect("epoch") > first_epoch,
        "a node that takes its id again gets a new epoch: {view}"
    );
    assert_eq!(c.metric("ephemera_cluster_lease_held").await, 1.0);
}

/// Runs `ephemera serve` as node `node_id` on `dir` until it exits (for a
/// start that must be refused).
fn serve_once(redis: &Redis, node_id: &str, dir: &std::path::Path) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_ephemera"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .arg("--data-dir")
        .arg(dir)
        .args(["--cluster-lease-ms", &LEASE_MS.to_string()])
        .env("EPHEMERA_REDIS_URL", redis.url())
        .env("EPHEMERA_NODE_ID", node_id)
        .env("EPHEMERA_ADMIN_TOKEN", "x")
        .output()
        .expect("running ephemera serve")
}

#[tokio::test]
async fn a_second_process_cannot_take_a_live_node_id() {
    let redis = Redis::start().await;
    let a = start_node(&redis, "node-a", &[]).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let started = Instant::now();
    let out = serve_once(&redis, "node-a", dir.path());
    assert!(
        !out.status.success(),
        "a twin of a live node must not start"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("held by another live process"),
        "the refusal says why: {stderr}"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(LEASE_MS),
        "it waited for the lease to lapse before giving up"
    );
    // The live node never lost its lease.
    assert_eq!(cluster_view(&a).await["lease_held"], true);
    assert_eq!(a.metric("ephemera_cluster_lease_held").await, 1.0);
}

#[tokio::test]
async fn accounts_and_logins_are_shared_and_a_logout_revokes_everywhere_at_once() {
    let redis = Redis::start().await;
    let a = start_node(&redis, "node-a", &[]).await;
    let b = start_node(&redis, "node-b", &[]).await;
    let c = start_node(&redis, "node-c", &[]).await;

    // Registered on one node, logged in on another, used on a third.
    let alice = register_user(&a.http(), "alice").await;
    let taken = c
        .http()
        .raw(
            reqwest::Method::POST,
            "/api/v1/accounts",
            None,
            Some(
                &serde_json::json!({"username": alice.username, "password": common::PASSWORD})
                    .to_string(),
            ),
        )
        .await
        .expect("registering again");
    assert_eq!(taken.status, 409, "a username is taken cluster-wide");
    let device = alice.login(&b.http()).await;
    let mut on_c = TestSocket::connect(&c, &device, "alice@c").await;
    on_c.ping().await;
    let mut on_a = TestSocket::connect(&a, &device, "alice@a").await;
    on_a.ping().await;
    let other = alice.login(&c.http()).await;
    let mut other_on_a = TestSocket::connect(&a, &other, "alice2@a").await;
    other_on_a.ping().await;
    for node in [&a, &b, &c] {
        let r = node
            .http()
            .raw(
                reqwest::Method::GET,
                "/api/v1/conversations",
                Some(&device.token),
                None,
            )
            .await
            .expect("listing");
        assert_eq!(r.status, 200, "a token works on every node");
    }

    // Logged out through node b: the sockets on a and c close now.
    b.http().logout(&device).await.expect("logout");
    let started = Instant::now();
    assert_eq!(on_c.expect_closed(Duration::from_secs(3)).await, Some(4401));
    assert_eq!(on_a.expect_closed(Duration::from_secs(3)).await, Some(4401));
    assert!(started.elapsed() < Duration::from_secs(3));
    for node in [&a, &b, &c] {
        let r = node
            .http()
            .raw(
                reqwest::Method::GET,
                "/api/v1/conversations",
                Some(&device.token),
                None,
            )
            .await
            .expect("listing");
        assert_eq!(r.status, 401, "a revoked token fails on every node");
    }
    // The other device of the same user is untouched.
    other_on_a.ping().await;
    assert!(
        c.metric("ephemera_cluster_revocations_received_total")
            .await
            >= 1.0
    );
}

use common::{is_type, new_cid, str_of, u64_of};
use ephemera_load::client::{timed_text, Target};
use serde_json::{json, Value};

/// A view-once text `send` frame.
fn once_text(cid: &str, target: Target<'_>, body: &str, ttl_seconds: u64) -> Value {
    let mut f = timed_text(cid, target, body, ttl_seconds);
    f["view_policy"] = json!("once");
    f
}

/// The cursors of the frames `sock` has seen that carry one, in order.
fn cursors(sock: &TestSocket) -> Vec<u64> {
    sock.seen()
        .iter()
        .filter_map(|f| f.get("cursor").and_then(Value::as_u64))
        .collect()
}

#[tokio::test]
async fn users_on_different_nodes_exchange_messages_receipts_and_one_view() {
    let redis = Redis::start().await;
    let a = start_node(&redis, "node-a", &[]).await;
    let b = start_node(&redis, "node-b", &[]).await;
    let c = start_node(&redis, "node-c", &[]).await;
    let alice = register_user(&a.http(), "alice").await;
    let bob = register_user(&b.http(), "bob").await;
    let mut alice_a = TestSocket::connect(&a, &alice.login(&a.http()).await, "alice@a").await;
    let mut bob_b = TestSocket::connect(&b, &bob.login(&b.http()).await, "bob@b").await;
    let mut bob_c = TestSocket::connect(&c, &bob.login(&c.http()).await, "bob@c").await;
    for s in [&mut alice_a, &mut bob_b, &mut bob_c] {
        s.ping().await;
    }

    // Alice (node a) writes first: the conversation is node a's; both of
    // Bob's devices, on b and c, get each message with the same cursor.
    let mut sent = Vec::new();
    for i in 0..5 {
        let ack = alice_a
            .send_ok(timed_text(
                &new_cid("hi"),
                Target::User(&bob.user_id),
                &format!("hello {i}"),
                600,
            ))
            .await;
        sent.push(str_of(&ack, "msg_id").to_owned());
    }
    let conv = alice_a
        .seen()
        .iter()
        .find(|f| is_type(f, "ack"))
        .map(|f| str_of(f, "conversation_id").to_owned())
        .unwrap();
    for (i, id) in sent.iter().enumerate() {
        for s in [&mut bob_b, &mut bob_c] {
            let m = s.expect_about("message", id).await;
            assert_eq!(m["body"], format!("hello {i}"));
            assert_eq!(m["from"], alice.user_id.as_str());
        }
    }
    let (on_b, on_c) = (cursors(&bob_b), cursors(&bob_c));
    assert_eq!(on_b.len(), 5, "{on_b:?}");
    assert_eq!(
        on_b, on_c,
        "one cursor sequence for a user's devices on two nodes"
    );
    assert!(
        on_b.windows(2).all(|w| w[0] < w[1]),
        "strictly increasing: {on_b:?}"
    );

    // Typing crosses nodes (not stored): both of Bob's devices see it.
    alice_a.typing(&conv, true).await;
    for s in [&mut bob_b, &mut bob_c] {
        let t = s
            .expect("typing", |f| is_type(f, "typing") && f["is_typing"] == true)
            .await;
        assert_eq!(t["user_id"], alice.user_id.as_str());
        assert_eq!(t["conversation_id"], conv.as_str());
    }

    // Receipts from node b reach the sender on node a.
    bob_b
        .send(json!({"type": "delivered", "msg_id": sent[0]}))
        .await;
    let r = alice_a.expect_about("receipt", &sent[0]).await;
    assert_eq!(r["state"], "delivered");
    assert_eq!(r["by"], bob.user_id.as_str());
    bob_c
        .send(json!({"type": "read", "conversation_id": conv, "up_to_seq": 5}))
        .await;
    let r = alice_a
        .expect("read receipt", |f| {
            is_type(f, "receipt") && f["state"] == "read"
        })
        .await;
    assert_eq!(r["up_to_seq"], 5);

    // Bob answers from node c into Alice's conversation (owned by a).
    let ack = bob_c
        .send_ok(timed_text(
            &new_cid("re"),
            Target::Conversation(&conv),
            "hi alice",
            600,
        ))
        .await;
    let reply = str_of(&ack, "msg_id").to_owned();
    let m = alice_a.expect_about("message", &reply).await;
    assert_eq!(m["body"], "hi alice");
    // Bob's other device learns of his own message too, the sender's not.
    bob_b.expect_about("message", &reply).await;

    // A view-once message, viewed at once from both of Bob's nodes: one grant.
    let ack = alice_a
        .send_ok(once_text(
            &new_cid("once"),
            Target::User(&bob.user_id),
            "for your eyes",
            600,
        ))
        .await;
    let once = str_of(&ack, "msg_id").to_owned();
    let m = bob_b.expect_about("message", &once).await;
    assert!(
        m.get("body").is_none(),
        "a view-once message is never pushed: {m}"
    );
    bob_c.expect_about("message", &once).await;
    let view = json!({"type": "view", "msg_id": once});
    bob_b.send(view.clone()).await;
    bob_c.send(view).await;
    let rb = bob_b.expect_about("view_result", &once).await;
    let rc = bob_c.expect_about("view_result", &once).await;
    let granted: Vec<&Value> = [&rb, &rc]
        .into_iter()
        .filter(|r| r["result"] == "granted")
        .collect();
    assert_eq!(granted.len(), 1, "exactly one grant: {rb} {rc}");
    assert_eq!(granted[0]["body"], "for your eyes");
    for s in [&mut alice_a, &mut bob_b, &mut bob_c] {
        let burned = s.expect_about("burned", &once).await;
        assert_eq!(burned["reason"], "viewed");
    }

    // A fresh device of Bob on node a replays everything, content fetched
    // from the owner, in the same cursor order.
    let mut bob_a = TestSocket::connect(&a, &bob.login(&a.http()).await, "bob@a").await;
    let synced = bob_a.sync(0).await;
    let replayed: Vec<u64> = synced.events.iter().map(|f| u64_of(f, "cursor")).collect();
    assert!(replayed.windows(2).all(|w| w[0] < w[1]), "{replayed:?}");
    for (i, id) in sent.iter().enumerate() {
        let m = synced
            .about("message", id)
            .next()
            .unwrap_or_else(|| panic!("sync lacks {id}: {:?}", synced.events));
        assert_eq!(m["body"], format!("hello {i}"));
    }
    assert!(synced.about("burned", &once).next().is_some());
    assert!(
        a.metric("ephemera_cluster_calls_out_total").await
            + c.metric("ephemera_cluster_calls_out_total").await
            >= 1.0
    );
}

#[tokio::test]
async fn expiry_fires_exactly_once_cluster_wide() {
    let redis = Redis::start().await;
    let a = start_node(&redis, "node-a", &[]).await;
    let b = start_node(&redis, "node-b", &[]).await;
    let c = start_node(&redis, "node-c", &[]).await;
    let alice = register_user(&a.http(), "alice").await;
    let bob = register_user(&b.http(), "bob").await;
    let mut alice_a = TestSocket::connect(&a, &alice.login(&a.http()).await, "alice@a").await;
    let mut alice_c = TestSocket::connect(&c, &alice.login(&c.http()).await, "alice@c").await;
    let mut bob_b = TestSocket::connect(&b, &bob.login(&b.http()).await, "bob@b").await;
    let mut bob_c = TestSocket::connect(&c, &bob.login(&c.http()).await, "bob@c").await;
    for s in [&mut alice_a, &mut alice_c, &mut bob_b, &mut bob_c] {
        s.ping().await;
    }
    // Owned by node b: Bob writes first.
    let ack = bob_b
        .send_ok(timed_text(
            &new_cid("short"),
            Target::User(&alice.user_id),
            "brief",
            2,
        ))
        .await;
    let id = str_of(&ack, "msg_id").to_owned();
    let expires_at = ack["expires_at"].as_i64().unwrap();
    for s in [&mut alice_a, &mut alice_c, &mut bob_c] {
        s.expect_about("message", &id).await;
    }
    common::sleep_until_ms(expires_at + 4_000).await;
    for s in [&mut alice_a, &mut alice_c, &mut bob_b, &mut bob_c] {
        s.assert_never(Duration::from_millis(300), "more frames", |_| false)
            .await;
        let burns: Vec<&Value> = s
            .seen()
            .iter()
            .filter(|f| is_type(f, "burned") && f["msg_id"] == id.as_str())
            .collect();
        assert_eq!(burns.len(), 1, "{}: exactly one burn: {burns:?}", s.label());
        assert_eq!(burns[0]["reason"], "expired");
    }
    // Redis keeps no reference to it past its expiry; the burn stays, for
    // a device that syncs later.
    for user in [&alice.user_id, &bob.user_id] {
        let inbox = redis.cli(&["ZRANGE", &format!("eph:inbox:{user}"), "0", "-1"]);
        assert!(
            !inbox
                .iter()
                .any(|m| m.contains(&id) && m.contains("\"k\":\"message\"")),
            "the message's reference left {user}'s inbox: {inbox:?}"
        );
        if user == &alice.user_id {
            assert!(
                inbox
                    .iter()
                    .any(|m| m.contains(&id) && m.contains("\"k\":\"burned\"")),
                "its burn is still there for sync: {inbox:?}"
            );
        }
    }
    // One burn committed in the whole cluster: only the owner burned it.
    let mut burned = 0.0;
    for n in [&a, &b, &c] {
        burned += n.metric("ephemera_burn_lag_seconds_count").await;
    }
    assert_eq!(burned, 1.0, "the owner alone burns a message");
}

/// Sends until acked, retrying the same `client_msg_id` on `unavailable`
/// (what a client does): the ack's `msg_id`.
async fn send_until_acked(sock: &mut TestSocket, frame: Value, within: Duration) -> String {
    let cid = str_of(&frame, "client_msg_id").to_owned();
    let deadline = Instant::now() + within;
    loop {
        sock.send(frame.clone()).await;
        let answer = sock
            .expect(&format!("ack or error for {cid}"), |f| {
                (is_type(f, "ack") && f["client_msg_id"] == cid.as_str())
                    || (is_type(f, "error") && f["ref"] == cid.as_str())
            })
            .await;
        if is_type(&answer, "ack") {
            return str_of(&answer, "msg_id").to_owned();
        }
        assert_eq!(
            answer["code"], "unavailable",
            "only unavailable is retried: {answer}"
        );
        assert!(
            Instant::now() < deadline,
            "{cid} not acked within {within:?}: {answer}"
        );
        let wait = answer["retry_after_ms"].as_u64().unwrap_or(100).min(500);
        tokio::time::sleep(Duration::from_millis(wait)).await;
    }
}

#[tokio::test]
async fn a_killed_owner_holds_only_its_conversations_and_returns_with_every_acked_message() {
    let redis = Redis::start().await;
    let a = start_node(&redis, "node-a", &[]).await;
    let b = start_node(&redis, "node-b", &[]).await;
    let mut c = start_node(&redis, "node-c", &[]).await;
    let alice = register_user(&a.http(), "alice").await;
    let bob = register_user(&b.http(), "bob").await;
    let carol = register_user(&c.http(), "carol").await;
    let mut alice_a = TestSocket::connect(&a, &alice.login(&a.http()).await, "alice@a").await;
    let bob_device = bob.login(&b.http()).await;
    let mut bob_b = TestSocket::connect(&b, &bob_device, "bob@b").await;
    let mut carol_c = TestSocket::connect(&c, &carol.login(&c.http()).await, "carol@c").await;
    for s in [&mut alice_a, &mut bob_b, &mut carol_c] {
        s.ping().await;
    }
    // Carol's conversation with Bob is node c's; Alice's is node a's.
    let mut acked = Vec::new();
    for i in 0..10 {
        let ack = carol_c
            .send_ok(timed_text(
                &new_cid("c"),
                Target::User(&bob.user_id),
                &format!("carol {i}"),
                600,
            ))
            .await;
        acked.push(str_of(&ack, "msg_id").to_owned());
    }
    let ack = alice_a
        .send_ok(timed_text(
            &new_cid("a"),
            Target::User(&bob.user_id),
            "alice 0",
            600,
        ))
        .await;
    acked.push(str_of(&ack, "msg_id").to_owned());
    for id in &acked {
        bob_b.expect_about("message", id).await;
    }
    let carol_conv = bob_b
        .seen()
        .iter()
        .find(|f| is_type(f, "message") && f["from"] == carol.user_id.as_str())
        .map(|f| str_of(f, "conversation_id").to_owned())
        .expect("Carol's messages reached Bob");
    let alice_conv = str_of(&ack, "conversation_id").to_owned();

    c.kill9();
    await_live(&a, &["node-a", "node-b"], Duration::from_secs(10)).await;
    await_live(&b, &["node-a", "node-b"], Duration::from_secs(2)).await;
    // Its conversations wait, and say so.
    let cid = new_cid("wait");
    let err = bob_b
        .send_expect_error(
            timed_text(
                &cid,
                Target::Conversation(&carol_conv),
                "are you there",
                600,
            ),
            Some(&cid),
        )
        .await;
    assert_eq!(err["code"], "unavailable", "{err}");
    assert!(
        err["retry_after_ms"].as_u64().is_some_and(|ms| ms > 0),
        "{err}"
    );
    // Everything else works: the other conversation, logins, new sockets.
    let ack = bob_b
        .send_ok(timed_text(
            &new_cid("b"),
            Target::Conversation(&alice_conv),
            "still here",
            600,
        ))
        .await;
    let still = str_of(&ack, "msg_id").to_owned();
    alice_a.expect_about("message", &still).await;
    let alice2 = alice.login(&b.http()).await;
    let mut alice_b = TestSocket::connect(&b, &alice2, "alice@b").await;
    alice_b.ping().await;

    // Back on the same data directory: everything acked is there, the
    // waiting conversation works again, nothing came twice.
    c.restart().await;
    await_live(&a, &["node-a", "node-b", "node-c"], Duration::from_secs(10)).await;
    let after = send_until_acked(
        &mut bob_b,
        timed_text(
            &new_cid("back"),
            Target::Conversation(&carol_conv),
            "welcome back",
            600,
        ),
        Duration::from_secs(10),
    )
    .await;
    let mut bob_fresh = TestSocket::connect(&a, &bob.login(&a.http()).await, "bob@a").await;
    let synced = bob_fresh.sync(0).await;
    for id in acked.iter().chain([&still, &after]) {
        let n = synced.about("message", id).count() + synced.about("burned", id).count();
        assert_eq!(n, 1, "{id} replayed exactly once: {:?}", synced.events);
    }
    for (i, id) in acked.iter().take(10).enumerate() {
        let m = synced.about("message", id).next().unwrap();
        assert_eq!(m["body"], format!("carol {i}"));
    }
    bob_b
        .assert_never(Duration::from_millis(500), "a message twice", |_| false)
        .await;
    let mut seen = std::collections::HashMap::new();
    for f in bob_b.seen().iter().filter(|f| is_type(f, "message")) {
        *seen.entry(str_of(f, "msg_id").to_owned()).or_insert(0) += 1;
    }
    assert!(
        seen.values().all(|n| *n == 1),
        "live delivery twice: {seen:?}"
    );
}

#[tokio::test]
async fn redis_restarted_under_traffic_loses_no_acked_message() {
    let mut redis = Redis::start().await;
    let a = start_node(&redis, "node-a", &[]).await;
    let b = start_node(&redis, "node-b", &[]).await;
    let alice = register_user(&a.http(), "alice").await;
    let bob = register_user(&b.http(), "bob").await;
    let mut alice_a = TestSocket::connect(&a, &alice.login(&a.http()).await, "alice@a").await;
    let mut bob_b = TestSocket::connect(&b, &bob.login(&b.http()).await, "bob@b").await;
    alice_a.ping().await;
    bob_b.ping().await;
    let mut acked = Vec::new();
    for i in 0..40 {
        if i == 15 {
            redis.restart().await;
        }
        let id = send_until_acked(
            &mut alice_a,
            timed_text(
                &new_cid("r"),
                Target::User(&bob.user_id),
                &format!("m{i}"),
                600,
            ),
            Duration::from_secs(20),
        )
        .await;
        acked.push(id);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Live: every acked message reaches Bob's socket, each once (the ones
    // whose push was lost while Redis was away are replayed once the node
    // hears the bus again).
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let got: Vec<String> = bob_b
            .seen()
            .iter()
            .filter(|f| is_type(f, "message"))
            .map(|f| str_of(f, "msg_id").to_owned())
            .collect();
        if acked.iter().all(|id| got.contains(id)) {
            for id in &acked {
                assert_eq!(
                    got.iter().filter(|g| *g == id).count(),
                    1,
                    "{id} twice: {got:?}"
                );
            }
            break;
        }
        if Instant::now() >= deadline {
            let warnings = |n: &common::Server| -> String {
                n.logs()
                    .lines()
                    .filter(|l| l.contains("WARN") || l.contains("ERROR"))
                    .collect::<Vec<_>>()
                    .join("\n")
            };
            panic!(
                "acked messages never reached bob@b: {:?}\nnode-a warnings:\n{}\nnode-b warnings:\n{}",
                acked.iter().filter(|id| !got.contains(id)).collect::<Vec<_>>(),
                warnings(&a),
                warnings(&b),
            );
        }
        bob_b.next_frame(Duration::from_millis(500)).await;
    }
    // And from the inbox.
    let mut bob_fresh = TestSocket::connect(&b, &bob.login(&b.http()).await, "bob@b2").await;
    let synced = bob_fresh.sync(0).await;
    for id in &acked {
        assert_eq!(
            synced.about("message", id).count(),
            1,
            "{id}: {:?}",
            synced.events
        );
    }
}

/// `GET path` as `s` through `node`, asserting `200`: the body.
async fn get_ok(node: &common::Server, s: &ephemera_load::client::Session, path: &str) -> Value {
    let answer = common::stories::call(&node.http(), s, reqwest::Method::GET, path, None).await;
    common::stories::expect_status(
        answer,
        200,
        &format!("GET {path} through {}", node.http_base()),
    )
}

/// The conversation ids of `s`'s `GET /conversations` through `node`.
async fn listed(node: &common::Server, s: &ephemera_load::client::Session) -> Vec<String> {
    let body = get_ok(node, s, "/api/v1/conversations").await;
    body["conversations"]
        .as_array()
        .expect("conversations")
        .iter()
        .map(|c| str_of(c, "conversation_id").to_owned())
        .collect()
}

/// Stories, the social graph and the conversation calls of the HTTP API
/// answer alike through every node: a call about what one node owns (a
/// user's home: their followers, stories and uploads; a conversation's
/// owner: its history, leaving it) is forwarded there, and what a user has
/// on every node (their conversations, their tray, a profile's counts) is
/// gathered.
#[tokio::test]
async fn stories_and_the_http_api_answer_alike_through_every_node() {
    use common::stories::{
        call, counts, delete_story, expect_status, follow, get_story, open_story, post_story,
        reply, seg, tray, user_stories,
    };
    use reqwest::Method;
    let redis = Redis::start().await;
    let mut a = start_node(&redis, "node-a", &[]).await;
    let mut b = start_node(&redis, "node-b", &[]).await;
    let mut c = start_node(&redis, "node-c", &[]).await;
    let nodes = [&a, &b, &c];
    let blobs = common::media::blob_client();
    let alice = register_user(&a.http(), "alice").await;
    let bob = register_user(&b.http(), "bob").await;
    let carol = register_user(&c.http(), "carol").await;
    let (alice_s, bob_s, carol_s) = (
        alice.login(&a.http()).await,
        bob.login(&b.http()).await,
        carol.login(&c.http()).await,
    );

    // Followed through two nodes; counted alike through all three.
    follow(&b.http(), &bob_s, &alice.user_id).await;
    follow(&c.http(), &carol_s, &alice.user_id).await;
    for node in nodes {
        assert_eq!(counts(&node.http(), &bob_s, &alice.user_id).await, (2, 0));
        assert_eq!(counts(&node.http(), &alice_s, &bob.user_id).await, (0, 1));
    }

    // Alice posts through node c; Bob's socket on node a hears of it, and
    // the story opens, is listed and is in the tray through every node.
    let mut bob_a = TestSocket::connect(&a, &bob_s, "bob@a").await;
    bob_a.ping().await;
    let posted = post_story(&c.http(), &blobs, &alice_s, "everyone", Some(600), None).await;
    let story = posted.story_id.clone();
    bob_a
        .expect("story_posted", |f| {
            is_type(f, "story_posted") && f["story_id"] == story.as_str()
        })
        .await;
    for node in nodes {
        let listed = user_stories(&node.http(), &bob_s, &alice.user_id).await;
        assert_eq!(listed.len(), 1, "through {}: {listed:?}", node.http_base());
        let t = tray(&node.http(), &carol_s).await;
        assert_eq!(
            t.len(),
            1,
            "carol's tray through {}: {t:?}",
            node.http_base()
        );
        assert_eq!(t[0]["user_id"], alice.user_id.as_str());
        assert_eq!(t[0]["story_count"], 1);
    }
    open_story(&a.http(), &carol_s, &story).await;
    open_story(&b.http(), &carol_s, &story).await;
    let seen = get_ok(
        &a,
        &alice_s,
        &format!("/api/v1/stories/{}/viewers", seg(&story)),
    )
    .await;
    assert_eq!(seen["view_count"], 1, "one view however many nodes: {seen}");
    let t = tray(&b.http(), &carol_s).await;
    assert_eq!(t[0]["has_unviewed"], false, "{t:?}");

    // Bob replies through node b; the reply reaches Alice's socket on
    // node a, and the conversation is listed and readable through every node.
    let mut alice_a = TestSocket::connect(&a, &alice_s, "alice@a").await;
    alice_a.ping().await;
    let r = expect_status(reply(&b.http(), &bob_s, &story, "nice").await, 201, "reply");
    let conv = str_of(&r, "conversation_id").to_owned();
    let m = alice_a.expect_about("message", str_of(&r, "msg_id")).await;
    assert_eq!(m["body"], "nice");
    assert_eq!(m["story_id"], story.as_str());
    for node in nodes {
        assert_eq!(listed(node, &alice_s).await, vec![conv.clone()]);
        let h = get_ok(
            node,
            &bob_s,
            &format!("/api/v1/conversations/{}/messages", seg(&conv)),
        )
        .await;
        assert_eq!(h["messages"].as_array().map(Vec::len), Some(1), "{h}");
        assert_eq!(h["messages"][0]["body"], "nice");
    }

    // A group made on node a, left by Carol through node c.
    let g = expect_status(
        call(
            &a.http(),
            &alice_s,
            Method::POST,
            "/api/v1/conversations",
            Some(json!({"members": [bob.user_id, carol.user_id], "name": "trio"})),
        )
        .await,
        201,
        "create group",
    );
    let group = str_of(&g, "conversation_id").to_owned();
    assert!(listed(&b, &carol_s).await.contains(&group));
    let left = call(
        &c.http(),
        &carol_s,
        Method::DELETE,
        &format!("/api/v1/conversations/{}/members/me", seg(&group)),
        None,
    )
    .await;
    assert_eq!(left.status, 204, "{:?}", left.json);
    for node in nodes {
        assert!(!listed(node, &carol_s).await.contains(&group));
        assert!(listed(node, &bob_s).await.contains(&group));
    }

    // Deleted through node b: gone through every node.
    assert_eq!(delete_story(&b.http(), &alice_s, &story).await.status, 204);
    for node in nodes {
        assert_eq!(get_story(&node.http(), &carol_s, &story).await.status, 404);
        assert!(tray(&node.http(), &carol_s).await.is_empty());
    }

    // A photo Alice uploads (it lands at her home) goes in a message from
    // her socket on node a to Carol: the conversation is node a's, so the
    // upload moves there when the message uses it, and Carol's device on
    // node c gets it served by node a.
    let mut carol_c = TestSocket::connect(&c, &carol_s, "carol@c").await;
    carol_c.ping().await;
    let (upload, _, sealed) =
        common::stories::upload_photo(&c.http(), &blobs, &alice_s, 1200).await;
    let ack_photo = alice_a
        .send_ok(common::media::media_send(
            &new_cid("photo"),
            &carol.user_id,
            &upload.media_key,
            "timed",
            600,
        ))
        .await;
    let m = carol_c
        .expect_about("message", str_of(&ack_photo, "msg_id"))
        .await;
    assert_eq!(str_of(&m["media"], "data_key"), upload.data_key_b64, "{m}");
    let url = str_of(&m["media"], "get_url");
    assert!(
        url.starts_with(&a.http_base()),
        "served by the owner, node a: {url}"
    );
    let got = blobs.get(url).send().await.expect("GET the photo");
    assert_eq!(got.status(), 200);
    assert_eq!(&got.bytes().await.expect("body")[..], &sealed[..]);

    // View-once media across nodes: the owner (node a) grants it to
    // Carol's view from node c, once; and a new device of Carol on node b
    // replays the timed photo with a grant from the owner.
    let (once, _, once_sealed) =
        common::stories::upload_photo(&b.http(), &blobs, &alice_s, 900).await;
    let ack = alice_a
        .send_ok(common::media::media_send(
            &new_cid("once"),
            &carol.user_id,
            &once.media_key,
            "once",
            600,
        ))
        .await;
    let once_id = str_of(&ack, "msg_id").to_owned();
    carol_c.expect_about("message", &once_id).await;
    carol_c
        .send(json!({"type": "view", "msg_id": once_id}))
        .await;
    let v = carol_c.expect_about("view_result", &once_id).await;
    assert_eq!(v["result"], "granted", "{v}");
    assert_eq!(str_of(&v["media"], "data_key"), once.data_key_b64, "{v}");
    let got = blobs
        .get(str_of(&v["media"], "get_url"))
        .send()
        .await
        .expect("GET the once photo");
    assert_eq!(&got.bytes().await.expect("body")[..], &once_sealed[..]);
    let mut carol_b = TestSocket::connect(&b, &carol.login(&b.http()).await, "carol@b").await;
    let synced = carol_b.sync(0).await;
    let replayed = synced
        .about("message", str_of(&ack_photo, "msg_id"))
        .next()
        .unwrap_or_else(|| panic!("the photo is replayed: {:?}", synced.events))
        .clone();
    assert_eq!(
        str_of(&replayed["media"], "data_key"),
        upload.data_key_b64,
        "{replayed}"
    );

    // Alice's home goes down: what it owns answers 503 with a retry hint;
    // everything else keeps working through the other nodes.
    let home = redis.cli(&["GET", &format!("eph:owner:{}", alice.user_id)]);
    let home = home.first().cloned().expect("alice has a home node");
    let mut others: Vec<&common::Server> = Vec::new();
    let mut down = None;
    for (name, node) in [("node-a", &mut a), ("node-b", &mut b), ("node-c", &mut c)] {
        if name == home {
            down = Some(node);
        } else {
            others.push(node);
        }
    }
    let down = down.unwrap_or_else(|| panic!("alice's home {home:?} is not a node"));
    down.kill9();
    let live: Vec<&str> = ["node-a", "node-b", "node-c"]
        .into_iter()
        .filter(|n| *n != home)
        .collect();
    await_live(others[0], &live, Duration::from_secs(10)).await;
    await_live(others[1], &live, Duration::from_secs(10)).await;
    for node in &others {
        let r = common::stories::get_user_stories(&node.http(), &bob_s, &alice.user_id).await;
        assert_eq!(r.status, 503, "{:?}", r.json);
        assert!(r.retry_after.is_some(), "a retry hint");
        assert_eq!(r.json.expect("error body")["error"]["code"], "unavailable");
        let dave = register_user(&node.http(), "dave").await;
        let dave_s = dave.login(&node.http()).await;
        assert!(listed(node, &dave_s).await.is_empty());
        follow(&node.http(), &dave_s, &bob.user_id).await;
    }
}

/// A node whose disk is lost: its id cannot start on a new data directory
/// (its events would be taken for ones already applied) until an operator
/// forgets it; then its conversations are claimed anew, empty, and the id
/// starts again. A live node cannot be forgotten.
#[tokio::test]
async fn a_lost_node_is_forgotten_and_its_id_starts_again_on_a_new_directory() {
    let redis = Redis::start().await;
    let a = start_node(&redis, "node-a", &[]).await;
    let mut b = start_node(&redis, "node-b", &[]).await;
    let alice = register_user(&a.http(), "alice").await;
    let bob = register_user(&a.http(), "bob").await;
    let mut alice_a = TestSocket::connect(&a, &alice.login(&a.http()).await, "alice@a").await;
    let mut bob_b = TestSocket::connect(&b, &bob.login(&b.http()).await, "bob@b").await;
    alice_a.ping().await;
    // Bob writes first, from node b: the conversation is node b's.
    let ack = bob_b
        .send_ok(timed_text(
            &new_cid("b"),
            Target::User(&alice.user_id),
            "from b",
            600,
        ))
        .await;
    alice_a
        .expect_about("message", str_of(&ack, "msg_id"))
        .await;

    // Node b and its disk are lost.
    b.kill9();
    await_live(&a, &["node-a"], Duration::from_secs(10)).await;
    let fresh = tempfile::tempdir().expect("temp dir");
    let out = serve_once(&redis, "node-b", fresh.path());
    assert!(
        !out.status.success(),
        "a lost node's id must not start on a new directory"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("used with another data directory") && stderr.contains("forget"),
        "the refusal says why and what to do: {stderr}"
    );

    // A live node cannot be forgotten; the lost one can (the CLI).
    let live = a
        .admin_http()
        .raw(
            reqwest::Method::DELETE,
            "/admin/cluster/members/node-a",
            Some(a.admin_token()),
            None,
        )
        .await
        .expect("forget a live node");
    assert_eq!(live.status, 409);
    let cli = std::process::Command::new(env!("CARGO_BIN_EXE_ephemera"))
        .args([
            "admin",
            "--admin-url",
            &a.admin_base(),
            "cluster",
            "forget",
            "node-b",
        ])
        .env("EPHEMERA_ADMIN_TOKEN", a.admin_token())
        .output()
        .expect("ephemera admin cluster forget");
    let said = String::from_utf8_lossy(&cli.stdout);
    assert!(
        cli.status.success(),
        "{said} {}",
        String::from_utf8_lossy(&cli.stderr)
    );
    assert!(said.contains("forgot node-b"), "{said}");
    assert!(
        !said.contains(": 0 placements"),
        "the conversation was released: {said}"
    );
    let view = cluster_view(&a).await;
    assert!(
        !view["members"]
            .as_array()
            .expect("members")
            .iter()
            .any(|m| m["node_id"] == "node-b"),
        "forgotten: {view}"
    );

    // The id starts again on the new directory, and the conversation is
    // claimed anew (empty) by whoever writes first.
    let b2 = start_node(&redis, "node-b", &[]).await;
    await_live(&a, &["node-a", "node-b"], Duration::from_secs(10)).await;
    let mut bob_b2 = TestSocket::connect(&b2, &bob.login(&b2.http()).await, "bob@b2").await;
    bob_b2.ping().await;
    let ack = alice_a
        .send_ok(timed_text(
            &new_cid("a"),
            Target::User(&bob.user_id),
            "again",
            600,
        ))
        .await;
    let m = bob_b2.expect_about("message", str_of(&ack, "msg_id")).await;
    assert_eq!(m["body"], "again");
    assert_eq!(m["seq"], 1, "the conversation starts again, empty: {m}");
}

/// Reports and moderation through any node: a report goes to the node
/// that owns the reported message, the moderator role granted through one
/// node's admin listener holds on every node, the case list is gathered
/// from every node, and a case is read and closed through nodes that do
/// not hold it.
#[tokio::test]
async fn reports_and_moderation_work_through_every_node() {
    use common::stories::{call, expect_status, seg};
    use reqwest::Method;
    let redis = Redis::start().await;
    let a = start_node(&redis, "node-a", &[]).await;
    let b = start_node(&redis, "node-b", &[]).await;
    let c = start_node(&redis, "node-c", &[]).await;
    let alice = register_user(&a.http(), "alice").await;
    let bob = register_user(&b.http(), "bob").await;
    let mo = register_user(&c.http(), "mo").await;
    let (alice_s, bob_s, mo_s) = (
        alice.login(&a.http()).await,
        bob.login(&b.http()).await,
        mo.login(&c.http()).await,
    );
    let mut alice_a = TestSocket::connect(&a, &alice_s, "alice@a").await;
    let mut bob_b = TestSocket::connect(&b, &bob_s, "bob@b").await;
    bob_b.ping().await;
    // Alice writes from node a: the conversation, and so the report, are a's.
    let ack = alice_a
        .send_ok(timed_text(
            &new_cid("r"),
            Target::User(&bob.user_id),
            "spam spam",
            600,
        ))
        .await;
    let msg = str_of(&ack, "msg_id").to_owned();
    bob_b.expect_about("message", &msg).await;
    let r = expect_status(
        call(
            &c.http(),
            &bob_s,
            Method::POST,
            "/api/v1/reports",
            Some(json!({"msg_id": msg, "reason": "spam"})),
        )
        .await,
        201,
        "report through node c",
    );
    let case = str_of(&r, "case_id").to_owned();

    // Not a moderator yet: 403 through every node.
    let cases = |node: &common::Server| {
        let http = node.http();
        let s = mo_s.clone();
        async move { call(&http, &s, Method::GET, "/api/v1/moderation/cases", None).await }
    };
    assert_eq!(cases(&b).await.status, 403);
    // Granted through node b's admin listener: a moderator everywhere.
    let granted = b
        .admin_http()
        .raw(
            Method::PUT,
            &format!("/admin/moderators/{}", mo.user_id),
            Some(b.admin_token()),
            None,
        )
        .await
        .expect("grant");
    assert_eq!(granted.status, 204);
    for node in [&a, &b, &c] {
        let listed = expect_status(cases(node).await, 200, "cases");
        let ids: Vec<&str> = listed["cases"]
            .as_array()
            .expect("cases")
            .iter()
            .map(|k| str_of(k, "case_id"))
            .collect();
        assert_eq!(ids, vec![case.as_str()], "through {}", node.http_base());
    }
    let read = get_ok(
        &b,
        &mo_s,
        &format!("/api/v1/moderation/cases/{}", seg(&case)),
    )
    .await;
    assert_eq!(read["content"]["body"], "spam spam", "{read}");
    assert_eq!(read["author"], alice.user_id.as_str());
    let closed = call(
        &c.http(),
        &mo_s,
        Method::POST,
        &format!("/api/v1/moderation/cases/{}/close", seg(&case)),
        None,
    )
    .await;
    assert_eq!(closed.status, 200, "{:?}", closed.json);
    // The reads were logged where the case is (node a).
    let log = a
        .admin_http()
        .raw(
            Method::GET,
            "/admin/moderation/access-log",
            Some(a.admin_token()),
            None,
        )
        .await
        .expect("access log");
    let entries = log.json.expect("log")["entries"].clone();
    assert!(
        entries
            .as_array()
            .is_some_and(|e| e.iter().any(|x| x["case_id"] == case.as_str())),
        "{entries}"
    );
}

/// The bound on groups per user is the cluster's: a group made on one node
/// counts on every other, and leaving it (through a third) frees its place.
#[tokio::test]
async fn the_bound_on_groups_per_user_holds_across_nodes() {
    use common::stories::{call, seg};
    use reqwest::Method;
    let redis = Redis::start().await;
    let one = ["--max-groups-per-user", "1"];
    let a = start_node(&redis, "node-a", &one).await;
    let b = start_node(&redis, "node-b", &one).await;
    let alice = register_user(&a.http(), "alice").await;
    let bob = register_user(&a.http(), "bob").await;
    let carol = register_user(&b.http(), "carol").await;
    let (alice_s, bob_s, carol_s) = (
        alice.login(&a.http()).await,
        bob.login(&b.http()).await,
        carol.login(&b.http()).await,
    );
    let group = |node: &common::Server, s: &ephemera_load::client::Session| {
        let (http, s) = (node.http(), s.clone());
        let members = json!({"members": [bob.user_id]});
        async move {
            call(
                &http,
                &s,
                Method::POST,
                "/api/v1/conversations",
                Some(members),
            )
            .await
        }
    };
    let first = group(&a, &alice_s).await;
    assert_eq!(first.status, 201, "{:?}", first.json);
    let full = group(&b, &carol_s).await;
    assert_eq!(
        full.status, 422,
        "bob is in one group already, made on node a: {:?}",
        full.json
    );
    let conv = first.json.expect("created")["conversation_id"]
        .as_str()
        .expect("id")
        .to_owned();
    let left = call(
        &b.http(),
        &bob_s,
        Method::DELETE,
        &format!("/api/v1/conversations/{}/members/me", seg(&conv)),
        None,
    )
    .await;
    assert_eq!(left.status, 204);
    assert_eq!(
        group(&b, &carol_s).await.status,
        201,
        "the place is free again"
    );
}
