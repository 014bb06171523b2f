//! Crash loops: a sender and a receiver talk while the server is killed with
//! SIGKILL at random moments and restarted on the same data directory, again
//! and again. At the end every acked message reached the receiving device
//! exactly once, or had expired (then at most once, and never after its
//! expiry), and no message reached it twice.
//!
//! CI runs a few cycles ([`crash_loop_few_cycles`]); the long attack runs by
//! hand: `scripts/crash-loop.sh` (100 cycles by default).

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::{is_type, new_cid, now_ms, register_user, str_of, Server};
use ephemera_load::client::{timed_text, Event, Session, Socket, Target};
use serde_json::Value;

/// How late a frame may reach the test's reader after the server sent it
/// (the reader also sends; on a loaded machine it lags a little).
const READ_SLACK_MS: i64 = 250;

/// What the two devices saw over every cycle.
#[derive(Default)]
struct Ledger {
    /// Acked messages: `msg_id` -> `expires_at`.
    acked: HashMap<String, i64>,
    /// Messages the receiving device got: `msg_id` -> how many times.
    delivered: HashMap<String, u32>,
    /// Messages that reached the device after their expiry (with how late).
    late: Vec<(String, i64)>,
    /// The receiving device's last cursor.
    cursor: u64,
    /// Every cursor it has seen (a replay may overlap what came live).
    seen: std::collections::HashSet<u64>,
    /// Frames read, events seen again (at or below the cursor), sends
    /// made, kills.
    frames: usize,
    resent: usize,
    sends: usize,
    kills: usize,
}

impl Ledger {
    /// Records a frame the receiving device read at `at` (Unix ms), as a
    /// client does: an event whose cursor it has seen already (a replay
    /// overlapping the live stream) is skipped.
    fn receive(&mut self, frame: &Value, at: i64) {
        self.frames += 1;
        let Some(c) = frame.get("cursor").and_then(Value::as_u64) else {
            return;
        };
        if is_type(frame, "synced") {
            self.cursor = self.cursor.max(c);
            return;
        }
        if !self.seen.insert(c) {
            self.resent += 1;
            return;
        }
        self.cursor = self.cursor.max(c);
        if is_type(frame, "message") {
            let id = str_of(frame, "msg_id").to_owned();
            let expires_at = frame["expires_at"].as_i64().expect("expires_at");
            if at > expires_at + READ_SLACK_MS {
                self.late.push((id.clone(), at - expires_at));
            }
            *self.delivered.entry(id).or_default() += 1;
        }
    }
}

/// A tiny deterministic generator (the seed is printed, to replay a run).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// One cycle: both devices connect, the receiver resumes from its cursor,
/// the sender sends until a random moment, and the server is killed.
async fn cycle(
    server: &mut Server,
    alice: &Session,
    bob: &Session,
    bob_id: &str,
    ledger: &mut Ledger,
    rng: &mut Rng,
) {
    let url = server.ws_url();
    let mut a = Socket::connect(&url, &alice.token)
        .await
        .expect("alice connects");
    let mut b = Socket::connect(&url, &bob.token)
        .await
        .expect("bob connects");
    b.send(&ephemera_load::client::sync(ledger.cursor))
        .await
        .expect("bob syncs");
    let until = Instant::now() + Duration::from_millis(100 + rng.below(1_400));
    let mut next_send = Instant::now();
    while Instant::now() < until {
        if Instant::now() >= next_send {
            // Mostly long-lived messages; some expire within the run.
            let ttl = match rng.below(4) {
                0 => 1 + rng.below(3),
                _ => 600,
            };
            let frame = timed_text(&new_cid("c"), Target::User(bob_id), "crash loop", ttl);
            if a.send(&frame).await.is_err() {
                break;
            }
            ledger.sends += 1;
            next_send = Instant::now() + Duration::from_millis(2 + rng.below(8));
        }
        while let Ok(Event::Frame(f)) = a.recv_event(Duration::from_millis(1)).await {
            if is_type(&f, "ack") {
                let expires_at = f["expires_at"].as_i64().expect("expires_at");
                ledger
                    .acked
                    .insert(str_of(&f, "msg_id").to_owned(), expires_at);
            }
        }
        while let Ok(Event::Frame(f)) = b.recv_event(Duration::from_millis(1)).await {
            ledger.receive(&f, now_ms());
        }
    }
    // Killed with whatever is in flight: unacked sends may or may not be
    // stored, acked ones must be.
    server.kill9();
    ledger.kills += 1;
    drop((a, b));
    server.restart().await;
}

/// After the last cycle: the receiver syncs what it missed, then every
/// acked message is accounted for.
async fn settle_and_check(server: &Server, bob: &Session, ledger: &mut Ledger) {
    let mut b = Socket::connect(&server.ws_url(), &bob.token)
        .await
        .expect("bob connects");
    b.send(&ephemera_load::client::sync(ledger.cursor))
        .await
        .expect("bob syncs");
    loop {
        match b.recv_event(Duration::from_secs(30)).await {
            Ok(Event::Frame(f)) => {
                let done = is_type(&f, "synced");
                ledger.receive(&f, now_ms());
                if done {
                    break;
                }
            }
            other => panic!("bob's final sync ended early: {other:?}"),
        }
    }
    let now = now_ms();
    let mut missing = Vec::new();
    let mut expired = 0;
    for (id, expires_at) in &ledger.acked {
        let n = ledger.delivered.get(id).copied().unwrap_or(0);
        if *expires_at > now {
            if n != 1 {
                missing.push((id.clone(), n));
            }
        } else {
            expired += 1;
        }
    }
    let twice: Vec<_> = ledger.delivered.iter().filter(|(_, n)| **n > 1).collect();
    println!(
        "crash loop: {} kills, {} sends, {} acked ({} expired by the end), {} delivered, {} frames read, {} seen again by cursor",
        ledger.kills,
        ledger.sends,
        ledger.acked.len(),
        expired,
        ledger.delivered.len(),
        ledger.frames,
        ledger.resent
    );
    assert!(
        missing.is_empty(),
        "acked, still live, and not delivered exactly once: {missing:?}"
    );
    assert!(twice.is_empty(), "delivered more than once: {twice:?}");
    assert!(
        ledger.late.is_empty(),
        "delivered after its expiry: {:?}",
        ledger.late
    );
}

async fn crash_loop(cycles: usize) {
    let seed = std::env::var("CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(now_ms() as u64 | 1);
    println!("crash loop: {cycles} cycles, CRASH_SEED={seed}");
    let mut rng = Rng(seed);
    let mut server = Server::start(&[]).await;
    let http = server.http();
    let alice = register_user(&http, "alice").await.login(&http).await;
    let bob_user = register_user(&http, "bob").await;
    let bob = bob_user.login(&http).await;
    let mut ledger = Ledger::default();
    for _ in 0..cycles {
        cycle(
            &mut server,
            &alice,
            &bob,
            &bob_user.user_id,
            &mut ledger,
            &mut rng,
        )
        .await;
    }
    settle_and_check(&server, &bob, &mut ledger).await;
    assert!(
        ledger.acked.len() > cycles,
        "the loop did send: {}",
        ledger.acked.len()
    );
}

/// A few kill -9 cycles on every run of the suite.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_loop_few_cycles() {
    crash_loop(5).await;
}

/// The long attack, by hand: `CRASH_CYCLES` cycles (default 100).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "long: run by hand with scripts/crash-loop.sh"]
async fn crash_loop_long() {
    let cycles = std::env::var("CRASH_CYCLES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100);
    crash_loop(cycles).await;
}
