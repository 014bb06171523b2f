//! Conversations and history (PROTOCOL 6): create a group, list one's
//! conversations, read a conversation's live messages.

use std::sync::Arc;

use actix_web::{web, HttpResponse};
use ephemera_actors::frames::MessageView;
use ephemera_actors::ids::{ConvId, Id, UserId};
use ephemera_actors::store::{
    commit, now_ms, Access, ConvKind, ConversationRecord, MediaAccess, MediaGrant, Op, Store,
    StoredMessage, Txn, ViewPolicy,
};
use serde::{Deserialize, Serialize};

use super::error::ApiError;
use super::{AppState, Authed};
use crate::store::RocksStore;

/// Most messages one history page returns.
const MAX_PAGE: usize = 500;
/// Most messages counted as unread (the count saturates there).
const MAX_UNREAD: usize = 1_000;

/// Mounts the routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/conversations", web::post().to(create))
        .route("/conversations", web::get().to(list))
        .route("/conversations/{id}/members/me", web::delete().to(leave))
        .route("/conversations/{id}/messages", web::get().to(history));
}

/// How many groups each user is in: counted from storage the first time a
/// user is asked about (once per process), then kept up to date as groups
/// are created and left here, so the bound costs no scan per group. Under
/// concurrent creations the bound may be passed by the few in flight. In
/// cluster mode the count is the cluster's, in Redis, kept by the node
/// that creates a group or answers a leave.
#[derive(Default)]
pub struct GroupCounts(std::sync::Mutex<std::collections::HashMap<UserId, usize>>);

impl GroupCounts {
    /// `user`'s count, read from storage (up to `stop_at`) if not known.
    fn get(&self, store: &RocksStore, user: UserId, stop_at: usize) -> Result<usize, ApiError> {
        if let Some(c) = store.cluster() {
            return c.group_count(user).map_err(|_| ApiError::Unavailable);
        }
        if let Some(n) = self.lock().get(&user) {
            return Ok(*n);
        }
        let n = store.group_count(user, stop_at)?;
        Ok(*self.lock().entry(user).or_insert(n))
    }

    async fn add(&self, store: &RocksStore, user: UserId, joined: bool) {
        if let Some(c) = store.cluster() {
            c.count_group(user, joined).await;
            return;
        }
        if let Some(n) = self.lock().get_mut(&user) {
            *n = if joined { *n + 1 } else { n.saturating_sub(1) };
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<UserId, usize>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[derive(Deserialize)]
struct CreateGroup {
    members: Vec<String>,
    #[serde(default)]
    name: Option<String>,
}

#[derive(Serialize)]
struct Created {
    conversation_id: ConvId,
}

async fn create(
    state: web::Data<AppState>,
    who: Authed,
    body: web::Json<CreateGroup>,
) -> Result<HttpResponse, ApiError> {
    let CreateGroup { members, name } = body.into_inner();
    if name
        .as_ref()
        .is_some_and(|n| n.is_empty() || n.chars().count() > 128)
    {
        return Err(ApiError::Invalid("name must be 1 to 128 characters"));
    }
    let mut ids: Vec<UserId> = vec![who.user];
    for m in &members {
        let id = Id::parse(m).ok_or(ApiError::Invalid("members must be user ids"))?;
        if !ids.contains(&id) {
            ids.push(id);
        }
    }
    if ids.len() > state.config.max_group_members {
        return Err(ApiError::Invalid("too many members"));
    }
    let check = ids.clone();
    let max_groups = state.config.max_groups_per_user;
    let st = state.clone();
    web::block(move || -> Result<(), ApiError> {
        for id in check {
            if !st.store.user_exists(id)? {
                return Err(ApiError::Invalid("members must be existing users"));
            }
            // Nobody can be put in groups without bound: each one costs
            // its members' conversation list and presence.
            if st.group_counts.get(&st.store, id, max_groups)? >= max_groups {
                return Err(ApiError::Invalid("a member is in too many groups"));
            }
        }
        Ok(())
    })
    .await??;
    let members = ids.clone();
    let rec = ConversationRecord {
        id: Id::random(),
        kind: ConvKind::Group,
        members: ids,
        name,
        created_at: now_ms(),
        // The creator chose to be here; the others speak when they send.
        speakers: Some(vec![who.user]),
    };
    let conversation_id = rec.id;
    // Cluster mode: the group is this node's (its rows and its actor).
    if let Some(bus) = state.store.cluster_bus() {
        match bus.claim(conversation_id).await {
            Ok(true) => {}
            Ok(false) => return Err(ApiError::Internal),
            Err(_) => return Err(ApiError::Unavailable),
        }
    }
    commit(
        &*state.store,
        Txn {
            guards: vec![],
            ops: vec![Op::PutConversation(rec)],
        },
    )
    .await?;
    for m in members {
        state.group_counts.add(&state.store, m, true).await;
    }
    Ok(HttpResponse::Created().json(Created { conversation_id }))
}

/// `DELETE /conversations/{id}/members/me`: the caller leaves a group
/// (204). Someone else's or an unknown conversation gets 404; a direct
/// conversation cannot be left (422).
async fn leave(
    state: web::Data<AppState>,
    who: Authed,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let conv = Id::parse(&path).ok_or(ApiError::NotFound("no such conversation"))?;
    let dir = Arc::clone(&state.dir);
    let user = who.user;
    let handle = web::block(move || dir.member_conversation(user, conv))
        .await?
        .ok_or(ApiError::NotFound("no such conversation"))?;
    handle
        .send(ephemera_actors::conversation::Leave { user: who.user })
        .await
        .map_err(|_| ApiError::Unavailable)??;
    state.group_counts.add(&state.store, who.user, false).await;
    Ok(HttpResponse::NoContent().finish())
}

#[derive(Serialize)]
struct Summary {
    conversation_id: ConvId,
    kind: ConvKind,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    members: Vec<UserId>,
    last_seq: u64,
    unread: usize,
}

#[derive(Serialize)]
struct Listing {
    conversations: Vec<Summary>,
}

/// The caller's conversations that this node holds (in cluster mode, the
/// other nodes' are gathered by `cluster::route`).
fn summarise(store: &RocksStore, me: UserId) -> Result<Vec<Summary>, ApiError> {
    let now = now_ms();
    let mut out = Vec::new();
    for id in store.local_user_conversations(me)? {
        let Some(rec) = store.local_conversation(id)? else {
            continue;
        };
        let last_seq = store.last_seq(id)?;
        let read = store.read_state(id, me)?;
        let unread = store
            .messages_after(id, read, MAX_UNREAD)?
            .iter()
            .filter(|m| m.from != me && m.expires_at > now)
            .count();
        out.push(Summary {
            conversation_id: id,
            kind: rec.kind,
            name: rec.name,
            members: rec.members,
            last_seq,
            unread,
        });
    }
    Ok(out)
}

async fn list(state: web::Data<AppState>, who: Authed) -> Result<HttpResponse, ApiError> {
    let store = Arc::clone(&state.store);
    let conversations = web::block(move || summarise(&*store, who.user)).await??;
    Ok(HttpResponse::Ok().json(Listing { conversations }))
}

#[derive(Deserialize)]
struct Page {
    #[serde(default)]
    after_seq: u64,
    #[serde(default)]
    limit: Option<usize>,
}

fn page(
    store: &dyn Store,
    me: UserId,
    conv: ConvId,
    after: u64,
    limit: usize,
) -> Result<Vec<StoredMessage>, ApiError> {
    // Someone else's conversation answers exactly as one that does not
    // exist: 1:1 ids are derived from the two user ids, so a difference
    // would tell anyone who talks to whom.
    match store.conversation(conv)? {
        Some(rec) if rec.members.contains(&me) => {}
        _ => return Err(ApiError::NotFound("no such conversation")),
    }
    let now = now_ms();
    let mut live = store.messages_after(conv, after, limit)?;
    // Logical deletion: a message past its expiry is never returned, even
    // if its row has not been burned or compacted yet.
    live.retain(|m| m.expires_at > now);
    Ok(live)
}

async fn history(
    state: web::Data<AppState>,
    who: Authed,
    path: web::Path<String>,
    q: web::Query<Page>,
) -> Result<HttpResponse, ApiError> {
    let conv = Id::parse(&path).ok_or(ApiError::NotFound("no such conversation"))?;
    let limit = q.limit.unwrap_or(50);
    if limit == 0 || limit > MAX_PAGE {
        return Err(ApiError::Invalid("limit must be 1 to 500"));
    }
    let store = Arc::clone(&state.store);
    let after = q.after_seq;
    let messages = web::block(move || page(&*store, who.user, conv, after, limit)).await??;
    // Timed media gets a fresh GET URL for the reader; view-once content
    // is never in history.
    let grants: Vec<Option<MediaGrant>> = messages
        .iter()
        .map(|m| match (&m.media, m.view_policy) {
            (Some(md), ViewPolicy::Timed) => state.media.grant(md, Access::Timed, m.expires_at),
            _ => None,
        })
        .collect();
    let views: Vec<MessageView<'_>> = messages
        .iter()
        .zip(&grants)
        .map(|(m, g)| MessageView::of(m, None, g.as_ref()))
        .collect();
    Ok(HttpResponse::Ok().json(serde_json::json!({ "messages": views })))
}
