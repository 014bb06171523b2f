//! The outcome of a run: [`Report`] (written as JSON with `--report`), its
//! per-second [`SeriesPoint`]s (drawn by [`crate::chart`]) and the summary
//! table printed at the end.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::resources::{MachineSummary, ProcSummary};
use crate::stats::{Accounting, LatencySummary};

/// One second of a run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SeriesPoint {
    /// End of the second, seconds from the start of sending.
    pub t: f64,
    /// Messages due in this second (the offered load).
    pub offered: u64,
    /// Messages handed to a socket in this second.
    pub sent: u64,
    /// Acks received in this second.
    pub acked: u64,
    /// Messages that reached their last device in this second.
    pub delivered: u64,
    /// `message` frames that were a first arrival at a device in this
    /// second (the fanout: 255 per message in a group of 256).
    #[serde(default)]
    pub frames: u64,
    /// Error frames received in this second.
    pub errors: u64,
    /// Median ack latency of the acks of this second, ms.
    pub ack_p50_ms: f64,
    /// p99 ack latency of the acks of this second, ms.
    pub ack_p99_ms: f64,
    /// Median delivery latency of the deliveries of this second, ms.
    pub delivery_p50_ms: f64,
    /// p99 delivery latency of the deliveries of this second, ms.
    pub delivery_p99_ms: f64,
    /// p99 latency of the frames of this second (due → arrival), ms.
    #[serde(default)]
    pub frame_p99_ms: f64,
    /// Server RSS at the end of the second, MiB (with `--server-pid`).
    pub server_rss_mb: Option<f64>,
    /// Server CPU in the second, percent of one core.
    pub server_cpu_percent: Option<f64>,
    /// Generator CPU in the second, percent of one core.
    pub generator_cpu_percent: Option<f64>,
    /// Busy CPU of the whole machine in the second, percent of one core.
    pub machine_cpu_percent: Option<f64>,
    /// Sockets open (idle mode).
    pub open_sockets: Option<u64>,
}

/// Message counts of a run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Counts {
    /// Messages the schedule offered before the run ended.
    pub scheduled: u64,
    /// `send` frames handed to a socket.
    pub sent: u64,
    /// Sends that could not be handed over (socket gone, upload failed).
    pub send_failed: u64,
    /// Sends answered with an error frame instead of an ack.
    pub rejected: u64,
    /// Sends acked.
    pub acked: u64,
    /// Sends with neither ack nor error after the drain.
    pub unanswered: u64,
    /// Acked messages that reached every device they had to.
    pub delivered: u64,
    /// First arrivals at a device.
    pub device_deliveries: u64,
    /// Acked messages short of a device after the drain (still alive).
    pub lost: u64,
    /// Device deliveries those are short of.
    pub lost_device_deliveries: u64,
    /// Acked messages short of a device whose lifetime had ended (allowed).
    pub expired_undelivered: u64,
    /// Messages that arrived but were never acked to their sender.
    pub delivered_without_ack: u64,
    /// Second copies of a message at one device.
    pub duplicates: u64,
    /// Second acks of one message.
    pub duplicate_acks: u64,
    /// Copies at a device that should not have had the message.
    pub unexpected: u64,
    /// Acks whose client_msg_id is not of this run.
    pub foreign_acks: u64,
    /// Error frames by `code` (sends and everything else).
    pub errors_by_code: BTreeMap<String, u64>,
    /// The first message the server gave with each error code.
    pub error_messages: BTreeMap<String, String>,
    /// Sockets the server closed (or that broke) during the run.
    pub sockets_closed: u64,
}

/// Side traffic of the mix.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SideTraffic {
    /// `typing` frames sent.
    pub typing_sent: u64,
    /// `typing` frames received.
    pub typing_received: u64,
    /// `delivered` frames sent.
    pub delivered_sent: u64,
    /// `read` frames sent.
    pub read_sent: u64,
    /// `receipt` frames received with `state: "delivered"`.
    pub receipts_delivered: u64,
    /// `receipt` frames received with `state: "read"`.
    pub receipts_read: u64,
    /// `view` frames sent.
    pub views_sent: u64,
    /// `view_result` granted.
    pub views_granted: u64,
    /// `view_result` burned.
    pub views_burned: u64,
    /// `burned` frames received, by reason.
    pub burned: BTreeMap<String, u64>,
    /// Media objects uploaded (minted, sealed and PUT).
    pub uploads: u64,
    /// Uploads that failed.
    pub upload_failures: u64,
    /// Replies (receipts, views) not sent because the socket's queue was
    /// full; counted, never silently dropped.
    pub replies_skipped: u64,
    /// `presence` frames received.
    pub presence: u64,
}

/// Latency distributions of a run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Latencies {
    /// Due time → ack at the sending device.
    pub ack: LatencySummary,
    /// Due time → arrival at the last device that had to receive it.
    pub delivery: LatencySummary,
    /// Due time → arrival, per frame: every first arrival of a message at
    /// a device (in a group, one per member's device).
    #[serde(default)]
    pub frame: LatencySummary,
    /// Due time → handed to the socket: how far behind schedule the
    /// generator itself was.
    pub send_lag: LatencySummary,
    /// Mint + seal + PUT of one media object.
    pub upload: LatencySummary,
}

/// The idle-connections test.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct IdleReport {
    /// Sockets asked for.
    pub requested: u64,
    /// Sockets whose handshake succeeded.
    pub opened: u64,
    /// Handshakes that failed, by reason.
    pub failures: BTreeMap<String, u64>,
    /// Seconds it took to open them.
    pub open_seconds: f64,
    /// Seconds they were held.
    pub hold_seconds: f64,
    /// Sockets still open at the end of the hold.
    pub open_at_end: u64,
    /// Sockets that closed during the hold.
    pub closed_during_hold: u64,
    /// Local addresses used.
    pub source_ips: Vec<String>,
    /// Server RSS before the first socket, MiB.
    pub server_rss_before_mb: Option<f64>,
    /// Server RSS with every socket open, MiB.
    pub server_rss_held_mb: Option<f64>,
    /// (held − before) / open sockets, KiB.
    pub server_kib_per_socket: Option<f64>,
}

/// Devices that never read (`--stalled-devices`), and how the server ended
/// each.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StalledReport {
    /// Stalled sockets opened.
    pub requested: u64,
    /// How each ended, read after the run: `close <code>`, `cut` (no close
    /// frame), `open` (still open).
    pub endings: BTreeMap<String, u64>,
    /// Frames that were still waiting in the sockets when they were read
    /// out at the end (what the kernel and the server had buffered).
    pub frames_read_at_end: u64,
}

/// A group run (`--group-size`): the fanout, and what one delivered frame
/// cost next to what one message cost.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GroupReport {
    /// Members per group (the last group may have fewer).
    pub size: u32,
    /// Groups created, one conversation each.
    pub groups: u32,
    /// Seconds creating them took.
    pub create_seconds: f64,
    /// `message` frames each acked message had to make, on average: every
    /// device of every other member and the sender's other devices.
    pub frames_per_message: f64,
    /// Delivered frames (first arrivals at a device) over the send window,
    /// per second.
    pub delivered_frame_rate: f64,
    /// Server CPU per acked message, µs (with `--server-pid`).
    pub server_cpu_us_per_message: Option<f64>,
    /// Server CPU per delivered frame, µs (with `--server-pid`).
    pub server_cpu_us_per_frame: Option<f64>,
    /// This generator's CPU per delivered frame, µs.
    pub generator_cpu_us_per_frame: Option<f64>,
}

/// A stories run (`--mix stories`): the setup, each kind of request, the
/// trays seen and the view-count check.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StoriesReport {
    /// Users who posted stories.
    pub authors: u32,
    /// Users who followed every author and did the reading.
    pub viewers: u32,
    /// Stories each author posted before the run.
    pub stories_per_author: u32,
    /// What the setup did and how long it took.
    pub setup: StoriesSetup,
    /// Seconds from the first due request to the last answer.
    pub run_seconds: f64,
    /// `GET /api/v1/stories/tray`.
    pub tray: RequestReport,
    /// `GET /api/v1/stories/{id}`.
    pub view: RequestReport,
    /// Upload, then `POST /api/v1/stories` (during the run).
    pub post: RequestReport,
    /// Items per tray: every viewer follows every author, each with a
    /// live story, so every tray should hold `authors` items.
    pub tray_sizes: TraySizes,
    /// (viewer, story) pairs answered `200` for the first time: the views
    /// the server had to count.
    pub distinct_views: u64,
    /// Failed requests by kind and status (with the error code) or reason.
    pub errors: BTreeMap<String, u64>,
    /// Due time → handed to a task: how far behind schedule the generator
    /// itself was.
    pub send_lag: LatencySummary,
    /// Requests handed over more than 10 ms after their due time.
    pub late: u64,
    /// View counts read back after the run.
    pub view_check: ViewCheck,
    /// Per-second points.
    pub series: Vec<StoriesPoint>,
}

impl StoriesReport {
    /// Whether every tray held every author and every checked view count
    /// was the viewers shown the story.
    pub fn verified(&self) -> bool {
        let c = &self.view_check;
        self.tray_sizes.off_size == 0 && c.mismatched == 0 && c.unreadable == 0
    }
}

/// The setup of a stories run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StoriesSetup {
    /// Registering (with `--register`) and logging in every user.
    pub sign_in_seconds: f64,
    /// Viewer → author follows made (viewers × authors).
    pub follows: u64,
    /// Seconds they took.
    pub follow_seconds: f64,
    /// Stories posted (each its own upload).
    pub stories: u64,
    /// Seconds uploading and posting them took.
    pub post_seconds: f64,
}

/// One kind of request of a stories run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RequestReport {
    /// The rate asked for, per second (before ramp and peak).
    pub rate: f64,
    /// Requests the schedule holds for the whole run.
    pub due: u64,
    /// Requests handed over (fewer than `due` if the run was stopped).
    pub offered: u64,
    /// Requests answered `2xx`.
    pub ok: u64,
    /// Requests that failed: error status, transport failure, timeout.
    pub failed: u64,
    /// `offered` over the send window, per second.
    pub offered_rate: f64,
    /// `ok` over the whole run (to the last answer), per second.
    pub ok_rate: f64,
    /// Due time → last byte of each `2xx` answer.
    pub latency: LatencySummary,
}

/// Items per tray, over every tray read answered `200`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TraySizes {
    /// What every tray should hold: the authors.
    pub expected: u64,
    /// Trays read.
    pub reads: u64,
    /// Fewest items in one.
    pub min: u64,
    /// Most items in one.
    pub max: u64,
    /// Items on average.
    pub mean: f64,
    /// Trays with other than `expected` items.
    pub off_size: u64,
}

/// The view counts of a sample of stories, read by their authors after
/// the run (`GET /api/v1/stories/{id}/viewers`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ViewCheck {
    /// Stories checked.
    pub sampled: u64,
    /// Stories whose count and list were exactly the viewers shown them.
    pub matched: u64,
    /// Of those, stories that matched only when read again a second later.
    pub matched_late: u64,
    /// Stories whose count or list was wrong.
    pub mismatched: u64,
    /// Stories whose viewers could not be read.
    pub unreadable: u64,
    /// Why, by reason.
    pub unreadable_reasons: BTreeMap<String, u64>,
    /// The first mismatches, by story.
    pub mismatches: Vec<ViewMismatch>,
}

/// A story whose view count disagreed with the run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ViewMismatch {
    /// The story's index among the setup stories.
    pub story: u32,
    /// `view_count` as the server gave it.
    pub view_count: u64,
    /// Viewers the server listed.
    pub listed: u64,
    /// Viewers whose fetch was answered `200`.
    pub shown: u64,
    /// Viewers whose only fetches had an unknown outcome.
    pub unknown: u64,
    /// What was wrong.
    pub reason: String,
}

/// One second of a stories run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StoriesPoint {
    /// End of the second, seconds from the start of the run.
    pub t: f64,
    /// Tray reads answered `2xx` in this second.
    pub trays: u64,
    /// Their p99 latency, ms.
    pub tray_p99_ms: f64,
    /// Views answered `2xx` in this second.
    pub views: u64,
    /// Their p99 latency, ms.
    pub view_p99_ms: f64,
    /// Posts answered `2xx` in this second.
    pub posts: u64,
    /// Their p99 latency, ms.
    pub post_p99_ms: f64,
    /// Requests that failed in this second.
    pub errors: u64,
    /// Server CPU in the second, percent of one core.
    pub server_cpu_percent: Option<f64>,
    /// Server RSS at the end of the second, MiB.
    pub server_rss_mb: Option<f64>,
    /// Generator CPU in the second, percent of one core.
    pub generator_cpu_percent: Option<f64>,
}

/// CPU microseconds per event of `process` (user + kernel over the run),
/// or `None` without a reading or without events.
pub fn cpu_us_per(process: Option<&ProcSummary>, events: u64) -> Option<f64> {
    let p = process?;
    (events > 0).then(|| p.cpu_seconds / events as f64 * 1e6)
}

/// Everything a run measured.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Report {
    /// `"messages"`, `"idle"` or `"stories"`.
    pub mode: String,
    /// Unix ms when sending started.
    pub started_at_ms: i64,
    /// The resolved configuration.
    pub config: serde_json::Value,
    /// Seconds messages were offered.
    pub send_seconds: f64,
    /// Seconds spent waiting for stragglers.
    pub drain_seconds: f64,
    /// Average offered rate, msg/s.
    pub offered_rate: f64,
    /// Average rate of acks over the send window, msg/s.
    pub acked_rate: f64,
    /// Message counts.
    pub counts: Counts,
    /// Side traffic.
    pub side: SideTraffic,
    /// Latencies.
    pub latency: Latencies,
    /// Sends handed over more than 10 ms after their due time.
    pub late_sends: u64,
    /// The loss accounting (with samples of lost messages).
    pub accounting: Accounting,
    /// The server process, with `--server-pid`.
    pub server: Option<ProcSummary>,
    /// This process.
    pub generator: Option<ProcSummary>,
    /// The whole machine, to see whether other processes took CPU.
    pub machine: Option<MachineSummary>,
    /// Requested features the server does not support yet.
    pub unsupported: Vec<String>,
    /// Per-second points.
    pub series: Vec<SeriesPoint>,
    /// Idle-mode results.
    pub idle: Option<IdleReport>,
    /// Stalled devices, with `--stalled-devices`.
    #[serde(default)]
    pub stalled: Option<StalledReport>,
    /// Group mode, with `--group-size`.
    #[serde(default)]
    pub group: Option<GroupReport>,
    /// The stories mix, with `--mix stories`.
    #[serde(default)]
    pub stories: Option<StoriesReport>,
}

impl Report {
    /// Whether every acked message arrived everywhere exactly once and
    /// every send was answered (a stories run: [`StoriesReport::verified`]).
    pub fn verified(&self) -> bool {
        if let Some(s) = &self.stories {
            return s.verified();
        }
        let c = &self.counts;
        c.lost == 0
            && c.duplicates == 0
            && c.unanswered == 0
            && c.delivered_without_ack == 0
            && c.unexpected == 0
            && c.duplicate_acks == 0
    }

    /// The table printed at the end of a run.
    pub fn summary_table(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let mut line = |k: &str, v: String| {
            let _ = writeln!(out, "  {k:<28} {v}");
        };
        if let Some(st) = &self.stories {
            stories_table(st, &mut out);
        } else if let Some(idle) = &self.idle {
            line("mode", "idle connections".into());
            line("requested", idle.requested.to_string());
            line(
                "opened",
                format!("{} in {:.1} s", idle.opened, idle.open_seconds),
            );
            for (reason, n) in &idle.failures {
                line(&format!("failed: {reason}"), n.to_string());
            }
            line(
                "open at end of hold",
                format!("{} (held {:.0} s)", idle.open_at_end, idle.hold_seconds),
            );
            line("closed during hold", idle.closed_during_hold.to_string());
            line("source addresses", idle.source_ips.join(","));
            if let (Some(before), Some(held)) = (idle.server_rss_before_mb, idle.server_rss_held_mb)
            {
                line(
                    "server RSS before / held",
                    format!("{before:.0} MiB / {held:.0} MiB"),
                );
            }
            if let Some(per) = idle.server_kib_per_socket {
                line("server memory per socket", format!("{per:.1} KiB"));
            }
        } else {
            let c = &self.counts;
            line(
                "offered",
                format!(
                    "{} msgs over {:.1} s ({:.0} msg/s avg)",
                    c.scheduled, self.send_seconds, self.offered_rate
                ),
            );
            line(
                "sent / acked / rejected",
                format!("{} / {} / {}", c.sent, c.acked, c.rejected),
            );
            line("acked rate", format!("{:.0} msg/s", self.acked_rate));
            line(
                "delivered (all devices)",
                format!(
                    "{} ({} device deliveries)",
                    c.delivered, c.device_deliveries
                ),
            );
            if let Some(g) = &self.group {
                line(
                    "groups",
                    format!(
                        "{} of {} members (created in {:.1} s)",
                        g.groups, g.size, g.create_seconds
                    ),
                );
                line(
                    "delivered frames",
                    format!(
                        "{} ({:.0} frames/s; {:.1} per acked message)",
                        c.device_deliveries, g.delivered_frame_rate, g.frames_per_message
                    ),
                );
            }
            line(
                "LOST",
                format!(
                    "{} msgs ({} device deliveries); unanswered sends {}",
                    c.lost, c.lost_device_deliveries, c.unanswered
                ),
            );
            line(
                "duplicates",
                format!("{} (acks: {})", c.duplicates, c.duplicate_acks),
            );
            line("expired before delivery", c.expired_undelivered.to_string());
            if c.delivered_without_ack + c.unexpected + c.foreign_acks > 0 {
                line(
                    "anomalies",
                    format!(
                        "delivered without ack {}, unexpected device {}, foreign acks {}",
                        c.delivered_without_ack, c.unexpected, c.foreign_acks
                    ),
                );
            }
            if c.send_failed + c.sockets_closed > 0 {
                line(
                    "send failed / sockets closed",
                    format!("{} / {}", c.send_failed, c.sockets_closed),
                );
            }
            let errors = if c.errors_by_code.is_empty() {
                "none".to_owned()
            } else {
                c.errors_by_code
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            line("errors by code", errors);
            if let Some(st) = &self.stalled {
                let endings = st
                    .endings
                    .iter()
                    .map(|(k, v)| format!("{k}: {v}"))
                    .collect::<Vec<_>>()
                    .join(", ");
                line(
                    "stalled devices",
                    format!(
                        "{} ({endings}; {} frames waiting at the end)",
                        st.requested, st.frames_read_at_end
                    ),
                );
            }
            for (code, message) in &c.error_messages {
                line(&format!("  first {code}"), message.clone());
            }
            let _ = writeln!(out, "\n{}", latency_header());
            for (name, l) in [
                ("ack", &self.latency.ack),
                ("delivery", &self.latency.delivery),
                ("frame", &self.latency.frame),
                ("send lag", &self.latency.send_lag),
                ("upload", &self.latency.upload),
            ] {
                if l.count == 0 && (name == "upload" || name == "frame") {
                    continue;
                }
                let _ = writeln!(out, "{}", latency_row(name, l));
            }
            let _ = writeln!(out);
            let mut line = |k: &str, v: String| {
                let _ = writeln!(out, "  {k:<28} {v}");
            };
            line("sends >10 ms late", self.late_sends.to_string());
            let s = &self.side;
            if s.typing_sent + s.delivered_sent + s.read_sent + s.views_sent + s.uploads > 0 {
                line(
                    "typing sent / received",
                    format!("{} / {}", s.typing_sent, s.typing_received),
                );
                line(
                    "receipts sent / received",
                    format!(
                        "delivered {} / {}, read {} / {}",
                        s.delivered_sent, s.receipts_delivered, s.read_sent, s.receipts_read
                    ),
                );
                line(
                    "views sent / granted / burned",
                    format!(
                        "{} / {} / {}",
                        s.views_sent, s.views_granted, s.views_burned
                    ),
                );
                line(
                    "uploads ok / failed",
                    format!("{} / {}", s.uploads, s.upload_failures),
                );
            }
            if !s.burned.is_empty() {
                line(
                    "burned frames",
                    s.burned
                        .iter()
                        .map(|(k, v)| format!("{k}={v}"))
                        .collect::<Vec<_>>()
                        .join(", "),
                );
            }
            if s.replies_skipped > 0 {
                line(
                    "replies skipped (queue full)",
                    s.replies_skipped.to_string(),
                );
            }
        }
        let mut line = |k: &str, v: String| {
            let _ = writeln!(out, "  {k:<28} {v}");
        };
        let acked = self.idle.is_none().then_some(self.counts.acked);
        if let Some(s) = &self.server {
            line(
                "server CPU / RSS",
                format!(
                    "{:.0} % of a core avg ({}); RSS {:.0} → peak {:.0} MiB",
                    s.avg_cpu_percent,
                    cpu_split(s, acked),
                    s.rss_start_mb,
                    s.rss_peak_mb
                ),
            );
        }
        if let Some(g) = &self.group {
            let us = |v: Option<f64>| v.map_or("–".to_owned(), |v| format!("{v:.1} µs"));
            if self.server.is_some() {
                line(
                    "server CPU per msg / frame",
                    format!(
                        "{} per acked message, {} per delivered frame",
                        us(g.server_cpu_us_per_message),
                        us(g.server_cpu_us_per_frame)
                    ),
                );
            }
            line("generator CPU per frame", us(g.generator_cpu_us_per_frame));
        }
        if let Some(g) = &self.generator {
            line(
                "generator CPU / RSS",
                format!(
                    "{:.0} % of a core avg ({}); RSS peak {:.0} MiB",
                    g.avg_cpu_percent,
                    cpu_split(g, acked),
                    g.rss_peak_mb
                ),
            );
        }
        if let Some(m) = &self.machine {
            line(
                "machine CPU",
                format!(
                    "{:.0} % busy of {} %: interrupts {:.0} %, other processes {:.0} %",
                    m.busy_percent,
                    m.cores * 100,
                    m.irq_percent,
                    m.other_percent
                ),
            );
        }
        for u in &self.unsupported {
            line("UNSUPPORTED", u.clone());
        }
        if let Some(st) = &self.stories {
            line(
                "verdict",
                if st.verified() {
                    format!(
                        "every tray held all {} authors; every checked view count was its viewers",
                        st.authors
                    )
                } else {
                    "VERIFICATION FAILED (see tray size / view counts)".into()
                },
            );
        } else if self.idle.is_none() {
            line(
                "verdict",
                if self.verified() {
                    "every acked message arrived at every device exactly once".into()
                } else {
                    "VERIFICATION FAILED (see LOST / duplicates / anomalies)".into()
                },
            );
        }
        out
    }
}

/// The header of a latency table: a name column, then the percentiles.
pub fn latency_header() -> String {
    format!(
        "  {:<18} {:>9} {:>9} {:>9} {:>9} {:>9} {:>10}",
        "latency (ms)", "p50", "p90", "p99", "p99.9", "max", "count"
    )
}

/// One row of a latency table, milliseconds to two places.
pub fn latency_row(name: &str, l: &LatencySummary) -> String {
    format!(
        "  {name:<18} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>10}",
        l.p50_ms, l.p90_ms, l.p99_ms, l.p999_ms, l.max_ms, l.count
    )
}

/// The body of the table of a stories run (the shared CPU lines and the
/// verdict follow it).
fn stories_table(st: &StoriesReport, out: &mut String) {
    let mut line = |k: &str, v: String| {
        let _ = writeln!(out, "  {k:<28} {v}");
    };
    line(
        "mode",
        format!(
            "stories: {} authors × {} stories, {} viewers each following every author",
            st.authors, st.stories_per_author, st.viewers
        ),
    );
    let s = &st.setup;
    line(
        "setup",
        format!(
            "sign-in {:.1} s; {} follows {:.1} s; {} stories posted {:.1} s",
            s.sign_in_seconds, s.follows, s.follow_seconds, s.stories, s.post_seconds
        ),
    );
    let t = &st.tray_sizes;
    line(
        "tray size (items)",
        format!(
            "{:.1} avg, min {}, max {} over {} trays (expected {}{})",
            t.mean,
            t.min,
            t.max,
            t.reads,
            t.expected,
            if t.off_size > 0 {
                format!("; {} TRAYS OFF SIZE", t.off_size)
            } else {
                String::new()
            }
        ),
    );
    for (name, r) in [
        ("trays", &st.tray),
        ("views", &st.view),
        ("posts", &st.post),
    ] {
        if r.rate == 0.0 && r.offered == 0 {
            continue;
        }
        line(
            &format!("{name} offered / ok / failed"),
            format!(
                "{} / {} / {} ({:.0}/s offered, {:.0}/s answered)",
                r.offered, r.ok, r.failed, r.offered_rate, r.ok_rate
            ),
        );
    }
    line(
        "views to be counted",
        format!(
            "{} (viewer, story) pairs answered 200 for the first time",
            st.distinct_views
        ),
    );
    let errors = if st.errors.is_empty() {
        "none".to_owned()
    } else {
        st.errors
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    line("errors", errors);
    let _ = writeln!(out, "\n{}", latency_header());
    for (name, r) in [
        ("tray", &st.tray),
        ("view", &st.view),
        ("post (upload+post)", &st.post),
    ] {
        if r.latency.count > 0 || name == "tray" || name == "view" {
            let _ = writeln!(out, "{}", latency_row(name, &r.latency));
        }
    }
    let _ = writeln!(out, "{}", latency_row("send lag", &st.send_lag));
    let _ = writeln!(out);
    let mut line = |k: &str, v: String| {
        let _ = writeln!(out, "  {k:<28} {v}");
    };
    line("requests >10 ms late", st.late.to_string());
    let c = &st.view_check;
    line(
        "view counts checked",
        format!(
            "{} stories: {} match ({} only after a second), {} MISMATCH, {} unreadable",
            c.sampled, c.matched, c.matched_late, c.mismatched, c.unreadable
        ),
    );
    for (reason, n) in &c.unreadable_reasons {
        line("  unreadable", format!("{reason}: {n}"));
    }
    for m in &c.mismatches {
        line(
            &format!("  story {}", m.story),
            format!(
                "view_count {}, {} listed, shown to {} (+{} unknown): {}",
                m.view_count, m.listed, m.shown, m.unknown, m.reason
            ),
        );
    }
}

/// "31.0 CPU-s, 48 % in the kernel, 129 µs per acked message": where a
/// process's CPU went, and what one message cost it.
fn cpu_split(p: &ProcSummary, acked: Option<u64>) -> String {
    let mut s = format!("{:.1} CPU-s", p.cpu_seconds);
    if p.cpu_seconds > 0.0 {
        let _ = write!(
            s,
            ", {:.0} % in the kernel",
            p.kernel_cpu_seconds / p.cpu_seconds * 100.0
        );
    }
    if let Some(n) = acked.filter(|n| *n > 0) {
        let _ = write!(
            s,
            ", {:.0} µs per acked message",
            p.cpu_seconds / n as f64 * 1e6
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdict_and_table_name_losses() {
        let mut r = Report {
            mode: "messages".into(),
            ..Report::default()
        };
        assert!(r.verified());
        assert!(r.summary_table().contains("exactly once"));
        r.counts.lost = 3;
        assert!(!r.verified());
        let table = r.summary_table();
        assert!(table.contains("LOST"), "{table}");
        assert!(table.contains("VERIFICATION FAILED"), "{table}");
        let json = serde_json::to_string(&r).unwrap();
        let back: Report = serde_json::from_str(&json).unwrap();
        assert_eq!(back.counts.lost, 3);
    }

    #[test]
    fn latency_rows_line_up_under_the_header() {
        let l = LatencySummary {
            count: 6000,
            p50_ms: 1.234,
            p90_ms: 2.5,
            p99_ms: 9.999,
            p999_ms: 12.0,
            max_ms: 1234.5,
            mean_ms: 1.5,
        };
        let row = latency_row("tray", &l);
        assert_eq!(
            row,
            "  tray                    1.23      2.50     10.00     12.00   1234.50       6000"
        );
        let header = latency_header();
        assert_eq!(header.len(), row.len(), "{header}\n{row}");
        assert_eq!(
            header.find("p99 ").map(|i| i + 3),
            row.find("10.00").map(|i| i + 5)
        );
    }

    #[test]
    fn a_stories_run_shows_trays_views_and_the_check() {
        let mut st = StoriesReport {
            authors: 1000,
            viewers: 50,
            stories_per_author: 1,
            tray_sizes: TraySizes {
                expected: 1000,
                reads: 600,
                min: 1000,
                max: 1000,
                mean: 1000.0,
                off_size: 0,
            },
            view: RequestReport {
                rate: 2000.0,
                due: 12_000,
                offered: 12_000,
                ok: 11_990,
                failed: 10,
                offered_rate: 2000.0,
                ok_rate: 1998.3,
                ..RequestReport::default()
            },
            view_check: ViewCheck {
                sampled: 100,
                matched: 100,
                ..ViewCheck::default()
            },
            ..StoriesReport::default()
        };
        st.tray.latency.p99_ms = 7.5;
        st.tray.latency.count = 600;
        st.errors.insert("view: HTTP 404 (not_found)".into(), 10);
        let mut r = Report {
            mode: "stories".into(),
            stories: Some(st.clone()),
            ..Report::default()
        };
        assert!(r.verified());
        let table = r.summary_table();
        assert!(
            table.contains("1000 authors × 1 stories, 50 viewers"),
            "{table}"
        );
        assert!(
            table.contains("1000.0 avg, min 1000, max 1000 over 600 trays (expected 1000)"),
            "{table}"
        );
        assert!(
            table.contains("12000 / 11990 / 10 (2000/s offered, 1998/s answered)"),
            "{table}"
        );
        assert!(table.contains("view: HTTP 404 (not_found)=10"), "{table}");
        assert!(
            table
                .lines()
                .any(|l| l.trim_start().starts_with("tray ") && l.contains("7.50")),
            "{table}"
        );
        assert!(!table.contains("post (upload+post)"), "no posts: {table}");
        assert!(
            table.contains("every tray held all 1000 authors"),
            "{table}"
        );
        assert!(!table.contains("LOST"), "{table}");

        st.view_check.mismatched = 1;
        st.view_check.mismatches.push(ViewMismatch {
            story: 7,
            view_count: 3,
            listed: 3,
            shown: 4,
            reason: "1 of the 4 viewers shown the story are not counted".into(),
            ..ViewMismatch::default()
        });
        r.stories = Some(st);
        assert!(!r.verified());
        let table = r.summary_table();
        assert!(table.contains("1 MISMATCH"), "{table}");
        assert!(table.contains("story 7"), "{table}");
        assert!(table.contains("VERIFICATION FAILED"), "{table}");
        let back: Report = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(back.stories.unwrap().view_check.mismatched, 1);
    }

    #[test]
    fn a_group_run_shows_frames_and_their_cost() {
        let mut r = Report {
            mode: "messages".into(),
            server: Some(ProcSummary {
                cpu_seconds: 3.0,
                kernel_cpu_seconds: 1.0,
                avg_cpu_percent: 10.0,
                rss_start_mb: 1.0,
                rss_peak_mb: 2.0,
            }),
            group: Some(GroupReport {
                size: 256,
                groups: 1,
                frames_per_message: 255.0,
                delivered_frame_rate: 25_500.0,
                server_cpu_us_per_message: None,
                server_cpu_us_per_frame: Some(3.9),
                ..GroupReport::default()
            }),
            ..Report::default()
        };
        r.counts.device_deliveries = 765_000;
        r.latency.frame.count = 765_000;
        r.latency.frame.p99_ms = 12.5;
        let table = r.summary_table();
        assert!(table.contains("1 of 256 members"), "{table}");
        assert!(
            table.contains("765000 (25500 frames/s; 255.0 per acked message)"),
            "{table}"
        );
        assert!(
            table.contains("– per acked message, 3.9 µs per delivered frame"),
            "{table}"
        );
        assert!(
            table
                .lines()
                .any(|l| l.trim_start().starts_with("frame") && l.contains("12.50")),
            "{table}"
        );
        // Reports written before group mode still read.
        let old = include_str!("../results/bench-20261129/ephemera-5000.json");
        let old: Report = serde_json::from_str(old).unwrap();
        assert!(old.group.is_none() && old.series[0].frames == 0);
    }
}
