//! Cluster mode: several nodes behind one balancer, sharing Redis (issue
//! 14, in part; the README's "Many nodes" says what works and what not yet).
//!
//! # Layout
//! - [`Cluster`]: the Redis connection (on a runtime of its own, so both
//!   async handlers and the blocking storage calls can use it), this node's
//!   lease and heartbeat, the live view of the members.
//! - [`accounts`]: accounts and token digests in Redis, so a login made on
//!   one node works on every node and a logout revokes it on all of them.
//!
//! # The lease
//! A node registers as `eph:lease:{node_id}` = its instance (random per
//! process), set `NX` with a time to live, renewed every fifth of it. The
//! node writes only while its last renewal is younger than four fifths of
//! the lease (`may_write`), so by the time the key can expire and another
//! process take the same node id, this one has stopped writing: never two
//! writers of one data directory's conversations. A process that finds its
//! node id held waits for the lease to lapse (a predecessor killed with
//! `kill -9`), and gives up after two leases (a live twin).

pub mod accounts;
pub mod bus;
pub mod route;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::{Duration, Instant};

use ephemera_actors::ids::{DeviceId, Id, UserId};
use ephemera_actors::metrics::{Metrics, StateLabel};
use ephemera_actors::store::now_ms;
use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};

use crate::config::ClusterConfig;

/// Redis failed us; the detail is logged where it happened, never sent on.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the cluster's Redis is unavailable")]
pub struct RedisDown;

/// What a node says of itself in Redis (`eph:member:{id}`, living as long
/// as its lease). Never a secret: ids, addresses, times.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MemberInfo {
    /// The node's name.
    pub node_id: String,
    /// How its public listener is reached, if it said.
    pub advertise_url: Option<String>,
    /// Its lease's epoch: one more every time the node id is (re)acquired.
    pub epoch: u64,
    /// When this process started (Unix ms).
    pub started_at: u64,
    /// Its last heartbeat (Unix ms).
    pub heartbeat_at: u64,
}

/// A registered node as `/admin/cluster` shows it.
#[derive(Clone, Debug, Serialize)]
pub struct Member {
    /// The node's name.
    pub node_id: String,
    /// Whether its lease is live.
    pub live: bool,
    /// Its last heartbeat (Unix ms), live or not.
    pub last_heartbeat_at: Option<u64>,
    /// What it said of itself, while live.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub info: Option<MemberInfo>,
}

/// A token revoked somewhere in the cluster: every node closes the
/// device's sockets.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Revocation {
    user: UserId,
    device: DeviceId,
}

/// The channel every node hears revocations on.
const REVOKE_CHANNEL: &str = "eph:revoke";
/// Every node id ever registered, with its last heartbeat (Unix ms).
const HEARTBEATS: &str = "eph:heartbeats";

/// Takes the lease if free: `SET NX PX`, then a new epoch. Returns the
/// epoch, or 0 if another instance holds it.
const ACQUIRE: &str = r"
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return redis.call('INCR', KEYS[2])
end
return 0";

/// Renews the lease if this instance still holds it, and says so: the
/// member record and the heartbeat go with it. Returns 1, or 0 if lost.
const RENEW: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  redis.call('SET', KEYS[2], ARGV[3], 'PX', ARGV[2])
  redis.call('HSET', KEYS[3], ARGV[4], ARGV[5])
  return 1
end
return 0";

/// Lets go of the lease if this instance holds it (a graceful stop).
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1], KEYS[2])
  return 1
end
return 0";

/// Releases the placements (KEYS) that still name a node (ARGV[1]).
const RELEASE_OWNED: &str = r"
local n = 0
for _, k in ipairs(KEYS) do
  if redis.call('GET', k) == ARGV[1] then
    redis.call('DEL', k)
    n = n + 1
  end
end
return n";

/// Why a node could not be forgotten.
#[derive(Debug, thiserror::Error)]
pub enum ForgetError {
    /// It holds its lease: it is not lost.
    #[error("the node is live; stop it first")]
    Live,
    /// Redis failed.
    #[error(transparent)]
    Redis(#[from] RedisDown),
}

/// This node in the cluster.
pub struct Cluster {
    cfg: ClusterConfig,
    /// This process's claim on the node id.
    instance: String,
    client: redis::Client,
    conn: ConnectionManager,
    rt: &'static tokio::runtime::Runtime,
    metrics: Arc<Metrics>,
    /// The epoch of the lease held.
    epoch: AtomicU64,
    /// Until when (ms since `origin`) this node may write: four fifths of
    /// a lease after the start of its last successful renewal.
    write_until: AtomicU64,
    origin: Instant,
    started_at: u64,
    members: RwLock<Vec<Member>>,
    on_revoke: OnceLock<Box<dyn Fn(UserId, DeviceId) + Send + Sync>>,
    /// The cross-node side, once built.
    bus: OnceLock<Arc<bus::Bus>>,
    /// Counts the times Redis answered again after failing.
    redis_back: tokio::sync::watch::Sender<u64>,
    /// How other nodes reach this one when `advertise_url` is not set:
    /// the public listener's bound address (`http://addr`).
    bound_url: String,
    /// What marks a call one node forwards to another (see [`route`]):
    /// one random value for the whole cluster, kept in Redis.
    forward_secret: OnceLock<String>,
    /// The client of those calls.
    http: reqwest::Client,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("node_id", &self.cfg.node_id)
            .finish_non_exhaustive()
    }
}

impl Cluster {
    /// Connects to Redis and takes this node's lease (waiting up to two
    /// leases for a predecessor's to lapse). Fails if Redis cannot be
    /// reached or the node id stays held by another process.
    pub async fn join(
        cfg: ClusterConfig,
        metrics: Arc<Metrics>,
        bound_url: String,
    ) -> anyhow::Result<Arc<Cluster>> {
        use anyhow::Context;
        // The runtime lives as long as the process: it carries the Redis
        // connections that storage calls block on from any thread.
        let rt: &'static tokio::runtime::Runtime = Box::leak(Box::new(
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .thread_name("ephemera-redis")
                .enable_all()
                .build()
                .context("starting the Redis runtime")?,
        ));
        // The URL may carry a password: errors name the setting only.
        let client = redis::Client::open(cfg.redis_url.as_str())
            .map_err(|_| anyhow::anyhow!("redis_url is not a valid Redis URL"))?;
        let manager = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(2)))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_millis(500));
        let c = client.clone();
        let conn = rt
            .spawn(async move { ConnectionManager::new_with_config(c, manager).await })
            .await
            .context("connecting to Redis")?
            .map_err(|e| {
                tracing::error!(kind = ?e.kind(), "cannot reach Redis");
                anyhow::anyhow!("cannot reach Redis at redis_url")
            })?;
        let mut instance = [0u8; 16];
        ephemera_actors::ids::random_bytes(&mut instance);
        let cluster = Arc::new(Cluster {
            instance: ephemera_actors::ids::to_hex(&instance),
            cfg,
            client,
            conn,
            rt,
            metrics,
            epoch: AtomicU64::new(0),
            write_until: AtomicU64::new(0),
            origin: Instant::now(),
            started_at: now_ms(),
            members: RwLock::new(Vec::new()),
            on_revoke: OnceLock::new(),
            bus: OnceLock::new(),
            redis_back: tokio::sync::watch::channel(0).0,
            bound_url,
            forward_secret: OnceLock::new(),
            http: reqwest::Client::builder()
                .timeout(route::FORWARD_TIMEOUT)
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .context("building the HTTP client")?,
        });
        let give_up = Instant::now() + cluster.cfg.lease * 2 + Duration::from_secs(1);
        let mut waited = false;
        loop {
            let sent = cluster.elapsed_ms();
            let epoch: u64 = cluster
                .run(cluster.script(
                    ACQUIRE,
                    &[&cluster.key("lease"), &cluster.key("epoch")],
                    &[&cluster.instance, &cluster.lease_ms().to_string()],
                ))
                .await
                .map_err(|_| anyhow::anyhow!("cannot take the node's lease in Redis"))?;
            if epoch > 0 {
                cluster.held(epoch, sent);
                break;
            }
            if Instant::now() >= give_up {
                anyhow::bail!(
                    "node_id {} is held by another live process (its lease did not lapse)",
                    cluster.cfg.node_id
                );
            }
            if !waited {
                tracing::warn!(node_id = %cluster.cfg.node_id, "node id held; waiting for its lease to lapse");
                waited = true;
            }
            tokio::time::sleep(cluster.cfg.lease / 5).await;
        }
        // The cluster's forwarding secret: the first node sets it.
        let mut fresh = [0u8; 32];
        ephemera_actors::ids::random_bytes(&mut fresh);
        let secret: Option<String> = cluster
            .run(
                cluster.query(
                    redis::cmd("SET")
                        .arg("eph:forward-secret")
                        .arg(ephemera_actors::ids::to_hex(&fresh))
                        .arg("NX")
                        .arg("GET")
                        .clone(),
                ),
            )
            .await
            .map_err(|_| anyhow::anyhow!("cannot read the cluster's secret in Redis"))?;
        let _ = cluster
            .forward_secret
            .set(secret.unwrap_or_else(|| ephemera_actors::ids::to_hex(&fresh)));
        let me = Arc::clone(&cluster);
        cluster.run(async move { me.renew().await }).await?;
        let me = Arc::clone(&cluster);
        cluster
            .run(async move { me.refresh_members().await })
            .await?;
        tracing::info!(
            node_id = %cluster.cfg.node_id,
            epoch = cluster.epoch(),
            "joined the cluster"
        );
        Ok(cluster)
    }

    /// Starts the heartbeat and the revocation listener; `on_revoke` closes
    /// a device's sockets on this node.
    pub fn start(self: &Arc<Self>, on_revoke: impl Fn(UserId, DeviceId) + Send + Sync + 'static) {
        let _ = self.on_revoke.set(Box::new(on_revoke));
        let me = Arc::clone(self);
        self.rt.spawn(async move { me.heartbeat_loop().await });
        let me = Arc::clone(self);
        self.rt.spawn(async move { me.listen_loop().await });
    }

    /// How other nodes reach this one.
    fn advertised(&self) -> Option<String> {
        self.cfg
            .advertise_url
            .clone()
            .or_else(|| Some(self.bound_url.clone()))
    }

    /// The cross-node side (placement, calls, inboxes), once built.
    pub fn bus(&self) -> Option<&Arc<bus::Bus>> {
        self.bus.get()
    }

    /// This node's name.
    pub fn node_id(&self) -> &str {
        &self.cfg.node_id
    }

    /// The epoch of this node's lease.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Whether this node holds its lease now and so may write.
    pub fn may_write(&self) -> bool {
        self.elapsed_ms() < self.write_until.load(Ordering::Acquire)
    }

    /// Refuses a data directory that is not the one this node id had: if
    /// Redis has applied more of the node's outbound events than this
    /// directory ever queued (`head`), the node id was used with another
    /// directory (this one is new, or an old copy), and its events would
    /// be taken for ones already applied.
    pub async fn check_data_dir(&self, head: u64) -> anyhow::Result<()> {
        let applied: Option<u64> = self
            .run(self.query(redis::cmd("GET").arg(self.key("applied")).clone()))
            .await
            .map_err(|_| anyhow::anyhow!("cannot read the node's progress in Redis"))?;
        let applied = applied.unwrap_or(0);
        if applied > head {
            anyhow::bail!(
                "node_id {} was used with another data directory (Redis has its events up to \
                 {applied}, this directory only up to {head}); start it on its own data \
                 directory, or, if that is lost, run `ephemera admin cluster forget {}` on a \
                 live node first",
                self.cfg.node_id,
                self.cfg.node_id
            );
        }
        Ok(())
    }

    /// Forgets a lost node (its disk is gone): its conversations, stories
    /// and users' homes are released, so they can be claimed anew (empty),
    /// and its registry entries, member record and progress are dropped,
    /// so its node id can start again on a new data directory. Refused
    /// while the node holds its lease. Returns how many placements were
    /// released.
    pub async fn forget(&self, node: &str) -> Result<u64, ForgetError> {
        let lease: Option<String> = self
            .run(self.query(redis::cmd("GET").arg(format!("eph:lease:{node}")).clone()))
            .await?;
        if node == self.node_id() || lease.is_some() {
            return Err(ForgetError::Live);
        }
        let mut released = 0;
        let mut cursor = 0u64;
        loop {
            let (next, keys): (u64, Vec<String>) = self
                .run(
                    self.query(
                        redis::cmd("SCAN")
                            .arg(cursor)
                            .arg("MATCH")
                            .arg("eph:owner:*")
                            .arg("COUNT")
                            .arg(1000)
                            .clone(),
                    ),
                )
                .await?;
            if !keys.is_empty() {
                let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
                let n: u64 = self.run(self.script(RELEASE_OWNED, &keys, &[node])).await?;
                released += n;
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
        let users_on = format!("eph:users-on:{node}");
        let users: Vec<String> = self
            .run(self.query(redis::cmd("SMEMBERS").arg(&users_on).clone()))
            .await?;
        let mut pipe = redis::pipe();
        for u in users {
            pipe.cmd("HDEL").arg(format!("eph:where:{u}")).arg(node);
        }
        pipe.cmd("DEL")
            .arg(&users_on)
            .arg(format!("eph:member:{node}"))
            .arg(format!("eph:applied:{node}"));
        pipe.cmd("HDEL").arg(HEARTBEATS).arg(node);
        self.run::<()>(self.query_pipe(pipe)).await?;
        if let Some(bus) = self.bus() {
            bus.forgotten(node).await;
        }
        let _ = self.refresh_members().await;
        tracing::warn!(node_id = %node, released, "forgot a lost node");
        Ok(released)
    }

    /// How a live member's public listener is reached.
    fn url_of(&self, node: &str) -> Option<String> {
        self.members
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .find(|m| m.live && m.node_id == node)
            .and_then(|m| m.info.as_ref()?.advertise_url.clone())
    }

    /// The members as last seen (refreshed with every heartbeat).
    pub fn members(&self) -> Vec<Member> {
        self.members
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Lets go of the lease (a graceful stop), so the node id is free at once.
    pub async fn leave(&self) {
        self.write_until.store(0, Ordering::Release);
        let r: Result<u64, _> = self
            .run(self.script(
                RELEASE,
                &[&self.key("lease"), &self.key("member")],
                &[&self.instance],
            ))
            .await;
        if r.is_ok() {
            tracing::info!(node_id = %self.cfg.node_id, "left the cluster");
        }
    }

    fn key(&self, what: &str) -> String {
        format!("eph:{what}:{}", self.cfg.node_id)
    }

    fn lease_ms(&self) -> u64 {
        self.cfg.lease.as_millis() as u64
    }

    fn elapsed_ms(&self) -> u64 {
        self.origin.elapsed().as_millis() as u64
    }

    fn held(&self, epoch: u64, renewal_sent: u64) {
        self.epoch.store(epoch, Ordering::Release);
        self.write_until
            .store(renewal_sent + self.lease_ms() * 4 / 5, Ordering::Release);
        self.metrics.cluster_lease_held.set(1);
    }

    /// A script call, timed and counted.
    fn script<T: redis::FromRedisValue + Send + 'static>(
        &self,
        source: &'static str,
        keys: &[&str],
        args: &[&str],
    ) -> impl std::future::Future<Output = Result<T, RedisDown>> + Send + 'static {
        let keys: Vec<String> = keys.iter().map(|k| k.to_string()).collect();
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let mut conn = self.conn.clone();
        let metrics = Arc::clone(&self.metrics);
        async move {
            let script = redis::Script::new(source);
            let mut inv = script.prepare_invoke();
            for k in &keys {
                inv.key(k);
            }
            for a in &args {
                inv.arg(a);
            }
            let t = Instant::now();
            let r = inv.invoke_async::<T>(&mut conn).await;
            observe(&metrics, t, r)
        }
    }

    /// A command, timed and counted.
    pub(crate) fn query<T: redis::FromRedisValue + Send + 'static>(
        &self,
        cmd: redis::Cmd,
    ) -> impl std::future::Future<Output = Result<T, RedisDown>> + Send + 'static {
        let mut conn = self.conn.clone();
        let metrics = Arc::clone(&self.metrics);
        async move {
            let t = Instant::now();
            let r = cmd.query_async::<T>(&mut conn).await;
            observe(&metrics, t, r)
        }
    }

    /// A pipeline, timed and counted.
    pub(crate) fn query_pipe<T: redis::FromRedisValue + Send + 'static>(
        &self,
        pipe: redis::Pipeline,
    ) -> impl std::future::Future<Output = Result<T, RedisDown>> + Send + 'static {
        let mut conn = self.conn.clone();
        let metrics = Arc::clone(&self.metrics);
        async move {
            let t = Instant::now();
            let r = pipe.query_async::<T>(&mut conn).await;
            observe(&metrics, t, r)
        }
    }

    /// Runs a Redis future on the cluster's runtime, from async code.
    pub(crate) async fn run<T: Send + 'static>(
        &self,
        fut: impl std::future::Future<Output = Result<T, RedisDown>> + Send + 'static,
    ) -> Result<T, RedisDown> {
        self.rt.spawn(fut).await.unwrap_or(Err(RedisDown))
    }

    /// Runs a Redis future to its end, from a thread that may block (the
    /// blocking pool, where storage calls run; never an event loop).
    pub(crate) fn block_on<T>(
        &self,
        fut: impl std::future::Future<Output = Result<T, RedisDown>>,
    ) -> Result<T, RedisDown> {
        self.rt.block_on(fut)
    }

    /// One renewal: the lease (if still ours), the member record, the
    /// heartbeat. On losing the lease, tries to take it again (it lapsed
    /// while Redis was away); if another process has it, stays fenced.
    async fn renew(&self) -> Result<(), RedisDown> {
        let sent = self.elapsed_ms();
        let info = MemberInfo {
            node_id: self.cfg.node_id.clone(),
            advertise_url: self.advertised(),
            epoch: self.epoch(),
            started_at: self.started_at,
            heartbeat_at: now_ms(),
        };
        let json = serde_json::to_string(&info).unwrap_or_default();
        let renewed: u64 = self
            .script(
                RENEW,
                &[&self.key("lease"), &self.key("member"), HEARTBEATS],
                &[
                    &self.instance,
                    &self.lease_ms().to_string(),
                    &json,
                    &self.cfg.node_id,
                    &info.heartbeat_at.to_string(),
                ],
            )
            .await?;
        if renewed == 1 {
            self.held(self.epoch(), sent);
            return Ok(());
        }
        let epoch: u64 = self
            .script(
                ACQUIRE,
                &[&self.key("lease"), &self.key("epoch")],
                &[&self.instance, &self.lease_ms().to_string()],
            )
            .await?;
        if epoch > 0 {
            tracing::warn!(node_id = %self.cfg.node_id, epoch, "lease lapsed and was taken again");
            self.held(epoch, sent);
            // The member record comes with the next renewal, now ours.
            return Ok(());
        }
        self.write_until.store(0, Ordering::Release);
        self.metrics.cluster_lease_held.set(0);
        tracing::error!(
            node_id = %self.cfg.node_id,
            "another process holds this node's lease: this node stopped writing"
        );
        Ok(())
    }

    /// Reads every registered node: its last heartbeat, and its record if live.
    async fn refresh_members(&self) -> Result<(), RedisDown> {
        let beats: Vec<(String, u64)> = self
            .query(redis::cmd("HGETALL").arg(HEARTBEATS).clone())
            .await?;
        let keys: Vec<String> = beats
            .iter()
            .map(|(id, _)| format!("eph:member:{id}"))
            .collect();
        let infos: Vec<Option<String>> = if keys.is_empty() {
            Vec::new()
        } else {
            self.query(redis::cmd("MGET").arg(&keys).clone()).await?
        };
        let mut members: Vec<Member> = beats
            .into_iter()
            .zip(infos)
            .map(|((node_id, beat), info)| {
                let info = info.and_then(|j| serde_json::from_str::<MemberInfo>(&j).ok());
                Member {
                    node_id,
                    live: info.is_some(),
                    last_heartbeat_at: Some(beat),
                    info,
                }
            })
            .collect();
        members.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        let live = members.iter().filter(|m| m.live).count() as i64;
        let m = &self.metrics.cluster_members;
        m.get_or_create(&StateLabel { state: "live" }).set(live);
        m.get_or_create(&StateLabel { state: "down" })
            .set(members.len() as i64 - live);
        *self.members.write().unwrap_or_else(|p| p.into_inner()) = members;
        Ok(())
    }

    async fn heartbeat_loop(self: Arc<Self>) {
        let every = self.cfg.lease / 5;
        let mut reachable = true;
        loop {
            tokio::time::sleep(every).await;
            let renewed = self.renew().await;
            if renewed.is_err() && !self.may_write() {
                self.metrics.cluster_lease_held.set(0);
            }
            // Redis answers again after failing: the subscription may be
            // dead without having noticed (a restart mid-handshake), so
            // the listener subscribes afresh.
            match (reachable, renewed.is_ok()) {
                (true, false) => reachable = false,
                (false, true) => {
                    reachable = true;
                    self.redis_back.send_modify(|n| *n += 1);
                }
                _ => {}
            }
            let _ = self.refresh_members().await;
        }
    }

    /// Subscribes to this node's channels, within a bound (a connection
    /// made while Redis restarts may never answer).
    async fn subscribe(&self, bus_channel: &str) -> Option<redis::aio::PubSub> {
        let attempt = async {
            let mut pubsub = self.client.get_async_pubsub().await.ok()?;
            pubsub.subscribe(REVOKE_CHANNEL).await.ok()?;
            pubsub.subscribe(bus_channel).await.ok()?;
            Some(pubsub)
        };
        tokio::time::timeout(Duration::from_secs(3), attempt)
            .await
            .ok()
            .flatten()
    }

    /// Hears revocations and the bus, subscribing again (with a pause)
    /// whenever the subscription drops or Redis comes back after failing.
    async fn listen_loop(self: Arc<Self>) {
        use futures_util::StreamExt;
        let bus_channel = format!("eph:bus:{}", self.cfg.node_id);
        let mut back = self.redis_back.subscribe();
        let mut first = true;
        loop {
            match self.subscribe(&bus_channel).await {
                Some(mut pubsub) => {
                    back.borrow_and_update();
                    if !first {
                        if let Some(b) = self.bus.get() {
                            b.resubscribed();
                        }
                    }
                    first = false;
                    let mut stream = pubsub.on_message();
                    loop {
                        let msg = tokio::select! {
                            m = stream.next() => m,
                            _ = back.changed() => None,
                        };
                        let Some(msg) = msg else { break };
                        let Ok(payload) = msg.get_payload::<Vec<u8>>() else {
                            continue;
                        };
                        if msg.get_channel_name() == bus_channel {
                            if let Some(b) = self.bus.get() {
                                b.on_message(&payload);
                            }
                            continue;
                        }
                        if let Ok(r) = serde_json::from_slice::<Revocation>(&payload) {
                            self.metrics.cluster_revocations.inc();
                            if let Some(f) = self.on_revoke.get() {
                                f(r.user, r.device);
                            }
                        }
                    }
                    tracing::warn!("the cluster's channels dropped; subscribing again");
                }
                None => {
                    self.metrics.redis_errors.inc();
                    tracing::warn!("cannot subscribe to the cluster's channels");
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Tells every node (this one included) that a device's token is gone.
    pub(crate) fn publish_revocation(
        &self,
        user: UserId,
        device: DeviceId,
    ) -> impl std::future::Future<Output = Result<(), RedisDown>> + Send + 'static {
        let payload = serde_json::to_string(&Revocation { user, device }).unwrap_or_default();
        let q = self.query::<u64>(
            redis::cmd("PUBLISH")
                .arg(REVOKE_CHANNEL)
                .arg(payload)
                .clone(),
        );
        async move { q.await.map(|_| ()) }
    }
}

fn observe<T>(
    metrics: &Metrics,
    started: Instant,
    r: Result<T, redis::RedisError>,
) -> Result<T, RedisDown> {
    metrics
        .redis_latency
        .observe(started.elapsed().as_secs_f64());
    r.map_err(|e| {
        metrics.redis_errors.inc();
        // The kind and code only: a Redis error never carries our values
        // back, but the URL's password must not reach a log either.
        tracing::warn!(kind = ?e.kind(), code = ?e.code(), "Redis call failed");
        RedisDown
    })
}

/// An id as it appears in Redis keys.
pub(crate) fn hex_id(id: Id) -> String {
    ephemera_actors::ids::to_hex(&id.0)
}
