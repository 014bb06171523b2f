//! Presence, calls and push across the nodes of a cluster (issue 14):
//! presence kept in Redis with TTLs and announced when a user's first
//! device anywhere attaches and their last one anywhere leaves, a node
//! killed with `kill -9` whose users go offline for their contacts on
//! other nodes, a call between devices on two nodes, and a push for a user
//! online on no node. Real `redis-server`, real nodes, real sockets.
//!
//! Presence is computed from a user's conversations as the node that
//! announces sees them; so that these tests hold whether or not those
//! reads are cluster-wide, every announcement here comes from the node
//! that owns the conversation it rests on.

mod common;

use std::time::{Duration, Instant};

use common::cluster::{await_live, await_redis, start_node, start_node_with_env, Redis, LEASE_MS};
use common::push::{send_text, Hook};
use common::{is_type, new_cid, random_hex, register_user, str_of, TestSocket, TestUser};
use ephemera_load::client::{timed_text, Session, Target};
use serde_json::{json, Value};

/// Waits until each of two nodes sees both live (a node reaches only
/// the nodes it knows to be live).
async fn both_live(x: &common::Server, y: &common::Server, ids: &[&str]) {
    for node in [x, y] {
        await_live(node, ids, Duration::from_secs(10)).await;
    }
}

/// Waits until the session registry has `user` on `node`: a device's
/// live events go to the nodes registered there, and registering follows
/// the socket's attach by a moment.
async fn registered(redis: &Redis, user: &TestUser, node: &str) {
    let key = format!("eph:where:{}", user.user_id);
    await_redis(
        redis,
        &["HKEYS", &key],
        &format!("{} registered on {node}", user.username),
        Duration::from_secs(5),
        |l| l.iter().any(|n| n == node),
    )
    .await;
}

/// Whether `f` is a `presence` frame of `user` with `status`.
fn is_presence(f: &Value, user: &str, status: &str) -> bool {
    is_type(f, "presence") && f["user_id"] == user && f["status"] == status
}

/// Opens a direct conversation from `opener` to `replier_user` (so it
/// belongs to the opener's node) and makes both speak in it: `replier`
/// answers, and `opener` gets the answer. The conversation's id.
async fn converse(
    opener: &mut TestSocket,
    replier: &mut TestSocket,
    replier_user: &TestUser,
) -> String {
    let ack = send_text(opener, replier_user, "hello").await;
    let conv = str_of(&ack, "conversation_id").to_owned();
    replier
        .expect_about("message", str_of(&ack, "msg_id"))
        .await;
    let frame = timed_text(&new_cid("re"), Target::Conversation(&conv), "hi", 600);
    let reply = replier.send_ok(frame).await;
    opener
        .expect_about("message", str_of(&reply, "msg_id"))
        .await;
    conv
}

/// A socket of a fresh device of `user` on `node`, attached (it answered a
/// `ping`).
async fn device(node: &common::Server, user: &TestUser, label: &str) -> (Session, TestSocket) {
    let session = user.login(&node.http()).await;
    let mut s = TestSocket::connect(node, &session, label).await;
    s.ping().await;
    (session, s)
}

#[tokio::test]
async fn presence_crosses_nodes_and_follows_the_last_device_anywhere() {
    let redis = Redis::start().await;
    let a = start_node(&redis, "node-a", &[]).await;
    let b = start_node(&redis, "node-b", &[]).await;
    both_live(&a, &b, &["node-a", "node-b"]).await;
    let alice = register_user(&a.http(), "alice").await;
    let bob = register_user(&a.http(), "bob").await;
    let carol = register_user(&b.http(), "carol").await;
    let (_, mut alice_a) = device(&a, &alice, "alice@a").await;
    let (_, mut bob_b) = device(&b, &bob, "bob@b").await;
    let (_, mut carol_b) = device(&b, &carol, "carol@b").await;
    registered(&redis, &alice, "node-a").await;
    registered(&redis, &bob, "node-b").await;
    registered(&redis, &carol, "node-b").await;
    // Alice and Bob speak in a conversation of node a's, Carol and Alice
    // in one of node b's.
    converse(&mut alice_a, &mut bob_b, &bob).await;
    let with_carol = converse(&mut carol_b, &mut alice_a, &alice).await;

    // Presence is in Redis, living about a lease.
    let online_bob = format!("eph:online:{}", bob.user_id);
    let ttl: i64 = redis.cli(&["PTTL", &online_bob])[0].parse().unwrap();
    assert!(
        ttl > 0 && ttl <= LEASE_MS as i64,
        "Bob's presence lives at most a lease: {ttl}"
    );

    // A new device of Alice on node a learns at once that Bob, on node b,
    // is online.
    let (_, mut alice2_a) = device(&a, &alice, "alice2@a").await;
    alice2_a
        .expect("Bob online (on another node)", |f| {
            is_presence(f, &bob.user_id, "online")
        })
        .await;

    // Alice also on node b, then gone from b: still online on a, so
    // Carol (whose conversation with her is b's) hears no `offline`.
    let (_, alice_b) = device(&b, &alice, "alice@b").await;
    let where_alice = format!("eph:where:{}", alice.user_id);
    await_redis(
        &redis,
        &["HKEYS", &where_alice],
        "Alice registered on node b",
        Duration::from_secs(5),
        |l| l.iter().any(|n| n == "node-b"),
    )
    .await;
    alice_b.close().await;
    await_redis(
        &redis,
        &["HKEYS", &where_alice],
        "Alice's device on b gone from the registry",
        Duration::from_secs(5),
        |l| !l.iter().any(|n| n == "node-b"),
    )
    .await;
    // Typing from Alice on a reaches Carol after anything b said then.
    alice_a.typing(&with_carol, true).await;
    carol_b
        .expect("Alice typing", |f| {
            is_type(f, "typing") && f["user_id"] == alice.user_id.as_str()
        })
        .await;
    assert!(
        !carol_b
            .seen()
            .iter()
            .any(|f| is_presence(f, &alice.user_id, "offline")),
        "Alice is still online on node a: {:?}",
        carol_b.seen()
    );
    let online_alice = format!("eph:online:{}", alice.user_id);
    assert_eq!(redis.cli(&["EXISTS", &online_alice]), ["1"]);

    // Her last devices anywhere (both on a) leave: Bob, on b, hears it,
    // with when she was last seen; her presence leaves Redis.
    let before = common::now_ms();
    alice_a.close().await;
    alice2_a.close().await;
    let off = bob_b
        .expect("Alice offline", |f| {
            is_presence(f, &alice.user_id, "offline")
        })
        .await;
    let last_seen = off["last_seen"].as_i64().expect("last_seen with offline");
    assert!(last_seen >= before - 1_000, "{off}");
    assert_eq!(redis.cli(&["EXISTS", &online_alice]), ["0"]);
    let kept = format!("eph:last-seen:{}", alice.user_id);
    assert_eq!(redis.cli(&["GET", &kept]), [last_seen.to_string()]);
    let kept_for: i64 = redis.cli(&["PTTL", &kept])[0].parse().unwrap();
    assert!(kept_for > 0, "last-seen has a TTL: {kept_for}");

    // Back on node a: Bob hears `online` once.
    let (_, _alice_a) = device(&a, &alice, "alice3@a").await;
    bob_b
        .expect("Alice online again", |f| {
            is_presence(f, &alice.user_id, "online")
        })
        .await;
}

#[tokio::test]
async fn a_killed_nodes_users_go_offline_for_their_contacts_on_other_nodes() {
    let redis = Redis::start().await;
    let a = start_node(&redis, "node-a", &[]).await;
    let mut c = start_node(&redis, "node-c", &[]).await;
    both_live(&a, &c, &["node-a", "node-c"]).await;
    let alice = register_user(&a.http(), "alice").await;
    let carol = register_user(&c.http(), "carol").await;
    let (_, mut alice_a) = device(&a, &alice, "alice@a").await;
    let (_, mut carol_c) = device(&c, &carol, "carol@c").await;
    registered(&redis, &alice, "node-a").await;
    registered(&redis, &carol, "node-c").await;
    // Their conversation is node a's (Alice wrote first); Carol spoke in it.
    converse(&mut alice_a, &mut carol_c, &carol).await;
    let online_carol = format!("eph:online:{}", carol.user_id);
    assert_eq!(redis.cli(&["EXISTS", &online_carol]), ["1"]);

    // Node c dies without a word: Carol's presence lapses within a lease,
    // and node a tells Alice within a few.
    let killed = Instant::now();
    c.kill9();
    let off = alice_a
        .expect_within(
            Duration::from_millis(LEASE_MS * 4),
            "Carol offline after her node died",
            |f| is_presence(f, &carol.user_id, "offline"),
        )
        .await;
    assert!(off["last_seen"].as_i64().is_some(), "{off}");
    let took = killed.elapsed();
    assert!(took < Duration::from_millis(LEASE_MS * 4), "{took:?}");
    assert_eq!(redis.cli(&["EXISTS", &online_carol]), ["0"]);
    let where_carol = format!("eph:where:{}", carol.user_id);
    assert_eq!(
        redis.cli(&["HLEN", &where_carol]),
        ["0"],
        "the dead node is out of the registry"
    );
    // One node reaped it, once.
    let claims = redis.cli(&["KEYS", "eph:reaped:node-c:*"]);
    assert_eq!(claims.len(), 1, "{claims:?}");
    assert_eq!(redis.cli(&["GET", &claims[0]]), ["node-a"]);
    // Exactly one `offline` (the reap is not repeated).
    alice_a.ping().await;
    let offs = alice_a
        .seen()
        .iter()
        .filter(|f| is_presence(f, &carol.user_id, "offline"))
        .count();
    assert_eq!(offs, 1);
}

#[tokio::test]
async fn a_registry_that_lost_a_user_is_mended_by_the_next_renewal() {
    let redis = Redis::start().await;
    let a = start_node(&redis, "node-a", &[]).await;
    let b = start_node(&redis, "node-b", &[]).await;
    both_live(&a, &b, &["node-a", "node-b"]).await;
    let alice = register_user(&a.http(), "alice").await;
    let bob = register_user(&b.http(), "bob").await;
    let (_, mut alice_a) = device(&a, &alice, "alice@a").await;
    let (_, mut bob_b) = device(&b, &bob, "bob@b").await;
    registered(&redis, &alice, "node-a").await;
    registered(&redis, &bob, "node-b").await;
    // Their conversation is node b's (Bob wrote first); both spoke.
    converse(&mut bob_b, &mut alice_a, &alice).await;

    // Redis forgets Bob as a reap of node b while its lease had lapsed
    // would: out of the registry, presence gone.
    let (where_bob, online_bob) = (
        format!("eph:where:{}", bob.user_id),
        format!("eph:online:{}", bob.user_id),
    );
    redis.cli(&["DEL", &where_bob, &online_bob]);
    redis.cli(&["SREM", "eph:users-on:node-b", &bob.user_id]);

    // Node b's next renewal registers him again, and Alice hears him online.
    registered(&redis, &bob, "node-b").await;
    assert_eq!(
        redis.cli(&["SISMEMBER", "eph:users-on:node-b", &bob.user_id]),
        ["1"]
    );
    alice_a
        .expect("Bob online again", |f| {
            is_presence(f, &bob.user_id, "online")
        })
        .await;
    // His events reach him live again.
    let ack = send_text(&mut alice_a, &bob, "after").await;
    bob_b.expect_about("message", str_of(&ack, "msg_id")).await;
}

/// A `call` frame from a client.
fn call_frame(call_id: &str, to: &str, action: &str, data: Option<&str>) -> Value {
    let mut f = json!({"type": "call", "call_id": call_id, "to": to, "action": action});
    if let Some(d) = data {
        f["data"] = json!(d);
    }
    f
}

/// Waits for the `call` frame of `call_id` with `action` on `socket`.
async fn expect_call(socket: &mut TestSocket, call_id: &str, action: &str) -> Value {
    socket
        .expect(&format!("call {action} for {call_id}"), |f| {
            f["type"] == "call" && f["call_id"] == call_id && f["action"] == action
        })
        .await
}

#[tokio::test]
async fn a_call_between_devices_on_two_nodes_rings_answers_signals_and_hangs_up() {
    let redis = Redis::start().await;
    let a = start_node(&redis, "node-a", &[]).await;
    let b = start_node(&redis, "node-b", &[]).await;
    both_live(&a, &b, &["node-a", "node-b"]).await;
    let alice = register_user(&a.http(), "alice").await;
    let bob = register_user(&b.http(), "bob").await;
    let (alice_dev, mut alice_a) = device(&a, &alice, "alice@a").await;
    let (bob_dev, mut bob_b) = device(&b, &bob, "bob@b").await;
    let (_, mut bob_a) = device(&a, &bob, "bob@a").await;
    // Bob is registered on both nodes before Alice calls.
    let where_bob = format!("eph:where:{}", bob.user_id);
    await_redis(
        &redis,
        &["HLEN", &where_bob],
        "Bob on two nodes",
        Duration::from_secs(5),
        |l| l == ["2"],
    )
    .await;

    let canary = format!("CANARY-{}", random_hex(6));
    let id = format!("call-{}", random_hex(4));
    let offer = format!("v=0 {canary}-offer");
    alice_a
        .send(call_frame(&id, &bob.user_id, "offer", Some(&offer)))
        .await;
    // Both of Bob's devices ring, the one on node b too.
    for s in [&mut bob_b, &mut bob_a] {
        let ring = expect_call(s, &id, "offer").await;
        assert_eq!(str_of(&ring, "data"), offer);
        assert_eq!(str_of(&ring, "from"), alice.user_id);
        assert_eq!(str_of(&ring, "from_device"), alice_dev.device_id);
    }
    // The caller's early candidates reach both.
    let early = format!("candidate:1 {canary}-early");
    alice_a
        .send(call_frame(&id, &bob.user_id, "ice", Some(&early)))
        .await;
    for s in [&mut bob_b, &mut bob_a] {
        assert_eq!(str_of(&expect_call(s, &id, "ice").await, "data"), early);
    }
    // A device of Bob's that connects to node b while it rings is rung too.
    let (_, mut bob_b2) = device(&b, &bob, "bob2@b").await;
    let ring = expect_call(&mut bob_b2, &id, "offer").await;
    assert_eq!(str_of(&ring, "data"), offer);

    // Bob answers on node b: Alice gets the answer, his device on a stops
    // ringing.
    let answer = format!("v=0 {canary}-answer");
    bob_b
        .send(call_frame(&id, &alice.user_id, "answer", Some(&answer)))
        .await;
    let got = expect_call(&mut alice_a, &id, "answer").await;
    assert_eq!(str_of(&got, "data"), answer);
    assert_eq!(str_of(&got, "from_device"), bob_dev.device_id);
    for s in [&mut bob_a, &mut bob_b2] {
        let elsewhere = expect_call(s, &id, "hangup").await;
        assert_eq!(str_of(&elsewhere, "reason"), "answered_elsewhere");
    }
    assert!(
        !bob_b
            .seen()
            .iter()
            .any(|f| f["type"] == "call" && f["action"] == "hangup"),
        "the answering device is not told to stop ringing"
    );

    // ICE both ways between the pair across the nodes.
    let from_bob = format!("candidate:3 {canary}-callee");
    bob_b
        .send(call_frame(&id, &alice.user_id, "ice", Some(&from_bob)))
        .await;
    let ice = expect_call(&mut alice_a, &id, "ice").await;
    assert_eq!(str_of(&ice, "data"), from_bob);
    let from_alice = format!("candidate:2 {canary}-caller");
    alice_a
        .send(call_frame(&id, &bob.user_id, "ice", Some(&from_alice)))
        .await;
    let ice = expect_call(&mut bob_b, &id, "ice").await;
    assert_eq!(str_of(&ice, "data"), from_alice);
    // The device on a that did not answer is out of the call.
    let stray = call_frame(&id, &alice.user_id, "ice", Some("x"));
    let e = bob_a.send_expect_error(stray, Some(&id)).await;
    assert_eq!(str_of(&e, "code"), "not_found");

    // Bob hangs up on b: Alice hears it; the call is gone on both nodes.
    bob_b
        .send(call_frame(&id, &alice.user_id, "hangup", None))
        .await;
    let h = expect_call(&mut alice_a, &id, "hangup").await;
    assert!(h.get("reason").is_none(), "relayed as written: {h}");
    let after = call_frame(&id, &alice.user_id, "ice", Some("z"));
    let e = bob_b.send_expect_error(after, Some(&id)).await;
    assert_eq!(str_of(&e, "code"), "not_found");
    let after = call_frame(&id, &bob.user_id, "ice", Some("z"));
    let e = alice_a.send_expect_error(after, Some(&id)).await;
    assert_eq!(str_of(&e, "code"), "not_found");

    // A second call, answered on b, whose socket then goes away: Alice
    // hears `disconnected`.
    let id2 = format!("call-{}", random_hex(4));
    alice_a
        .send(call_frame(&id2, &bob.user_id, "offer", Some("v=0 two")))
        .await;
    expect_call(&mut bob_b, &id2, "offer").await;
    bob_b
        .send(call_frame(&id2, &alice.user_id, "answer", Some("v=0 ok")))
        .await;
    expect_call(&mut alice_a, &id2, "answer").await;
    bob_b.close().await;
    let h = expect_call(&mut alice_a, &id2, "hangup").await;
    assert_eq!(str_of(&h, "reason"), "disconnected");
}

/// The webhook secret of the push test's nodes.
const SECRET: &str = "push-secret-cluster-3b1e";

#[tokio::test]
async fn a_user_online_on_no_node_gets_each_message_and_call_pushed_once() {
    let redis = Redis::start().await;
    let mut pushes = Hook::start(0).await;
    let args = ["--push-webhook-url", pushes.url.as_str()];
    let env = [("EPHEMERA_PUSH_WEBHOOK_SECRET", SECRET)];
    let a = start_node_with_env(&redis, "node-a", &args, &env).await;
    let b = start_node_with_env(&redis, "node-b", &args, &env).await;
    both_live(&a, &b, &["node-a", "node-b"]).await;
    let alice = register_user(&a.http(), "alice").await;
    let bob = register_user(&b.http(), "bob").await;
    let (_, mut alice_a) = device(&a, &alice, "alice@a").await;

    // Bob is online nowhere: one push for the message, from its owner.
    let first = send_text(&mut alice_a, &bob, "one").await;
    let p = pushes.next().await.json();
    assert_eq!(p["kind"], "message");
    assert_eq!(p["user_id"], bob.user_id.as_str());
    assert_eq!(p["from"], alice.user_id.as_str());
    assert_eq!(p["conversation_id"], first["conversation_id"]);
    assert_eq!(p["at"], first["sent_at"]);
    assert!(p.get("body").is_none(), "no content in a push: {p}");

    // Bob online on node b: no push for what he gets live.
    let (_, mut bob_b) = device(&b, &bob, "bob@b").await;
    registered(&redis, &bob, "node-b").await;
    let second = send_text(&mut alice_a, &bob, "two").await;
    bob_b
        .expect_about("message", str_of(&second, "msg_id"))
        .await;
    bob_b.close().await;
    let where_bob = format!("eph:where:{}", bob.user_id);
    await_redis(
        &redis,
        &["HLEN", &where_bob],
        "Bob gone from the registry",
        Duration::from_secs(5),
        |l| l == ["0"],
    )
    .await;

    // Online nowhere again: the next push is the third message's, so the
    // first was pushed once and the second not at all.
    let third = send_text(&mut alice_a, &bob, "three").await;
    let p = pushes.next().await.json();
    assert_eq!(p["kind"], "message");
    assert_eq!(p["at"], third["sent_at"], "{p}");

    // A call to Bob, online on no node, is pushed too.
    let id = format!("call-{}", random_hex(4));
    alice_a
        .send(call_frame(&id, &bob.user_id, "offer", Some("v=0 push")))
        .await;
    let p = pushes.next().await.json();
    assert_eq!(p["kind"], "call");
    assert_eq!(p["user_id"], bob.user_id.as_str());
    assert!(p.get("conversation_id").is_none(), "{p}");
    // Woken by the push, Bob connects to node b: the call rings there.
    let (_, mut bob_b) = device(&b, &bob, "bob@b again").await;
    let ring = expect_call(&mut bob_b, &id, "offer").await;
    assert_eq!(str_of(&ring, "data"), "v=0 push");
}
