//! The numbers operators page on, in one registry rendered as Prometheus
//! text by the admin listener. Labels are kinds and outcomes, never ids,
//! content or tokens.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// The kind of an actor, as a label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Kind {
    /// `session`, `user`, `conversation`, `sweeper`.
    pub kind: &'static str,
}

/// Why a password call was refused, as a label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Reason {
    /// `address`, `account` (over a rate limit) or `overloaded` (the
    /// hashing pool and its queue were full).
    pub reason: &'static str,
}

/// A story's audience, or why it ended, as a label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StoryLabel {
    /// `everyone` or `close_friends` (posts, views, fanout), `expired` or
    /// `deleted` (ends).
    pub story: &'static str,
}

/// A push's kind, and what became of it, as labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PushLabel {
    /// `message` or `story_reply`.
    pub kind: &'static str,
    /// Sent: `ok`. Retried: `status` (answered, not 2xx) or `error` (no
    /// answer). Dropped: `queue_full`, `exhausted` (every attempt failed)
    /// or `no_account` (the sender is gone).
    pub outcome: &'static str,
}

/// Every metric of the server.
pub struct Metrics {
    registry: Registry,
    /// Open WebSockets.
    pub connections: Gauge,
    /// Live actors per kind.
    pub live_actors: Family<Kind, Gauge>,
    /// Messages waiting in actors' mailboxes, per kind.
    pub mailbox_depth: Family<Kind, Gauge>,
    /// Actor restarts per kind (operator restarts and crashes).
    pub restarts: Family<Kind, Counter>,
    /// Messages accepted (acked).
    pub messages_sent: Counter,
    /// `message` frames pushed to devices.
    pub messages_delivered: Counter,
    /// Sends refused with `unavailable` because too many were in flight.
    pub sends_shed: Counter,
    /// Sends accepted and not yet answered.
    pub sends_in_flight: Gauge,
    /// Logins and registrations refused, by reason.
    pub login_refusals: Family<Reason, Counter>,
    /// From a `send` frame to its ack, seconds.
    pub ack_latency: Histogram,
    /// From a message's acceptance (`sent_at`) to its push to a device's socket, seconds.
    pub delivery_latency: Histogram,
    /// From `expires_at` to the burn being committed, seconds.
    pub burn_lag: Histogram,
    /// Transactions per group commit.
    pub write_batch_size: Histogram,
    /// Time to write one group commit, seconds.
    pub write_batch_seconds: Histogram,
    /// Deadlines past due and not yet burned (at the last sweeper scan).
    pub expired_backlog: Gauge,
    /// Seconds since the key store last completed a purge pass.
    pub key_purge_age_seconds: Gauge,
    /// Data keys destroyed by purge passes.
    pub keys_destroyed: Counter,
    /// Media objects waiting for their blob to be deleted.
    pub blobs_pending_deletion: Gauge,
    /// The physical deletion window, seconds.
    pub deletion_window_seconds: Gauge,
    /// 1 while the window is met, 0 when it is missed (page on 0).
    pub deletion_window_met: Gauge,
    /// Age of the oldest expired or deleted row still on disk.
    pub oldest_expired_on_disk_seconds: Gauge,
    /// Age of the oldest data key past its life still in the key store.
    pub key_shred_lag_seconds: Gauge,
    /// Age of the oldest WAL file with content.
    pub oldest_wal_seconds: Gauge,
    /// Age of the oldest blob past its life not yet deleted.
    pub oldest_blob_pending_seconds: Gauge,
    /// When the sweep last completed a full pass (Unix seconds).
    pub last_full_pass_timestamp_seconds: Gauge,
    /// Stories posted, by audience.
    pub stories_posted: Family<StoryLabel, Counter>,
    /// Story views counted (one per viewer and story), by audience.
    pub story_views: Family<StoryLabel, Counter>,
    /// Tray references pushed by fanouts, by audience.
    pub story_fanout_refs: Family<StoryLabel, Counter>,
    /// Stories ended, by reason.
    pub stories_ended: Family<StoryLabel, Counter>,
    /// Pushes the webhook accepted (2xx), by kind.
    pub pushes_sent: Family<PushLabel, Counter>,
    /// Push attempts that failed and were tried again, by kind and failure.
    pub pushes_retried: Family<PushLabel, Counter>,
    /// Pushes given up, by kind and reason.
    pub pushes_dropped: Family<PushLabel, Counter>,
    /// Round trips to Redis (cluster mode), seconds.
    pub redis_latency: Histogram,
    /// Redis calls that failed (unreachable, timed out, refused).
    pub redis_errors: Counter,
    /// Registered nodes, by state (`live`, `down`), as this node last saw them.
    pub cluster_members: Family<StateLabel, Gauge>,
    /// 1 while this node holds its lease (may write), 0 otherwise.
    pub cluster_lease_held: Gauge,
    /// Token revocations received from the cluster's channel.
    pub cluster_revocations: Counter,
    /// Inbox events this node handed to Redis (cluster mode).
    pub cluster_events_out: Counter,
    /// Live events other nodes' batches delivered through this node's channel.
    pub cluster_frames_in: Counter,
    /// Conversation calls this node sent to other nodes.
    pub cluster_calls_out: Counter,
}

/// A node's state in the cluster.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    /// `live` or `down`.
    pub state: &'static str,
}

impl Metrics {
    /// A registry with every metric registered.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("ephemera");
        let m = Metrics {
            connections: Gauge::default(),
            live_actors: Family::default(),
            restarts: Family::default(),
            mailbox_depth: Family::default(),
            messages_sent: Counter::default(),
            messages_delivered: Counter::default(),
            sends_shed: Counter::default(),
            sends_in_flight: Gauge::default(),
            login_refusals: Family::default(),
            ack_latency: Histogram::new(exponential_buckets(0.000_1, 2.0, 16)),
            burn_lag: Histogram::new(exponential_buckets(0.001, 2.0, 14)),
            delivery_latency: Histogram::new(exponential_buckets(0.000_1, 2.0, 16)),
            write_batch_size: Histogram::new(exponential_buckets(1.0, 2.0, 12)),
            write_batch_seconds: Histogram::new(exponential_buckets(0.000_05, 2.0, 16)),
            expired_backlog: Gauge::default(),
            key_purge_age_seconds: Gauge::default(),
            keys_destroyed: Counter::default(),
            blobs_pending_deletion: Gauge::default(),
            deletion_window_seconds: Gauge::default(),
            deletion_window_met: Gauge::default(),
            oldest_expired_on_disk_seconds: Gauge::default(),
            key_shred_lag_seconds: Gauge::default(),
            oldest_wal_seconds: Gauge::default(),
            oldest_blob_pending_seconds: Gauge::default(),
            last_full_pass_timestamp_seconds: Gauge::default(),
            stories_posted: Family::default(),
            story_views: Family::default(),
            story_fanout_refs: Family::default(),
            stories_ended: Family::default(),
            pushes_sent: Family::default(),
            pushes_retried: Family::default(),
            pushes_dropped: Family::default(),
            redis_latency: Histogram::new(exponential_buckets(0.000_05, 2.0, 16)),
            redis_errors: Counter::default(),
            cluster_members: Family::default(),
            cluster_lease_held: Gauge::default(),
            cluster_revocations: Counter::default(),
            cluster_events_out: Counter::default(),
            cluster_frames_in: Counter::default(),
            cluster_calls_out: Counter::default(),
            registry: Registry::default(),
        };
        registry.register("connections", "Open WebSockets", m.connections.clone());
        registry.register("live_actors", "Live actors per kind", m.live_actors.clone());
        registry.register(
            "mailbox_depth",
            "Messages waiting in actor mailboxes per kind",
            m.mailbox_depth.clone(),
        );
        registry.register(
            "actor_restarts",
            "Actor restarts per kind",
            m.restarts.clone(),
        );
        registry.register(
            "messages_sent",
            "Messages accepted and acked",
            m.messages_sent.clone(),
        );
        registry.register(
            "messages_delivered",
            "Message frames pushed to devices",
            m.messages_delivered.clone(),
        );
        registry.register(
            "sends_shed",
            "Sends refused as unavailable because the server was at its in-flight limit",
            m.sends_shed.clone(),
        );
        registry.register(
            "sends_in_flight",
            "Sends accepted and not yet answered",
            m.sends_in_flight.clone(),
        );
        registry.register(
            "login_refusals",
            "Logins and registrations refused: over the address or account rate limit, or the password hashing pool full",
            m.login_refusals.clone(),
        );
        registry.register(
            "ack_latency_seconds",
            "From a send frame to its ack",
            m.ack_latency.clone(),
        );
        registry.register(
            "delivery_latency_seconds",
            "From a message's acceptance to its push to a device",
            m.delivery_latency.clone(),
        );
        registry.register(
            "burn_lag_seconds",
            "From expires_at to the committed burn",
            m.burn_lag.clone(),
        );
        registry.register(
            "write_batch_transactions",
            "Transactions per group commit",
            m.write_batch_size.clone(),
        );
        registry.register(
            "write_batch_seconds",
            "Time to write one group commit",
            m.write_batch_seconds.clone(),
        );
        registry.register(
            "expired_backlog",
            "Deadlines past due and not yet burned",
            m.expired_backlog.clone(),
        );
        registry.register(
            "key_purge_age_seconds",
            "Seconds since the key store last completed a purge (key-shred lag bound)",
            m.key_purge_age_seconds.clone(),
        );
        registry.register(
            "keys_destroyed",
            "Data keys destroyed by purges",
            m.keys_destroyed.clone(),
        );
        registry.register(
            "blobs_pending_deletion",
            "Media objects whose blob awaits deletion",
            m.blobs_pending_deletion.clone(),
        );
        for (name, help, gauge) in [
            (
                "deletion_window_seconds",
                "The physical deletion window",
                &m.deletion_window_seconds,
            ),
            (
                "deletion_window_met",
                "1 while expired bytes leave the disk within the window, 0 when it is missed",
                &m.deletion_window_met,
            ),
            (
                "oldest_expired_on_disk_seconds",
                "Age of the oldest expired or deleted row still on disk, measured from disk",
                &m.oldest_expired_on_disk_seconds,
            ),
            (
                "key_shred_lag_seconds",
                "Age of the oldest data key past its life still in the key store",
                &m.key_shred_lag_seconds,
            ),
            (
                "oldest_wal_seconds",
                "Age of the oldest write-ahead log file with content",
                &m.oldest_wal_seconds,
            ),
            (
                "oldest_blob_pending_seconds",
                "Age of the oldest blob past its life not yet deleted",
                &m.oldest_blob_pending_seconds,
            ),
            (
                "last_full_pass_timestamp_seconds",
                "When the deletion sweep last completed a full pass",
                &m.last_full_pass_timestamp_seconds,
            ),
        ] {
            registry.register(name, help, gauge.clone());
        }
        registry.register(
            "stories_posted",
            "Stories posted, by audience",
            m.stories_posted.clone(),
        );
        registry.register(
            "story_views",
            "Story views counted (one per viewer and story), by audience",
            m.story_views.clone(),
        );
        registry.register(
            "story_fanout_refs",
            "Tray references pushed to followers, by audience",
            m.story_fanout_refs.clone(),
        );
        registry.register(
            "stories_ended",
            "Stories ended, by reason (expired, deleted)",
            m.stories_ended.clone(),
        );
        registry.register(
            "pushes_sent",
            "Pushes the webhook accepted, by kind",
            m.pushes_sent.clone(),
        );
        registry.register(
            "pushes_retried",
            "Push attempts that failed and were retried, by kind and failure (status, error)",
            m.pushes_retried.clone(),
        );
        registry.register(
            "pushes_dropped",
            "Pushes given up, by kind and reason (queue_full, exhausted, no_account)",
            m.pushes_dropped.clone(),
        );
        registry.register(
            "redis_latency_seconds",
            "Round trips to Redis (cluster mode)",
            m.redis_latency.clone(),
        );
        registry.register(
            "redis_errors",
            "Redis calls that failed: unreachable, timed out or refused",
            m.redis_errors.clone(),
        );
        registry.register(
            "cluster_members",
            "Registered nodes by state (live, down) as this node last saw them",
            m.cluster_members.clone(),
        );
        registry.register(
            "cluster_lease_held",
            "1 while this node holds its lease in Redis and may write, 0 otherwise",
            m.cluster_lease_held.clone(),
        );
        registry.register(
            "cluster_revocations_received",
            "Token revocations received on the cluster's channel",
            m.cluster_revocations.clone(),
        );
        registry.register(
            "cluster_events_out",
            "Inbox events this node handed to Redis (cluster mode)",
            m.cluster_events_out.clone(),
        );
        registry.register(
            "cluster_frames_in",
            "Live events delivered to this node through its bus channel",
            m.cluster_frames_in.clone(),
        );
        registry.register(
            "cluster_calls_out",
            "Conversation calls sent to the owning node",
            m.cluster_calls_out.clone(),
        );
        Metrics { registry, ..m }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("encoding to a String");
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
