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

#[tokio::test]
async fn a_second_process_cannot_take_a_live_node_id() {
    let redis = Redis::start().await;
    let a = start_node(&redis, "node-a", &[]).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let started = Instant::now();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ephemera"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .arg("--data-dir")
        .arg(dir.path())
        .args(["--cluster-lease-ms", &LEASE_MS.to_string()])
        .env("EPHEMERA_REDIS_URL", redis.url())
        .env("EPHEMERA_NODE_ID", "node-a")
        .env("EPHEMERA_ADMIN_TOKEN", "x")
        .output()
        .expect("running a twin");
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
