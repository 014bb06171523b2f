//! `ephemera-load`: drive a running Ephemera server with an open-loop
//! offered load (messages, or with `--mix stories` tray reads, views and
//! posts; or hold idle sockets), verify, and report.
//!
//! Exit status: 0 when every acked message arrived at every device exactly
//! once (a stories run: every tray held every author and every checked view
//! count was right), 2 when the run finished but verification failed, 1 on
//! an error.

use std::process::ExitCode;

use anyhow::{Context as _, Result};
use clap::Parser as _;
use ephemera_load::config::Options;
use ephemera_load::{chart, run};
use tokio::sync::watch;

#[tokio::main]
async fn main() -> ExitCode {
    match main_inner().await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(2),
        Err(err) => {
            eprintln!("ephemera-load: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn main_inner() -> Result<bool> {
    let options = Options::parse().with_profile()?;
    let (report_path, chart_path) = (options.report.clone(), options.chart.clone());
    let cfg = options.resolve()?;

    // Ctrl-C ends the run early; it still drains and reports.
    let (stop_tx, stop) = watch::channel(false);
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            let _ = stop_tx.send(true);
        }
    });

    let report = run::run_until(&cfg, stop).await?;
    println!("{}", report.summary_table());
    if let Some(path) = report_path {
        let json = serde_json::to_vec_pretty(&report).context("serialising the report")?;
        std::fs::write(&path, json).with_context(|| format!("writing {}", path.display()))?;
        println!("  report written to {}", path.display());
    }
    if chart_path.is_some() && report.stories.is_some() {
        println!("  no chart for a stories run (the report's stories.series has its seconds)");
    } else if let Some(path) = chart_path {
        let p = &cfg.profile;
        let title = if report.idle.is_some() {
            format!(
                "ephemera-load: {} idle sockets",
                cfg.idle_connections.unwrap_or(0)
            )
        } else {
            format!(
                "ephemera-load: {} msg/s × {}{}, {} users × {} devices",
                p.rate,
                p.duration,
                if p.peak_for > 0.0 {
                    format!(
                        " s, peak ×{} at {} s for {} s",
                        p.peak_factor, p.peak_at, p.peak_for
                    )
                } else {
                    " s".to_owned()
                },
                cfg.users,
                cfg.devices
            )
        };
        let svg = chart::svg(&title, &report.series).context("drawing the chart")?;
        std::fs::write(&path, svg).with_context(|| format!("writing {}", path.display()))?;
        println!("  chart written to {}", path.display());
    }
    Ok(report.idle.is_some() || report.verified())
}
