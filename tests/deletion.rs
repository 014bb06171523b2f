//! Physical deletion, measured and provable (issue 12): with a short
//! window, expired canary texts and media leave every file of the data
//! directory and the blob store within the window, the deletion report
//! says the window is met and `ephemera verify-deletion` exits 0; with the
//! sweep held back, the report shows the window missed, the metric an
//! operator pages on drops to 0 and `verify-deletion` exits 1, without
//! printing anything it found.

mod common;

use std::process::Command;
use std::time::Duration;

use common::media::{blob_client, media_send, mint_for_file, photo, seal_and_put};
use common::shred::{blob_file_of_url, files_holding_key, DataKey};
use common::socket::WAIT;
use common::{
    i64_of, is_about, new_cid, now_ms, random_hex, register_user, scan_files, str_of, Server,
    TestSocket,
};
use ephemera_load::client::{timed_text, Target};

/// The window the tests run with, seconds.
const WINDOW_S: i64 = 4;

/// `ephemera verify-deletion` on the server's data directory (the server
/// running): its exit code and output.
fn verify(server: &Server, grace_seconds: i64) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ephemera"))
        .arg("verify-deletion")
        .arg("--data-dir")
        .arg(server.data_dir())
        .arg("--grace-seconds")
        .arg(grace_seconds.to_string())
        .output()
        .expect("running ephemera verify-deletion");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

/// What one canary exchange left to look for.
struct Canary {
    /// The text's random part, in the body of a timed text.
    text: String,
    /// The media's data key.
    key: DataKey,
    /// The media blob's file in the embedded store.
    blob: std::path::PathBuf,
    /// The media's plaintext marker.
    media_marker: String,
    /// When both messages expire.
    expires_at: i64,
    /// The message ids.
    msg_ids: Vec<String>,
}

/// Alice sends Bob a canary text and a canary photo, both for
/// `ttl_seconds`, and Bob sees both burn at expiry.
async fn send_canaries(server: &Server, ttl_seconds: u64) -> Canary {
    let http = server.http();
    let alice = register_user(&http, "alice").await;
    let bob = register_user(&http, "bob").await;
    let a1s = alice.login(&http).await;
    let b1s = bob.login(&http).await;
    let mut a1 = TestSocket::connect(server, &a1s, "alice-1").await;
    let mut b1 = TestSocket::connect(server, &b1s, "bob-1").await;

    let text = random_hex(16);
    let media_marker = random_hex(16);
    let mut plain = photo(2_000);
    plain.extend_from_slice(format!("canary media {media_marker}").as_bytes());
    let upload = mint_for_file(&http, &a1s, "image/jpeg", plain.len()).await;
    seal_and_put(&blob_client(), &upload, &plain).await;
    let blob = blob_file_of_url(server, &upload.put_url);
    assert!(
        blob.exists(),
        "the uploaded blob is on disk: {}",
        blob.display()
    );

    let t = a1
        .send_ok(timed_text(
            &new_cid("canary-text"),
            Target::User(&bob.user_id),
            &format!("canary {text}"),
            ttl_seconds,
        ))
        .await;
    let m = a1
        .send_ok(media_send(
            &new_cid("canary-media"),
            &bob.user_id,
            &upload.media_key,
            "timed",
            ttl_seconds,
        ))
        .await;
    let msg_ids = vec![
        str_of(&t, "msg_id").to_owned(),
        str_of(&m, "msg_id").to_owned(),
    ];
    let expires_at = i64_of(&t, "expires_at").max(i64_of(&m, "expires_at"));
    let wait = Duration::from_millis((expires_at - now_ms()).max(0) as u64) + WAIT;
    for id in &msg_ids {
        b1.expect_within(wait, "the canary burns at expiry", |f| {
            is_about(f, "burned", id)
        })
        .await;
    }
    Canary {
        text,
        key: DataKey::of_upload(&upload),
        blob,
        media_marker,
        expires_at,
        msg_ids,
    }
}

/// Files under the data directory holding `needle`.
fn holding(server: &Server, needle: &[u8]) -> Vec<std::path::PathBuf> {
    scan_files(server.data_dir(), "", needle)
        .into_iter()
        .filter(|(_, found)| *found)
        .map(|(p, _)| p)
        .collect()
}

fn assert_quiet_about(output: &str, c: &Canary) {
    for secret in [&c.text, &c.media_marker, &c.key.b64] {
        assert!(
            !output.contains(secret.as_str()),
            "verify-deletion printed content or a key"
        );
    }
    for id in &c.msg_ids {
        assert!(
            !output.contains(id.as_str()),
            "verify-deletion printed a message id"
        );
    }
}

/// Within the window after expiry, no file in the data directory or the
/// blob store holds the canaries' bytes or their keys, the report says the
/// window is met from what it measured on disk, and `verify-deletion`
/// exits 0. Before the sweep is let go, the same checks fail, so they can.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_canaries_leave_every_file_within_the_window() {
    let window = WINDOW_S.to_string();
    let server = Server::start(&["--deletion-window-seconds", &window]).await;
    let c = send_canaries(&server, 3).await;

    // The promise is kept from `expires_at` plus the window on: poll until
    // then, and fail if anything is left after.
    let deadline = c.expires_at + WINDOW_S * 1000;
    loop {
        let (keys, scanned) = files_holding_key(server.data_dir(), &c.key);
        let text = holding(&server, c.text.as_bytes());
        let marker = holding(&server, c.media_marker.as_bytes());
        let r = server.deletion_report().await;
        let clean = keys.is_empty()
            && text.is_empty()
            && marker.is_empty()
            && !c.blob.exists()
            && r["window_met"] == true
            && r["blobs_pending_deletion"] == 0
            && r["expired_rows_on_disk"] == 0;
        if clean {
            assert!(
                scanned
                    .iter()
                    .any(|p| p.starts_with(server.data_dir().join("keys"))),
                "the scan looked at the key store"
            );
            assert!(
                r["oldest_expired_on_disk_seconds"].as_i64() <= Some(WINDOW_S),
                "{r}"
            );
            assert!(r["key_shred_lag_seconds"].as_i64() <= Some(WINDOW_S), "{r}");
            assert!(r["last_full_pass_at"].as_i64() > Some(c.expires_at), "{r}");
            break;
        }
        assert!(
            now_ms() <= deadline + 1_000,
            "past expiry plus the {WINDOW_S} s window: key in {keys:?}, text in {text:?}, \
             media in {marker:?}, blob there: {}, report {r}",
            c.blob.exists()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(
        server.metric("ephemera_deletion_window_met").await,
        1.0,
        "the window metric says met"
    );
    let (code, out) = verify(&server, WINDOW_S);
    assert_eq!(code, 0, "verify-deletion on a swept store: {out}");
    assert!(out.contains("verdict: clean"), "{out}");
    assert!(
        out.contains("key store") && out.contains("blob store"),
        "{out}"
    );
    assert_quiet_about(&out, &c);
}

/// With the sweep held back (nothing flushed, compacted, purged or
/// reaped), the report measures the expired content still on disk and says
/// the window is missed, the metric drops to 0, and `verify-deletion`
/// exits 1 with counts only. Let go, the sweep catches up within a window
/// and the verdict turns clean.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_back_sweep_misses_the_window_and_fails_verification() {
    let window = WINDOW_S.to_string();
    let server = Server::start(&["--deletion-window-seconds", &window]).await;
    // Let the first pass run, then hold everything back.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(
        server.admin_post("/admin/faults/sweep?hold=true").await,
        202
    );
    let c = send_canaries(&server, 2).await;

    let missed_by = c.expires_at + (WINDOW_S + 2) * 1000;
    common::sleep_until_ms(missed_by).await;
    let r = server.deletion_report().await;
    assert_eq!(r["window_met"], false, "held back: {r}");
    assert!(
        r["oldest_expired_on_disk_seconds"].as_i64() > Some(WINDOW_S),
        "the burned canaries are still on disk, measured: {r}"
    );
    assert!(r["blobs_pending_deletion"].as_i64() >= Some(1), "{r}");
    assert!(c.blob.exists(), "held back, the blob is still there");
    assert_eq!(
        server.metric("ephemera_deletion_window_met").await,
        0.0,
        "an operator pages on this"
    );
    let (code, out) = verify(&server, WINDOW_S);
    assert_eq!(code, 1, "verify-deletion must fail: {out}");
    assert!(out.contains("verdict: NOT clean"), "{out}");
    assert_quiet_about(&out, &c);

    // Let go: within a window the sweep has caught up.
    assert_eq!(
        server.admin_post("/admin/faults/sweep?hold=false").await,
        202
    );
    let deadline = now_ms() + WINDOW_S * 1000 + 2_000;
    loop {
        let r = server.deletion_report().await;
        if r["window_met"] == true && !c.blob.exists() {
            break;
        }
        assert!(now_ms() < deadline, "the sweep did not catch up: {r}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let (code, out) = verify(&server, WINDOW_S);
    assert_eq!(code, 0, "after the sweep caught up: {out}");
    assert!(files_holding_key(server.data_dir(), &c.key).0.is_empty());
}
