//! The stories mix (`--mix stories`) end to end against an in-process stand-in
//! for the server that implements the story calls of
//! `notes/stories-contract.md` the simplest way: every request of the mix
//! (sign-in, follows, uploads with their exact Content-Length, posts, trays,
//! views) goes over real HTTP, and the view counts it keeps are read back by
//! the check. A stand-in that drops views must fail the check.
//!
//! This tests the generator, not the server: the real server is measured by
//! `scripts/bench-stories.sh`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::TcpListener;
use std::sync::Mutex;

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use base64::Engine as _;
use ephemera_load::config::{LoadConfig, Mix};
use ephemera_load::run;
use ephemera_load::schedule::RateProfile;
use serde_json::{json, Value};

/// What the stand-in knows.
#[derive(Default)]
struct State {
    /// username → user_id.
    accounts: HashMap<String, String>,
    /// token → user_id.
    tokens: HashMap<String, String>,
    /// user_id → username.
    names: HashMap<String, String>,
    /// follower → followed.
    following: BTreeSet<(String, String)>,
    /// media_key → (owner, declared bytes, uploaded, used).
    media: HashMap<String, (String, u64, bool, bool)>,
    /// story_id → (author, posted_at, viewers in view order).
    stories: BTreeMap<String, (String, i64, Vec<String>)>,
    /// Ids handed out so far.
    next: u64,
    /// Views fetched so far (for `drop_every`).
    fetched: u64,
}

/// The stand-in: its state, and a fault to inject.
struct Mock {
    state: Mutex<State>,
    /// Answer every Nth first view with 200 but do not count it (0: never).
    drop_every: u64,
}

type Shared = web::Data<Mock>;

fn err(status: u16, code: &str) -> HttpResponse {
    HttpResponse::build(actix_web::http::StatusCode::from_u16(status).unwrap())
        .json(json!({"error": {"code": code, "message": code}}))
}

impl Mock {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap()
    }

    /// The caller's user id, from `Authorization: Bearer`.
    fn caller(&self, req: &HttpRequest) -> Option<String> {
        let token = req
            .headers()
            .get("authorization")?
            .to_str()
            .ok()?
            .strip_prefix("Bearer ")?;
        self.lock().tokens.get(token).cloned()
    }
}

fn id(s: &mut State, prefix: &str) -> String {
    s.next += 1;
    format!("{prefix}{}", s.next)
}

async fn register(m: Shared, body: web::Json<Value>) -> HttpResponse {
    let name = body["username"].as_str().unwrap_or_default().to_owned();
    let mut s = m.lock();
    if s.accounts.contains_key(&name) {
        return err(409, "username_taken");
    }
    let user = id(&mut s, "u");
    s.accounts.insert(name.clone(), user.clone());
    s.names.insert(user.clone(), name.clone());
    HttpResponse::Created().json(json!({"user_id": user, "username": name}))
}

async fn login(m: Shared, body: web::Json<Value>) -> HttpResponse {
    let name = body["username"].as_str().unwrap_or_default();
    let mut s = m.lock();
    let Some(user) = s.accounts.get(name).cloned() else {
        return err(401, "bad_credentials");
    };
    let token = id(&mut s, "t");
    s.tokens.insert(token.clone(), user.clone());
    let device = id(&mut s, "d");
    HttpResponse::Created().json(json!({
        "token": token, "user_id": user, "device_id": device, "expires_at": 1
    }))
}

async fn follow(m: Shared, req: HttpRequest, path: web::Path<String>) -> HttpResponse {
    let Some(me) = m.caller(&req) else {
        return err(401, "unauthorized");
    };
    let them = path.into_inner();
    let mut s = m.lock();
    if them == me {
        return err(422, "invalid");
    }
    if !s.names.contains_key(&them) {
        return err(404, "not_found");
    }
    s.following.insert((me, them));
    HttpResponse::NoContent().finish()
}

async fn upload_url(m: Shared, req: HttpRequest, body: web::Json<Value>) -> HttpResponse {
    let Some(me) = m.caller(&req) else {
        return err(401, "unauthorized");
    };
    let bytes = body["bytes"].as_u64().unwrap_or(0);
    let host = req.connection_info().host().to_owned();
    let mut s = m.lock();
    let key = id(&mut s, "m");
    s.media.insert(key.clone(), (me, bytes, false, false));
    let data_key = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
    HttpResponse::Ok().json(json!({
        "media_key": key, "put_url": format!("http://{host}/blob/{key}"),
        "expires_in": 600, "data_key": data_key, "cipher": "AES-256-GCM"
    }))
}

async fn put_blob(m: Shared, path: web::Path<String>, body: web::Bytes) -> HttpResponse {
    let mut s = m.lock();
    match s.media.get_mut(&path.into_inner()) {
        // The sealed size: nonce, ciphertext, tag.
        Some(media) if media.1 == body.len() as u64 && body.len() >= 28 => {
            media.2 = true;
            HttpResponse::Ok().finish()
        }
        Some(_) => err(400, "size_mismatch"),
        None => err(404, "not_found"),
    }
}

async fn post_story(m: Shared, req: HttpRequest, body: web::Json<Value>) -> HttpResponse {
    let Some(me) = m.caller(&req) else {
        return err(401, "unauthorized");
    };
    if body["audience"] != "everyone" || !body["ttl_seconds"].is_u64() {
        return err(422, "invalid");
    }
    let key = body["media_key"].as_str().unwrap_or_default();
    let mut s = m.lock();
    match s.media.get_mut(key) {
        Some(media) if media.0 == me && media.2 && !media.3 => media.3 = true,
        Some(media) if media.3 => return err(409, "media_used"),
        Some(media) if !media.2 => return err(422, "upload_incomplete"),
        _ => return err(404, "not_found"),
    }
    let story = id(&mut s, "s");
    let posted = s.next as i64;
    s.stories.insert(story.clone(), (me, posted, Vec::new()));
    HttpResponse::Created().json(json!({"story_id": story, "expires_at": 3_600_000}))
}

async fn tray(m: Shared, req: HttpRequest) -> HttpResponse {
    let Some(me) = m.caller(&req) else {
        return err(401, "unauthorized");
    };
    let s = m.lock();
    let mut items: BTreeMap<&str, (u64, i64, bool)> = BTreeMap::new();
    for (author, posted, viewers) in s.stories.values() {
        if s.following.contains(&(me.clone(), author.clone())) {
            let item = items.entry(author).or_default();
            item.0 += 1;
            item.1 = item.1.max(*posted);
            item.2 |= !viewers.contains(&me);
        }
    }
    let tray: Vec<Value> = items
        .into_iter()
        .map(|(author, (count, latest, unviewed))| {
            json!({
                "user_id": author, "username": s.names[author], "has_unviewed": unviewed,
                "story_count": count, "latest_at": latest, "close_friend": false
            })
        })
        .collect();
    HttpResponse::Ok().json(json!({ "tray": tray }))
}

async fn view(m: Shared, req: HttpRequest, path: web::Path<String>) -> HttpResponse {
    let Some(me) = m.caller(&req) else {
        return err(401, "unauthorized");
    };
    let story = path.into_inner();
    let drop_every = m.drop_every;
    let mut s = m.lock();
    s.fetched += 1;
    let fetched = s.fetched;
    let Some((author, posted, viewers)) = s.stories.get_mut(&story) else {
        return err(404, "not_found");
    };
    let dropped = drop_every > 0 && fetched.is_multiple_of(drop_every);
    if *author != me && !viewers.contains(&me) && !dropped {
        viewers.push(me);
    }
    HttpResponse::Ok().json(json!({
        "story_id": story, "author": author, "posted_at": posted, "expires_at": 3_600_000,
        "audience": "everyone",
        "media": {"media_key": "m", "content_type": "image/jpeg", "bytes": 28,
                  "get_url": "http://x/", "data_key": "k"}
    }))
}

async fn viewers(m: Shared, req: HttpRequest, path: web::Path<String>) -> HttpResponse {
    let Some(me) = m.caller(&req) else {
        return err(401, "unauthorized");
    };
    let s = m.lock();
    let Some((author, _, viewers)) = s.stories.get(&path.into_inner()) else {
        return err(404, "not_found");
    };
    if *author != me {
        return err(403, "forbidden");
    }
    let list: Vec<Value> = viewers
        .iter()
        .map(|v| json!({"user_id": v, "viewed_at": 1}))
        .collect();
    HttpResponse::Ok().json(json!({"view_count": viewers.len(), "viewers": list}))
}

/// Start a stand-in on a free port in its own thread; its base URL.
fn start(drop_every: u64) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let mock = web::Data::new(Mock {
        state: Mutex::new(State::default()),
        drop_every,
    });
    std::thread::spawn(move || {
        actix_web::rt::System::new().block_on(async move {
            HttpServer::new(move || {
                App::new()
                    .app_data(mock.clone())
                    .app_data(web::PayloadConfig::new(1 << 20))
                    .route("/blob/{key}", web::put().to(put_blob))
                    .service(
                        web::scope("/api/v1")
                            .route("/accounts", web::post().to(register))
                            .route("/sessions", web::post().to(login))
                            .route("/following/{id}", web::put().to(follow))
                            .route("/media/upload-urls", web::post().to(upload_url))
                            .route("/stories", web::post().to(post_story))
                            .route("/stories/tray", web::get().to(tray))
                            .route("/stories/{id}/viewers", web::get().to(viewers))
                            .route("/stories/{id}", web::get().to(view)),
                    )
            })
            .workers(2)
            .listen(listener)
            .unwrap()
            .run()
            .await
            .unwrap();
        });
    });
    base
}

fn config(base: String) -> LoadConfig {
    let mut cfg = LoadConfig::new(vec![base]);
    cfg.mix = Mix::Stories;
    cfg.register = true;
    cfg.prefix = "st".into();
    cfg.media_bytes = 100;
    cfg.profile = RateProfile::flat(1.0, 2.0);
    cfg.stories.authors = 20;
    cfg.stories.viewers = 5;
    cfg.stories.stories_per_author = 2;
    cfg.stories.tray_rate = 50.0;
    cfg.stories.view_rate = 200.0;
    cfg.stories.post_rate = 5.0;
    cfg.stories.verify = 40;
    cfg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stories_run_sets_up_offers_and_checks_the_counts() {
    let cfg = config(start(0));
    let report = run::run(&cfg).await.expect("the run completes");
    let table = report.summary_table();
    let st = report.stories.as_ref().expect("a stories report");
    assert_eq!(report.mode, "stories");
    assert_eq!(st.setup.follows, 100, "{table}");
    assert_eq!(st.setup.stories, 40, "{table}");
    assert!(st.errors.is_empty(), "{table}");
    // 2 s at 50, 200 and 5 a second.
    assert_eq!((st.tray.due, st.view.due, st.post.due), (100, 400, 10));
    assert_eq!(st.tray.ok, 100, "{table}");
    assert_eq!(st.view.ok, 400, "{table}");
    assert_eq!(st.post.ok, 10, "{table}");
    assert_eq!(st.view.latency.count, 400, "{table}");
    // Every tray: all 20 authors.
    let t = &st.tray_sizes;
    assert_eq!(
        (t.reads, t.min, t.max, t.off_size),
        (100, 20, 20, 0),
        "{table}"
    );
    // 400 views over 40 × 5 pairs: most pairs, each counted once.
    assert!(
        st.distinct_views > 100 && st.distinct_views <= 200,
        "{table}"
    );
    let c = &st.view_check;
    assert_eq!((c.sampled, c.matched, c.mismatched), (40, 40, 0), "{table}");
    assert!(report.verified(), "{table}");
    assert!(table.contains("every tray held all 20 authors"), "{table}");
    assert!(!st.series.is_empty(), "a point a second");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_drops_views_fails_the_check() {
    let mut cfg = config(start(7));
    cfg.stories.post_rate = 0.0;
    let report = run::run(&cfg).await.expect("the run completes");
    let table = report.summary_table();
    let c = &report.stories.as_ref().unwrap().view_check;
    assert!(c.mismatched > 0, "{table}");
    assert!(
        c.mismatches
            .iter()
            .all(|m| m.reason.contains("not counted")),
        "{table}"
    );
    assert!(!report.verified(), "{table}");
    assert!(table.contains("VERIFICATION FAILED"), "{table}");
}
