//! TTL expiry: readable before, gone after (history, sync, live), burned on
//! time, never delivered late, and physically gone from SST files after
//! compaction.

mod common;

use std::time::Duration;

use common::socket::{QUIET, WAIT};
use common::{
    full_history, i64_of, is_about, new_cid, now_ms, random_hex, register_user, scan_files,
    sleep_until_ms, str_of, Server, TestSocket,
};
use ephemera_load::client::{timed_text, Target};

/// How late after `expires_at` a `burned` may reach an online device: the
/// contract's 100 ms plus clock and scheduling granularity.
const BURN_LAG_BOUND_MS: i64 = 150;

/// How early a `burned` may arrive (clock granularity only).
const BURN_EARLY_BOUND_MS: i64 = -50;

/// A 2-second message: live in history, sync and on sockets before; burned
/// on every online device within the bound; gone from history and replaced
/// by `burned` in sync after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_ttl_message_is_readable_then_burned_on_time() {
    let server = Server::start(&[]).await;
    let http = server.http();
    let alice = register_user(&http, "alice").await;
    let bob = register_user(&http, "bob").await;
    let a1s = alice.login(&http).await;
    let b1s = bob.login(&http).await;
    let mut a1 = TestSocket::connect(&server, &a1s, "alice-1").await;
    let mut b1 = TestSocket::connect(&server, &b1s, "bob-1").await;

    let ack = a1
        .send_ok(timed_text(
            &new_cid("short"),
            Target::User(&bob.user_id),
            "short lived",
            2,
        ))
        .await;
    let msg_id = str_of(&ack, "msg_id").to_owned();
    let conv = str_of(&ack, "conversation_id").to_owned();
    let expires_at = i64_of(&ack, "expires_at");
    assert_eq!(
        expires_at,
        i64_of(&ack, "sent_at") + 2_000,
        "expires_at = sent_at + 2 s"
    );
    let message = b1.expect_about("message", &msg_id).await;
    assert_eq!(
        str_of(&message, "body"),
        "short lived",
        "live delivery before expiry"
    );

    // bob-1 waits for the burn in its own task, so the checks below cannot
    // delay the moment it reads the frame.
    let watcher = tokio::spawn({
        let msg_id = msg_id.clone();
        async move {
            let wait = Duration::from_millis((expires_at - now_ms()).max(0) as u64) + WAIT;
            let burned = b1
                .expect_within(wait, "burned (expired)", |f| is_about(f, "burned", &msg_id))
                .await;
            (b1, burned, now_ms())
        }
    });

    let history = full_history(&http, &b1s, &conv).await;
    assert!(
        history
            .iter()
            .any(|m| m.msg_id == msg_id && m.body.as_deref() == Some("short lived")),
        "history holds the message before expiry: {history:?}"
    );
    let b2s = bob.login(&http).await;
    let mut b2 = TestSocket::connect(&server, &b2s, "bob-2").await;
    let synced = b2.sync(0).await;
    assert!(
        now_ms() < expires_at,
        "the pre-expiry checks took too long to prove anything"
    );
    let copies: Vec<_> = synced.about("message", &msg_id).collect();
    assert_eq!(
        copies.len(),
        1,
        "sync before expiry delivers the message: {:?}",
        synced.events
    );
    assert_eq!(str_of(copies[0], "body"), "short lived", "sync body");
    assert_eq!(synced.about("burned", &msg_id).count(), 0, "not burned yet");

    let (_b1, burned, arrived_at) = watcher.await.expect("bob-1's watcher");
    let lag = arrived_at - expires_at;
    println!("burn lag on bob-1: {lag} ms after expires_at");
    assert_eq!(str_of(&burned, "reason"), "expired", "burn reason");
    assert_eq!(
        str_of(&burned, "conversation_id"),
        conv,
        "burned.conversation_id"
    );
    assert!(
        (BURN_EARLY_BOUND_MS..=BURN_LAG_BOUND_MS).contains(&lag),
        "burned must reach an online device within {BURN_LAG_BOUND_MS} ms of expires_at \
         (and not before it), lag was {lag} ms"
    );
    for device in [&mut b2, &mut a1] {
        let burned = device.expect_about("burned", &msg_id).await;
        assert_eq!(
            str_of(&burned, "reason"),
            "expired",
            "{}: burn reason",
            device.label()
        );
    }

    for session in [&b1s, &a1s] {
        let history = full_history(&http, session, &conv).await;
        assert!(
            history.iter().all(|m| m.msg_id != msg_id),
            "an expired message must leave history: {history:?}"
        );
    }
    let b3s = bob.login(&http).await;
    let mut b3 = TestSocket::connect(&server, &b3s, "bob-3 (new)").await;
    let synced = b3.sync(0).await;
    assert_eq!(
        synced.about("message", &msg_id).count(),
        0,
        "sync after expiry must not replay the content: {:?}",
        synced.events
    );
    let burns: Vec<_> = synced.about("burned", &msg_id).collect();
    assert_eq!(
        burns.len(),
        1,
        "sync after expiry yields one burn: {:?}",
        synced.events
    );
    assert_eq!(str_of(burns[0], "reason"), "expired", "sync burn reason");
}

/// A message that expires while its recipient is offline is never delivered
/// as `message`: not on connect, not by sync.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_expired_while_offline_is_never_delivered() {
    let server = Server::start(&[]).await;
    let http = server.http();
    let alice = register_user(&http, "alice").await;
    let bob = register_user(&http, "bob").await;
    let a1s = alice.login(&http).await;
    let b1s = bob.login(&http).await;
    let mut a1 = TestSocket::connect(&server, &a1s, "alice-1").await;

    let short = a1
        .send_ok(timed_text(
            &new_cid("gone"),
            Target::User(&bob.user_id),
            "never seen",
            1,
        ))
        .await;
    // A long-lived control message proves the sync below does deliver.
    let long = a1
        .send_ok(timed_text(
            &new_cid("kept"),
            Target::User(&bob.user_id),
            "still here",
            600,
        ))
        .await;
    let short_id = str_of(&short, "msg_id").to_owned();
    let long_id = str_of(&long, "msg_id").to_owned();
    sleep_until_ms(i64_of(&short, "expires_at") + 300).await;

    let mut b1 = TestSocket::connect(&server, &b1s, "bob-1").await;
    let synced = b1.sync(0).await;
    let kept: Vec<_> = synced.about("message", &long_id).collect();
    assert_eq!(
        kept.len(),
        1,
        "the live message is synced: {:?}",
        synced.events
    );
    assert_eq!(str_of(kept[0], "body"), "still here", "control body");
    let burns: Vec<_> = synced.about("burned", &short_id).collect();
    assert_eq!(
        burns.len(),
        1,
        "the expired one is reported burned once: {:?}",
        synced.events
    );
    assert_eq!(str_of(burns[0], "reason"), "expired", "burn reason");
    b1.assert_never(QUIET, "the expired message as `message`", |f| {
        is_about(f, "message", &short_id)
    })
    .await;

    let conv = str_of(&short, "conversation_id").to_owned();
    let history = full_history(&http, &b1s, &conv).await;
    let ids: Vec<&str> = history.iter().map(|m| m.msg_id.as_str()).collect();
    assert_eq!(
        ids,
        vec![long_id.as_str()],
        "history holds only the live message"
    );
}

/// Physical deletion: a canary body is sealed at rest (in no file while the
/// message lives, though its row is in an SST, so the scan can fail) and in
/// no file once it expired and the store was compacted. Logs never carry
/// it, nor tokens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_canary_leaves_no_trace_in_sst_files() {
    let server = Server::start(&[]).await;
    let http = server.http();
    let alice = register_user(&http, "alice").await;
    let bob = register_user(&http, "bob").await;
    let a1s = alice.login(&http).await;
    let b1s = bob.login(&http).await;
    let mut a1 = TestSocket::connect(&server, &a1s, "alice-1").await;
    let mut b1 = TestSocket::connect(&server, &b1s, "bob-1").await;

    let canary = random_hex(16);
    let control = random_hex(16);
    assert_eq!(canary.len(), 32, "32 hex chars");
    let short = a1
        .send_ok(timed_text(
            &new_cid("canary"),
            Target::User(&bob.user_id),
            &format!("canary {canary}"),
            2,
        ))
        .await;
    let control_ack = a1
        .send_ok(timed_text(
            &new_cid("control"),
            Target::User(&bob.user_id),
            &format!("control {control}"),
            600,
        ))
        .await;
    let short_id = str_of(&short, "msg_id").to_owned();
    let expires_at = i64_of(&short, "expires_at");

    // While it lives, flushed and compacted: the message's row is on disk
    // (its storage key, the raw bytes of its msg_id, is in an SST), which
    // proves the scan reads what it must; the body is not, because bodies
    // are sealed at rest.
    server.compact().await;
    let proved_at = now_ms();
    assert!(
        proved_at < expires_at,
        "compaction took until {proved_at}, past expires_at {expires_at}: the proof is void"
    );
    let row_key = hex_bytes(&short_id);
    let rows = scan_files(server.data_dir(), ".sst", &row_key);
    assert!(
        rows.iter().any(|(_, found)| *found),
        "the live message's row must be found in an SST, else this test cannot fail \
         (scanned {} files)",
        rows.len()
    );
    let plain: Vec<_> = scan_files(server.data_dir(), "", canary.as_bytes())
        .into_iter()
        .filter(|(_, found)| *found)
        .map(|(p, _)| p)
        .collect();
    assert!(
        plain.is_empty(),
        "a live body must be sealed at rest, found in {plain:?}"
    );

    // After expiry (seen live by bob) and a compaction: no file holds it.
    let wait = Duration::from_millis((expires_at - now_ms()).max(0) as u64) + WAIT;
    let burned = b1
        .expect_within(wait, "burned (expired) canary", |f| {
            is_about(f, "burned", &short_id)
        })
        .await;
    assert_eq!(str_of(&burned, "reason"), "expired", "burn reason");
    server.compact().await;
    let ssts = scan_files(server.data_dir(), ".sst", canary.as_bytes());
    assert!(!ssts.is_empty(), "a compacted store has SST files");
    let leaking: Vec<_> = scan_files(server.data_dir(), "", canary.as_bytes())
        .into_iter()
        .filter(|(_, found)| *found)
        .map(|(p, _)| p)
        .collect();
    assert!(
        leaking.is_empty(),
        "the expired canary must be in no file after compaction, found in {leaking:?}"
    );
    let control_rows = scan_files(
        server.data_dir(),
        ".sst",
        &hex_bytes(str_of(&control_ack, "msg_id")),
    );
    assert!(
        control_rows.iter().any(|(_, found)| *found),
        "the live control message's row must still be on disk (the scan still works)"
    );

    let logs = server.logs();
    assert!(
        !logs.contains(&canary),
        "server logs must never contain message bodies"
    );
    assert!(
        !logs.contains(&control),
        "server logs must never contain message bodies"
    );
    for token in [&a1s.token, &b1s.token] {
        assert!(
            !logs.contains(token.as_str()),
            "server logs must never contain tokens"
        );
    }
    assert!(
        !logs.contains(server.admin_token()),
        "server logs must never contain the admin token"
    );
}

/// The bytes a lower-case hex string spells.
fn hex_bytes(hex: &str) -> Vec<u8> {
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex"))
        .collect()
}
