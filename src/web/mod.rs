//! The web client (public listener, `/`) and the operator console (admin
//! listener, `/console`): static pages, scripts and styles embedded in the
//! binary, so the server serves them with nothing else installed and the
//! pages load nothing from anywhere else (the CSP below forbids it).
//!
//! Both are plain JavaScript modules over the public protocol (the client)
//! and the admin API (the console); no handler here sees a token or a
//! message. Assets: `src/web/assets/`.

use actix_web::http::header;
use actix_web::{web, HttpResponse};

/// One embedded file: its path on the listener, media type and bytes.
struct Asset {
    /// The path it is served at.
    path: &'static str,
    /// Its `Content-Type`.
    content_type: &'static str,
    /// Its text.
    body: &'static str,
}

const HTML: &str = "text/html; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";
const SVG: &str = "image/svg+xml";

/// The tab icon, on both listeners (a page without one makes the browser
/// ask for `/favicon.ico` and log the 404).
const ICON: Asset = Asset {
    path: "/favicon.svg",
    content_type: SVG,
    body: include_str!("assets/favicon.svg"),
};

/// The styles, shared by the client and the console.
const STYLE: Asset = Asset {
    path: "/app.css",
    content_type: CSS,
    body: include_str!("assets/app.css"),
};

/// The web client's files, on the public listener.
const CLIENT: [Asset; 4] = [
    ICON,
    Asset {
        path: "/",
        content_type: HTML,
        body: include_str!("assets/index.html"),
    },
    Asset {
        path: "/app.js",
        content_type: JS,
        body: include_str!("assets/app.js"),
    },
    STYLE,
];

/// The operator console's files, on the admin listener. The page holds no
/// secret: every call it makes carries the admin token the operator types.
const CONSOLE: [Asset; 4] = [
    ICON,
    Asset {
        path: "/console",
        content_type: HTML,
        body: include_str!("assets/console.html"),
    },
    Asset {
        path: "/console.js",
        content_type: JS,
        body: include_str!("assets/console.js"),
    },
    STYLE,
];

/// Everything from our own origin only: no external script, style, font or
/// frame; images also from `blob:` (photos are decrypted in the page into
/// blob URLs); sockets and fetches to this origin (the embedded blob store
/// is on it too).
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
                   img-src 'self' blob:; connect-src 'self'; base-uri 'none'; \
                   form-action 'none'; frame-ancestors 'none'";

fn serve(asset: &'static Asset) -> HttpResponse {
    HttpResponse::Ok()
        .content_type(asset.content_type)
        .insert_header((header::CONTENT_SECURITY_POLICY, CSP))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .insert_header((header::REFERRER_POLICY, "no-referrer"))
        // Small files, and a new binary may change them: revalidate.
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .body(asset.body)
}

fn mount(cfg: &mut web::ServiceConfig, assets: &'static [Asset]) {
    for asset in assets {
        cfg.route(
            asset.path,
            web::get().to(move || async move { serve(asset) }),
        );
    }
}

/// Mounts the web client on the public listener.
pub fn configure_client(cfg: &mut web::ServiceConfig) {
    mount(cfg, &CLIENT);
}

/// Mounts the operator console on the admin listener (`/` leads to it).
pub fn configure_console(cfg: &mut web::ServiceConfig) {
    mount(cfg, &CONSOLE);
    cfg.route(
        "/",
        web::get().to(|| async {
            HttpResponse::Found()
                .insert_header((header::LOCATION, "/console"))
                .finish()
        }),
    );
}
