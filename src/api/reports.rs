//! `POST /api/v1/reports` (PROTOCOL 7): someone who can see a live message
//! or story reports it, and its content (text, caption, and the media blob
//! with its data key) is copied into quarantine before any clock can
//! destroy it (see `crate::quarantine`).
//!
//! Where PROTOCOL 7 is silent (see `schema/openapi.json`):
//! * a message may be reported by a member of its conversation other than
//!   its sender, while it is live (not expired, not burned, not unsent); a
//!   story by a signed-in user other than its author whom its audience
//!   admits, while it is live. Anything else is `404`, indistinguishable
//!   from no such content; one's own content is `422`.
//! * `reason` is 1 to 1000 characters of text.

use std::sync::Arc;

use actix_web::{web, HttpResponse};
use ephemera_actors::ids::{Id, MsgId};
use ephemera_actors::store::{now_ms, MediaRef, ReadError, Store, StoredMessage};
use serde::Deserialize;
use serde_json::json;

use super::error::ApiError;
use super::{AppState, Authed};
use crate::media::service::CopyError;
use crate::quarantine::{BlobState, CaseKind, CaseRecord, CaseStatus, Content, QuarantinedMedia};

/// Longest reason, in characters.
const MAX_REASON_CHARS: usize = 1_000;

const NOT_FOUND: ApiError = ApiError::NotFound("no such message or story");

/// Mounts the route.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/reports", web::post().to(report));
}

#[derive(Deserialize)]
struct NewReport {
    #[serde(default)]
    msg_id: Option<String>,
    #[serde(default)]
    story_id: Option<String>,
    reason: String,
}

/// What a report copies: read while the content is live.
struct Reported {
    kind: CaseKind,
    subject: String,
    author: Id,
    content: Content,
    /// The media object and its sealed blob, if any.
    blob: Option<(MediaRef, Vec<u8>)>,
}

async fn report(
    state: web::Data<AppState>,
    who: Authed,
    body: web::Json<NewReport>,
) -> Result<HttpResponse, ApiError> {
    let NewReport {
        msg_id,
        story_id,
        reason,
    } = body.into_inner();
    let n = reason.chars().count();
    if n == 0 || n > MAX_REASON_CHARS || reason.chars().any(char::is_control) {
        return Err(ApiError::Invalid(
            "reason must be 1 to 1000 characters of text",
        ));
    }
    let reported = match (msg_id, story_id) {
        (Some(m), None) => message(&state, &who, &m).await?,
        (None, Some(s)) => story(&state, &who, &s).await?,
        _ => {
            return Err(ApiError::Invalid(
                "exactly one of msg_id and story_id is required",
            ))
        }
    };
    let case_id = quarantine(&state, &who, reason, reported).await?;
    Ok(HttpResponse::Created().json(json!({ "case_id": case_id })))
}

/// A live message the caller may see, with its content.
async fn message(state: &AppState, who: &Authed, id: &str) -> Result<Reported, ApiError> {
    let id = MsgId::parse(id).ok_or(NOT_FOUND)?;
    let store = Arc::clone(&state.store);
    let me = who.user;
    let found = web::block(move || -> Result<Option<StoredMessage>, ReadError> {
        if !store.is_member(me, id.conv)? {
            return Ok(None);
        }
        let Some(m) = store.message(id)? else {
            return Ok(None);
        };
        // Logical deletion: an expired or burned message is gone, whether
        // or not its row is.
        if m.expires_at <= now_ms() || store.tombstone(id)?.is_some() {
            return Ok(None);
        }
        Ok(Some(m))
    })
    .await??
    .ok_or(NOT_FOUND)?;
    if found.from == me {
        return Err(ApiError::Invalid("that is your own message"));
    }
    let mut content = Content {
        body: found.body.clone(),
        ..Content::default()
    };
    let blob = match &found.media {
        Some(media) => {
            let (key, blob) = media_copy(state, media).await?;
            content.data_key = Some(key);
            Some((media.clone(), blob))
        }
        None => None,
    };
    Ok(Reported {
        kind: CaseKind::Message,
        subject: id.to_string(),
        author: found.from,
        content,
        blob,
    })
}

/// A live story the caller's audience check admits, with its content.
async fn story(state: &AppState, who: &Authed, id: &str) -> Result<Reported, ApiError> {
    let s = super::stories::opened(state, id, who.user, false)
        .await
        .map_err(|e| match e {
            // Outside the audience: it could never be seen.
            ApiError::Forbidden(_) | ApiError::NotFound(_) => NOT_FOUND,
            other => other,
        })?;
    if s.author == who.user {
        return Err(ApiError::Invalid("that is your own story"));
    }
    let (key, blob) = media_copy(state, &s.media).await?;
    Ok(Reported {
        kind: CaseKind::Story,
        subject: s.id.to_string(),
        author: s.author,
        content: Content {
            caption: s.caption.clone(),
            data_key: Some(key),
            ..Content::default()
        },
        blob: Some((s.media.clone(), blob)),
    })
}

/// The live data key (base64) of `media`, then its sealed blob: key
/// first, so a blob read without its key is never kept.
async fn media_copy(state: &AppState, media: &MediaRef) -> Result<(String, Vec<u8>), ApiError> {
    use base64::Engine;
    let svc = state.media.clone();
    let id = media.id;
    let key = web::block(move || svc.media_data_key(id))
        .await??
        .ok_or(NOT_FOUND)?;
    let blob = state.media.fetch_media(media).await.map_err(|e| match e {
        CopyError::Gone | CopyError::Damaged => NOT_FOUND,
        other => other.into(),
    })?;
    Ok((base64::engine::general_purpose::STANDARD.encode(key), blob))
}

/// Creates the case (content sealed under its own key), then copies the
/// blob to `quarantine/<case_id>`. A failed copy undoes the case.
async fn quarantine(
    state: &AppState,
    who: &Authed,
    reason: String,
    r: Reported,
) -> Result<Id, ApiError> {
    let q = state.quarantine.clone();
    let now = now_ms();
    let case_id = Id::random();
    // Cluster mode: the case is this node's (the content's owner, where
    // the report was routed), so calls about it anywhere come here.
    if let Some(bus) = state.store.cluster_bus() {
        if !bus
            .claim(case_id)
            .await
            .map_err(|_| ApiError::Unavailable)?
        {
            return Err(ApiError::Unavailable);
        }
    }
    let rec = CaseRecord {
        case_id,
        kind: r.kind,
        subject: r.subject,
        reason,
        reported_by: who.user,
        reported_at: now,
        author: r.author,
        retain_until: now.saturating_add(q.retention_ms()),
        hold_until: None,
        status: CaseStatus::Open,
        media: r.blob.as_ref().map(|(m, _)| QuarantinedMedia {
            content_type: m.content_type.clone(),
            bytes: m.bytes,
        }),
        blob: match r.blob {
            Some(_) => BlobState::Copying,
            None => BlobState::None,
        },
        sealed: None,
        destroyed_at: None,
    };
    let store = Arc::clone(q.store());
    let content = r.content;
    let rec = web::block(move || store.create(rec, &content)).await??;
    let id = rec.case_id;
    if let Some((_, blob)) = r.blob {
        if let Err(e) = q.media().put_quarantine(id, blob).await {
            q.undo(id).await;
            return Err(e.into());
        }
        let store = Arc::clone(q.store());
        let held = web::block(move || {
            store.update(id, |c| {
                if c.blob == BlobState::Copying {
                    c.blob = BlobState::Held;
                }
            })
        })
        .await;
        if !matches!(held, Ok(Ok(Some(_)))) {
            q.undo(id).await;
            return Err(ApiError::Internal);
        }
    }
    tracing::info!(case_id = %id, "content reported and quarantined");
    Ok(id)
}
