//! The actors of Ephemera. Every connected device, user and conversation is
//! an actix actor, the single writer of its own state, which it can always
//! rebuild from storage.
//!
//! # Layout
//! - [`ids`]: opaque 128-bit ids, `msg_id`s, hex forms.
//! - [`store`]: the storage port (records, transactions, the `Store` trait)
//!   that the server implements on RocksDB.
//! - [`frames`]: client and server socket frames.
//! - [`metrics`]: the Prometheus registry.
//! - [`ratelimit`]: token buckets.
//! - [`directory`]: live actors by id, lazy activation, the fanout.
//! - [`session`]: one actor per WebSocket.
//! - [`user`]: one actor per online user; multi-device fanout, presence.
//! - [`conversation`]: sequencer, persistence, receipts, TTL timers.
//! - [`sweeper`]: the persistent deadline index scanner.

pub mod conversation;
pub mod directory;
pub mod frames;
pub mod ids;
pub mod metrics;
pub mod ratelimit;
pub mod session;
pub mod store;
pub mod sweeper;
pub mod user;

/// What an operator sees of a live actor: never content.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ActorSummary {
    /// Its kind.
    pub kind: &'static str,
    /// Its id.
    pub id: String,
    /// Timers armed (conversations: message deadlines).
    pub timers_armed: usize,
    /// Devices attached (users) or members (conversations).
    pub attached: usize,
    /// Seconds since it (re)started.
    pub uptime_seconds: u64,
    /// Restarts since it was first activated.
    pub restarts: u64,
}

/// Asks an actor for its [`ActorSummary`].
#[derive(actix::Message)]
#[rtype(result = "ActorSummary")]
pub struct Summarize;

/// Test-only: the actor that gets this panics (supervision tests).
#[cfg(feature = "faults")]
#[derive(actix::Message)]
#[rtype(result = "()")]
pub struct Panic;
