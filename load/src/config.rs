//! What a run is asked to do: the command-line flags and the TOML profile
//! (one struct, [`Options`], so each doc comment is both `--help` text and
//! profile documentation), resolved into a [`LoadConfig`].
//!
//! A flag given on the command line wins over the same key in the
//! `--profile` file, which wins over the built-in default.
//!
//! `--mix` picks what a run offers: messages over sockets (the default,
//! shaped by the flags up to `--stalled-devices`) or stories over HTTP
//! (`--mix stories`, shaped by `--authors` and the flags after it, plus
//! `--duration`, `--ramp`, the peak flags and `--media-bytes`).

use std::net::IpAddr;
use std::path::PathBuf;

use anyhow::{bail, Context as _, Result};
use serde::{Deserialize, Serialize};

use crate::schedule::{Groups, Pairing, RateProfile, Shares};

/// The password of every account the generator registers or logs in as.
pub const PASSWORD: &str = "ephemera-load-password";

/// Flags of `ephemera-load`, and keys of a `--profile` TOML file.
#[derive(Debug, Clone, Default, clap::Parser, Deserialize)]
#[command(
    name = "ephemera-load",
    about = "Open-loop load generator for an Ephemera server",
    version
)]
#[serde(default, deny_unknown_fields)]
pub struct Options {
    /// Base URL of a server to drive (repeat for a cluster; users are spread
    /// over them). Only these addresses are ever contacted.
    #[arg(long = "url", value_name = "URL")]
    pub urls: Vec<String>,
    /// TOML file with any of these options (snake_case keys); flags win.
    #[arg(long, value_name = "FILE")]
    #[serde(skip)]
    pub profile: Option<PathBuf>,
    /// Simulated users [default: 100].
    #[arg(long)]
    pub users: Option<u32>,
    /// Devices (sockets) per user, 1..=32 [default: 1].
    #[arg(long)]
    pub devices: Option<u32>,
    /// Register the accounts first (an existing one is reused).
    #[arg(long)]
    pub register: bool,
    /// Username prefix: users are PREFIX_0, PREFIX_1, ... [default: load].
    #[arg(long)]
    pub prefix: Option<String>,
    /// Who talks to whom: xor (i with i^1) or ring (i to i+1) [default: xor].
    #[arg(long, value_enum)]
    pub pairing: Option<Pairing>,
    /// Group mode: split the users into groups of this many (2..=256; the
    /// last group takes the remainder, which must not be 1), each created
    /// by its first member with POST /api/v1/conversations; every send goes
    /// to the sender's group and every other member's devices must get it
    /// (--pairing is unused) [default: off, 1:1 pairs].
    #[arg(long, value_name = "N")]
    pub group_size: Option<u32>,
    /// Offered rate, messages per second over all users [default: 100].
    #[arg(long)]
    pub rate: Option<f64>,
    /// Seconds messages are offered for [default: 10].
    #[arg(long)]
    pub duration: Option<f64>,
    /// Seconds over which the rate ramps up from 0 [default: 0].
    #[arg(long)]
    pub ramp: Option<f64>,
    /// Rate multiplier inside the peak window, e.g. 5 [default: 1].
    #[arg(long)]
    pub peak_factor: Option<f64>,
    /// Second at which the peak window opens [default: 0].
    #[arg(long)]
    pub peak_at: Option<f64>,
    /// Length of the peak window in seconds [default: 0, no peak].
    #[arg(long)]
    pub peak_for: Option<f64>,
    /// Share of sends with view_policy once [default: 0].
    #[arg(long)]
    pub once_share: Option<f64>,
    /// Share of sends carrying an encrypted media upload [default: 0].
    #[arg(long)]
    pub media_share: Option<f64>,
    /// Share of once messages the recipient opens with view [default: 1].
    #[arg(long)]
    pub view_share: Option<f64>,
    /// Share of arrivals answered with a delivered receipt [default: 0].
    #[arg(long)]
    pub delivered_share: Option<f64>,
    /// Share of arrivals answered with a read receipt [default: 0].
    #[arg(long)]
    pub read_share: Option<f64>,
    /// Share of sends preceded by a typing frame [default: 0].
    #[arg(long)]
    pub typing_share: Option<f64>,
    /// Share of stories in a message run (a message run posts none:
    /// reported as unsupported when above 0; use --mix stories)
    /// [default: 0].
    #[arg(long)]
    pub story_share: Option<f64>,
    /// Message lifetime, ttl_seconds [default: 3600].
    #[arg(long)]
    pub ttl: Option<u64>,
    /// Bytes of each text body [default: 64].
    #[arg(long)]
    pub body_bytes: Option<usize>,
    /// Bytes of each media object before encryption [default: 16384].
    #[arg(long)]
    pub media_bytes: Option<usize>,
    /// Media uploads in flight at most [default: 32].
    #[arg(long)]
    pub media_concurrency: Option<usize>,
    /// Sender tasks the schedule is split over [default: 8].
    #[arg(long)]
    pub senders: Option<usize>,
    /// Seconds to wait after the last send for acks and deliveries
    /// [default: 5].
    #[arg(long)]
    pub drain: Option<f64>,
    /// PID of the server, to sample its RSS and CPU from /proc.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Write the JSON report here.
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,
    /// Write the SVG chart (throughput and p99 per second) here.
    #[arg(long, value_name = "FILE")]
    pub chart: Option<PathBuf>,
    /// Idle mode: open this many authenticated sockets and hold them for
    /// --duration seconds instead of sending messages.
    #[arg(long)]
    pub idle_connections: Option<u64>,
    /// Extra devices that never read: this many more logins (round-robin
    /// over the users), each socket opened with a 4 KiB receive buffer and
    /// never read from, so the server's per-socket outbound bound is what
    /// stands between them and its memory. The report counts how the
    /// server ended each. Their users' traffic is the run's own.
    #[arg(long)]
    pub stalled_devices: Option<u64>,
    /// Local addresses to connect from, comma separated (e.g.
    /// 127.0.0.1,127.0.0.2), to get past the ephemeral-port limit.
    #[arg(long, value_delimiter = ',')]
    pub source_ips: Vec<IpAddr>,
    /// Handshakes (and logins) in flight at most [default: 64].
    #[arg(long)]
    pub connect_concurrency: Option<usize>,
    /// Base URL of an external object store the server's put_urls may point
    /// at (repeatable). Uploads only go to a --url or one of these; the
    /// embedded store is under the server's own --url.
    #[arg(long = "object-store", value_name = "URL")]
    pub object_stores: Vec<String>,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
    /// What the run offers: `messages` over sockets, or `stories` over
    /// HTTP (tray reads, views and posts; set up and shaped by the flags
    /// below) [default: messages].
    #[arg(long, value_enum)]
    pub mix: Option<Mix>,
    /// Stories mix: users who post stories before the run; every viewer
    /// follows every one of them [default: 1000].
    #[arg(long)]
    pub authors: Option<u32>,
    /// Stories mix: users who follow every author, read trays and open
    /// stories [default: 50].
    #[arg(long)]
    pub viewers: Option<u32>,
    /// Stories mix: stories each author posts before the run, 1..=100
    /// [default: 1].
    #[arg(long)]
    pub stories_per_author: Option<u32>,
    /// Stories mix: tray reads per second (GET /api/v1/stories/tray by a
    /// random viewer) [default: 100].
    #[arg(long)]
    pub tray_rate: Option<f64>,
    /// Stories mix: views per second (GET /api/v1/stories/{id} of a random
    /// story posted before the run, by a random viewer) [default: 2000].
    #[arg(long)]
    pub view_rate: Option<f64>,
    /// Stories mix: stories posted per second during the run by random
    /// authors (upload, then POST /api/v1/stories) [default: 0].
    #[arg(long)]
    pub post_rate: Option<f64>,
    /// Stories mix: ttl_seconds of every story, 1..=86400; it must outlast
    /// --duration [default: 3600].
    #[arg(long)]
    pub story_ttl: Option<u64>,
    /// Stories mix: stories whose view count is read back (as the author)
    /// after the run and compared with the viewers this run was shown
    /// them; 0 for none [default: 100].
    #[arg(long)]
    pub verify_stories: Option<u32>,
    /// Stories mix: HTTP requests in flight at most; at the bound the
    /// schedule waits, and the wait counts in every latency [default: 256].
    #[arg(long)]
    pub request_concurrency: Option<usize>,
}

impl Options {
    /// These options over `file`: a value set here wins.
    pub fn over(self, file: Options) -> Options {
        fn pick<T>(a: Option<T>, b: Option<T>) -> Option<T> {
            a.or(b)
        }
        fn list<T>(a: Vec<T>, b: Vec<T>) -> Vec<T> {
            if a.is_empty() {
                b
            } else {
                a
            }
        }
        Options {
            urls: list(self.urls, file.urls),
            profile: self.profile,
            users: pick(self.users, file.users),
            devices: pick(self.devices, file.devices),
            register: self.register || file.register,
            prefix: pick(self.prefix, file.prefix),
            pairing: pick(self.pairing, file.pairing),
            group_size: pick(self.group_size, file.group_size),
            rate: pick(self.rate, file.rate),
            duration: pick(self.duration, file.duration),
            ramp: pick(self.ramp, file.ramp),
            peak_factor: pick(self.peak_factor, file.peak_factor),
            peak_at: pick(self.peak_at, file.peak_at),
            peak_for: pick(self.peak_for, file.peak_for),
            once_share: pick(self.once_share, file.once_share),
            media_share: pick(self.media_share, file.media_share),
            view_share: pick(self.view_share, file.view_share),
            delivered_share: pick(self.delivered_share, file.delivered_share),
            read_share: pick(self.read_share, file.read_share),
            typing_share: pick(self.typing_share, file.typing_share),
            story_share: pick(self.story_share, file.story_share),
            ttl: pick(self.ttl, file.ttl),
            body_bytes: pick(self.body_bytes, file.body_bytes),
            media_bytes: pick(self.media_bytes, file.media_bytes),
            media_concurrency: pick(self.media_concurrency, file.media_concurrency),
            senders: pick(self.senders, file.senders),
            drain: pick(self.drain, file.drain),
            server_pid: pick(self.server_pid, file.server_pid),
            report: pick(self.report, file.report),
            chart: pick(self.chart, file.chart),
            idle_connections: pick(self.idle_connections, file.idle_connections),
            stalled_devices: pick(self.stalled_devices, file.stalled_devices),
            source_ips: list(self.source_ips, file.source_ips),
            connect_concurrency: pick(self.connect_concurrency, file.connect_concurrency),
            object_stores: list(self.object_stores, file.object_stores),
            quiet: self.quiet || file.quiet,
            mix: pick(self.mix, file.mix),
            authors: pick(self.authors, file.authors),
            viewers: pick(self.viewers, file.viewers),
            stories_per_author: pick(self.stories_per_author, file.stories_per_author),
            tray_rate: pick(self.tray_rate, file.tray_rate),
            view_rate: pick(self.view_rate, file.view_rate),
            post_rate: pick(self.post_rate, file.post_rate),
            story_ttl: pick(self.story_ttl, file.story_ttl),
            verify_stories: pick(self.verify_stories, file.verify_stories),
            request_concurrency: pick(self.request_concurrency, file.request_concurrency),
        }
    }

    /// Read `--profile` (if given) under these options.
    pub fn with_profile(self) -> Result<Options> {
        let Some(path) = self.profile.clone() else {
            return Ok(self);
        };
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading profile {}", path.display()))?;
        let file: Options =
            toml::from_str(&text).with_context(|| format!("parsing profile {}", path.display()))?;
        Ok(self.over(file))
    }

    /// Apply defaults and check ranges.
    pub fn resolve(self) -> Result<LoadConfig> {
        let mut cfg = LoadConfig::new(self.urls);
        let d = &mut cfg;
        macro_rules! set {
            ($field:expr, $value:expr) => {
                if let Some(v) = $value {
                    $field = v;
                }
            };
        }
        set!(d.users, self.users);
        set!(d.devices, self.devices);
        d.register = self.register;
        set!(d.prefix, self.prefix);
        set!(d.pairing, self.pairing);
        d.group_size = self.group_size;
        set!(d.profile.rate, self.rate);
        set!(d.profile.duration, self.duration);
        set!(d.profile.ramp, self.ramp);
        set!(d.profile.peak_factor, self.peak_factor);
        set!(d.profile.peak_at, self.peak_at);
        set!(d.profile.peak_for, self.peak_for);
        set!(d.shares.once, self.once_share);
        set!(d.shares.media, self.media_share);
        set!(d.shares.view, self.view_share);
        set!(d.shares.delivered, self.delivered_share);
        set!(d.shares.read, self.read_share);
        set!(d.shares.typing, self.typing_share);
        set!(d.story_share, self.story_share);
        set!(d.ttl_seconds, self.ttl);
        set!(d.body_bytes, self.body_bytes);
        set!(d.media_bytes, self.media_bytes);
        set!(d.media_concurrency, self.media_concurrency);
        set!(d.senders, self.senders);
        set!(d.drain, self.drain);
        d.server_pid = self.server_pid;
        d.idle_connections = self.idle_connections;
        set!(d.stalled_devices, self.stalled_devices);
        d.source_ips = self.source_ips;
        set!(d.connect_concurrency, self.connect_concurrency);
        d.object_stores = self.object_stores;
        d.progress = !self.quiet;
        set!(d.mix, self.mix);
        let st = &mut d.stories;
        set!(st.authors, self.authors);
        set!(st.viewers, self.viewers);
        set!(st.stories_per_author, self.stories_per_author);
        set!(st.tray_rate, self.tray_rate);
        set!(st.view_rate, self.view_rate);
        set!(st.post_rate, self.post_rate);
        set!(st.ttl_seconds, self.story_ttl);
        set!(st.verify, self.verify_stories);
        set!(st.request_concurrency, self.request_concurrency);
        cfg.validate()?;
        Ok(cfg)
    }
}

/// A resolved run: every knob with its value.
#[derive(Debug, Clone, Serialize)]
pub struct LoadConfig {
    /// Base URLs of the servers (`http://host:port`).
    pub urls: Vec<String>,
    /// Simulated users.
    pub users: u32,
    /// Devices per user (1..=32).
    pub devices: u32,
    /// Register the accounts before logging in.
    pub register: bool,
    /// Username prefix.
    pub prefix: String,
    /// Who talks to whom (1:1 runs).
    pub pairing: Pairing,
    /// Group mode: members per group; `None` for 1:1 pairs.
    pub group_size: Option<u32>,
    /// Offered load over time.
    pub profile: RateProfile,
    /// The traffic mix.
    pub shares: Shares,
    /// Share of stories asked for (unsupported by the server so far).
    pub story_share: f64,
    /// `ttl_seconds` of every message.
    pub ttl_seconds: u64,
    /// Bytes of each text body.
    pub body_bytes: usize,
    /// Bytes of each media object before encryption.
    pub media_bytes: usize,
    /// Media uploads in flight at most.
    pub media_concurrency: usize,
    /// Sender tasks.
    pub senders: usize,
    /// Seconds to wait for stragglers after the last send.
    pub drain: f64,
    /// The server's PID, for RSS and CPU sampling.
    pub server_pid: Option<u32>,
    /// Idle mode: sockets to open and hold.
    pub idle_connections: Option<u64>,
    /// Extra devices that never read (message runs).
    pub stalled_devices: u64,
    /// Local addresses to connect from (empty: let the kernel choose).
    pub source_ips: Vec<IpAddr>,
    /// Handshakes and logins in flight at most.
    pub connect_concurrency: usize,
    /// Extra bases media may be PUT to (external object stores).
    pub object_stores: Vec<String>,
    /// Draw a progress bar on stderr.
    pub progress: bool,
    /// What the run offers.
    pub mix: Mix,
    /// The stories mix (used with [`Mix::Stories`] only).
    pub stories: StoriesConfig,
}

/// What a run offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Mix {
    /// Messages over sockets (the run of `run.rs`).
    Messages,
    /// Stories over HTTP: tray reads, views and posts (`stories.rs`).
    Stories,
}

/// The stories mix: who posts, who looks, and how often.
///
/// Users `0..authors` of the prefix are the authors, the next `viewers`
/// the viewers; each logs in once (no sockets are opened).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct StoriesConfig {
    /// Users who post stories before the run.
    pub authors: u32,
    /// Users who follow every author and do the reading.
    pub viewers: u32,
    /// Stories each author posts before the run.
    pub stories_per_author: u32,
    /// Tray reads per second (before the ramp and peak of the profile).
    pub tray_rate: f64,
    /// Views per second.
    pub view_rate: f64,
    /// Stories posted per second during the run.
    pub post_rate: f64,
    /// `ttl_seconds` of every story.
    pub ttl_seconds: u64,
    /// Stories whose view count is checked after the run.
    pub verify: u32,
    /// HTTP requests in flight at most during the run.
    pub request_concurrency: usize,
}

impl Default for StoriesConfig {
    fn default() -> StoriesConfig {
        StoriesConfig {
            authors: 1000,
            viewers: 50,
            stories_per_author: 1,
            tray_rate: 100.0,
            view_rate: 2000.0,
            post_rate: 0.0,
            ttl_seconds: 3600,
            verify: 100,
            request_concurrency: 256,
        }
    }
}

impl StoriesConfig {
    /// Authors and viewers together: the accounts a stories run signs in.
    pub fn users(&self) -> u32 {
        self.authors.saturating_add(self.viewers)
    }

    /// Stories posted before the run.
    pub fn stories(&self) -> u64 {
        u64::from(self.authors) * u64::from(self.stories_per_author)
    }

    /// Check the stories flags against the run's `duration` (seconds).
    fn validate(&self, duration: f64) -> Result<()> {
        if self.authors == 0 || self.viewers == 0 {
            bail!("--authors and --viewers must be at least 1");
        }
        if self.authors.checked_add(self.viewers).is_none() {
            bail!("--authors plus --viewers is too many users");
        }
        if !(1..=100).contains(&self.stories_per_author) {
            bail!("--stories-per-author must be within 1..=100");
        }
        let rates = [self.tray_rate, self.view_rate, self.post_rate];
        if !rates.iter().all(|r| r.is_finite() && *r >= 0.0) {
            bail!("--tray-rate, --view-rate and --post-rate must be finite and not negative");
        }
        if rates.iter().all(|r| *r == 0.0) {
            bail!("one of --tray-rate, --view-rate and --post-rate must be above 0");
        }
        // PROTOCOL 5: ttl_seconds <= 86400.
        if !(1..=86_400).contains(&self.ttl_seconds) {
            bail!("--story-ttl must be within 1..=86400");
        }
        // A story that ends mid-run turns every later view of it into a
        // 404, which would read as a server fault.
        if self.ttl_seconds as f64 <= duration {
            bail!("--story-ttl must outlast --duration (stories would end mid-run)");
        }
        if self.request_concurrency == 0 {
            bail!("--request-concurrency must be at least 1");
        }
        Ok(())
    }
}

impl LoadConfig {
    /// The defaults, aimed at `urls`.
    pub fn new(urls: Vec<String>) -> LoadConfig {
        LoadConfig {
            urls,
            users: 100,
            devices: 1,
            register: false,
            prefix: "load".into(),
            pairing: Pairing::Xor,
            group_size: None,
            profile: RateProfile::flat(100.0, 10.0),
            shares: Shares {
                view: 1.0,
                ..Shares::PLAIN
            },
            story_share: 0.0,
            ttl_seconds: 3600,
            body_bytes: 64,
            media_bytes: 16 * 1024,
            media_concurrency: 32,
            senders: 8,
            drain: 5.0,
            server_pid: None,
            idle_connections: None,
            stalled_devices: 0,
            source_ips: Vec::new(),
            connect_concurrency: 64,
            object_stores: Vec::new(),
            progress: false,
            mix: Mix::Messages,
            stories: StoriesConfig::default(),
        }
    }

    /// Check every value is in range.
    pub fn validate(&self) -> Result<()> {
        if self.urls.is_empty() {
            bail!("give at least one --url");
        }
        for url in &self.urls {
            if !url.starts_with("http://") {
                bail!("--url must be http://host:port (got a URL of another scheme)");
            }
        }
        if self.mix == Mix::Stories {
            if self.idle_connections.is_some()
                || self.group_size.is_some()
                || self.stalled_devices > 0
            {
                bail!(
                    "--mix stories takes no --idle-connections, --group-size or --stalled-devices"
                );
            }
            self.stories.validate(self.profile.duration)?;
        } else if self.idle_connections.is_none() && self.users < 2 {
            bail!("--users must be at least 2 (users send to each other)");
        }
        if self.users == 0 {
            bail!("--users must be at least 1");
        }
        if !(1..=32).contains(&self.devices) {
            bail!("--devices must be within 1..=32");
        }
        if let Some(groups) = self.groups() {
            if self.idle_connections.is_some() {
                bail!("--group-size is for message runs, not --idle-connections");
            }
            groups
                .validate()
                .map_err(|e| anyhow::anyhow!("--group-size: {e}"))?;
        }
        let max_index = self.accounts().saturating_sub(1).to_string();
        let longest = self.prefix.len() + 1 + max_index.len();
        let valid = self
            .prefix
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if !valid || self.prefix.is_empty() || longest > 32 {
            bail!("--prefix must be [a-z0-9_]+ and PREFIX_N at most 32 characters");
        }
        self.profile.validate().map_err(anyhow::Error::msg)?;
        let s = &self.shares;
        for (name, v) in [
            ("once", s.once),
            ("media", s.media),
            ("view", s.view),
            ("delivered", s.delivered),
            ("read", s.read),
            ("typing", s.typing),
            ("story", self.story_share),
        ] {
            if !(0.0..=1.0).contains(&v) {
                bail!("--{name}-share must be within 0..=1");
            }
        }
        if self.ttl_seconds == 0 {
            bail!("--ttl must be at least 1");
        }
        if self.body_bytes == 0 || self.body_bytes > 16 * 1024 {
            bail!("--body-bytes must be within 1..=16384");
        }
        // PROTOCOL 4: the sealed object (plaintext + 28) is at most 100 MiB.
        if self.media_bytes == 0 || crate::crypto::sealed_len(self.media_bytes) > 100 << 20 {
            bail!("--media-bytes must be within 1..=104857572 (sealed, at most 100 MiB)");
        }
        if self.senders == 0 || self.media_concurrency == 0 || self.connect_concurrency == 0 {
            bail!("--senders, --media-concurrency and --connect-concurrency must be at least 1");
        }
        if !(self.drain.is_finite() && self.drain >= 0.0) {
            bail!("--drain must be a number of seconds");
        }
        Ok(())
    }

    /// How many users the run signs in: `users`, or the authors and
    /// viewers of a stories run.
    pub fn accounts(&self) -> u32 {
        match self.mix {
            Mix::Messages => self.users,
            Mix::Stories => self.stories.users(),
        }
    }

    /// The username of user `i`.
    pub fn username(&self, i: u32) -> String {
        format!("{}_{i}", self.prefix)
    }

    /// How the users split into groups, in group mode.
    pub fn groups(&self) -> Option<Groups> {
        self.group_size.map(|size| Groups {
            users: self.users,
            size,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    #[test]
    fn flags_win_over_the_profile_and_defaults_fill_the_rest() {
        let file: Options = toml::from_str(
            r#"
            urls = ["http://127.0.0.1:1"]
            rate = 50.0
            users = 10
            once_share = 0.5
            register = true
            "#,
        )
        .unwrap();
        let cli = Options::parse_from(["ephemera-load", "--rate", "70", "--peak-factor", "5"]);
        let cfg = cli.over(file).resolve().unwrap();
        assert_eq!(cfg.urls, ["http://127.0.0.1:1"]);
        assert_eq!(cfg.profile.rate, 70.0);
        assert_eq!(cfg.profile.peak_factor, 5.0);
        assert_eq!(cfg.users, 10);
        assert_eq!(cfg.shares.once, 0.5);
        assert!(cfg.register);
        assert_eq!(cfg.devices, 1);
        assert_eq!(cfg.username(3), "load_3");
    }

    #[test]
    fn the_example_profile_parses() {
        let text = include_str!("../profiles/evening-peak.toml");
        let file: Options = toml::from_str(text).unwrap();
        let cli = Options::parse_from(["ephemera-load", "--url", "http://127.0.0.1:8080"]);
        let cfg = cli.over(file).resolve().unwrap();
        assert_eq!(cfg.profile.peak_factor, 5.0);
        assert_eq!(cfg.users, 10_000);
        assert_eq!(cfg.shares.once, 0.1);
    }

    #[test]
    fn unknown_profile_keys_and_bad_values_are_refused() {
        assert!(toml::from_str::<Options>("rat = 5.0").is_err());
        let bad = Options::parse_from(["x", "--url", "http://h:1", "--once-share", "2"]);
        assert!(bad.resolve().is_err());
        let bad = Options::parse_from(["x", "--url", "http://h:1", "--prefix", "Bad"]);
        assert!(bad.resolve().is_err());
        let ips = Options::parse_from([
            "x",
            "--url",
            "http://h:1",
            "--source-ips",
            "127.0.0.1,127.0.0.2",
        ]);
        assert_eq!(ips.resolve().unwrap().source_ips.len(), 2);
    }

    #[test]
    fn the_stories_mix_has_its_defaults_and_checks_them() {
        let cfg = Options::parse_from(["x", "--url", "http://h:1", "--mix", "stories"])
            .resolve()
            .unwrap();
        assert_eq!(cfg.mix, Mix::Stories);
        assert_eq!(cfg.stories, StoriesConfig::default());
        assert_eq!((cfg.stories.authors, cfg.stories.viewers), (1000, 50));
        assert_eq!(cfg.stories.view_rate, 2000.0);
        assert_eq!(cfg.accounts(), 1050);
        assert_eq!(cfg.stories.stories(), 1000);
        // A profile file can ask for it too; flags still win.
        let file: Options =
            toml::from_str("mix = \"stories\"\nauthors = 10\nviewers = 3\ntray_rate = 5.0")
                .unwrap();
        let cfg = Options::parse_from(["x", "--url", "http://h:1", "--viewers", "4"])
            .over(file)
            .resolve()
            .unwrap();
        assert_eq!(
            (cfg.mix, cfg.stories.authors, cfg.stories.viewers),
            (Mix::Stories, 10, 4)
        );
        assert_eq!(cfg.stories.tray_rate, 5.0);
        let file: Options = toml::from_str(include_str!("../profiles/stories.toml")).unwrap();
        let cfg = Options::parse_from(["x", "--url", "http://h:1"])
            .over(file)
            .resolve()
            .unwrap();
        assert_eq!(cfg.mix, Mix::Stories);
        assert_eq!(cfg.stories, StoriesConfig::default());
        assert_eq!(cfg.profile.duration, 60.0);
        assert_eq!(
            Options::parse_from(["x", "--url", "http://h:1"])
                .resolve()
                .unwrap()
                .mix,
            Mix::Messages
        );
        for bad in [
            &["--story-ttl", "10", "--duration", "10"][..],
            &["--story-ttl", "86401"],
            &["--authors", "0"],
            &["--stories-per-author", "101"],
            &["--tray-rate", "0", "--view-rate", "0"],
            &["--view-rate=-1"],
            &["--group-size", "2"],
            &["--idle-connections", "5"],
            &["--request-concurrency", "0"],
            // PREFIX_1049 (the last viewer) must fit in 32 characters.
            &["--prefix", "a_very_long_prefix_for_users_x"],
        ] {
            let o = Options::parse_from(
                ["x", "--url", "http://h:1", "--mix", "stories"]
                    .into_iter()
                    .chain(bad.iter().copied()),
            );
            assert!(o.resolve().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn group_size_is_checked_against_the_users() {
        let ok = Options::parse_from([
            "x",
            "--url",
            "http://h:1",
            "--users",
            "256",
            "--group-size",
            "256",
        ]);
        let cfg = ok.resolve().unwrap();
        assert_eq!(cfg.groups().map(|g| g.count()), Some(1));
        assert_eq!(LoadConfig::new(vec![]).groups(), None);
        let file: Options = toml::from_str("group_size = 8\nusers = 24").unwrap();
        let cfg = Options::parse_from(["x", "--url", "http://h:1"])
            .over(file)
            .resolve()
            .unwrap();
        assert_eq!(cfg.groups().map(|g| g.count()), Some(3));
        for bad in [
            ["--users", "300", "--group-size", "300"],
            ["--users", "17", "--group-size", "8"],
            ["--users", "10", "--group-size", "1"],
            ["--users", "10", "--group-size", "20"],
        ] {
            let o = Options::parse_from(["x", "--url", "http://h:1"].into_iter().chain(bad));
            assert!(o.resolve().is_err(), "{bad:?}");
        }
    }
}
