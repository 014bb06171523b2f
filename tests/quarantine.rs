//! Reports and quarantine (PROTOCOL 7 and the moderator parts of 8),
//! against the real binary: a reported message or story outlives its
//! clock in quarantine, readable by moderators only (media decrypts with
//! the `data_key` a moderator gets), every moderator call in the access
//! log; holds keep content past its retention; closing destroys it (key
//! gone from every file, blob gone); the quarantine's backup restores.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::media::{blob_client, blob_request, media_send, mint_for_file, photo, seal_and_put};
use common::stories::{add_close_friend, call, expect_status, post_story};
use common::{
    new_cid, now_ms, random_hex, register_user, sleep_until_ms, str_of, Server, TestSocket,
    TestUser,
};
use ephemera_load::client::{timed_text, Http, Session, Target};
use ephemera_load::crypto;
use reqwest::Method;
use serde_json::{json, Value};

/// Runs the `ephemera` binary with `args` (no `EPHEMERA_*` variables).
fn ephemera(args: &[&str]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_ephemera"));
    command.args(args);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("EPHEMERA_") {
            command.env_remove(&key);
        }
    }
    command.output().expect("running the ephemera binary")
}

fn ok(out: Output, what: &str) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{what} failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn path(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 temp path")
}

/// `POST /api/v1/reports` with `body` as `s`.
async fn report(http: &Http, s: &Session, body: Value) -> ephemera_load::client::RawResponse {
    call(http, s, Method::POST, "/api/v1/reports", Some(body)).await
}

/// Each `(reporter, body, status, what)`: the report is refused with
/// `status`.
async fn refused<const N: usize>(http: &Http, refusals: [(&Session, Value, u16, &str); N]) {
    for (s, body, status, what) in refusals {
        expect_status(report(http, s, body).await, status, what);
    }
}

/// Reports `body` as `s`, asserting `201`; the case id.
async fn report_ok(http: &Http, s: &Session, body: Value) -> String {
    let answer = expect_status(report(http, s, body).await, 201, "POST /api/v1/reports");
    str_of(&answer, "case_id").to_owned()
}

/// An admin call; its status and JSON.
async fn admin(server: &Server, method: Method, path: &str) -> (u16, Option<Value>) {
    let r = server
        .admin_http()
        .raw(method.clone(), path, Some(server.admin_token()), None)
        .await
        .unwrap_or_else(|e| panic!("{method} {path} on the admin listener: {e:#}"));
    (r.status, r.json)
}

async fn grant(server: &Server, user_id: &str) {
    let (status, _) = admin(server, Method::PUT, &format!("/admin/moderators/{user_id}")).await;
    assert_eq!(status, 204, "granting the moderator role");
}

async fn access_log(server: &Server, after: u64) -> Vec<Value> {
    let (status, body) = admin(
        server,
        Method::GET,
        &format!("/admin/moderation/access-log?after={after}"),
    )
    .await;
    assert_eq!(status, 200, "the access log");
    body.unwrap()["entries"].as_array().unwrap().clone()
}

/// `GET /api/v1/moderation/cases/{id}` as a moderator, asserting `200`.
async fn read_case(http: &Http, s: &Session, case_id: &str) -> Value {
    expect_status(
        call(
            http,
            s,
            Method::GET,
            &format!("/api/v1/moderation/cases/{case_id}"),
            None,
        )
        .await,
        200,
        "GET a case",
    )
}

/// `POST .../cases/{case_id}/close` as a moderator: `200`, closed.
async fn close_case(http: &Http, s: &Session, case_id: &str) -> Value {
    let path = format!("/api/v1/moderation/cases/{case_id}/close");
    let closed = expect_status(call(http, s, Method::POST, &path, None).await, 200, "close");
    assert_eq!(closed["status"], "closed", "{closed}");
    closed
}

/// Fetches a case's media through its `get_url` and opens it with its
/// `data_key`.
async fn open_case_media(case: &Value) -> Vec<u8> {
    let media = &case["content"]["media"];
    let url = str_of(media, "get_url");
    let key = crypto::data_key(str_of(media, "data_key")).expect("a 32-byte data key");
    let got = blob_request(&blob_client(), Method::GET, url, None).await;
    assert_eq!(
        got.status,
        200,
        "the quarantine copy is served: {}",
        got.describe()
    );
    crypto::open(&key, &got.body).expect("the copy opens with the case's data_key")
}

/// Sends a timed text from `from` to `to`; its msg_id and expires_at.
async fn send_text(sock: &mut TestSocket, to: &str, body: &str, ttl: u64) -> (String, i64) {
    let ack = sock
        .send_ok(timed_text(&new_cid("q"), Target::User(to), body, ttl))
        .await;
    (
        str_of(&ack, "msg_id").to_owned(),
        ack["expires_at"].as_i64().unwrap(),
    )
}

/// Uploads a photo as `s` and sends it to `to`; msg_id, expires_at and
/// the photo.
async fn send_photo(
    http: &Http,
    s: &Session,
    sock: &mut TestSocket,
    to: &str,
    ttl: u64,
) -> (String, i64, Vec<u8>) {
    let plain = photo(2048);
    let upload = mint_for_file(http, s, "image/jpeg", plain.len()).await;
    seal_and_put(&blob_client(), &upload, &plain).await;
    let ack = sock
        .send_ok(media_send(
            &new_cid("qm"),
            to,
            &upload.media_key,
            "timed",
            ttl,
        ))
        .await;
    (
        str_of(&ack, "msg_id").to_owned(),
        ack["expires_at"].as_i64().unwrap(),
        plain,
    )
}

/// Alice writes, bob reports, carol moderates: the three users and a
/// session of each.
async fn cast(http: &Http) -> (TestUser, TestUser, TestUser, Session, Session, Session) {
    let alice = register_user(http, "q_alice").await;
    let bob = register_user(http, "q_bob").await;
    let carol = register_user(http, "q_carol").await;
    let (a, b, c) = (
        alice.login(http).await,
        bob.login(http).await,
        carol.login(http).await,
    );
    (alice, bob, carol, a, b, c)
}

/// A canary text and a photo alice sent bob, both reported by bob.
struct Reported {
    text_id: String,
    canary: String,
    plain: Vec<u8>,
    /// The later expiry of the two.
    expires_at: i64,
    text_case: String,
    photo_case: String,
}

/// `a` sends `bob` a canary text and a photo, timed `ttl` seconds, and
/// `b` (bob) reports both.
async fn send_and_report(
    server: &Server,
    http: &Http,
    a: &Session,
    b: &Session,
    bob: &str,
    ttl: u64,
) -> Reported {
    let mut sock = TestSocket::connect(server, a, "alice").await;
    let canary = format!("quarantine canary {}", random_hex(8));
    let (text_id, text_exp) = send_text(&mut sock, bob, &canary, ttl).await;
    let (photo_id, photo_exp, plain) = send_photo(http, a, &mut sock, bob, ttl).await;
    let text_case = report_ok(http, b, json!({ "msg_id": text_id, "reason": "abuse" })).await;
    let photo_case = report_ok(http, b, json!({ "msg_id": photo_id, "reason": "nsfw" })).await;
    Reported {
        text_id,
        canary,
        plain,
        expires_at: text_exp.max(photo_exp),
        text_case,
        photo_case,
    }
}

/// Every moderation call as `s` answers `403`.
async fn assert_forbidden_everywhere(http: &Http, s: &Session, case_id: &str, who: &str) {
    let calls: [(Method, String, Option<Value>); 4] = [
        (Method::GET, "/api/v1/moderation/cases".into(), None),
        (
            Method::GET,
            format!("/api/v1/moderation/cases/{case_id}"),
            None,
        ),
        (
            Method::POST,
            format!("/api/v1/moderation/cases/{case_id}/hold"),
            Some(json!({ "until": now_ms() + 60_000 })),
        ),
        (
            Method::POST,
            format!("/api/v1/moderation/cases/{case_id}/close"),
            None,
        ),
    ];
    for (method, p, body) in calls {
        let r = call(http, s, method.clone(), &p, body).await;
        expect_status(r, 403, &format!("{who}: {method} {p}"));
    }
}

/// The 32-byte key of case `case_id` in a quarantine backup file (parsed
/// by its documented format), to look for on disk.
fn case_key_in_backup(file: &Path, case_id: &str) -> Vec<u8> {
    let bytes = std::fs::read(file).unwrap();
    let header = b"EPHEMERA-QUARANTINE-BACKUP v1\n";
    assert!(bytes.starts_with(header), "a quarantine backup");
    let want = hex(case_id);
    let mut at = header.len();
    loop {
        let kind = bytes[at];
        assert_ne!(kind, 0, "case key of {case_id} not in the backup");
        let nlen = u32::from_be_bytes(bytes[at + 1..at + 5].try_into().unwrap()) as usize;
        let name = &bytes[at + 5..at + 5 + nlen];
        let v_at = at + 5 + nlen;
        let vlen = u64::from_be_bytes(bytes[v_at..v_at + 8].try_into().unwrap()) as usize;
        let value = &bytes[v_at + 8..v_at + 8 + vlen];
        if kind == 2 && name == want.as_slice() {
            assert_eq!(value.len(), 32, "a case key is 32 bytes");
            return value.to_vec();
        }
        at = v_at + 8 + vlen;
    }
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// The files under `dir` (recursively) that hold `needle`.
fn files_holding(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = entry.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(bytes) = std::fs::read(&p) {
                if bytes.windows(needle.len()).any(|w| w == needle) {
                    found.push(p);
                }
            }
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reported_message_outlives_its_expiry_for_moderators_only() {
    let mut server = Server::start(&[]).await;
    let http = server.http();
    let (alice, bob, carol, a, b, c) = cast(&http).await;
    let m = register_user(&http, "q_mallory").await.login(&http).await;
    let r = send_and_report(&server, &http, &a, &b, &bob.user_id, 3).await;
    let (text_id, canary, plain) = (r.text_id, r.canary, r.plain);
    let (text_case, photo_case) = (r.text_case, r.photo_case);

    // Only a recipient may report; the sender gets 422, anyone else 404.
    let refusals = [
        (
            &m,
            json!({ "msg_id": text_id, "reason": "x" }),
            404,
            "a non-member reports",
        ),
        (
            &a,
            json!({ "msg_id": text_id, "reason": "x" }),
            422,
            "the sender's own message",
        ),
        (
            &b,
            json!({ "msg_id": text_id, "story_id": text_id, "reason": "x" }),
            422,
            "both ids",
        ),
        (
            &b,
            json!({ "msg_id": text_id, "reason": "" }),
            422,
            "an empty reason",
        ),
    ];
    refused(&http, refusals).await;

    // Past the messages' expiry, and past a few media sweeps (every 5 s,
    // which delete the original blob and walk the bucket for orphans).
    sleep_until_ms(r.expires_at + 7_000).await;
    let late = json!({ "msg_id": text_id, "reason": "late" });
    refused(&http, [(&b, late, 404, "an expired message")]).await;

    // Not a moderator yet: 403 everywhere, for the reporter too.
    assert_forbidden_everywhere(&http, &c, &text_case, "carol before the grant").await;
    assert_forbidden_everywhere(&http, &b, &text_case, "the reporter").await;
    assert_forbidden_everywhere(&http, &m, &text_case, "mallory").await;
    let (status, _) = admin(
        &server,
        Method::PUT,
        &format!("/admin/moderators/{}", common::random_hex(16)),
    )
    .await;
    assert_eq!(status, 404, "granting an unknown user");
    grant(&server, &carol.user_id).await;

    let list = expect_status(
        call(&http, &c, Method::GET, "/api/v1/moderation/cases", None).await,
        200,
        "list",
    );
    let ids: Vec<&str> = list["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| str_of(x, "case_id"))
        .collect();
    assert_eq!(ids, vec![text_case.as_str(), photo_case.as_str()], "{list}");
    let listed = &list["cases"][0];
    assert_eq!(listed["kind"], "message");
    assert_eq!(listed["status"], "open");
    assert_eq!(listed["reported_by"], bob.user_id.as_str());
    assert!(listed.get("content").is_none(), "the list shows no content");

    let text = read_case(&http, &c, &text_case).await;
    assert_eq!(text["content"]["body"], canary.as_str(), "{text}");
    assert_eq!(text["author"], alice.user_id.as_str());
    let ninety_days = 90 * 86_400_000i64;
    let retain = text["retain_until"].as_i64().unwrap() - text["reported_at"].as_i64().unwrap();
    assert_eq!(retain, ninety_days, "retain_until = reported_at + 90 days");
    let pic = read_case(&http, &c, &photo_case).await;
    assert_eq!(
        open_case_media(&pic).await,
        plain,
        "the quarantined photo decrypts"
    );
    assert!(!server.logs().contains(&canary), "the body is never logged");

    let log = access_log(&server, 0).await;
    let actions: Vec<(&str, Option<&str>)> = log
        .iter()
        .map(|e| (str_of(e, "action"), e["case_id"].as_str()))
        .collect();
    assert_eq!(
        actions,
        vec![
            ("list", None),
            ("read", Some(text_case.as_str())),
            ("read", Some(photo_case.as_str())),
        ]
    );
    let seqs: Vec<u64> = log.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "seq increases: {seqs:?}"
    );
    assert!(log.iter().all(|e| e["moderator"] == carol.user_id.as_str()));
    assert_eq!(access_log(&server, seqs[1]).await.len(), 1, "after= pages");

    // The operator's CLI shows the same log.
    let cli = |args: &[&str]| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_ephemera"));
        command
            .args(["admin", "--admin-url", &server.admin_base()])
            .args(args)
            .env("EPHEMERA_ADMIN_TOKEN", server.admin_token());
        ok(command.output().unwrap(), "ephemera admin")
    };
    let table = cli(&["access-log"]);
    assert!(
        table.contains("(3 entries)") && table.contains(&photo_case),
        "{table}"
    );

    // Revoked (through the CLI): 403 again. The log survives a restart
    // (kill -9).
    assert!(cli(&["moderator", "revoke", &carol.user_id]).contains("revoked"));
    assert_forbidden_everywhere(&http, &c, &text_case, "carol after the revoke").await;
    server.restart().await;
    let http = server.http();
    let after_restart = access_log(&server, 0).await;
    assert_eq!(after_restart, log, "the access log survives a restart");
    let c = carol.login(&http).await;
    assert_forbidden_everywhere(&http, &c, &text_case, "carol after restart").await;
    grant(&server, &carol.user_id).await;
    let again = read_case(&http, &c, &text_case).await;
    assert_eq!(again["content"]["body"], canary.as_str());
    let next = access_log(&server, seqs[2]).await;
    assert_eq!(next.len(), 1);
    assert!(
        next[0]["seq"].as_u64().unwrap() > seqs[2],
        "seq never reused"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reported_story_keeps_caption_and_media() {
    let server = Server::start(&[]).await;
    let http = server.http();
    let (_, _, carol, a, b, c) = cast(&http).await;
    let caption = format!("story caption canary {}", random_hex(6));
    let blobs = blob_client();
    let story = post_story(&http, &blobs, &a, "everyone", Some(4), Some(&caption)).await;
    let secret = post_story(&http, &blobs, &a, "close_friends", Some(60), None).await;
    add_close_friend(&http, &a, &carol.user_id).await;

    let own = json!({ "story_id": story.story_id, "reason": "x" });
    let unseen = json!({ "story_id": secret.story_id, "reason": "x" });
    let unknown = json!({ "story_id": random_hex(16), "reason": "x" });
    let refusals = [
        (&a, own, 422, "the author's own story"),
        (&b, unseen, 404, "a close-friends story bob may not see"),
        (&b, unknown, 404, "no such story"),
    ];
    refused(&http, refusals).await;
    let case = report_ok(
        &http,
        &b,
        json!({ "story_id": story.story_id, "reason": "spam" }),
    )
    .await;
    report_ok(
        &http,
        &c,
        json!({ "story_id": secret.story_id, "reason": "spam" }),
    )
    .await;

    sleep_until_ms(story.expires_at + 6_000).await;
    let late = json!({ "story_id": story.story_id, "reason": "late" });
    refused(&http, [(&b, late, 404, "an expired story")]).await;
    grant(&server, &carol.user_id).await;
    let got = read_case(&http, &c, &case).await;
    assert_eq!(got["kind"], "story");
    assert_eq!(got["story_id"], story.story_id.as_str());
    assert_eq!(got["content"]["caption"], caption.as_str(), "{got}");
    assert_eq!(
        open_case_media(&got).await,
        story.plain,
        "the story's photo decrypts"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holds_keep_content_past_retention_and_close_destroys_it() {
    // A retention of 0.0002 days: 17.28 s.
    let server = Server::start(&["--quarantine-retention-days", "0.0002"]).await;
    let http = server.http();
    let (_, bob, carol, a, b, c) = cast(&http).await;
    grant(&server, &carol.user_id).await;
    let mut sock = TestSocket::connect(&server, &a, "alice").await;
    let (held_msg, _) = send_text(&mut sock, &bob.user_id, "held text", 600).await;
    let (free_msg, _) = send_text(&mut sock, &bob.user_id, "free text", 600).await;
    let (photo_msg, _, plain) = send_photo(&http, &a, &mut sock, &bob.user_id, 600).await;
    let held = report_ok(&http, &b, json!({ "msg_id": held_msg, "reason": "r" })).await;
    let free = report_ok(&http, &b, json!({ "msg_id": free_msg, "reason": "r" })).await;
    let pic = report_ok(&http, &b, json!({ "msg_id": photo_msg, "reason": "r" })).await;

    // A hold in the past (or now) is refused; a later one is kept.
    let hold_path = format!("/api/v1/moderation/cases/{held}/hold");
    let hold = |until: i64| {
        call(
            &http,
            &c,
            Method::POST,
            &hold_path,
            Some(json!({ "until": until })),
        )
    };
    expect_status(hold(now_ms() - 1).await, 422, "a hold in the past");
    let hold_until = read_case(&http, &c, &held).await["retain_until"]
        .as_i64()
        .unwrap()
        + 8_000;
    let answer = expect_status(hold(hold_until).await, 200, "hold");
    assert_eq!(answer["hold_until"].as_i64(), Some(hold_until));

    // Close of the photo case: destroyed at once, blob and key with it.
    let before = read_case(&http, &c, &pic).await;
    assert_eq!(open_case_media(&before).await, plain);
    let url = str_of(&before["content"]["media"], "get_url").to_owned();
    let root = tempfile::tempdir().unwrap();
    let file = root.path().join("q.backup");
    ok(
        ephemera(&[
            "quarantine-backup",
            "--data-dir",
            path(server.data_dir()),
            "--out",
            path(&file),
        ]),
        "quarantine-backup",
    );
    let key = case_key_in_backup(&file, &pic);
    let qdir = server.data_dir().join("quarantine");
    assert!(
        !files_holding(&qdir, &key).is_empty(),
        "control: the case key is on disk before the close"
    );
    close_case(&http, &c, &pic).await;
    let after = read_case(&http, &c, &pic).await;
    assert!(after["content"].is_null(), "destroyed: {after}");
    let gone = blob_request(&blob_client(), Method::GET, &url, None).await;
    assert_eq!(
        gone.status,
        404,
        "the blob copy is deleted: {}",
        gone.describe()
    );
    assert_eq!(
        files_holding(&qdir, &key),
        Vec::<PathBuf>::new(),
        "no file of the quarantine keeps the case key"
    );

    // Past retain_until: the unheld case is destroyed by the sweep, the
    // held one is not.
    let retain_until = read_case(&http, &c, &free).await["retain_until"]
        .as_i64()
        .unwrap();
    sleep_until_ms(retain_until + 2_500).await;
    assert!(
        read_case(&http, &c, &free).await["content"].is_null(),
        "retention over"
    );
    let kept = read_case(&http, &c, &held).await;
    assert_eq!(
        kept["content"]["body"], "held text",
        "the hold keeps it: {kept}"
    );
    // Closing under a hold: closed, kept until the hold ends.
    close_case(&http, &c, &held).await;
    assert_eq!(
        read_case(&http, &c, &held).await["content"]["body"],
        "held text"
    );
    sleep_until_ms(hold_until + 2_500).await;
    let ended = read_case(&http, &c, &held).await;
    assert!(ended["content"].is_null(), "the hold ended: {ended}");
    let late_hold = hold(now_ms() + 60_000).await;
    expect_status(late_hold, 409, "a hold on destroyed content");
    let actions: Vec<String> = access_log(&server, 0)
        .await
        .iter()
        .map(|e| str_of(e, "action").to_owned())
        .collect();
    assert!(
        actions.iter().any(|a| a == "hold")
            && actions.iter().filter(|a| *a == "close").count() == 2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quarantine_backup_restores_readable_cases() {
    let mut server = Server::start(&[]).await;
    let http = server.http();
    let (_, bob, carol, a, b, _) = cast(&http).await;
    grant(&server, &carol.user_id).await;
    let r = send_and_report(&server, &http, &a, &b, &bob.user_id, 2).await;
    let (canary, plain) = (r.canary, r.plain);
    let (text_case, photo_case) = (r.text_case, r.photo_case);
    sleep_until_ms(r.expires_at + 1_000).await;

    // Both backups while the server runs.
    let root = tempfile::tempdir().unwrap();
    let accounts = root.path().join("accounts.backup");
    let quarantine = root.path().join("quarantine.backup");
    let env_token = server.admin_token().to_owned();
    let out = Command::new(env!("CARGO_BIN_EXE_ephemera"))
        .args([
            "backup",
            "--data-dir",
            path(server.data_dir()),
            "--out",
            path(&accounts),
        ])
        .env("EPHEMERA_ADMIN_TOKEN", &env_token)
        .output()
        .unwrap();
    ok(out, "backup");
    let summary = ok(
        ephemera(&[
            "quarantine-backup",
            "--data-dir",
            path(server.data_dir()),
            "--out",
            path(&quarantine),
        ]),
        "quarantine-backup",
    );
    assert!(
        summary.contains("2 cases") && summary.contains("1 blob copies"),
        "{summary}"
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&quarantine).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the backup is readable by its owner only");
    server.terminate(std::time::Duration::from_secs(20));

    let fresh = root.path().join("restored");
    ok(
        ephemera(&[
            "restore",
            "--data-dir",
            path(&fresh),
            "--from",
            path(&accounts),
        ]),
        "restore",
    );
    ok(
        ephemera(&[
            "quarantine-restore",
            "--data-dir",
            path(&fresh),
            "--from",
            path(&quarantine),
        ]),
        "quarantine-restore",
    );
    let refused = ephemera(&[
        "quarantine-restore",
        "--data-dir",
        path(&fresh),
        "--from",
        path(&quarantine),
    ]);
    assert!(
        !refused.status.success(),
        "a second restore into a non-empty quarantine is refused"
    );

    let restored = Server::start_in(&fresh, &[]).await;
    let http = restored.http();
    let c = carol.login(&http).await;
    let text = read_case(&http, &c, &text_case).await;
    assert_eq!(text["content"]["body"], canary.as_str(), "{text}");
    let pic = read_case(&http, &c, &photo_case).await;
    assert_eq!(
        open_case_media(&pic).await,
        plain,
        "the restored photo decrypts"
    );
    let log = access_log(&restored, 0).await;
    assert_eq!(
        log.len(),
        2,
        "the access log came back and goes on: {log:?}"
    );
}
