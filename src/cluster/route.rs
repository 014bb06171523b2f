//! The HTTP calls about state one node owns, in cluster mode.
//!
//! Besides conversations (their creator's, see [`super::bus`]), a node owns
//! stories and each user's social side: a user's *home* node
//! (`eph:owner:{user_id}`, claimed by the first node that needs it, then
//! fixed) holds who follows them, whom they keep as close friends, their
//! stories (each claimed for the home node as it is posted) and
//! highlights, their media uploads and their devices' public keys. A call
//! about one of these that reaches another node is forwarded to the
//! owner's public listener (its `advertise_url`, or the address it is
//! bound to) with the caller's own token, and the owner's answer goes back
//! as it is: the owner authenticates, checks and answers exactly as for a
//! call of its own. What a user has on every node is gathered from every
//! live node and merged: their conversation list, a profile's counts, and
//! their story tray (assembled at their home node, which knows their close
//! friends). A node that is down answers `503` with `Retry-After` for what
//! it owns, and is missing from what is gathered.
//!
//! A forwarded call carries the cluster's secret (random, kept in Redis)
//! in [`FORWARDED`] or [`LOCAL`]: the first asks the node to serve it as
//! the owner, the second to answer from its own rows only (one part of a
//! gathering). A client's copy of either header without the secret is
//! ignored.

use std::sync::Arc;
use std::time::Duration;

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::{header, Method, StatusCode};
use actix_web::middleware::Next;
use actix_web::{web, HttpMessage, HttpResponse};
use ephemera_actors::ids::{Id, UserId};
use ephemera_actors::remote::Place;
use serde_json::Value;

use super::Cluster;
use crate::api::error::ApiError;
use crate::api::AppState;

/// How long a forwarded call is waited for.
pub const FORWARD_TIMEOUT: Duration = Duration::from_secs(10);
/// The header of a call forwarded to its owner.
pub const FORWARDED: &str = "x-ephemera-forwarded";
/// The header of a call that asks for this node's own rows only.
pub const LOCAL: &str = "x-ephemera-local";
/// The largest body a forwarded call carries (the public API's JSON limit).
const MAX_BODY: usize = 64 * 1024;

/// Whose node answers a call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Owner {
    /// The owner of a conversation or a story (`None` if nobody: the call
    /// is answered here, with a 404).
    Of(Id),
    /// A user's home node.
    Home(UserId),
    /// The caller's home node.
    Caller,
}

/// What a user has on every node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Gather {
    /// `GET /conversations`.
    Conversations,
    /// `GET /users/{id}`: the follower and following counts.
    Profile,
    /// `GET /stories/tray` (at the caller's home).
    Tray,
    /// `GET /moderation/cases`.
    Cases,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Route {
    Here,
    To(Owner),
    All(Gather),
    /// `POST /reports`: to the owner of the content its body names.
    Report,
}

/// Where a call of the public API is answered. Ids that do not parse are
/// answered here (with the handler's 404).
fn route(method: &Method, path: &str) -> Route {
    let Some(rest) = path.strip_prefix("/api/v1/") else {
        return Route::Here;
    };
    let seg: Vec<&str> = rest.trim_end_matches('/').split('/').collect();
    fn id(s: &str, make: fn(Id) -> Owner) -> Route {
        Id::parse(s).map_or(Route::Here, |i| Route::To(make(i)))
    }
    let get = method == Method::GET;
    match seg.as_slice() {
        ["conversations"] if get => Route::All(Gather::Conversations),
        ["conversations", c, "messages"] if get => id(c, Owner::Of),
        ["conversations", c, "members", "me"] if method == Method::DELETE => id(c, Owner::Of),
        ["stories", "tray"] if get => Route::All(Gather::Tray),
        ["stories"] if method == Method::POST => Route::To(Owner::Caller),
        ["stories", s] | ["stories", s, "viewers" | "reactions" | "replies" | "highlight"] => {
            id(s, Owner::Of)
        }
        ["users", u] if get => match Id::parse(u) {
            Some(_) => Route::All(Gather::Profile),
            None => Route::Here,
        },
        ["users", u, "stories" | "highlights" | "keys"] if get => id(u, Owner::Home),
        ["reports"] if method == Method::POST => Route::Report,
        ["moderation", "cases"] if get => Route::All(Gather::Cases),
        ["moderation", "cases", c] | ["moderation", "cases", c, "hold" | "close"] => {
            id(c, Owner::Of)
        }
        ["following", u] => id(u, Owner::Home),
        ["close-friends", _]
        | ["highlights", _]
        | ["keys"]
        | ["keys", "count"]
        | ["media", "upload-urls"]
        | ["sessions", "current"] => Route::To(Owner::Caller),
        _ => Route::Here,
    }
}

/// Whether the request carries `name` with the cluster's secret.
fn marked(req: &ServiceRequest, cluster: &Cluster, name: &str) -> bool {
    carries(req.headers(), cluster, name)
}

/// Whether `headers` carry `name` with the cluster's secret.
fn carries(headers: &header::HeaderMap, cluster: &Cluster, name: &str) -> bool {
    let Some(secret) = cluster.forward_secret.get() else {
        return false;
    };
    headers.get(name).is_some_and(|v| {
        // In constant time: the secret is not found by timing guesses.
        let (v, s) = (v.as_bytes(), secret.as_bytes());
        v.len() == s.len() && v.iter().zip(s).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    })
}

/// The public API's middleware in cluster mode (a no-op on one node).
pub async fn middleware(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let Some(state) = req.app_data::<web::Data<AppState>>().cloned() else {
        return Ok(next.call(req).await?.map_into_boxed_body());
    };
    let Some(cluster) = state.store.cluster().cloned() else {
        return Ok(next.call(req).await?.map_into_boxed_body());
    };
    if marked(&req, &cluster, LOCAL) {
        return Ok(next.call(req).await?.map_into_boxed_body());
    }
    let forwarded = marked(&req, &cluster, FORWARDED);
    let owner = match route(req.method(), req.path()) {
        Route::Here => None,
        Route::To(_) if forwarded => None,
        Route::To(o) => Some(o),
        // The tray is assembled at the caller's home.
        Route::All(Gather::Tray) if !forwarded => {
            return match place(&req, &state, &cluster, Owner::Caller).await {
                Ok(Some(Place::Remote(node))) => forward(req, &cluster, &node).await,
                Ok(_) => gather(req, next, &state, &cluster, Gather::Tray).await,
                Err(e) => Ok(req.error_response(e)),
            };
        }
        Route::All(g) => return gather(req, next, &state, &cluster, g).await,
        Route::Report if forwarded => None,
        Route::Report => {
            let mut req = req;
            let body = match read_body(&mut req).await {
                Ok(b) => b,
                Err(e) => return Ok(req.error_response(e)),
            };
            let subject = reported(&body);
            // Put back for whoever reads it next (here, or the forwarding).
            req.set_payload(actix_web::dev::Payload::from(body));
            return match subject {
                Some(id) => route_to(req, next, &state, &cluster, Owner::Of(id)).await,
                None => Ok(next.call(req).await?.map_into_boxed_body()),
            };
        }
    };
    let Some(owner) = owner else {
        return Ok(next.call(req).await?.map_into_boxed_body());
    };
    route_to(req, next, &state, &cluster, owner).await
}

/// Answers here if `owner` is this node (or nobody), else forwards.
async fn route_to(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
    state: &AppState,
    cluster: &Arc<Cluster>,
    owner: Owner,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    match place(&req, state, cluster, owner).await {
        Ok(Some(Place::Remote(node))) => forward(req, cluster, &node).await,
        Ok(_) => Ok(next.call(req).await?.map_into_boxed_body()),
        Err(e) => Ok(req.error_response(e)),
    }
}

/// What a report's body names: a message's conversation or a story
/// (`None`: not a valid report; answered here, with the handler's error).
fn reported(body: &[u8]) -> Option<Id> {
    let v: Value = serde_json::from_slice(body).ok()?;
    match (v.get("msg_id"), v.get("story_id")) {
        (Some(m), None) => Some(ephemera_actors::ids::MsgId::parse(m.as_str()?)?.conv),
        (None, Some(s)) => Id::parse(s.as_str()?),
        _ => None,
    }
}

/// Where `owner` lives (`None`: nobody owns it, or the caller is unknown;
/// answered here, with the handler's 404 or 401). A user's home is
/// claimed for this node if they have none.
async fn place(
    req: &ServiceRequest,
    state: &AppState,
    cluster: &Arc<Cluster>,
    owner: Owner,
) -> Result<Option<Place>, ApiError> {
    let (id, claim) = match owner {
        Owner::Of(id) => (id, false),
        Owner::Home(user) => (user, true),
        Owner::Caller => match caller(req, state).await {
            Some(user) => (user, true),
            None => return Ok(None),
        },
    };
    let bus = cluster.bus().cloned().ok_or(ApiError::Unavailable)?;
    bus.owner(id, claim).await.map_err(|_| {
        tracing::warn!("cannot read a placement in Redis");
        ApiError::Unavailable
    })
}

/// The caller, authenticated once for the whole request: the handler's
/// `Authed` finds it in the request's extensions.
async fn caller(req: &ServiceRequest, state: &AppState) -> Option<UserId> {
    let token = crate::api::bearer(req.request())?.to_owned();
    let authed = crate::api::authenticate(state, token).await.ok()?;
    let user = authed.user;
    req.extensions_mut().insert(authed);
    Some(user)
}

/// Reads the members again from Redis (their liveness and addresses)
/// unless `node`'s address is known already: the heartbeat refreshes them
/// only every fifth of a lease, and a node that just started, or that
/// gathers from every node, must not miss one that came meanwhile.
async fn fresh_view(cluster: &Arc<Cluster>, node: Option<&str>) {
    if node.is_some_and(|n| cluster.url_of(n).is_some()) {
        return;
    }
    let me = Arc::clone(cluster);
    let _ = cluster.run(async move { me.refresh_members().await }).await;
}

/// The call as it goes to another node: method, path and query, the
/// caller's token and the body's type.
fn outgoing(
    cluster: &Cluster,
    req: &ServiceRequest,
    node: &str,
    mark: &str,
) -> Option<reqwest::RequestBuilder> {
    let base = cluster.url_of(node)?;
    let secret = cluster.forward_secret.get()?;
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let method = reqwest::Method::from_bytes(req.method().as_str().as_bytes()).ok()?;
    let mut out = cluster
        .http
        .request(method, format!("{base}{path}"))
        .header(mark, secret.as_str());
    for name in [header::AUTHORIZATION, header::CONTENT_TYPE] {
        if let Some(v) = req.headers().get(&name) {
            out = out.header(name.as_str(), v.as_bytes());
        }
    }
    Some(out)
}

/// An answer from another node: status, the headers that matter, body.
struct Answer {
    status: u16,
    headers: Vec<(&'static str, Vec<u8>)>,
    body: web::Bytes,
}

async fn send(cluster: &Arc<Cluster>, out: reqwest::RequestBuilder) -> Option<Answer> {
    let sent = cluster.rt.spawn(async move {
        let resp = out.send().await.ok()?;
        let status = resp.status().as_u16();
        let headers = ["content-type", "cache-control", "retry-after"]
            .into_iter()
            .filter_map(|h| Some((h, resp.headers().get(h)?.as_bytes().to_vec())))
            .collect();
        let body = resp.bytes().await.ok()?;
        Some(Answer {
            status,
            headers,
            body,
        })
    });
    sent.await.ok().flatten()
}

/// Sends the call to `node` and answers with its answer.
async fn forward(
    mut req: ServiceRequest,
    cluster: &Arc<Cluster>,
    node: &str,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let body = match read_body(&mut req).await {
        Ok(b) => b,
        Err(e) => return Ok(req.error_response(e)),
    };
    fresh_view(cluster, Some(node)).await;
    let Some(out) = outgoing(cluster, &req, node, FORWARDED) else {
        tracing::warn!(node_id = %node, "cannot forward: the node is down or has no address");
        return Ok(req.error_response(ApiError::Unavailable));
    };
    let Some(answer) = send(cluster, out.body(body)).await else {
        tracing::warn!(node_id = %node, "a forwarded call got no answer");
        return Ok(req.error_response(ApiError::Unavailable));
    };
    let mut resp =
        HttpResponse::build(StatusCode::from_u16(answer.status).unwrap_or(StatusCode::BAD_GATEWAY));
    for (name, value) in answer.headers {
        resp.insert_header((name, value));
    }
    Ok(req.into_response(resp.body(answer.body)))
}

/// The request's body, up to the API's limit.
async fn read_body(req: &mut ServiceRequest) -> Result<web::Bytes, ApiError> {
    use futures_util::StreamExt;
    let mut payload = req.take_payload();
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|_| ApiError::BadRequest("the body could not be read"))?;
        if body.len() + chunk.len() > MAX_BODY {
            return Err(ApiError::TooLarge("body is over 64 KiB"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

/// The header of a handed-over upload's record and key (see [`hand_over`]).
const HANDOVER: &str = "x-ephemera-handover";
/// How long moving an upload (up to 100 MiB) between nodes may take.
const HANDOVER_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(serde::Deserialize)]
pub(crate) struct UploadOf {
    #[serde(default)]
    owner: Option<String>,
}

/// `POST /api/v1/media/{media_key}/handover?owner=` between nodes only (a
/// call without the cluster's secret is answered as an unknown path): the
/// uploader's home gives an upload up to the node that owns the
/// conversation of the message using it. `200` with the record and key in
/// [`HANDOVER`] and the sealed object as the body; `404` no such live,
/// unused upload of that user; `409` its object is not complete yet.
pub(crate) async fn hand_over(
    state: web::Data<AppState>,
    req: actix_web::HttpRequest,
    path: web::Path<String>,
    q: web::Query<UploadOf>,
) -> Result<HttpResponse, ApiError> {
    let between_nodes = state
        .store
        .cluster()
        .is_some_and(|c| carries(req.headers(), c, FORWARDED));
    let ids = Id::parse(&path).zip(q.owner.as_deref().and_then(Id::parse));
    let (id, owner) = ids
        .filter(|_| between_nodes)
        .ok_or(ApiError::NotFound("no such resource"))?;
    let handed = state.media.hand_over(id, owner).await.map_err(|e| {
        tracing::error!(error = %e, "handing an upload over failed");
        ApiError::Unavailable
    })?;
    match handed {
        crate::media::service::Handed::Over(h, sealed) => {
            let meta = serde_json::to_string(&h).map_err(|_| ApiError::Internal)?;
            Ok(HttpResponse::Ok()
                .insert_header((HANDOVER, meta))
                .insert_header((header::CACHE_CONTROL, "no-store"))
                .content_type("application/octet-stream")
                .body(sealed))
        }
        crate::media::service::Handed::Unknown => Err(ApiError::NotFound("no such media_key")),
        crate::media::service::Handed::Incomplete => {
            Err(ApiError::Conflict("the upload is not complete"))
        }
    }
}

/// Asks `node` (the uploader's home) for upload `id` of `owner` (`None`:
/// no answer).
pub(crate) async fn fetch_upload(
    cluster: &Arc<Cluster>,
    node: &str,
    id: Id,
    owner: UserId,
) -> Option<crate::media::service::Handed> {
    use crate::media::service::{HandOver, Handed};
    fresh_view(cluster, Some(node)).await;
    let base = cluster.url_of(node)?;
    let secret = cluster.forward_secret.get()?.clone();
    let out = cluster
        .http
        .post(format!("{base}/api/v1/media/{id}/handover?owner={owner}"))
        .header(FORWARDED, secret)
        .timeout(HANDOVER_TIMEOUT);
    let asked = cluster.rt.spawn(async move {
        let resp = out.send().await.ok()?;
        match resp.status().as_u16() {
            200 => {
                let h: HandOver =
                    serde_json::from_slice(resp.headers().get(HANDOVER)?.as_bytes()).ok()?;
                let sealed = resp.bytes().await.ok()?.to_vec();
                Some(Handed::Over(h, sealed))
            }
            404 => Some(Handed::Unknown),
            409 => Some(Handed::Incomplete),
            _ => None,
        }
    });
    asked.await.ok().flatten()
}

/// Answers from this node's rows and every other live node's, merged.
async fn gather(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
    state: &web::Data<AppState>,
    cluster: &Arc<Cluster>,
    what: Gather,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    fresh_view(cluster, None).await;
    let asks: Vec<_> = cluster
        .members()
        .into_iter()
        .filter(|m| m.live && m.node_id != cluster.node_id())
        .filter_map(|m| outgoing(cluster, &req, &m.node_id, LOCAL))
        .collect();
    let caller = match what {
        Gather::Tray => caller(&req, state).await,
        _ => None,
    };
    let local = next.call(req).await?;
    if local.status() != StatusCode::OK {
        return Ok(local.map_into_boxed_body());
    }
    let (req, resp) = local.into_parts();
    let mut merged: Value = match actix_web::body::to_bytes(resp.into_body()).await {
        Ok(b) => serde_json::from_slice(&b).unwrap_or(Value::Null),
        Err(_) => Value::Null,
    };
    let answers =
        futures_util::future::join_all(asks.into_iter().map(|out| send(cluster, out))).await;
    let mut parts: Vec<Value> = answers
        .into_iter()
        .flatten()
        .filter(|a| a.status == 200)
        .filter_map(|a| serde_json::from_slice(&a.body).ok())
        .collect();
    if let (Gather::Tray, Some(viewer)) = (what, caller) {
        // Whether an author is the viewer's close friend is known here, at
        // the viewer's home; the other nodes' entries are told it now.
        let store = Arc::clone(&state.store);
        let authors: Vec<Value> = parts
            .iter_mut()
            .filter_map(|p| p.get_mut("tray")?.as_array_mut())
            .flat_map(|t| t.iter_mut())
            .map(std::mem::take)
            .collect();
        let fixed = web::block(move || {
            authors
                .into_iter()
                .map(|mut e| {
                    let author = e.get("user_id").and_then(Value::as_str).and_then(Id::parse);
                    let close =
                        author.is_some_and(|a| store.close_friend(viewer, a).unwrap_or(false));
                    e["close_friend"] = Value::Bool(close);
                    e
                })
                .collect::<Vec<Value>>()
        })
        .await
        .unwrap_or_default();
        parts = vec![serde_json::json!({ "tray": fixed })];
    }
    merge(what, &mut merged, parts);
    Ok(ServiceResponse::new(req, HttpResponse::Ok().json(merged)))
}

/// Merges the other nodes' parts into this node's answer.
fn merge(what: Gather, into: &mut Value, parts: Vec<Value>) {
    match what {
        Gather::Conversations => {
            concat(into, "conversations", parts);
            sort_by(into, "conversations", |a, b| {
                text(a, "conversation_id").cmp(text(b, "conversation_id"))
            });
        }
        Gather::Tray => {
            concat(into, "tray", parts);
            // PROTOCOL 5's order: unviewed first, close friends, newest.
            sort_by(into, "tray", |a, b| {
                flag(b, "has_unviewed")
                    .cmp(&flag(a, "has_unviewed"))
                    .then(flag(b, "close_friend").cmp(&flag(a, "close_friend")))
                    .then(number(b, "latest_at").cmp(&number(a, "latest_at")))
                    .then(text(a, "user_id").cmp(text(b, "user_id")))
            });
        }
        Gather::Cases => {
            concat(into, "cases", parts);
            // Oldest report first, as one node lists them.
            sort_by(into, "cases", |a, b| {
                number(a, "reported_at")
                    .cmp(&number(b, "reported_at"))
                    .then(text(a, "case_id").cmp(text(b, "case_id")))
            });
        }
        Gather::Profile => {
            for key in ["follower_count", "following_count"] {
                let sum = number(into, key) + parts.iter().map(|p| number(p, key)).sum::<u64>();
                into[key] = Value::from(sum);
            }
        }
    }
}

fn concat(into: &mut Value, key: &str, parts: Vec<Value>) {
    let mut more: Vec<Value> = parts
        .into_iter()
        .filter_map(|mut p| match p.get_mut(key)?.take() {
            Value::Array(a) => Some(a),
            _ => None,
        })
        .flatten()
        .collect();
    if let Some(list) = into.get_mut(key).and_then(Value::as_array_mut) {
        list.append(&mut more);
    }
}

fn sort_by(into: &mut Value, key: &str, by: impl Fn(&Value, &Value) -> std::cmp::Ordering) {
    if let Some(list) = into.get_mut(key).and_then(Value::as_array_mut) {
        list.sort_by(by);
    }
}

fn text<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("")
}

fn flag(v: &Value, key: &str) -> bool {
    v.get(key).and_then(Value::as_bool).unwrap_or(false)
}

fn number(v: &Value, key: &str) -> u64 {
    v.get(key).and_then(Value::as_u64).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_go_to_their_owners() {
        let id = Id::random();
        let p = |s: &str| s.replace("ID", &id.to_string());
        let cases = [
            (
                Method::GET,
                p("/api/v1/conversations"),
                Route::All(Gather::Conversations),
            ),
            (
                Method::GET,
                p("/api/v1/conversations/ID/messages"),
                Route::To(Owner::Of(id)),
            ),
            (
                Method::DELETE,
                p("/api/v1/conversations/ID/members/me"),
                Route::To(Owner::Of(id)),
            ),
            (
                Method::GET,
                p("/api/v1/stories/tray"),
                Route::All(Gather::Tray),
            ),
            (Method::POST, p("/api/v1/stories"), Route::To(Owner::Caller)),
            (
                Method::GET,
                p("/api/v1/stories/ID"),
                Route::To(Owner::Of(id)),
            ),
            (
                Method::POST,
                p("/api/v1/stories/ID/replies"),
                Route::To(Owner::Of(id)),
            ),
            (
                Method::GET,
                p("/api/v1/users/ID"),
                Route::All(Gather::Profile),
            ),
            (
                Method::GET,
                p("/api/v1/users/ID/keys"),
                Route::To(Owner::Home(id)),
            ),
            (
                Method::PUT,
                p("/api/v1/following/ID"),
                Route::To(Owner::Home(id)),
            ),
            (
                Method::PUT,
                p("/api/v1/close-friends/ID"),
                Route::To(Owner::Caller),
            ),
            (
                Method::POST,
                p("/api/v1/media/upload-urls"),
                Route::To(Owner::Caller),
            ),
            (
                Method::DELETE,
                p("/api/v1/sessions/current"),
                Route::To(Owner::Caller),
            ),
            (Method::GET, p("/api/v1/ws"), Route::Here),
            (Method::POST, p("/api/v1/conversations"), Route::Here),
            (Method::GET, p("/api/v1/stories/not-an-id"), Route::Here),
            (Method::POST, p("/api/v1/accounts"), Route::Here),
            (Method::POST, p("/api/v1/reports"), Route::Report),
            (
                Method::GET,
                p("/api/v1/moderation/cases"),
                Route::All(Gather::Cases),
            ),
            (
                Method::POST,
                p("/api/v1/moderation/cases/ID/close"),
                Route::To(Owner::Of(id)),
            ),
        ];
        for (method, path, want) in cases {
            assert_eq!(route(&method, &path), want, "{method} {path}");
        }
    }

    #[test]
    fn profiles_add_up_and_trays_keep_their_order() {
        let mut profile = serde_json::json!({"follower_count": 2, "following_count": 1});
        merge(
            Gather::Profile,
            &mut profile,
            vec![serde_json::json!({"follower_count": 0, "following_count": 3})],
        );
        assert_eq!(profile["follower_count"], 2);
        assert_eq!(profile["following_count"], 4);

        let entry = |u: &str, unviewed: bool, close: bool, at: u64| serde_json::json!({"user_id": u, "has_unviewed": unviewed, "close_friend": close, "latest_at": at});
        let mut tray =
            serde_json::json!({"tray": [entry("a", false, false, 9), entry("b", true, false, 1)]});
        merge(
            Gather::Tray,
            &mut tray,
            vec![
                serde_json::json!({"tray": [entry("c", true, true, 0), entry("d", true, false, 5)]}),
            ],
        );
        let order: Vec<&str> = tray["tray"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["user_id"].as_str().unwrap())
            .collect();
        assert_eq!(order, ["c", "d", "b", "a"]);
    }
}
