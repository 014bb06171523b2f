//! A hand-written SVG of a run: throughput per second (offered, sent,
//! acked, delivered) above, p99 latency per second (ack, delivery) below.
//! No plotting crate: two panels of polylines with "nice" axis ticks.

use std::fmt::Write as _;

use crate::report::SeriesPoint;

/// Width of the picture, px.
const WIDTH: f64 = 960.0;
/// Height of one panel's plotting area, px.
const PANEL: f64 = 240.0;
/// Left margin (y labels), px.
const LEFT: f64 = 80.0;
/// Right margin (legend), px.
const RIGHT: f64 = 150.0;
/// Space above each panel (its title), px.
const TOP: f64 = 40.0;
/// Space below each panel (x labels), px.
const BOTTOM: f64 = 36.0;

/// One line of a panel.
struct Line<'a> {
    /// Legend text.
    name: &'a str,
    /// Stroke colour.
    colour: &'a str,
    /// `(t, value)` points.
    points: Vec<(f64, f64)>,
}

/// The smallest "nice" number (1, 2 or 5 times a power of ten) at or above
/// `v`; 1 for anything not above 0.
pub fn nice_ceiling(v: f64) -> f64 {
    if !(v.is_finite() && v > 0.0) {
        return 1.0;
    }
    let power = 10f64.powf(v.log10().floor());
    for step in [1.0, 2.0, 5.0, 10.0] {
        if step * power >= v * (1.0 - 1e-12) {
            return step * power;
        }
    }
    10.0 * power
}

/// Escape text for an SVG text node or attribute.
fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A compact tick label: 12000 → "12k".
fn label(v: f64) -> String {
    if v >= 1_000_000.0 {
        format!("{}M", trim(v / 1_000_000.0))
    } else if v >= 1000.0 {
        format!("{}k", trim(v / 1000.0))
    } else {
        trim(v)
    }
}

fn trim(v: f64) -> String {
    let s = format!("{v:.2}");
    s.trim_end_matches('0').trim_end_matches('.').to_owned()
}

/// Draw one panel whose plotting area starts at `y0`.
fn panel(out: &mut String, y0: f64, title: &str, unit: &str, t_max: f64, lines: &[Line<'_>]) {
    let plot_w = WIDTH - LEFT - RIGHT;
    let v_max = nice_ceiling(
        lines
            .iter()
            .flat_map(|l| l.points.iter().map(|p| p.1))
            .fold(0.0, f64::max),
    );
    let x = |t: f64| LEFT + t / t_max * plot_w;
    let y = |v: f64| y0 + PANEL - (v / v_max).min(1.0) * PANEL;
    let _ = writeln!(
        out,
        r#"<text x="{LEFT}" y="{:.1}" class="title">{}</text>"#,
        y0 - 14.0,
        escape(title)
    );
    // Grid and y ticks: five steps.
    for i in 0..=5 {
        let v = v_max * f64::from(i) / 5.0;
        let yy = y(v);
        let _ = writeln!(
            out,
            r##"<line x1="{LEFT}" y1="{yy:.1}" x2="{:.1}" y2="{yy:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            LEFT + plot_w,
            LEFT - 6.0,
            yy + 4.0,
            label(v)
        );
    }
    // X ticks: about ten, on nice seconds.
    let step = nice_ceiling(t_max / 10.0);
    let mut t = 0.0;
    while t <= t_max + 1e-9 {
        let xx = x(t);
        let _ = writeln!(
            out,
            r##"<line x1="{xx:.1}" y1="{:.1}" x2="{xx:.1}" y2="{:.1}" stroke="#999"/><text x="{xx:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
            y0 + PANEL,
            y0 + PANEL + 4.0,
            y0 + PANEL + 18.0,
            label(t)
        );
        t += step;
    }
    let _ = writeln!(
        out,
        r##"<rect x="{LEFT}" y="{y0:.1}" width="{plot_w:.1}" height="{PANEL}" fill="none" stroke="#333"/><text x="{:.1}" y="{:.1}" text-anchor="middle">seconds</text><text x="14" y="{:.1}" transform="rotate(-90 14 {:.1})" text-anchor="middle">{}</text>"##,
        LEFT + plot_w / 2.0,
        y0 + PANEL + 32.0,
        y0 + PANEL / 2.0,
        y0 + PANEL / 2.0,
        escape(unit)
    );
    for (i, l) in lines.iter().enumerate() {
        if !l.points.is_empty() {
            let pts: Vec<String> = l
                .points
                .iter()
                .map(|&(t, v)| format!("{:.1},{:.1}", x(t), y(v)))
                .collect();
            let _ = writeln!(
                out,
                r#"<polyline fill="none" stroke="{}" stroke-width="1.8" points="{}"/>"#,
                l.colour,
                pts.join(" ")
            );
        }
        let ly = y0 + 14.0 + 20.0 * i as f64;
        let lx = LEFT + plot_w + 14.0;
        let _ = writeln!(
            out,
            r#"<line x1="{lx:.1}" y1="{ly:.1}" x2="{:.1}" y2="{ly:.1}" stroke="{}" stroke-width="3"/><text x="{:.1}" y="{:.1}">{}</text>"#,
            lx + 22.0,
            l.colour,
            lx + 28.0,
            ly + 4.0,
            escape(l.name)
        );
    }
}

/// The chart of `series` with `title` on top, as an SVG document.
pub fn svg(title: &str, series: &[SeriesPoint]) -> String {
    let t_max = series.iter().map(|p| p.t).fold(1.0, f64::max);
    let height = 30.0 + 2.0 * (TOP + PANEL + BOTTOM);
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        out,
        r#"<style>.title {{ font-size: 14px; font-weight: bold; }}</style><rect width="100%" height="100%" fill="white"/><text x="{LEFT}" y="20" font-size="15">{}</text>"#,
        escape(title)
    );
    let pick = |f: fn(&SeriesPoint) -> f64| -> Vec<(f64, f64)> {
        series.iter().map(|p| (p.t, f(p))).collect()
    };
    if series.iter().any(|p| p.open_sockets.is_some()) {
        idle_panels(&mut out, t_max, series);
        out.push_str("</svg>\n");
        return out;
    }
    let throughput = [
        Line {
            name: "offered",
            colour: "#999999",
            points: pick(|p| p.offered as f64),
        },
        Line {
            name: "sent",
            colour: "#1f77b4",
            points: pick(|p| p.sent as f64),
        },
        Line {
            name: "acked",
            colour: "#2ca02c",
            points: pick(|p| p.acked as f64),
        },
        Line {
            name: "delivered",
            colour: "#ff7f0e",
            points: pick(|p| p.delivered as f64),
        },
    ];
    panel(
        &mut out,
        30.0 + TOP,
        "Throughput per second",
        "messages / s",
        t_max,
        &throughput,
    );
    let latency = [
        Line {
            name: "ack p99",
            colour: "#2ca02c",
            points: pick(|p| p.ack_p99_ms),
        },
        Line {
            name: "delivery p99",
            colour: "#ff7f0e",
            points: pick(|p| p.delivery_p99_ms),
        },
        Line {
            name: "delivery p50",
            colour: "#d62728",
            points: pick(|p| p.delivery_p50_ms),
        },
    ];
    panel(
        &mut out,
        30.0 + TOP + PANEL + BOTTOM + TOP,
        "Latency from the scheduled send time, per second",
        "ms",
        t_max,
        &latency,
    );
    out.push_str("</svg>\n");
    out
}

/// Idle mode: open sockets above, server RSS below.
fn idle_panels(out: &mut String, t_max: f64, series: &[SeriesPoint]) {
    let sockets = [Line {
        name: "open sockets",
        colour: "#1f77b4",
        points: series
            .iter()
            .map(|p| (p.t, p.open_sockets.unwrap_or(0) as f64))
            .collect(),
    }];
    panel(out, 30.0 + TOP, "Open sockets", "sockets", t_max, &sockets);
    let rss = [Line {
        name: "server RSS",
        colour: "#ff7f0e",
        points: series
            .iter()
            .filter_map(|p| Some((p.t, p.server_rss_mb?)))
            .collect(),
    }];
    panel(
        out,
        30.0 + TOP + PANEL + BOTTOM + TOP,
        "Server resident memory",
        "MiB",
        t_max,
        &rss,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nice_ceilings() {
        assert_eq!(nice_ceiling(0.0), 1.0);
        assert_eq!(nice_ceiling(7.0), 10.0);
        assert_eq!(nice_ceiling(10.0), 10.0);
        assert_eq!(nice_ceiling(11.0), 20.0);
        assert_eq!(nice_ceiling(0.03), 0.05);
        assert_eq!(nice_ceiling(48_000.0), 50_000.0);
        assert_eq!(label(50_000.0), "50k");
        assert_eq!(label(2.5), "2.5");
    }

    #[test]
    fn chart_has_both_panels_and_escapes_text() {
        let series: Vec<SeriesPoint> = (1..=20)
            .map(|i| SeriesPoint {
                t: f64::from(i),
                offered: 1000,
                sent: 1000,
                acked: 990,
                delivered: 980,
                ack_p99_ms: 3.0,
                delivery_p99_ms: 4.5,
                ..SeriesPoint::default()
            })
            .collect();
        let svg = svg("run <1> & co", &series);
        assert!(svg.starts_with("<svg"));
        assert!(svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<polyline").count(), 7);
        assert!(svg.contains("run &lt;1&gt; &amp; co"));
        assert!(svg.contains(">1k<"), "y ticks labelled");
        // An empty run still draws a valid document.
        let empty = super::svg("empty", &[]);
        assert!(empty.contains("</svg>") && !empty.contains("<polyline"));
        // Idle mode draws sockets and memory instead.
        let idle: Vec<SeriesPoint> = (1..=5)
            .map(|i| SeriesPoint {
                t: f64::from(i),
                open_sockets: Some(1000 * i as u64),
                server_rss_mb: Some(50.0),
                ..SeriesPoint::default()
            })
            .collect();
        let idle = super::svg("idle", &idle);
        assert_eq!(idle.matches("<polyline").count(), 2);
        assert!(idle.contains("Open sockets"));
    }
}
