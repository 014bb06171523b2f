//! `ephemera-compare RELAY.json EPHEMERA.json [RELAY.json EPHEMERA.json ...]`:
//! the markdown table of [`ephemera_load::compare`] on stdout, from
//! `ephemera-load` reports taken in pairs (the relay's run, then the
//! server's, at one offered rate), and for group runs (`--group-size`) the
//! table per delivered frame. `scripts/bench.sh` writes it as
//! `summary.md`.

use std::path::PathBuf;

use anyhow::{bail, Context as _, Result};
use clap::Parser as _;
use ephemera_load::compare::{markdown, Pair};
use ephemera_load::report::Report;

/// Flags of `ephemera-compare`.
#[derive(clap::Parser)]
#[command(
    name = "ephemera-compare",
    about = "Table of server vs relay CPU per message (and per frame, for group runs) from ephemera-load reports"
)]
struct Args {
    /// Report files in pairs: the relay's run, then the server's, per rate.
    #[arg(required = true)]
    reports: Vec<PathBuf>,
}

fn read(path: &PathBuf) -> Result<Report> {
    let text = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_slice(&text).with_context(|| format!("parsing {}", path.display()))
}

fn main() -> Result<()> {
    let args = Args::parse();
    if args.reports.len() % 2 != 0 {
        bail!("give the reports in pairs: RELAY.json EPHEMERA.json, per rate");
    }
    let mut pairs = Vec::new();
    for two in args.reports.chunks(2) {
        pairs.push(Pair {
            relay: read(&two[0])?,
            server: read(&two[1])?,
        });
    }
    print!("{}", markdown(&pairs));
    Ok(())
}
