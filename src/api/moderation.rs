//! The moderators' calls (PROTOCOL 7): list and read quarantine cases,
//! place a hold, close. Every call by anyone but a moderator is `403`;
//! every list, read, hold and close is appended to the access log before
//! it is answered.
//!
//! Where PROTOCOL 7 is silent (see `schema/openapi.json`):
//! * a case also carries `msg_id` or `story_id`, the reported content's id;
//! * once its content is destroyed (closed, or retention over), a case
//!   still reads, with `"content": null` and `destroyed_at`;
//! * `hold` sets `hold_until` to `until` (a time after now, else `422`) and
//!   answers `409` once the content is destroyed;
//! * `close` of a closed case answers the case again.

use std::sync::Arc;

use actix_web::{web, HttpResponse};
use ephemera_actors::ids::Id;
use ephemera_actors::store::now_ms;
use serde::Deserialize;
use serde_json::{json, Value};

use super::error::ApiError;
use super::{AppState, Authed};
use crate::quarantine::{Action, CaseKind, CaseRecord, CaseStatus, Content};

const NO_CASE: ApiError = ApiError::NotFound("no such case");

/// Mounts the routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/moderation/cases", web::get().to(list))
        .route("/moderation/cases/{case_id}", web::get().to(read))
        .route("/moderation/cases/{case_id}/hold", web::post().to(hold))
        .route("/moderation/cases/{case_id}/close", web::post().to(close));
}

/// A caller with the moderator role: taking it is what requires the role.
struct Moderator(Id);

async fn moderator(state: &AppState, who: &Authed) -> Result<Moderator, ApiError> {
    let user = who.user;
    // Cluster mode: the role is the cluster's (in Redis).
    let is = match state.store.cluster().cloned() {
        Some(c) => web::block(move || c.is_moderator(user))
            .await?
            .map_err(|_| ApiError::Unavailable)?,
        None => {
            let store = Arc::clone(state.quarantine.store());
            web::block(move || store.is_moderator(user)).await??
        }
    };
    if is {
        Ok(Moderator(user))
    } else {
        Err(ApiError::Forbidden("moderators only"))
    }
}

/// Appends to the access log (before the answer goes out).
async fn log(
    state: &AppState,
    m: &Moderator,
    case: Option<Id>,
    action: Action,
) -> Result<(), ApiError> {
    let store = Arc::clone(state.quarantine.store());
    let who = m.0;
    web::block(move || store.log(who, case, action)).await??;
    Ok(())
}

/// A case as the moderators' calls show it.
fn case_json(c: &CaseRecord) -> Value {
    let mut v = json!({
        "case_id": c.case_id,
        "kind": c.kind,
        "reason": c.reason,
        "reported_by": c.reported_by,
        "reported_at": c.reported_at,
        "status": c.status,
        "retain_until": c.retain_until,
    });
    match c.kind {
        CaseKind::Message => v["msg_id"] = json!(c.subject),
        CaseKind::Story => v["story_id"] = json!(c.subject),
    }
    if let Some(h) = c.hold_until {
        v["hold_until"] = json!(h);
    }
    if let Some(d) = c.destroyed_at {
        v["destroyed_at"] = json!(d);
    }
    v
}

/// A moderator and the case id of the path (`403` before `404`).
async fn moderator_on(
    state: &AppState,
    who: &Authed,
    path: &str,
) -> Result<(Moderator, Id), ApiError> {
    let m = moderator(state, who).await?;
    Ok((m, Id::parse(path).ok_or(NO_CASE)?))
}

async fn case(state: &AppState, id: Id) -> Result<CaseRecord, ApiError> {
    let store = Arc::clone(state.quarantine.store());
    web::block(move || store.case(id)).await??.ok_or(NO_CASE)
}

async fn list(state: web::Data<AppState>, who: Authed) -> Result<HttpResponse, ApiError> {
    let m = moderator(&state, &who).await?;
    let store = Arc::clone(state.quarantine.store());
    let cases = web::block(move || store.cases()).await??;
    log(&state, &m, None, Action::List).await?;
    let cases: Vec<Value> = cases.iter().map(case_json).collect();
    Ok(no_store(json!({ "cases": cases })))
}

async fn read(
    state: web::Data<AppState>,
    who: Authed,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let (m, id) = moderator_on(&state, &who, &path).await?;
    let rec = case(&state, id).await?;
    log(&state, &m, Some(id), Action::Read).await?;
    let store = Arc::clone(state.quarantine.store());
    let sealed_rec = rec.clone();
    let content: Option<Content> = web::block(move || store.content(&sealed_rec)).await??;
    let mut v = case_json(&rec);
    v["author"] = json!(rec.author);
    v["content"] = match content {
        None => Value::Null,
        Some(c) => {
            let mut out = json!({});
            if let Some(b) = c.body {
                out["body"] = json!(b);
            }
            if let Some(cap) = c.caption {
                out["caption"] = json!(cap);
            }
            if let (Some(media), Some(key)) = (&rec.media, c.data_key) {
                let get_url = state
                    .quarantine
                    .media()
                    .quarantine_get_url(id)
                    .ok_or(ApiError::Internal)?;
                out["media"] = json!({
                    "content_type": media.content_type,
                    "bytes": media.bytes,
                    "get_url": get_url,
                    "data_key": key,
                });
            }
            out
        }
    };
    Ok(no_store(v))
}

#[derive(Deserialize)]
struct Hold {
    until: i64,
}

async fn hold(
    state: web::Data<AppState>,
    who: Authed,
    path: web::Path<String>,
    body: web::Json<Hold>,
) -> Result<HttpResponse, ApiError> {
    let (m, id) = moderator_on(&state, &who, &path).await?;
    let until = body.until;
    if until <= now_ms() as i64 {
        return Err(ApiError::Invalid("until must be a time after now"));
    }
    let until = until as u64;
    let store = Arc::clone(state.quarantine.store());
    let (rec, destroyed) = web::block(move || {
        let mut destroyed = false;
        let rec = store.update(id, |c| {
            if c.sealed.is_none() {
                destroyed = true;
            } else {
                c.hold_until = Some(until);
            }
        })?;
        Ok::<_, crate::store::StoreError>((rec, destroyed))
    })
    .await??;
    let rec = rec.ok_or(NO_CASE)?;
    if destroyed {
        return Err(ApiError::Conflict(
            "the case's content is already destroyed",
        ));
    }
    log(&state, &m, Some(id), Action::Hold).await?;
    Ok(no_store(case_json(&rec)))
}

async fn close(
    state: web::Data<AppState>,
    who: Authed,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let (m, id) = moderator_on(&state, &who, &path).await?;
    let store = Arc::clone(state.quarantine.store());
    let rec = web::block(move || store.update(id, |c| c.status = CaseStatus::Closed))
        .await??
        .ok_or(NO_CASE)?;
    // Closing destroys the content at once unless a hold is in force
    // (then the sweep destroys it when the hold ends).
    let rec = if rec.due(now_ms()) {
        state.quarantine.destroy(id).await?.ok_or(NO_CASE)?
    } else {
        rec
    };
    log(&state, &m, Some(id), Action::Close).await?;
    Ok(no_store(case_json(&rec)))
}

fn no_store(body: Value) -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((actix_web::http::header::CACHE_CONTROL, "no-store"))
        .json(body)
}
