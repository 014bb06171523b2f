//! `GET /api/v1/ws`: authenticates the token (header, or `?token=` for
//! browsers) and upgrades to a `Session` actor. A bad token still gets the
//! upgrade and then close code 4401, which a browser can read (it cannot
//! read the status of a refused upgrade).

use std::sync::Arc;

use actix::{Actor, ActorContext, StreamHandler};
use actix_web::{web, HttpRequest, HttpResponse};
use actix_web_actors::ws;
use ephemera_actors::session::Session;
use serde::Deserialize;

use super::error::ApiError;
use super::{authenticate, bearer, AppState};

/// Mounts the route.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/ws", web::get().to(upgrade));
}

#[derive(Deserialize)]
struct TokenQuery {
    #[serde(default)]
    token: Option<String>,
}

async fn upgrade(
    state: web::Data<AppState>,
    req: HttpRequest,
    stream: web::Payload,
) -> Result<HttpResponse, actix_web::Error> {
    let token = match bearer(&req) {
        Some(t) => Some(t.to_owned()),
        None => web::Query::<TokenQuery>::from_query(req.query_string())
            .ok()
            .and_then(|q| q.into_inner().token),
    };
    let authed = match token {
        Some(t) => match authenticate(&state, t).await {
            Ok(a) => Some(a),
            Err(ApiError::Unauthorized(_)) => None,
            Err(e) => return Err(e.into()),
        },
        None => None,
    };
    let max = state.config.max_frame_bytes;
    match authed {
        Some(a) => {
            let session = Session::new(Arc::clone(&state.dir), a.user, a.device);
            ws::WsResponseBuilder::new(session, &req, stream)
                .frame_size(max)
                .start()
        }
        None => ws::WsResponseBuilder::new(Refuse, &req, stream)
            .frame_size(max)
            .start(),
    }
}

/// A socket whose token failed: closed with 4401 as soon as it opens.
struct Refuse;

impl Actor for Refuse {
    type Context = ws::WebsocketContext<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.close(Some(ws::CloseReason {
            code: ws::CloseCode::Other(4401),
            description: Some("unauthorized".into()),
        }));
        ctx.stop();
    }
}

impl StreamHandler<Result<ws::Message, ws::ProtocolError>> for Refuse {
    fn handle(&mut self, _: Result<ws::Message, ws::ProtocolError>, ctx: &mut Self::Context) {
        ctx.stop();
    }
}
