//! Load generator and Rust client library for Ephemera.
//!
//! The library half is what the server's integration tests and the load
//! generator (`src/main.rs`) use to talk to a running server over its public
//! HTTP API and its WebSocket. [`run::run`] is the generator's entry point:
//! the binary parses flags into a [`config::LoadConfig`], calls it, and
//! prints, saves and charts the [`report::Report`] it returns.
//!
//! # Layout
//!
//! * [`client`]: async client for the HTTP API ([`client::Http`]) and the
//!   socket ([`client::Socket`]), with typed answers and errors that carry
//!   the HTTP status and error code but never content or tokens.
//! * [`crypto`]: AES-256-GCM sealing of media under a server-minted data key.
//! * [`config`]: the flags and TOML profile of a run ([`config::Options`]),
//!   resolved into a [`config::LoadConfig`].
//! * [`schedule`]: the open-loop clock (due time of message `k` under a
//!   ramp and a peak) and the plan of who sends what to whom: 1:1 pairs,
//!   or groups of up to 256 (`--group-size`).
//! * [`stats`]: HdrHistogram latencies and the exactly-once ledger that
//!   counts deliveries, duplicates and losses per (message, device).
//! * [`net`]: server targets and device sockets bound to a source address.
//! * [`run`]: a message run end to end (sign-in, groups, sockets, sender
//!   lanes, readers, drain, report).
//! * [`idle`]: the idle-connections run.
//! * [`stories`]: the stories mix (`--mix stories`): follows and posts in
//!   setup, then open-loop tray reads, views and posts over HTTP, and the
//!   view counts read back.
//! * [`resources`]: CPU and RSS of a process from `/proc`.
//! * [`report`]: the report, its per-second series and the summary table
//!   (messages, idle and stories runs).
//! * [`chart`]: the SVG chart of throughput and latency (plotters).
//! * [`compare`]: the server against the bare relay, a markdown table of
//!   paired reports (`scripts/bench.sh`).
//!
//! Binaries: `ephemera-load` (`src/main.rs`); `ephemera-relay`, a benchmark
//! control speaking the subset of the protocol a message run uses on the
//! server's stack without persistence; `ephemera-compare`, the table of
//! [`compare`] from report files.

pub mod chart;
pub mod client;
pub mod compare;
pub mod config;
pub mod crypto;
pub mod idle;
pub mod net;
pub mod report;
pub mod resources;
pub mod run;
pub mod schedule;
mod stalled;
pub mod stats;
pub mod stories;
