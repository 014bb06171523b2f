//! Highlights (PROTOCOL 5, "More on stories"): the author's explicit copy
//! of a live story that outlives it. The copy is a new object sealed under
//! a new data key (the story's key dies with the story), its caption sealed
//! under that key too, its rows in column families the TTL filter does not
//! touch. Deleting it destroys the key (and so the copy and the caption)
//! and the media sweeper deletes the blob.

use std::sync::Arc;

use actix_web::{web, HttpResponse};
use base64::Engine;
use ephemera_actors::frames::MediaView;
use ephemera_actors::ids::{Id, UserId};
use ephemera_actors::store::{now_ms, Access, MediaAccess, MediaRef, StoryRecord};
use ephemera_actors::story::OwnStory;
use serde_json::{json, Value};

use super::error::ApiError;
use super::{AppState, Authed};
use crate::store::stories::HighlightRecord;

/// Mounts the routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/stories/{story_id}/highlight", web::post().to(create))
        .route("/users/{user_id}/highlights", web::get().to(list))
        .route("/highlights/{highlight_id}", web::delete().to(delete));
}

const NO_HIGHLIGHT: ApiError = ApiError::NotFound("no such highlight");

/// A highlight as the API shows it, with a fresh GET URL and its key;
/// `None` once its key is gone.
fn view(state: &AppState, h: &HighlightRecord) -> Option<Value> {
    let grant = state.media.grant(&h.media, Access::Timed, u64::MAX)?;
    let mut v = json!({
        "highlight_id": h.id,
        "story_id": h.story_id,
        "created_at": h.created_at,
        "media": MediaView::of(&h.media, &grant),
    });
    let caption = h.sealed_caption.as_ref().and_then(|s| {
        let sealed = base64::engine::general_purpose::STANDARD.decode(s).ok()?;
        let plain = state
            .media
            .open_with_media_key(h.media.id, &h.id.0, &sealed)?;
        String::from_utf8(plain).ok()
    });
    if let Some(c) = caption {
        v["caption"] = json!(c);
    }
    Some(v)
}

async fn create(
    state: web::Data<AppState>,
    who: Authed,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = Id::parse(&path).ok_or(ApiError::NotFound("no such story"))?;
    let store = Arc::clone(&state.store);
    if !web::block(move || store.story_live(id)).await?? {
        return Err(ApiError::NotFound("no such story"));
    }
    let story = state
        .dir
        .story(id)
        .send(OwnStory { by: who.user })
        .await
        .map_err(|_| ApiError::Unavailable)??;
    let (copy, _key) = state.media.copy_sealed(&story.media, who.user).await?;
    // From here a failure must not leave the copy behind.
    match keep(&state, &story, who.user, copy.clone()).await {
        Ok(body) => Ok(HttpResponse::Created().json(body)),
        Err(e) => {
            state.media.shred(&copy, 0);
            Err(e)
        }
    }
}

/// Stores the highlight of `story` whose media is `copy`: the caption
/// sealed under the copy's key, the rows, and the answer. The story is
/// checked again first (a deletion may have raced the copy).
async fn keep(
    state: &AppState,
    story: &StoryRecord,
    author: UserId,
    copy: MediaRef,
) -> Result<Value, ApiError> {
    let store = Arc::clone(&state.store);
    let id = story.id;
    if !web::block(move || store.story_live(id)).await?? {
        return Err(ApiError::NotFound("no such story"));
    }
    let hid = Id::random();
    let sealed_caption = match &story.caption {
        Some(c) => Some(
            base64::engine::general_purpose::STANDARD.encode(
                state
                    .media
                    .seal_with_media_key(copy.id, &hid.0, c.as_bytes())?
                    .ok_or(ApiError::Internal)?,
            ),
        ),
        None => None,
    };
    let h = HighlightRecord {
        id: hid,
        story_id: story.id,
        author,
        created_at: now_ms(),
        media: copy,
        sealed_caption,
    };
    let store = Arc::clone(&state.store);
    let kept = h.clone();
    web::block(move || store.put_highlight(&kept)).await??;
    view(state, &h).ok_or(ApiError::Internal)
}

async fn list(
    state: web::Data<AppState>,
    _who: Authed,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let author = Id::parse(&path).ok_or(ApiError::NotFound("no such user"))?;
    let store = Arc::clone(&state.store);
    let all = web::block(move || -> Result<_, ApiError> {
        if !ephemera_actors::store::Store::user_exists(&*store, author)? {
            return Err(ApiError::NotFound("no such user"));
        }
        Ok(store.highlights_of(author)?)
    })
    .await??;
    let highlights: Vec<Value> = all.iter().filter_map(|h| view(&state, h)).collect();
    Ok(HttpResponse::Ok().json(json!({ "highlights": highlights })))
}

async fn delete(
    state: web::Data<AppState>,
    who: Authed,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = Id::parse(&path).ok_or(NO_HIGHLIGHT)?;
    let store = Arc::clone(&state.store);
    let h = web::block(move || store.highlight(id))
        .await??
        .ok_or(NO_HIGHLIGHT)?;
    if h.author != who.user {
        return Err(ApiError::Forbidden(
            "only the author can delete a highlight",
        ));
    }
    let store = Arc::clone(&state.store);
    let gone = h.clone();
    web::block(move || store.delete_highlight(&gone)).await??;
    // The copy's key goes now; the media sweeper deletes the blob.
    state.media.shred(&h.media, 0);
    Ok(HttpResponse::NoContent().finish())
}
