//! Stories and the social graph (PROTOCOL 5, `notes/stories-contract.md`)
//! against the real binary: follows and exact counts, the tray's order over
//! a table of cases, the celebrity (read-time merge) path giving the same
//! tray as the push path, exactly one view per viewer under a race, the
//! close-friends audience checked at fetch time, expiry and deletion
//! everywhere at once (`story_gone`, sync, physical deletion of key and
//! blob), replies and reactions as messages, cacheable story media,
//! highlights that outlive their story, and the story actor under an
//! operator's restart.
//!
//! Every frame received is checked against `schema/frames/server/`, every
//! HTTP answer against `schema/openapi.json` (or `admin-openapi.json`).

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use common::media::{blob_client, blob_request, query_param, url_expires_in};
use common::shred::{
    assert_key_not_logged, assert_key_on_disk, blob_file_of_url, wait_until_shredded, DataKey,
    SHRED_WINDOW_MS,
};
use common::socket::{QUIET, WAIT};
use common::stories::{
    add_close_friend, counts, delete_close_friend, delete_follow, delete_highlight, delete_story,
    expect_status, follow, get_story, get_user, get_user_stories, get_viewers, highlight,
    highlights, is_story, open_story, post_story, put_close_friend, put_follow, react,
    remove_close_friend, reply, tray, unfollow, user_stories, Posted,
};
use common::{
    full_history, i64_of, is_about, is_type, new_cid, now_ms, register_user, sleep_until_ms,
    str_of, u64_of, unknown_id_like, Server, TestSocket, TestUser,
};
use ephemera_load::client::{timed_text, Http, Session, Target};
use ephemera_load::crypto;
use futures_util::stream::{self, StreamExt as _};
use reqwest::Method;
use serde_json::Value;

/// Flags every server here starts with: many registrations and logins
/// from one address, which the password-call limits would otherwise slow.
const LOGIN_FLAGS: [&str; 8] = [
    "--login-address-rate-per-second",
    "100000",
    "--login-address-burst",
    "100000",
    "--login-account-burst",
    "100",
    "--kdf-queue",
    "256",
];

/// How late after `expires_at` a `story_gone` may reach an online device.
/// The contract gives no bound for stories; one second is what an operator
/// would call "on time" (and what the restart test is asked to show).
const GONE_LAG_BOUND_MS: i64 = 1_000;

/// How early a `story_gone` (or burn) may arrive: clock granularity only.
const EARLY_BOUND_MS: i64 = -50;

/// How late a `burned` may reach an online device (the contract's 100 ms
/// plus scheduling, as in tests/expiry.rs).
const BURN_LAG_BOUND_MS: i64 = 150;

/// Longest validity of a story's `get_url` (PROTOCOL 4: 5 minutes).
const URL_CAP_SECS: u64 = 300;

async fn start(extra: &[&str]) -> Server {
    let mut args: Vec<&str> = LOGIN_FLAGS.to_vec();
    args.extend_from_slice(extra);
    Server::start(&args).await
}

/// The sum of every series of metric `name` in a `/metrics` text, whatever
/// its labels (the story metrics are labelled by audience or reason).
fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?;
            let value = if rest.starts_with('{') {
                &rest[rest.find('}')? + 1..]
            } else {
                rest
            };
            value
                .starts_with(' ')
                .then(|| value.trim().parse::<f64>().ok())
                .flatten()
        })
        .sum()
}

/// Register a user and log in once.
async fn person(http: &Http, name: &str) -> (TestUser, Session) {
    let user = register_user(http, name).await;
    let session = user.login(http).await;
    (user, session)
}

// ---------------------------------------------------------------------------
// Social graph
// ---------------------------------------------------------------------------

/// Follow and unfollow are idempotent and the counts of `GET /users/{id}`
/// exact, even when one follower's duplicate PUTs race; oneself gets 422,
/// an unknown or malformed id 404, no token 401. Close friends alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follow_is_idempotent_and_counted_exactly() {
    let server = start(&[]).await;
    let http = server.http();
    let (alice, a) = person(&http, "alice").await;
    let (bob, b) = person(&http, "bob").await;
    let (carol, c) = person(&http, "carol").await;
    assert_eq!(counts(&http, &b, &alice.user_id).await, (0, 0), "fresh");

    // Twice in a row: one follow.
    follow(&http, &b, &alice.user_id).await;
    follow(&http, &b, &alice.user_id).await;
    assert_eq!(
        counts(&http, &c, &alice.user_id).await,
        (1, 0),
        "alice after bob's two PUTs"
    );
    assert_eq!(
        counts(&http, &a, &bob.user_id).await,
        (0, 1),
        "bob follows one"
    );
    let profile = expect_status(get_user(&http, &c, &alice.user_id).await, 200, "profile");
    assert_eq!(
        str_of(&profile, "username"),
        alice.username,
        "profile username"
    );

    // Carol's two devices race 12 PUTs of the same follow: one follow.
    let c2 = carol.login(&http).await;
    let puts = (0..12).map(|i| {
        let http = http.clone();
        let session = if i % 2 == 0 { c.clone() } else { c2.clone() };
        let target = alice.user_id.clone();
        tokio::spawn(async move { put_follow(&http, &session, &target).await.status })
    });
    for status in futures_util::future::join_all(puts).await {
        assert_eq!(status.expect("the PUT task"), 204, "a racing duplicate PUT");
    }
    assert_eq!(
        counts(&http, &a, &alice.user_id).await,
        (2, 0),
        "12 racing PUTs from one follower count once"
    );
    assert_eq!(counts(&http, &a, &carol.user_id).await, (0, 1), "carol");

    // Six more followers race four PUTs each.
    let crowd: Vec<(TestUser, Session)> = stream::iter(0..6)
        .map(|i| {
            let http = http.clone();
            async move { person(&http, &format!("fan{i}")).await }
        })
        .buffer_unordered(6)
        .collect()
        .await;
    let puts = crowd.iter().flat_map(|(_, s)| {
        let http = http.clone();
        let target = alice.user_id.clone();
        (0..4).map(move |_| {
            let (http, s, target) = (http.clone(), s.clone(), target.clone());
            tokio::spawn(async move { put_follow(&http, &s, &target).await.status })
        })
    });
    for status in futures_util::future::join_all(puts.collect::<Vec<_>>()).await {
        assert_eq!(status.expect("the PUT task"), 204, "a racing PUT");
    }
    assert_eq!(
        counts(&http, &b, &alice.user_id).await,
        (8, 0),
        "2 + 6 distinct followers"
    );

    // Unfollow twice: one unfollow; unfollowing what is not followed: 204.
    unfollow(&http, &b, &alice.user_id).await;
    unfollow(&http, &b, &alice.user_id).await;
    unfollow(&http, &b, &carol.user_id).await;
    assert_eq!(counts(&http, &a, &alice.user_id).await, (7, 0), "bob left");
    assert_eq!(
        counts(&http, &a, &bob.user_id).await,
        (0, 0),
        "bob follows none"
    );

    // Refusals.
    expect_status(
        put_follow(&http, &a, &alice.user_id).await,
        422,
        "following oneself",
    );
    let taken: Vec<&str> = [&alice, &bob, &carol]
        .iter()
        .map(|u| u.user_id.as_str())
        .chain(crowd.iter().map(|(u, _)| u.user_id.as_str()))
        .collect();
    let unknown = unknown_id_like(&alice.user_id, &taken);
    expect_status(
        put_follow(&http, &a, &unknown).await,
        404,
        "following an unknown user",
    );
    expect_status(
        put_follow(&http, &a, "not-an-id!").await,
        404,
        "following a malformed id",
    );
    expect_status(
        get_user(&http, &a, &unknown).await,
        404,
        "profile of an unknown user",
    );
    expect_status(
        get_user_stories(&http, &a, &unknown).await,
        404,
        "stories of an unknown user",
    );
    expect_status(
        put_close_friend(&http, &a, &alice.user_id).await,
        422,
        "close-friending oneself",
    );
    expect_status(
        put_close_friend(&http, &a, &unknown).await,
        404,
        "close-friending an unknown user",
    );
    add_close_friend(&http, &a, &bob.user_id).await;
    add_close_friend(&http, &a, &bob.user_id).await;
    remove_close_friend(&http, &a, &bob.user_id).await;
    remove_close_friend(&http, &a, &bob.user_id).await;
    expect_status(
        delete_close_friend(&http, &a, &carol.user_id).await,
        204,
        "removing a close friend one never had",
    );
    expect_status(
        delete_follow(&http, &a, &carol.user_id).await,
        204,
        "unfollowing someone one never followed",
    );
    assert_eq!(
        counts(&http, &a, &alice.user_id).await,
        (7, 0),
        "the refusals changed nothing"
    );
    let anonymous = http
        .raw(
            Method::PUT,
            &format!("/api/v1/following/{}", alice.user_id),
            None,
            None,
        )
        .await
        .expect("PUT without a token");
    expect_status(anonymous, 401, "following without a token");
}

// ---------------------------------------------------------------------------
// The tray
// ---------------------------------------------------------------------------

/// One author of a tray case.
#[derive(Clone, Copy, Debug)]
struct AuthorSpec {
    label: &'static str,
    /// The viewer follows the author.
    followed: bool,
    /// The viewer has the author on the VIEWER's close-friends list (the
    /// tray's `close_friend`).
    close_friend: bool,
    /// The author has the viewer on the AUTHOR's list (the audience of the
    /// author's `close_friends` stories).
    viewer_in_their_list: bool,
    /// How many of the author's stories the viewer may see it opens, oldest
    /// first.
    views: usize,
}

const fn author(label: &'static str) -> AuthorSpec {
    AuthorSpec {
        label,
        followed: true,
        close_friend: false,
        viewer_in_their_list: false,
        views: 0,
    }
}

impl AuthorSpec {
    const fn close_friend(mut self) -> Self {
        self.close_friend = true;
        self
    }
    const fn not_followed(mut self) -> Self {
        self.followed = false;
        self
    }
    const fn viewer_in_their_list(mut self) -> Self {
        self.viewer_in_their_list = true;
        self
    }
    const fn views(mut self, n: usize) -> Self {
        self.views = n;
        self
    }
}

/// `everyone` and `close_friends`.
const EVERYONE: &str = "everyone";
const CLOSE: &str = "close_friends";

/// A tray scenario: authors, their posts in posting order (later is
/// newer), and the tray order the rule gives, written out by hand.
struct Case {
    name: &'static str,
    authors: Vec<AuthorSpec>,
    posts: Vec<(&'static str, &'static str)>,
    expected: Vec<&'static str>,
}

fn close_friend_first() -> Case {
    Case {
        name: "close friend first",
        authors: vec![author("x").close_friend(), author("y")],
        posts: vec![("x", EVERYONE), ("y", EVERYONE)],
        // y is newer, but x is a close friend.
        expected: vec!["x", "y"],
    }
}

fn unviewed_first() -> Case {
    Case {
        name: "unviewed first",
        authors: vec![
            author("x").views(1),
            author("y"),
            author("w").views(1),
            author("z").close_friend().views(1),
        ],
        posts: vec![
            ("y", EVERYONE),
            ("w", EVERYONE),
            ("w", EVERYONE),
            ("x", EVERYONE),
            ("z", EVERYONE),
        ],
        // Unviewed: w (one of two seen, newer), y. Then the all-viewed, the
        // close friend z first although unviewed y is no close friend.
        expected: vec!["w", "y", "z", "x"],
    }
}

fn recency() -> Case {
    Case {
        name: "recency",
        authors: vec![author("p"), author("q"), author("r")],
        posts: vec![
            ("p", EVERYONE),
            ("q", EVERYONE),
            ("r", EVERYONE),
            ("p", EVERYONE),
        ],
        // p's newest story is the newest of all.
        expected: vec!["p", "r", "q"],
    }
}

/// Every rule at once, and the authors the tray must leave out: one not
/// followed (e), one followed without stories (h), one whose only story is
/// for close friends the viewer is not among (f).
fn mixed() -> Case {
    Case {
        name: "mixed",
        authors: vec![
            author("a").close_friend(),
            author("b"),
            author("c").close_friend().views(1),
            author("d").views(1),
            author("e").not_followed(),
            author("f"),
            author("g"),
            author("h"),
            author("k").viewer_in_their_list(),
            author("m").views(1),
        ],
        posts: vec![
            ("a", EVERYONE),
            ("m", EVERYONE),
            ("c", EVERYONE),
            ("g", EVERYONE),
            ("g", CLOSE),
            ("d", EVERYONE),
            ("e", EVERYONE),
            ("f", CLOSE),
            ("b", EVERYONE),
            ("m", EVERYONE),
            ("k", CLOSE),
        ],
        expected: vec!["a", "k", "m", "b", "g", "c", "d"],
    }
}

/// A posted story of a case, with the clock around its `POST`.
struct Post {
    posted: Posted,
    audience: &'static str,
    /// The local clock just before and just after the upload and `POST`:
    /// `posted_at` must fall in between.
    window: (i64, i64),
}

/// An author of a built case.
struct Author {
    spec: AuthorSpec,
    user: TestUser,
    session: Session,
    posts: Vec<Post>,
}

impl Author {
    /// The stories the viewer may see, oldest first.
    fn visible(&self) -> Vec<&Post> {
        self.posts
            .iter()
            .filter(|p| p.audience == EVERYONE || self.spec.viewer_in_their_list)
            .collect()
    }
}

/// A case built on a server.
struct World {
    viewer: TestUser,
    vs: Session,
    authors: Vec<Author>,
}

impl World {
    fn author(&self, label: &str) -> &Author {
        self.authors
            .iter()
            .find(|a| a.spec.label == label)
            .unwrap_or_else(|| panic!("no author {label}"))
    }

    fn author_mut(&mut self, label: &str) -> &mut Author {
        self.authors
            .iter_mut()
            .find(|a| a.spec.label == label)
            .unwrap_or_else(|| panic!("no author {label}"))
    }

    fn label_of(&self, user_id: &str) -> &'static str {
        self.authors
            .iter()
            .find(|a| a.user.user_id == user_id)
            .map(|a| a.spec.label)
            .unwrap_or_else(|| panic!("the tray names {user_id}, who is none of the authors"))
    }
}

/// Register the viewer and the authors of `case` and set up the graph.
/// `also_following`: a session that follows every author too (to push
/// their follower counts over a fan-out threshold).
async fn setup_case(http: &Http, case: &Case, also_following: Option<&Session>) -> World {
    let (viewer, vs) = person(http, "viewer").await;
    let mut authors = Vec::new();
    for spec in &case.authors {
        let (user, session) = person(http, &format!("author_{}", spec.label)).await;
        if spec.followed {
            follow(http, &vs, &user.user_id).await;
        }
        if spec.close_friend {
            add_close_friend(http, &vs, &user.user_id).await;
        }
        if spec.viewer_in_their_list {
            add_close_friend(http, &session, &viewer.user_id).await;
        }
        if let Some(extra) = also_following {
            follow(http, extra, &user.user_id).await;
        }
        authors.push(Author {
            spec: *spec,
            user,
            session,
            posts: Vec::new(),
        });
    }
    World {
        viewer,
        vs,
        authors,
    }
}

/// Post the stories of `case` in order, a few milliseconds apart so that
/// every `posted_at` differs.
async fn post_case(http: &Http, blobs: &reqwest::Client, case: &Case, world: &mut World) {
    for (label, audience) in &case.posts {
        tokio::time::sleep(Duration::from_millis(5)).await;
        let author = world.author_mut(label);
        let before = now_ms();
        let posted = post_story(http, blobs, &author.session, audience, Some(600), None).await;
        let after = now_ms();
        author.posts.push(Post {
            posted,
            audience,
            window: (before, after),
        });
    }
    await_fanout(http, world).await;
}

/// A story's 201 comes once its row is durable; the tray references go to
/// the followers right after, in the story's own time. Waits until the
/// viewer's tray holds every story it may see of every author it follows.
async fn await_fanout(http: &Http, world: &World) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let items = tray(http, &world.vs).await;
        let done = world
            .authors
            .iter()
            .filter(|a| a.spec.followed && !a.visible().is_empty())
            .all(|a| {
                items.iter().any(|i| {
                    str_of(i, "user_id") == a.user.user_id
                        && i["story_count"].as_u64() == Some(a.visible().len() as u64)
                })
            });
        if done {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the fanout never reached the viewer's tray: {items:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The viewer opens the first `views` stories it may see of each author.
async fn view_case(http: &Http, world: &World) {
    for author in &world.authors {
        for post in author.visible().into_iter().take(author.spec.views) {
            let story = open_story(http, &world.vs, &post.posted.story_id).await;
            assert_eq!(
                str_of(&story, "author"),
                author.user.user_id,
                "story author"
            );
        }
    }
}

/// The story_ids of `case` the viewer's devices must be told about on the
/// push path: every story it may see of every author it follows.
fn pushed_ids(world: &World) -> Vec<String> {
    world
        .authors
        .iter()
        .filter(|a| a.spec.followed)
        .flat_map(|a| a.visible().into_iter().map(|p| p.posted.story_id.clone()))
        .collect()
}

/// A tray item reduced to what two servers (or paths) must agree on:
/// `(author label, has_unviewed, story_count, close_friend)`.
type Shape = (&'static str, bool, u64, bool);

/// Check the viewer's tray against the world, field by field, and against
/// the hand-written `expected` order; returns its shape. Also checks each
/// author's `/users/{id}/stories` as the viewer sees it.
async fn check_tray(http: &Http, world: &World, case_name: &str, expected: &[&str]) -> Vec<Shape> {
    let followed = world.authors.iter().filter(|a| a.spec.followed).count() as u64;
    assert_eq!(
        counts(http, &world.vs, &world.viewer.user_id).await.1,
        followed,
        "{case_name}: the viewer's following_count"
    );
    let items = tray(http, &world.vs).await;
    let mut want: Vec<(bool, bool, i64, String, &'static str, u64)> = Vec::new();
    for author in &world.authors {
        let visible = author.visible();
        // The author's stories as the viewer may see them: oldest first,
        // exactly the visible ones, `viewed` for those it opened.
        let listed = user_stories(http, &world.vs, &author.user.user_id).await;
        let listed_ids: Vec<&str> = listed.iter().map(|s| str_of(s, "story_id")).collect();
        let visible_ids: Vec<&str> = visible.iter().map(|p| p.posted.story_id.as_str()).collect();
        assert_eq!(
            listed_ids, visible_ids,
            "{case_name}: /users/{}/stories lists what the viewer may see, oldest first",
            author.spec.label
        );
        let mut latest = None;
        for (i, (item, post)) in listed.iter().zip(&visible).enumerate() {
            let posted_at = i64_of(item, "posted_at");
            assert!(
                (post.window.0..=post.window.1).contains(&posted_at),
                "{case_name}: posted_at {posted_at} of {}'s story {i} is outside its POST \
                 {:?}",
                author.spec.label,
                post.window
            );
            assert_eq!(
                i64_of(item, "expires_at"),
                post.posted.expires_at,
                "{case_name}: expires_at as posted"
            );
            assert_eq!(
                item["viewed"].as_bool(),
                Some(i < author.spec.views),
                "{case_name}: `viewed` of {}'s story {i}: {item}",
                author.spec.label
            );
            latest = Some(posted_at);
        }
        if let (true, Some(latest)) = (author.spec.followed, latest) {
            want.push((
                author.spec.views < visible.len(),
                author.spec.close_friend,
                latest,
                author.user.user_id.clone(),
                author.spec.label,
                visible.len() as u64,
            ));
        }
    }
    // The rule: unviewed first, close friends first, newest first, then
    // user_id ascending.
    want.sort_by(|x, y| {
        y.0.cmp(&x.0)
            .then(y.1.cmp(&x.1))
            .then(y.2.cmp(&x.2))
            .then(x.3.cmp(&y.3))
    });
    let rule_order: Vec<&str> = want.iter().map(|w| w.4).collect();
    assert_eq!(
        rule_order, expected,
        "{case_name}: the test's own expectation disagrees with the rule"
    );
    let got: Vec<&str> = items
        .iter()
        .map(|i| world.label_of(str_of(i, "user_id")))
        .collect();
    assert_eq!(
        got, expected,
        "{case_name}: tray order (authors by label); tray: {items:?}"
    );
    let mut shape = Vec::new();
    for (item, w) in items.iter().zip(&want) {
        let label = w.4;
        let author = world.author(label);
        assert_eq!(
            str_of(item, "username"),
            author.user.username,
            "{case_name}: {label} username"
        );
        assert_eq!(
            item["has_unviewed"].as_bool(),
            Some(w.0),
            "{case_name}: {label} has_unviewed: {item}"
        );
        assert_eq!(
            item["close_friend"].as_bool(),
            Some(w.1),
            "{case_name}: {label} close_friend: {item}"
        );
        assert_eq!(
            i64_of(item, "latest_at"),
            w.2,
            "{case_name}: {label} latest_at is its newest visible story's posted_at: {item}"
        );
        assert_eq!(
            u64_of(item, "story_count"),
            w.5,
            "{case_name}: {label} story_count counts the stories the viewer may see: {item}"
        );
        shape.push((label, w.0, w.5, w.1));
    }
    shape
}

/// The tray over a table of cases: close friend first, unviewed first,
/// recency, and all of it mixed with authors the tray must leave out. Every
/// field of every item is checked, and each author's story listing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tray_order_follows_the_rule_over_a_table_of_cases() {
    let server = start(&[]).await;
    let http = server.http();
    let blobs = blob_client();
    for case in [close_friend_first(), unviewed_first(), recency(), mixed()] {
        let mut world = setup_case(&http, &case, None).await;
        post_case(&http, &blobs, &case, &mut world).await;
        view_case(&http, &world).await;
        check_tray(&http, &world, case.name, &case.expected).await;
    }
}

/// The celebrity path: with `--story-fanout-max-followers 1`, authors with
/// two followers get no fan-out and the tray merges their stories at read
/// time; authors with one follower are on the push path. The same scenario
/// built both ways gives the same tray, field by field, also after a
/// follow of someone who posted before (which no fan-out told the viewer
/// about) and an unfollow. Online followers get `story_posted` on both
/// paths; an offline follower of an author over the threshold gets nothing
/// written for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn celebrity_authors_give_the_same_tray_as_the_push_path() {
    let server = start(&["--story-fanout-max-followers", "1"]).await;
    let http = server.http();
    let blobs = blob_client();
    let (_, fan) = person(&http, "fan").await;
    let case = mixed();

    // Push path: each author's only possible follower is the viewer.
    let mut push = setup_case(&http, &case, None).await;
    // Celebrity path: every author also has `fan`: two followers, over 1.
    let mut celeb = setup_case(&http, &case, Some(&fan)).await;
    for (world, label) in [(&push, "push"), (&celeb, "celebrity")] {
        for author in &world.authors {
            let (followers, _) = counts(&http, &world.vs, &author.user.user_id).await;
            let want = u64::from(author.spec.followed) + u64::from(label == "celebrity");
            assert_eq!(
                followers, want,
                "{label}: followers of {}",
                author.spec.label
            );
        }
    }
    let mut push_socket = TestSocket::connect(&server, &push.vs, "push-viewer").await;
    let mut celeb_socket = TestSocket::connect(&server, &celeb.vs, "celebrity-viewer").await;

    post_case(&http, &blobs, &case, &mut push).await;
    post_case(&http, &blobs, &case, &mut celeb).await;

    // Push path: one story_posted per story the viewer may see of an author
    // it follows, and none for the others.
    let want = pushed_ids(&push);
    for id in &want {
        let frame = push_socket
            .expect(&format!("story_posted for {id}"), |f| {
                is_story(f, "story_posted", id)
            })
            .await;
        let author = push
            .authors
            .iter()
            .find(|a| a.posts.iter().any(|p| &p.posted.story_id == id))
            .expect("an author posted it");
        assert_eq!(
            str_of(&frame, "author"),
            author.user.user_id,
            "story_posted.author"
        );
        let post = author
            .posts
            .iter()
            .find(|p| &p.posted.story_id == id)
            .expect("the post");
        assert_eq!(
            i64_of(&frame, "expires_at"),
            post.posted.expires_at,
            "story_posted.expires_at"
        );
    }
    let want: HashSet<String> = want.into_iter().collect();
    push_socket
        .assert_never(
            QUIET,
            "story_posted of a story it may not see or an author it does not follow",
            |f| is_type(f, "story_posted") && !want.contains(str_of(f, "story_id")),
        )
        .await;
    let cursors: Vec<u64> = push_socket
        .seen()
        .iter()
        .filter(|f| is_type(f, "story_posted"))
        .map(|f| u64_of(f, "cursor"))
        .collect();
    assert!(
        cursors.windows(2).all(|w| w[0] < w[1]),
        "story_posted cursors strictly increase: {cursors:?}"
    );
    // Celebrity path: no follower gets a row per story, but the followers
    // online are told all the same, of the same stories.
    let told = pushed_ids(&celeb);
    for id in &told {
        celeb_socket
            .expect(&format!("story_posted for {id} (online)"), |f| {
                is_story(f, "story_posted", id)
            })
            .await;
    }
    let told: HashSet<String> = told.into_iter().collect();
    celeb_socket
        .assert_never(
            QUIET,
            "story_posted of a story it may not see or an author it does not follow",
            |f| is_type(f, "story_posted") && !told.contains(str_of(f, "story_id")),
        )
        .await;
    // `fan` follows every author of this world but was offline: for those
    // over the threshold (the viewer follows them too) nothing was written
    // for it, so its sync tells it of none of their stories. (The others
    // have `fan` as their only follower: on the push path, it is told.)
    let celebrities: HashSet<String> = celeb
        .authors
        .iter()
        .filter(|a| a.spec.followed)
        .map(|a| a.user.user_id.clone())
        .collect();
    let mut fan_socket = TestSocket::connect(&server, &fan, "fan").await;
    let synced = fan_socket.sync(0).await;
    assert!(
        !synced
            .events
            .iter()
            .any(|f| is_type(f, "story_posted") && celebrities.contains(str_of(f, "author"))),
        "an offline follower of an author over the threshold gets no story_posted: {:?}",
        synced.events
    );
    assert!(
        synced.events.iter().any(|f| is_type(f, "story_posted")),
        "the authors with `fan` as their only follower fanned out to it: {:?}",
        synced.events
    );

    view_case(&http, &push).await;
    view_case(&http, &celeb).await;
    let mut expected = case.expected.clone();
    let a = check_tray(&http, &push, "push path", &expected).await;
    let b = check_tray(&http, &celeb, "celebrity path", &expected).await;
    assert_eq!(a, b, "the same scenario gives the same tray on both paths");

    // Following e, who posted before: its story joins the tray on both
    // paths (unviewed, no close friend, posted between d and b).
    for world in [&mut push, &mut celeb] {
        follow(&http, &world.vs, &world.author("e").user.user_id).await;
        world.author_mut("e").spec.followed = true;
    }
    expected = vec!["a", "k", "m", "b", "e", "g", "c", "d"];
    let a = check_tray(&http, &push, "push path, after following e", &expected).await;
    let b = check_tray(
        &http,
        &celeb,
        "celebrity path, after following e",
        &expected,
    )
    .await;
    assert_eq!(a, b, "after a follow, the same tray on both paths");

    // Unfollowing a: it leaves the tray at once on both paths.
    for world in [&mut push, &mut celeb] {
        unfollow(&http, &world.vs, &world.author("a").user.user_id).await;
        world.author_mut("a").spec.followed = false;
    }
    expected.retain(|l| *l != "a");
    let a = check_tray(&http, &push, "push path, after unfollowing a", &expected).await;
    let b = check_tray(
        &http,
        &celeb,
        "celebrity path, after unfollowing a",
        &expected,
    )
    .await;
    assert_eq!(a, b, "after an unfollow, the same tray on both paths");
}

// ---------------------------------------------------------------------------
// Views
// ---------------------------------------------------------------------------

/// 50 viewers with two devices each open one story at the same instant
/// (and the author a few times): `view_count` is exactly 50, `/viewers`
/// lists the 50 viewers once each, oldest first, never the author; a second
/// round changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_viewers_on_two_devices_count_once_each() {
    const VIEWERS: usize = 50;
    let server = start(&[]).await;
    let http = server.http();
    let blobs = blob_client();
    let (author, a) = person(&http, "author").await;
    let story = post_story(&http, &blobs, &a, EVERYONE, Some(600), None).await;

    let viewers: Vec<(TestUser, Session, Session)> = stream::iter(0..VIEWERS)
        .map(|i| {
            let http = http.clone();
            async move {
                let (user, first) = person(&http, &format!("viewer{i}")).await;
                let second = user.login(&http).await;
                (user, first, second)
            }
        })
        .buffer_unordered(8)
        .collect()
        .await;

    for round in 0..2 {
        let sessions: Vec<Session> = viewers
            .iter()
            .flat_map(|(_, s1, s2)| [s1.clone(), s2.clone()])
            .chain(std::iter::repeat_n(a.clone(), 3))
            .collect();
        let gate = Arc::new(tokio::sync::Barrier::new(sessions.len()));
        let opens = sessions.into_iter().map(|session| {
            let (http, gate, id) = (http.clone(), Arc::clone(&gate), story.story_id.clone());
            tokio::spawn(async move {
                gate.wait().await;
                get_story(&http, &session, &id).await.status
            })
        });
        for status in futures_util::future::join_all(opens.collect::<Vec<_>>()).await {
            assert_eq!(
                status.expect("the open task"),
                200,
                "round {round}: a racing open"
            );
        }
        let body = expect_status(
            get_viewers(&http, &a, &story.story_id).await,
            200,
            "viewers",
        );
        assert_eq!(
            u64_of(&body, "view_count"),
            VIEWERS as u64,
            "round {round}: one view per viewer, however many devices, never the author"
        );
        let listed = body["viewers"].as_array().expect("viewers array");
        let ids: Vec<&str> = listed.iter().map(|v| str_of(v, "user_id")).collect();
        let distinct: HashSet<&str> = ids.iter().copied().collect();
        let expected: HashSet<&str> = viewers.iter().map(|(u, _, _)| u.user_id.as_str()).collect();
        assert_eq!(ids.len(), VIEWERS, "round {round}: 50 entries: {ids:?}");
        assert_eq!(distinct, expected, "round {round}: exactly the 50 viewers");
        assert!(
            !distinct.contains(author.user_id.as_str()),
            "the author is not a viewer"
        );
        let times: Vec<i64> = listed.iter().map(|v| i64_of(v, "viewed_at")).collect();
        assert!(
            times.windows(2).all(|w| w[0] <= w[1]),
            "viewers oldest first: {times:?}"
        );
        assert!(
            times
                .iter()
                .all(|t| (story.expires_at - 600_000..=now_ms()).contains(t)),
            "viewed_at between posting and now: {times:?}"
        );
    }
    // A viewer sees its story as viewed.
    let (_, s1, _) = &viewers[0];
    let listed = user_stories(&http, s1, &author.user_id).await;
    assert_eq!(listed.len(), 1, "one story: {listed:?}");
    assert_eq!(listed[0]["viewed"], Value::Bool(true), "viewed: {listed:?}");
}

// ---------------------------------------------------------------------------
// Audience
// ---------------------------------------------------------------------------

/// A close-friends story: its author's close friend is told and can open
/// it; another follower is not told, gets 403 and no tray entry; once the
/// author takes the friend off the list, the friend gets 403 at once and
/// the story leaves its tray and listing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_friends_story_audience_is_checked_at_fetch() {
    let server = start(&[]).await;
    let http = server.http();
    let blobs = blob_client();
    let (author, a) = person(&http, "author").await;
    let (friend, f) = person(&http, "friend").await;
    let (_other, o) = person(&http, "other").await;
    follow(&http, &f, &author.user_id).await;
    follow(&http, &o, &author.user_id).await;
    add_close_friend(&http, &a, &friend.user_id).await;
    let mut f1 = TestSocket::connect(&server, &f, "friend-1").await;
    let mut o1 = TestSocket::connect(&server, &o, "other-1").await;

    let story = post_story(&http, &blobs, &a, CLOSE, Some(600), Some("for friends")).await;
    let id = story.story_id.clone();
    let posted = f1
        .expect("story_posted", |fr| is_story(fr, "story_posted", &id))
        .await;
    assert_eq!(str_of(&posted, "author"), author.user_id);

    // The friend.
    let opened = open_story(&http, &f, &id).await;
    assert_eq!(str_of(&opened, "audience"), CLOSE, "audience: {opened}");
    assert_eq!(str_of(&opened, "caption"), "for friends", "caption");
    assert_eq!(str_of(&opened, "author"), author.user_id);
    let items = tray(&http, &f).await;
    assert_eq!(items.len(), 1, "the friend's tray: {items:?}");
    assert_eq!(str_of(&items[0], "user_id"), author.user_id);
    assert_eq!(u64_of(&items[0], "story_count"), 1);
    assert_eq!(
        items[0]["close_friend"],
        Value::Bool(false),
        "close_friend is the VIEWER's list, not the author's"
    );
    assert_eq!(user_stories(&http, &f, &author.user_id).await.len(), 1);

    // The other follower.
    expect_status(
        get_story(&http, &o, &id).await,
        403,
        "a non-close-friend opens it",
    );
    assert!(
        tray(&http, &o).await.is_empty(),
        "no tray entry for a story one may not see"
    );
    assert!(
        user_stories(&http, &o, &author.user_id).await.is_empty(),
        "not listed for a non-close-friend"
    );
    expect_status(
        react(&http, &o, &id, "🔥").await,
        403,
        "a non-close-friend reacts",
    );
    expect_status(
        reply(&http, &o, &id, "hi").await,
        403,
        "a non-close-friend replies",
    );
    o1.assert_never(QUIET, "story_posted of a close-friends story", |fr| {
        is_type(fr, "story_posted")
    })
    .await;

    // The author takes the friend off the list: 403 at once.
    remove_close_friend(&http, &a, &friend.user_id).await;
    expect_status(
        get_story(&http, &f, &id).await,
        403,
        "opened right after being taken off close friends",
    );
    assert!(
        tray(&http, &f).await.is_empty(),
        "the story leaves the former friend's tray"
    );
    assert!(
        user_stories(&http, &f, &author.user_id).await.is_empty(),
        "and its listing"
    );
    expect_status(
        react(&http, &f, &id, "🔥").await,
        403,
        "the former friend reacts",
    );

    // Back on the list: the same story opens again (checked at fetch).
    add_close_friend(&http, &a, &friend.user_id).await;
    open_story(&http, &f, &id).await;

    let viewers = expect_status(get_viewers(&http, &a, &id).await, 200, "viewers");
    assert_eq!(u64_of(&viewers, "view_count"), 1, "only the friend viewed");
    expect_status(
        get_viewers(&http, &f, &id).await,
        403,
        "viewers, not the author",
    );
}

// ---------------------------------------------------------------------------
// The end of a story
// ---------------------------------------------------------------------------

/// A new device of `follower` that syncs from 0 after story `id` ended
/// gets exactly one `story_gone` with `reason`, and never its `story_posted`.
async fn sync_replays_only_the_end(
    server: &Server,
    http: &Http,
    follower: &TestUser,
    id: &str,
    reason: &str,
) {
    let session = follower.login(http).await;
    let mut device = TestSocket::connect(server, &session, "follower-syncing").await;
    let synced = device.sync(0).await;
    let gones: Vec<&Value> = synced
        .events
        .iter()
        .filter(|f| is_story(f, "story_gone", id))
        .collect();
    assert_eq!(
        gones.len(),
        1,
        "sync replays one story_gone: {:?}",
        synced.events
    );
    assert_eq!(str_of(gones[0], "reason"), reason);
    device
        .assert_never(QUIET, "story_posted of an ended story", |f| {
            is_story(f, "story_posted", id)
        })
        .await;
}

/// A 4-second story: before expiry it is in the tray, fetchable, listed and
/// replayed by sync; from `expires_at` on it is 404 everywhere and gone from
/// tray and listing; followers' online devices get `story_gone` (`expired`)
/// on time; a reply to it burns with it; a device syncing from 0 afterwards
/// gets `story_gone` and never `story_posted`; its key and blob leave disk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_story_expires_everywhere_on_time() {
    let server = start(&[]).await;
    let http = server.http();
    let blobs = blob_client();
    let (author, a) = person(&http, "author").await;
    let (follower, b) = person(&http, "follower").await;
    follow(&http, &b, &author.user_id).await;
    let mut a1 = TestSocket::connect(&server, &a, "author-1").await;
    let mut b1 = TestSocket::connect(&server, &b, "follower-1").await;
    let b2s = follower.login(&http).await;
    let mut b2 = TestSocket::connect(&server, &b2s, "follower-2").await;

    let story = post_story(&http, &blobs, &a, EVERYONE, Some(4), None).await;
    let id = story.story_id.clone();
    let expires_at = story.expires_at;
    for sock in [&mut b1, &mut b2] {
        let posted = sock
            .expect("story_posted", |f| is_story(f, "story_posted", &id))
            .await;
        assert_eq!(
            i64_of(&posted, "expires_at"),
            expires_at,
            "{}",
            sock.label()
        );
    }
    let key = DataKey::of_upload(&story.upload);
    assert_key_on_disk(&server, &key, "a live story's key").await;

    // Before expiry.
    let opened = open_story(&http, &b, &id).await;
    let blob_file = blob_file_of_url(&server, str_of(&opened["media"], "get_url"));
    assert!(blob_file.exists(), "the blob is at {}", blob_file.display());
    let items = tray(&http, &b).await;
    assert!(
        items.iter().any(|i| str_of(i, "user_id") == author.user_id),
        "in the tray before expiry: {items:?}"
    );
    assert_eq!(user_stories(&http, &b, &author.user_id).await.len(), 1);
    expect_status(
        get_viewers(&http, &a, &id).await,
        200,
        "viewers before expiry",
    );
    let replied = expect_status(reply(&http, &b, &id, "lovely").await, 201, "reply");
    let reply_id = str_of(&replied, "msg_id").to_owned();
    let reply_frame = a1.expect_about("message", &reply_id).await;
    assert!(
        i64_of(&reply_frame, "expires_at") <= expires_at,
        "a reply lives no longer than its story: {reply_frame}"
    );
    let b3s = follower.login(&http).await;
    let mut b3 = TestSocket::connect(&server, &b3s, "follower-3").await;
    let synced = b3.sync(0).await;
    assert!(
        now_ms() < expires_at,
        "the checks before expiry took too long to prove anything"
    );
    assert_eq!(
        synced
            .events
            .iter()
            .filter(|f| is_story(f, "story_posted", &id))
            .count(),
        1,
        "sync replays story_posted while the story lives: {:?}",
        synced.events
    );

    // Watch for the ends on their own tasks, so the checks below cannot
    // delay the moment a frame is read.
    let wait = Duration::from_millis((expires_at - now_ms()).max(0) as u64) + WAIT;
    let watch_gone = |mut sock: TestSocket| {
        let id = id.clone();
        tokio::spawn(async move {
            let gone = sock
                .expect_within(wait, "story_gone (expired)", |f| {
                    is_story(f, "story_gone", &id)
                })
                .await;
            (sock, gone, now_ms())
        })
    };
    let w1 = watch_gone(b1);
    let w2 = watch_gone(b2);
    let reply_expires = i64_of(&reply_frame, "expires_at");
    let wa = tokio::spawn({
        let reply_id = reply_id.clone();
        async move {
            let burned = a1
                .expect_within(wait, "burned (the reply)", |f| {
                    is_about(f, "burned", &reply_id)
                })
                .await;
            (a1, burned, now_ms())
        }
    });

    // From the very millisecond of expires_at: 404.
    sleep_until_ms(expires_at).await;
    expect_status(
        get_story(&http, &b, &id).await,
        404,
        "a follower opens it at expires_at",
    );
    expect_status(
        get_story(&http, &a, &id).await,
        404,
        "its author opens it after expiry",
    );
    expect_status(
        get_viewers(&http, &a, &id).await,
        404,
        "viewers after expiry",
    );
    assert!(
        tray(&http, &b)
            .await
            .iter()
            .all(|i| str_of(i, "user_id") != author.user_id),
        "gone from the tray"
    );
    assert!(
        user_stories(&http, &b, &author.user_id).await.is_empty(),
        "gone from the follower's listing"
    );
    assert!(
        user_stories(&http, &a, &author.user_id).await.is_empty(),
        "gone from the author's own listing"
    );
    expect_status(
        reply(&http, &b, &id, "late").await,
        404,
        "a reply after expiry",
    );

    for watcher in [w1, w2] {
        let (sock, gone, at) = watcher.await.expect("the story_gone watcher");
        let lag = at - expires_at;
        println!("{}: story_gone {lag} ms after expires_at", sock.label());
        assert!(
            (EARLY_BOUND_MS..=GONE_LAG_BOUND_MS).contains(&lag),
            "{}: story_gone must come at expires_at (within {GONE_LAG_BOUND_MS} ms), \
             lag was {lag} ms",
            sock.label()
        );
        assert_eq!(str_of(&gone, "reason"), "expired", "{}", sock.label());
        assert_eq!(str_of(&gone, "author"), author.user_id, "{}", sock.label());
    }
    let (_a1, burned, at) = wa.await.expect("the author's watcher");
    assert_eq!(
        str_of(&burned, "reason"),
        "expired",
        "the reply burns by expiry"
    );
    let lag = at - reply_expires;
    assert!(
        (EARLY_BOUND_MS..=BURN_LAG_BOUND_MS).contains(&lag),
        "the reply burns at its expires_at, lag was {lag} ms"
    );

    // A device that syncs from 0 now: story_gone, never story_posted.
    sync_replays_only_the_end(&server, &http, &follower, &id, "expired").await;

    wait_until_shredded(
        &server,
        &key,
        &blob_file,
        expires_at + SHRED_WINDOW_MS,
        "expired story",
    )
    .await;
    // The URL the follower got is dead too: a story's get_url lives no
    // longer than the story (403, expired) and the object is gone (404).
    let gone = blob_request(
        &blobs,
        Method::GET,
        str_of(&opened["media"], "get_url"),
        None,
    )
    .await;
    assert!(
        matches!(gone.status, 403 | 404) && gone.body != story.sealed,
        "GET of an expired story's blob: {}",
        gone.describe()
    );
    assert_key_not_logged(&server, &key);
}

/// Deletion by the author: others may not delete (403); after the author's
/// 204, the story is 404 for everyone at once, out of the tray, followers'
/// devices get `story_gone` (`deleted`), sync replays that and never the
/// `story_posted`, a second delete is 404, and key and blob leave disk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn author_deletion_is_immediate_for_everyone() {
    let server = start(&[]).await;
    let http = server.http();
    let blobs = blob_client();
    let (author, a) = person(&http, "author").await;
    let (follower, b) = person(&http, "follower").await;
    let (_stranger, c) = person(&http, "stranger").await;
    follow(&http, &b, &author.user_id).await;
    let mut b1 = TestSocket::connect(&server, &b, "follower-1").await;

    let story = post_story(&http, &blobs, &a, EVERYONE, Some(600), None).await;
    let id = story.story_id.clone();
    b1.expect("story_posted", |f| is_story(f, "story_posted", &id))
        .await;
    let opened = open_story(&http, &b, &id).await;
    open_story(&http, &c, &id).await;
    let blob_file = blob_file_of_url(&server, str_of(&opened["media"], "get_url"));
    let key = DataKey::of_upload(&story.upload);
    assert_key_on_disk(&server, &key, "a live story's key").await;

    expect_status(
        delete_story(&http, &b, &id).await,
        403,
        "a follower deletes it",
    );
    expect_status(
        delete_story(&http, &c, &id).await,
        403,
        "a stranger deletes it",
    );
    open_story(&http, &b, &id).await;

    expect_status(
        delete_story(&http, &a, &id).await,
        204,
        "the author deletes it",
    );
    let deleted_at = now_ms();
    for (s, who) in [(&b, "follower"), (&c, "stranger"), (&a, "author")] {
        expect_status(
            get_story(&http, s, &id).await,
            404,
            &format!("{who} opens it after deletion"),
        );
    }
    expect_status(
        get_viewers(&http, &a, &id).await,
        404,
        "viewers after deletion",
    );
    assert!(
        tray(&http, &b).await.is_empty(),
        "out of the follower's tray"
    );
    assert!(
        user_stories(&http, &b, &author.user_id).await.is_empty(),
        "unlisted"
    );
    expect_status(
        react(&http, &b, &id, "🔥").await,
        404,
        "a reaction after deletion",
    );
    expect_status(
        highlight(&http, &a, &id).await,
        404,
        "a highlight after deletion",
    );
    expect_status(delete_story(&http, &a, &id).await, 404, "a second delete");

    let gone = b1
        .expect("story_gone", |f| is_story(f, "story_gone", &id))
        .await;
    assert_eq!(str_of(&gone, "reason"), "deleted");
    assert_eq!(str_of(&gone, "author"), author.user_id);
    let lag = now_ms() - deleted_at;
    assert!(
        lag < GONE_LAG_BOUND_MS,
        "story_gone came {lag} ms after the delete"
    );

    sync_replays_only_the_end(&server, &http, &follower, &id, "deleted").await;

    wait_until_shredded(
        &server,
        &key,
        &blob_file,
        deleted_at + SHRED_WINDOW_MS,
        "deleted story",
    )
    .await;
    assert_key_not_logged(&server, &key);
}

// ---------------------------------------------------------------------------
// Replies and reactions
// ---------------------------------------------------------------------------

/// A reply and a reaction reach the author as timed messages in the 1:1
/// conversation with the sender, with `story_id` (and, for the reaction,
/// `reaction: true` and the emoji as body), expiring no later than the
/// story; history holds them. The refusals: one's own story, bad emoji,
/// empty body, unknown story.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_and_reactions_reach_the_author_as_messages() {
    let server = start(&[]).await;
    let http = server.http();
    let blobs = blob_client();
    let (author, a) = person(&http, "author").await;
    let (viewer, v) = person(&http, "viewer").await;
    let mut a1 = TestSocket::connect(&server, &a, "author-1").await;
    let a2s = author.login(&http).await;
    let mut a2 = TestSocket::connect(&server, &a2s, "author-2").await;
    let mut v1 = TestSocket::connect(&server, &v, "viewer-1").await;

    let story = post_story(&http, &blobs, &a, EVERYONE, Some(600), None).await;
    let id = story.story_id.clone();

    let replied = expect_status(reply(&http, &v, &id, "great shot").await, 201, "reply");
    let reply_id = str_of(&replied, "msg_id").to_owned();
    let conv = str_of(&replied, "conversation_id").to_owned();
    for sock in [&mut a1, &mut a2] {
        let m = sock.expect_about("message", &reply_id).await;
        let who = sock.label().to_owned();
        assert_eq!(
            str_of(&m, "conversation_id"),
            conv,
            "{who}: the reply's conversation"
        );
        assert_eq!(
            str_of(&m, "from"),
            viewer.user_id,
            "{who}: from the replier"
        );
        assert_eq!(str_of(&m, "story_id"), id, "{who}: story_id: {m}");
        assert_eq!(str_of(&m, "view_policy"), "timed", "{who}: timed");
        assert_eq!(str_of(&m, "body"), "great shot", "{who}: body");
        assert!(
            m.get("reaction").is_none(),
            "{who}: a reply is no reaction: {m}"
        );
        assert!(
            i64_of(&m, "expires_at") <= story.expires_at,
            "{who}: the reply outlives the story: {m}"
        );
    }

    expect_status(react(&http, &v, &id, "🔥").await, 204, "reaction");
    for sock in [&mut a1, &mut a2] {
        let m = sock
            .expect("the reaction message", |f| {
                is_type(f, "message") && f.get("reaction") == Some(&Value::Bool(true))
            })
            .await;
        let who = sock.label().to_owned();
        assert_eq!(str_of(&m, "body"), "🔥", "{who}: the emoji is the body");
        assert_eq!(str_of(&m, "story_id"), id, "{who}: story_id");
        assert_eq!(
            str_of(&m, "from"),
            viewer.user_id,
            "{who}: from the reactor"
        );
        assert_eq!(
            str_of(&m, "conversation_id"),
            conv,
            "{who}: the same conversation"
        );
        assert_eq!(str_of(&m, "view_policy"), "timed", "{who}: timed");
        assert!(
            i64_of(&m, "expires_at") <= story.expires_at,
            "{who}: the reaction outlives the story: {m}"
        );
    }

    // It is their 1:1 conversation: a direct send lands in the same one.
    let ack = v1
        .send_ok(timed_text(
            &new_cid("dm"),
            Target::User(&author.user_id),
            "hello",
            600,
        ))
        .await;
    assert_eq!(
        str_of(&ack, "conversation_id"),
        conv,
        "the reply went to the 1:1 conversation of replier and author"
    );
    let history = full_history(&http, &a, &conv).await;
    let kept = history
        .iter()
        .find(|m| m.msg_id == reply_id)
        .unwrap_or_else(|| panic!("history holds the reply: {history:?}"));
    assert_eq!(
        kept.extra.get("story_id").and_then(Value::as_str),
        Some(id.as_str()),
        "history keeps the reply's story_id"
    );

    // Refusals.
    expect_status(
        react(&http, &a, &id, "🔥").await,
        422,
        "reacting to one's own story",
    );
    expect_status(
        react(&http, &v, &id, &"a".repeat(33)).await,
        422,
        "a 33-byte emoji",
    );
    expect_status(
        react(&http, &v, &id, "\u{7}").await,
        422,
        "a control character",
    );
    expect_status(react(&http, &v, &id, "").await, 422, "an empty emoji");
    expect_status(reply(&http, &v, &id, "").await, 422, "an empty reply");
    let unknown = unknown_id_like(&id, &[]);
    expect_status(
        react(&http, &v, &unknown, "🔥").await,
        404,
        "reacting to an unknown story",
    );
    expect_status(
        reply(&http, &v, &unknown, "hi").await,
        404,
        "replying to an unknown story",
    );
    a1.assert_never(QUIET, "a message from a refused reaction or reply", |f| {
        is_type(f, "message")
            && f.get("story_id").is_some()
            && str_of(f, "body") != "great shot"
            && str_of(f, "body") != "🔥"
    })
    .await;
}

// ---------------------------------------------------------------------------
// Media
// ---------------------------------------------------------------------------

/// A story's `get_url` serves the ciphertext, which its `data_key` opens,
/// with `Cache-Control: private, max-age=N`, N at most the whole seconds
/// left until `expires_at`; the URL itself lives at most 5 minutes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn story_media_is_cacheable_no_longer_than_the_story() {
    let server = start(&[]).await;
    let http = server.http();
    let blobs = blob_client();
    let (author, a) = person(&http, "author").await;
    let (_viewer, v) = person(&http, "viewer").await;

    for ttl in [20, 86_400] {
        let story = post_story(&http, &blobs, &a, EVERYONE, Some(ttl), None).await;
        let before = now_ms();
        let opened = open_story(&http, &v, &story.story_id).await;
        assert_eq!(str_of(&opened, "author"), author.user_id);
        let media = &opened["media"];
        assert_eq!(
            str_of(media, "media_key"),
            story.upload.media_key,
            "media_key"
        );
        assert_eq!(
            str_of(media, "data_key"),
            story.upload.data_key_b64,
            "a story's data key is its upload's"
        );
        let url = str_of(media, "get_url");
        assert!(
            url_expires_in(url) <= URL_CAP_SECS,
            "ttl {ttl}: get_url lives at most {URL_CAP_SECS} s: {url}"
        );
        assert!(
            query_param(url, "response-cache-control").is_some(),
            "ttl {ttl}: the get_url signs response-cache-control: {url}"
        );
        let left = (story.expires_at - before) / 1000;
        let got = blob_request(&blobs, Method::GET, url, None).await;
        assert_eq!(
            got.status,
            200,
            "ttl {ttl}: GET get_url: {}",
            got.describe()
        );
        assert!(
            got.body == story.sealed,
            "ttl {ttl}: the ciphertext as uploaded"
        );
        let key = crypto::data_key(str_of(media, "data_key")).expect("a 32-byte key");
        let plain = crypto::open(&key, &got.body).expect("the data key opens the blob");
        assert!(plain == story.plain, "ttl {ttl}: decrypts to the photo");
        let cache = got
            .cache_control
            .clone()
            .unwrap_or_else(|| panic!("ttl {ttl}: no Cache-Control: {}", got.describe()));
        assert!(cache.contains("private"), "ttl {ttl}: private: {cache:?}");
        let max_age: i64 = cache
            .split(',')
            .find_map(|d| d.trim().strip_prefix("max-age="))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("ttl {ttl}: Cache-Control without max-age=N: {cache:?}"));
        println!("ttl {ttl}: {cache:?}, {left} s left");
        assert!(
            max_age <= left,
            "ttl {ttl}: max-age={max_age} outlives the story ({left} s left)"
        );
        assert!(max_age >= 0, "ttl {ttl}: max-age={max_age}");
    }
}

// ---------------------------------------------------------------------------
// Highlights
// ---------------------------------------------------------------------------

/// A highlight outlives its story: made by the author (others 403), still
/// listed after the story expired and its key was shredded, its own data key
/// opens its own blob to the original photo; the author deletes it (others
/// 403, twice 404) and its key and blob leave disk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn highlights_outlive_their_story() {
    let server = start(&[]).await;
    let http = server.http();
    let blobs = blob_client();
    let (author, a) = person(&http, "author").await;
    let (_fan, f) = person(&http, "fan").await;
    follow(&http, &f, &author.user_id).await;

    let story = post_story(&http, &blobs, &a, EVERYONE, Some(3), Some("summer")).await;
    let id = story.story_id.clone();
    let opened = open_story(&http, &f, &id).await;
    let story_blob = blob_file_of_url(&server, str_of(&opened["media"], "get_url"));

    expect_status(highlight(&http, &f, &id).await, 403, "a fan highlights it");
    let unknown = unknown_id_like(&id, &[]);
    expect_status(
        highlight(&http, &a, &unknown).await,
        404,
        "an unknown story",
    );
    let before = now_ms();
    let made = expect_status(highlight(&http, &a, &id).await, 201, "highlight");
    let hid = str_of(&made, "highlight_id").to_owned();
    assert_eq!(str_of(&made, "story_id"), id, "highlight.story_id");
    assert_eq!(str_of(&made, "caption"), "summer", "highlight.caption");
    assert!(
        (before..=now_ms()).contains(&i64_of(&made, "created_at")),
        "created_at now: {made}"
    );
    assert_ne!(
        str_of(&made["media"], "data_key"),
        story.upload.data_key_b64,
        "a highlight has a key of its own"
    );

    // The story ends, and its own key and blob leave disk.
    sleep_until_ms(story.expires_at).await;
    expect_status(
        get_story(&http, &f, &id).await,
        404,
        "the story after expiry",
    );
    wait_until_shredded(
        &server,
        &DataKey::of_upload(&story.upload),
        &story_blob,
        story.expires_at + SHRED_WINDOW_MS,
        "the highlighted story, expired",
    )
    .await;

    // The highlight lives on, for the author and anyone else.
    let mut listed = None;
    for s in [&a, &f] {
        let items = highlights(&http, s, &author.user_id).await;
        assert_eq!(items.len(), 1, "one highlight: {items:?}");
        let h = items[0].clone();
        assert_eq!(str_of(&h, "highlight_id"), hid);
        assert_eq!(str_of(&h, "story_id"), id);
        assert_eq!(str_of(&h, "caption"), "summer");
        listed = Some(h);
    }
    let h = listed.expect("listed");
    let media = &h["media"];
    let key = DataKey::of_media(media);
    assert_ne!(key.b64, story.upload.data_key_b64, "not the story's key");
    assert_eq!(
        key.b64,
        str_of(&made["media"], "data_key"),
        "the key the 201 gave"
    );
    let url = str_of(media, "get_url").to_owned();
    let got = blob_request(&blobs, Method::GET, &url, None).await;
    assert_eq!(got.status, 200, "GET the highlight: {}", got.describe());
    assert!(
        got.body != story.sealed,
        "re-encrypted, not the story's blob"
    );
    let plain = crypto::open(&key.raw, &got.body)
        .unwrap_or_else(|err| panic!("the highlight's key must open its blob: {err:#}"));
    assert!(
        plain == story.plain,
        "the highlight decrypts to the original photo"
    );
    let highlight_blob = blob_file_of_url(&server, &url);
    assert!(highlight_blob.exists(), "{}", highlight_blob.display());

    expect_status(
        delete_highlight(&http, &f, &hid).await,
        403,
        "a fan deletes it",
    );
    expect_status(
        delete_highlight(&http, &a, &hid).await,
        204,
        "the author deletes it",
    );
    let deleted_at = now_ms();
    assert!(
        highlights(&http, &a, &author.user_id).await.is_empty(),
        "gone from the listing"
    );
    expect_status(
        delete_highlight(&http, &a, &hid).await,
        404,
        "a second delete",
    );
    wait_until_shredded(
        &server,
        &key,
        &highlight_blob,
        deleted_at + SHRED_WINDOW_MS,
        "a deleted highlight",
    )
    .await;
    assert_key_not_logged(&server, &key);
}

// ---------------------------------------------------------------------------
// Operators
// ---------------------------------------------------------------------------

/// The story actor: listed by `/admin/actors?kind=story` (without content),
/// restarted by an operator, it keeps its views and its expiry still fires
/// on time; the story metrics count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_story_actor_keeps_views_and_expiry() {
    let server = start(&[]).await;
    let http = server.http();
    let blobs = blob_client();
    let (author, a) = person(&http, "author").await;
    let (_follower, b) = person(&http, "follower").await;
    follow(&http, &b, &author.user_id).await;
    let mut b1 = TestSocket::connect(&server, &b, "follower-1").await;
    let mut viewers = Vec::new();
    for i in 0..3 {
        viewers.push(person(&http, &format!("viewer{i}")).await.1);
    }

    let story = post_story(&http, &blobs, &a, EVERYONE, Some(5), Some("secret caption")).await;
    let id = story.story_id.clone();
    b1.expect("story_posted", |f| is_story(f, "story_posted", &id))
        .await;
    for v in &viewers {
        open_story(&http, v, &id).await;
    }
    let count = |body: Value| u64_of(&body, "view_count");
    assert_eq!(
        count(expect_status(
            get_viewers(&http, &a, &id).await,
            200,
            "viewers"
        )),
        3
    );

    let listing = server
        .admin_http()
        .raw(
            Method::GET,
            "/admin/actors?kind=story",
            Some(server.admin_token()),
            None,
        )
        .await
        .expect("listing story actors");
    assert_eq!(listing.status, 200, "{listing:?}");
    let actors = listing.json.expect("a JSON listing")["actors"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let me = actors
        .iter()
        .find(|x| x["id"] == id.as_str())
        .unwrap_or_else(|| panic!("the live story is listed: {actors:?}"));
    assert_eq!(me["kind"], "story", "{me}");
    let text = serde_json::to_string(&actors).expect("JSON");
    assert!(
        !text.contains("secret caption") && !text.contains(&story.upload.data_key_b64),
        "no content in the listing"
    );

    assert_eq!(
        server
            .admin_post(&format!("/admin/actors/story/{id}/restart"))
            .await,
        202,
        "restart accepted"
    );
    assert!(
        now_ms() < story.expires_at,
        "the restart came after the expiry"
    );
    assert_eq!(
        count(expect_status(
            get_viewers(&http, &a, &id).await,
            200,
            "viewers"
        )),
        3,
        "the views survive the restart"
    );
    open_story(&http, &viewers[0], &id).await;
    open_story(&http, &b, &id).await;
    assert_eq!(
        count(expect_status(
            get_viewers(&http, &a, &id).await,
            200,
            "viewers"
        )),
        4,
        "a repeat view counts nothing, a new viewer one"
    );

    let wait = Duration::from_millis((story.expires_at - now_ms()).max(0) as u64) + WAIT;
    let gone = b1
        .expect_within(wait, "story_gone after the restart", |f| {
            is_story(f, "story_gone", &id)
        })
        .await;
    let lag = now_ms() - story.expires_at;
    println!("story_gone {lag} ms after expires_at, after a restart");
    assert_eq!(str_of(&gone, "reason"), "expired");
    assert!(
        (EARLY_BOUND_MS..=GONE_LAG_BOUND_MS).contains(&lag),
        "the re-armed expiry fires on time: lag {lag} ms"
    );
    expect_status(get_story(&http, &b, &id).await, 404, "after expiry");

    let unknown = unknown_id_like(&id, &[]);
    assert_eq!(
        server
            .admin_post(&format!("/admin/actors/story/{unknown}/restart"))
            .await,
        404,
        "restarting a story that is not live"
    );
    assert!(
        server
            .metric("ephemera_actor_restarts_total{kind=\"story\"}")
            .await
            >= 1.0,
        "the restart is counted"
    );
    let text = server.metrics_text().await;
    assert!(
        metric_sum(&text, "ephemera_stories_posted_total") >= 1.0,
        "the story is counted"
    );
    assert!(
        metric_sum(&text, "ephemera_story_views_total") >= 4.0,
        "the views are counted"
    );
}

/// Posting refusals of the contract: ttl and audience out of range, an
/// unknown or someone else's media key (404), a used one (409), an upload
/// not yet complete (422), a caption over 2,200 characters (422). (A type
/// other than image/* or video/* cannot reach a story: upload-urls refuses
/// it already.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn posting_refusals() {
    use common::media::mint_for_file;
    use common::stories::{create_story, story_body, upload_photo};
    let server = start(&[]).await;
    let http = server.http();
    let blobs = blob_client();
    let (_alice, a) = person(&http, "alice").await;
    let (_bob, b) = person(&http, "bob").await;

    let (upload, _, _) = upload_photo(&http, &blobs, &a, 800).await;
    let key = upload.media_key.as_str();
    for (body, status, what) in [
        (story_body(key, EVERYONE, Some(0), None), 422, "ttl 0"),
        (
            story_body(key, EVERYONE, Some(86_401), None),
            422,
            "ttl over a day",
        ),
        (
            story_body(key, "friends", None, None),
            422,
            "an unknown audience",
        ),
        (
            story_body(key, EVERYONE, None, Some(&"x".repeat(2201))),
            422,
            "a caption over 2,200 characters",
        ),
        (
            story_body(key, EVERYONE, None, None),
            404,
            "someone else's media key",
        ),
    ] {
        let session = if status == 404 { &b } else { &a };
        expect_status(create_story(&http, session, body).await, status, what);
    }
    let unknown = unknown_id_like(key, &[]);
    expect_status(
        create_story(&http, &a, story_body(&unknown, EVERYONE, None, None)).await,
        404,
        "an unknown media key",
    );
    // Exactly 2,200 characters is fine, and the default ttl is a day.
    let posted = expect_status(
        create_story(
            &http,
            &a,
            story_body(key, EVERYONE, None, Some(&"é".repeat(2200))),
        )
        .await,
        201,
        "a caption of 2,200 characters",
    );
    let opened = open_story(&http, &b, str_of(&posted, "story_id")).await;
    assert_eq!(
        i64_of(&opened, "expires_at") - i64_of(&opened, "posted_at"),
        86_400_000,
        "the default ttl is 86400 s"
    );
    expect_status(
        create_story(&http, &a, story_body(key, EVERYONE, None, None)).await,
        409,
        "a media key already used",
    );
    let minted = mint_for_file(&http, &a, "image/jpeg", 500).await;
    expect_status(
        create_story(
            &http,
            &a,
            story_body(&minted.media_key, EVERYONE, None, None),
        )
        .await,
        422,
        "an upload never PUT",
    );
}

/// An idle story actor passivates (it holds no live actor, no timer), and
/// the story deadline index wakes a new one in time to end the story: the
/// follower still gets `story_gone` on time, and the story is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passivated_story_actor_is_woken_for_its_end() {
    let server = start(&["--passivate-after-seconds", "1"]).await;
    let http = server.http();
    let blobs = blob_client();
    let (author, a) = person(&http, "author").await;
    let (_follower, b) = person(&http, "follower").await;
    follow(&http, &b, &author.user_id).await;
    let mut b1 = TestSocket::connect(&server, &b, "follower-1").await;
    let story = post_story(&http, &blobs, &a, EVERYONE, Some(8), None).await;
    let id = story.story_id.clone();
    b1.expect("story_posted", |f| is_story(f, "story_posted", &id))
        .await;
    open_story(&http, &b, &id).await;
    let live = || async { server.metric("ephemera_live_actors{kind=\"story\"}").await };
    assert!(
        live().await >= 1.0,
        "the story's actor is live after a view"
    );
    // Idle past the passivation time, with its end more than the sweeper's
    // look-ahead away: the actor goes.
    let deadline = std::time::Instant::now() + Duration::from_secs(4);
    while live().await > 0.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the idle story actor never passivated"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        now_ms() + 3_000 < story.expires_at,
        "the actor passivated too late for this test to show the wake-up"
    );
    let wait = Duration::from_millis((story.expires_at - now_ms()).max(0) as u64) + WAIT;
    let gone = b1
        .expect_within(wait, "story_gone of a passivated story", |f| {
            is_story(f, "story_gone", &id)
        })
        .await;
    let lag = now_ms() - story.expires_at;
    println!("story_gone {lag} ms after expires_at, its actor passivated before");
    assert_eq!(str_of(&gone, "reason"), "expired");
    assert!(
        (EARLY_BOUND_MS..=GONE_LAG_BOUND_MS).contains(&lag),
        "the deadline index woke the story in time: lag {lag} ms"
    );
    expect_status(get_story(&http, &b, &id).await, 404, "after expiry");
}
