//! Stalled devices (`--stalled-devices N`): extra devices of the run's users
//! that log in, open their socket with a 4 KiB receive buffer and never read
//! from it again. Everything their users receive is addressed to them too,
//! so the server has to hold it, bound it, or drop the socket. At the end
//! each socket is read to see how the server ended it; the report says how
//! many were closed with which code, cut, or still open, and the run's own
//! latency and the server's memory show what they cost everyone else.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result};
use futures_util::StreamExt as _;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;

use crate::config::{LoadConfig, PASSWORD};
use crate::net::{self, Target, Ws};
use crate::report::StalledReport;
use crate::run::{retrying, Account};

/// The kernel receive buffer of a stalled socket.
const RECV_BUFFER: u32 = 4096;

/// How long the final read of one stalled socket may take.
const READ_OUT: Duration = Duration::from_secs(20);

/// Sockets that are opened and then left alone.
pub(crate) struct Stalled {
    sockets: Vec<Ws>,
}

impl Stalled {
    /// Log in `cfg.stalled_devices` more devices round-robin over
    /// `accounts` and open their sockets.
    pub(crate) async fn open(
        cfg: &LoadConfig,
        targets: &[Target],
        accounts: &[Account],
    ) -> Result<Stalled> {
        let gate = Arc::new(Semaphore::new(cfg.connect_concurrency));
        let mut set = JoinSet::new();
        for i in 0..cfg.stalled_devices {
            let permit = gate.clone().acquire_owned().await?;
            let user = (i % u64::from(cfg.users)) as u32;
            let target = targets[accounts[user as usize].target].clone();
            let username = cfg.username(user);
            let source = (!cfg.source_ips.is_empty())
                .then(|| cfg.source_ips[i as usize % cfg.source_ips.len()]);
            set.spawn(async move {
                let _permit = permit;
                let name = format!("stalled-{i}");
                let session = retrying(|| target.http.login(&username, PASSWORD, Some(&name)))
                    .await
                    .context("logging in a stalled device")?;
                net::connect_with(
                    &target,
                    &session.token,
                    source,
                    net::busy_config(),
                    Some(RECV_BUFFER),
                )
                .await
                .context("opening a stalled socket")
            });
        }
        let mut sockets = Vec::new();
        while let Some(done) = set.join_next().await {
            sockets.push(done.context("a stalled-device task failed")??);
        }
        Ok(Stalled { sockets })
    }

    /// Read every socket up to its end (at most [`READ_OUT`] each, all at
    /// once) and count how each one ended.
    pub(crate) async fn finish(self) -> StalledReport {
        let mut set = JoinSet::new();
        let opened = self.sockets.len() as u64;
        for ws in self.sockets {
            set.spawn(ending(ws));
        }
        let mut report = StalledReport {
            requested: opened,
            ..StalledReport::default()
        };
        let mut endings: BTreeMap<String, u64> = BTreeMap::new();
        while let Some(done) = set.join_next().await {
            let (ending, frames) = done.unwrap_or_else(|_| ("task failed".into(), 0));
            report.frames_read_at_end += frames;
            *endings.entry(ending).or_default() += 1;
        }
        report.endings = endings;
        report
    }
}

/// How the server ended one stalled socket: `close <code>`, `cut` (the
/// connection ended without a close frame), or `open` (still open after
/// [`READ_OUT`]); and how many frames were waiting before that.
async fn ending(mut ws: Ws) -> (String, u64) {
    let mut frames = 0u64;
    let read = async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(Some(close)))) => {
                    return format!("close {}", u16::from(close.code))
                }
                Some(Ok(Message::Close(None))) => return "close without code".to_owned(),
                Some(Ok(_)) => frames += 1,
                Some(Err(_)) | None => return "cut".to_owned(),
            }
        }
    };
    let ending = tokio::time::timeout(READ_OUT, read)
        .await
        .unwrap_or_else(|_| "open".to_owned());
    (ending, frames)
}
