//! The sweep: the one owner of physical deletion. Logical deletion (a
//! burn, an expiry, a destroyed key) makes content unreadable at once;
//! the sweep makes its bytes leave the disk within
//! `deletion_window_seconds`, and measures from disk how far it is from
//! that promise. Each tick it
//! * purges the key store: keys whose life is over are deleted, and the
//!   instance is flushed and compacted so no file keeps them;
//! * deletes the blobs of media objects whose life is over, then their
//!   keys and records, and takes a step of the walk of the bucket for
//!   orphaned blobs (embedded store or external S3, signed DELETEs);
//! * destroys the quarantined content whose retention (and hold) is over,
//!   or whose case was closed with no hold in force (see
//!   [`crate::quarantine`]: the one sanctioned exception, with a clock of
//!   its own);
//!
//! and each pass (a quarter of the window, at most 15 minutes) it
//! * flushes every column family of the main database, so each WAL file
//!   (which keeps whole what was written, deleted rows included) is
//!   deleted within a pass;
//! * compacts the families whose last census found expired rows or
//!   deletion markers, forcing the bottom level through the TTL filter;
//! * takes a census of what is left (see [`crate::deletion`]).
//!
//! The report (`GET /admin/deletion`, the `ephemera_deletion_*` metrics)
//! is computed from the last censuses: a row present at a census whose
//! expiry has passed since is expired and on disk, and its age grows until
//! a pass removes it. So a sweep that stalls shows as a window missed.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ephemera_actors::metrics::Metrics;
use ephemera_actors::store::now_ms;
use serde::Serialize;

use crate::deletion::DbCensus;
use crate::keystore::KeyStore;
use crate::media::service::MediaService;
use crate::quarantine::{Quarantine, QuarantineCensus};
use crate::store::{Cf, RocksStore, StoreError};

/// The longest gap between two passes over the main database.
const MAX_PASS_EVERY: Duration = Duration::from_secs(900);
/// The longest gap between two key purges and blob sweeps.
const MAX_TICK_EVERY: Duration = Duration::from_secs(5);
/// Deadlines this far past due and not burned count as logical backlog.
const BACKLOG_GRACE_MS: u64 = 1_000;

/// The physical-deletion sweep.
#[derive(Clone)]
pub struct Sweep(Arc<Inner>);

struct Inner {
    store: Arc<RocksStore>,
    keys: Arc<KeyStore>,
    media: MediaService,
    quarantine: Quarantine,
    metrics: Arc<Metrics>,
    /// The promise: expired bytes leave the disk within this.
    window: Duration,
    /// When the sweep started (Unix ms): before its first pass, the window
    /// counts from here.
    started_at: u64,
    state: Mutex<State>,
    /// Test-only (feature `faults`): while set, nothing is deleted; the
    /// censuses go on, so the report shows the window being missed.
    held: AtomicBool,
}

/// What the last ticks and passes measured.
#[derive(Default)]
struct State {
    /// The main database after the last pass.
    db: Option<DbCensus>,
    /// The key store after the last purge.
    keys: Option<DbCensus>,
    /// When every family of the main database last flushed (Unix ms).
    last_flush: Option<u64>,
    /// When the last pass that deleted (not held) completed (Unix ms).
    last_full_pass: Option<u64>,
    /// When the key store was last purged (Unix ms).
    last_key_purge: Option<u64>,
}

/// The deletion report (PROTOCOL 8). Ages are in whole seconds; times are
/// Unix milliseconds like every time on the wire.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// The promise: expired bytes leave the disk within this.
    pub window_seconds: u64,
    /// Whether every age below is within the window and a full pass
    /// completed within it.
    pub window_met: bool,
    /// How long the oldest expired or deleted row still on disk (in a
    /// table file, a memtable or the WAL) has been so, as the last census
    /// measured it.
    pub oldest_expired_on_disk_seconds: u64,
    /// How long the oldest data key past its life has still been in the
    /// key store.
    pub key_shred_lag_seconds: u64,
    /// Deadlines more than a second past due whose burn is not committed.
    pub logical_backlog: usize,
    /// Media objects whose life is over and whose blob is not yet deleted.
    pub blobs_pending_deletion: usize,
    /// When the last full pass completed, `null` before the first.
    pub last_full_pass_at: Option<u64>,
    /// Rows past their expiry still in the main database's files.
    pub expired_rows_on_disk: u64,
    /// How long the oldest expired row has been on disk.
    pub oldest_expired_row_seconds: u64,
    /// How long the oldest deleted row (burned, unsent, destroyed) may
    /// have been on disk beside its deletion marker.
    pub oldest_deletion_on_disk_seconds: u64,
    /// WAL files with content in the main database.
    pub wal_files: u64,
    /// How long the oldest of them has lived.
    pub oldest_wal_seconds: u64,
    /// How long the oldest blob past its life has waited for deletion.
    pub oldest_blob_pending_seconds: u64,
    /// Upper bound by design on how long a message body's key outlives the
    /// body (one key per expiry bucket), plus one purge interval.
    pub key_shred_bound_seconds: u64,
    /// Seconds since the key store was last purged.
    pub key_purge_age_seconds: u64,
    /// Seconds between passes over the main database.
    pub pass_every_seconds: u64,
    /// When the main database's census was taken.
    pub measured_at: Option<u64>,
    /// The quarantine, reported apart: the sanctioned exception, kept on
    /// purpose until its own retention or hold ends.
    pub quarantine: QuarantineCensus,
}

impl Sweep {
    /// A sweep over these stores, keeping `window`.
    pub fn new(
        store: Arc<RocksStore>,
        keys: Arc<KeyStore>,
        media: MediaService,
        quarantine: Quarantine,
        metrics: Arc<Metrics>,
        window: Duration,
    ) -> Self {
        Sweep(Arc::new(Inner {
            store,
            keys,
            media,
            quarantine,
            metrics,
            window,
            started_at: now_ms(),
            state: Mutex::new(State::default()),
            held: AtomicBool::new(false),
        }))
    }

    /// Time between key purges and blob sweeps: a quarter of the window,
    /// between 1 and 5 seconds.
    fn tick_every(&self) -> Duration {
        (self.0.window / 4).clamp(Duration::from_secs(1), MAX_TICK_EVERY)
    }

    /// Time between passes over the main database: a quarter of the
    /// window, between 1 second and 15 minutes. A row expiring right after
    /// a census is compacted at the second pass after it at the latest.
    fn pass_every(&self) -> Duration {
        (self.0.window / 4).clamp(Duration::from_secs(1), MAX_PASS_EVERY)
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.0.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Test-only (feature `faults`): holds deletion back (or lets it go).
    #[cfg(feature = "faults")]
    pub fn hold(&self, held: bool) {
        self.0.held.store(held, Ordering::Release);
    }

    fn held(&self) -> bool {
        self.0.held.load(Ordering::Acquire)
    }

    /// Runs the sweep forever on the current runtime.
    pub fn start(&self) {
        let sweep = self.clone();
        actix_web::rt::spawn(async move {
            let mut tick = tokio::time::interval(sweep.tick_every());
            let mut next_pass = tokio::time::Instant::now();
            let mut orphan_walk = None;
            loop {
                tick.tick().await;
                let held = sweep.held();
                sweep.keys_step(held).await;
                if !held {
                    orphan_walk = sweep.0.media.sweep_step(orphan_walk).await;
                    sweep.0.quarantine.sweep(now_ms()).await;
                }
                if tokio::time::Instant::now() >= next_pass {
                    sweep.pass(held).await;
                    next_pass = tokio::time::Instant::now() + sweep.pass_every();
                }
            }
        });
    }

    /// Purges the key store (unless held) and takes its census.
    async fn keys_step(&self, held: bool) {
        let keys = Arc::clone(&self.0.keys);
        let done = tokio::task::spawn_blocking(move || -> Result<_, StoreError> {
            let destroyed = if held { None } else { Some(keys.purge()?) };
            Ok((destroyed, keys.census(now_ms())?))
        })
        .await;
        match done {
            Ok(Ok((destroyed, census))) => {
                let mut st = self.state();
                if let Some(n) = destroyed {
                    self.0.metrics.keys_destroyed.inc_by(n as u64);
                    st.last_key_purge = Some(census.at);
                }
                st.keys = Some(census);
            }
            Ok(Err(e)) => tracing::error!(error = %e, "key store purge failed"),
            Err(_) => tracing::error!("key store purge panicked"),
        }
    }

    /// One pass over the main database: flush, compact what the last
    /// census says needs it (everything on the first pass), census.
    async fn pass(&self, held: bool) {
        let store = Arc::clone(&self.0.store);
        let previous = self.state().db.clone();
        let done = tokio::task::spawn_blocking(move || -> Result<_, StoreError> {
            let mut flushed = None;
            if !held {
                store.flush_all()?;
                let now = now_ms();
                flushed = Some(now);
                let due: Vec<Cf> = Cf::ALL
                    .iter()
                    .copied()
                    .filter(|cf| {
                        previous.as_ref().is_none_or(|c| {
                            c.families
                                .iter()
                                .find(|f| f.name == cf.name())
                                .is_none_or(|f| f.needs_compaction(now))
                        })
                    })
                    .collect();
                store.compact(&due);
            }
            Ok((flushed, store.census(now_ms())?))
        })
        .await;
        match done {
            Ok(Ok((flushed, census))) => {
                let mut st = self.state();
                if let Some(at) = flushed {
                    st.last_flush = Some(at);
                    st.last_full_pass = Some(census.at);
                }
                st.db = Some(census);
            }
            Ok(Err(e)) => tracing::error!(error = %e, "deletion pass failed"),
            Err(_) => tracing::error!("deletion pass panicked"),
        }
    }

    /// The deletion report now, from the last censuses and a count of the
    /// logical backlog and the blobs pending.
    pub async fn report(&self) -> Result<Report, StoreError> {
        let store = Arc::clone(&self.0.store);
        let quarantine = self.0.quarantine.clone();
        let now = now_ms();
        let (backlog, (blobs, first_blob), quarantined) =
            tokio::task::spawn_blocking(move || -> Result<_, StoreError> {
                Ok((
                    store.overdue_deadlines(now, BACKLOG_GRACE_MS, 1_000_000)?,
                    store.media_pending(now)?,
                    quarantine.census()?,
                ))
            })
            .await
            .map_err(|_| StoreError::Corrupt("deletion report"))??;
        let st = self.state();
        let window_ms = self.0.window.as_millis() as u64;
        let secs = |ms: u64| ms / 1000;
        let (expired_rows, expired_age, deletion_age, wal_files, wal_age) = match &st.db {
            Some(c) => (
                c.expired_rows(),
                c.expired_age_ms(now),
                c.deletion_age_ms(now, st.last_flush),
                c.wal_files,
                c.wal_age_ms(now),
            ),
            None => (0, 0, 0, 0, 0),
        };
        let key_lag = st.keys.as_ref().map_or(0, |c| {
            c.expired_age_ms(now)
                .max(c.deletion_age_ms(now, st.last_key_purge))
        });
        let blob_age = first_blob.map_or(0, |t| now.saturating_sub(t));
        let on_disk = expired_age.max(deletion_age);
        let pass_age = now.saturating_sub(st.last_full_pass.unwrap_or(self.0.started_at));
        let window_met = [on_disk, wal_age, key_lag, blob_age, pass_age]
            .iter()
            .all(|age| *age <= window_ms);
        let purge_age = now.saturating_sub(st.last_key_purge.unwrap_or(self.0.started_at));
        Ok(Report {
            window_seconds: self.0.window.as_secs(),
            window_met,
            oldest_expired_on_disk_seconds: secs(on_disk),
            key_shred_lag_seconds: secs(key_lag),
            logical_backlog: backlog,
            blobs_pending_deletion: blobs,
            last_full_pass_at: st.last_full_pass,
            expired_rows_on_disk: expired_rows,
            oldest_expired_row_seconds: secs(expired_age),
            oldest_deletion_on_disk_seconds: secs(deletion_age),
            wal_files,
            oldest_wal_seconds: secs(wal_age),
            oldest_blob_pending_seconds: secs(blob_age),
            key_shred_bound_seconds: secs(crate::keystore::BUCKET_MS + purge_age),
            key_purge_age_seconds: secs(purge_age),
            pass_every_seconds: self.pass_every().as_secs(),
            measured_at: st.db.as_ref().map(|c| c.at),
            quarantine: quarantined,
        })
    }

    /// Sets the deletion gauges from a fresh report (before a scrape).
    pub async fn refresh_metrics(&self) -> Result<Report, StoreError> {
        let r = self.report().await?;
        let m = &self.0.metrics;
        m.expired_backlog.set(r.logical_backlog as i64);
        m.key_purge_age_seconds.set(r.key_purge_age_seconds as i64);
        m.blobs_pending_deletion
            .set(r.blobs_pending_deletion as i64);
        m.deletion_window_seconds.set(r.window_seconds as i64);
        m.deletion_window_met.set(i64::from(r.window_met));
        m.oldest_expired_on_disk_seconds
            .set(r.oldest_expired_on_disk_seconds as i64);
        m.key_shred_lag_seconds.set(r.key_shred_lag_seconds as i64);
        m.oldest_wal_seconds.set(r.oldest_wal_seconds as i64);
        m.oldest_blob_pending_seconds
            .set(r.oldest_blob_pending_seconds as i64);
        m.last_full_pass_timestamp_seconds
            .set(r.last_full_pass_at.map_or(0, |t| (t / 1000) as i64));
        Ok(r)
    }
}
