//! No side channels (DESIGN.md): a server logging at `trace` is driven with
//! traffic full of canaries (message bodies, a view-once body, a media key,
//! a story caption, a reply, refused frames and calls that carry them, the
//! login tokens, one in a socket URL's `?token=`) and afterwards no canary,
//! no token and no data key appears in its log, its metrics, or any error
//! it answered.

mod common;

use common::media::{blob_client, media_send};
use common::socket::TestSocket;
use common::stories::{create_story, follow, post_story, reply, story_body, upload_photo};
use common::{new_cid, random_hex, register_user, Server};
use reqwest::Method;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_content_key_or_token_in_logs_metrics_or_errors_at_trace() {
    let server = Server::start_with_env(&[], &[("RUST_LOG", "trace")]).await;
    let http = server.http();
    let blobs = blob_client();
    let canary = |what: &str| format!("canary{what}{}", random_hex(8));
    let alice = register_user(&http, "alice").await;
    let bob = register_user(&http, "bob").await;
    let a = alice.login(&http).await;
    let b = bob.login(&http).await;
    let mut secrets: Vec<String> = vec![
        a.token.clone(),
        b.token.clone(),
        server.admin_token().to_owned(),
    ];
    let mut answers: Vec<String> = Vec::new();

    // Bob's devices: one with the token in the header, one in `?token=`.
    let mut b1 = TestSocket::connect(&server, &b, "bob-header").await;
    let mut b2 = TestSocket::connect_query(&server, &b, "bob-query").await;
    let mut a1 = TestSocket::connect(&server, &a, "alice").await;

    // Messages: timed, view-once (viewed), and a photo.
    let timed = canary("timed");
    a1.send_ok(
        json!({"type":"send","client_msg_id":new_cid("t"),"to":bob.user_id,
        "body":timed,"view_policy":"timed","ttl_seconds":60}),
    )
    .await;
    let once = canary("once");
    let ack = a1
        .send_ok(
            json!({"type":"send","client_msg_id":new_cid("o"),"to":bob.user_id,
            "body":once,"view_policy":"once","ttl_seconds":60}),
        )
        .await;
    let once_id = ack["msg_id"].as_str().expect("msg_id").to_owned();
    b1.send(json!({"type":"view","msg_id":once_id})).await;
    let viewed = b1
        .expect("view_result", |f| f["type"] == "view_result")
        .await;
    assert_eq!(viewed["result"], "granted", "{viewed}");
    let (photo, _, _) = upload_photo(&http, &blobs, &a, 600).await;
    secrets.push(photo.data_key_b64.clone());
    a1.send_ok(media_send(
        &new_cid("p"),
        &bob.user_id,
        &photo.media_key,
        "timed",
        60,
    ))
    .await;

    // Refused frames carrying canaries: the errors never echo them.
    let big = format!("{}{}", canary("big"), "x".repeat(20_000));
    let refused = [
        json!({"type":"send","client_msg_id":new_cid("big"),"to":bob.user_id,
            "body":big,"view_policy":"timed","ttl_seconds":60}),
        json!({"type":"send","client_msg_id":new_cid("pol"),"to":bob.user_id,
            "body":canary("policy"),"view_policy":canary("policy"),"ttl_seconds":60}),
        json!({"type":"send","client_msg_id":new_cid("ttl"),"to":bob.user_id,
            "body":canary("ttl"),"view_policy":"timed","ttl_seconds":-5}),
    ];
    let mut canaries = vec![timed, once];
    for frame in refused {
        canaries.push(
            frame["body"]
                .as_str()
                .expect("a body")
                .chars()
                .take(30)
                .collect(),
        );
        let cid = frame["client_msg_id"].as_str().expect("cid").to_owned();
        // Raw: these break the client schema on purpose.
        a1.send_raw(&frame.to_string())
            .await
            .expect("sending a frame");
        answers.push(a1.expect_error(Some(&cid)).await.to_string());
    }
    let garbage = canary("garbage");
    a1.send_raw(&format!("{{\"type\":\"{garbage}\"}}"))
        .await
        .expect("sending a bad frame");
    answers.push(a1.expect_error(None).await.to_string());
    canaries.push(garbage);

    // Stories: a caption, a reply, and refused calls carrying canaries.
    follow(&http, &b, &alice.user_id).await;
    let caption = canary("caption");
    let story = post_story(&http, &blobs, &a, "everyone", Some(60), Some(&caption)).await;
    secrets.push(story.upload.data_key_b64.clone());
    canaries.push(caption);
    let answer = canary("reply");
    let r = reply(&http, &b, &story.story_id, &answer).await;
    assert_eq!(r.status, 201, "{r:?}");
    canaries.push(answer);
    let (unused, _, _) = upload_photo(&http, &blobs, &a, 600).await;
    secrets.push(unused.data_key_b64.clone());
    let long = format!("{}{}", canary("longcaption"), "y".repeat(3_000));
    let r = create_story(
        &http,
        &a,
        story_body(&unused.media_key, "everyone", Some(60), Some(&long)),
    )
    .await;
    assert_eq!(r.status, 422, "{r:?}");
    answers.push(format!("{r:?}"));
    canaries.push(long.chars().take(30).collect());
    let audience = canary("audience");
    let r = create_story(
        &http,
        &a,
        json!({"media_key": unused.media_key, "audience": audience}),
    )
    .await;
    assert_eq!(r.status, 422, "{r:?}");
    answers.push(format!("{r:?}"));
    canaries.push(audience);
    let path = canary("path");
    let r = http
        .raw(
            Method::GET,
            &format!("/api/v1/stories/{path}"),
            Some(&a.token),
            None,
        )
        .await
        .expect("a call");
    assert_eq!(r.status, 404, "{r:?}");
    answers.push(format!("{r:?}"));
    canaries.push(path);

    // Everything reached bob (so the content did pass through the server).
    for sock in [&mut b1, &mut b2] {
        sock.expect("the timed canary", |f| {
            f["body"].as_str() == Some(canaries[0].as_str())
        })
        .await;
    }

    let metrics = server.metrics_text().await;
    let logs = server.logs();
    assert!(
        logs.lines().count() > 100,
        "the server logged at trace ({} lines)",
        logs.lines().count()
    );
    for (name, text) in [
        ("the log", &logs),
        ("the metrics", &metrics),
        ("the error answers", &answers.join("\n")),
    ] {
        for c in &canaries {
            assert!(!text.contains(c.as_str()), "{name} holds a canary ({c})");
        }
        for s in &secrets {
            assert!(
                !text.contains(s.as_str()),
                "{name} holds a token or data key"
            );
        }
    }
}
