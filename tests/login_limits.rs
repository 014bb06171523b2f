//! Password endpoints under abuse (`POST /api/v1/sessions` and
//! `POST /api/v1/accounts`): refused with `429 rate_limited` and a
//! `Retry-After` per client address and per username, before any password
//! hashing; a login flood is shed with `503 unavailable` instead of queued
//! without bound, and sockets keep answering meanwhile; an unknown username
//! costs as much time as a wrong password, so timing does not tell who has
//! an account. Every answer is checked against `schema/openapi.json`.
//!
//! The first three tests run on the default limits (README, Configuration:
//! 20 attempts per address in a burst, then 10 a second; 10 per username,
//! then 5 a minute).

mod common;

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use common::socket::WAIT;
use common::{register_user, unique_username, Server, TestSocket, PASSWORD};
use ephemera_load::client::{Http, RawResponse};
use reqwest::Method;
use serde_json::json;

/// More attempts than any default burst, so a limit must show within them.
const MAX_ATTEMPTS: usize = 100;

/// `POST /api/v1/sessions` as `username` with `password`.
async fn login(http: &Http, username: &str, password: &str) -> RawResponse {
    let body = json!({ "username": username, "password": password }).to_string();
    http.raw(Method::POST, "/api/v1/sessions", None, Some(&body))
        .await
        .unwrap_or_else(|err| panic!("POST /api/v1/sessions: {err:#}"))
}

/// `POST /api/v1/accounts` for a fresh username.
async fn register_fresh(http: &Http) -> RawResponse {
    let body = json!({ "username": unique_username("flood"), "password": PASSWORD }).to_string();
    http.raw(Method::POST, "/api/v1/accounts", None, Some(&body))
        .await
        .unwrap_or_else(|err| panic!("POST /api/v1/accounts: {err:#}"))
}

/// Panic unless `answer` is the documented refusal: `429`, code
/// `rate_limited`, a message, and a `Retry-After` of whole seconds >= 1.
/// Returns the `Retry-After`.
fn assert_rate_limited(what: &str, answer: &RawResponse) -> u64 {
    assert_eq!(answer.status, 429, "{what}: status ({answer:?})");
    assert_eq!(
        answer.error_code(),
        Some("rate_limited"),
        "{what}: error code ({answer:?})"
    );
    let message = answer
        .json
        .as_ref()
        .and_then(|j| j["error"]["message"].as_str());
    assert!(
        message.is_some_and(|m| !m.is_empty()),
        "{what}: a message ({answer:?})"
    );
    let retry_after = answer
        .retry_after
        .unwrap_or_else(|| panic!("{what}: a 429 needs Retry-After ({answer:?})"));
    assert!(retry_after >= 1, "{what}: Retry-After >= 1 ({answer:?})");
    retry_after
}

/// `127.0.0.n`.
fn loopback(n: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, n))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_logins_from_one_address_gets_429_then_retry_after_works() {
    let server = Server::start(&[]).await;
    let http = server.http();
    let alice = register_user(&http, "alice").await;

    // Wrong passwords for a new unknown username each time, so only the
    // address's budget is spent.
    let mut refused = None;
    for attempt in 1..=MAX_ATTEMPTS {
        let answer = login(&http, &unique_username("ghost"), "not the password").await;
        match answer.status {
            401 => assert_eq!(answer.error_code(), Some("unauthorized"), "{answer:?}"),
            429 => {
                refused = Some((attempt, answer));
                break;
            }
            other => {
                panic!("login attempt {attempt}: expected 401 or 429, got {other}: {answer:?}")
            }
        }
    }
    let Some((attempt, answer)) = refused else {
        panic!("{MAX_ATTEMPTS} logins from one address in a row were never refused with 429");
    };
    assert!(
        attempt > 10,
        "the first 429 came at attempt {attempt}: the burst allows more"
    );
    let retry_after = assert_rate_limited("login over the address limit", &answer);
    assert!(
        retry_after <= 2,
        "at 10 a second a token is back within a second; Retry-After {retry_after}"
    );

    // The right password is refused too while the address is over its limit
    // (the limit is checked before the password), then accepted once the
    // Retry-After has passed.
    let early = login(&http, &alice.username, PASSWORD).await;
    if early.status == 429 {
        assert_rate_limited("good login over the address limit", &early);
    }
    tokio::time::sleep(Duration::from_secs(retry_after)).await;
    let late = login(&http, &alice.username, PASSWORD).await;
    assert_eq!(late.status, 201, "login after Retry-After: {late:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_registrations_from_one_address_gets_429() {
    let server = Server::start(&[]).await;
    let http = server.http();
    for attempt in 1..=MAX_ATTEMPTS {
        let answer = register_fresh(&http).await;
        match answer.status {
            201 => {}
            429 => {
                assert!(attempt > 10, "the first 429 came at attempt {attempt}");
                assert_rate_limited("registration over the address limit", &answer);
                return;
            }
            other => panic!("registration {attempt}: expected 201 or 429, got {other}: {answer:?}"),
        }
    }
    panic!("{MAX_ATTEMPTS} registrations from one address in a row were never refused with 429");
}

/// Guessing one account's password from many addresses hits the
/// per-account limit; other accounts, and the same addresses, are not
/// affected; an unknown username is limited exactly like a real one (a
/// `429` does not tell who exists); the owner gets in after `Retry-After`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logins_to_one_account_are_limited_across_addresses() {
    let server = Server::start(&[]).await;
    let http = server.http();
    let bob = register_user(&http, "bob").await;
    let ghost = unique_username("ghost");

    for (target, first) in [(bob.username.as_str(), 2u8), (ghost.as_str(), 22u8)] {
        // Four addresses, four wrong guesses each: far under the address
        // burst, over the account's.
        let addresses: Vec<Http> = (first..first + 4)
            .map(|n| server.http_from(loopback(n)))
            .collect();
        let mut unauthorized = 0;
        let mut limited = Vec::new();
        for _round in 0..4 {
            for from in &addresses {
                let answer = login(from, target, "not the password").await;
                match answer.status {
                    401 => unauthorized += 1,
                    429 => {
                        limited.push(assert_rate_limited("guess over the account limit", &answer))
                    }
                    other => {
                        panic!("guess at {target}: expected 401 or 429, got {other}: {answer:?}")
                    }
                }
            }
        }
        assert!(
            !limited.is_empty(),
            "16 guesses at one username from 4 addresses were never refused ({unauthorized} x 401)"
        );
        assert!(
            (5..=11).contains(&unauthorized),
            "about the account burst (10) of guesses are answered before the 429s: {unauthorized}"
        );
    }

    // Another username from one of the same addresses is not limited.
    let other = server.http_from(loopback(2));
    let answer = login(&other, &unique_username("other"), "not the password").await;
    assert_eq!(
        answer.status, 401,
        "another account is not limited: {answer:?}"
    );

    // Bob's own right password waits too (the limit is checked before the
    // password), and works after Retry-After.
    let early = login(&http, &bob.username, PASSWORD).await;
    let retry_after = assert_rate_limited("bob's login during the lockout", &early);
    assert!(
        retry_after <= 13,
        "at 5 a minute a token is back within 12 s; Retry-After {retry_after}"
    );
    tokio::time::sleep(Duration::from_secs(retry_after)).await;
    let late = login(&http, &bob.username, PASSWORD).await;
    assert_eq!(late.status, 201, "bob's login after Retry-After: {late:?}");
}

/// A login for a username that does not exist spends the same password
/// hashing as a wrong password for one that does, so its answer takes
/// about as long.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_usernames_take_as_long_as_wrong_passwords() {
    // Enough iterations that the hash, not HTTP, is most of a login.
    let server = Server::start(&["--pbkdf2-iterations", "200000"]).await;
    let http = server.http();
    let carol = register_user(&http, "carol").await;
    const ROUNDS: u32 = 5;
    let (mut known, mut unknown) = (Duration::ZERO, Duration::ZERO);
    for _ in 0..ROUNDS {
        let start = Instant::now();
        let answer = login(&http, &carol.username, "not the password").await;
        known += start.elapsed();
        assert_eq!(answer.status, 401, "wrong password: {answer:?}");

        let start = Instant::now();
        let answer = login(&http, &unique_username("nobody"), "not the password").await;
        unknown += start.elapsed();
        assert_eq!(answer.status, 401, "unknown user: {answer:?}");
    }
    let (known, unknown) = (known / ROUNDS, unknown / ROUNDS);
    eprintln!("mean login time: wrong password {known:?}, unknown user {unknown:?}");
    assert!(
        known >= Duration::from_millis(10),
        "a 200,000-iteration hash takes more than 10 ms; the login took {known:?}"
    );
    assert!(
        unknown * 2 >= known,
        "an unknown username answers in {unknown:?}, a wrong password in {known:?}: \
         the difference tells who has an account"
    );
}

/// More logins at once than the hashing pool runs and queues are refused
/// at once with `503 unavailable` and a `Retry-After`, not queued; the
/// rest are answered; a socket keeps answering pings all the while.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_flood_is_shed_and_sockets_keep_answering() {
    let server = Server::start(&[
        // About half a second a hash, one at a time, two waiting at most.
        "--pbkdf2-iterations",
        "1000000",
        "--kdf-threads",
        "1",
        "--kdf-queue",
        "2",
        "--login-address-rate-per-second",
        "1000",
        "--login-address-burst",
        "1000",
    ])
    .await;
    let http = server.http();
    let dave = register_user(&http, "dave").await;
    let session = dave.login(&http).await;
    let mut socket = TestSocket::connect(&server, &session, "dave-1").await;
    socket.ping().await;

    const FLOOD: usize = 12;
    let flood = (0..FLOOD).map(|_| {
        let http = http.clone();
        tokio::spawn(
            async move { login(&http, &unique_username("flood"), "not the password").await },
        )
    });
    let flood: Vec<_> = flood.collect();

    // While the hashes run, the socket answers promptly.
    let mut slowest = Duration::ZERO;
    for _ in 0..5 {
        let start = Instant::now();
        tokio::time::timeout(WAIT, socket.ping())
            .await
            .expect("a pong during the login flood");
        slowest = slowest.max(start.elapsed());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        slowest < Duration::from_millis(500),
        "a ping took {slowest:?} during the login flood"
    );

    let mut answered = 0;
    let mut shed = 0;
    for task in flood {
        let answer = task.await.expect("a login task");
        match answer.status {
            401 => answered += 1,
            503 => {
                assert_eq!(answer.error_code(), Some("unavailable"), "{answer:?}");
                assert!(
                    answer.retry_after.is_some_and(|s| s >= 1),
                    "a shed login carries Retry-After: {answer:?}"
                );
                shed += 1;
            }
            other => panic!("flooded login: expected 401 or 503, got {other}: {answer:?}"),
        }
    }
    eprintln!("{answered} logins answered, {shed} shed");
    assert!(answered >= 1, "some logins are answered");
    assert!(
        shed >= FLOOD - 6,
        "with one hash running and two waiting, most of {FLOOD} simultaneous logins \
         are shed; {shed} were"
    );
}
