//! Calls (PROTOCOL 10) against the real binary: `call` frames relayed
//! between a caller and a callee with two devices (ring both, the first
//! answer binds, the other device is told, ICE only between the pair,
//! hangup), reject, the ring timeout, a socket going away mid-call, bad
//! frames, the per-user bound, the SDP and ICE text never in the server's
//! logs; and TURN credentials from `GET /api/v1/calls/turn`, accepted by a
//! real coturn (`turnserver` with `use-auth-secret`, `turnutils_uclient`
//! doing an allocation) and refused when forged or expired.

mod common;

use std::net::{TcpListener, UdpSocket};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use common::stories::{call, expect_status};
use common::{random_hex, register_user, str_of, Server, TestSocket, TestUser};
use ephemera_load::client::{Http, Session};
use reqwest::Method;
use serde_json::{json, Value};

/// A `call` frame from a client.
fn call_frame(call_id: &str, to: &str, action: &str, data: Option<&str>) -> Value {
    let mut f = json!({"type": "call", "call_id": call_id, "to": to, "action": action});
    if let Some(d) = data {
        f["data"] = json!(d);
    }
    f
}

/// Whether `f` is a server `call` frame of `call_id` with `action`.
fn is_call(f: &Value, call_id: &str, action: &str) -> bool {
    f["type"] == "call" && f["call_id"] == call_id && f["action"] == action
}

/// Waits for the `call` frame of `call_id` with `action` on `socket`.
async fn expect_call(socket: &mut TestSocket, call_id: &str, action: &str) -> Value {
    socket
        .expect(&format!("call {action} for {call_id}"), |f| {
            is_call(f, call_id, action)
        })
        .await
}

/// Sends `frame` and returns the code of the error answering it (by its
/// call_id).
async fn refused(socket: &mut TestSocket, frame: Value) -> String {
    let id = str_of(&frame, "call_id").to_owned();
    let e = socket.send_expect_error(frame, Some(&id)).await;
    assert!(!str_of(&e, "message").is_empty(), "{e}");
    str_of(&e, "code").to_owned()
}

/// A device: its login and its open socket.
type Device = (Session, TestSocket);

/// A user with `devices` sockets open (each answered a `ping`, so it is
/// attached).
async fn user_with(
    server: &Server,
    http: &Http,
    name: &str,
    devices: usize,
) -> (TestUser, Vec<Device>) {
    let user = register_user(http, name).await;
    let mut out = Vec::new();
    for n in 0..devices {
        let s = user.login(http).await;
        let mut socket = TestSocket::connect(server, &s, &format!("{name}{n}")).await;
        socket.ping().await;
        out.push((s, socket));
    }
    (user, out)
}

/// A server (logging at `debug`, as verbose as an operator may make it)
/// with a ring timeout of `ring` seconds; Alice with one device and Bob
/// with `bob_devices`.
struct Scene {
    server: Server,
    http: Http,
    alice: TestUser,
    a: TestSocket,
    a_device: String,
    bob: TestUser,
    b: Vec<Device>,
}

impl Scene {
    async fn start(ring: u64, bob_devices: usize) -> Scene {
        let ring = ring.to_string();
        let server = Server::start_with_env(
            &["--call-ring-timeout-seconds", &ring],
            &[("RUST_LOG", "debug")],
        )
        .await;
        let http = server.http();
        let (alice, mut a) = user_with(&server, &http, "caller", 1).await;
        let (bob, b) = user_with(&server, &http, "callee", bob_devices).await;
        let (session, a) = a.remove(0);
        Scene {
            server,
            http,
            alice,
            a,
            a_device: session.device_id,
            bob,
            b,
        }
    }

    /// Alice calls Bob with `offer`: every device of his rings, with her
    /// device as `from_device` and the offer as written.
    async fn ring(&mut self, id: &str, offer: &str) {
        self.a
            .send(call_frame(id, &self.bob.user_id, "offer", Some(offer)))
            .await;
        for (_, s) in self.b.iter_mut() {
            let ring = expect_call(s, id, "offer").await;
            assert_eq!(str_of(&ring, "from"), self.alice.user_id);
            assert_eq!(str_of(&ring, "from_device"), self.a_device);
            assert_eq!(str_of(&ring, "data"), offer, "relayed as written");
            assert!(ring.get("reason").is_none(), "{ring}");
        }
    }

    /// Bob's device `n` answers: Alice gets the answer from that device.
    async fn answer(&mut self, id: &str, n: usize, answer: &str) {
        self.b[n]
            .1
            .send(call_frame(id, &self.alice.user_id, "answer", Some(answer)))
            .await;
        let got = expect_call(&mut self.a, id, "answer").await;
        assert_eq!(str_of(&got, "from"), self.bob.user_id);
        assert_eq!(str_of(&got, "from_device"), self.b[n].0.device_id);
        assert_eq!(str_of(&got, "data"), answer);
    }

    /// A frame from Alice about call `id`.
    fn to_bob(&self, id: &str, action: &str, data: Option<&str>) -> Value {
        call_frame(id, &self.bob.user_id, action, data)
    }

    /// A frame from Bob about call `id`.
    fn to_alice(&self, id: &str, action: &str, data: Option<&str>) -> Value {
        call_frame(id, &self.alice.user_id, action, data)
    }
}

#[tokio::test]
async fn a_call_rings_every_device_binds_to_the_first_answer_and_relays_only_between_the_pair() {
    let mut s = Scene::start(20, 2).await;
    let canary = format!("CANARY-SDP-{}", random_hex(8));
    let early_ice = format!("candidate:1 {canary}-early");
    let caller_ice = format!("candidate:2 {canary}-caller");
    let callee_ice = format!("candidate:3 {canary}-callee");
    let id = format!("call-{}", random_hex(4));
    s.ring(&id, &format!("v=0 o=- {canary}-offer")).await;

    // Before the answer, the caller's candidates reach every ringing
    // device; a callee device cannot send ICE before it answers.
    s.a.send(s.to_bob(&id, "ice", Some(&early_ice))).await;
    for (_, b) in s.b.iter_mut() {
        let ice = expect_call(b, &id, "ice").await;
        assert_eq!(str_of(&ice, "data"), early_ice);
    }
    let early = s.to_alice(&id, "ice", Some("x"));
    assert_eq!(refused(&mut s.b[1].1, early).await, "invalid");

    // The first answer binds the call to Bob's first device; the second
    // is told, and its own answer finds no call.
    s.answer(&id, 0, &format!("v=0 o=- {canary}-answer")).await;
    let elsewhere = expect_call(&mut s.b[1].1, &id, "hangup").await;
    assert_eq!(str_of(&elsewhere, "reason"), "answered_elsewhere");
    assert_eq!(str_of(&elsewhere, "from"), s.alice.user_id);
    let late = s.to_alice(&id, "answer", Some("x"));
    assert_eq!(refused(&mut s.b[1].1, late).await, "not_found");

    // ICE both ways between the bound pair; the other device's is refused.
    s.a.send(s.to_bob(&id, "ice", Some(&caller_ice))).await;
    let ice = expect_call(&mut s.b[0].1, &id, "ice").await;
    assert_eq!(str_of(&ice, "data"), caller_ice);
    let frame = s.to_alice(&id, "ice", Some(&callee_ice));
    s.b[0].1.send(frame).await;
    let ice = expect_call(&mut s.a, &id, "ice").await;
    assert_eq!(str_of(&ice, "from_device"), s.b[0].0.device_id);
    assert_eq!(str_of(&ice, "data"), callee_ice);
    let stray = s.to_alice(&id, "ice", Some("y"));
    assert_eq!(refused(&mut s.b[1].1, stray).await, "not_found");

    // Hangup from the caller reaches the bound device; the call is gone.
    s.a.send(s.to_bob(&id, "hangup", None)).await;
    let hangup = expect_call(&mut s.b[0].1, &id, "hangup").await;
    assert!(
        hangup.get("reason").is_none(),
        "relayed as written: {hangup}"
    );
    assert_eq!(str_of(&hangup, "from_device"), s.a_device);
    let after = s.to_alice(&id, "ice", Some("z"));
    assert_eq!(refused(&mut s.b[0].1, after).await, "not_found");

    // The third device got nothing after the answer: not the pair's ICE,
    // no hangup but its own answered_elsewhere.
    let pair = [caller_ice.as_str(), callee_ice.as_str()];
    s.b[1]
        .1
        .assert_never(Duration::from_millis(300), "the pair's ICE", |f| {
            f["type"] == "call" && f["data"].as_str().is_some_and(|d| pair.contains(&d))
        })
        .await;
    let calls: Vec<&Value> = s.b[1]
        .1
        .seen()
        .iter()
        .filter(|f| f["type"] == "call")
        .collect();
    assert_eq!(
        calls.len(),
        3,
        "offer, early ice, answered_elsewhere: {calls:?}"
    );

    // The SDP and ICE text were relayed but never logged.
    let logs = s.server.logs();
    assert!(logs.contains("call ended"), "debug logs are on");
    assert!(
        !logs.contains(&canary),
        "SDP or ICE text in the server logs"
    );
}

#[tokio::test]
async fn a_reject_from_any_callee_device_ends_the_call() {
    let mut s = Scene::start(20, 2).await;
    let id = "reject-me";
    s.ring(id, "v=0").await;
    let own = s.to_bob(id, "reject", None);
    assert_eq!(
        refused(&mut s.a, own).await,
        "invalid",
        "the caller cannot reject"
    );
    let reject = s.to_alice(id, "reject", None);
    s.b[1].1.send(reject).await;
    let got = expect_call(&mut s.a, id, "reject").await;
    assert_eq!(str_of(&got, "reason"), "rejected");
    assert_eq!(str_of(&got, "from_device"), s.b[1].0.device_id);
    let other = expect_call(&mut s.b[0].1, id, "hangup").await;
    assert_eq!(str_of(&other, "reason"), "rejected");
    // Over: nothing more passes, and the call_id is free again.
    let ice = s.to_bob(id, "ice", Some("c"));
    assert_eq!(refused(&mut s.a, ice).await, "not_found");
    s.ring(id, "v=0 again").await;
}

#[tokio::test]
async fn an_unanswered_call_times_out_on_both_sides() {
    let mut s = Scene::start(2, 2).await;
    let id = "nobody-home";
    let started = Instant::now();
    s.ring(id, "v=0").await;
    let wait = Duration::from_secs(6);
    let to_caller =
        s.a.expect_within(wait, "timeout", |f| is_call(f, id, "hangup"))
            .await;
    let rang_for = started.elapsed();
    assert_eq!(str_of(&to_caller, "reason"), "timeout");
    assert_eq!(str_of(&to_caller, "from"), s.bob.user_id);
    assert!(to_caller.get("from_device").is_none(), "{to_caller}");
    assert!(
        rang_for >= Duration::from_millis(1_800) && rang_for < Duration::from_secs(5),
        "call_ring_timeout_seconds is 2, it rang {rang_for:?}"
    );
    for (_, b) in s.b.iter_mut() {
        let f = b
            .expect_within(wait, "timeout", |f| is_call(f, id, "hangup"))
            .await;
        assert_eq!(str_of(&f, "reason"), "timeout");
    }
    let late = s.to_alice(id, "answer", Some("late"));
    assert_eq!(refused(&mut s.b[0].1, late).await, "not_found");
}

#[tokio::test]
async fn a_bound_device_going_offline_ends_the_call_for_the_other_side() {
    let mut s = Scene::start(20, 2).await;

    // The callee's bound device goes away mid-call.
    s.ring("mid-call-1", "v=0").await;
    s.answer("mid-call-1", 0, "v=0 a").await;
    let (b0_session, b0) = s.b.remove(0);
    b0.close().await;
    let gone = expect_call(&mut s.a, "mid-call-1", "hangup").await;
    assert_eq!(str_of(&gone, "reason"), "disconnected");
    assert_eq!(str_of(&gone, "from_device"), b0_session.device_id);

    // The caller goes away mid-call.
    s.ring("mid-call-2", "v=0").await;
    s.answer("mid-call-2", 0, "v=0 a").await;
    let session = s.alice.login(&s.http).await;
    let a = std::mem::replace(
        &mut s.a,
        TestSocket::connect(&s.server, &session, "caller-again").await,
    );
    a.close().await;
    let gone = expect_call(&mut s.b[0].1, "mid-call-2", "hangup").await;
    assert_eq!(str_of(&gone, "reason"), "disconnected");
    assert_eq!(str_of(&gone, "from_device"), s.a_device);

    // And while ringing: the caller leaving stops the ring.
    s.a.ping().await;
    s.a_device = session.device_id;
    s.ring("ringing-then-gone", "v=0").await;
    s.a.close().await;
    let gone = expect_call(&mut s.b[0].1, "ringing-then-gone", "hangup").await;
    assert_eq!(str_of(&gone, "reason"), "disconnected");
}

#[tokio::test]
async fn a_device_that_connects_while_a_call_rings_is_rung_too() {
    let mut s = Scene::start(20, 0).await;
    s.ring("wake-up", "v=0 late").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let session = s.bob.login(&s.http).await;
    let mut b = TestSocket::connect(&s.server, &session, "late").await;
    let ring = expect_call(&mut b, "wake-up", "offer").await;
    assert_eq!(str_of(&ring, "data"), "v=0 late");
}

#[tokio::test]
async fn bad_call_frames_get_clear_errors() {
    let server = Server::start(&["--max-calls-per-user", "2"]).await;
    let http = server.http();
    let (alice, mut a) = user_with(&server, &http, "caller", 1).await;
    let (bob, mut b) = user_with(&server, &http, "callee", 1).await;
    let (carol, mut c) = user_with(&server, &http, "third", 1).await;
    let (a, b, c) = (&mut a[0].1, &mut b[0].1, &mut c[0].1);
    let long = "x".repeat(65);
    let big = "a".repeat(16 * 1024 + 1);
    let nobody = "0".repeat(32);
    let cases = [
        (call_frame(&long, &bob.user_id, "hangup", None), "invalid"),
        (
            call_frame("no-data", &bob.user_id, "offer", None),
            "invalid",
        ),
        (
            call_frame("me", &alice.user_id, "offer", Some("v=0")),
            "invalid",
        ),
        (
            call_frame("big", &bob.user_id, "offer", Some(&big)),
            "too_large",
        ),
        (
            call_frame("who", &nobody, "offer", Some("v=0")),
            "not_found",
        ),
        (
            call_frame("none", &bob.user_id, "ice", Some("c")),
            "not_found",
        ),
    ];
    for (frame, code) in cases {
        let text = frame.to_string();
        a.send_raw(&text).await.unwrap();
        let e = a.expect_error(Some(str_of(&frame, "call_id"))).await;
        assert_eq!(str_of(&e, "code"), code, "{text:.120}");
    }
    // An unknown action is a bad frame, its call_id still the ref.
    let dance = r#"{"type":"call","call_id":"k","to":"x","action":"dance"}"#;
    a.send_raw(dance).await.unwrap();
    assert_eq!(
        str_of(&a.expect_error(Some("k")).await, "code"),
        "bad_frame"
    );

    // A call_id in use between the two users is refused, from either side.
    a.send(call_frame("dup", &bob.user_id, "offer", Some("v=0")))
        .await;
    expect_call(b, "dup", "offer").await;
    let again = call_frame("dup", &bob.user_id, "offer", Some("v=0"));
    assert_eq!(refused(a, again).await, "invalid");
    let back = call_frame("dup", &alice.user_id, "offer", Some("v=0"));
    assert_eq!(refused(b, back).await, "invalid");

    // Bounded calls per user (2 here): Bob is in one; Carol's call fills
    // him up, so Alice finds him busy; Alice in two calls is refused a
    // third.
    c.send(call_frame("c1", &bob.user_id, "offer", Some("v=0")))
        .await;
    expect_call(b, "c1", "offer").await;
    a.send(call_frame("a2", &bob.user_id, "offer", Some("v=0")))
        .await;
    let busy = expect_call(a, "a2", "hangup").await;
    assert_eq!(str_of(&busy, "reason"), "busy");
    a.send(call_frame("a3", &carol.user_id, "offer", Some("v=0")))
        .await;
    expect_call(c, "a3", "offer").await;
    let fourth = call_frame("a4", &carol.user_id, "offer", Some("v=0"));
    assert_eq!(refused(a, fourth).await, "rate_limited");
}

// ---------------------------------------------------------------------------
// TURN
// ---------------------------------------------------------------------------

/// A port free on loopback for both UDP and TCP (TURN listens on both).
fn free_port() -> u16 {
    loop {
        let udp = UdpSocket::bind("127.0.0.1:0").expect("binding a UDP port");
        let port = udp.local_addr().unwrap().port();
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// base64 HMAC-SHA1 of `username` under `secret`: a TURN REST credential.
fn credential(secret: &str, username: &str) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, secret.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(ring::hmac::sign(&key, username.as_bytes()))
}

/// A `turnserver` (coturn) on loopback that checks TURN REST credentials
/// under `secret`, and a `turnutils_peer` its allocations can send to;
/// both killed on drop.
struct Coturn {
    port: u16,
    peer_port: u16,
    children: Vec<tokio::process::Child>,
}

impl Coturn {
    async fn start(dir: &Path, secret: &str) -> Coturn {
        let port = free_port();
        let peer_port = free_port();
        let log = std::fs::File::create(dir.join("turnserver.log")).unwrap();
        let server = tokio::process::Command::new("turnserver")
            .args([
                "-n",
                "--no-cli",
                "--no-tls",
                "--no-dtls",
                "--allow-loopback-peers",
            ])
            .args(["--listening-ip", "127.0.0.1", "--relay-ip", "127.0.0.1"])
            .arg(format!("--listening-port={port}"))
            .args([
                "--use-auth-secret",
                &format!("--static-auth-secret={secret}"),
            ])
            .args(["--realm", "ephemera.test"])
            .arg(format!("--userdb={}", dir.join("turndb").display()))
            .arg(format!(
                "--pidfile={}",
                dir.join("turnserver.pid").display()
            ))
            .args(["--log-file", "stdout", "--simple-log"])
            .stdout(log)
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("starting turnserver (coturn; scripts/test.sh installs it)");
        let peer = tokio::process::Command::new("turnutils_peer")
            .args(["-L", "127.0.0.1", "-p", &peer_port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("starting turnutils_peer (coturn)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "turnserver did not listen on {port}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Coturn {
            port,
            peer_port,
            children: vec![server, peer],
        }
    }

    /// One allocation (and a message relayed to the peer) with these
    /// credentials: whether coturn accepted it, and what the client said.
    async fn allocate(&self, username: &str, password: &str) -> (bool, String) {
        let run = tokio::process::Command::new("turnutils_uclient")
            .args(["-p", &self.port.to_string(), "-u", username, "-w", password])
            .args([
                "-n",
                "1",
                "-e",
                "127.0.0.1",
                "-r",
                &self.peer_port.to_string(),
            ])
            .arg("127.0.0.1")
            .kill_on_drop(true)
            .output();
        let out = tokio::time::timeout(Duration::from_secs(30), run)
            .await
            .expect("turnutils_uclient finished")
            .expect("running turnutils_uclient (coturn)");
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.success(), text)
    }
}

impl Drop for Coturn {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.start_kill();
        }
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[tokio::test]
async fn turn_credentials_are_accepted_by_coturn_and_refused_forged_or_expired() {
    let secret = format!("turn-secret-{}", random_hex(8));
    let server = Server::start_with_env(
        &["--turn-ttl-seconds", "600"],
        &[
            ("EPHEMERA_TURN_SECRET", secret.as_str()),
            (
                "EPHEMERA_TURN_URLS",
                "turn:127.0.0.1:3478?transport=udp,turn:127.0.0.1:3478?transport=tcp",
            ),
        ],
    )
    .await;
    let http = server.http();
    let alice = register_user(&http, "turner").await;
    let session = alice.login(&http).await;

    // Unauthenticated: 401.
    let r = http
        .raw(Method::GET, "/api/v1/calls/turn", None, None)
        .await
        .unwrap();
    assert_eq!(r.status, 401);

    let before = unix_now();
    let body = expect_status(
        call(&http, &session, Method::GET, "/api/v1/calls/turn", None).await,
        200,
        "GET /api/v1/calls/turn",
    );
    let urls: Vec<&str> = body["urls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u.as_str().unwrap())
        .collect();
    assert_eq!(
        urls,
        [
            "turn:127.0.0.1:3478?transport=udp",
            "turn:127.0.0.1:3478?transport=tcp"
        ],
        "EPHEMERA_TURN_URLS is comma-separated"
    );
    assert_eq!(body["ttl_seconds"], 600);
    let username = str_of(&body, "username").to_owned();
    let password = str_of(&body, "credential").to_owned();
    let (expiry, user) = username.split_once(':').unwrap();
    assert_eq!(user, alice.user_id);
    let expiry: u64 = expiry.parse().unwrap();
    assert!(
        (before + 600..=unix_now() + 600).contains(&expiry),
        "{username}"
    );
    assert_eq!(password, credential(&secret, &username));
    assert!(
        !server.logs().contains(&secret),
        "the TURN secret in the logs"
    );

    // A real coturn accepts them, and refuses forged and expired ones.
    let dir = tempfile::tempdir().unwrap();
    let coturn = Coturn::start(dir.path(), &secret).await;
    let (ok, out) = coturn.allocate(&username, &password).await;
    assert!(ok, "coturn refused fresh credentials:\n{out}");
    let forged = credential("not-the-secret", &username);
    let (ok, out) = coturn.allocate(&username, &forged).await;
    assert!(!ok, "coturn accepted a forged credential:\n{out}");
    assert!(out.contains("Cannot complete Allocation"), "{out}");
    let stale = format!("{}:{}", unix_now() - 60, alice.user_id);
    let (ok, out) = coturn.allocate(&stale, &credential(&secret, &stale)).await;
    assert!(!ok, "coturn accepted expired credentials:\n{out}");
    assert!(out.contains("Cannot complete Allocation"), "{out}");
    // A credential for another user's name does not carry over.
    let (ok, _) = coturn
        .allocate(&format!("{expiry}:{}", "0".repeat(32)), &password)
        .await;
    assert!(!ok, "a credential works only for its own username");
}

#[tokio::test]
async fn without_a_turn_secret_the_turn_call_is_not_found() {
    let server = Server::start(&[]).await;
    let http = server.http();
    let alice = register_user(&http, "noturn").await;
    let session = alice.login(&http).await;
    let body = expect_status(
        call(&http, &session, Method::GET, "/api/v1/calls/turn", None).await,
        404,
        "GET /api/v1/calls/turn without turn_secret",
    );
    assert_eq!(body["error"]["code"], "not_found");
}
