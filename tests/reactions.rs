//! Reactions to messages (PROTOCOL 11) over real sockets: a reaction
//! reaches every device of every member, is replaced, taken back with
//! `null`, replayed by `sync` while its message lives, and burns with the
//! message (unsend, expiry, view-once): never replayed or delivered after.
//! Refused for a non-member, an unknown message, and a too-long emoji.

mod common;

use std::time::Duration;

use common::socket::QUIET;
use common::{is_type, new_cid, register_user, str_of, u64_of, Server, TestSocket, TestUser};
use ephemera_load::client::{timed_text, Http, Target};
use serde_json::{json, Value};

fn react(msg_id: &str, emoji: Option<&str>) -> Value {
    json!({ "type": "react", "msg_id": msg_id, "emoji": emoji })
}

fn is_reaction(frame: &Value, msg_id: &str, by: &str, emoji: Option<&str>) -> bool {
    is_type(frame, "reaction")
        && frame["msg_id"] == msg_id
        && frame["by"] == by
        && frame["emoji"] == json!(emoji)
}

/// Every socket in `socks` gets the `reaction` of `by` to `msg_id` with
/// `emoji`, with the message's conversation and a cursor.
async fn all_get(
    socks: &mut [&mut TestSocket],
    msg_id: &str,
    conv: &str,
    by: &str,
    emoji: Option<&str>,
) {
    for sock in socks.iter_mut() {
        let frame = sock
            .expect(&format!("reaction {emoji:?} of {by} to {msg_id}"), |f| {
                is_reaction(f, msg_id, by, emoji)
            })
            .await;
        assert_eq!(
            str_of(&frame, "conversation_id"),
            conv,
            "{}: {frame}",
            sock.label()
        );
        assert!(u64_of(&frame, "cursor") > 0, "{}: {frame}", sock.label());
    }
}

/// What a brand-new device of `user` gets from `sync` after 0: the
/// replayed events that are about `msg_id`.
async fn replayed_about(server: &Server, http: &Http, user: &TestUser, msg_id: &str) -> Vec<Value> {
    let session = user.login(http).await;
    let mut sock = TestSocket::connect(server, &session, "fresh device").await;
    let synced = sock.sync(0).await;
    synced
        .events
        .into_iter()
        .filter(|f| f["msg_id"] == msg_id)
        .collect()
}

/// In a group of three (alice and bob with two devices each, carol with
/// one), reactions reach every device of every member, the reactor's own
/// included; a second reaction replaces the first, `null` takes it back,
/// and `sync` replays the reactions as they stand. Unsent, the message
/// takes its reactions: a fresh device's sync shows none, and a reaction
/// to it is refused and told to nobody.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reactions_reach_every_device_and_burn_with_unsend() {
    let server = Server::start(&[]).await;
    let http = server.http();
    let alice = register_user(&http, "alice").await;
    let bob = register_user(&http, "bob").await;
    let carol = register_user(&http, "carol").await;
    let a1s = alice.login(&http).await;
    let a2s = alice.login(&http).await;
    let b1s = bob.login(&http).await;
    let b2s = bob.login(&http).await;
    let c1s = carol.login(&http).await;
    let group = http
        .create_group(&a1s, &[&bob.user_id, &carol.user_id], None)
        .await
        .expect("creating the group");
    let mut a1 = TestSocket::connect(&server, &a1s, "alice-1").await;
    let mut a2 = TestSocket::connect(&server, &a2s, "alice-2").await;
    let mut b1 = TestSocket::connect(&server, &b1s, "bob-1").await;
    let mut b2 = TestSocket::connect(&server, &b2s, "bob-2").await;
    let mut c1 = TestSocket::connect(&server, &c1s, "carol-1").await;

    let ack = a1
        .send_ok(timed_text(
            &new_cid("r"),
            Target::Conversation(&group),
            "react to me",
            600,
        ))
        .await;
    let msg_id = str_of(&ack, "msg_id").to_owned();
    for sock in [&mut b1, &mut b2, &mut c1] {
        sock.expect_about("message", &msg_id).await;
    }

    b1.send(react(&msg_id, Some("👍"))).await;
    let mut every = [&mut a1, &mut a2, &mut b1, &mut b2, &mut c1];
    all_get(&mut every, &msg_id, &group, &bob.user_id, Some("👍")).await;
    // Replaced.
    every[3].send(react(&msg_id, Some("❤️"))).await;
    all_get(&mut every, &msg_id, &group, &bob.user_id, Some("❤️")).await;
    every[4].send(react(&msg_id, Some("😂"))).await;
    all_get(&mut every, &msg_id, &group, &carol.user_id, Some("😂")).await;
    // The sender may react to their own message too.
    every[1].send(react(&msg_id, Some("🔥"))).await;
    all_get(&mut every, &msg_id, &group, &alice.user_id, Some("🔥")).await;
    // Taken back.
    every[2].send(react(&msg_id, None)).await;
    all_get(&mut every, &msg_id, &group, &bob.user_id, None).await;

    // Replayed while the message lives, as the reactions now stand: the
    // last reaction frame of each member says what it is.
    let replay = replayed_about(&server, &http, &carol, &msg_id).await;
    let last = |by: &str| {
        replay
            .iter()
            .filter(|f| is_type(f, "reaction") && f["by"] == by)
            .last()
            .unwrap_or_else(|| panic!("sync replays the reactions of {by}: {replay:?}"))["emoji"]
            .clone()
    };
    assert_eq!(
        last(&bob.user_id),
        Value::Null,
        "bob took his back: {replay:?}"
    );
    assert_eq!(last(&carol.user_id), json!("😂"), "{replay:?}");
    assert_eq!(last(&alice.user_id), json!("🔥"), "{replay:?}");
    assert!(replay.iter().any(|f| is_type(f, "message")), "{replay:?}");

    // Unsent: the reactions burn with it.
    every[0]
        .send(json!({ "type": "unsend", "msg_id": msg_id }))
        .await;
    for sock in every.iter_mut() {
        sock.expect_about("burned", &msg_id).await;
    }
    let replay = replayed_about(&server, &http, &bob, &msg_id).await;
    assert!(
        replay.iter().all(|f| !is_type(f, "reaction")),
        "no reaction replayed after the message burned: {replay:?}"
    );
    assert!(replay.iter().any(|f| is_type(f, "burned")), "{replay:?}");
    let error = every[4]
        .send_expect_error(react(&msg_id, Some("👀")), Some(&msg_id))
        .await;
    assert_eq!(str_of(&error, "code"), "not_found", "{error}");
    for sock in every.iter_mut() {
        sock.assert_never(QUIET, "a reaction after the burn", |f| {
            is_type(f, "reaction") && f["emoji"] == "👀"
        })
        .await;
    }
}

/// A message that expires, and a view-once message that is opened, take
/// their reactions with them: a fresh device's sync replays none, and a
/// reaction after is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reactions_burn_at_expiry_and_with_a_view_once_open() {
    let server = Server::start(&[]).await;
    let http = server.http();
    let alice = register_user(&http, "alice").await;
    let bob = register_user(&http, "bob").await;
    let a1s = alice.login(&http).await;
    let b1s = bob.login(&http).await;
    let mut a1 = TestSocket::connect(&server, &a1s, "alice-1").await;
    let mut b1 = TestSocket::connect(&server, &b1s, "bob-1").await;

    // Expiry: a 4-second message.
    let ack = a1
        .send_ok(timed_text(
            &new_cid("exp"),
            Target::User(&bob.user_id),
            "short",
            4,
        ))
        .await;
    let short = str_of(&ack, "msg_id").to_owned();
    let conv = str_of(&ack, "conversation_id").to_owned();
    b1.expect_about("message", &short).await;
    b1.send(react(&short, Some("⏳"))).await;
    all_get(
        &mut [&mut a1, &mut b1],
        &short,
        &conv,
        &bob.user_id,
        Some("⏳"),
    )
    .await;
    assert!(
        replayed_about(&server, &http, &alice, &short)
            .await
            .iter()
            .any(|f| is_reaction(f, &short, &bob.user_id, Some("⏳"))),
        "replayed while the message lives"
    );
    for sock in [&mut a1, &mut b1] {
        let burned = sock
            .expect_within(Duration::from_secs(10), "burned at expiry", |f| {
                common::is_about(f, "burned", &short)
            })
            .await;
        assert_eq!(str_of(&burned, "reason"), "expired");
    }
    let replay = replayed_about(&server, &http, &alice, &short).await;
    assert!(
        replay.iter().all(|f| !is_type(f, "reaction")),
        "no reaction replayed after expiry: {replay:?}"
    );
    let error = b1
        .send_expect_error(react(&short, Some("👻")), Some(&short))
        .await;
    assert_eq!(str_of(&error, "code"), "not_found", "{error}");

    // View-once: reacted to before it is opened, gone once it is.
    let once = json!({
        "type": "send",
        "client_msg_id": new_cid("once"),
        "to": bob.user_id,
        "body": "once only",
        "view_policy": "once",
        "ttl_seconds": 600,
    });
    let ack = a1.send_ok(once).await;
    let once_id = str_of(&ack, "msg_id").to_owned();
    b1.expect_about("message", &once_id).await;
    a1.send(react(&once_id, Some("🙈"))).await;
    all_get(
        &mut [&mut a1, &mut b1],
        &once_id,
        &conv,
        &alice.user_id,
        Some("🙈"),
    )
    .await;
    b1.send(json!({ "type": "view", "msg_id": once_id })).await;
    let result = b1.expect_about("view_result", &once_id).await;
    assert_eq!(str_of(&result, "result"), "granted", "{result}");
    a1.expect_about("burned", &once_id).await;
    let replay = replayed_about(&server, &http, &bob, &once_id).await;
    assert!(
        replay.iter().all(|f| !is_type(f, "reaction")),
        "no reaction replayed after the view-once burned: {replay:?}"
    );
    let error = a1
        .send_expect_error(react(&once_id, Some("🙉")), Some(&once_id))
        .await;
    assert_eq!(str_of(&error, "code"), "not_found", "{error}");
    for sock in [&mut a1, &mut b1] {
        sock.assert_never(QUIET, "a reaction after a burn", |f| {
            is_type(f, "reaction") && (f["emoji"] == "👻" || f["emoji"] == "🙉")
        })
        .await;
    }
}

/// Refusals: someone not in the conversation (answered as an unknown
/// message, and told to nobody), an unknown message, an emoji over 32
/// bytes or empty (`invalid`), and a `react` without `emoji` (`bad_frame`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reactions_refused_for_outsiders_unknown_messages_and_long_emoji() {
    let server = Server::start(&[]).await;
    let http = server.http();
    let alice = register_user(&http, "alice").await;
    let bob = register_user(&http, "bob").await;
    let mallory = register_user(&http, "mallory").await;
    let mut a1 = TestSocket::connect(&server, &alice.login(&http).await, "alice-1").await;
    let mut b1 = TestSocket::connect(&server, &bob.login(&http).await, "bob-1").await;
    let mut m1 = TestSocket::connect(&server, &mallory.login(&http).await, "mallory-1").await;
    let ack = a1
        .send_ok(timed_text(
            &new_cid("x"),
            Target::User(&bob.user_id),
            "private",
            600,
        ))
        .await;
    let msg_id = str_of(&ack, "msg_id").to_owned();
    b1.expect_about("message", &msg_id).await;

    let error = m1
        .send_expect_error(react(&msg_id, Some("😈")), Some(&msg_id))
        .await;
    assert_eq!(str_of(&error, "code"), "not_found", "a non-member: {error}");
    // The next seq of the same conversation: no such message (yet).
    let next = format!(
        "{}{:016x}",
        &msg_id[..32],
        u64::from_str_radix(&msg_id[32..], 16).unwrap() + 1
    );
    let error = b1
        .send_expect_error(react(&next, Some("👍")), Some(&next))
        .await;
    assert_eq!(
        str_of(&error, "code"),
        "not_found",
        "an unknown message: {error}"
    );
    let error = b1
        .send_expect_error(
            react("not-a-message-id", Some("👍")),
            Some("not-a-message-id"),
        )
        .await;
    assert_eq!(
        str_of(&error, "code"),
        "not_found",
        "a malformed id: {error}"
    );
    // Nine 4-byte emoji: 36 bytes, 9 characters.
    let long = "👍".repeat(9);
    let error = b1
        .send_expect_error(react(&msg_id, Some(&long)), Some(&msg_id))
        .await;
    assert_eq!(str_of(&error, "code"), "invalid", "36 bytes: {error}");
    // Empty: off the schema, so sent raw.
    b1.send_raw(&react(&msg_id, Some("")).to_string())
        .await
        .expect("sending");
    let error = b1.expect_error(Some(&msg_id)).await;
    assert_eq!(str_of(&error, "code"), "invalid", "empty: {error}");
    b1.send_raw(&json!({ "type": "react", "msg_id": msg_id }).to_string())
        .await
        .expect("sending");
    let error = b1.expect_error(Some(&msg_id)).await;
    assert_eq!(
        str_of(&error, "code"),
        "bad_frame",
        "no emoji field: {error}"
    );
    // Eight 4-byte emoji (32 bytes) are the most there is room for.
    let most = "👍".repeat(8);
    b1.send(react(&msg_id, Some(&most))).await;
    all_get(
        &mut [&mut a1, &mut b1],
        &msg_id,
        &str_of(&ack, "conversation_id").to_owned(),
        &bob.user_id,
        Some(&most),
    )
    .await;
    for sock in [&mut a1, &mut b1, &mut m1] {
        sock.assert_never(QUIET, "a refused reaction", |f| {
            is_type(f, "reaction") && f["emoji"] != most.as_str()
        })
        .await;
    }
}
