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
//! - [`outbox`]: the bound on what waits for one socket.
//! - [`send`]: one `send` from the frame to the ack and the fanout.
//! - [`session`]: one actor per WebSocket.
//! - [`user`]: one actor per online user; multi-device fanout, presence.
//! - [`conversation`]: sequencer, persistence, receipts, TTL timers.
//! - [`story`]: one actor per live story: its end, views, fanout.
//! - [`call`]: one actor per call in progress: signaling relay, ring timer.
//! - [`sweeper`]: the persistent deadline index scanner.
//! - [`remote`]: conversations owned by another node (cluster mode).

pub mod call;
pub mod conversation;
pub mod directory;
pub mod frames;
pub mod ids;
pub mod metrics;
pub mod outbox;
pub mod ratelimit;
pub mod remote;
pub mod send;
pub mod session;
pub mod store;
pub mod story;
pub mod sweeper;
pub mod user;

/// Held by an actor and dropped with it (a crash included): whoever holds
/// one of its [`AliveWatch`]es learns that the actor is gone, without
/// polling.
pub type Alive = tokio::sync::watch::Sender<()>;

/// The receiving side of an [`Alive`].
pub type AliveWatch = tokio::sync::watch::Receiver<()>;

/// A new [`Alive`].
pub fn alive() -> Alive {
    tokio::sync::watch::channel(()).0
}

/// Resolves when the [`Alive`] behind `watch` is dropped.
pub async fn gone(mut watch: AliveWatch) {
    while watch.changed().await.is_ok() {}
}

/// What an operator sees of a live actor: never content.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ActorSummary {
    /// Its kind.
    pub kind: &'static str,
    /// Its id.
    pub id: String,
    /// Timers armed (conversations: message deadlines).
    pub timers_armed: usize,
    /// Messages waiting in its mailbox.
    pub mailbox_depth: usize,
    /// Devices attached (users) or members (conversations).
    pub attached: usize,
    /// Seconds since it (re)started.
    pub uptime_seconds: u64,
    /// Restarts since it was first activated.
    pub restarts: u64,
}

/// The operator restarts a keyed actor (conversation, story): a fresh one
/// takes its place and reloads from storage once this one has drained.
#[derive(actix::Message)]
#[rtype(result = "()")]
pub struct Restart;

/// For an actor being replaced: stops it once every request sent to it
/// before the replacement is handled (its mailbox `depth` is zero), after
/// any wait those requests started, so none is dropped unanswered.
pub(crate) fn stop_when_drained<A>(ctx: &mut actix::Context<A>, depth: fn(&A) -> &Depth)
where
    A: actix::Actor<Context = actix::Context<A>>,
{
    use actix::{ActorFutureExt, AsyncContext};
    ctx.wait(
        actix::fut::ready(()).map(move |(), act: &mut A, ctx: &mut actix::Context<A>| {
            if depth(act).get() == 0 {
                actix::ActorContext::stop(ctx);
            }
        }),
    );
}

/// Implements `Handler<Counted<M>>` for a keyed actor with a `depth` and a
/// `draining` flag: the mailbox depth goes down, the message's own
/// handler runs, and an actor being replaced stops once drained.
#[macro_export]
macro_rules! counted_draining {
    ($actor:ty; $($m:ty),* $(,)?) => {$(
        impl actix::Handler<$crate::Counted<$m>> for $actor {
            type Result = <Self as actix::Handler<$m>>::Result;

            fn handle(&mut self, msg: $crate::Counted<$m>, ctx: &mut Self::Context) -> Self::Result {
                self.depth.pop();
                let answer = <Self as actix::Handler<$m>>::handle(self, msg.0, ctx);
                if self.draining {
                    $crate::stop_when_drained(ctx, |a: &$actor| &a.depth);
                }
                answer
            }
        }
    )*};
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

/// A message routed through the directory, counted in the receiving
/// actor's mailbox depth until its handler runs.
pub struct Counted<M>(pub M);

impl<M: actix::Message> actix::Message for Counted<M> {
    type Result = M::Result;
}

/// How many counted messages wait in one actor's mailbox, mirrored in the
/// per-kind `mailbox_depth` gauge.
#[derive(Clone)]
pub struct Depth {
    n: std::sync::Arc<std::sync::atomic::AtomicI64>,
    gauge: prometheus_client::metrics::gauge::Gauge,
}

impl Depth {
    /// A counter feeding `gauge`.
    pub fn new(gauge: prometheus_client::metrics::gauge::Gauge) -> Self {
        Depth {
            n: Default::default(),
            gauge,
        }
    }

    /// A message was enqueued.
    pub fn push(&self) {
        self.n.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.gauge.inc();
    }

    /// A message reached its handler.
    pub fn pop(&self) {
        self.n.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        self.gauge.dec();
    }

    /// Messages waiting now.
    pub fn get(&self) -> usize {
        self.n.load(std::sync::atomic::Ordering::Relaxed).max(0) as usize
    }

    /// The actor stopped: what was still queued is dropped with it.
    pub fn drain(&self) {
        let left = self.n.swap(0, std::sync::atomic::Ordering::Relaxed);
        self.gauge.dec_by(left);
    }
}
