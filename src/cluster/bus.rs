//! What crosses between nodes: conversation placement, the calls a node
//! makes on another node's conversations, the users' inboxes (cursors and
//! event references, in Redis), and live delivery.
//!
//! # Placement
//! A conversation belongs to the node that created it (the first message
//! of a direct conversation, or the group's creation): `eph:owner:{id}`,
//! set once with `NX`. Its rows live in that node's RocksDB and its actor
//! runs there alone; the node's lease fences a stale process (see the
//! module above). While the owner is down, calls to its conversations are
//! answered `unavailable` with `retry_after_ms`; nothing else waits.
//!
//! # Inboxes and delivery
//! The writer of the owner node commits each inbox event to its own
//! `outbound` family with the message (so an ack means the event will
//! reach Redis, even across `kill -9` or a Redis restart). The forwarder
//! here hands those events to Redis in commit order, in one script per
//! batch: the user's cursor (`INCR eph:cursor:{user}`), the event's
//! reference in `eph:inbox:{user}` (what `sync` reads), and the live frames
//! published to the nodes where the user has devices (`eph:where:{user}`,
//! the session registry), in the script, so every node hears a user's
//! events in cursor order. A batch is applied once: the script skips
//! outbound seqs at or below the node's `eph:applied:{node}`. Only then
//! are the outbound rows deleted. Content crosses Redis only in published
//! frames, which Redis never writes to disk.
//!
//! # Calls
//! Requests and replies travel on the nodes' channels `eph:bus:{node}`,
//! each waited for at most [`CALL_TIMEOUT`].
//!
//! # Presence
//! A user with a device on some node has `eph:online:{user}`, living one
//! lease: set when their first device attaches to a node ([`JOIN`], which
//! says whether they were online nowhere before), renewed for every user
//! here by the registry loop every third of a lease, deleted when their
//! last device anywhere leaves ([`LEAVE`], which keeps
//! `eph:last-seen:{user}`). Their contacts hear `online` and `offline`
//! from those two scripts' verdicts, and a device that attaches learns
//! which contacts are online anywhere with one `MGET`. A node killed with
//! `kill -9` stops renewing, so its users' keys lapse within a lease; one
//! surviving node (claiming `eph:reaped:{node}:{epoch}` with `SET NX`)
//! then takes that node's users out of the registry (`eph:users-on:{node}`,
//! [`REAP`]) and tells the contacts of those now online nowhere. A node
//! that restarts does the same for its own previous life. A node reaped
//! while alive (its lease lapsed while Redis was away) registers its users
//! again with its next renewal ([`RENEW_PRESENCE`]), and they are
//! announced `online` again. Typing is not
//! stored: it flows through the conversation's owner as before.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock, Weak};
use std::time::Duration;

use ephemera_actors::call::{CallWire, Key};
use ephemera_actors::directory::Directory;
use ephemera_actors::frames::{ErrorCode, FrameError};
use ephemera_actors::ids::{ConvId, DeviceId, MsgId, UserId};
use ephemera_actors::remote::{Attaching, BoxFuture, ConvAnswer, ConvCall, Place, Router};
use ephemera_actors::store::{
    now_ms, Access, BurnReason, ConversationRecord, Delivery, Event, EventRecord, Fanout,
    MediaGrant, ReadError, StoredMessage, ViewPolicy,
};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use super::{hex_id, Cluster, RedisDown};
use crate::store::writer::{OutEntry, Outbound};
use crate::store::RocksStore;

/// How long a call to another node is waited for.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(3);
/// Outbound events handed to Redis in one script at most.
const APPEND_BATCH: usize = 256;

/// Appends a batch of inbox events (see the module doc). KEYS[1] is the
/// node's applied seq; ARGV: the first seq, then six per event: user,
/// record, until, except_device, live event ('' for none), and the media
/// grant of a timed media message ('' for none; the blob and key are here,
/// so the nodes that deliver it hand this one out). Returns the cursors (0
/// for an event applied before), and the positions (from 1) of the live
/// events newly applied for users on no live node: those get a push, once.
const APPEND: &str = r#"
local applied = tonumber(redis.call('GET', KEYS[1]) or '0')
local seq = tonumber(ARGV[1])
local out = {}
local nowhere = {}
local bynode = {}
local where = {}
local live = {}
for i = 2, #ARGV, 6 do
  local user = ARGV[i]
  if seq > applied then
    local c = redis.call('INCR', 'eph:cursor:' .. user)
    redis.call('ZADD', 'eph:inbox:' .. user, c, c .. ' ' .. ARGV[i+2] .. ' ' .. ARGV[i+1])
    redis.call('ZADD', 'eph:inbox-expiry', ARGV[i+2], user .. ':' .. c)
    out[#out+1] = c
    if ARGV[i+4] ~= '' then
      local nodes = where[user]
      if nodes == nil then
        nodes = redis.call('HKEYS', 'eph:where:' .. user)
        where[user] = nodes
        live[user] = false
        for _, n in ipairs(nodes) do
          if redis.call('EXISTS', 'eph:lease:' .. n) == 1 then live[user] = true; break end
        end
      end
      if not live[user] then nowhere[#nowhere+1] = #out end
      local x = 'null'
      if ARGV[i+3] ~= '' then x = '"' .. ARGV[i+3] .. '"' end
      local g = ''
      if ARGV[i+5] ~= '' then g = ',"g":' .. ARGV[i+5] end
      local item = '{"u":"' .. user .. '","c":' .. c .. ',"x":' .. x .. ',"e":' .. ARGV[i+4] .. g .. '}'
      for _, n in ipairs(nodes) do
        local t = bynode[n]
        if t == nil then t = {}; bynode[n] = t end
        t[#t+1] = item
      end
    end
  else
    out[#out+1] = 0
  end
  seq = seq + 1
end
if seq - 1 > applied then redis.call('SET', KEYS[1], seq - 1) end
for n, items in pairs(bynode) do
  redis.call('PUBLISH', 'eph:bus:' .. n, '{"t":"d","d":[' .. table.concat(items, ',') .. ']}')
end
return {out, nowhere}
"#;

/// Registers a user on this node: KEYS `eph:where:{user}`,
/// `eph:users-on:{node}`, `eph:online:{user}`; ARGV node, user, lease (ms).
/// Returns 1 if the user was online nowhere before.
const JOIN: &str = r"
redis.call('HSET', KEYS[1], ARGV[1], 1)
redis.call('SADD', KEYS[2], ARGV[2])
if redis.call('SET', KEYS[3], '1', 'PX', ARGV[3], 'GET') then return 0 end
return 1";

/// A user's last device here left: KEYS as [`JOIN`]'s, then
/// `eph:last-seen:{user}`; ARGV node, user, now, how long last-seen is
/// kept (ms). Returns 1 if the user is now online on no live node: their
/// presence and the registry entries of dead nodes go (a dead node's reap
/// then finds nothing of them to announce again).
const LEAVE: &str = r"
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('SREM', KEYS[2], ARGV[2])
for _, n in ipairs(redis.call('HKEYS', KEYS[1])) do
  if redis.call('EXISTS', 'eph:lease:' .. n) == 1 then return 0 end
end
redis.call('DEL', KEYS[1], KEYS[3])
redis.call('SET', KEYS[4], ARGV[3], 'PX', ARGV[4])
return 1";

/// Renews the presence of users here: KEYS `eph:users-on:{node}`; ARGV
/// node, lease (ms), then the users. Registers again a user the registry
/// lost, and returns those whose presence was gone.
const RENEW_PRESENCE: &str = r"
local back = {}
for i = 3, #ARGV do
  local u = ARGV[i]
  if redis.call('HSETNX', 'eph:where:' .. u, ARGV[1], 1) == 1 then
    redis.call('SADD', KEYS[1], u)
  end
  if not redis.call('SET', 'eph:online:' .. u, '1', 'PX', ARGV[2], 'GET') then
    back[#back+1] = u
  end
end
return back";

/// Takes up to ARGV[2] users of a node that is down (or of this node's
/// previous life: ARGV[3] = '1') out of the registry: KEYS
/// `eph:users-on:{node}`, `eph:lease:{node}`; ARGV node, batch, own,
/// last seen (ms), how long last-seen is kept (ms). Returns how many were
/// taken ('-1': the node is back, it cleans up itself), then the users
/// now online on no live node.
const REAP: &str = r"
if ARGV[3] == '0' and redis.call('EXISTS', KEYS[2]) == 1 then return {'-1'} end
local users = redis.call('SPOP', KEYS[1], ARGV[2])
local out = {tostring(#users)}
for _, u in ipairs(users) do
  local w = 'eph:where:' .. u
  if redis.call('HDEL', w, ARGV[1]) == 1 then
    local live = false
    for _, n in ipairs(redis.call('HKEYS', w)) do
      if redis.call('EXISTS', 'eph:lease:' .. n) == 1 then live = true; break end
    end
    if not live then
      redis.call('DEL', w, 'eph:online:' .. u)
      redis.call('SET', 'eph:last-seen:' .. u, ARGV[4], 'PX', ARGV[5])
      out[#out+1] = u
    end
  end
end
return out";

/// Users taken out of the registry per [`REAP`] call, and presence keys
/// renewed per pipeline.
const PRESENCE_BATCH: usize = 500;
/// How long a user's last-seen time is kept after they went offline: the
/// longest a message lives.
const LAST_SEEN_KEPT: Duration = Duration::from_secs(7 * 86_400);
/// How long a reap's claim is kept (a node down longer is reaped again:
/// harmless, its users are gone from the registry by then).
const REAPED_KEPT: Duration = Duration::from_secs(86_400);

/// Forgets the inbox references whose life is over (a message's at its
/// expiry, other events' after the week `sync` replays them): KEYS[1] is
/// the index of every reference by its end; ARGV: now, how many at most.
const TRIM: &str = r#"
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
for _, m in ipairs(due) do
  local user, c = string.match(m, '^(%x+):(%d+)$')
  if user then redis.call('ZREMRANGEBYSCORE', 'eph:inbox:' .. user, c, c) end
  redis.call('ZREM', KEYS[1], m)
end
return #due
"#;

/// How often a node trims the inboxes, and how many references at most a time.
const TRIM_EVERY: Duration = Duration::from_secs(1);
const TRIM_BATCH: usize = 1_000;

/// A read another node makes of a conversation's rows here (for `sync`).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "r", rename_all = "snake_case")]
enum ReadReq {
    Message {
        msg: MsgId,
    },
    Tombstone {
        msg: MsgId,
    },
    Reaction {
        msg: MsgId,
        by: UserId,
    },
    Conversation {
        conv: ConvId,
    },
    /// The conversations of a user that this node owns.
    Memberships {
        user: UserId,
    },
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "r", rename_all = "snake_case")]
enum ReadAnswer {
    Message {
        message: Option<Box<StoredMessage>>,
        /// For timed media: the grant (minted here, where its key is).
        #[serde(default)]
        grant: Option<MediaGrant>,
    },
    Tombstone {
        reason: Option<BurnReason>,
    },
    Reaction {
        emoji: Option<String>,
    },
    Conversation {
        record: Option<Box<ConversationRecord>>,
    },
    Memberships {
        convs: Vec<ConvId>,
    },
    Failed,
}

#[derive(Debug, Deserialize)]
struct WireDelivery {
    u: UserId,
    c: u64,
    x: Option<DeviceId>,
    e: Event,
    #[serde(default)]
    g: Option<MediaGrant>,
}

/// What travels on a node's channel.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "t")]
enum BusMsg {
    /// Live events for users with devices on this node (from [`APPEND`]).
    #[serde(rename = "d")]
    Deliver { d: Vec<serde_json::Value> },
    /// A call on one of this node's conversations.
    #[serde(rename = "q")]
    Call {
        id: u64,
        from: String,
        call: ConvCall,
    },
    /// The answer to a call this node made.
    #[serde(rename = "a")]
    Answer { id: u64, answer: ConvAnswer },
    /// A read of this node's rows.
    #[serde(rename = "m")]
    Read {
        id: u64,
        from: String,
        read: ReadReq,
    },
    /// The answer to a read this node made.
    #[serde(rename = "n")]
    ReadAnswer { id: u64, answer: ReadAnswer },
    /// A lost node was forgotten: placements cached for it are stale.
    #[serde(rename = "f")]
    Forgot { node: String },
    /// A call's message (cluster mode: see `ephemera_actors::call`).
    #[serde(rename = "c")]
    CallMsg { from: String, wire: CallWire },
    /// A frame that is not stored (typing, presence) for a user's devices here.
    #[serde(rename = "e")]
    Ephemeral {
        user: UserId,
        text: String,
        except: Option<DeviceId>,
    },
}

enum Waiting {
    Call(oneshot::Sender<ConvAnswer>),
    Read(oneshot::Sender<ReadAnswer>),
}

/// The cross-node side of this node.
pub struct Bus {
    cluster: Arc<Cluster>,
    store: Weak<RocksStore>,
    dir: OnceLock<Arc<Directory>>,
    /// Notified once `dir` is set.
    served: tokio::sync::Notify,
    owners: RwLock<HashMap<ConvId, Place>>,
    waiting: Mutex<HashMap<u64, Waiting>>,
    next_id: AtomicU64,
    here: mpsc::UnboundedSender<(UserId, bool)>,
    /// Where the writer hands committed events (see [`Forwarder`]).
    forward: mpsc::UnboundedSender<Vec<OutEntry>>,
    /// Calls' messages to other nodes, published in the order they were
    /// sent (an answer before its ice).
    calls_out: mpsc::Sender<(Arc<str>, CallWire)>,
}

/// Calls' messages waiting to be published, at most.
const CALLS_OUT_QUEUE: usize = 4_096;

/// The writer's end of the forwarder.
pub struct Forwarder(mpsc::UnboundedSender<Vec<OutEntry>>);

impl Outbound for Forwarder {
    fn forward(&self, entries: Vec<OutEntry>) {
        if !entries.is_empty() {
            let _ = self.0.send(entries);
        }
    }
}

impl Bus {
    /// The bus of `cluster`. Events left outbound by a previous run are
    /// queued first (call before the writer starts).
    pub fn new(cluster: &Arc<Cluster>, store: &Arc<RocksStore>) -> anyhow::Result<Arc<Bus>> {
        let (here_tx, here_rx) = mpsc::unbounded_channel();
        let (fwd_tx, fwd_rx) = mpsc::unbounded_channel();
        let (calls_tx, calls_rx) = mpsc::channel(CALLS_OUT_QUEUE);
        let bus = Arc::new(Bus {
            cluster: Arc::clone(cluster),
            store: Arc::downgrade(store),
            dir: OnceLock::new(),
            served: tokio::sync::Notify::new(),
            owners: RwLock::new(HashMap::new()),
            waiting: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            here: here_tx,
            forward: fwd_tx,
            calls_out: calls_tx,
        });
        let left = store
            .outbound_pending(usize::MAX)
            .map_err(|e| anyhow::anyhow!("reading the outbound queue: {e}"))?;
        if !left.is_empty() {
            tracing::info!(events = left.len(), "resuming the outbound queue");
            let entries = left
                .into_iter()
                .map(|(seq, until, row)| OutEntry {
                    seq,
                    user: row.user,
                    event: live_event(&**store, &row.record),
                    record: row.record,
                    until,
                    except_device: row.except_device,
                })
                .collect();
            let _ = bus.forward.send(entries);
        }
        let _ = cluster.bus.set(Arc::clone(&bus));
        let me = Arc::clone(&bus);
        cluster
            .rt
            .spawn(async move { me.registry_loop(here_rx).await });
        let me = Arc::clone(&bus);
        cluster
            .rt
            .spawn(async move { me.forward_loop(fwd_rx).await });
        let me = Arc::clone(&bus);
        cluster.rt.spawn(async move { me.trim_loop().await });
        let me = Arc::clone(&bus);
        cluster.rt.spawn(async move { me.reap_loop().await });
        let me = Arc::clone(&bus);
        cluster
            .rt
            .spawn(async move { me.calls_out_loop(calls_rx).await });
        Ok(bus)
    }

    /// What the storage writer hands committed events to.
    pub fn forwarder(&self) -> Arc<dyn Outbound> {
        Arc::new(Forwarder(self.forward.clone()))
    }

    /// Starts serving: calls from other nodes reach `dir`'s actors, and
    /// events reach its sessions.
    pub fn serve(&self, dir: Arc<Directory>) {
        let _ = self.dir.set(dir);
        self.served.notify_one();
    }

    fn channel(node: &str) -> String {
        format!("eph:bus:{node}")
    }

    async fn publish(&self, node: &str, msg: &BusMsg) -> Result<(), RedisDown> {
        let payload = serde_json::to_string(msg).map_err(|_| RedisDown)?;
        let _: u64 = self
            .cluster
            .query(
                redis::cmd("PUBLISH")
                    .arg(Self::channel(node))
                    .arg(payload)
                    .clone(),
            )
            .await?;
        Ok(())
    }

    fn unavailable(&self) -> FrameError {
        FrameError {
            retry_after_ms: Some(self.cluster.lease_ms()),
            ..FrameError::new(
                ErrorCode::Unavailable,
                "the node that holds this conversation is down, retry",
            )
        }
    }

    fn is_live(&self, node: &str) -> bool {
        node == self.cluster.node_id()
            || self
                .cluster
                .members()
                .iter()
                .any(|m| m.live && m.node_id == node)
    }

    /// Asks `node` and waits for its answer (`None`: no answer in time).
    async fn ask<T>(
        self: &Arc<Self>,
        node: &str,
        make: impl FnOnce(u64) -> BusMsg,
        wait: impl FnOnce(oneshot::Sender<T>) -> Waiting,
    ) -> Option<T> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.lock_waiting().insert(id, wait(tx));
        let sent = self.publish(node, &make(id)).await;
        let answer = match sent {
            Ok(()) => tokio::time::timeout(CALL_TIMEOUT, rx).await.ok()?.ok(),
            Err(_) => None,
        };
        self.lock_waiting().remove(&id);
        answer
    }

    fn lock_waiting(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Waiting>> {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Where `conv` lives: the cache, else Redis (claimed for this node if
    /// nobody owns it and `create`).
    async fn place(
        self: Arc<Self>,
        conv: ConvId,
        create: bool,
    ) -> Result<Option<Place>, RedisDown> {
        if let Some(p) = self.cached(conv) {
            return Ok(Some(p));
        }
        let key = format!("eph:owner:{}", hex_id(conv));
        let me = self.cluster.node_id();
        let owner: Option<String> = if create {
            // One round trip: set if absent, and say who held it before
            // (nobody: it is ours now).
            let before: Option<String> = self
                .cluster
                .query(
                    redis::cmd("SET")
                        .arg(&key)
                        .arg(me)
                        .arg("NX")
                        .arg("GET")
                        .clone(),
                )
                .await?;
            Some(before.unwrap_or_else(|| me.to_owned()))
        } else {
            self.cluster
                .query(redis::cmd("GET").arg(&key).clone())
                .await?
        };
        let Some(owner) = owner else {
            return Ok(None);
        };
        let place = if owner == self.cluster.node_id() {
            Place::Local
        } else {
            Place::Remote(owner.into())
        };
        self.owners
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(conv, place.clone());
        Ok(Some(place))
    }

    /// Where `id` (a conversation, a story, a user's home) lives; with
    /// `claim`, one nobody owns yet becomes this node's.
    pub async fn owner(
        self: &Arc<Self>,
        id: ConvId,
        claim: bool,
    ) -> Result<Option<Place>, RedisDown> {
        let me = Arc::clone(self);
        self.cluster
            .run(async move { me.place(id, claim).await })
            .await
    }

    /// A lost node was forgotten (its placements released in Redis): this
    /// node and every other live one drop what they cached of them.
    pub async fn forgotten(&self, node: &str) {
        self.forget_cached(node);
        let msg = BusMsg::Forgot {
            node: node.to_owned(),
        };
        for m in self.cluster.members() {
            if m.live && m.node_id != self.cluster.node_id() {
                let _ = self.publish(&m.node_id, &msg).await;
            }
        }
    }

    fn forget_cached(&self, node: &str) {
        self.owners
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|_, place| !matches!(place, Place::Remote(n) if &**n == node));
    }

    /// Claims a new conversation (a group being created) for this node.
    pub async fn claim(self: &Arc<Self>, conv: ConvId) -> Result<bool, RedisDown> {
        Ok(self.owner(conv, true).await? == Some(Place::Local))
    }

    /// The owner of `conv` when it is another node, from a blocking
    /// storage call (`None`: here, or nobody).
    pub fn remote_owner_blocking(
        self: &Arc<Self>,
        conv: ConvId,
    ) -> Result<Option<Arc<str>>, RedisDown> {
        let me = Arc::clone(self);
        match self
            .cluster
            .block_on(async move { me.place(conv, false).await })?
        {
            Some(Place::Remote(node)) => Ok(Some(node)),
            _ => Ok(None),
        }
    }

    fn read_blocking(
        self: &Arc<Self>,
        node: Arc<str>,
        read: ReadReq,
    ) -> Result<ReadAnswer, RedisDown> {
        if !self.is_live(&node) {
            return Err(RedisDown);
        }
        let me = Arc::clone(self);
        let from = self.cluster.node_id().to_owned();
        let answer = self.cluster.block_on(async move {
            Ok(me
                .ask(
                    &node,
                    move |id| BusMsg::Read { id, from, read },
                    Waiting::Read,
                )
                .await)
        })?;
        match answer {
            Some(ReadAnswer::Failed) | None => Err(RedisDown),
            Some(a) => Ok(a),
        }
    }

    /// A message row of a conversation another node owns.
    pub fn remote_message(
        self: &Arc<Self>,
        node: Arc<str>,
        msg: MsgId,
    ) -> Result<Option<StoredMessage>, RedisDown> {
        match self.read_blocking(node, ReadReq::Message { msg })? {
            ReadAnswer::Message { message, grant } => {
                self.remember(message.as_deref(), grant);
                Ok(message.map(|m| *m))
            }
            _ => Err(RedisDown),
        }
    }

    /// Keeps the owner's grant of a message's media for readers here.
    fn remember(&self, message: Option<&StoredMessage>, grant: Option<MediaGrant>) {
        let media = message.and_then(|m| m.media.as_ref());
        if let (Some(md), Some(g), Some(dir)) = (media, grant, self.dir.get()) {
            dir.deps().media.remember(md.id, g);
        }
    }

    /// Why a message of a conversation another node owns is gone.
    pub fn remote_tombstone(
        self: &Arc<Self>,
        node: Arc<str>,
        msg: MsgId,
    ) -> Result<Option<BurnReason>, RedisDown> {
        match self.read_blocking(node, ReadReq::Tombstone { msg })? {
            ReadAnswer::Tombstone { reason } => Ok(reason),
            _ => Err(RedisDown),
        }
    }

    /// A reaction to a message of a conversation another node owns.
    pub fn remote_reaction(
        self: &Arc<Self>,
        node: Arc<str>,
        msg: MsgId,
        by: UserId,
    ) -> Result<Option<String>, RedisDown> {
        match self.read_blocking(node, ReadReq::Reaction { msg, by })? {
            ReadAnswer::Reaction { emoji } => Ok(emoji),
            _ => Err(RedisDown),
        }
    }

    /// The record of a conversation another node owns.
    pub fn remote_conversation(
        self: &Arc<Self>,
        node: Arc<str>,
        conv: ConvId,
    ) -> Result<Option<ConversationRecord>, RedisDown> {
        match self.read_blocking(node, ReadReq::Conversation { conv })? {
            ReadAnswer::Conversation { record } => Ok(record.map(|r| *r)),
            _ => Err(RedisDown),
        }
    }

    /// The conversations of `user` that the other live nodes own (a node
    /// that does not answer in time is left out: its conversations are
    /// unavailable until it is back).
    pub fn remote_memberships(self: &Arc<Self>, user: UserId) -> Vec<ConvId> {
        let me = self.cluster.node_id();
        let nodes: Vec<Arc<str>> = self
            .cluster
            .members()
            .into_iter()
            .filter(|m| m.live && m.node_id != me)
            .map(|m| Arc::from(m.node_id))
            .collect();
        let bus = Arc::clone(self);
        let from = me.to_owned();
        let answers: Result<Vec<Option<ReadAnswer>>, RedisDown> =
            self.cluster.block_on(async move {
                let asks = nodes.into_iter().map(|node| {
                    let bus = Arc::clone(&bus);
                    let from = from.clone();
                    async move {
                        bus.ask(
                            &node,
                            move |id| BusMsg::Read {
                                id,
                                from,
                                read: ReadReq::Memberships { user },
                            },
                            Waiting::Read,
                        )
                        .await
                    }
                });
                Ok(futures_util::future::join_all(asks).await)
            });
        answers
            .unwrap_or_default()
            .into_iter()
            .flat_map(|a| match a {
                Some(ReadAnswer::Memberships { convs }) => convs,
                _ => Vec::new(),
            })
            .collect()
    }

    /// A user's inbox after `after` (cursor order): the references the
    /// forwarders appended.
    pub fn inbox_after(
        &self,
        user: UserId,
        after: u64,
        limit: usize,
    ) -> Result<Vec<(u64, EventRecord)>, RedisDown> {
        let members: Vec<String> = self.cluster.block_on(
            self.cluster.query(
                redis::cmd("ZRANGEBYSCORE")
                    .arg(format!("eph:inbox:{}", hex_id(user)))
                    .arg(format!("({after}"))
                    .arg("+inf")
                    .arg("LIMIT")
                    .arg(0)
                    .arg(limit)
                    .clone(),
            ),
        )?;
        Ok(members
            .iter()
            .filter_map(|m| {
                let mut parts = m.splitn(3, ' ');
                let cursor = parts.next()?.parse().ok()?;
                let _until: u64 = parts.next()?.parse().ok()?;
                let rec = serde_json::from_str(parts.next()?).ok()?;
                Some((cursor, rec))
            })
            .collect())
    }

    /// The session registry and presence (see the module doc), kept in
    /// the order users come and go, with every user here renewed every
    /// third of a lease.
    async fn registry_loop(self: Arc<Self>, mut rx: mpsc::UnboundedReceiver<(UserId, bool)>) {
        let node = self.cluster.node_id().to_owned();
        let users_here = format!("eph:users-on:{node}");
        // A restart forgets the devices this node had before, and tells
        // the contacts of those users who are online nowhere now (once
        // the directory is there to tell them).
        self.served.notified().await;
        self.reap(&node, true, now_ms()).await;
        let lease = self.cluster.lease_ms().to_string();
        let kept = (LAST_SEEN_KEPT.as_millis() as u64).to_string();
        let mut here: HashSet<UserId> = HashSet::new();
        let mut renew = tokio::time::interval(self.cluster.cfg.lease / 3);
        renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let (user, came) = tokio::select! {
                m = rx.recv() => match m {
                    Some(m) => m,
                    None => return,
                },
                _ = renew.tick() => {
                    self.renew_presence(&here).await;
                    continue;
                }
            };
            let hex = hex_id(user);
            let (where_key, online_key) = (format!("eph:where:{hex}"), format!("eph:online:{hex}"));
            let seen_key = format!("eph:last-seen:{hex}");
            let now = now_ms();
            let now_text = now.to_string();
            // Retried until Redis takes it: a lost registration would
            // leave the user's devices here without their events.
            let changed: u64 = loop {
                let r = if came {
                    self.cluster
                        .script(
                            JOIN,
                            &[&where_key, &users_here, &online_key],
                            &[&node, &hex, &lease],
                        )
                        .await
                } else {
                    self.cluster
                        .script(
                            LEAVE,
                            &[&where_key, &users_here, &online_key, &seen_key],
                            &[&node, &hex, &now_text, &kept],
                        )
                        .await
                };
                match r {
                    Ok(v) => break v,
                    Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            };
            if came {
                here.insert(user);
            } else {
                here.remove(&user);
            }
            if changed == 1 {
                if let Some(dir) = self.dir.get() {
                    let last_seen = (!came).then_some(now);
                    self.cluster.rt.spawn(ephemera_actors::user::announce(
                        Arc::clone(dir),
                        user,
                        came,
                        last_seen,
                    ));
                }
            }
        }
    }

    /// Renews the presence of every user here, a script per batch, and
    /// says again that they are here where Redis forgot it (a reap while
    /// this node's lease had lapsed, Redis restarted without its data):
    /// their contacts hear `online` again if their presence was gone.
    async fn renew_presence(&self, here: &HashSet<UserId>) {
        let node = self.cluster.node_id().to_owned();
        let users_here = format!("eph:users-on:{node}");
        let lease = self.cluster.lease_ms().to_string();
        let users: Vec<String> = here.iter().map(|u| hex_id(*u)).collect();
        for chunk in users.chunks(PRESENCE_BATCH) {
            let mut args: Vec<&str> = vec![&node, &lease];
            args.extend(chunk.iter().map(String::as_str));
            let Ok(back) = self
                .cluster
                .script::<Vec<String>>(RENEW_PRESENCE, &[&users_here], &args)
                .await
            else {
                continue;
            };
            let Some(dir) = self.dir.get() else { continue };
            for user in back
                .iter()
                .filter_map(|u| ephemera_actors::ids::Id::parse(u))
            {
                self.cluster.rt.spawn(ephemera_actors::user::announce(
                    Arc::clone(dir),
                    user,
                    true,
                    None,
                ));
            }
        }
    }

    /// Takes `node`'s users out of the registry (`own`: this node's
    /// previous life), batch by batch, and tells the contacts of those
    /// now online nowhere, with `last_seen`.
    async fn reap(&self, node: &str, own: bool, last_seen: u64) {
        let keys = [format!("eph:users-on:{node}"), format!("eph:lease:{node}")];
        let args = [
            node.to_owned(),
            PRESENCE_BATCH.to_string(),
            if own { "1" } else { "0" }.to_owned(),
            last_seen.to_string(),
            (LAST_SEEN_KEPT.as_millis() as u64).to_string(),
        ];
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut offline = 0usize;
        loop {
            let Ok(out) = self.cluster.script::<Vec<String>>(REAP, &keys, &args).await else {
                break;
            };
            let taken: i64 = out.first().and_then(|t| t.parse().ok()).unwrap_or(-1);
            if let Some(dir) = self.dir.get() {
                for user in out
                    .iter()
                    .skip(1)
                    .filter_map(|u| ephemera_actors::ids::Id::parse(u))
                {
                    offline += 1;
                    ephemera_actors::user::announce(Arc::clone(dir), user, false, Some(last_seen))
                        .await;
                }
            }
            if taken < PRESENCE_BATCH as i64 {
                break;
            }
        }
        if !own && offline > 0 {
            tracing::info!(node_id = %node, users = offline, "a down node's users are offline");
        }
    }

    /// Publishes calls' messages, in order.
    async fn calls_out_loop(self: Arc<Self>, mut rx: mpsc::Receiver<(Arc<str>, CallWire)>) {
        let from = self.cluster.node_id().to_owned();
        while let Some((node, wire)) = rx.recv().await {
            let msg = BusMsg::CallMsg {
                from: from.clone(),
                wire,
            };
            let _ = self.publish(&node, &msg).await;
        }
    }

    /// Watches for nodes that went down: one surviving node reaps each
    /// (node, epoch) once (the claim is `SET NX`).
    async fn reap_loop(self: Arc<Self>) {
        let mut seen: HashSet<(String, u64)> = HashSet::new();
        let me = self.cluster.node_id().to_owned();
        loop {
            tokio::time::sleep(self.cluster.cfg.lease / 5).await;
            let down: Vec<(String, u64)> = self
                .cluster
                .members()
                .into_iter()
                .filter(|m| !m.live && m.node_id != me)
                .map(|m| (m.node_id, m.last_heartbeat_at.unwrap_or(0)))
                .collect();
            if down.is_empty() {
                continue;
            }
            let keys: Vec<String> = down.iter().map(|(n, _)| format!("eph:epoch:{n}")).collect();
            let Ok(epochs) = self
                .cluster
                .query::<Vec<Option<u64>>>(redis::cmd("MGET").arg(&keys).clone())
                .await
            else {
                continue;
            };
            for ((node, beat), epoch) in down.into_iter().zip(epochs) {
                let Some(epoch) = epoch else { continue };
                if seen.contains(&(node.clone(), epoch)) {
                    continue;
                }
                let claimed: Result<Option<String>, _> = self
                    .cluster
                    .query(
                        redis::cmd("SET")
                            .arg(format!("eph:reaped:{node}:{epoch}"))
                            .arg(&me)
                            .arg("NX")
                            .arg("PX")
                            .arg(REAPED_KEPT.as_millis() as u64)
                            .clone(),
                    )
                    .await;
                match claimed {
                    Ok(Some(_)) => self.reap(&node, false, beat).await,
                    Ok(None) => {}
                    Err(_) => continue,
                }
                seen.insert((node, epoch));
            }
        }
    }

    /// Hands committed events to Redis in seq order, retrying until Redis
    /// takes them, then forgets them locally.
    async fn forward_loop(self: Arc<Self>, mut rx: mpsc::UnboundedReceiver<Vec<OutEntry>>) {
        let mut queue: Vec<OutEntry> = Vec::new();
        loop {
            if queue.is_empty() {
                match rx.recv().await {
                    Some(more) => queue.extend(more),
                    None => return,
                }
            }
            while queue.len() < APPEND_BATCH {
                match rx.try_recv() {
                    Ok(more) => queue.extend(more),
                    Err(_) => break,
                }
            }
            let take = queue.len().min(APPEND_BATCH);
            let batch: Vec<OutEntry> = queue.drain(..take).collect();
            let mut pause = Duration::from_millis(50);
            while self.append(&batch).await.is_err() {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(1));
            }
            if let (Some(last), Some(store)) = (batch.last(), self.store.upgrade()) {
                let seq = last.seq;
                let _ = tokio::task::spawn_blocking(move || store.outbound_done(seq)).await;
            }
        }
    }

    /// Every node trims (the script is atomic, so they never trim one
    /// reference twice): what `sync` may no longer replay leaves Redis
    /// within a second of its end.
    async fn trim_loop(self: Arc<Self>) {
        loop {
            tokio::time::sleep(TRIM_EVERY).await;
            loop {
                let now = ephemera_actors::store::now_ms().to_string();
                let batch = TRIM_BATCH.to_string();
                let trimmed: Result<u64, _> = self
                    .cluster
                    .script(TRIM, &["eph:inbox-expiry"], &[&now, &batch])
                    .await;
                if !matches!(trimmed, Ok(n) if n as usize == TRIM_BATCH) {
                    break;
                }
            }
        }
    }

    async fn append(&self, batch: &[OutEntry]) -> Result<(), RedisDown> {
        let Some(first) = batch.first() else {
            return Ok(());
        };
        let mut args: Vec<String> = Vec::with_capacity(1 + batch.len() * 6);
        args.push(first.seq.to_string());
        for e in batch {
            args.push(hex_id(e.user));
            args.push(serde_json::to_string(&e.record).map_err(|_| RedisDown)?);
            args.push(e.until.to_string());
            args.push(e.except_device.map(hex_id).unwrap_or_default());
            args.push(match &e.event {
                Some(ev) => serde_json::to_string(ev).map_err(|_| RedisDown)?,
                None => String::new(),
            });
            args.push(match (&e.event, self.dir.get()) {
                (Some(Event::Message(m)), Some(dir)) => match timed_grant(dir, m) {
                    Some(g) => serde_json::to_string(&g).map_err(|_| RedisDown)?,
                    None => String::new(),
                },
                _ => String::new(),
            });
        }
        let key = format!("eph:applied:{}", self.cluster.node_id());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (cursors, nowhere): (Vec<u64>, Vec<usize>) =
            self.cluster.script(APPEND, &[&key], &args).await?;
        self.cluster
            .metrics
            .cluster_events_out
            .inc_by(cursors.iter().filter(|c| **c > 0).count() as u64);
        // PROTOCOL 9: a new message for a user online nowhere is pushed,
        // here (the owner) and once (the script applies an event once).
        let push = self.dir.get().and_then(|d| d.deps().push.clone());
        if let Some(push) = push {
            let now = now_ms();
            for e in nowhere.iter().filter_map(|i| batch.get(i.wrapping_sub(1))) {
                if let Some(Event::Message(m)) = &e.event {
                    // One's own message reaches one's other devices by
                    // sync, not by a push; an expired one is no news.
                    if m.from != e.user && m.expires_at > now {
                        push.offline(e.user, m);
                    }
                }
            }
        }
        Ok(())
    }

    /// One message on this node's channel.
    pub(super) fn on_message(self: &Arc<Self>, payload: &[u8]) {
        let Some(dir) = self.dir.get() else {
            return;
        };
        let msg: BusMsg = match serde_json::from_slice(payload) {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "undecodable message on the bus");
                return;
            }
        };
        match msg {
            BusMsg::Deliver { d } => {
                // Grouped per user, each user's events in cursor order.
                let mut batch: Vec<(UserId, Vec<Delivery>)> = Vec::new();
                for item in d {
                    let Ok(w) = serde_json::from_value::<WireDelivery>(item) else {
                        continue;
                    };
                    if let (Some(g), Event::Message(m)) = (w.g, &w.e) {
                        if let Some(md) = &m.media {
                            dir.deps().media.remember(md.id, g);
                        }
                    }
                    let delivery = Delivery {
                        cursor: w.c,
                        event: w.e,
                        except_device: w.x,
                    };
                    match batch.iter_mut().find(|(u, _)| *u == w.u) {
                        Some((_, v)) => v.push(delivery),
                        None => batch.push((w.u, vec![delivery])),
                    }
                }
                self.cluster
                    .metrics
                    .cluster_frames_in
                    .inc_by(batch.iter().map(|(_, v)| v.len() as u64).sum());
                dir.deliver(batch);
            }
            BusMsg::Call { id, from, call } => {
                let dir = Arc::clone(dir);
                let me = Arc::clone(self);
                self.cluster.rt.spawn(async move {
                    let answer = ephemera_actors::remote::execute(&dir, call).await;
                    let _ = me.publish(&from, &BusMsg::Answer { id, answer }).await;
                });
            }
            BusMsg::Answer { id, answer } => {
                if let Some(Waiting::Call(tx)) = self.lock_waiting().remove(&id) {
                    let _ = tx.send(answer);
                }
            }
            BusMsg::Read { id, from, read } => {
                let me = Arc::clone(self);
                self.cluster.rt.spawn(async move {
                    let store = me.store.upgrade();
                    let dir = me.dir.get().cloned();
                    let answer = tokio::task::spawn_blocking(move || match (store, dir) {
                        (Some(s), Some(d)) => serve_read(&*s, &d, read),
                        _ => ReadAnswer::Failed,
                    })
                    .await
                    .unwrap_or(ReadAnswer::Failed);
                    let _ = me.publish(&from, &BusMsg::ReadAnswer { id, answer }).await;
                });
            }
            BusMsg::ReadAnswer { id, answer } => {
                if let Some(Waiting::Read(tx)) = self.lock_waiting().remove(&id) {
                    let _ = tx.send(answer);
                }
            }
            BusMsg::Forgot { node } => self.forget_cached(&node),
            BusMsg::CallMsg { from, wire } => {
                ephemera_actors::call::from_node(dir, from.into(), wire);
            }
            BusMsg::Ephemeral { user, text, except } => {
                dir.tell_user(
                    user,
                    ephemera_actors::user::Ephemeral {
                        text: text.into(),
                        except_device: except,
                    },
                );
            }
        }
    }

    /// The subscription came back after a gap (Redis restarted, or the
    /// connection dropped): live events published meanwhile never reached
    /// this node, so every socket here replays what it may have missed.
    pub(super) fn resubscribed(&self) {
        if let Some(dir) = self.dir.get() {
            tracing::warn!("bus subscription restored; sockets here resync");
            dir.resync_all();
        }
    }
}

/// The grant of a timed media message, minted here (where its key is).
fn timed_grant(dir: &Directory, m: &StoredMessage) -> Option<MediaGrant> {
    match (&m.media, m.view_policy) {
        (Some(md), ViewPolicy::Timed) => dir.deps().media.grant(md, Access::Timed, m.expires_at),
        _ => None,
    }
}

fn serve_read(store: &RocksStore, dir: &Directory, read: ReadReq) -> ReadAnswer {
    let r = match read {
        ReadReq::Message { msg } => store.local_message(msg).map(|m| ReadAnswer::Message {
            grant: m.as_ref().and_then(|m| timed_grant(dir, m)),
            message: m.map(Box::new),
        }),
        ReadReq::Tombstone { msg } => store
            .local_tombstone(msg)
            .map(|reason| ReadAnswer::Tombstone { reason }),
        ReadReq::Reaction { msg, by } => store
            .local_reaction(msg, by)
            .map(|emoji| ReadAnswer::Reaction { emoji }),
        ReadReq::Conversation { conv } => {
            store
                .local_conversation(conv)
                .map(|record| ReadAnswer::Conversation {
                    record: record.map(Box::new),
                })
        }
        ReadReq::Memberships { user } => store
            .local_user_conversations(user)
            .map(|convs| ReadAnswer::Memberships { convs }),
    };
    r.unwrap_or(ReadAnswer::Failed)
}

/// The live form of an inbox record left outbound by a previous run, read
/// back from this node's rows (`None`: its message is gone; the inbox still
/// gets the reference, and `sync` says it burned).
fn live_event(store: &RocksStore, rec: &EventRecord) -> Option<Event> {
    Some(match rec {
        EventRecord::Message { msg } => Event::Message(Arc::new(store.local_message(*msg).ok()??)),
        EventRecord::Burned { msg, reason } => Event::Burned {
            msg: *msg,
            reason: *reason,
        },
        EventRecord::Receipt {
            conv,
            msg,
            up_to_seq,
            state,
            by,
        } => Event::Receipt {
            conv: *conv,
            msg: *msg,
            up_to_seq: *up_to_seq,
            state: *state,
            by: *by,
        },
        EventRecord::Screenshot { msg, by } => Event::Screenshot { msg: *msg, by: *by },
        EventRecord::StoryPosted {
            story,
            author,
            expires_at,
        } => Event::StoryPosted {
            story: *story,
            author: *author,
            expires_at: *expires_at,
        },
        EventRecord::StoryGone {
            story,
            author,
            reason,
        } => Event::StoryGone {
            story: *story,
            author: *author,
            reason: *reason,
        },
        EventRecord::Reaction { msg, by } => {
            let m = store.local_message(*msg).ok()??;
            Event::Reaction {
                msg: *msg,
                by: *by,
                emoji: store.local_reaction(*msg, *by).ok()?.map(Into::into),
                expires_at: m.expires_at,
            }
        }
    })
}

impl Router for Bus {
    fn node_id(&self) -> &str {
        self.cluster.node_id()
    }

    fn cached(&self, conv: ConvId) -> Option<Place> {
        self.owners
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&conv)
            .cloned()
    }

    fn locate(&self, conv: ConvId, create: bool) -> BoxFuture<Result<Place, FrameError>> {
        let Some(me) = self.cluster.bus.get().cloned() else {
            return Box::pin(async { Err(FrameError::busy()) });
        };
        let cluster = Arc::clone(&self.cluster);
        Box::pin(async move {
            match cluster
                .run(async move { me.place(conv, create).await })
                .await
            {
                Ok(Some(p)) => Ok(p),
                Ok(None) => Err(FrameError::new(ErrorCode::NotFound, "no such conversation")),
                Err(_) => Err(FrameError::busy()),
            }
        })
    }

    fn call(&self, node: Arc<str>, call: ConvCall) -> BoxFuture<Result<ConvAnswer, FrameError>> {
        let Some(me) = self.cluster.bus.get().cloned() else {
            return Box::pin(async { Err(FrameError::busy()) });
        };
        if !self.is_live(&node) {
            let e = self.unavailable();
            return Box::pin(async move { Err(e) });
        }
        let unavailable = self.unavailable();
        let cluster = Arc::clone(&self.cluster);
        self.cluster.metrics.cluster_calls_out.inc();
        let me2 = Arc::clone(&me);
        Box::pin(async move {
            let from = me.cluster.node_id().to_owned();
            let asked = cluster
                .run(async move {
                    Ok(me
                        .ask(
                            &node,
                            move |id| BusMsg::Call { id, from, call },
                            Waiting::Call,
                        )
                        .await)
                })
                .await;
            match asked {
                Ok(Some(a)) => {
                    if let ConvAnswer::Granted {
                        message,
                        grant: Some(g),
                    } = &a
                    {
                        me2.remember(Some(message), Some(g.clone()));
                    }
                    Ok(a)
                }
                _ => Err(unavailable),
            }
        })
    }

    fn user_here(&self, user: UserId, here: bool) {
        let _ = self.here.send((user, here));
    }

    fn attach_blocking(&self, user: UserId, contacts: &[UserId]) -> Result<Attaching, ReadError> {
        let mut pipe = redis::pipe();
        if !contacts.is_empty() {
            let keys: Vec<String> = contacts
                .iter()
                .map(|u| format!("eph:online:{}", hex_id(*u)))
                .collect();
            pipe.cmd("MGET").arg(keys);
        }
        pipe.cmd("HGETALL")
            .arg(format!("eph:ringing:{}", hex_id(user)));
        let (online, ringing): (Vec<Option<String>>, Vec<(String, String)>) = if contacts.is_empty()
        {
            let (r,): (Vec<(String, String)>,) = self
                .cluster
                .block_on(self.cluster.query_pipe(pipe))
                .map_err(|_| ReadError)?;
            (Vec::new(), r)
        } else {
            self.cluster
                .block_on(self.cluster.query_pipe(pipe))
                .map_err(|_| ReadError)?
        };
        Ok(Attaching {
            online: online.iter().map(Option::is_some).collect(),
            ringing: ringing
                .into_iter()
                .filter_map(|(k, home)| Some((serde_json::from_str(&k).ok()?, home.into())))
                .collect(),
        })
    }

    fn ringing_over(&self, callee: UserId, key: Key) {
        let Ok(field) = serde_json::to_string(&key) else {
            return;
        };
        let q = self.cluster.query::<u64>(
            redis::cmd("HDEL")
                .arg(format!("eph:ringing:{}", hex_id(callee)))
                .arg(field)
                .clone(),
        );
        self.cluster.rt.spawn(q);
    }

    fn ring_elsewhere(
        &self,
        callee: UserId,
        ring: CallWire,
        ringing: Duration,
    ) -> BoxFuture<Vec<Arc<str>>> {
        let Some(me) = self.cluster.bus.get().cloned() else {
            return Box::pin(async { Vec::new() });
        };
        let cluster = Arc::clone(&self.cluster);
        Box::pin(async move {
            let asked = cluster
                .run(async move {
                    // Noted as ringing (a device attaching anywhere asks
                    // for the offer), and where the callee is now.
                    let hex = hex_id(callee);
                    let mut pipe = redis::pipe();
                    if let CallWire::Ring { key, .. } = &ring {
                        let field = serde_json::to_string(key).map_err(|_| RedisDown)?;
                        let ringing_key = format!("eph:ringing:{hex}");
                        pipe.cmd("HSET")
                            .arg(&ringing_key)
                            .arg(field)
                            .arg(me.cluster.node_id())
                            .ignore();
                        pipe.cmd("PEXPIRE")
                            .arg(&ringing_key)
                            .arg(ringing.as_millis() as u64)
                            .ignore();
                    }
                    pipe.cmd("HKEYS").arg(format!("eph:where:{hex}"));
                    let (nodes,): (Vec<String>,) = me.cluster.query_pipe(pipe).await?;
                    let from = me.cluster.node_id().to_owned();
                    let msg = BusMsg::CallMsg { from, wire: ring };
                    let mut rung = Vec::new();
                    for n in nodes {
                        if n == me.cluster.node_id() || !me.is_live(&n) {
                            continue;
                        }
                        if me.publish(&n, &msg).await.is_ok() {
                            rung.push(Arc::from(n));
                        }
                    }
                    Ok(rung)
                })
                .await;
            asked.unwrap_or_default()
        })
    }

    fn call_elsewhere(&self, node: Arc<str>, wire: CallWire) {
        if self.calls_out.try_send((node, wire)).is_err() {
            tracing::warn!("calls' queue to other nodes is full; a call frame was dropped");
        }
    }

    fn tell_elsewhere(&self, user: UserId, text: Arc<str>, except_device: Option<DeviceId>) {
        let Some(me) = self.cluster.bus.get().cloned() else {
            return;
        };
        self.cluster.rt.spawn(async move {
            let nodes: Vec<String> = me
                .cluster
                .query(
                    redis::cmd("HKEYS")
                        .arg(format!("eph:where:{}", hex_id(user)))
                        .clone(),
                )
                .await
                .unwrap_or_default();
            let msg = BusMsg::Ephemeral {
                user,
                text: text.to_string(),
                except: except_device,
            };
            for n in nodes.iter().filter(|n| n.as_str() != me.cluster.node_id()) {
                let _ = me.publish(n, &msg).await;
            }
        });
    }
}
