//! Operators: restarting supervised actors while devices keep chatting,
//! the actor listing, the deletion report, and `/metrics`.

mod common;

use std::time::Duration;

use common::socket::WAIT;
use common::{
    i64_of, is_about, is_type, new_cid, now_ms, register_user, str_of, Server, TestSocket,
};
use ephemera_load::client::{timed_text, Target};
use reqwest::Method;
use serde_json::json;

async fn restart(server: &Server, kind: &str, id: &str) -> u16 {
    server
        .admin_post(&format!("/admin/actors/{kind}/{id}/restart"))
        .await
}

/// A conversation restarted through the admin API while two devices talk:
/// delivery goes on, an unviewed view-once message is still viewable
/// exactly once, and a message whose TTL falls during the restart burns on
/// time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarting_a_conversation_loses_nothing() {
    let server = Server::start(&[]).await;
    let http = server.http();
    let alice = register_user(&http, "alice").await;
    let bob = register_user(&http, "bob").await;
    let (a, b) = (alice.login(&http).await, bob.login(&http).await);
    let mut a1 = TestSocket::connect(&server, &a, "alice-1").await;
    let mut b1 = TestSocket::connect(&server, &b, "bob-1").await;

    let first = a1
        .send_ok(timed_text(
            &new_cid("before"),
            Target::User(&bob.user_id),
            "before",
            600,
        ))
        .await;
    let conv = str_of(&first, "conversation_id").to_owned();
    let once = a1
        .send_ok(json!({
            "type": "send", "client_msg_id": new_cid("once"), "conversation_id": conv,
            "body": "only once", "view_policy": "once", "ttl_seconds": 600,
        }))
        .await;
    let once_id = str_of(&once, "msg_id").to_owned();
    let short = a1
        .send_ok(timed_text(
            &new_cid("short"),
            Target::Conversation(&conv),
            "short",
            2,
        ))
        .await;
    let short_id = str_of(&short, "msg_id").to_owned();
    let short_expiry = i64_of(&short, "expires_at");

    // Frames still queued for the old actor when the restart lands are
    // handled by it, not dropped: all of them are acked.
    // (The sends stream while the restart request is in flight.)
    let queued: Vec<String> = (0..300).map(|i| new_cid(&format!("queued{i}"))).collect();
    let sends = async {
        for (i, cid) in queued.iter().enumerate() {
            a1.send(timed_text(
                cid,
                Target::Conversation(&conv),
                &format!("queued {i}"),
                600,
            ))
            .await;
        }
    };
    let (status, ()) = tokio::join!(restart(&server, "conversation", &conv), sends);
    assert_eq!(status, 202, "restart accepted");
    let mut after = Vec::new();
    for cid in &queued {
        let answer = a1
            .expect("the queued send's answer", |f| {
                (is_type(f, "ack") && f["client_msg_id"] == cid.as_str())
                    || (is_type(f, "error") && f["ref"] == cid.as_str())
            })
            .await;
        assert!(is_type(&answer, "ack"), "{cid} must be acked: {answer}");
        after.push(str_of(&answer, "msg_id").to_owned());
    }
    // Sends right after the restart are answered and delivered.
    for i in 0..10 {
        let ack = a1
            .send_ok(timed_text(
                &new_cid("after"),
                Target::Conversation(&conv),
                &format!("after {i}"),
                600,
            ))
            .await;
        after.push(str_of(&ack, "msg_id").to_owned());
    }
    for id in &after {
        b1.expect_about("message", id).await;
    }
    // The TTL that fell around the restart still burns on time.
    let wait = Duration::from_millis((short_expiry - now_ms()).max(0) as u64) + WAIT;
    let burned = b1
        .expect_within(wait, "burn of the short message", |f| {
            is_about(f, "burned", &short_id)
        })
        .await;
    let lag = now_ms() - short_expiry;
    println!("burn lag after a conversation restart: {lag} ms");
    assert!(lag < 150, "burned {lag} ms after expires_at");
    assert_eq!(str_of(&burned, "reason"), "expired");
    // The unviewed view-once message: exactly one view wins.
    b1.send(json!({"type": "view", "msg_id": once_id})).await;
    assert_eq!(
        str_of(&b1.expect_type("view_result").await, "result"),
        "granted"
    );
    b1.send(json!({"type": "view", "msg_id": once_id})).await;
    assert_eq!(
        str_of(&b1.expect_type("view_result").await, "result"),
        "burned"
    );

    let listing = server
        .admin_http()
        .raw(
            Method::GET,
            "/admin/actors?kind=conversation",
            Some(server.admin_token()),
            None,
        )
        .await
        .expect("listing actors");
    assert_eq!(listing.status, 200);
    let actors = listing.json.expect("a JSON listing")["actors"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let me = actors
        .iter()
        .find(|a| a["id"] == conv.as_str())
        .expect("the conversation is listed");
    assert!(
        me["restarts"].as_u64() >= Some(1),
        "its restart is counted: {me}"
    );
    assert!(
        me["mailbox_depth"].as_u64().is_some(),
        "the mailbox depth is reported: {me}"
    );
    let text = serde_json::to_string(&actors).unwrap();
    assert!(
        !text.contains("only once") && !text.contains("before"),
        "no content in the listing"
    );
    assert_eq!(
        restart(&server, "conversation", &"0".repeat(32)).await,
        404,
        "an actor that is not live"
    );
}

/// A user actor restarted: its devices keep receiving without reconnecting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarting_a_user_keeps_its_devices() {
    let server = Server::start(&[]).await;
    let http = server.http();
    let alice = register_user(&http, "alice").await;
    let bob = register_user(&http, "bob").await;
    let (a, b) = (alice.login(&http).await, bob.login(&http).await);
    let mut a1 = TestSocket::connect(&server, &a, "alice-1").await;
    let mut b1 = TestSocket::connect(&server, &b, "bob-1").await;
    let m = a1
        .send_ok(timed_text(
            &new_cid("x"),
            Target::User(&bob.user_id),
            "one",
            600,
        ))
        .await;
    b1.expect_about("message", str_of(&m, "msg_id")).await;
    assert_eq!(restart(&server, "user", &bob.user_id).await, 202);
    for i in 0..5 {
        let m = a1
            .send_ok(timed_text(
                &new_cid("y"),
                Target::User(&bob.user_id),
                &format!("n{i}"),
                600,
            ))
            .await;
        b1.expect_about("message", str_of(&m, "msg_id")).await;
    }
}

/// `/metrics` needs the admin token, parses as the exposition format and
/// carries the series operators page on; the deletion report is there too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_and_name_the_series() {
    let server = Server::start(&[]).await;
    let http = server.http();
    let alice = register_user(&http, "alice").await;
    let bob = register_user(&http, "bob").await;
    let a = alice.login(&http).await;
    let mut a1 = TestSocket::connect(&server, &a, "alice-1").await;
    a1.send_ok(timed_text(
        &new_cid("m"),
        Target::User(&bob.user_id),
        "count me",
        600,
    ))
    .await;

    let client = reqwest::Client::new();
    let url = format!("{}/metrics", server.admin_base());
    let denied = client
        .get(&url)
        .send()
        .await
        .expect("metrics without token");
    assert_eq!(denied.status().as_u16(), 401);
    let resp = client
        .get(&url)
        .bearer_auth(server.admin_token())
        .send()
        .await
        .expect("metrics");
    assert_eq!(resp.status().as_u16(), 200);
    let text = resp.text().await.expect("metrics text");
    let mut samples: Vec<(String, f64)> = Vec::new();
    for line in text.lines() {
        if line.starts_with('#') || line.is_empty() {
            assert!(
                line.is_empty()
                    || line.starts_with("# HELP ")
                    || line.starts_with("# TYPE ")
                    || line.starts_with("# UNIT ")
                    || line == "# EOF",
                "unexpected comment line: {line}"
            );
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("sample without a value: {line}"));
        let name = series.split('{').next().unwrap();
        assert!(
            !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':'),
            "bad metric name in {line}"
        );
        if let Some(labels) = series.strip_prefix(name) {
            assert!(
                labels.is_empty() || (labels.starts_with('{') && labels.ends_with('}')),
                "bad labels in {line}"
            );
        }
        let v: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line}"));
        samples.push((series.to_owned(), v));
    }
    let get = |prefix: &str| {
        samples
            .iter()
            .find(|(s, _)| s.starts_with(prefix))
            .map(|(_, v)| *v)
    };
    for series in [
        "ephemera_connections",
        "ephemera_mailbox_depth{kind=\"conversation\"}",
        "ephemera_mailbox_depth{kind=\"user\"}",
        "ephemera_live_actors{kind=\"session\"}",
        "ephemera_messages_sent_total",
        "ephemera_messages_delivered_total",
        "ephemera_ack_latency_seconds_bucket",
        "ephemera_burn_lag_seconds_count",
        "ephemera_delivery_latency_seconds_bucket",
        "ephemera_write_batch_transactions_bucket",
        "ephemera_write_batch_seconds_count",
        "ephemera_expired_backlog",
        "ephemera_key_purge_age_seconds",
        "ephemera_keys_destroyed_total",
        "ephemera_blobs_pending_deletion",
    ] {
        assert!(get(series).is_some(), "missing series {series} in:\n{text}");
    }
    assert_eq!(
        get("ephemera_messages_sent_total"),
        Some(1.0),
        "one message sent"
    );
    assert_eq!(get("ephemera_connections"), Some(1.0), "one socket open");
    assert!(get("ephemera_ack_latency_seconds_count") >= Some(1.0));
    assert!(!text.contains("count me"), "no content in metrics");
    // Every counted message gets handled: the mailboxes empty again (a
    // delivery to alice's own user actor may still be queued right after
    // the ack, so give it a moment).
    let mut depths = (f64::NAN, f64::NAN);
    for _ in 0..40 {
        depths = (
            server
                .metric("ephemera_mailbox_depth{kind=\"conversation\"}")
                .await,
            server.metric("ephemera_mailbox_depth{kind=\"user\"}").await,
        );
        if depths == (0.0, 0.0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(depths, (0.0, 0.0), "conversation and user mailboxes drain");

    let r = server.deletion_report().await;
    assert_eq!(r["logical_backlog"], 0, "nothing overdue: {r}");
    assert!(
        r["key_purge_age_seconds"].as_u64() <= Some(10),
        "the key store purges every few seconds: {r}"
    );
    assert!(is_type(&json!({"type": "x"}), "x"));
}

/// SIGTERM during traffic: sockets close with 1001, the process exits on
/// its own, and after a restart every acked message is still there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_traffic_keeps_every_acked_message() {
    let mut server = Server::start(&[]).await;
    let http = server.http();
    let alice = register_user(&http, "alice").await;
    let bob = register_user(&http, "bob").await;
    let a = alice.login(&http).await;
    let mut a1 = TestSocket::connect(&server, &a, "alice-1").await;
    // Frames in flight when the signal lands: some are acked, some not.
    for i in 0..2000 {
        a1.send(timed_text(
            &format!("sig-{i:04}"),
            Target::User(&bob.user_id),
            &format!("m{i}"),
            600,
        ))
        .await;
    }
    let mut acked = Vec::new();
    while acked.len() < 50 {
        let f = a1.expect_type("ack").await;
        acked.push(str_of(&f, "msg_id").to_owned());
    }
    let status = server.terminate(Duration::from_secs(20));
    assert!(status.success(), "graceful shutdown exits 0, got {status}");
    let mut close = None;
    loop {
        match a1.next_event(Duration::from_secs(5)).await {
            ephemera_load::client::Event::Frame(f) if is_type(&f, "ack") => {
                acked.push(str_of(&f, "msg_id").to_owned())
            }
            ephemera_load::client::Event::Frame(_) => {}
            ephemera_load::client::Event::Closed(code) => {
                close = code;
                break;
            }
            ephemera_load::client::Event::Timeout => break,
        }
    }
    println!(
        "{} of 2000 sends acked before shutdown; close code {close:?}",
        acked.len()
    );
    assert_eq!(close, Some(1001), "sockets close with going-away");

    server.restart().await;
    let http = server.http();
    let b = bob.login(&http).await;
    let mut b1 = TestSocket::connect(&server, &b, "bob-1").await;
    let synced = b1.sync(0).await;
    for id in &acked {
        assert_eq!(
            synced.about("message", id).count(),
            1,
            "acked message {id} survived the shutdown"
        );
    }
}

/// The operator CLI talks to the admin listener and prints tables.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_cli_lists_restarts_and_reports() {
    let server = Server::start(&[]).await;
    let http = server.http();
    let alice = register_user(&http, "alice").await;
    let bob = register_user(&http, "bob").await;
    let a = alice.login(&http).await;
    let mut a1 = TestSocket::connect(&server, &a, "alice-1").await;
    let ack = a1
        .send_ok(timed_text(
            &new_cid("c"),
            Target::User(&bob.user_id),
            "secret words",
            600,
        ))
        .await;
    let conv = str_of(&ack, "conversation_id").to_owned();
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_ephemera"))
            .arg("admin")
            .args(["--admin-url", &server.admin_base()])
            .args(args)
            .env("EPHEMERA_ADMIN_TOKEN", server.admin_token())
            .output()
            .expect("running ephemera admin");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, out, err) = run(&["actors", "--kind", "conversation"]);
    assert!(ok, "actors failed: {err}");
    assert!(
        out.lines().next().unwrap_or("").starts_with("kind"),
        "a table header: {out}"
    );
    assert!(out.contains(&conv), "the conversation is listed: {out}");
    assert!(!out.contains("secret words"), "no content");
    let (ok, out, err) = run(&["restart", "conversation", &conv]);
    assert!(
        ok && out.contains("restart accepted"),
        "restart: {out} {err}"
    );
    let (ok, _, err) = run(&["restart", "conversation", &"0".repeat(32)]);
    assert!(
        !ok && err.contains("404"),
        "an unknown actor is an error: {err}"
    );
    let (ok, out, err) = run(&["deletion"]);
    assert!(
        ok && out.contains("logical_backlog"),
        "deletion report: {out} {err}"
    );
}

/// Reads one sample of `/metrics`.

/// 100,000 conversations touched once passivate: the live-actor count falls
/// back to (almost) nothing, and a message with a TTL in one of them still
/// burns on time, woken by the persistent deadline index.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_conversations_passivate_and_still_burn_on_time() {
    const N: usize = 100_000;
    let server = Server::start(&[
        "--passivate-after-seconds",
        "2",
        "--frame-rate-per-second",
        "1000000",
        "--frame-burst",
        "1000000",
        "--max-groups-per-user",
        "1000000",
    ])
    .await;
    let http = server.http();
    let alice = register_user(&http, "alice").await;
    let bob = register_user(&http, "bob").await;
    let (a, b) = (alice.login(&http).await, bob.login(&http).await);
    let mut a1 = TestSocket::connect(&server, &a, "alice-1").await;

    // N group conversations, created through the API, then each touched
    // once (a typing frame activates its actor).
    let started = std::time::Instant::now();
    let mut ids = Vec::with_capacity(N);
    let mut tasks = tokio::task::JoinSet::new();
    for chunk in 0..16 {
        let http = http.clone();
        let a = a.clone();
        let bob_id = bob.user_id.clone();
        tasks.spawn(async move {
            let mut out = Vec::new();
            for _ in 0..N / 16 + usize::from(chunk < N % 16) {
                out.push(
                    http.create_group(&a, &[&bob_id], None)
                        .await
                        .expect("creating a group"),
                );
            }
            out
        });
    }
    while let Some(r) = tasks.join_next().await {
        ids.extend(r.expect("a creating task"));
    }
    assert_eq!(ids.len(), N);
    for id in &ids {
        a1.send(json!({"type": "typing", "conversation_id": id, "is_typing": true}))
            .await;
    }
    a1.ping().await;
    let rss_peak = server.rss_kib();
    let live_peak = server
        .metric("ephemera_live_actors{kind=\"conversation\"}")
        .await;
    println!(
        "{N} conversations created and touched in {:?}; live conversation actors {live_peak}, server RSS {rss_peak} KiB",
        started.elapsed()
    );
    assert!(
        live_peak >= (N as f64) * 0.9,
        "the touched conversations are live: {live_peak}"
    );

    // One more conversation gets a message with a deadline far enough out
    // that its actor passivates first: it must outlive its actor.
    let ack = a1
        .send_ok(timed_text(
            &new_cid("ttl"),
            Target::User(&bob.user_id),
            "burn me later",
            20,
        ))
        .await;
    let ttl_id = str_of(&ack, "msg_id").to_owned();
    let expires_at = i64_of(&ack, "expires_at");

    // Idle for the passivation time: the actors go.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut live = live_peak;
    let mut rss_peak = rss_peak;
    while std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
        rss_peak = rss_peak.max(server.rss_kib());
        live = server
            .metric("ephemera_live_actors{kind=\"conversation\"}")
            .await;
        if live <= 10.0 {
            break;
        }
    }
    // Freed memory goes back to the system every few seconds.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let rss_after = server.rss_kib();
    println!("after passivation: live conversation actors {live}, server RSS {rss_after} KiB (peak {rss_peak} KiB)");
    assert!(
        live <= 10.0,
        "idle conversation actors passivate: {live} still live"
    );
    assert!(
        rss_after < rss_peak,
        "memory falls back once the actors are gone: {rss_after} KiB >= {rss_peak} KiB"
    );
    assert!(
        now_ms() < expires_at - 3_000,
        "the deadline's actor passivated before the sweeper had to wake it"
    );

    // The deadline still fires on time, on a conversation nobody touched
    // since. (Bob's device connects only now: one that did not read the
    // 100,000 typing frames would have been closed as too slow.)
    let mut b1 = TestSocket::connect(&server, &b, "bob-1").await;
    let wait = Duration::from_millis((expires_at - now_ms()).max(0) as u64) + WAIT;
    let burned = b1
        .expect_within(
            wait,
            "the burn of the passivated conversation's message",
            |f| is_about(f, "burned", &ttl_id),
        )
        .await;
    let lag = now_ms() - expires_at;
    println!("burn lag in a passivated conversation: {lag} ms");
    assert_eq!(str_of(&burned, "reason"), "expired");
    assert!(lag < 150, "burned {lag} ms after expires_at");
}
