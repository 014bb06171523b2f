//! A message run, end to end: sign the users in, create their groups (in
//! group mode), open every device's socket, offer messages on the
//! open-loop [`Schedule`], check every arrival against the [`Tracker`],
//! drain, and build the [`Report`].
//!
//! # Tasks
//!
//! * one **writer** per device owns the socket's sink and drains a bounded
//!   queue, feeding frames and flushing once per batch;
//! * one **reader** per device parses every frame once (borrowing, no
//!   `Value`), files acks and arrivals, and queues replies (receipts,
//!   views) with `try_send`: a full queue is counted as a skipped reply,
//!   never waited on, so a reader can never deadlock against its own
//!   writer. In a group every member's reader sees every message, so this
//!   per-frame path is the generator's cost: one parse, one ledger entry;
//! * `--senders` **lanes** split the schedule (lane `l` sends messages
//!   `l, l + L, l + 2L, ...`); a lane sleeps until a message is due, then
//!   hands it to the sending device's queue. A full queue blocks the lane:
//!   it falls behind, keeps the due times, and the lateness shows up in
//!   every latency and in the send-lag histogram;
//! * media sends run as tasks bounded by a semaphore the lane waits on;
//! * a **ticker** takes a [`SeriesPoint`] every second and drives the
//!   progress bar.
//!
//! Every queue is bounded; every task ends when the run ends.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, Context as _, Result};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt as _, StreamExt as _};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use reqwest::Method;
use serde::Deserialize;
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinSet;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_tungstenite::tungstenite::Message;

use crate::client::{api_error, Session};
use crate::config::{LoadConfig, Mix, PASSWORD};
use crate::crypto;
use crate::net::{self, Target, Ws};
use crate::report::{cpu_us_per, Counts, GroupReport, Latencies, Report, SeriesPoint, SideTraffic};
use crate::resources::{mb, MachineSummary, ProcWatch, SystemWatch};
use crate::schedule::{chance, hash_str, Groups, Plan, Schedule, To};
use crate::stalled::Stalled;
use crate::stats::{AckInfo, Arrival, Latency, Tracker};

/// Frames a device's outgoing queue holds.
const DEVICE_QUEUE: usize = 512;

/// Frames a writer feeds before it flushes.
const WRITE_BATCH: usize = 128;

/// A send handed over later than this after its due time is "late".
const LATE_US: u64 = 10_000;

/// Shards of the tracker.
const TRACKER_SHARDS: usize = 64;

/// How long tasks get to finish once the run is over.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Run `cfg` to the end (messages, idle mode or the stories mix).
pub async fn run(cfg: &LoadConfig) -> Result<Report> {
    let (_keep, stop) = watch::channel(false);
    run_until(cfg, stop).await
}

/// [`run`], ending early (and still reporting) once `stop` turns true.
pub async fn run_until(cfg: &LoadConfig, stop: watch::Receiver<bool>) -> Result<Report> {
    cfg.validate()?;
    if cfg.mix == Mix::Stories {
        crate::stories::run(cfg, stop).await
    } else if cfg.idle_connections.is_some() {
        crate::idle::run(cfg, stop).await
    } else {
        messages(cfg, stop).await
    }
}

// ---------------------------------------------------------------------------
// Shared helpers (also used by idle mode)
// ---------------------------------------------------------------------------

/// Wait until `rx` reads true; forever if its sender is gone first.
pub(crate) async fn stopped(rx: &mut watch::Receiver<bool>) {
    loop {
        if *rx.borrow_and_update() {
            return;
        }
        if rx.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Unix time in milliseconds.
pub(crate) fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A progress bar on stderr, or a hidden one.
pub(crate) fn bar(show: bool, len: u64, template: &str) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

/// One signed-in user: its id and one session per device.
pub(crate) struct Account {
    /// The server's id for the user.
    pub user_id: String,
    /// One login per device; the tokens are secrets and never printed.
    pub sessions: Vec<Session>,
    /// Index into the run's targets.
    pub target: usize,
}

/// Resolve every `--url`.
pub(crate) async fn targets(cfg: &LoadConfig) -> Result<Vec<Target>> {
    let mut out = Vec::new();
    for url in &cfg.urls {
        out.push(Target::resolve(url).await?);
    }
    Ok(out)
}

/// Register (if asked) and log in every user, `devices` times each, with
/// at most `connect_concurrency` calls in flight.
pub(crate) async fn sign_in(cfg: &LoadConfig, targets: &[Target]) -> Result<Vec<Account>> {
    let bar = bar(
        cfg.progress,
        u64::from(cfg.users),
        "signing in {pos}/{len} users [{bar:30}] {elapsed}",
    );
    let gate = Arc::new(Semaphore::new(cfg.connect_concurrency));
    let mut accounts: Vec<Option<Account>> = (0..cfg.users).map(|_| None).collect();
    let mut set = JoinSet::new();
    for i in 0..cfg.users {
        let permit = gate.clone().acquire_owned().await?;
        let target = i as usize % targets.len();
        let http = targets[target].http.clone();
        let username = cfg.username(i);
        let (register, devices) = (cfg.register, cfg.devices);
        set.spawn(async move {
            let _permit = permit;
            let result = async {
                if register {
                    match retrying(|| http.register(&username, PASSWORD)).await {
                        Ok(_) => {}
                        // Taken: reuse it (a rerun with the same prefix).
                        Err(e) if api_error(&e).is_some_and(|a| a.status == 409) => {}
                        Err(e) => return Err(e.context("registering")),
                    }
                }
                let mut sessions = Vec::with_capacity(devices as usize);
                for d in 0..devices {
                    let name = format!("load-{d}");
                    let s = retrying(|| http.login(&username, PASSWORD, Some(&name)))
                        .await
                        .context("logging in")?;
                    sessions.push(s);
                }
                Ok::<_, anyhow::Error>(Account {
                    user_id: sessions[0].user_id.clone(),
                    sessions,
                    target,
                })
            }
            .await;
            (i, result)
        });
        while let Some(done) = set.try_join_next() {
            file_account(&mut accounts, done)?;
            bar.inc(1);
        }
    }
    while let Some(done) = set.join_next().await {
        file_account(&mut accounts, done)?;
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(accounts
        .into_iter()
        .map(|a| a.expect("every user's task was joined"))
        .collect())
}

/// Put a finished sign-in where it belongs, or fail the run with it.
fn file_account(
    accounts: &mut [Option<Account>],
    done: Result<(u32, Result<Account>), tokio::task::JoinError>,
) -> Result<()> {
    let (i, result) = done.map_err(|e| anyhow!("sign-in task failed: {e}"))?;
    accounts[i as usize] = Some(result.with_context(|| format!("signing in user {i}"))?);
    Ok(())
}

/// Call `f` again after a `429`/`503` (honouring `Retry-After`), up to
/// five times.
pub(crate) async fn retrying<T, F, Fut>(mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let mut attempt = 0;
    loop {
        match f().await {
            Err(e) if attempt < 5 => {
                let Some(api) = api_error(&e) else {
                    return Err(e);
                };
                if api.status != 429 && api.status != 503 {
                    return Err(e);
                }
                attempt += 1;
                let wait = api.retry_after.unwrap_or(1).clamp(1, 10);
                tokio::time::sleep(Duration::from_secs(wait)).await;
            }
            other => return other,
        }
    }
}

// ---------------------------------------------------------------------------
// State shared by the tasks of a message run
// ---------------------------------------------------------------------------

/// Event counters bumped by every task (the tracker keeps the rest).
#[derive(Default)]
struct Counters {
    /// Messages the lanes reached on the schedule.
    scheduled: AtomicU64,
    /// `send` frames handed to a socket queue.
    sent: AtomicU64,
    /// Sends that could not be handed over.
    send_failed: AtomicU64,
    /// Sends answered with an error frame.
    rejected: AtomicU64,
    /// Error frames of any kind.
    error_frames: AtomicU64,
    /// Error frames by code.
    errors: Mutex<BTreeMap<String, u64>>,
    /// The first message the server gave with each error code (messages
    /// never carry content, PROTOCOL §2).
    error_messages: Mutex<BTreeMap<String, String>>,
    /// Acks that are not for a message of this run.
    foreign_acks: AtomicU64,
    /// Frames the acked messages had to make (the sum of their expected
    /// slots).
    expected_frames: AtomicU64,
    /// Frames that did not parse.
    unparsed: AtomicU64,
    /// Sockets that closed while the run was on.
    sockets_closed: AtomicU64,
    typing_sent: AtomicU64,
    typing_received: AtomicU64,
    delivered_sent: AtomicU64,
    read_sent: AtomicU64,
    receipts_delivered: AtomicU64,
    receipts_read: AtomicU64,
    views_sent: AtomicU64,
    views_granted: AtomicU64,
    views_burned: AtomicU64,
    /// `burned` frames by reason.
    burned: Mutex<BTreeMap<String, u64>>,
    uploads: AtomicU64,
    upload_failures: AtomicU64,
    replies_skipped: AtomicU64,
    presence: AtomicU64,
}

fn inc(c: &AtomicU64) {
    c.fetch_add(1, Relaxed);
}

fn get(c: &AtomicU64) -> u64 {
    c.load(Relaxed)
}

/// Count one more `key` in `m` (at most 64 keys of 40 characters; the
/// rest count as "other").
pub(crate) fn bump_map(m: &Mutex<BTreeMap<String, u64>>, key: &str) {
    let mut m = m.lock().unwrap_or_else(|p| p.into_inner());
    match m.get_mut(key) {
        Some(n) => *n += 1,
        None => {
            // Codes come from the server; cap the table so a misbehaving
            // one cannot grow it without bound.
            let key = if m.len() < 64 { key } else { "other" };
            *m.entry(key.chars().take(40).collect()).or_default() += 1;
        }
    }
}

/// One user as the frames need it.
struct UserSlot {
    /// The user id as a JSON string literal, ready to splice into frames.
    id_json: String,
    /// The user id, to tell own messages (from another own device) apart.
    id: String,
    /// The conversation this user sends into, as a JSON string literal,
    /// once an ack has named it (typing frames need it).
    conv_json: OnceLock<String>,
}

/// Everything the tasks of one run share.
struct Shared {
    /// When message 0 is due.
    t0: Instant,
    /// A random tag making this run's client_msg_ids unique, so a rerun
    /// on the same accounts is never taken for a retry of an old send.
    tag: String,
    /// Due times.
    schedule: Schedule,
    /// Who sends what to whom.
    plan: Plan,
    /// The users.
    users: Vec<UserSlot>,
    /// Group mode: each group's conversation id as a JSON string literal.
    groups: Vec<String>,
    /// The exactly-once ledger.
    tracker: Tracker,
    /// Event counters.
    c: Counters,
    /// ttl_seconds of every message.
    ttl: u64,
    /// The text body (filler; never logged).
    body: String,
}

impl Shared {
    /// Microseconds since `t0` (0 before it).
    fn now_us(&self) -> u64 {
        Instant::now()
            .saturating_duration_since(self.t0)
            .as_micros() as u64
    }

    /// `k` if `client_msg_id` is one of this run's.
    fn parse_cid(&self, cid: &str) -> Option<u64> {
        cid.strip_prefix(self.tag.as_str())?
            .strip_prefix('-')?
            .parse()
            .ok()
    }

    /// The `send` frame of message `k`: a text body, or `media_key`.
    fn send_frame(&self, k: u64, media_key_json: Option<&str>) -> String {
        let p = self.plan.message(k);
        let to = match p.to {
            To::User(u) => format!(r#""to":{}"#, self.users[u as usize].id_json),
            To::Group(g) => format!(r#""conversation_id":{}"#, self.groups[g as usize]),
        };
        let policy = if p.once { "once" } else { "timed" };
        let content = match media_key_json {
            Some(key) => format!(r#""media_key":{key}"#),
            None => format!(r#""body":"{}""#, self.body),
        };
        format!(
            r#"{{"type":"send","client_msg_id":"{}-{k}",{to},{content},"view_policy":"{policy}","ttl_seconds":{}}}"#,
            self.tag, self.ttl
        )
    }
}

/// `s` as a JSON string literal.
fn json_string(s: &str) -> String {
    // Serialising a &str cannot fail.
    serde_json::to_string(s).expect("a string serialises")
}

/// A device's way out: its queue, and its login for media uploads.
#[derive(Clone)]
struct DeviceIo {
    /// The writer's queue.
    tx: mpsc::Sender<Message>,
    /// The session's token (a secret: never printed).
    token: Arc<str>,
    /// Index into the targets.
    target: usize,
}

// ---------------------------------------------------------------------------
// Device tasks
// ---------------------------------------------------------------------------

/// The fields of any server frame the generator looks at, borrowed from
/// the frame's text where possible.
#[derive(Deserialize)]
struct Incoming<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(default, borrow)]
    msg_id: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    client_msg_id: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    from: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    conversation_id: Option<Cow<'a, str>>,
    #[serde(default)]
    seq: Option<u64>,
    #[serde(default)]
    expires_at: Option<i64>,
    #[serde(default, borrow)]
    view_policy: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    code: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    reason: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    result: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    state: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    message: Option<Cow<'a, str>>,
    #[serde(rename = "ref", default, borrow)]
    reference: Option<Cow<'a, str>>,
}

/// What a reader knows about its device.
struct Reader {
    shared: Arc<Shared>,
    /// The user's index.
    user: u32,
    /// The device's index within the user.
    device: u32,
    /// Its own writer's queue, for replies.
    tx: mpsc::Sender<Message>,
}

impl Reader {
    async fn run(self, mut stream: SplitStream<Ws>, mut halt: watch::Receiver<bool>) {
        loop {
            let next = tokio::select! {
                biased;
                _ = stopped(&mut halt) => return,
                next = stream.next() => next,
            };
            match next {
                Some(Ok(Message::Text(text))) => self.on_text(text.as_str()),
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => {
                    if !*halt.borrow() {
                        inc(&self.shared.c.sockets_closed);
                    }
                    return;
                }
                // Pings are answered by the socket itself.
                Some(Ok(_)) => {}
            }
        }
    }

    fn on_text(&self, text: &str) {
        let s = &*self.shared;
        let now_us = s.now_us();
        let Ok(f) = serde_json::from_str::<Incoming<'_>>(text) else {
            inc(&s.c.unparsed);
            return;
        };
        match &*f.kind {
            "ack" => self.on_ack(&f, now_us),
            "message" => self.on_message(&f, now_us),
            "error" => {
                inc(&s.c.error_frames);
                let code = f.code.as_deref().unwrap_or("unknown");
                bump_map(&s.c.errors, code);
                let mut first = s.c.error_messages.lock().unwrap_or_else(|p| p.into_inner());
                if first.len() < 64 && !first.contains_key(code) {
                    let message = f.message.as_deref().unwrap_or("").chars().take(200);
                    first.insert(code.chars().take(40).collect(), message.collect());
                }
                if f.reference
                    .as_deref()
                    .and_then(|r| s.parse_cid(r))
                    .is_some()
                {
                    inc(&s.c.rejected);
                }
            }
            "receipt" => match f.state.as_deref() {
                Some("read") => inc(&s.c.receipts_read),
                _ => inc(&s.c.receipts_delivered),
            },
            "typing" => inc(&s.c.typing_received),
            "view_result" => match f.result.as_deref() {
                Some("granted") => inc(&s.c.views_granted),
                _ => inc(&s.c.views_burned),
            },
            "burned" => bump_map(&s.c.burned, f.reason.as_deref().unwrap_or("unknown")),
            "presence" => inc(&s.c.presence),
            _ => {}
        }
    }

    fn on_ack(&self, f: &Incoming<'_>, now_us: u64) {
        let s = &*self.shared;
        let (Some(cid), Some(msg_id)) = (f.client_msg_id.as_deref(), f.msg_id.as_deref()) else {
            inc(&s.c.unparsed);
            return;
        };
        let Some((k, due_us)) = s
            .parse_cid(cid)
            .and_then(|k| Some((k, s.schedule.due_us(k)?)))
        else {
            inc(&s.c.foreign_acks);
            return;
        };
        let info = AckInfo {
            k,
            due_us,
            expected: s.plan.expected(k),
            expires_at_ms: f.expires_at.unwrap_or(i64::MAX),
        };
        if s.tracker.on_ack(msg_id, info, now_us).is_some() {
            s.c.expected_frames
                .fetch_add(u64::from(info.expected.count()), Relaxed);
        }
        if let Some(conv) = f.conversation_id.as_deref() {
            let slot = &s.users[self.user as usize].conv_json;
            if slot.get().is_none() {
                let _ = slot.set(json_string(conv));
            }
        }
    }

    fn on_message(&self, f: &Incoming<'_>, now_us: u64) {
        let s = &*self.shared;
        let Some(msg_id) = f.msg_id.as_deref() else {
            inc(&s.c.unparsed);
            return;
        };
        let own = f.from.as_deref() == Some(s.users[self.user as usize].id.as_str());
        let slot = s.plan.slot(self.user, self.device, own);
        let arrival = s.tracker.on_arrival(msg_id, slot, now_us);
        // Replies come from the recipient's first device, once per message.
        if own || self.device != 0 || !matches!(arrival, Arrival::First | Arrival::Completed) {
            return;
        }
        let shares = &s.plan.shares;
        let h = hash_str(msg_id);
        let id = || json_string(msg_id);
        let view = f.view_policy.as_deref() == Some("once") && chance(h, 21, shares.view);
        // A once message opened at once gets no separate `delivered`: the
        // view's burn already tells the sender, and the server may apply a
        // view sent right behind a `delivered` first, refusing the receipt.
        if !view && chance(h, 22, shares.delivered) {
            self.reply(
                format!(r#"{{"type":"delivered","msg_id":{}}}"#, id()),
                &s.c.delivered_sent,
            );
        }
        if chance(h, 23, shares.read) {
            if let (Some(conv), Some(seq)) = (f.conversation_id.as_deref(), f.seq) {
                self.reply(
                    format!(
                        r#"{{"type":"read","conversation_id":{},"up_to_seq":{seq}}}"#,
                        json_string(conv)
                    ),
                    &s.c.read_sent,
                );
            }
        }
        if view {
            self.reply(
                format!(r#"{{"type":"view","msg_id":{}}}"#, id()),
                &s.c.views_sent,
            );
        }
    }

    /// Queue a reply without waiting: a full queue is counted, not awaited.
    fn reply(&self, frame: String, counter: &AtomicU64) {
        match self.tx.try_send(Message::text(frame)) {
            Ok(()) => inc(counter),
            Err(_) => inc(&self.shared.c.replies_skipped),
        }
    }
}

/// Drain `rx` into `sink`, a batch per flush, until halted or the queue
/// closes.
async fn writer(
    mut sink: SplitSink<Ws, Message>,
    mut rx: mpsc::Receiver<Message>,
    mut halt: watch::Receiver<bool>,
) {
    'run: loop {
        let first = tokio::select! {
            biased;
            _ = stopped(&mut halt) => break,
            m = rx.recv() => match m {
                Some(m) => m,
                None => break,
            },
        };
        if sink.feed(first).await.is_err() {
            break;
        }
        for _ in 1..WRITE_BATCH {
            match rx.try_recv() {
                Ok(m) => {
                    if sink.feed(m).await.is_err() {
                        break 'run;
                    }
                }
                Err(_) => break,
            }
        }
        if sink.flush().await.is_err() {
            break;
        }
    }
    // A normal close; the peer may be gone, which is fine at the end.
    let _ = tokio::time::timeout(Duration::from_secs(1), sink.close()).await;
}

// ---------------------------------------------------------------------------
// Lanes and media
// ---------------------------------------------------------------------------

/// What media sends (and story posts) need.
pub(crate) struct Media {
    /// Object storage client (plain, no API observer).
    blobs: reqwest::Client,
    /// The plaintext every upload seals (random bytes, JPEG header).
    payload: Vec<u8>,
    /// Bounds uploads in flight (message lanes wait on it).
    gate: Arc<Semaphore>,
    /// The servers.
    targets: Vec<Target>,
    /// Bases a put_url may point at: the --urls and any --object-store.
    allowed: Vec<String>,
}

impl Media {
    /// Uploads of `cfg.media_bytes` to `targets` (or `cfg`'s object stores).
    pub(crate) fn new(cfg: &LoadConfig, targets: &[Target]) -> Result<Media> {
        Ok(Media {
            blobs: reqwest::Client::builder()
                .no_proxy()
                .timeout(Duration::from_secs(30))
                .build()
                .context("building the object storage client")?,
            payload: photo(cfg.media_bytes),
            gate: Arc::new(Semaphore::new(cfg.media_concurrency)),
            targets: targets.to_vec(),
            allowed: targets
                .iter()
                .map(|t| t.base.clone())
                .chain(
                    cfg.object_stores
                        .iter()
                        .map(|u| u.trim_end_matches('/').to_owned()),
                )
                .collect(),
        })
    }

    /// Mint, seal and PUT one object as the device holding `token`;
    /// returns the media_key as a JSON literal, or a failure reason.
    pub(crate) async fn upload(&self, target: usize, token: &str) -> Result<String, String> {
        let http = &self.targets[target].http;
        // PROTOCOL 4: `bytes` is the size of the object PUT, the sealed file.
        let body = format!(
            r#"{{"content_type":"image/jpeg","bytes":{}}}"#,
            crypto::sealed_len(self.payload.len())
        );
        let answer = http
            .raw(
                Method::POST,
                "/api/v1/media/upload-urls",
                Some(token),
                Some(&body),
            )
            .await
            .map_err(|_| "upload-urls: request failed".to_owned())?;
        if answer.status != 200 {
            return Err(format!("upload-urls: HTTP {}", answer.status));
        }
        let json = answer.json.ok_or("upload-urls: no JSON")?;
        let field = |k: &str| json.get(k).and_then(|v| v.as_str());
        let (Some(key), Some(put_url), Some(data_key)) =
            (field("media_key"), field("put_url"), field("data_key"))
        else {
            return Err("upload-urls: answer lacks fields".into());
        };
        // Only the addresses the run was given are ever contacted.
        if !self
            .allowed
            .iter()
            .any(|base| put_url.starts_with(&format!("{base}/")))
        {
            return Err("put_url is outside --url and --object-store".into());
        }
        let data_key = crypto::data_key(data_key).map_err(|_| "upload-urls: bad data_key")?;
        let sealed = crypto::seal(&data_key, &self.payload).map_err(|_| "seal failed")?;
        let put = self
            .blobs
            .put(put_url)
            .body(sealed)
            .send()
            .await
            .map_err(|_| "PUT: request failed".to_owned())?;
        if !put.status().is_success() {
            return Err(format!("PUT: HTTP {}", put.status().as_u16()));
        }
        Ok(json_string(key))
    }
}

/// What a lane measured.
struct LaneOut {
    /// Due → handed over, per send.
    lag: Latency,
    /// Sends handed over more than [`LATE_US`] late.
    late: u64,
    /// Mint + seal + PUT per upload.
    upload: Latency,
}

/// Send messages `first, first + step, ...` on schedule.
async fn lane(
    shared: Arc<Shared>,
    io: Arc<Vec<DeviceIo>>,
    media: Arc<Media>,
    first: u64,
    step: u64,
    mut stop: watch::Receiver<bool>,
) -> LaneOut {
    let mut out = LaneOut {
        lag: Latency::precise(),
        late: 0,
        upload: Latency::precise(),
    };
    let uploads_lat = Arc::new(Mutex::new(Latency::precise()));
    let mut uploads = JoinSet::new();
    let devices = shared.plan.devices;
    let mut k = first;
    while let Some(due_us) = shared.schedule.due_us(k) {
        let due = shared.t0 + Duration::from_micros(due_us);
        if Instant::now() < due {
            tokio::select! {
                biased;
                _ = stopped(&mut stop) => break,
                _ = tokio::time::sleep_until(due) => {}
            }
        } else if *stop.borrow() {
            break;
        }
        inc(&shared.c.scheduled);
        let lag = Instant::now().saturating_duration_since(due).as_micros() as u64;
        out.lag.record_us(lag);
        if lag > LATE_US {
            out.late += 1;
        }
        let p = shared.plan.message(k);
        let dev = &io[(p.sender * devices + p.device) as usize];
        if p.typing {
            if let Some(conv) = shared.users[p.sender as usize].conv_json.get() {
                let frame =
                    format!(r#"{{"type":"typing","conversation_id":{conv},"is_typing":true}}"#);
                if dev.tx.send(Message::text(frame)).await.is_ok() {
                    inc(&shared.c.typing_sent);
                }
            }
        }
        if p.media {
            // Waiting here is the bound: the lane falls behind instead of
            // queueing uploads without limit.
            let Ok(permit) = media.gate.clone().acquire_owned().await else {
                break;
            };
            while uploads.try_join_next().is_some() {}
            let (shared, media, dev, lat) = (
                shared.clone(),
                media.clone(),
                dev.clone(),
                uploads_lat.clone(),
            );
            uploads.spawn(async move {
                let _permit = permit;
                let started = Instant::now();
                match media.upload(dev.target, &dev.token).await {
                    Ok(key) => {
                        inc(&shared.c.uploads);
                        let us = started.elapsed().as_micros() as u64;
                        lat.lock().unwrap_or_else(|p| p.into_inner()).record_us(us);
                        let frame = shared.send_frame(k, Some(&key));
                        match dev.tx.send(Message::text(frame)).await {
                            Ok(()) => inc(&shared.c.sent),
                            Err(_) => inc(&shared.c.send_failed),
                        }
                    }
                    Err(reason) => {
                        inc(&shared.c.upload_failures);
                        inc(&shared.c.send_failed);
                        bump_map(&shared.c.errors, &format!("media {reason}"));
                    }
                }
            });
        } else {
            let frame = shared.send_frame(k, None);
            match dev.tx.send(Message::text(frame)).await {
                Ok(()) => inc(&shared.c.sent),
                Err(_) => inc(&shared.c.send_failed),
            }
        }
        k += step;
    }
    while uploads.join_next().await.is_some() {}
    out.upload
        .merge(&uploads_lat.lock().unwrap_or_else(|p| p.into_inner()));
    out
}

// ---------------------------------------------------------------------------
// Ticker
// ---------------------------------------------------------------------------

/// What the ticker hands back.
struct TickerOut {
    series: Vec<SeriesPoint>,
    server: Option<ProcWatch>,
    generator: ProcWatch,
    machine: SystemWatch,
}

/// Take a point every second until halted.
async fn ticker(
    shared: Arc<Shared>,
    bar: ProgressBar,
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
    let mut iv =
        tokio::time::interval_at(shared.t0 + Duration::from_secs(1), Duration::from_secs(1));
    iv.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let (mut prev_due, mut prev_sent, mut prev_errors) = (0u64, 0u64, 0u64);
    loop {
        tokio::select! {
            biased;
            _ = stopped(&mut halt) => break,
            _ = iv.tick() => {}
        }
        let t = shared.t0.elapsed().as_secs_f64();
        let due = shared.schedule.due_by(t);
        let sent = get(&shared.c.sent);
        let errors = get(&shared.c.error_frames);
        let iv_stats = shared.tracker.take_interval();
        let server_now = server.as_mut().and_then(|w| w.sample());
        let gen_now = generator.sample();
        let machine_now = machine.sample();
        let point = SeriesPoint {
            t: (t * 10.0).round() / 10.0,
            offered: due - prev_due.min(due),
            sent: sent - prev_sent,
            acked: iv_stats.counts.acked,
            delivered: iv_stats.counts.delivered,
            frames: iv_stats.counts.device_deliveries,
            errors: errors - prev_errors,
            ack_p50_ms: iv_stats.ack.quantile_us(0.5) as f64 / 1000.0,
            ack_p99_ms: iv_stats.ack.quantile_us(0.99) as f64 / 1000.0,
            delivery_p50_ms: iv_stats.delivery.quantile_us(0.5) as f64 / 1000.0,
            delivery_p99_ms: iv_stats.delivery.quantile_us(0.99) as f64 / 1000.0,
            frame_p99_ms: iv_stats.frame.quantile_us(0.99) as f64 / 1000.0,
            server_rss_mb: server_now.map(|u| mb(u.rss_bytes)),
            server_cpu_percent: server_now.map(|u| u.cpu_percent),
            generator_cpu_percent: gen_now.map(|u| u.cpu_percent),
            machine_cpu_percent: machine_now.map(|u| u.busy),
            open_sockets: None,
        };
        (prev_due, prev_sent, prev_errors) = (due, sent, errors);
        bar.set_position(sent);
        let mut msg = format!(
            "send {}/s ack {}/s dlv {}/s | p99 ack {:.1} ms dlv {:.1} ms",
            point.sent, point.acked, point.delivered, point.ack_p99_ms, point.delivery_p99_ms
        );
        if let Some(cpu) = point.server_cpu_percent {
            msg.push_str(&format!(" | server {cpu:.0}%"));
        }
        if point.errors > 0 {
            msg.push_str(&format!(" | {} errors", point.errors));
        }
        bar.set_message(msg);
        series.push(point);
    }
    // A last reading so the summaries cover the whole run.
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
// The run
// ---------------------------------------------------------------------------

/// Open every device's socket, `connect_concurrency` at a time.
async fn open_sockets(
    cfg: &LoadConfig,
    targets: &[Target],
    accounts: &[Account],
) -> Result<Vec<Ws>> {
    let bar = bar(
        cfg.progress,
        u64::from(cfg.users * cfg.devices),
        "connecting {pos}/{len} sockets [{bar:30}] {elapsed}",
    );
    let gate = Arc::new(Semaphore::new(cfg.connect_concurrency));
    let mut set = JoinSet::new();
    let n = accounts.len() * cfg.devices as usize;
    let mut sockets: Vec<Option<Ws>> = (0..n).map(|_| None).collect();
    let mut idx = 0usize;
    for account in accounts {
        for session in &account.sessions {
            let permit = gate.clone().acquire_owned().await?;
            let target = targets[account.target].clone();
            let token = session.token.clone();
            let source =
                (!cfg.source_ips.is_empty()).then(|| cfg.source_ips[idx % cfg.source_ips.len()]);
            let i = idx;
            set.spawn(async move {
                let _permit = permit;
                (
                    i,
                    net::connect(&target, &token, source, net::busy_config()).await,
                )
            });
            idx += 1;
            while let Some(done) = set.try_join_next() {
                file_socket(&mut sockets, done)?;
                bar.inc(1);
            }
        }
    }
    while let Some(done) = set.join_next().await {
        file_socket(&mut sockets, done)?;
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(sockets
        .into_iter()
        .map(|s| s.expect("every socket task was joined"))
        .collect())
}

fn file_socket(
    sockets: &mut [Option<Ws>],
    done: Result<(usize, Result<Ws>), tokio::task::JoinError>,
) -> Result<()> {
    let (i, result) = done.map_err(|e| anyhow!("connect task failed: {e}"))?;
    sockets[i] = Some(result.with_context(|| format!("opening socket {i}"))?);
    Ok(())
}

/// Group mode: create every group through `POST /api/v1/conversations`
/// as its first member, `connect_concurrency` at a time. The server makes
/// the caller a member itself (PROTOCOL 6), so the body lists the others:
/// at most 255, which a server counting only the listed ids accepts too.
/// Returns each group's `conversation_id` as a JSON string literal.
///
/// Membership is not read back: the ledger checks it, since a member left
/// out misses every message of its group (lost) and a creator left out has
/// its sends refused.
async fn create_groups(
    cfg: &LoadConfig,
    targets: &[Target],
    accounts: &[Account],
    groups: Groups,
) -> Result<Vec<String>> {
    let bar = bar(
        cfg.progress,
        u64::from(groups.count()),
        "creating {pos}/{len} groups [{bar:30}] {elapsed}",
    );
    let gate = Arc::new(Semaphore::new(cfg.connect_concurrency));
    let mut set = JoinSet::new();
    let mut ids: Vec<Option<String>> = vec![None; groups.count() as usize];
    for g in 0..groups.count() {
        let permit = gate.clone().acquire_owned().await?;
        let mut members = groups.members(g);
        let creator = members
            .next()
            .map(|u| &accounts[u as usize])
            .ok_or_else(|| anyhow!("group {g} has no members"))?;
        let others: Vec<String> = members
            .map(|u| accounts[u as usize].user_id.clone())
            .collect();
        let http = targets[creator.target].http.clone();
        let session = creator.sessions[0].clone();
        set.spawn(async move {
            let _permit = permit;
            let id = retrying(|| http.create_group(&session, &others, None)).await;
            (g, id)
        });
        while let Some(done) = set.try_join_next() {
            file_group(&mut ids, done)?;
            bar.inc(1);
        }
    }
    while let Some(done) = set.join_next().await {
        file_group(&mut ids, done)?;
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(ids
        .into_iter()
        .map(|id| json_string(&id.expect("every group's task was joined")))
        .collect())
}

/// Put a created group's id where it belongs, or fail the run with it.
fn file_group(
    ids: &mut [Option<String>],
    done: Result<(u32, Result<String>), tokio::task::JoinError>,
) -> Result<()> {
    let (g, result) = done.map_err(|e| anyhow!("group task failed: {e}"))?;
    ids[g as usize] = Some(result.with_context(|| format!("creating group {g}"))?);
    Ok(())
}

/// A random hex tag for this run's client_msg_ids.
fn run_tag() -> String {
    use ring::rand::SecureRandom as _;
    let mut b = [0u8; 4];
    // Without randomness, fall back on the clock: still unique per run.
    if ring::rand::SystemRandom::new().fill(&mut b).is_err() {
        b = (unix_ms() as u32).to_be_bytes();
    }
    format!("ld{:02x}{:02x}{:02x}{:02x}", b[0], b[1], b[2], b[3])
}

/// Random bytes starting like a JPEG, for media uploads.
fn photo(size: usize) -> Vec<u8> {
    use ring::rand::SecureRandom as _;
    let mut bytes = vec![0u8; size];
    let _ = ring::rand::SystemRandom::new().fill(&mut bytes);
    for (b, h) in bytes.iter_mut().zip([0xFF, 0xD8, 0xFF, 0xE0]) {
        *b = h;
    }
    bytes
}

/// The message run.
async fn messages(cfg: &LoadConfig, stop: watch::Receiver<bool>) -> Result<Report> {
    let targets = targets(cfg).await?;
    let accounts = sign_in(cfg, &targets).await?;
    let groups = cfg.groups();
    let create_started = Instant::now();
    let group_ids = match groups {
        Some(g) => create_groups(cfg, &targets, &accounts, g).await?,
        None => Vec::new(),
    };
    let create_seconds = create_started.elapsed().as_secs_f64();
    let sockets = open_sockets(cfg, &targets, &accounts).await?;
    let stalled = Stalled::open(cfg, &targets, &accounts).await?;

    let schedule = Schedule::new(cfg.profile);
    let plan = Plan {
        users: cfg.users,
        devices: cfg.devices,
        pairing: cfg.pairing,
        shares: cfg.shares,
        groups,
    };
    let mut body = String::from("ephemera load message ");
    while body.len() < cfg.body_bytes {
        body.push('x');
    }
    body.truncate(cfg.body_bytes);
    // A short settle so the first due times are not spent spawning tasks.
    let t0 = Instant::now() + Duration::from_millis(200);
    let started_at_ms = unix_ms() + 200;
    let shared = Arc::new(Shared {
        t0,
        tag: run_tag(),
        schedule: schedule.clone(),
        plan,
        users: accounts
            .iter()
            .enumerate()
            .map(|(i, a)| {
                // A group member's conversation is known before any ack.
                let conv_json = OnceLock::new();
                if let Some(g) = groups {
                    let _ = conv_json.set(group_ids[g.of(i as u32) as usize].clone());
                }
                UserSlot {
                    id_json: json_string(&a.user_id),
                    id: a.user_id.clone(),
                    conv_json,
                }
            })
            .collect(),
        groups: group_ids,
        tracker: Tracker::new(TRACKER_SHARDS),
        c: Counters::default(),
        ttl: cfg.ttl_seconds,
        body,
    });

    // Device tasks.
    let (halt_tx, halt) = watch::channel(false);
    let mut device_tasks = JoinSet::new();
    let mut io = Vec::with_capacity(sockets.len());
    for (i, ws) in sockets.into_iter().enumerate() {
        let (user, device) = (i as u32 / cfg.devices, i as u32 % cfg.devices);
        let account = &accounts[user as usize];
        let (tx, rx) = mpsc::channel(DEVICE_QUEUE);
        let (sink, stream) = ws.split();
        device_tasks.spawn(writer(sink, rx, halt.clone()));
        let reader = Reader {
            shared: shared.clone(),
            user,
            device,
            tx: tx.clone(),
        };
        device_tasks.spawn(reader.run(stream, halt.clone()));
        io.push(DeviceIo {
            tx,
            token: Arc::from(account.sessions[device as usize].token.as_str()),
            target: account.target,
        });
    }
    drop(accounts);
    let io = Arc::new(io);
    let media = Arc::new(Media::new(cfg, &targets)?);

    let progress = bar(
        cfg.progress,
        schedule.total(),
        "{elapsed_precise} [{bar:30}] {pos}/{len} {msg}",
    );
    let ticker_task = tokio::spawn(ticker(
        shared.clone(),
        progress.clone(),
        cfg.server_pid,
        halt.clone(),
    ));

    // Send.
    let lanes = cfg.senders.min(schedule.total().max(1) as usize) as u64;
    let mut lane_tasks = JoinSet::new();
    for l in 0..lanes {
        lane_tasks.spawn(lane(
            shared.clone(),
            io.clone(),
            media.clone(),
            l,
            lanes,
            stop.clone(),
        ));
    }
    let mut lag = Latency::precise();
    let mut upload = Latency::precise();
    let mut late_sends = 0;
    while let Some(done) = lane_tasks.join_next().await {
        let out = done.map_err(|e| anyhow!("a sender task failed: {e}"))?;
        lag.merge(&out.lag);
        upload.merge(&out.upload);
        late_sends += out.late;
    }
    let send_seconds = shared.t0.elapsed().as_secs_f64();

    // Drain: wait for every ack and delivery, at most --drain seconds.
    let drain_started = Instant::now();
    let drain_end = drain_started + Duration::from_secs_f64(cfg.drain);
    let mut stop_drain = stop.clone();
    loop {
        let c = shared.tracker.counts();
        let answered = c.acked + get(&shared.c.rejected);
        if answered >= get(&shared.c.sent) && shared.tracker.pending() == 0 {
            break;
        }
        if Instant::now() >= drain_end {
            break;
        }
        progress.set_message(format!(
            "draining: {} unanswered, {} not yet everywhere",
            get(&shared.c.sent).saturating_sub(answered),
            shared.tracker.pending()
        ));
        tokio::select! {
            _ = stopped(&mut stop_drain) => break,
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
    }
    let drain_seconds = drain_started.elapsed().as_secs_f64();
    let finished_ms = unix_ms();

    // Stop every task.
    let _ = halt_tx.send(true);
    drop(io);
    let ticked = ticker_task
        .await
        .map_err(|e| anyhow!("the ticker failed: {e}"))?;
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while device_tasks.join_next().await.is_some() {}
    })
    .await;
    device_tasks.abort_all();
    progress.finish_and_clear();
    let stalled = (cfg.stalled_devices > 0).then_some(stalled.finish().await);

    // Account.
    let accounting = shared.tracker.finish(finished_ms);
    let t = shared.tracker.counts();
    let latencies = shared.tracker.latencies();
    let c = &shared.c;
    let sent = get(&c.sent);
    let rejected = get(&c.rejected);
    let scheduled = get(&c.scheduled);
    let take =
        |m: &Mutex<BTreeMap<String, u64>>| m.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let mut unsupported = Vec::new();
    if cfg.story_share > 0.0 {
        unsupported.push(format!(
            "stories (story_share {}): a message run posts none; use --mix stories",
            cfg.story_share
        ));
    }
    if get(&c.unparsed) > 0 {
        bump_map(&c.errors, "client: unparsed frame");
    }
    let error_messages = c
        .error_messages
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
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
    let group = groups.map(|g| {
        let frames = t.device_deliveries;
        GroupReport {
            size: g.size,
            groups: g.count(),
            create_seconds,
            frames_per_message: get(&c.expected_frames) as f64 / t.acked.max(1) as f64,
            delivered_frame_rate: frames as f64 / send_seconds.max(1e-9),
            server_cpu_us_per_message: cpu_us_per(server.as_ref(), t.acked),
            server_cpu_us_per_frame: cpu_us_per(server.as_ref(), frames),
            generator_cpu_us_per_frame: cpu_us_per(generator.as_ref(), frames),
        }
    });
    Ok(Report {
        mode: "messages".into(),
        started_at_ms,
        config: serde_json::to_value(cfg).unwrap_or_default(),
        send_seconds,
        drain_seconds,
        offered_rate: scheduled as f64 / send_seconds.max(1e-9),
        acked_rate: t.acked as f64 / send_seconds.max(1e-9),
        counts: Counts {
            scheduled,
            sent,
            send_failed: get(&c.send_failed),
            rejected,
            acked: t.acked,
            unanswered: sent.saturating_sub(t.acked + rejected),
            delivered: t.delivered,
            device_deliveries: t.device_deliveries,
            lost: accounting.lost,
            lost_device_deliveries: accounting.lost_device_deliveries,
            expired_undelivered: accounting.expired_undelivered,
            delivered_without_ack: accounting.delivered_without_ack,
            duplicates: t.duplicates,
            duplicate_acks: t.duplicate_acks,
            unexpected: t.unexpected,
            foreign_acks: get(&c.foreign_acks),
            errors_by_code: take(&c.errors),
            error_messages,
            sockets_closed: get(&c.sockets_closed),
        },
        side: SideTraffic {
            typing_sent: get(&c.typing_sent),
            typing_received: get(&c.typing_received),
            delivered_sent: get(&c.delivered_sent),
            read_sent: get(&c.read_sent),
            receipts_delivered: get(&c.receipts_delivered),
            receipts_read: get(&c.receipts_read),
            views_sent: get(&c.views_sent),
            views_granted: get(&c.views_granted),
            views_burned: get(&c.views_burned),
            burned: take(&c.burned),
            uploads: get(&c.uploads),
            upload_failures: get(&c.upload_failures),
            replies_skipped: get(&c.replies_skipped),
            presence: get(&c.presence),
        },
        latency: Latencies {
            ack: latencies.ack.summary(),
            delivery: latencies.delivery.summary(),
            frame: latencies.frame.summary(),
            send_lag: lag.summary(),
            upload: upload.summary(),
        },
        late_sends,
        accounting,
        server,
        generator,
        machine,
        unsupported,
        series: ticked.series,
        idle: None,
        stalled,
        group,
        stories: None,
    })
}
