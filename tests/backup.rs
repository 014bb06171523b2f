//! Backups without content (`ephemera backup`, `ephemera restore`): taken
//! from a running server, a backup holds accounts, the social graph and
//! conversation membership, and none of the messages, stories, media, data
//! keys, login tokens or the admin token; restored into an empty data
//! directory, users log in with their passwords and find their graph and
//! conversations, without any history.

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use base64::Engine as _;
use common::media::{blob_client, media_send, mint_for_file, seal_and_put};
use common::stories::{add_close_friend, counts, follow, post_story, user_stories};
use common::{
    full_history, new_cid, random_hex, register_user, str_of, u64_of, Server, TestSocket,
};
use ephemera_load::client::{timed_text, Target};

/// Runs the `ephemera` binary with `args` and only the `EPHEMERA_*`
/// variables of `env`.
fn ephemera(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_ephemera"));
    command.args(args);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("EPHEMERA_") {
            command.env_remove(&key);
        }
    }
    command
        .envs(env.iter().copied())
        .output()
        .expect("running the ephemera binary")
}

fn path(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 temp path")
}

/// `ephemera restore --data-dir data_dir --from file`.
fn restore(data_dir: &Path, file: &Path) -> Output {
    ephemera(
        &[
            "restore",
            "--data-dir",
            path(data_dir),
            "--from",
            path(file),
        ],
        &[],
    )
}

/// Panics if `needle` occurs in `haystack`.
fn assert_absent(haystack: &[u8], needle: &[u8], what: &str) {
    assert!(!needle.is_empty(), "{what}: an empty needle proves nothing");
    assert!(
        !haystack.windows(needle.len()).any(|w| w == needle),
        "the backup holds {what}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_holds_no_content_and_restores_accounts_graph_and_membership() {
    let mut server = Server::start(&[]).await;
    let http = server.http();
    let blobs = blob_client();
    let alice = register_user(&http, "alice").await;
    let bob = register_user(&http, "bob").await;
    let carol = register_user(&http, "carol").await;
    let (a, b, c) = (
        alice.login(&http).await,
        bob.login(&http).await,
        carol.login(&http).await,
    );

    // The social graph: alice and carol follow bob, bob follows alice,
    // alice keeps carol as a close friend.
    follow(&http, &a, &bob.user_id).await;
    follow(&http, &c, &bob.user_id).await;
    follow(&http, &b, &alice.user_id).await;
    add_close_friend(&http, &a, &carol.user_id).await;

    // Content with canaries: a group message, a media message, a story.
    let canary = format!("canary-body-{}", random_hex(12));
    let caption = format!("canary-caption-{}", random_hex(12));
    let media_plain = format!("canary-media-{}", random_hex(12)).repeat(40);
    let group = http
        .create_group(&a, &[&bob.user_id, &carol.user_id], Some("backup group"))
        .await
        .expect("creating the group");
    let mut a1 = TestSocket::connect(&server, &a, "alice-1").await;
    let ack = a1
        .send_ok(timed_text(
            &new_cid("canary"),
            Target::Conversation(&group),
            &canary,
            600,
        ))
        .await;
    let seq = u64_of(&ack, "seq");
    let upload = mint_for_file(&http, &a, "image/jpeg", media_plain.len()).await;
    let sealed = seal_and_put(&blobs, &upload, media_plain.as_bytes()).await;
    a1.send_ok(media_send(
        &new_cid("media"),
        &bob.user_id,
        &upload.media_key,
        "timed",
        600,
    ))
    .await;
    let story = post_story(&http, &blobs, &b, "everyone", Some(600), Some(&caption)).await;
    assert_eq!(full_history(&http, &b, &group).await.len(), 1);
    let before: Vec<(u64, u64)> = futures_util::future::join_all(
        [&alice, &bob, &carol].map(|u| counts(&http, &a, &u.user_id)),
    )
    .await;
    assert_eq!(before[1], (2, 1), "bob: 2 followers, following 1");

    // The backup, while the server runs (with the server's admin token in
    // its environment, as an operator's shell would have it).
    let root = tempfile::tempdir().expect("a temp dir");
    let file = root.path().join("ephemera.backup");
    let out = ephemera(
        &[
            "backup",
            "--data-dir",
            path(server.data_dir()),
            "--out",
            path(&file),
        ],
        &[("EPHEMERA_ADMIN_TOKEN", server.admin_token())],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "backup failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("accounts 3"), "{stdout}");
    let bytes = std::fs::read(&file).expect("reading the backup");
    assert!(
        bytes
            .windows(alice.username.len())
            .any(|w| w == alice.username.as_bytes()),
        "the accounts are in the backup"
    );
    let b64 = base64::engine::general_purpose::STANDARD;
    let b64url = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    assert_absent(&bytes, canary.as_bytes(), "the message body");
    assert_absent(&bytes, caption.as_bytes(), "the story caption");
    assert_absent(&bytes, &media_plain.as_bytes()[..40], "the media plaintext");
    assert_absent(&bytes, &sealed[..40], "the media ciphertext");
    assert_absent(&bytes, &story.sealed[..40], "the story's ciphertext");
    // Bodies and captions are sealed at rest, so their canaries alone would
    // miss a content row: the media and story ids find the rows themselves.
    for key in [&upload, &story.upload] {
        assert_absent(&bytes, &key.data_key, "a data key");
        assert_absent(&bytes, b64.encode(key.data_key).as_bytes(), "a data key");
        assert_absent(&bytes, b64url.encode(key.data_key).as_bytes(), "a data key");
        assert_absent(&bytes, key.media_key.as_bytes(), "a media id");
    }
    assert_absent(&bytes, story.story_id.as_bytes(), "the story id");
    for s in [&a, &b, &c] {
        assert_absent(&bytes, s.token.as_bytes(), "a login token");
    }
    assert_absent(&bytes, server.admin_token().as_bytes(), "the admin token");

    // Restore into an empty directory and start a server on it.
    let status = server.terminate(Duration::from_secs(20));
    assert!(status.success(), "graceful stop: {status:?}");
    let refused = restore(server.data_dir(), &file);
    assert!(!refused.status.success(), "restore into a non-empty dir");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("not empty"), "a clear error: {stderr}");

    let restored = root.path().join("restored");
    std::fs::create_dir(&restored).expect("an empty data dir");
    let out = restore(&restored, &file);
    assert!(
        out.status.success(),
        "restore failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let server = Server::start_in(&restored, &[]).await;
    let http = server.http();
    let (a, b) = (alice.login(&http).await, bob.login(&http).await);
    carol.login(&http).await;
    let after: Vec<(u64, u64)> = futures_util::future::join_all(
        [&alice, &bob, &carol].map(|u| counts(&http, &a, &u.user_id)),
    )
    .await;
    assert_eq!(after, before, "follower/following counts come back");

    let listed = http.list_conversations(&a).await.expect("conversations");
    let g = listed
        .iter()
        .find(|c| c.conversation_id == group)
        .unwrap_or_else(|| panic!("the group comes back: {listed:?}"));
    let mut members = g.members.clone();
    members.sort();
    let mut want = vec![
        alice.user_id.clone(),
        bob.user_id.clone(),
        carol.user_id.clone(),
    ];
    want.sort();
    assert_eq!(members, want, "the group's members come back");
    assert!(g.last_seq >= seq, "seqs do not go backwards: {g:?}");
    assert!(
        full_history(&http, &b, &group).await.is_empty(),
        "no message history comes back"
    );
    assert!(
        user_stories(&http, &a, &bob.user_id).await.is_empty(),
        "no story comes back"
    );
    let mut b1 = TestSocket::connect(&server, &b, "bob-1").await;
    let synced = b1.sync(0).await;
    assert!(
        synced.events.iter().all(|f| str_of(f, "type") != "message"),
        "no message through sync: {:?}",
        synced.events
    );
}
