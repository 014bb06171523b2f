//! The stories mix (`--mix stories`): authors post stories, viewers who
//! follow every author read their trays and open stories, all over HTTP
//! (PROTOCOL 5; no sockets are opened).
//!
//! # Phases
//!
//! 1. **Setup.** Users `0..authors` of the prefix are the authors, the
//!    next `viewers` the viewers; each registers (with `--register`) and
//!    logs in once ([`run::sign_in`]). Every viewer follows every author
//!    (`PUT /api/v1/following/{id}`), then every author uploads a small
//!    sealed photo per story and posts it (`POST /api/v1/stories`,
//!    audience everyone). Each step runs `--connect-concurrency` calls at a
//!    time, retrying `429`/`503` as sign-in does; any other failure ends the
//!    run, because a tray that is short of authors measures something else.
//! 2. **Run.** Three open-loop lanes, one per kind of request (tray reads,
//!    views, posts), each on its own [`Schedule`] (its own rate under the
//!    run's ramp and peak). Who makes request `k` of a lane, and which
//!    story a view opens, is a pure function of `k` ([`pick`]). A lane
//!    hands request `k` to a task at its due time; at most
//!    `--request-concurrency` are in flight, and a lane that waits for a
//!    free slot falls behind but keeps the due times. Latency is measured
//!    from the due time to the last byte of a `2xx` answer, so a stalled
//!    server shows up in it (no coordinated omission). Views open the
//!    stories posted in setup only, so their counts can be checked.
//! 3. **Check.** For `--verify-stories` stories spread over the setup
//!    stories, the author reads `GET /api/v1/stories/{id}/viewers`: the
//!    count and the list must be exactly the viewers whose fetch was
//!    answered `200` ([`ViewLedger`], [`judge`]), give or take the fetches
//!    whose outcome the generator cannot know (timeouts, `5xx`).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, Context as _, Result};
use futures_util::StreamExt as _;
use reqwest::Method;
use serde::de::IgnoredAny;
use serde::Deserialize;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tokio::time::{Instant, MissedTickBehavior};

use crate::client::{ApiError, Http, RawResponse};
use crate::config::{LoadConfig, StoriesConfig};
use crate::net::Target;
use crate::report::{
    Report, RequestReport, StoriesPoint, StoriesReport, StoriesSetup, TraySizes, ViewCheck,
    ViewMismatch,
};
use crate::resources::{mb, MachineSummary, ProcWatch, SystemWatch};
use crate::run::{bar, bump_map, retrying, sign_in, stopped, targets, unix_ms, Media};
use crate::schedule::{mix64, RateProfile, Schedule};
use crate::stats::Latency;

/// How long one request of the run may take before it counts as failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// A request handed over later than this after its due time is "late".
const LATE_US: u64 = 10_000;

/// How long a story whose count was short is given before it is read again.
const RECHECK_AFTER: Duration = Duration::from_secs(1);

/// Viewer lists read at once in the check.
const CHECK_CONCURRENCY: usize = 16;

/// Mismatches kept in the report (all are counted).
const MISMATCH_SAMPLES: usize = 20;

/// Salts of [`pick`], one per choice, so the choices are independent.
const SALT_TRAY_VIEWER: u64 = 1;
const SALT_VIEW_VIEWER: u64 = 2;
const SALT_VIEW_STORY: u64 = 3;
const SALT_POST_AUTHOR: u64 = 4;

/// A uniform, deterministic choice in `0..n` for request `k` and `salt`.
///
/// Multiplying the 64-bit hash by `n` and keeping the high half maps it
/// onto `0..n` without the bias of `%` (Lemire's reduction).
pub fn pick(k: u64, salt: u64, n: u32) -> u32 {
    let h = mix64(k ^ salt.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    ((u128::from(h) * u128::from(n)) >> 64) as u32
}

/// `want` indices spread evenly over `0..n` (all of them if `want >= n`):
/// the stories whose view count is checked.
pub fn spread(n: usize, want: usize) -> Vec<usize> {
    if want >= n {
        return (0..n).collect();
    }
    (0..want).map(|i| i * n / want).collect()
}

// ---------------------------------------------------------------------------
// Which viewer saw which story
// ---------------------------------------------------------------------------

/// What became of one fetch of a story, as far as the view count goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fetch {
    /// Answered `200`: the server counted the viewer.
    Shown,
    /// Timed out, broke, or answered `5xx`: the server may or may not have
    /// counted it.
    Unknown,
    /// Answered `4xx`: not counted.
    Refused,
}

impl Fetch {
    /// The outcome of an answer with `status` (`None`: no answer).
    pub fn of(status: Option<u16>) -> Fetch {
        match status {
            Some(200..=299) => Fetch::Shown,
            Some(400..=499) => Fetch::Refused,
            _ => Fetch::Unknown,
        }
    }
}

/// A bit per (story, viewer) pair, twice: fetches answered `200`, and
/// fetches whose outcome is unknown. 1,000 stories × 50 viewers is 50,000
/// bits a set.
pub struct ViewLedger {
    /// Viewers per story.
    viewers: u32,
    /// Pairs shown.
    shown: Vec<AtomicU64>,
    /// Pairs fetched with an unknown outcome.
    unknown: Vec<AtomicU64>,
}

impl ViewLedger {
    /// An empty ledger for `stories` × `viewers`.
    pub fn new(stories: usize, viewers: u32) -> ViewLedger {
        let words = (stories * viewers as usize).div_ceil(64);
        let zeros = || (0..words).map(|_| AtomicU64::new(0)).collect();
        ViewLedger {
            viewers,
            shown: zeros(),
            unknown: zeros(),
        }
    }

    fn bit(&self, story: usize, viewer: u32) -> (usize, u64) {
        let i = story * self.viewers as usize + viewer as usize;
        (i / 64, 1u64 << (i % 64))
    }

    /// File a fetch of `story` by `viewer`; true if it was the first
    /// `200` of the pair (a view the server should count).
    pub fn record(&self, story: usize, viewer: u32, fetch: Fetch) -> bool {
        let (word, bit) = self.bit(story, viewer);
        let set = match fetch {
            Fetch::Shown => &self.shown,
            Fetch::Unknown => &self.unknown,
            Fetch::Refused => return false,
        };
        let before = set[word].fetch_or(bit, Relaxed);
        fetch == Fetch::Shown && before & bit == 0
    }

    /// The viewers `story` was shown to, and those whose fetch of it had
    /// an unknown outcome (and was never shown), ascending.
    pub fn viewers_of(&self, story: usize) -> (Vec<u32>, Vec<u32>) {
        let (mut shown, mut unknown) = (Vec::new(), Vec::new());
        for v in 0..self.viewers {
            let (word, bit) = self.bit(story, v);
            if self.shown[word].load(Relaxed) & bit != 0 {
                shown.push(v);
            } else if self.unknown[word].load(Relaxed) & bit != 0 {
                unknown.push(v);
            }
        }
        (shown, unknown)
    }
}

/// Whether the server's viewer list of a story agrees with the ledger.
///
/// `shown` and `unknown` come from [`ViewLedger::viewers_of`]; `listed`
/// is the server's list mapped to viewer indices (`None`: a user who is
/// not a viewer of this run). The count must equal the list's length, the
/// list must hold every viewer shown the story, nobody twice, and nobody
/// else but viewers whose fetch had an unknown outcome.
pub fn judge(
    shown: &[u32],
    unknown: &[u32],
    view_count: u64,
    listed: &[Option<u32>],
) -> Result<(), String> {
    if view_count != listed.len() as u64 {
        return Err(format!(
            "view_count {view_count} but {} viewers listed",
            listed.len()
        ));
    }
    let mut seen: Vec<u32> = Vec::with_capacity(listed.len());
    for v in listed {
        let Some(v) = *v else {
            return Err("lists a user who is not a viewer of this run".into());
        };
        if seen.contains(&v) {
            return Err(format!("lists viewer {v} twice"));
        }
        if !shown.contains(&v) && !unknown.contains(&v) {
            return Err(format!("lists viewer {v}, who was never shown the story"));
        }
        seen.push(v);
    }
    let missing = shown.iter().filter(|v| !seen.contains(v)).count();
    if missing > 0 {
        return Err(format!(
            "{missing} of the {} viewers shown the story are not counted",
            shown.len()
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Setup
// ---------------------------------------------------------------------------

/// One signed-in author or viewer.
struct User {
    /// The server's id for the user.
    id: String,
    /// Bearer token (a secret: never printed).
    token: Arc<str>,
    /// Index into the run's targets.
    target: usize,
}

/// A story posted in setup.
struct Story {
    /// Its id.
    id: String,
    /// The author's user index.
    author: u32,
}

/// `Ok(answer)` for a `2xx`, otherwise the [`ApiError`] (so [`retrying`]
/// sees `429`/`503`).
fn success(r: RawResponse) -> Result<RawResponse> {
    if (200..300).contains(&r.status) {
        return Ok(r);
    }
    Err(ApiError {
        status: r.status,
        code: r.error_code().map(str::to_owned),
        retry_after: r.retry_after,
    }
    .into())
}

/// Percent-encode an id for a path (ids are opaque; be safe).
fn segment(id: &str) -> String {
    let mut out = String::with_capacity(id.len());
    for b in id.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `POST /api/v1/stories` body for `media_key` (a JSON string literal).
fn story_body(media_key_json: &str, ttl_seconds: u64) -> String {
    format!(r#"{{"media_key":{media_key_json},"audience":"everyone","ttl_seconds":{ttl_seconds}}}"#)
}

/// Upload a photo and post it as a story by `user`; the new story's id.
async fn post_story(http: &Http, media: &Media, user: &User, ttl_seconds: u64) -> Result<String> {
    let key = media
        .upload(user.target, &user.token)
        .await
        .map_err(|reason| anyhow!("media {reason}"))?;
    let body = story_body(&key, ttl_seconds);
    let (body, token) = (body.as_str(), &*user.token);
    let answer = retrying(|| async move {
        success(
            http.raw(Method::POST, "/api/v1/stories", Some(token), Some(body))
                .await?,
        )
    })
    .await?;
    answer
        .json
        .as_ref()
        .and_then(|j| j.get("story_id"))
        .and_then(|id| id.as_str())
        .map(str::to_owned)
        .ok_or_else(|| anyhow!("POST /api/v1/stories: answer has no story_id"))
}

/// Run `jobs` (`0..n`) with at most `concurrency` in flight, failing on
/// the first error; returns the results in order.
async fn all<T, F, Fut>(
    n: usize,
    concurrency: usize,
    show: bool,
    what: &str,
    job: F,
) -> Result<Vec<T>>
where
    T: Send + 'static,
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = Result<T>> + Send + 'static,
{
    let progress = bar(
        show,
        n as u64,
        &format!("{what} {{pos}}/{{len}} [{{bar:30}}] {{elapsed}}"),
    );
    let mut out: Vec<Option<T>> = (0..n).map(|_| None).collect();
    let gate = Arc::new(Semaphore::new(concurrency));
    let mut set = JoinSet::new();
    let mut file = |done: Result<(usize, Result<T>), tokio::task::JoinError>| -> Result<()> {
        let (i, result) = done.map_err(|e| anyhow!("{what}: task failed: {e}"))?;
        out[i] = Some(result.with_context(|| format!("{what}: item {i}"))?);
        progress.inc(1);
        Ok(())
    };
    for i in 0..n {
        let permit = gate.clone().acquire_owned().await?;
        let fut = job(i);
        set.spawn(async move {
            let _permit = permit;
            (i, fut.await)
        });
        while let Some(done) = set.try_join_next() {
            file(done)?;
        }
    }
    while let Some(done) = set.join_next().await {
        file(done)?;
    }
    progress.finish_and_clear();
    Ok(out
        .into_iter()
        .map(|t| t.expect("every task was joined"))
        .collect())
}

// ---------------------------------------------------------------------------
// The run phase
// ---------------------------------------------------------------------------

/// The kinds of request a stories run makes, one lane each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// `GET /api/v1/stories/tray`.
    Tray,
    /// `GET /api/v1/stories/{id}`.
    View,
    /// Upload, then `POST /api/v1/stories`.
    Post,
}

impl Kind {
    const ALL: [Kind; 3] = [Kind::Tray, Kind::View, Kind::Post];

    fn name(self) -> &'static str {
        match self {
            Kind::Tray => "tray",
            Kind::View => "view",
            Kind::Post => "post",
        }
    }
}

/// The counts and latencies of one kind of request.
struct Tally {
    /// Requests handed over on the schedule.
    offered: AtomicU64,
    /// Requests answered `2xx`.
    ok: AtomicU64,
    /// Requests that failed (error status, transport failure, bad answer).
    failed: AtomicU64,
    /// Due → last byte of every `2xx` answer.
    latency: Mutex<Latency>,
    /// The same, since the last per-second point.
    second: Mutex<Latency>,
}

impl Tally {
    fn new() -> Tally {
        Tally {
            offered: AtomicU64::new(0),
            ok: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            latency: Mutex::new(Latency::precise()),
            second: Mutex::new(Latency::coarse()),
        }
    }

    fn answered(&self, due: Instant) {
        let us = Instant::now().saturating_duration_since(due).as_micros() as u64;
        lock(&self.latency).record_us(us);
        lock(&self.second).record_us(us);
        self.ok.fetch_add(1, Relaxed);
    }

    /// The p99 of the last second, ms, and forget it.
    fn take_second_p99_ms(&self) -> f64 {
        let mut s = lock(&self.second);
        let p99 = s.quantile_us(0.99) as f64 / 1000.0;
        s.reset();
        p99
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Tray sizes seen, items per tray.
#[derive(Default)]
struct Trays {
    reads: u64,
    items: u64,
    min: Option<u64>,
    max: u64,
    /// Trays with other than `authors` items.
    off_size: u64,
}

/// Everything the lanes and request tasks share.
struct Live {
    /// When request 0 of every lane is due.
    t0: Instant,
    /// The client of the run phase: one pool for every request.
    http: reqwest::Client,
    /// Base URL per target.
    bases: Vec<String>,
    /// Authors, then viewers.
    users: Arc<Vec<User>>,
    /// How many of `users` are authors.
    authors: u32,
    /// How many are viewers.
    viewers: u32,
    /// The stories posted in setup: what views open.
    stories: Vec<Story>,
    /// Who was shown which of them.
    ledger: ViewLedger,
    /// Media for posts during the run.
    media: Arc<Media>,
    /// The setup clients (posts use [`Http`] like setup).
    targets: Vec<Target>,
    /// `ttl_seconds` of posts.
    ttl: u64,
    /// Bounds requests in flight.
    gate: Arc<Semaphore>,
    /// Per kind, in [`Kind::ALL`] order.
    tallies: [Tally; 3],
    /// Failures by kind and status (or reason).
    errors: Mutex<BTreeMap<String, u64>>,
    /// Tray sizes.
    trays: Mutex<Trays>,
    /// First `200` of a (viewer, story) pair: views the server must count.
    distinct_views: AtomicU64,
}

/// A tray answer, items not looked into (only counted).
#[derive(Deserialize)]
struct TrayPage {
    tray: Vec<IgnoredAny>,
}

impl Live {
    fn tally(&self, kind: Kind) -> &Tally {
        &self.tallies[kind as usize]
    }

    fn viewer(&self, v: u32) -> &User {
        &self.users[(self.authors + v) as usize]
    }

    /// Count a failure of `kind` under `what`.
    fn fail(&self, kind: Kind, what: &str) {
        self.tally(kind).failed.fetch_add(1, Relaxed);
        bump_map(&self.errors, &format!("{}: {what}", kind.name()));
    }

    /// Count a failed status, with the error code of its body.
    fn fail_status(&self, kind: Kind, status: u16, body: &[u8]) {
        #[derive(Deserialize)]
        struct Body {
            error: Code,
        }
        #[derive(Deserialize)]
        struct Code {
            code: String,
        }
        let code = serde_json::from_slice::<Body>(body)
            .ok()
            .map(|b| b.error.code);
        match code {
            Some(code) => self.fail(kind, &format!("HTTP {status} ({code})")),
            None => self.fail(kind, &format!("HTTP {status}")),
        }
    }

    /// GET `path` as `user`: the status and body, or why there is none.
    async fn get(&self, user: &User, path: &str) -> Result<(u16, Vec<u8>), &'static str> {
        let url = format!("{}{path}", self.bases[user.target]);
        let response = self
            .http
            .get(url)
            .bearer_auth(&*user.token)
            .send()
            .await
            .map_err(|e| transport(&e))?;
        let status = response.status().as_u16();
        let body = response.bytes().await.map_err(|e| transport(&e))?;
        Ok((status, Vec::from(body)))
    }

    /// Make request `k` of `kind`, due at `due`, and file its outcome.
    async fn request(&self, kind: Kind, k: u64, due: Instant) {
        match kind {
            Kind::Tray => {
                let user = self.viewer(pick(k, SALT_TRAY_VIEWER, self.viewers));
                match self.get(user, "/api/v1/stories/tray").await {
                    Ok((200, body)) => {
                        self.tally(kind).answered(due);
                        match serde_json::from_slice::<TrayPage>(&body) {
                            Ok(page) => self.tray_size(page.tray.len() as u64),
                            Err(_) => bump_map(&self.errors, "tray: unparsable answer"),
                        }
                    }
                    Ok((status, body)) => self.fail_status(kind, status, &body),
                    Err(reason) => self.fail(kind, reason),
                }
            }
            Kind::View => {
                let v = pick(k, SALT_VIEW_VIEWER, self.viewers);
                let s = pick(k, SALT_VIEW_STORY, self.stories.len() as u32) as usize;
                let path = format!("/api/v1/stories/{}", segment(&self.stories[s].id));
                let answer = self.get(self.viewer(v), &path).await;
                let fetch = Fetch::of(answer.as_ref().ok().map(|(status, _)| *status));
                if self.ledger.record(s, v, fetch) {
                    self.distinct_views.fetch_add(1, Relaxed);
                }
                match answer {
                    Ok((200, _)) => self.tally(kind).answered(due),
                    Ok((status, body)) => self.fail_status(kind, status, &body),
                    Err(reason) => self.fail(kind, reason),
                }
            }
            Kind::Post => {
                let author = &self.users[pick(k, SALT_POST_AUTHOR, self.authors) as usize];
                let http = &self.targets[author.target].http;
                match post_story(http, &self.media, author, self.ttl).await {
                    Ok(_) => self.tally(kind).answered(due),
                    Err(e) => match crate::client::api_error(&e) {
                        Some(api) => self.fail(kind, &api.to_string()),
                        None => self.fail(kind, &short(&e)),
                    },
                }
            }
        }
    }

    fn tray_size(&self, items: u64) {
        let mut t = lock(&self.trays);
        t.reads += 1;
        t.items += items;
        t.min = Some(t.min.map_or(items, |m| m.min(items)));
        t.max = t.max.max(items);
        if items != u64::from(self.authors) {
            t.off_size += 1;
        }
    }
}

/// A transport failure in a few stable words (never the URL).
fn transport(e: &reqwest::Error) -> &'static str {
    if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "connect failed"
    } else {
        "request failed"
    }
}

/// The first line of an error, cut short, for counting.
fn short(e: &anyhow::Error) -> String {
    e.to_string().chars().take(60).collect()
}

/// The rate of `kind` asked for.
fn rate_of(st: &StoriesConfig, kind: Kind) -> f64 {
    match kind {
        Kind::Tray => st.tray_rate,
        Kind::View => st.view_rate,
        Kind::Post => st.post_rate,
    }
}

/// The due times of `kind`'s lane: its own rate under the run's duration,
/// ramp and peak.
fn schedule(cfg: &LoadConfig, kind: Kind) -> Schedule {
    Schedule::new(RateProfile {
        rate: rate_of(&cfg.stories, kind),
        ..cfg.profile
    })
}

/// What a lane measured.
struct LaneOut {
    /// Due → handed to a task.
    lag: Latency,
    /// Requests handed over more than [`LATE_US`] late.
    late: u64,
}

/// Hand the requests of `kind` to tasks on `schedule` until it ends or
/// `stop` turns true, then wait for the last of them.
async fn lane(
    live: Arc<Live>,
    kind: Kind,
    schedule: Schedule,
    mut stop: watch::Receiver<bool>,
) -> LaneOut {
    let mut out = LaneOut {
        lag: Latency::precise(),
        late: 0,
    };
    let mut tasks = JoinSet::new();
    let mut k = 0;
    while let Some(due_us) = schedule.due_us(k) {
        let due = live.t0 + Duration::from_micros(due_us);
        if Instant::now() < due {
            tokio::select! {
                biased;
                _ = stopped(&mut stop) => break,
                _ = tokio::time::sleep_until(due) => {}
            }
        } else if *stop.borrow() {
            break;
        }
        // The bound on requests in flight: waiting here puts the lane
        // behind, and the lateness is in every latency it measures.
        let permit = tokio::select! {
            biased;
            _ = stopped(&mut stop) => break,
            p = live.gate.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let lag = Instant::now().saturating_duration_since(due).as_micros() as u64;
        out.lag.record_us(lag);
        if lag > LATE_US {
            out.late += 1;
        }
        live.tally(kind).offered.fetch_add(1, Relaxed);
        let task_live = live.clone();
        tasks.spawn(async move {
            let _permit = permit;
            task_live.request(kind, k, due).await;
        });
        while tasks.try_join_next().is_some() {}
        k += 1;
    }
    // Every request has a timeout, so this ends.
    while tasks.join_next().await.is_some() {}
    out
}

/// What the ticker hands back.
struct TickerOut {
    series: Vec<StoriesPoint>,
    server: Option<ProcWatch>,
    generator: ProcWatch,
    machine: SystemWatch,
}

/// A point a second until halted.
async fn ticker(
    live: Arc<Live>,
    progress: indicatif::ProgressBar,
    server_pid: Option<u32>,
    mut halt: watch::Receiver<bool>,
) -> TickerOut {
    let mut server = server_pid.map(ProcWatch::pid);
    let mut generator = ProcWatch::this_process();
    if let Some(w) = server.as_mut() {
        w.sample();
    }
    generator.sample();
    let mut machine = SystemWatch::new();
    machine.sample();
    let mut series = Vec::new();
    let mut iv = tokio::time::interval_at(live.t0 + Duration::from_secs(1), Duration::from_secs(1));
    iv.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut prev = [0u64; 3];
    let mut prev_errors = 0u64;
    loop {
        tokio::select! {
            biased;
            _ = stopped(&mut halt) => break,
            _ = iv.tick() => {}
        }
        let mut ok = [0u64; 3];
        let mut p99 = [0f64; 3];
        for kind in Kind::ALL {
            let i = kind as usize;
            let now = live.tally(kind).ok.load(Relaxed);
            ok[i] = now - prev[i];
            prev[i] = now;
            p99[i] = live.tally(kind).take_second_p99_ms();
        }
        let failed: u64 = live.tallies.iter().map(|t| t.failed.load(Relaxed)).sum();
        let server_now = server.as_mut().and_then(|w| w.sample());
        let point = StoriesPoint {
            t: (live.t0.elapsed().as_secs_f64() * 10.0).round() / 10.0,
            trays: ok[Kind::Tray as usize],
            tray_p99_ms: p99[Kind::Tray as usize],
            views: ok[Kind::View as usize],
            view_p99_ms: p99[Kind::View as usize],
            posts: ok[Kind::Post as usize],
            post_p99_ms: p99[Kind::Post as usize],
            errors: failed - prev_errors,
            server_cpu_percent: server_now.map(|u| u.cpu_percent),
            server_rss_mb: server_now.map(|u| mb(u.rss_bytes)),
            generator_cpu_percent: generator.sample().map(|u| u.cpu_percent),
        };
        machine.sample();
        prev_errors = failed;
        progress.set_position(point.t as u64);
        let mut msg = format!(
            "tray {}/s p99 {:.1} ms | view {}/s p99 {:.1} ms",
            point.trays, point.tray_p99_ms, point.views, point.view_p99_ms
        );
        if point.posts > 0 {
            msg.push_str(&format!(" | post {}/s", point.posts));
        }
        if let Some(cpu) = point.server_cpu_percent {
            msg.push_str(&format!(" | server {cpu:.0}%"));
        }
        if point.errors > 0 {
            msg.push_str(&format!(" | {} errors", point.errors));
        }
        progress.set_message(msg);
        series.push(point);
    }
    if let Some(w) = server.as_mut() {
        w.sample();
    }
    generator.sample();
    machine.sample();
    TickerOut {
        series,
        server,
        generator,
        machine,
    }
}

// ---------------------------------------------------------------------------
// The check
// ---------------------------------------------------------------------------

/// `GET /api/v1/stories/{id}/viewers` as it answers.
#[derive(Deserialize)]
struct ViewersPage {
    view_count: u64,
    viewers: Vec<ViewerEntry>,
}

/// One entry of [`ViewersPage`].
#[derive(Deserialize)]
struct ViewerEntry {
    user_id: String,
}

/// Read story `s`'s viewers as its author and judge them.
async fn check_one(
    live: &Live,
    index: &HashMap<&str, u32>,
    s: usize,
) -> Result<Result<(), ViewMismatch>, String> {
    let story = &live.stories[s];
    let author = &live.users[story.author as usize];
    let http = &live.targets[author.target].http;
    let path = format!("/api/v1/stories/{}/viewers", segment(&story.id));
    let answer = http
        .raw(Method::GET, &path, Some(&*author.token), None)
        .await
        .map_err(|e| short(&e))?;
    if answer.status != 200 {
        return Err(format!("HTTP {}", answer.status));
    }
    let page: ViewersPage = answer
        .json
        .and_then(|j| serde_json::from_value(j).ok())
        .ok_or("unparsable answer")?;
    let listed: Vec<Option<u32>> = page
        .viewers
        .iter()
        .map(|v| index.get(v.user_id.as_str()).copied())
        .collect();
    let (shown, unknown) = live.ledger.viewers_of(s);
    Ok(
        judge(&shown, &unknown, page.view_count, &listed).map_err(|reason| ViewMismatch {
            story: s as u32,
            view_count: page.view_count,
            listed: listed.len() as u64,
            shown: shown.len() as u64,
            unknown: unknown.len() as u64,
            reason,
        }),
    )
}

/// Check the view counts of `--verify-stories` stories.
async fn check_views(live: &Live, want: u32) -> ViewCheck {
    let index: HashMap<&str, u32> = (0..live.viewers)
        .map(|v| (live.viewer(v).id.as_str(), v))
        .collect();
    let sample = spread(live.stories.len(), want as usize);
    let mut check = ViewCheck {
        sampled: sample.len() as u64,
        ..ViewCheck::default()
    };
    let run = |stories: Vec<usize>| {
        let index = &index;
        futures_util::stream::iter(stories)
            .map(move |s| async move { (s, check_one(live, index, s).await) })
            .buffer_unordered(CHECK_CONCURRENCY)
            .collect::<Vec<_>>()
    };
    let mut short_counts = Vec::new();
    let mut mismatches = Vec::new();
    for (s, outcome) in run(sample).await {
        match outcome {
            Ok(Ok(())) => check.matched += 1,
            // A count below the views shown may only be late: read it again.
            Ok(Err(m)) if m.view_count < m.shown => short_counts.push(s),
            Ok(Err(m)) => mismatches.push(m),
            Err(reason) => {
                check.unreadable += 1;
                *check.unreadable_reasons.entry(reason).or_default() += 1;
            }
        }
    }
    if !short_counts.is_empty() {
        tokio::time::sleep(RECHECK_AFTER).await;
        for (_, outcome) in run(short_counts).await {
            match outcome {
                Ok(Ok(())) => check.matched_late += 1,
                Ok(Err(m)) => mismatches.push(m),
                Err(reason) => {
                    check.unreadable += 1;
                    *check.unreadable_reasons.entry(reason).or_default() += 1;
                }
            }
        }
    }
    mismatches.sort_by_key(|m| m.story);
    check.mismatched = mismatches.len() as u64;
    mismatches.truncate(MISMATCH_SAMPLES);
    check.mismatches = mismatches;
    check
}

// ---------------------------------------------------------------------------
// The whole run
// ---------------------------------------------------------------------------

/// The stories run: set up, offer, check, report.
pub(crate) async fn run(cfg: &LoadConfig, stop: watch::Receiver<bool>) -> Result<Report> {
    let st: StoriesConfig = cfg.stories;
    let targets = targets(cfg).await?;
    let concurrency = cfg.connect_concurrency;

    // Setup: accounts (authors first), one login each.
    let started = Instant::now();
    let mut accounts_cfg = cfg.clone();
    accounts_cfg.users = st.users();
    accounts_cfg.devices = 1;
    let users: Vec<User> = sign_in(&accounts_cfg, &targets)
        .await?
        .into_iter()
        .map(|a| User {
            id: a.user_id,
            token: Arc::from(a.sessions[0].token.as_str()),
            target: a.target,
        })
        .collect();
    let users = Arc::new(users);
    let sign_in_seconds = started.elapsed().as_secs_f64();

    // Every viewer follows every author; the pairs interleave viewers so
    // the calls in flight belong to different users.
    let started = Instant::now();
    let (a_n, v_n) = (st.authors as usize, st.viewers as usize);
    let follows = a_n * v_n;
    all(follows, concurrency, cfg.progress, "following", |i| {
        let (viewer, author) = (a_n + i % v_n, i / v_n);
        let users = users.clone();
        let http = targets[users[viewer].target].http.clone();
        async move {
            let path = format!("/api/v1/following/{}", segment(&users[author].id));
            let (http, path, token) = (&http, path.as_str(), &*users[viewer].token);
            retrying(
                || async move { success(http.raw(Method::PUT, path, Some(token), None).await?) },
            )
            .await
            .map(|_| ())
        }
    })
    .await?;
    let follow_seconds = started.elapsed().as_secs_f64();

    // Every author posts its stories.
    let started = Instant::now();
    let media = Arc::new(Media::new(cfg, &targets)?);
    let per = st.stories_per_author as usize;
    let ids = all(a_n * per, concurrency, cfg.progress, "posting", |i| {
        let (users, media) = (users.clone(), media.clone());
        let http = targets[users[i / per].target].http.clone();
        let ttl = st.ttl_seconds;
        async move { post_story(&http, &media, &users[i / per], ttl).await }
    })
    .await?;
    let post_seconds = started.elapsed().as_secs_f64();
    let stories: Vec<Story> = ids
        .into_iter()
        .enumerate()
        .map(|(i, id)| Story {
            id,
            author: (i / per) as u32,
        })
        .collect();

    // Run.
    let t0 = Instant::now() + Duration::from_millis(200);
    let started_at_ms = unix_ms() + 200;
    let live = Arc::new(Live {
        t0,
        http: reqwest::Client::builder()
            .no_proxy()
            .timeout(REQUEST_TIMEOUT)
            .build()
            .context("building the HTTP client")?,
        bases: targets.iter().map(|t| t.base.clone()).collect(),
        ledger: ViewLedger::new(stories.len(), st.viewers),
        users,
        authors: st.authors,
        viewers: st.viewers,
        stories,
        media,
        targets: targets.clone(),
        ttl: st.ttl_seconds,
        gate: Arc::new(Semaphore::new(st.request_concurrency)),
        tallies: [Tally::new(), Tally::new(), Tally::new()],
        errors: Mutex::new(BTreeMap::new()),
        trays: Mutex::new(Trays::default()),
        distinct_views: AtomicU64::new(0),
    });
    let schedules = Kind::ALL.map(|kind| schedule(cfg, kind));
    let (halt_tx, halt) = watch::channel(false);
    let progress = bar(
        cfg.progress,
        cfg.profile.duration.ceil() as u64,
        "{elapsed_precise} [{bar:30}] {pos}/{len} s {msg}",
    );
    let ticker_task = tokio::spawn(ticker(
        live.clone(),
        progress.clone(),
        cfg.server_pid,
        halt.clone(),
    ));
    let mut lanes = JoinSet::new();
    for (kind, schedule) in Kind::ALL.into_iter().zip(schedules.iter()) {
        lanes.spawn(lane(live.clone(), kind, schedule.clone(), stop.clone()));
    }
    let mut lag = Latency::precise();
    let mut late = 0;
    while let Some(done) = lanes.join_next().await {
        let out = done.map_err(|e| anyhow!("a stories lane failed: {e}"))?;
        lag.merge(&out.lag);
        late += out.late;
    }
    let run_seconds = live.t0.elapsed().as_secs_f64();
    let _ = halt_tx.send(true);
    let ticked = ticker_task
        .await
        .map_err(|e| anyhow!("the ticker failed: {e}"))?;
    progress.finish_and_clear();

    // Check.
    let view_check = check_views(&live, st.verify).await;

    // Report.
    let duration = cfg.profile.duration;
    let request = |kind: Kind| {
        let t = live.tally(kind);
        let offered = t.offered.load(Relaxed);
        let ok = t.ok.load(Relaxed);
        RequestReport {
            rate: rate_of(&st, kind),
            due: schedules[kind as usize].total(),
            offered,
            ok,
            failed: t.failed.load(Relaxed),
            offered_rate: offered as f64 / duration.min(run_seconds).max(1e-9),
            ok_rate: ok as f64 / run_seconds.max(1e-9),
            latency: lock(&t.latency).summary(),
        }
    };
    let trays = lock(&live.trays);
    let tray_sizes = TraySizes {
        expected: u64::from(st.authors),
        reads: trays.reads,
        min: trays.min.unwrap_or(0),
        max: trays.max,
        mean: trays.items as f64 / trays.reads.max(1) as f64,
        off_size: trays.off_size,
    };
    drop(trays);
    let server = ticked.server.as_ref().and_then(ProcWatch::summary);
    let generator = ticked.generator.summary();
    let machine = ticked.machine.summary().map(|(usage, cores)| {
        let ours = server.map_or(0.0, |s| s.avg_cpu_percent)
            + generator.map_or(0.0, |g| g.avg_cpu_percent);
        MachineSummary {
            cores,
            busy_percent: usage.busy,
            irq_percent: usage.irq,
            other_percent: (usage.busy - usage.irq - ours).max(0.0),
        }
    });
    let stories = StoriesReport {
        authors: st.authors,
        viewers: st.viewers,
        stories_per_author: st.stories_per_author,
        setup: StoriesSetup {
            sign_in_seconds,
            follows: follows as u64,
            follow_seconds,
            stories: live.stories.len() as u64,
            post_seconds,
        },
        run_seconds,
        tray: request(Kind::Tray),
        view: request(Kind::View),
        post: request(Kind::Post),
        tray_sizes,
        distinct_views: live.distinct_views.load(Relaxed),
        errors: lock(&live.errors).clone(),
        send_lag: lag.summary(),
        late,
        view_check,
        series: ticked.series,
    };
    Ok(Report {
        mode: "stories".into(),
        started_at_ms,
        config: serde_json::to_value(cfg).unwrap_or_default(),
        send_seconds: duration.min(run_seconds),
        drain_seconds: (run_seconds - duration).max(0.0),
        server,
        generator,
        machine,
        stories: Some(stories),
        ..Report::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_are_uniform_and_in_range() {
        let n = 50;
        let mut counts = vec![0u32; n as usize];
        for k in 0..100_000 {
            let v = pick(k, SALT_VIEW_VIEWER, n);
            assert!(v < n);
            counts[v as usize] += 1;
        }
        // 2,000 expected each; a fair choice stays well within ±15 %.
        assert!(
            counts.iter().all(|c| (1700..2300).contains(c)),
            "{counts:?}"
        );
        // Different salts choose independently.
        let same = (0..10_000)
            .filter(|&k| pick(k, SALT_VIEW_VIEWER, n) == pick(k, SALT_TRAY_VIEWER, n))
            .count();
        assert!(same < 400, "{same} of 10000 agree (200 expected)");
        assert_eq!(pick(7, 3, 1), 0);
    }

    #[test]
    fn each_lane_has_its_own_rate_under_the_runs_shape() {
        let mut cfg = LoadConfig::new(vec!["http://h:1".into()]);
        cfg.profile = RateProfile {
            ramp: 10.0,
            peak_factor: 2.0,
            peak_at: 20.0,
            peak_for: 10.0,
            ..RateProfile::flat(1.0, 40.0)
        };
        cfg.stories.post_rate = 0.0;
        // Tray 100/s: 500 in the ramp, 1,000 + 2,000 (peak) + 1,000 after.
        let tray = schedule(&cfg, Kind::Tray);
        assert_eq!(tray.total(), 4_500);
        assert_eq!(schedule(&cfg, Kind::View).total(), 90_000);
        assert_eq!(schedule(&cfg, Kind::Post).total(), 0);
        // Open loop: request k's due time is fixed; 10/s halfway up the ramp.
        let t = |k| tray.time_of(k).unwrap();
        assert!((t(125) - 5.0).abs() < 1e-6, "{}", t(125));
        assert!(
            t(1501) > 20.0 && t(3499) < 30.0,
            "the peak doubles the rate"
        );
    }

    #[test]
    fn the_checked_stories_spread_over_all() {
        assert_eq!(spread(10, 20), (0..10).collect::<Vec<_>>());
        assert_eq!(spread(1000, 4), [0, 250, 500, 750]);
        assert_eq!(spread(1000, 0), Vec::<usize>::new());
        assert_eq!(spread(3, 3), [0, 1, 2]);
    }

    #[test]
    fn the_ledger_counts_a_viewer_once_per_story() {
        let ledger = ViewLedger::new(3, 70);
        assert!(ledger.record(2, 69, Fetch::Shown));
        assert!(!ledger.record(2, 69, Fetch::Shown), "a second view");
        assert!(!ledger.record(2, 5, Fetch::Refused));
        assert!(!ledger.record(2, 6, Fetch::Unknown));
        assert!(!ledger.record(2, 69, Fetch::Unknown));
        assert!(ledger.record(1, 69, Fetch::Shown), "another story");
        // Shown wins over unknown for the same pair.
        assert_eq!(ledger.viewers_of(2), (vec![69], vec![6]));
        assert_eq!(ledger.viewers_of(0), (vec![], vec![]));
        assert_eq!(Fetch::of(Some(200)), Fetch::Shown);
        assert_eq!(Fetch::of(Some(404)), Fetch::Refused);
        assert_eq!(Fetch::of(Some(503)), Fetch::Unknown);
        assert_eq!(Fetch::of(None), Fetch::Unknown);
    }

    #[test]
    fn judge_wants_exactly_the_viewers_shown() {
        let ok = judge(&[1, 4], &[], 2, &[Some(4), Some(1)]);
        assert_eq!(ok, Ok(()));
        // An unknown fetch may or may not have been counted.
        assert_eq!(judge(&[1], &[7], 2, &[Some(1), Some(7)]), Ok(()));
        assert_eq!(judge(&[1], &[7], 1, &[Some(1)]), Ok(()));
        let err = |r: Result<(), String>| r.unwrap_err();
        assert!(err(judge(&[1, 4], &[], 1, &[Some(1)])).contains("not counted"));
        assert!(err(judge(&[1], &[], 2, &[Some(1)])).contains("view_count 2 but 1"));
        assert!(err(judge(&[1], &[], 2, &[Some(1), Some(1)])).contains("twice"));
        assert!(err(judge(&[1], &[], 2, &[Some(1), Some(3)])).contains("never shown"));
        assert!(err(judge(&[1], &[], 2, &[Some(1), None])).contains("not a viewer"));
    }

    #[test]
    fn ids_are_encoded_for_paths_and_bodies_are_json() {
        assert_eq!(segment("AbC-_.~9"), "AbC-_.~9");
        assert_eq!(segment("a/b c"), "a%2Fb%20c");
        let body: serde_json::Value = serde_json::from_str(&story_body(r#""mk_1""#, 3600)).unwrap();
        assert_eq!(body["media_key"], "mk_1");
        assert_eq!(body["audience"], "everyone");
        assert_eq!(body["ttl_seconds"], 3600);
    }
}
