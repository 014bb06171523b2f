//! The bare relay (`ephemera-relay`) against the load generator: a short
//! message run must come out verified, so the relay is a fair control for
//! `scripts/bench.sh`; and the frames it answers outside a run.

use std::io::{BufRead as _, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use ephemera_load::client::{self, Http, Socket, Target};
use ephemera_load::config::LoadConfig;
use ephemera_load::run;
use ephemera_load::schedule::RateProfile;

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
