//! The SVG chart of a run, drawn with `plotters`: throughput per second
//! (offered, sent, acked, delivered) above, latency per second (ack p99,
//! delivery p99 and p50) below; for an idle run, open sockets above and
//! the server's resident memory below.
//!
//! Only plotters' SVG backend and line series are compiled in (see
//! `load/Cargo.toml`): no system font library. Text is sized by plotters'
//! built-in estimate and written as SVG `<text>`, which the viewer lays out
//! with its own fonts, so labels render wherever the file is opened. Each
//! series is one `<polyline>`; the legend, beside each panel, is drawn from
//! rectangles and text so it adds none.

use anyhow::{anyhow, Result};
use plotters::coord::Shift;
use plotters::prelude::*;

use crate::report::SeriesPoint;

/// Width of the picture, px.
const WIDTH: u32 = 960;
/// Height of the run's title strip, px.
const TITLE: u32 = 34;
/// Height of one panel (caption, plot and axis labels), px.
const PANEL: u32 = 320;
/// Width of the legend beside each panel, px.
const LEGEND: u32 = 150;
/// The font of every label; the viewer picks the face.
const FONT: &str = "sans-serif";

/// One line of a panel.
struct Line<'a> {
    /// Legend text.
    name: &'a str,
    /// Stroke colour.
    colour: RGBColor,
    /// `(t, value)` points.
    points: Vec<(f64, f64)>,
}

/// One panel: a caption, the unit of its y axis and its lines.
struct Panel<'a> {
    /// Caption above the plot.
    title: &'a str,
    /// The y axis' description.
    unit: &'a str,
    /// What it draws.
    lines: Vec<Line<'a>>,
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

/// `#rrggbb` as a colour (constant inputs only).
const fn hex(rgb: u32) -> RGBColor {
    RGBColor((rgb >> 16) as u8, (rgb >> 8) as u8, rgb as u8)
}

/// Draw `panel` into `area`: the plot on the left, its legend on the right.
fn draw_panel(
    area: &DrawingArea<SVGBackend<'_>, Shift>,
    t_max: f64,
    panel: &Panel<'_>,
) -> Result<()> {
    let v_max = nice_ceiling(
        panel
            .lines
            .iter()
            .flat_map(|l| l.points.iter().map(|p| p.1))
            .filter(|v| v.is_finite())
            .fold(0.0, f64::max),
    );
    let (plot, legend) = area.split_horizontally(WIDTH - LEGEND);
    let mut chart = ChartBuilder::on(&plot)
        .caption(panel.title, (FONT, 16).into_font().style(FontStyle::Bold))
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(64)
        .build_cartesian_2d(0f64..t_max, 0f64..v_max)?;
    let format = |v: &f64| label(*v);
    chart
        .configure_mesh()
        .x_labels(10)
        .y_labels(6)
        .max_light_lines(0)
        .bold_line_style(hex(0xdddddd))
        .x_label_formatter(&format)
        .y_label_formatter(&format)
        .label_style((FONT, 13))
        .axis_desc_style((FONT, 13))
        .x_desc("seconds")
        .y_desc(panel.unit)
        .draw()?;
    for line in &panel.lines {
        // Non-finite values (none expected) would break the path.
        let points = line
            .points
            .iter()
            .map(|&(t, v)| (t, if v.is_finite() { v.min(v_max) } else { 0.0 }));
        chart.draw_series(LineSeries::new(points, line.colour.stroke_width(2)))?;
    }
    for (i, line) in panel.lines.iter().enumerate() {
        let y = 56 + 22 * i as i32;
        legend.draw(&Rectangle::new(
            [(8, y - 2), (30, y + 2)],
            line.colour.filled(),
        ))?;
        legend.draw(&Text::new(line.name, (36, y - 8), (FONT, 14)))?;
    }
    Ok(())
}

/// The chart of `series` with `title` on top, as an SVG document.
pub fn svg(title: &str, series: &[SeriesPoint]) -> Result<String> {
    let t_max = series
        .iter()
        .map(|p| p.t)
        .filter(|t| t.is_finite())
        .fold(1.0, f64::max);
    let pick = |f: fn(&SeriesPoint) -> f64| -> Vec<(f64, f64)> {
        series.iter().map(|p| (p.t, f(p))).collect()
    };
    let panels = if series.iter().any(|p| p.open_sockets.is_some()) {
        [
            Panel {
                title: "Open sockets",
                unit: "sockets",
                lines: vec![Line {
                    name: "open sockets",
                    colour: hex(0x1f77b4),
                    points: pick(|p| p.open_sockets.unwrap_or(0) as f64),
                }],
            },
            Panel {
                title: "Server resident memory",
                unit: "MiB",
                lines: vec![Line {
                    name: "server RSS",
                    colour: hex(0xff7f0e),
                    points: series
                        .iter()
                        .filter_map(|p| Some((p.t, p.server_rss_mb?)))
                        .collect(),
                }],
            },
        ]
    } else {
        [
            Panel {
                title: "Throughput per second",
                unit: "messages / s",
                lines: vec![
                    Line {
                        name: "offered",
                        colour: hex(0x999999),
                        points: pick(|p| p.offered as f64),
                    },
                    Line {
                        name: "sent",
                        colour: hex(0x1f77b4),
                        points: pick(|p| p.sent as f64),
                    },
                    Line {
                        name: "acked",
                        colour: hex(0x2ca02c),
                        points: pick(|p| p.acked as f64),
                    },
                    Line {
                        name: "delivered",
                        colour: hex(0xff7f0e),
                        points: pick(|p| p.delivered as f64),
                    },
                ],
            },
            Panel {
                title: "Latency from the scheduled send time, per second",
                unit: "ms",
                lines: vec![
                    Line {
                        name: "ack p99",
                        colour: hex(0x2ca02c),
                        points: pick(|p| p.ack_p99_ms),
                    },
                    Line {
                        name: "delivery p99",
                        colour: hex(0xff7f0e),
                        points: pick(|p| p.delivery_p99_ms),
                    },
                    Line {
                        name: "delivery p50",
                        colour: hex(0xd62728),
                        points: pick(|p| p.delivery_p50_ms),
                    },
                ],
            },
        ]
    };
    let mut out = String::new();
    {
        let root =
            SVGBackend::with_string(&mut out, (WIDTH, TITLE + 2 * PANEL)).into_drawing_area();
        root.fill(&WHITE)?;
        let body = root.titled(title, (FONT, 18))?;
        for (area, panel) in body.split_evenly((2, 1)).iter().zip(&panels) {
            draw_panel(area, t_max, panel)?;
        }
        root.present()
            .map_err(|e| anyhow!("finishing the chart: {e}"))?;
    }
    Ok(out)
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

    /// Every `<text>` of `doc`, as the viewer would read it.
    fn texts(doc: &roxmltree::Document<'_>) -> Vec<String> {
        doc.descendants()
            .filter(|n| n.has_tag_name("text"))
            .map(|n| n.text().unwrap_or("").trim().to_owned())
            .collect()
    }

    /// Every `<polyline>` of `doc` but the axes and ticks (black): its
    /// stroke and its points.
    fn polylines(doc: &roxmltree::Document<'_>) -> Vec<(String, Vec<(f64, f64)>)> {
        doc.descendants()
            .filter(|n| n.has_tag_name("polyline") && n.attribute("stroke") != Some("#000000"))
            .map(|n| {
                let points = n
                    .attribute("points")
                    .unwrap_or("")
                    .split_whitespace()
                    .map(|xy| {
                        let (x, y) = xy.split_once(',').expect("x,y");
                        (x.parse().expect("x"), y.parse().expect("y"))
                    })
                    .collect();
                (n.attribute("stroke").unwrap_or("").to_owned(), points)
            })
            .collect()
    }

    #[test]
    fn chart_draws_one_line_per_series_with_labels() {
        let series: Vec<SeriesPoint> = (1..=20)
            .map(|i| SeriesPoint {
                t: f64::from(i),
                offered: 1000,
                sent: 1000,
                acked: 990,
                delivered: 600,
                ack_p99_ms: 3.0,
                delivery_p99_ms: 4.5,
                delivery_p50_ms: 1.0,
                ..SeriesPoint::default()
            })
            .collect();
        let svg = svg("run <1> & co", &series).unwrap();
        let doc = roxmltree::Document::parse(&svg).expect("the chart is well-formed XML");
        assert!(doc.root_element().has_tag_name("svg"));
        let texts = texts(&doc);
        // The title survives escaping: the parsed text is the original.
        assert!(texts.iter().any(|t| t == "run <1> & co"), "{texts:?}");
        for name in [
            "Throughput per second",
            "offered",
            "sent",
            "acked",
            "delivered",
            "ack p99",
            "delivery p99",
            "delivery p50",
            "seconds",
            "messages / s",
            "ms",
        ] {
            assert!(texts.iter().any(|t| t == name), "no {name:?} in {texts:?}");
        }
        assert!(
            texts.iter().any(|t| t == "1k"),
            "y ticks labelled: {texts:?}"
        );
        // One polyline per series, every point of it, in its colour.
        let lines = polylines(&doc);
        assert_eq!(lines.len(), 7, "{lines:?}");
        for (_, points) in &lines {
            assert_eq!(points.len(), 20);
        }
        let stroke = |c: &str| lines.iter().find(|l| l.0 == c).expect(c).1.clone();
        // Values map to heights: offered (1000) is drawn above delivered
        // (600), and time runs left to right.
        let (offered, delivered) = (stroke("#999999"), stroke("#FF7F0E"));
        assert!(offered.iter().zip(&delivered).all(|(o, d)| o.1 < d.1));
        assert!(offered.windows(2).all(|w| w[0].0 < w[1].0));
    }

    #[test]
    fn empty_and_idle_runs_still_draw() {
        let empty = svg("empty", &[]).unwrap();
        let doc = roxmltree::Document::parse(&empty).expect("well-formed");
        assert!(polylines(&doc).is_empty());
        assert!(texts(&doc).iter().any(|t| t == "offered"), "legend stays");
        // Idle mode draws sockets and memory instead.
        let idle: Vec<SeriesPoint> = (1..=5)
            .map(|i| SeriesPoint {
                t: f64::from(i),
                open_sockets: Some(1000 * i as u64),
                server_rss_mb: Some(50.0),
                ..SeriesPoint::default()
            })
            .collect();
        let idle = svg("idle", &idle).unwrap();
        let doc = roxmltree::Document::parse(&idle).expect("well-formed");
        assert_eq!(polylines(&doc).len(), 2);
        let texts = texts(&doc);
        assert!(texts.iter().any(|t| t == "Open sockets"), "{texts:?}");
        assert!(texts.iter().any(|t| t == "server RSS"), "{texts:?}");
    }
}
