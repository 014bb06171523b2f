//! The server against the bare relay (`ephemera-relay`): a markdown table
//! of run [`Report`]s taken in pairs at the same offered rate, with each
//! process's CPU per acked message and the ratio of the server's to the
//! relay's. Group runs (`--group-size`) get a second table, per delivered
//! frame. `scripts/bench.sh` writes it as `summary.md` through the
//! `ephemera-compare` binary.

use std::fmt::Write as _;

use crate::report::{cpu_us_per, Report};
use crate::resources::ProcSummary;

/// Two runs at the same offered rate: the relay's and the server's.
#[derive(Debug, Clone)]
pub struct Pair {
    /// The run against `ephemera-relay`.
    pub relay: Report,
    /// The run against `ephemera serve`.
    pub server: Report,
}

/// CPU microseconds per acked message of `process` (user + kernel over the
/// run), or `None` without a reading or without acks.
pub fn us_per_msg(process: Option<&ProcSummary>, acked: u64) -> Option<f64> {
    cpu_us_per(process, acked)
}

/// The rate a run was asked to offer (`config.profile.rate`), else the rate
/// it measured.
fn asked_rate(r: &Report) -> f64 {
    r.config
        .pointer("/profile/rate")
        .and_then(|v| v.as_f64())
        .unwrap_or(r.offered_rate)
}

/// `12345.6` as `12,346`.
fn thousands(x: f64) -> String {
    let digits = format!("{:.0}", x.max(0.0));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `µs/msg (kernel share)` of a process, or `–`.
fn cpu_cell(p: Option<&ProcSummary>, acked: u64) -> String {
    match (us_per_msg(p, acked), p) {
        (Some(us), Some(p)) if p.cpu_seconds > 0.0 => format!(
            "{us:.0} ({:.0} % kernel)",
            p.kernel_cpu_seconds / p.cpu_seconds * 100.0
        ),
        (Some(us), _) => format!("{us:.0}"),
        _ => "–".to_owned(),
    }
}

/// `ok`, or what failed the run's verification.
fn verdict(r: &Report) -> String {
    if r.verified() {
        return "ok".to_owned();
    }
    let c = &r.counts;
    format!(
        "FAILED (lost {}, duplicates {}, unanswered {})",
        c.lost, c.duplicates, c.unanswered
    )
}

/// The table, one row per pair, and the notes under it.
pub fn markdown(pairs: &[Pair]) -> String {
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = writeln!(
        out,
        "| offered msg/s | acked msg/s relay / ephemera | delivery p50 / p99 ms, relay \
         | delivery p50 / p99 ms, ephemera | server CPU µs/msg, relay \
         | server CPU µs/msg, ephemera | ratio ephemera / relay \
         | generator CPU µs/msg, relay run / ephemera run | verified relay / ephemera \
         | other processes % of a core, relay / ephemera |"
    );
    let _ = writeln!(out, "|{}", "---|".repeat(10));
    for Pair { relay, server } in pairs {
        let (ra, sa) = (relay.counts.acked, server.counts.acked);
        let ratio = match (
            us_per_msg(relay.server.as_ref(), ra),
            us_per_msg(server.server.as_ref(), sa),
        ) {
            (Some(r), Some(s)) if r > 0.0 => format!("**{:.2}**", s / r),
            _ => "–".to_owned(),
        };
        let generator = |r: &Report| {
            us_per_msg(r.generator.as_ref(), r.counts.acked)
                .map_or("–".to_owned(), |us| format!("{us:.0}"))
        };
        let other = |r: &Report| {
            r.machine
                .map_or("–".to_owned(), |m| format!("{:.0}", m.other_percent))
        };
        let delivery = |r: &Report| {
            let d = &r.latency.delivery;
            format!("{:.1} / {:.1}", d.p50_ms, d.p99_ms)
        };
        let mut rate = thousands(asked_rate(relay));
        if asked_rate(server) != asked_rate(relay) {
            // Should not happen with bench.sh; say so rather than hide it.
            rate = format!("{rate} / {} (MISMATCH)", thousands(asked_rate(server)));
        }
        let _ = writeln!(
            out,
            "| {rate} | {} / {} | {} | {} | {} | {} | {ratio} | {} / {} | {} / {} | {} / {} |",
            thousands(relay.acked_rate),
            thousands(server.acked_rate),
            delivery(relay),
            delivery(server),
            cpu_cell(relay.server.as_ref(), ra),
            cpu_cell(server.server.as_ref(), sa),
            generator(relay),
            generator(server),
            verdict(relay),
            verdict(server),
            other(relay),
            other(server),
        );
    }
    if pairs
        .iter()
        .any(|p| p.relay.group.is_some() || p.server.group.is_some())
    {
        fanout(&mut out, pairs);
    }
    let _ = writeln!(
        out,
        "\nCPU per message: user + kernel time of the process over the run (from \
         `/proc`, sampled from the first due send to the end of the drain) divided by \
         the messages acked. Targets: ratio at most 1.5; the generator at most 20 µs \
         per message at 50,000 msg/s offered to the relay. \"Other processes\" is \
         machine CPU that neither the server, the generator nor interrupts used: a \
         large figure means the run was disturbed."
    );
    out
}

/// The fanout table of group runs: delivered frames, their latency and
/// the CPU each cost, per pair.
fn fanout(out: &mut String, pairs: &[Pair]) {
    let _ = writeln!(
        out,
        "\nGroup fanout, per delivered frame (one `message` frame at one device):\n\n\
         | offered msg/s | group size | frames per message | delivered frames/s relay / ephemera \
         | frame latency p50 / p99 ms, relay | frame latency p50 / p99 ms, ephemera \
         | server CPU µs/frame, relay | server CPU µs/frame, ephemera | ratio ephemera / relay \
         | generator CPU µs/frame, relay run / ephemera run |"
    );
    let _ = writeln!(out, "|{}", "---|".repeat(10));
    let cell = |v: Option<f64>| v.map_or("–".to_owned(), |v| format!("{v:.1}"));
    for Pair { relay, server } in pairs {
        let group = |r: &Report| r.group.clone().unwrap_or_default();
        let (rg, sg) = (group(relay), group(server));
        let frames = |r: &Report| r.counts.device_deliveries;
        let (rs, ss) = (
            cpu_us_per(relay.server.as_ref(), frames(relay)),
            cpu_us_per(server.server.as_ref(), frames(server)),
        );
        let ratio = match (rs, ss) {
            (Some(r), Some(s)) if r > 0.0 => format!("**{:.2}**", s / r),
            _ => "–".to_owned(),
        };
        let latency = |r: &Report| {
            let f = &r.latency.frame;
            format!("{:.1} / {:.1}", f.p50_ms, f.p99_ms)
        };
        let size = if rg.size == sg.size {
            sg.size.to_string()
        } else {
            format!("{} / {} (MISMATCH)", rg.size, sg.size)
        };
        let _ = writeln!(
            out,
            "| {} | {size} | {:.1} | {} / {} | {} | {} | {} | {} | {ratio} | {} / {} |",
            thousands(asked_rate(server)),
            sg.frames_per_message,
            thousands(rg.delivered_frame_rate),
            thousands(sg.delivered_frame_rate),
            latency(relay),
            latency(server),
            cell(rs),
            cell(ss),
            cell(cpu_us_per(relay.generator.as_ref(), frames(relay))),
            cell(cpu_us_per(server.generator.as_ref(), frames(server))),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::MachineSummary;

    fn run(rate: f64, acked: u64, server_cpu: f64, generator_cpu: f64) -> Report {
        let proc = |cpu: f64| ProcSummary {
            cpu_seconds: cpu,
            kernel_cpu_seconds: cpu / 2.0,
            avg_cpu_percent: 0.0,
            rss_start_mb: 0.0,
            rss_peak_mb: 0.0,
        };
        let mut r = Report {
            mode: "messages".into(),
            config: serde_json::json!({ "profile": { "rate": rate } }),
            acked_rate: acked as f64 / 10.0,
            server: Some(proc(server_cpu)),
            generator: Some(proc(generator_cpu)),
            machine: Some(MachineSummary {
                cores: 2,
                busy_percent: 100.0,
                irq_percent: 5.0,
                other_percent: 3.0,
            }),
            ..Report::default()
        };
        r.counts.acked = acked;
        r
    }

    #[test]
    fn the_ratio_is_server_cpu_per_message_over_the_relays() {
        // 50,000 messages: relay 2.5 s (50 µs), server 5 s (100 µs).
        let pair = Pair {
            relay: run(5000.0, 50_000, 2.5, 1.0),
            server: run(5000.0, 50_000, 5.0, 1.5),
        };
        let table = markdown(&[pair]);
        let row = table.lines().nth(2).unwrap();
        assert!(row.starts_with("| 5,000 | 5,000 / 5,000 |"), "{row}");
        assert!(
            row.contains("| 50 (50 % kernel) | 100 (50 % kernel) | **2.00** |"),
            "{row}"
        );
        assert!(row.contains("| 20 / 30 | ok / ok | 3 / 3 |"), "{row}");
    }

    #[test]
    fn group_runs_add_the_per_frame_table() {
        let group = |r: &mut Report| {
            r.counts.device_deliveries = r.counts.acked * 255;
            r.latency.frame.p50_ms = 2.0;
            r.latency.frame.p99_ms = 9.5;
            r.group = Some(crate::report::GroupReport {
                size: 256,
                groups: 1,
                frames_per_message: 255.0,
                delivered_frame_rate: r.counts.device_deliveries as f64 / 10.0,
                ..Default::default()
            });
        };
        // 2,000 messages, 510,000 frames: relay 1.02 s (2 µs/frame),
        // server 5.1 s (10 µs/frame).
        let (mut relay, mut server) = (run(200.0, 2000, 1.02, 0.51), run(200.0, 2000, 5.1, 0.51));
        group(&mut relay);
        group(&mut server);
        let table = markdown(&[Pair { relay, server }]);
        assert!(table.contains("Group fanout"), "{table}");
        let row = table
            .lines()
            .find(|l| l.starts_with("| 200 | 256 |"))
            .unwrap_or_else(|| panic!("{table}"));
        assert!(
            row.contains("| 255.0 | 51,000 / 51,000 | 2.0 / 9.5 | 2.0 / 9.5 |"),
            "{row}"
        );
        assert!(
            row.contains("| 2.0 | 10.0 | **5.00** | 1.0 / 1.0 |"),
            "{row}"
        );
        // Pair runs print no fanout table.
        let plain = markdown(&[Pair {
            relay: run(200.0, 10, 1.0, 1.0),
            server: run(200.0, 10, 1.0, 1.0),
        }]);
        assert!(!plain.contains("Group fanout"), "{plain}");
    }

    #[test]
    fn a_failed_run_and_missing_readings_show() {
        let mut server = run(20000.0, 0, 1.0, 1.0);
        server.counts.lost = 2;
        server.server = None;
        let table = markdown(&[Pair {
            relay: run(20000.0, 10, 1.0, 1.0),
            server,
        }]);
        assert!(table.contains("FAILED (lost 2"), "{table}");
        assert!(table.contains("| – | –"), "{table}");
        assert_eq!(thousands(1234567.4), "1,234,567");
        assert_eq!(thousands(12.0), "12");
    }
}
