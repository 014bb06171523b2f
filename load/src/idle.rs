//! Idle mode (`--idle-connections N`): open N authenticated sockets, spread
//! over the `--source-ips` (each a separate ephemeral-port range), hold
//! them for `--duration` seconds while answering the server's pings, and
//! report how many stayed open and what the server's memory did.
//!
//! Sockets reuse the sessions of `--users × --devices` logins round-robin,
//! so a hundred thousand sockets do not need a hundred thousand logins.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;
use futures_util::StreamExt as _;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use crate::config::LoadConfig;
use crate::net;
use crate::report::{IdleReport, Report, SeriesPoint};
use crate::resources::{mb, ProcWatch};
use crate::run::{bar, sign_in, stopped, targets, unix_ms};

/// Counts shared by the socket tasks.
#[derive(Default)]
struct Tally {
    /// Handshakes finished, either way.
    attempted: AtomicU64,
    /// Handshakes that succeeded.
    opened: AtomicU64,
    /// Sockets open right now.
    open: AtomicU64,
    /// Sockets that closed before the end.
    closed_early: AtomicU64,
    /// Failed handshakes by reason.
    failures: Mutex<BTreeMap<String, u64>>,
}

/// The idle-connections run.
pub(crate) async fn run(cfg: &LoadConfig, mut stop: watch::Receiver<bool>) -> Result<Report> {
    let wanted = cfg.idle_connections.unwrap_or(0);
    let targets = targets(cfg).await?;
    let accounts = sign_in(cfg, &targets).await?;
    let sessions: Vec<(usize, Arc<str>)> = accounts
        .iter()
        .flat_map(|a| {
            a.sessions
                .iter()
                .map(move |s| (a.target, Arc::<str>::from(s.token.as_str())))
        })
        .collect();
    drop(accounts);

    let mut server = cfg.server_pid.map(ProcWatch::pid);
    let mut generator = ProcWatch::this_process();
    let rss_before = server
        .as_mut()
        .and_then(|w| w.sample())
        .map(|u| mb(u.rss_bytes));
    generator.sample();

    let tally = Arc::new(Tally::default());
    let (halt_tx, halt) = watch::channel(false);
    let gate = Arc::new(Semaphore::new(cfg.connect_concurrency));
    let mut tasks = JoinSet::new();
    let progress = bar(
        cfg.progress,
        wanted,
        "opening {pos}/{len} sockets [{bar:30}] {elapsed} {msg}",
    );
    let started = Instant::now();
    let started_at_ms = unix_ms();
    let mut series = Vec::new();
    let mut next_point = started + Duration::from_secs(1);

    // Open phase.
    let mut spawned = 0u64;
    for i in 0..wanted {
        if *stop.borrow() {
            break;
        }
        let permit = tokio::select! {
            biased;
            _ = stopped(&mut stop) => break,
            p = gate.clone().acquire_owned() => p?,
        };
        let (target, token) = sessions[i as usize % sessions.len()].clone();
        let target = targets[target].clone();
        let source =
            (!cfg.source_ips.is_empty()).then(|| cfg.source_ips[i as usize % cfg.source_ips.len()]);
        let (task_tally, mut halt) = (tally.clone(), halt.clone());
        tasks.spawn(async move {
            let result = net::connect(&target, &token, source, net::idle_config()).await;
            drop(permit);
            task_tally.attempted.fetch_add(1, Relaxed);
            let mut ws = match result {
                Ok(ws) => ws,
                Err(e) => {
                    let mut f = task_tally
                        .failures
                        .lock()
                        .unwrap_or_else(|p| p.into_inner());
                    *f.entry(net::failure_reason(&e)).or_default() += 1;
                    return;
                }
            };
            task_tally.opened.fetch_add(1, Relaxed);
            task_tally.open.fetch_add(1, Relaxed);
            // Hold: reading answers the server's pings; any frame is fine.
            loop {
                let next = tokio::select! {
                    biased;
                    _ = stopped(&mut halt) => break,
                    next = ws.next() => next,
                };
                match next {
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => {
                        task_tally.open.fetch_sub(1, Relaxed);
                        task_tally.closed_early.fetch_add(1, Relaxed);
                        return;
                    }
                    Some(Ok(_)) => {}
                }
            }
            task_tally.open.fetch_sub(1, Relaxed);
        });
        spawned += 1;
        // Reap finished handshake failures so the set stays small.
        while tasks.try_join_next().is_some() {}
        if Instant::now() >= next_point {
            next_point += Duration::from_secs(1);
            series.push(point(&started, &tally, &mut server, &mut generator));
            progress.set_position(tally.attempted.load(Relaxed));
            progress.set_message(format!("{} open", tally.open.load(Relaxed)));
        }
    }
    // Wait for the handshakes still in flight.
    while tally.attempted.load(Relaxed) < spawned {
        if *stop.borrow() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        if Instant::now() >= next_point {
            next_point += Duration::from_secs(1);
            series.push(point(&started, &tally, &mut server, &mut generator));
        }
    }
    let open_seconds = started.elapsed().as_secs_f64();
    progress.finish_and_clear();

    // Hold phase.
    let hold = bar(
        cfg.progress,
        cfg.profile.duration.ceil() as u64,
        "holding {pos}/{len} s {msg}",
    );
    let hold_started = Instant::now();
    let hold_end = hold_started + Duration::from_secs_f64(cfg.profile.duration);
    let mut rss_held = None;
    while Instant::now() < hold_end {
        tokio::select! {
            biased;
            _ = stopped(&mut stop) => break,
            _ = tokio::time::sleep_until(next_point.min(hold_end)) => {}
        }
        if Instant::now() >= next_point {
            next_point += Duration::from_secs(1);
            let p = point(&started, &tally, &mut server, &mut generator);
            rss_held = p.server_rss_mb.or(rss_held);
            hold.set_position(hold_started.elapsed().as_secs());
            hold.set_message(format!(
                "{} open{}",
                p.open_sockets.unwrap_or(0),
                p.server_rss_mb
                    .map(|r| format!(", server RSS {r:.0} MiB"))
                    .unwrap_or_default()
            ));
            series.push(p);
        }
    }
    hold.finish_and_clear();
    let hold_seconds = hold_started.elapsed().as_secs_f64();
    let open_at_end = tally.open.load(Relaxed);
    if let Some(u) = server.as_mut().and_then(|w| w.sample()) {
        rss_held = Some(mb(u.rss_bytes));
    }
    generator.sample();

    let _ = halt_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    tasks.abort_all();

    let opened = tally.opened.load(Relaxed);
    let failures = tally
        .failures
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let per_socket = match (rss_before, rss_held) {
        (Some(b), Some(h)) if open_at_end > 0 => Some((h - b) * 1024.0 / open_at_end as f64),
        _ => None,
    };
    Ok(Report {
        mode: "idle".into(),
        started_at_ms,
        config: serde_json::to_value(cfg).unwrap_or_default(),
        send_seconds: 0.0,
        drain_seconds: 0.0,
        server: server.as_ref().and_then(ProcWatch::summary),
        generator: generator.summary(),
        series,
        idle: Some(IdleReport {
            requested: wanted,
            opened,
            failures,
            open_seconds,
            hold_seconds,
            open_at_end,
            closed_during_hold: tally.closed_early.load(Relaxed),
            source_ips: cfg.source_ips.iter().map(|ip| ip.to_string()).collect(),
            server_rss_before_mb: rss_before,
            server_rss_held_mb: rss_held,
            server_kib_per_socket: per_socket,
        }),
        ..Report::default()
    })
}

/// One per-second point of idle mode.
fn point(
    started: &Instant,
    tally: &Tally,
    server: &mut Option<ProcWatch>,
    generator: &mut ProcWatch,
) -> SeriesPoint {
    let s = server.as_mut().and_then(|w| w.sample());
    SeriesPoint {
        t: (started.elapsed().as_secs_f64() * 10.0).round() / 10.0,
        open_sockets: Some(tally.open.load(Relaxed)),
        server_rss_mb: s.map(|u| mb(u.rss_bytes)),
        server_cpu_percent: s.map(|u| u.cpu_percent),
        generator_cpu_percent: generator.sample().map(|u| u.cpu_percent),
        ..SeriesPoint::default()
    }
}
