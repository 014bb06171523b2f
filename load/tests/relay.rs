//! The bare relay (`ephemera-relay`) against the load generator: a short
//! message run, in pairs and in groups, must come out verified, so the
//! relay is a fair control for `scripts/bench.sh`; and the frames it
//! answers outside a run.

use std::io::{BufRead as _, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use ephemera_load::client::{self, Http, Socket, Target};
use ephemera_load::config::LoadConfig;
use ephemera_load::run;
use ephemera_load::schedule::{Plan, RateProfile, Shares};

/// A relay on a free port, killed on drop.
struct Relay {
    child: Child,
    base: String,
}

impl Relay {
    fn start() -> Relay {
        let mut child = Command::new(env!("CARGO_BIN_EXE_ephemera-relay"))
            .args(["--listen", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .spawn()
            .expect("the relay binary starts");
        let stdout = child.stdout.take().expect("stdout is piped");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("the relay prints its ready line");
        let addr = line
            .trim()
            .strip_prefix("RELAY_READY http=")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_owned();
        Relay {
            child,
            base: format!("http://{addr}"),
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_load_run_against_the_relay_verifies() {
    let relay = Relay::start();
    let mut cfg = LoadConfig::new(vec![relay.base.clone()]);
    cfg.users = 20;
    cfg.register = true;
    cfg.profile = RateProfile::flat(200.0, 2.0);
    let report = run::run(&cfg).await.expect("the run completes");
    let c = &report.counts;
    assert!(c.scheduled >= 390, "{c:?}");
    assert_eq!(c.sent, c.scheduled, "{c:?}");
    assert_eq!(c.acked, c.sent, "every send acked: {c:?}");
    assert_eq!(c.delivered, c.acked, "{c:?}");
    assert_eq!((c.lost, c.duplicates, c.unanswered), (0, 0, 0), "{c:?}");
    assert!(c.errors_by_code.is_empty(), "{c:?}");
    assert!(report.verified(), "{}", report.summary_table());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_run_counts_every_frame_at_every_member() {
    let relay = Relay::start();
    let mut cfg = LoadConfig::new(vec![relay.base.clone()]);
    // Groups of 8, 8 and 4; two devices each, so a message makes
    // (members - 1) * 2 frames at the others and 1 at the sender's other
    // device: 15, or 7 in the last group.
    cfg.users = 20;
    cfg.devices = 2;
    cfg.group_size = Some(8);
    cfg.register = true;
    cfg.prefix = "grp".into();
    cfg.profile = RateProfile::flat(100.0, 2.0);
    let report = run::run(&cfg).await.expect("the run completes");
    let c = &report.counts;
    let table = report.summary_table();
    assert_eq!(c.scheduled, 200, "{table}");
    assert_eq!((c.sent, c.acked, c.delivered), (200, 200, 200), "{table}");
    assert_eq!((c.lost, c.duplicates, c.unexpected), (0, 0, 0), "{table}");
    assert!(c.errors_by_code.is_empty(), "{table}");
    let plan = Plan {
        users: 20,
        devices: 2,
        pairing: cfg.pairing,
        shares: Shares::PLAIN,
        groups: cfg.groups(),
    };
    let expected: u64 = (0..200).map(|k| u64::from(plan.expected(k).count())).sum();
    // Users 0..16 send 15 frames, 16..20 send 7: 10 * (16 * 15 + 4 * 7).
    assert_eq!(expected, 2680);
    assert_eq!(c.device_deliveries, expected, "{table}");
    assert_eq!(
        report.latency.frame.count, expected,
        "one latency per frame"
    );
    assert_eq!(report.latency.delivery.count, 200, "{table}");
    let g = report.group.as_ref().expect("a group report");
    assert_eq!((g.size, g.groups), (8, 3));
    assert!((g.frames_per_message - 13.4).abs() < 1e-9, "{g:?}");
    assert!(g.delivered_frame_rate > 1000.0, "{g:?}");
    assert!(g.generator_cpu_us_per_frame.is_some(), "{g:?}");
    assert!(report.series.iter().map(|p| p.frames).sum::<u64>() <= expected);
    assert!(table.contains("3 of 8 members"), "{table}");
    assert!(report.verified(), "{table}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_makes_groups_of_at_most_256() {
    let relay = Relay::start();
    let http = Http::new(&relay.base).unwrap();
    let ws_url = format!(
        "ws://{}/api/v1/ws",
        relay.base.trim_start_matches("http://")
    );
    let mut ids = Vec::new();
    for i in 0..257 {
        ids.push(
            http.register(&format!("m{i}"), "password123")
                .await
                .unwrap()
                .user_id,
        );
    }
    let owner = http.login("m0", "password123", None).await.unwrap();
    let other = http.login("m1", "password123", None).await.unwrap();
    // 256 with the caller (listed or not): accepted; 257: refused.
    let group = http.create_group(&owner, &ids[1..256], None).await.unwrap();
    http.create_group(&owner, &ids[..256], None).await.unwrap();
    let too_many = http
        .create_group(&owner, &ids[1..], None)
        .await
        .unwrap_err();
    assert_eq!(client::api_error(&too_many).map(|e| e.status), Some(422));
    let unknown = http
        .create_group(&owner, &["nobody"], None)
        .await
        .unwrap_err();
    assert_eq!(client::api_error(&unknown).map(|e| e.status), Some(422));
    // A member's send reaches the owner, with the group's id.
    let mut s_owner = Socket::connect(&ws_url, &owner.token).await.unwrap();
    let mut s_other = Socket::connect(&ws_url, &other.token).await.unwrap();
    let wait = Duration::from_secs(5);
    let send = client::timed_text("g1", Target::Conversation(&group), "hi all", 60);
    s_other.send(&send).await.unwrap();
    let ack = s_other.recv(wait).await.unwrap().unwrap();
    assert_eq!((&ack["type"], &ack["seq"]), (&"ack".into(), &1.into()));
    let m = s_owner.recv(wait).await.unwrap().unwrap();
    assert_eq!(
        (&m["type"], &m["conversation_id"], &m["from"]),
        (
            &"message".into(),
            &group.clone().into(),
            &ids[1].clone().into()
        )
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_other_device_gets_the_message_and_errors_name_the_send() {
    let relay = Relay::start();
    let http = Http::new(&relay.base).unwrap();
    let ws_url = format!(
        "ws://{}/api/v1/ws",
        relay.base.trim_start_matches("http://")
    );
    let alice = http.register("alice", "password123").await.unwrap();
    let bob = http.register("bob", "password123").await.unwrap();
    let taken = http.register("bob", "password123").await.unwrap_err();
    assert_eq!(client::api_error(&taken).map(|e| e.status), Some(409));
    let wrong = http.login("bob", "wrong-password", None).await.unwrap_err();
    assert_eq!(client::api_error(&wrong).map(|e| e.status), Some(401));
    let a1 = http.login("alice", "password123", None).await.unwrap();
    let a2 = http.login("alice", "password123", None).await.unwrap();
    let b1 = http.login("bob", "password123", None).await.unwrap();
    assert_ne!(a1.device_id, a2.device_id);
    assert!(Socket::connect(&ws_url, "forged").await.is_err());
    let mut s_a1 = Socket::connect(&ws_url, &a1.token).await.unwrap();
    let mut s_a2 = Socket::connect(&ws_url, &a2.token).await.unwrap();
    let mut s_b1 = Socket::connect(&ws_url, &b1.token).await.unwrap();
    let wait = Duration::from_secs(5);

    s_a1.send(&client::ping()).await.unwrap();
    assert_eq!(s_a1.recv(wait).await.unwrap().unwrap()["type"], "pong");

    let send = client::timed_text("c1", Target::User(&bob.user_id), "hi", 60);
    s_a1.send(&send).await.unwrap();
    let ack = s_a1.recv(wait).await.unwrap().unwrap();
    assert_eq!(
        (&ack["type"], &ack["client_msg_id"]),
        (&"ack".into(), &"c1".into())
    );
    assert_eq!(
        ack["expires_at"].as_i64().unwrap() - ack["sent_at"].as_i64().unwrap(),
        60_000
    );
    for socket in [&mut s_b1, &mut s_a2] {
        let m = socket.recv(wait).await.unwrap().unwrap();
        assert_eq!(m["type"], "message");
        assert_eq!(m["msg_id"], ack["msg_id"]);
        assert_eq!(m["conversation_id"], ack["conversation_id"]);
        assert_eq!((&m["seq"], &m["cursor"]), (&1.into(), &1.into()));
        assert_eq!(
            (&m["from"], &m["body"]),
            (&alice.user_id.clone().into(), &"hi".into())
        );
    }
    // Not to the sending device: the next frame it gets is the answer to
    // the next send.
    let conv = ack["conversation_id"].as_str().unwrap();
    let reply = client::timed_text("c2", Target::Conversation(conv), "yo", 60);
    s_b1.send(&reply).await.unwrap();
    assert_eq!(s_b1.recv(wait).await.unwrap().unwrap()["seq"], 2);
    let m = s_a1.recv(wait).await.unwrap().unwrap();
    assert_eq!(
        (&m["type"], &m["seq"], &m["cursor"]),
        (&"message".into(), &2.into(), &2.into())
    );

    s_a1.send(&client::timed_text("c3", Target::User("nobody"), "x", 60))
        .await
        .unwrap();
    let e = s_a1.recv(wait).await.unwrap().unwrap();
    assert_eq!(
        (&e["type"], &e["code"], &e["ref"]),
        (&"error".into(), &"not_found".into(), &"c3".into())
    );
    s_a1.send(&client::sync(0)).await.unwrap();
    assert_eq!(s_a1.recv(wait).await.unwrap().unwrap()["code"], "bad_frame");
    s_a1.send_raw("not json").await.unwrap();
    assert_eq!(s_a1.recv(wait).await.unwrap().unwrap()["code"], "bad_frame");
}
