//! The end-to-end key directory (PROTOCOL 12) over real HTTP: devices
//! publish an Ed25519 identity key, a signed prekey (the signature checked
//! by the server) and one-time prekeys; a fetch claims one one-time prekey
//! per device, atomically (concurrent fetchers never share one, and the
//! pool runs out cleanly); a device's keys go when it logs out; fetches are
//! rate-limited per (caller, user).

mod common;

use std::collections::HashSet;

use base64::Engine;
use common::{register_user, Server};
use ephemera_load::client::{Http, RawResponse, Session};
use reqwest::Method;
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{Ed25519KeyPair, KeyPair};
use serde_json::{json, Value};

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn random32() -> [u8; 32] {
    let mut k = [0u8; 32];
    SystemRandom::new().fill(&mut k).expect("randomness");
    k
}

/// A device's key material: an Ed25519 identity and a signed prekey.
struct DeviceKeys {
    identity: Ed25519KeyPair,
    spk: [u8; 32],
}

impl DeviceKeys {
    fn new() -> Self {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).expect("keygen");
        DeviceKeys {
            identity: Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).expect("pkcs8"),
            spk: random32(),
        }
    }

    fn identity_b64(&self) -> String {
        b64(self.identity.public_key().as_ref())
    }

    /// The `PUT /api/v1/keys` body with `prekeys` one-time prekeys
    /// `(key_id, public_key)`.
    fn upload(&self, prekeys: &[(u32, String)]) -> Value {
        json!({
            "identity_key": self.identity_b64(),
            "signed_prekey": {
                "key_id": 7,
                "public_key": b64(&self.spk),
                "signature": b64(self.identity.sign(&self.spk).as_ref()),
            },
            "one_time_prekeys": prekeys
                .iter()
                .map(|(id, k)| json!({ "key_id": id, "public_key": k }))
                .collect::<Vec<_>>(),
        })
    }
}

fn prekeys(ids: std::ops::RangeInclusive<u32>) -> Vec<(u32, String)> {
    ids.map(|i| (i, b64(&random32()))).collect()
}

async fn call(
    http: &Http,
    method: Method,
    path: &str,
    who: &Session,
    body: Option<&Value>,
) -> RawResponse {
    let body = body.map(Value::to_string);
    http.raw(method, path, Some(&who.token), body.as_deref())
        .await
        .unwrap_or_else(|err| panic!("{path}: {err:#}"))
}

async fn put_keys(http: &Http, who: &Session, body: &Value) -> RawResponse {
    call(http, Method::PUT, "/api/v1/keys", who, Some(body)).await
}

async fn count(http: &Http, who: &Session) -> u64 {
    let r = call(http, Method::GET, "/api/v1/keys/count", who, None).await;
    assert_eq!(r.status, 200, "{r:?}");
    r.json.unwrap()["one_time_prekeys"]
        .as_u64()
        .expect("a count")
}

async fn fetch(http: &Http, who: &Session, user_id: &str) -> RawResponse {
    call(
        http,
        Method::GET,
        &format!("/api/v1/users/{user_id}/keys"),
        who,
        None,
    )
    .await
}

/// The device entry of `device_id` in a fetch's answer.
fn device<'a>(answer: &'a Value, device_id: &str) -> Option<&'a Value> {
    answer["devices"]
        .as_array()
        .expect("devices is a list")
        .iter()
        .find(|d| d["device_id"] == device_id)
}

/// Bob publishes keys from two devices (eleven one-time prekeys on the
/// first, none on the second); alice's fetch gets both devices with the
/// published keys and claims one prekey (the count drops by one); twenty
/// concurrent fetches then share the ten left without a repeat and the
/// rest get none; refused uploads change nothing; logging out removes the
/// device.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_published_claimed_once_and_removed_at_logout() {
    let server = Server::start(&["--prekey-claim-burst", "100"]).await;
    let http = server.http();
    let alice = register_user(&http, "alice").await.login(&http).await;
    let bob = register_user(&http, "bob").await;
    let (b1, b2) = (bob.login(&http).await, bob.login(&http).await);
    let (k1, k2) = (DeviceKeys::new(), DeviceKeys::new());
    let pool = prekeys(1..=11);
    assert_eq!(put_keys(&http, &b1, &k1.upload(&pool)).await.status, 204);
    assert_eq!(put_keys(&http, &b2, &k2.upload(&[])).await.status, 204);
    assert_eq!(count(&http, &b1).await, 11);
    assert_eq!(count(&http, &b2).await, 0);

    // Refused uploads: a signature by another key, a signature of other
    // bytes, keys of the wrong size, too many prekeys. None changes the pool.
    let mut forged = k1.upload(&[]);
    forged["signed_prekey"]["signature"] = json!(b64(k2.identity.sign(&k1.spk).as_ref()));
    let mut other_bytes = k1.upload(&[]);
    other_bytes["signed_prekey"]["signature"] = json!(b64(k1.identity.sign(&random32()).as_ref()));
    let mut short_identity = k1.upload(&[]);
    short_identity["identity_key"] = json!(b64(&[1u8; 31]));
    let short_prekey = k1.upload(&[(99, b64(&[2u8; 33]))]);
    let too_many = k1.upload(&prekeys(1000..=1100));
    for (body, what) in [
        (&forged, "signed by another identity"),
        (&other_bytes, "a signature of other bytes"),
        (&short_identity, "a 31-byte identity key"),
        (&short_prekey, "a 33-byte one-time prekey"),
        (&too_many, "101 one-time prekeys"),
    ] {
        let r = put_keys(&http, &b1, body).await;
        assert_eq!(
            (r.status, r.error_code()),
            (422, Some("invalid")),
            "{what}: {r:?}"
        );
    }
    assert_eq!(count(&http, &b1).await, 11, "refused uploads store nothing");

    let first = fetch(&http, &alice, &bob.user_id).await;
    assert_eq!(first.status, 200, "{first:?}");
    let first = first.json.unwrap();
    let d1 = device(&first, &b1.device_id).expect("bob's first device is listed");
    assert_eq!(d1["identity_key"], k1.identity_b64());
    assert_eq!(d1["signed_prekey"]["public_key"], b64(&k1.spk));
    assert_eq!(d1["signed_prekey"]["key_id"], 7);
    let d2 = device(&first, &b2.device_id).expect("bob's second device is listed");
    assert_eq!(d2["identity_key"], k2.identity_b64());
    assert!(d2.get("one_time_prekey").is_none(), "none published: {d2}");
    let claimed = &d1["one_time_prekey"];
    assert!(
        pool.iter()
            .any(|(id, k)| claimed["key_id"] == *id && claimed["public_key"] == *k),
        "a published one-time prekey: {claimed}"
    );
    assert_eq!(count(&http, &b1).await, 10, "the claim removed it");

    // Twenty fetches at once for the ten left.
    let fetches = (0..20).map(|_| {
        let http = http.clone();
        let alice = alice.clone();
        let bob_id = bob.user_id.clone();
        tokio::spawn(async move { fetch(&http, &alice, &bob_id).await })
    });
    let mut got = vec![claimed["key_id"].as_u64().unwrap()];
    let mut empty = 0;
    for f in fetches.collect::<Vec<_>>() {
        let r = f.await.expect("the fetch task");
        assert_eq!(r.status, 200, "{r:?}");
        let answer = r.json.unwrap();
        let d1 = device(&answer, &b1.device_id).expect("listed");
        match d1.get("one_time_prekey") {
            Some(k) => {
                let id = k["key_id"].as_u64().unwrap();
                assert!(
                    pool.iter()
                        .any(|(i, p)| u64::from(*i) == id && k["public_key"] == *p),
                    "a published prekey: {k}"
                );
                got.push(id);
            }
            None => empty += 1,
        }
    }
    let distinct: HashSet<u64> = got.iter().copied().collect();
    assert_eq!(
        distinct.len(),
        got.len(),
        "no prekey handed out twice: {got:?}"
    );
    assert_eq!(
        distinct,
        (1..=11).collect(),
        "all eleven handed out once: {got:?}"
    );
    assert_eq!(empty, 10, "the other fetches find none left");
    assert_eq!(count(&http, &b1).await, 0);

    // Unknown and malformed users.
    let unknown = format!("{:032x}", 0xdead_beefu128);
    assert_eq!(fetch(&http, &alice, &unknown).await.status, 404);
    assert_eq!(fetch(&http, &alice, "nope").await.status, 404);

    // Logging out removes the device's keys; the other device stays.
    let r = call(&http, Method::DELETE, "/api/v1/sessions/current", &b1, None).await;
    assert_eq!(r.status, 204, "{r:?}");
    let after = fetch(&http, &alice, &bob.user_id).await.json.unwrap();
    assert!(
        device(&after, &b1.device_id).is_none(),
        "logged out: {after}"
    );
    assert!(device(&after, &b2.device_id).is_some(), "{after}");
    // A new identity drops the old pool; the same identity adds to it.
    let k2b = DeviceKeys::new();
    assert_eq!(
        put_keys(&http, &b2, &k2.upload(&prekeys(1..=3)))
            .await
            .status,
        204
    );
    assert_eq!(
        put_keys(&http, &b2, &k2.upload(&prekeys(4..=5)))
            .await
            .status,
        204
    );
    assert_eq!(count(&http, &b2).await, 5);
    assert_eq!(
        put_keys(&http, &b2, &k2b.upload(&prekeys(1..=2)))
            .await
            .status,
        204
    );
    assert_eq!(count(&http, &b2).await, 2);
}

/// Fetches of one user's keys are limited per caller (here 3 at once, then
/// one a minute): the fourth gets 429 with Retry-After, while another
/// caller, and another user's keys, have budgets of their own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_fetches_are_rate_limited_per_caller_and_user() {
    let server = Server::start(&[
        "--prekey-claim-rate-per-minute",
        "1",
        "--prekey-claim-burst",
        "3",
    ])
    .await;
    let http = server.http();
    let alice = register_user(&http, "alice").await.login(&http).await;
    let carol = register_user(&http, "carol").await.login(&http).await;
    let bob = register_user(&http, "bob").await;
    let dave = register_user(&http, "dave").await;
    let b1 = bob.login(&http).await;
    put_keys(&http, &b1, &DeviceKeys::new().upload(&prekeys(1..=50))).await;
    for _ in 0..3 {
        assert_eq!(fetch(&http, &alice, &bob.user_id).await.status, 200);
    }
    let r = fetch(&http, &alice, &bob.user_id).await;
    assert_eq!(
        (r.status, r.error_code()),
        (429, Some("rate_limited")),
        "{r:?}"
    );
    let wait = r.retry_after.expect("a 429 carries Retry-After");
    assert!((1..=60).contains(&wait), "one a minute: Retry-After {wait}");
    assert_eq!(
        count(&http, &b1).await,
        47,
        "a refused fetch claims nothing"
    );
    assert_eq!(
        fetch(&http, &carol, &bob.user_id).await.status,
        200,
        "carol's own budget"
    );
    assert_eq!(
        fetch(&http, &alice, &dave.user_id).await.status,
        200,
        "another user's keys"
    );
}
