//! Stories and the social graph (PROTOCOL 5, with "More on stories"):
//! following and close friends, posting, the tray, viewing, viewers,
//! replies and reactions, deletion. Each live story is a `Story` actor
//! (`ephemera_actors::story`), the single writer of its views and its end;
//! these handlers check what a request may ask, then ask the actor, or
//! read storage directly for the lists (trays, an author's stories).
//!
//! Where PROTOCOL 5 is silent (see `schema/openapi.json`):
//! * an `everyone` story may be opened by any signed-in user; the tray
//!   lists only the authors the caller follows;
//! * `close_friend` in a tray item says the author is in the caller's own
//!   close-friends list;
//! * the author's own fetch is not counted as a view.

use std::sync::Arc;

use actix_web::{web, HttpResponse};
use ephemera_actors::frames::MediaView;
use ephemera_actors::ids::{Id, UserId};
use ephemera_actors::store::{
    commit, now_ms, Access, Audience, Guard, MediaAccess, Op, StoryId, StoryRecord, Txn, ViewPolicy,
};
use ephemera_actors::story::{self, Delete, Open, Publish, Viewers};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::error::ApiError;
use super::{AppState, Authed};

/// Longest story lifetime (PROTOCOL 5).
const MAX_STORY_TTL: i64 = 86_400;
/// Longest caption, in characters.
const MAX_CAPTION_CHARS: usize = 2_200;
/// Longest reaction emoji, in UTF-8 bytes (a flag or a family sequence is
/// one emoji of many code points).
const MAX_EMOJI_BYTES: usize = 32;

/// Mounts the routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/following/{user_id}", web::put().to(follow))
        .route("/following/{user_id}", web::delete().to(unfollow))
        .route("/close-friends/{user_id}", web::put().to(add_close_friend))
        .route(
            "/close-friends/{user_id}",
            web::delete().to(remove_close_friend),
        )
        .route("/users/{user_id}", web::get().to(profile))
        .route("/users/{user_id}/stories", web::get().to(stories_of))
        .route("/stories", web::post().to(post))
        .route("/stories/tray", web::get().to(tray))
        .route("/stories/{story_id}", web::get().to(open))
        .route("/stories/{story_id}", web::delete().to(delete))
        .route("/stories/{story_id}/viewers", web::get().to(viewers))
        .route("/stories/{story_id}/reactions", web::post().to(react))
        .route("/stories/{story_id}/replies", web::post().to(reply));
}

const NO_USER: ApiError = ApiError::NotFound("no such user");
const NO_STORY: ApiError = ApiError::NotFound("no such story");

/// Another existing user named by the path, for the graph calls.
async fn other_user(state: &AppState, me: UserId, path: &str) -> Result<UserId, ApiError> {
    let other = Id::parse(path).ok_or(NO_USER)?;
    if other == me {
        return Err(ApiError::Invalid("that is yourself"));
    }
    let store = Arc::clone(&state.store);
    if !web::block(move || ephemera_actors::store::Store::user_exists(&*store, other)).await?? {
        return Err(NO_USER);
    }
    Ok(other)
}

/// A change to an edge of the graph between the caller and another
/// existing user (named by the path): `op(caller, other)`, committed.
/// Returns the other user.
async fn edge(
    state: &AppState,
    who: &Authed,
    path: &str,
    op: impl FnOnce(UserId, UserId) -> Op,
) -> Result<UserId, ApiError> {
    let other = other_user(state, who.user, path).await?;
    commit(
        &*state.store,
        Txn {
            guards: vec![],
            ops: vec![op(who.user, other)],
        },
    )
    .await?;
    Ok(other)
}

async fn follow(
    state: web::Data<AppState>,
    who: Authed,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let author = edge(&state, &who, &path, |follower, author| Op::Follow {
        follower,
        author,
    })
    .await?;
    // The author's live stories that were fanned out reach the new
    // follower's tray too (those not fanned out are merged at read time),
    // each guarded on the story still being there.
    let store = Arc::clone(&state.store);
    let live = web::block(move || store.fanned_out_stories(author)).await??;
    for r in live {
        let txn = Txn {
            guards: vec![Guard::StoryPresent(r.story)],
            ops: vec![Op::PutTrayRef {
                viewer: who.user,
                story: r,
                told: false,
            }],
        };
        match commit(&*state.store, txn).await {
            Ok(()) | Err(ephemera_actors::store::CommitError::Gone) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(HttpResponse::NoContent().finish())
}

async fn unfollow(
    state: web::Data<AppState>,
    who: Authed,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    edge(&state, &who, &path, |follower, author| Op::Unfollow {
        follower,
        author,
    })
    .await?;
    Ok(HttpResponse::NoContent().finish())
}

async fn add_close_friend(
    state: web::Data<AppState>,
    who: Authed,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    edge(&state, &who, &path, |owner, friend| Op::SetCloseFriend {
        owner,
        friend,
        close: true,
    })
    .await?;
    Ok(HttpResponse::NoContent().finish())
}

async fn remove_close_friend(
    state: web::Data<AppState>,
    who: Authed,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    edge(&state, &who, &path, |owner, friend| Op::SetCloseFriend {
        owner,
        friend,
        close: false,
    })
    .await?;
    Ok(HttpResponse::NoContent().finish())
}

/// `GET /users/{id}`: the username and the exact follow counts.
async fn profile(
    state: web::Data<AppState>,
    _who: Authed,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let user = Id::parse(&path).ok_or(NO_USER)?;
    let store = Arc::clone(&state.store);
    let (name, (followers, following)) = web::block(move || {
        Ok::<_, crate::store::StoreError>((store.username(user)?, store.follow_counts(user)?))
    })
    .await??;
    let name = name.ok_or(NO_USER)?;
    Ok(HttpResponse::Ok().json(json!({
        "user_id": user,
        "username": &*name,
        "follower_count": followers,
        "following_count": following,
    })))
}

#[derive(Deserialize)]
struct NewStory {
    media_key: String,
    #[serde(default)]
    ttl_seconds: Option<i64>,
    audience: String,
    #[serde(default)]
    caption: Option<String>,
}

#[derive(Serialize)]
struct Posted {
    story_id: StoryId,
    expires_at: u64,
}

async fn post(
    state: web::Data<AppState>,
    who: Authed,
    body: web::Json<NewStory>,
) -> Result<HttpResponse, ApiError> {
    let NewStory {
        media_key,
        ttl_seconds,
        audience,
        caption,
    } = body.into_inner();
    let ttl = ttl_seconds.unwrap_or(MAX_STORY_TTL);
    if !(1..=MAX_STORY_TTL).contains(&ttl) {
        return Err(ApiError::Invalid("ttl_seconds must be 1 to 86400"));
    }
    let audience = match audience.as_str() {
        "everyone" => Audience::Everyone,
        "close_friends" => Audience::CloseFriends,
        _ => {
            return Err(ApiError::Invalid(
                "audience must be everyone or close_friends",
            ))
        }
    };
    if caption
        .as_ref()
        .is_some_and(|c| c.chars().count() > MAX_CAPTION_CHARS)
    {
        return Err(ApiError::Invalid("caption is over 2200 characters"));
    }
    let media_id = Id::parse(&media_key).ok_or(ApiError::NotFound("no such media_key"))?;
    let store = Arc::clone(&state.store);
    let (record, followers) = web::block(move || {
        Ok::<_, crate::store::StoreError>((store.media(media_id)?, store.follow_counts(who.user)?))
    })
    .await??;
    match record {
        Some(r) if r.owner == who.user && r.is_bound() => {
            return Err(ApiError::Conflict("media_key is already used"))
        }
        Some(r) if r.owner == who.user => {
            if !(r.content_type.starts_with("image/") || r.content_type.starts_with("video/")) {
                return Err(ApiError::Invalid("a story is a photo or a video"));
            }
        }
        _ => return Err(ApiError::NotFound("no such media_key")),
    }
    let media = state.media.claimable(media_id, who.user).await?;
    let story = Arc::new(story::new_story(
        who.user,
        media,
        ttl as u64,
        audience,
        caption,
        followers.0,
        &state.dir.deps().limits,
    ));
    let posted = Posted {
        story_id: story.id,
        expires_at: story.expires_at,
    };
    // Cluster mode: the story is this node's (its author's home, where the
    // call was routed), so calls about it anywhere come here.
    if let Some(bus) = state.store.cluster_bus() {
        if !bus
            .claim(story.id)
            .await
            .map_err(|_| ApiError::Unavailable)?
        {
            return Err(ApiError::Unavailable);
        }
    }
    state
        .dir
        .story(story.id)
        .send(Publish { story })
        .await
        .map_err(|_| ApiError::Unavailable)??;
    Ok(HttpResponse::Created().json(posted))
}

/// One author in a tray (PROTOCOL 5).
#[derive(Serialize)]
struct TrayItem {
    user_id: UserId,
    #[serde(serialize_with = "as_str")]
    username: Arc<str>,
    has_unviewed: bool,
    story_count: usize,
    latest_at: u64,
    close_friend: bool,
}

fn as_str<S: serde::Serializer>(s: &Arc<str>, ser: S) -> Result<S::Ok, S::Error> {
    ser.serialize_str(s)
}

#[derive(Serialize)]
struct Tray {
    tray: Vec<TrayItem>,
}

async fn tray(state: web::Data<AppState>, who: Authed) -> Result<HttpResponse, ApiError> {
    let store = Arc::clone(&state.store);
    let tray = web::block(move || {
        let entries = store.tray(who.user)?;
        let mut tray = Vec::with_capacity(entries.len());
        for e in entries {
            let username = store.username(e.author)?.unwrap_or_else(|| "".into());
            tray.push(TrayItem {
                user_id: e.author,
                username,
                has_unviewed: e.has_unviewed,
                story_count: e.story_count,
                latest_at: e.latest_at,
                close_friend: e.close_friend,
            });
        }
        Ok::<_, crate::store::StoreError>(tray)
    })
    .await??;
    Ok(HttpResponse::Ok().json(Tray { tray }))
}

async fn stories_of(
    state: web::Data<AppState>,
    who: Authed,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let author = Id::parse(&path).ok_or(NO_USER)?;
    let store = Arc::clone(&state.store);
    let listed = web::block(move || -> Result<_, ApiError> {
        if !ephemera_actors::store::Store::user_exists(&*store, author)? {
            return Ok(None);
        }
        Ok(Some(store.stories_of(author, who.user)?))
    })
    .await??
    .ok_or(NO_USER)?;
    let stories: Vec<_> = listed
        .iter()
        .map(|s| {
            json!({
                "story_id": s.story,
                "posted_at": s.posted_at,
                "expires_at": s.expires_at,
                "viewed": s.viewed,
            })
        })
        .collect();
    Ok(HttpResponse::Ok().json(json!({ "stories": stories })))
}

/// The live story of the path, through its actor: `404` for a malformed
/// id or a story that is not live (checked first in storage, so a random
/// id starts no actor).
async fn story_handle(
    state: &AppState,
    path: &str,
) -> Result<(StoryId, ephemera_actors::directory::Handle<story::Story>), ApiError> {
    let id = Id::parse(path).ok_or(NO_STORY)?;
    let store = Arc::clone(&state.store);
    if !web::block(move || store.story_live(id)).await?? {
        return Err(NO_STORY);
    }
    Ok((id, state.dir.story(id)))
}

/// Opens a story for `viewer` (counting the view if `count`).
pub(crate) async fn opened(
    state: &AppState,
    path: &str,
    viewer: UserId,
    count: bool,
) -> Result<Arc<StoryRecord>, ApiError> {
    let (_, handle) = story_handle(state, path).await?;
    Ok(handle
        .send(Open { viewer, count })
        .await
        .map_err(|_| ApiError::Unavailable)??)
}

async fn open(
    state: web::Data<AppState>,
    who: Authed,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let s = opened(&state, &path, who.user, true).await?;
    // A key already destroyed: the story is gone.
    let grant = state
        .media
        .grant(&s.media, Access::Story, s.expires_at)
        .ok_or(NO_STORY)?;
    let mut body = json!({
        "story_id": s.id,
        "author": s.author,
        "posted_at": s.posted_at,
        "expires_at": s.expires_at,
        "audience": s.audience,
        "media": MediaView::of(&s.media, &grant),
    });
    if let Some(c) = &s.caption {
        body["caption"] = json!(c);
    }
    Ok(HttpResponse::Ok()
        .insert_header((actix_web::http::header::CACHE_CONTROL, "no-store"))
        .json(body))
}

async fn viewers(
    state: web::Data<AppState>,
    who: Authed,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let (_, handle) = story_handle(&state, &path).await?;
    let list = handle
        .send(Viewers { by: who.user })
        .await
        .map_err(|_| ApiError::Unavailable)??;
    let viewers: Vec<_> = list
        .iter()
        .map(|(u, at)| json!({ "user_id": u, "viewed_at": at }))
        .collect();
    Ok(HttpResponse::Ok().json(json!({
        "view_count": viewers.len(),
        "viewers": viewers,
    })))
}

async fn delete(
    state: web::Data<AppState>,
    who: Authed,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let (_, handle) = story_handle(&state, &path).await?;
    handle
        .send(Delete { by: who.user })
        .await
        .map_err(|_| ApiError::Unavailable)??;
    Ok(HttpResponse::NoContent().finish())
}

/// Posts a reply or reaction to a story as a timed message in the 1:1
/// conversation of the caller and the author, living no longer than the
/// story. Returns the message's ack.
async fn answer_story(
    state: &AppState,
    who: &Authed,
    path: &str,
    body: String,
    reaction: bool,
) -> Result<ephemera_actors::store::AckRecord, ApiError> {
    let s = opened(state, path, who.user, false).await?;
    if s.author == who.user {
        return Err(ApiError::Invalid("that is your own story"));
    }
    let ttl_seconds = s.expires_at.saturating_sub(now_ms()) / 1000;
    if ttl_seconds == 0 {
        return Err(NO_STORY);
    }
    // The 1:1 conversation may live on another node (cluster mode): the
    // reply goes wherever it is.
    let post = ephemera_actors::remote::PostCall {
        conv: Id::direct(who.user, s.author),
        from: who.user,
        device: who.device,
        client_msg_id: format!("story-{}", Id::random()),
        direct: Some((who.user, s.author)),
        body: Some(body),
        media_key: None,
        view_policy: ViewPolicy::Timed,
        ttl_seconds,
        burn_after_view_seconds: None,
        story: Some((s.id, reaction)),
    };
    Ok(ephemera_actors::remote::post_anywhere(&state.dir, post).await?)
}

#[derive(Deserialize)]
struct Reaction {
    emoji: String,
}

async fn react(
    state: web::Data<AppState>,
    who: Authed,
    path: web::Path<String>,
    body: web::Json<Reaction>,
) -> Result<HttpResponse, ApiError> {
    let emoji = body.into_inner().emoji;
    if emoji.is_empty() || emoji.len() > MAX_EMOJI_BYTES || emoji.chars().any(char::is_control) {
        return Err(ApiError::Invalid("emoji must be 1 to 32 bytes of text"));
    }
    answer_story(&state, &who, &path, emoji, true).await?;
    Ok(HttpResponse::NoContent().finish())
}

#[derive(Deserialize)]
struct Reply {
    body: String,
}

async fn reply(
    state: web::Data<AppState>,
    who: Authed,
    path: web::Path<String>,
    body: web::Json<Reply>,
) -> Result<HttpResponse, ApiError> {
    let text = body.into_inner().body;
    if text.is_empty() {
        return Err(ApiError::Invalid("body must not be empty"));
    }
    if text.len() > state.dir.deps().limits.max_body_bytes {
        return Err(ApiError::TooLarge("body is over the size limit"));
    }
    let ack = answer_story(&state, &who, &path, text, false).await?;
    Ok(HttpResponse::Created().json(json!({
        "msg_id": ack.msg_id,
        "conversation_id": ack.msg_id.conv,
    })))
}
