//! Messaging over real sockets: fan-out to devices, receipts, history,
//! unsend, typing, presence, groups, dedup, ordering, sync and logout.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use common::socket::{QUIET, WAIT};
use common::{
    full_history, i64_of, is_about, is_type, new_cid, now_ms, random_hex, register_user, str_of,
    u64_of, Server, TestSocket,
};
use ephemera_load::client::{api_error, timed_text, Target};
use reqwest::Method;
use serde_json::{json, Value};

/// A timed message reaches both devices of the recipient and the sender's
/// other device (the sending device gets only the ack); receipts reach the
/// sender's devices; history has it; unsend burns it everywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timed_message_fans_out_with_receipts_history_and_unsend() {
    let server = Server::start(&[]).await;
    let http = server.http();
    let alice = register_user(&http, "alice").await;
    let bob = register_user(&http, "bob").await;
    let a1s = alice.login(&http).await;
    let a2s = alice.login(&http).await;
    let b1s = bob.login(&http).await;
    let b2s = bob.login(&http).await;
    assert_ne!(
        a1s.device_id, a2s.device_id,
        "each login must be a new device"
    );
    let mut a1 = TestSocket::connect(&server, &a1s, "alice-1").await;
    let mut a2 = TestSocket::connect(&server, &a2s, "alice-2").await;
    let mut b1 = TestSocket::connect(&server, &b1s, "bob-1").await;
    let mut b2 = TestSocket::connect(&server, &b2s, "bob-2").await;

    let cid = new_cid("hello");
    let before = now_ms();
    let ack = a1
        .send_ok(timed_text(
            &cid,
            Target::User(&bob.user_id),
            "hello bob",
            600,
        ))
        .await;
    let after = now_ms();
    assert_eq!(
        str_of(&ack, "client_msg_id"),
        cid,
        "ack echoes client_msg_id"
    );
    assert_eq!(str_of(&ack, "state"), "sent", "ack state");
    let msg_id = str_of(&ack, "msg_id").to_owned();
    let conv = str_of(&ack, "conversation_id").to_owned();
    let seq = u64_of(&ack, "seq");
    let sent_at = i64_of(&ack, "sent_at");
    let expires_at = i64_of(&ack, "expires_at");
    assert!(
        before - 1_000 <= sent_at && sent_at <= after + 1_000,
        "sent_at {sent_at} must be the server's clock at the send ({before}..{after})"
    );
    assert_eq!(
        expires_at,
        sent_at + 600_000,
        "expires_at = sent_at + ttl_seconds"
    );

    for device in [&mut b1, &mut b2, &mut a2] {
        let message = device.expect_about("message", &msg_id).await;
        let who = device.label().to_owned();
        assert_eq!(
            str_of(&message, "conversation_id"),
            conv,
            "{who}: conversation_id"
        );
        assert_eq!(u64_of(&message, "seq"), seq, "{who}: seq as acked");
        assert_eq!(str_of(&message, "from"), alice.user_id, "{who}: from");
        assert_eq!(
            i64_of(&message, "sent_at"),
            sent_at,
            "{who}: sent_at as acked"
        );
        assert_eq!(
            i64_of(&message, "expires_at"),
            expires_at,
            "{who}: expires_at as acked"
        );
        assert_eq!(
            str_of(&message, "view_policy"),
            "timed",
            "{who}: view_policy"
        );
        assert_eq!(str_of(&message, "body"), "hello bob", "{who}: body");
        u64_of(&message, "cursor");
    }

    // delivered: once per recipient user, whichever device says it.
    b1.send(json!({"type": "delivered", "msg_id": msg_id}))
        .await;
    for device in [&mut a1, &mut a2] {
        let receipt = device
            .expect("delivered receipt", |f| {
                is_about(f, "receipt", &msg_id) && f["state"] == "delivered"
            })
            .await;
        assert_eq!(
            str_of(&receipt, "by"),
            bob.user_id,
            "receipt.by is the recipient"
        );
        assert_eq!(
            str_of(&receipt, "conversation_id"),
            conv,
            "receipt.conversation_id"
        );
        u64_of(&receipt, "cursor");
    }
    b2.send(json!({"type": "delivered", "msg_id": msg_id}))
        .await;

    // read up to the message's seq.
    b1.send(json!({"type": "read", "conversation_id": conv, "up_to_seq": seq}))
        .await;
    for device in [&mut a1, &mut a2] {
        let receipt = device
            .expect("read receipt", |f| {
                is_type(f, "receipt")
                    && f["state"] == "read"
                    && f["conversation_id"] == conv.as_str()
            })
            .await;
        assert_eq!(u64_of(&receipt, "up_to_seq"), seq, "read receipt up_to_seq");
        assert_eq!(str_of(&receipt, "by"), bob.user_id, "read receipt by");
    }
    a1.assert_never(QUIET, "a `message` frame for its own send", |f| {
        is_about(f, "message", &msg_id)
    })
    .await;
    let delivered_receipts = a1
        .seen()
        .iter()
        .filter(|f| is_about(f, "receipt", &msg_id) && f["state"] == "delivered")
        .count();
    assert_eq!(
        delivered_receipts, 1,
        "a second device's `delivered` must not produce a second receipt"
    );

    // History, from both sides.
    for session in [&b1s, &a1s] {
        let history = full_history(&http, session, &conv).await;
        let entry = history
            .iter()
            .find(|m| m.msg_id == msg_id)
            .unwrap_or_else(|| panic!("history must hold the live message: {history:?}"));
        assert_eq!(entry.body.as_deref(), Some("hello bob"), "history body");
        assert_eq!(entry.seq, seq, "history seq");
        assert_eq!(entry.from, alice.user_id, "history from");
        assert_eq!(entry.sent_at, sent_at, "history sent_at");
        assert_eq!(entry.expires_at, expires_at, "history expires_at");
        assert_eq!(entry.view_policy, "timed", "history view_policy");
    }
    let conversations = http
        .list_conversations(&b1s)
        .await
        .expect("list conversations");
    let listed = conversations
        .iter()
        .find(|c| c.conversation_id == conv)
        .unwrap_or_else(|| panic!("bob's conversation list must hold {conv}: {conversations:?}"));
    let members: HashSet<&str> = listed.members.iter().map(String::as_str).collect();
    assert_eq!(
        members,
        HashSet::from([alice.user_id.as_str(), bob.user_id.as_str()]),
        "direct conversation members"
    );
    assert!(
        listed.last_seq >= seq,
        "last_seq {} >= {seq}",
        listed.last_seq
    );
    if let Some(kind) = &listed.kind {
        assert_eq!(kind, "direct", "a `to` conversation is direct");
    }

    // Unsend burns on every device of both users.
    a1.send(json!({"type": "unsend", "msg_id": msg_id})).await;
    for device in [&mut a1, &mut a2, &mut b1, &mut b2] {
        let burned = device.expect_about("burned", &msg_id).await;
        assert_eq!(
            str_of(&burned, "reason"),
            "unsent",
            "{}: burn reason",
            device.label()
        );
        assert_eq!(
            str_of(&burned, "conversation_id"),
            conv,
            "burned.conversation_id"
        );
        u64_of(&burned, "cursor");
    }
    let history = full_history(&http, &b1s, &conv).await;
    assert!(
        history.iter().all(|m| m.msg_id != msg_id),
        "an unsent message must leave history: {history:?}"
    );
}

/// Typing reaches the other member; presence goes online on connect and
/// offline (with last_seen) on close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typing_and_presence() {
    let server = Server::start(&[]).await;
    let http = server.http();
    let alice = register_user(&http, "alice").await;
    let bob = register_user(&http, "bob").await;
    let a1s = alice.login(&http).await;
    let b1s = bob.login(&http).await;
    let mut a1 = TestSocket::connect(&server, &a1s, "alice-1").await;

    // A conversation both have spoken in, so each sees the other's
    // presence (presence goes only from those who speak in a conversation).
    let ack = a1
        .send_ok(timed_text(
            &new_cid("intro"),
            Target::User(&bob.user_id),
            "hi",
            600,
        ))
        .await;
    let conv = str_of(&ack, "conversation_id").to_owned();
    let mut b0 = TestSocket::connect(&server, &b1s, "bob-0").await;
    b0.send_ok(timed_text(
        &new_cid("reply"),
        Target::User(&alice.user_id),
        "hello",
        600,
    ))
    .await;
    b0.close().await;
    a1.expect("presence offline of bob, who has now spoken", |f| {
        is_type(f, "presence") && f["user_id"] == bob.user_id.as_str() && f["status"] == "offline"
    })
    .await;

    let mut b1 = TestSocket::connect(&server, &b1s, "bob-1").await;
    a1.expect("presence online of bob", |f| {
        is_type(f, "presence") && f["user_id"] == bob.user_id.as_str() && f["status"] == "online"
    })
    .await;
    b1.expect("presence online of alice, sent on connect", |f| {
        is_type(f, "presence") && f["user_id"] == alice.user_id.as_str() && f["status"] == "online"
    })
    .await;

    a1.typing(&conv, true).await;
    let typing = b1.expect_type("typing").await;
    assert_eq!(
        str_of(&typing, "conversation_id"),
        conv,
        "typing.conversation_id"
    );
    assert_eq!(str_of(&typing, "user_id"), alice.user_id, "typing.user_id");
    assert_eq!(typing["is_typing"], true, "typing.is_typing");
    b1.typing(&conv, false).await;
    let typing = a1.expect_type("typing").await;
    assert_eq!(str_of(&typing, "user_id"), bob.user_id, "typing.user_id");
    assert_eq!(typing["is_typing"], false, "typing.is_typing");

    let closed_at = now_ms();
    b1.close().await;
    let offline = a1
        .expect("presence offline of bob", |f| {
            is_type(f, "presence")
                && f["user_id"] == bob.user_id.as_str()
                && f["status"] == "offline"
        })
        .await;
    let last_seen = i64_of(&offline, "last_seen");
    assert!(
        closed_at - 5_000 <= last_seen && last_seen <= now_ms() + 1_000,
        "last_seen {last_seen} must be about when bob left ({closed_at})"
    );
    a1.assert_never(QUIET, "its own typing indicator", |f| {
        is_type(f, "typing") && f["user_id"] == alice.user_id.as_str()
    })
    .await;
}

/// A group of three: every message reaches the two other members.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_conversation_fans_out_to_everyone() {
    let server = Server::start(&[]).await;
    let http = server.http();
    let alice = register_user(&http, "alice").await;
    let bob = register_user(&http, "bob").await;
    let carol = register_user(&http, "carol").await;
    let (as_, bs, cs) = (
        alice.login(&http).await,
        bob.login(&http).await,
        carol.login(&http).await,
    );
    let conv = http
        .create_group(&as_, &[&bob.user_id, &carol.user_id], Some("trio"))
        .await
        .expect("create group");

    let listed = http
        .list_conversations(&cs)
        .await
        .expect("carol's conversations");
    let group = listed
        .iter()
        .find(|c| c.conversation_id == conv)
        .unwrap_or_else(|| panic!("carol must see the group: {listed:?}"));
    let members: HashSet<&str> = group.members.iter().map(String::as_str).collect();
    assert_eq!(
        members,
        HashSet::from([
            alice.user_id.as_str(),
            bob.user_id.as_str(),
            carol.user_id.as_str()
        ]),
        "the creator is a member too"
    );
    assert_eq!(
        group.kind.as_deref(),
        Some("group"),
        "kind of a created conversation"
    );
    assert_eq!(group.name.as_deref(), Some("trio"), "group name");

    let mut a = TestSocket::connect(&server, &as_, "alice").await;
    let mut b = TestSocket::connect(&server, &bs, "bob").await;
    let mut c = TestSocket::connect(&server, &cs, "carol").await;

    let ack = a
        .send_ok(timed_text(
            &new_cid("g1"),
            Target::Conversation(&conv),
            "hello group",
            600,
        ))
        .await;
    assert_eq!(str_of(&ack, "conversation_id"), conv, "ack names the group");
    let first = str_of(&ack, "msg_id").to_owned();
    let first_seq = u64_of(&ack, "seq");
    for device in [&mut b, &mut c] {
        let message = device.expect_about("message", &first).await;
        assert_eq!(str_of(&message, "from"), alice.user_id, "from");
        assert_eq!(str_of(&message, "body"), "hello group", "body");
        assert_eq!(str_of(&message, "conversation_id"), conv, "conversation_id");
    }

    let ack = b
        .send_ok(timed_text(
            &new_cid("g2"),
            Target::Conversation(&conv),
            "reply",
            600,
        ))
        .await;
    let second = str_of(&ack, "msg_id").to_owned();
    assert!(
        u64_of(&ack, "seq") > first_seq,
        "a later message gets a later seq"
    );
    for device in [&mut a, &mut c] {
        let message = device.expect_about("message", &second).await;
        assert_eq!(str_of(&message, "from"), bob.user_id, "from");
        assert_eq!(str_of(&message, "body"), "reply", "body");
    }
    a.assert_never(QUIET, "its own message", |f| is_about(f, "message", &first))
        .await;
    b.assert_never(QUIET, "its own message", |f| {
        is_about(f, "message", &second)
    })
    .await;
}

/// Resending a client_msg_id returns the first ack and stores nothing new.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_client_msg_id_is_acked_once_and_delivered_once() {
    let server = Server::start(&[]).await;
    let http = server.http();
    let alice = register_user(&http, "alice").await;
    let bob = register_user(&http, "bob").await;
    let a1s = alice.login(&http).await;
    let a2s = alice.login(&http).await;
    let b1s = bob.login(&http).await;
    let mut a1 = TestSocket::connect(&server, &a1s, "alice-1").await;
    let mut a2 = TestSocket::connect(&server, &a2s, "alice-2").await;
    let mut b1 = TestSocket::connect(&server, &b1s, "bob-1").await;

    let frame = timed_text(
        &new_cid("dup"),
        Target::User(&bob.user_id),
        "only once",
        600,
    );
    let first = a1.send_ok(frame.clone()).await;
    let again = a1.send_ok(frame.clone()).await;
    let other_device = a2.send_ok(frame.clone()).await;
    for key in [
        "client_msg_id",
        "msg_id",
        "conversation_id",
        "seq",
        "state",
        "sent_at",
        "expires_at",
    ] {
        assert_eq!(first[key], again[key], "resent ack must repeat `{key}`");
        assert_eq!(
            first[key], other_device[key],
            "resent ack from the user's other device must repeat `{key}`"
        );
    }
    let msg_id = str_of(&first, "msg_id").to_owned();
    let conv = str_of(&first, "conversation_id").to_owned();

    // A marker after the duplicates: once it arrived, any duplicate would have.
    let marker = a1
        .send_ok(timed_text(
            &new_cid("marker"),
            Target::User(&bob.user_id),
            "marker",
            600,
        ))
        .await;
    assert!(
        u64_of(&marker, "seq") > u64_of(&first, "seq"),
        "the next message gets a later seq"
    );
    let marker_id = str_of(&marker, "msg_id").to_owned();
    b1.expect_about("message", &marker_id).await;
    b1.assert_never(QUIET, "nothing", |_| false).await;
    let copies = b1
        .seen()
        .iter()
        .filter(|f| is_about(f, "message", &msg_id))
        .count();
    assert_eq!(copies, 1, "the recipient must get the message exactly once");

    let history = full_history(&http, &b1s, &conv).await;
    let ids: Vec<&str> = history.iter().map(|m| m.msg_id.as_str()).collect();
    assert_eq!(
        ids,
        vec![msg_id.as_str(), marker_id.as_str()],
        "history holds the message once, then the marker"
    );
}

/// Two devices of one user send 50 messages each, concurrently: distinct
/// seqs, and the recipient sees seqs and cursors strictly increasing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_sends_are_totally_ordered() {
    const EACH: usize = 50;
    let server = Server::start(&[]).await;
    let http = server.http();
    let alice = register_user(&http, "alice").await;
    let bob = register_user(&http, "bob").await;
    let a1s = alice.login(&http).await;
    let a2s = alice.login(&http).await;
    let b1s = bob.login(&http).await;
    let a1 = TestSocket::connect(&server, &a1s, "alice-1").await;
    let a2 = TestSocket::connect(&server, &a2s, "alice-2").await;
    let mut b1 = TestSocket::connect(&server, &b1s, "bob-1").await;

    let one = tokio::spawn(blast(a1, bob.user_id.clone(), "one", EACH));
    let two = tokio::spawn(blast(a2, bob.user_id.clone(), "two", EACH));
    let (mut a1, acks_one) = one.await.expect("device one's task");
    let (mut a2, acks_two) = two.await.expect("device two's task");

    for (label, acks) in [("alice-1", &acks_one), ("alice-2", &acks_two)] {
        for pair in acks.windows(2) {
            assert!(
                u64_of(&pair[0], "seq") < u64_of(&pair[1], "seq"),
                "{label}: one socket's sends get seqs in send order: {} then {}",
                pair[0],
                pair[1]
            );
        }
    }
    let all_acks: Vec<&Value> = acks_one.iter().chain(&acks_two).collect();
    let seqs: HashSet<u64> = all_acks.iter().map(|a| u64_of(a, "seq")).collect();
    assert_eq!(seqs.len(), 2 * EACH, "every ack must have a distinct seq");
    let convs: HashSet<&str> = all_acks
        .iter()
        .copied()
        .map(|a| str_of(a, "conversation_id"))
        .collect();
    assert_eq!(convs.len(), 1, "all went to one conversation");
    let conv = convs.into_iter().next().unwrap_or_default().to_owned();
    let acked: HashMap<String, u64> = all_acks
        .iter()
        .map(|a| (str_of(a, "msg_id").to_owned(), u64_of(a, "seq")))
        .collect();

    // The recipient: all 100, seqs and cursors strictly increasing.
    let mut got = HashSet::new();
    while got.len() < 2 * EACH {
        let message = b1
            .expect_within(Duration::from_secs(30), "the next message", |f| {
                is_type(f, "message")
            })
            .await;
        got.insert(str_of(&message, "msg_id").to_owned());
    }
    b1.assert_never(QUIET, "nothing", |_| false).await;
    let messages: Vec<&Value> = b1.seen().iter().filter(|f| is_type(f, "message")).collect();
    assert_eq!(messages.len(), 2 * EACH, "no duplicates, nothing extra");
    for message in &messages {
        let id = str_of(message, "msg_id");
        assert_eq!(
            acked.get(id),
            Some(&u64_of(message, "seq")),
            "every delivered message was acked with the same seq: {message}"
        );
    }
    for pair in messages.windows(2) {
        assert!(
            u64_of(pair[0], "seq") < u64_of(pair[1], "seq"),
            "seqs must arrive strictly increasing: {} then {}",
            pair[0],
            pair[1]
        );
        assert!(
            u64_of(pair[0], "cursor") < u64_of(pair[1], "cursor"),
            "cursors must arrive strictly increasing: {} then {}",
            pair[0],
            pair[1]
        );
    }

    // The senders' devices see each other's messages, cursors increasing.
    for device in [&mut a1, &mut a2] {
        device.assert_never(QUIET, "nothing", |_| false).await;
        let cursors: Vec<u64> = device
            .seen()
            .iter()
            .filter(|f| f.get("cursor").is_some() && !is_type(f, "synced"))
            .map(|f| u64_of(f, "cursor"))
            .collect();
        assert_eq!(
            cursors.len(),
            EACH,
            "{}: the other device's {EACH} messages",
            device.label()
        );
        assert!(
            cursors.windows(2).all(|w| w[0] < w[1]),
            "{}: cursors must be strictly increasing: {cursors:?}",
            device.label()
        );
    }

    let history = full_history(&http, &b1s, &conv).await;
    let history_ids: HashSet<&str> = history.iter().map(|m| m.msg_id.as_str()).collect();
    let acked_ids: HashSet<&str> = acked.keys().map(String::as_str).collect();
    assert_eq!(
        history_ids, acked_ids,
        "history holds exactly the acked messages"
    );
}

/// Send `n` messages to `to` as fast as possible, then collect their acks;
/// the acks come back in send order of their client_msg_ids.
async fn blast(
    mut socket: TestSocket,
    to: String,
    tag: &str,
    n: usize,
) -> (TestSocket, Vec<Value>) {
    let run = random_hex(3);
    let cids: Vec<String> = (0..n).map(|i| format!("{tag}-{run}-{i:03}")).collect();
    for (i, cid) in cids.iter().enumerate() {
        socket
            .send(timed_text(
                cid,
                Target::User(&to),
                &format!("{tag} #{i}"),
                600,
            ))
            .await;
    }
    let mut acks: HashMap<String, Value> = HashMap::new();
    while acks.len() < n {
        let frame = socket
            .expect_within(Duration::from_secs(30), "ack", |f| {
                is_type(f, "ack") || is_type(f, "error")
            })
            .await;
        assert!(
            is_type(&frame, "ack"),
            "{}: send failed: {frame}",
            socket.label()
        );
        acks.insert(str_of(&frame, "client_msg_id").to_owned(), frame);
    }
    let ordered = cids
        .iter()
        .map(|cid| {
            acks.remove(cid)
                .unwrap_or_else(|| panic!("no ack for {cid}"))
        })
        .collect();
    (socket, ordered)
}

/// A device that was offline syncs from its last cursor (and a new device
/// from 0) and gets exactly the missed events in cursor order, then `synced`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_device_syncs_exactly_what_it_missed() {
    let server = Server::start(&[]).await;
    let http = server.http();
    let alice = register_user(&http, "alice").await;
    let bob = register_user(&http, "bob").await;
    let a1s = alice.login(&http).await;
    let b1s = bob.login(&http).await;
    let b2s = bob.login(&http).await;
    let mut a1 = TestSocket::connect(&server, &a1s, "alice-1").await;
    let mut b1 = TestSocket::connect(&server, &b1s, "bob-1").await;

    // bob-2 learns its cursor, then goes offline.
    let mut b2 = TestSocket::connect(&server, &b2s, "bob-2").await;
    let initial = b2.sync(0).await;
    assert!(
        initial.events.is_empty(),
        "a fresh user has no events: {:?}",
        initial.events
    );
    let last_cursor = initial.cursor;
    b2.close().await;

    let mut sent = Vec::new();
    for i in 0..3 {
        let body = format!("missed #{i}");
        let ack = a1
            .send_ok(timed_text(
                &new_cid("missed"),
                Target::User(&bob.user_id),
                &body,
                600,
            ))
            .await;
        sent.push((str_of(&ack, "msg_id").to_owned(), body));
    }
    let mut live_cursors = Vec::new();
    for (id, _) in &sent {
        live_cursors.push(u64_of(&b1.expect_about("message", id).await, "cursor"));
    }
    let unsent = sent[2].0.clone();
    a1.send(json!({"type": "unsend", "msg_id": unsent})).await;
    let burned_live = b1.expect_about("burned", &unsent).await;
    let burned_cursor = u64_of(&burned_live, "cursor");
    assert!(
        live_cursors.windows(2).all(|w| w[0] < w[1]) && live_cursors[2] < burned_cursor,
        "live cursors must increase: {live_cursors:?} then {burned_cursor}"
    );

    let check = |who: &str, synced: &common::socket::Synced| {
        let summary: Vec<String> = synced.events.iter().map(|f| f.to_string()).collect();
        assert_eq!(
            synced.events.len(),
            3,
            "{who}: exactly two messages and one burn, got:\n{}",
            summary.join("\n")
        );
        for (i, (id, body)) in sent.iter().take(2).enumerate() {
            let event = &synced.events[i];
            assert!(
                is_about(event, "message", id),
                "{who}: event {i} is message {id}: {event}"
            );
            assert_eq!(str_of(event, "body"), body.as_str(), "{who}: body of {id}");
            assert_eq!(
                u64_of(event, "cursor"),
                live_cursors[i],
                "{who}: cursor of {id}"
            );
        }
        let burn = &synced.events[2];
        assert!(
            is_about(burn, "burned", &unsent),
            "{who}: the unsent message comes as burned: {burn}"
        );
        assert_eq!(str_of(burn, "reason"), "unsent", "{who}: burn reason");
        let cursor = u64_of(burn, "cursor");
        assert!(
            cursor == live_cursors[2] || cursor == burned_cursor,
            "{who}: the burn sits at the message's or the unsend's cursor, got {cursor}"
        );
        assert!(
            synced.cursor >= burned_cursor,
            "{who}: synced cursor {} must cover the last event {burned_cursor}",
            synced.cursor
        );
    };

    let mut b2 = TestSocket::connect(&server, &b2s, "bob-2 again").await;
    let missed = b2.sync(last_cursor).await;
    check("bob-2 from its cursor", &missed);
    b2.assert_never(QUIET, "the unsent message as `message`", |f| {
        is_about(f, "message", &unsent)
    })
    .await;
    let nothing_more = b2.sync(missed.cursor).await;
    assert!(
        nothing_more.events.is_empty(),
        "a sync from the latest cursor returns nothing: {:?}",
        nothing_more.events
    );
    assert_eq!(
        nothing_more.cursor, missed.cursor,
        "cursor does not move without events"
    );

    let b3s = bob.login(&http).await;
    let mut b3 = TestSocket::connect(&server, &b3s, "bob-3 (new)").await;
    let everything = b3.sync(0).await;
    check("bob-3 from 0", &everything);

    // A replay never silences the live stream: after syncing from a
    // cursor far past the last event (a confused client), and after
    // syncing everything, a new message is still pushed, exactly once.
    let far = b3.sync(1_000_000_000).await;
    assert!(
        far.events.is_empty(),
        "nothing past a far cursor: {:?}",
        far.events
    );
    let ack = a1
        .send_ok(timed_text(
            &new_cid("after-sync"),
            Target::User(&bob.user_id),
            "after the syncs",
            600,
        ))
        .await;
    let id = str_of(&ack, "msg_id").to_owned();
    for dev in [&mut b2, &mut b3] {
        dev.expect_about("message", &id).await;
        dev.assert_never(QUIET, "nothing", |_| false).await;
        let copies = dev
            .seen()
            .iter()
            .filter(|f| is_about(f, "message", &id))
            .count();
        assert_eq!(copies, 1, "{}: the new message exactly once", dev.label());
    }
}

/// Logout closes the token's sockets with 4401 and the token gets 401;
/// the user's other session is unharmed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_closes_sockets_and_kills_the_token() {
    let server = Server::start(&[]).await;
    let http = server.http();
    let alice = register_user(&http, "alice").await;
    let s1 = alice.login(&http).await;
    let s2 = alice.login(&http).await;
    let mut by_header = TestSocket::connect(&server, &s1, "alice-1 (header)").await;
    let mut by_query = TestSocket::connect_query(&server, &s1, "alice-1 (?token=)").await;
    let mut other = TestSocket::connect(&server, &s2, "alice-2").await;

    let answer = http
        .raw(
            Method::DELETE,
            "/api/v1/sessions/current",
            Some(&s1.token),
            None,
        )
        .await
        .expect("logout call");
    assert_eq!(answer.status, 204, "logout answers 204: {answer:?}");

    assert_eq!(
        by_header.expect_closed(WAIT).await,
        Some(4401),
        "header socket close code"
    );
    assert_eq!(
        by_query.expect_closed(WAIT).await,
        Some(4401),
        "query socket close code"
    );

    let err = http
        .list_conversations(&s1)
        .await
        .expect_err("a logged-out token must not work");
    let api = api_error(&err).unwrap_or_else(|| panic!("expected an HTTP error, got {err:#}"));
    assert_eq!(api.status, 401, "logged-out token status");
    assert_eq!(
        api.code.as_deref(),
        Some("unauthorized"),
        "logged-out token code"
    );

    let mut again =
        TestSocket::connect_unchecked(&server, Some(&s1.token), false, "alice-1 again").await;
    assert_eq!(
        again.expect_closed(WAIT).await,
        Some(4401),
        "a new socket with the dead token is closed with 4401"
    );

    http.list_conversations(&s2)
        .await
        .expect("the other session keeps working");
    other.ping().await;
}
