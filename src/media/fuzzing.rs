//! The bodies of the `sigv4` and `blobstore` fuzz targets (`fuzz/`), and
//! their stable smoke tests. They live here rather than in `sigv4.rs` and
//! `blobstore.rs` so those files stay as they are; the fuzz crate includes
//! all three with `#[path]`, since the server has no library target.
//!
//! Input is text split on `\n` into fields (invalid UTF-8 becomes U+FFFD,
//! so multibyte characters are always in play).

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::http::{Method, Uri};
use actix_web::{test as actix_test, web, App};

use super::blobstore::{self, Admission, BlobStore};
use super::sigv4::{self, Addressing, Credentials, Endpoint, Region, SigError};

/// The one access key both targets know.
const AKID: &str = "AKIAIOSFODNN7EXAMPLE";
/// Its secret.
const SECRET: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";
/// 2013-05-24T00:00:00Z, the time of AWS's S3 examples.
const T0: u64 = 1_369_353_600;
/// The last second whose `X-Amz-Date` has four digits of year.
const LAST_AMZ_SECOND: u64 = 253_402_300_799;

fn lookup(id: &str) -> Option<String> {
    (id == AKID).then(|| SECRET.to_owned())
}

/// The `n`th `\n`-separated field, or `""`.
fn field<'a>(fields: &[&'a str], n: usize) -> &'a str {
    fields.get(n).copied().unwrap_or("")
}

/// A number from the field's bytes (FNV-1a), to pick times and choices
/// without requiring the fuzzer to write digits.
fn number(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Fields: `now` (seconds after [`T0`], else hashed), method, request
/// target, `host`, `authorization`, `x-amz-date`, `x-amz-content-sha256`,
/// an extra `name=value` (a query parameter and a signed header).
///
/// Arbitrary requests go to all three verifiers: none may panic, and one
/// that passes must vouch for a consistent request. Then the same fields
/// are signed properly (presigned URL and header signing) and must verify
/// at `now`, be refused after expiry, for another method and with another
/// signature, and come back with the key and parameters that were signed.
pub fn sigv4(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let f: Vec<&str> = text.split('\n').collect();
    let offset = field(&f, 0)
        .parse::<u64>()
        .unwrap_or_else(|_| number(field(&f, 0)))
        % (LAST_AMZ_SECOND - T0 - sigv4::MAX_EXPIRES_SECS);
    let now_secs = T0 + offset;
    let now = UNIX_EPOCH + Duration::from_secs(now_secs);
    let (method, target, host) = (field(&f, 1), field(&f, 2), field(&f, 3));
    let (authorization, date, payload) = (field(&f, 4), field(&f, 5), field(&f, 6));
    let (extra_name, extra_value) = field(&f, 7).split_once('=').unwrap_or((field(&f, 7), ""));
    let region = Region::new("us-east-1");

    // 1. Arbitrary requests.
    let header = |name: &str| -> Option<String> {
        match name {
            "host" => Some(host),
            "authorization" => Some(authorization),
            "x-amz-date" => Some(date),
            "x-amz-content-sha256" => Some(payload),
            n if n == extra_name => Some(extra_value),
            _ => None,
        }
        .map(str::to_owned)
    };
    let _ = sigv4::has_query_auth(target.split_once('?').map_or("", |(_, q)| q));
    let results = [
        sigv4::verify_presigned(method, target, host, lookup, &region, now),
        sigv4::verify_presigned_with(method, target, header, lookup, &region, now),
        sigv4::verify_header_signed(method, target, header, lookup, &region, now),
    ];
    for verified in results.iter().flatten() {
        assert_eq!(verified.access_key_id, AKID);
        assert!(verified.path.starts_with('/'));
        assert!(verified.signed_at <= now_secs + sigv4::MAX_CLOCK_SKEW_SECS);
        assert!(now_secs <= verified.valid_until);
        assert!(verified.header("host").is_some());
    }

    // 2. The same fields, signed: a presigned URL.
    let creds = Credentials::new(AKID, SECRET);
    let endpoint = Endpoint::new(
        "http://store.example:9000/blobs",
        "media",
        region.clone(),
        Addressing::Path,
    )
    .expect("a valid endpoint");
    let base = "http://store.example:9000";
    let key = target;
    let expires = 1 + number(date) % sigv4::MAX_EXPIRES_SECS;
    let extra: &[(&str, &str)] = &[(extra_name, extra_value)];
    if let Ok(url) = sigv4::presign(method, &endpoint, key, &creds, now, expires, extra) {
        let signed_target = url.strip_prefix(base).expect("URL on the endpoint");
        let at = |secs: u64| UNIX_EPOCH + Duration::from_secs(secs);
        let verify = |method: &str, target: &str, secs: u64| {
            sigv4::verify_presigned(method, target, &endpoint.host(), lookup, &region, at(secs))
        };
        let verified = verify(method, signed_target, now_secs).expect("a presigned URL verifies");
        assert_eq!(verified.path, format!("/blobs/media/{key}"));
        assert_eq!(verified.bucket_and_key("/blobs"), Some(("media", key)));
        assert_eq!(
            verified.params,
            [(extra_name.to_owned(), extra_value.to_owned())]
        );
        assert_eq!(verified.valid_until, now_secs + expires);
        assert_eq!(
            verify(method, signed_target, now_secs + expires + 1),
            Err(SigError::Expired)
        );
        assert_eq!(
            verify(&format!("{method}X"), signed_target, now_secs),
            Err(SigError::SignatureMismatch)
        );
        // Another signature: the last hex digit changed.
        let last = signed_target.as_bytes()[signed_target.len() - 1];
        let other = if last == b'0' { '1' } else { '0' };
        let forged = format!("{}{other}", &signed_target[..signed_target.len() - 1]);
        assert_eq!(
            verify(method, &forged, now_secs),
            Err(SigError::SignatureMismatch)
        );
    }

    // 3. Header signing of the same object.
    let Ok(url) = endpoint.object_url(key) else {
        return;
    };
    let signed = sigv4::sign_request_headers(
        method,
        &url,
        &creds,
        &region,
        now,
        sigv4::EMPTY_PAYLOAD_SHA256,
    );
    if let Ok(headers) = signed {
        let signed_target = url.strip_prefix(base).expect("URL on the endpoint");
        let header = |name: &str| {
            headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.clone())
        };
        let verified =
            sigv4::verify_header_signed(method, signed_target, header, lookup, &region, now)
                .expect("a header-signed request verifies");
        assert_eq!(verified.bucket_and_key("/blobs"), Some(("media", key)));
        assert_eq!(verified.payload_sha256, sigv4::EMPTY_PAYLOAD_SHA256);
    }
}

/// The store every `blobstore` input talks to, one per thread: a bucket
/// in a fresh directory under the system's temporary directory, mounted at
/// `/blobs`, that admits uploads only to one-character keys (so a long
/// run leaves a bounded number of files).
fn store() -> web::Data<BlobStore> {
    thread_local! {
        static STORE: web::Data<BlobStore> = {
            let dir = std::env::temp_dir().join(format!(
                "ephemera-fuzz-blobs-{}-{:?}",
                std::process::id(),
                std::thread::current().id()
            ));
            let _ = std::fs::remove_dir_all(&dir);
            let store = BlobStore::open(
                dir,
                "media",
                Region::new("eph-1"),
                blobstore::static_keys([Credentials::new(AKID, SECRET)]),
                1024,
            )
            .expect("a store in the temporary directory");
            let gate = Arc::new(|key: &str| {
                if key.len() <= 1 { Admission::Any } else { Admission::Closed }
            });
            web::Data::new(store.with_upload_gate(gate))
        };
    }
    STORE.with(Clone::clone)
}

/// Fields: a mode, then method, target, a body, and `name: value` headers
/// (mode `raw`), or method, key and `name=value` query parameters (mode
/// `signed`: the harness presigns the request, so parsing past
/// authentication is reached: keys, listings, `response-*` overrides).
///
/// Every request gets an answer, never a server error; an unsigned one is
/// refused with a 4xx; a signed one succeeds only on a valid key.
pub fn blobstore(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let f: Vec<&str> = text.split('\n').collect();
    let signed = field(&f, 0) == "signed";
    let Ok(method) = Method::from_bytes(field(&f, 1).as_bytes()) else {
        return;
    };
    let store = store();
    let mut req = actix_test::TestRequest::default().method(method.clone());
    if signed {
        let endpoint = store
            .endpoint("http://localhost")
            .expect("the store's endpoint");
        let query: Vec<(&str, &str)> = f
            .iter()
            .skip(3)
            .map(|p| p.split_once('=').unwrap_or((p, "")))
            .collect();
        let (key, listing) = match field(&f, 2).strip_prefix('?') {
            Some(_) => ("", true),
            None => (field(&f, 2), false),
        };
        let url = if listing {
            // A listing is header-signed, as the server's own are.
            let url = endpoint.bucket_url(&query);
            let Ok(headers) = sigv4::sign_request_headers(
                method.as_str(),
                &url,
                &Credentials::new(AKID, SECRET),
                store.region(),
                SystemTime::now(),
                sigv4::EMPTY_PAYLOAD_SHA256,
            ) else {
                return;
            };
            for (name, value) in headers {
                req = req.insert_header((name, value));
            }
            url
        } else {
            let Ok(url) = sigv4::presign(
                method.as_str(),
                &endpoint,
                key,
                &Credentials::new(AKID, SECRET),
                SystemTime::now(),
                60,
                &query,
            ) else {
                return;
            };
            req = req.insert_header(("host", "localhost"));
            url
        };
        let target = url
            .strip_prefix("http://localhost")
            .expect("URL on the store");
        let Ok(uri) = Uri::try_from(target) else {
            return;
        };
        req = req.uri(&uri.to_string());
        if method == Method::PUT {
            req = req.set_payload(key.as_bytes().to_vec());
        }
    } else {
        // An arbitrary request, as far as HTTP lets one be written.
        let Ok(uri) = Uri::try_from(field(&f, 2)) else {
            return;
        };
        req = req.uri(&uri.to_string());
        req = req.set_payload(field(&f, 3).as_bytes().to_vec());
        for line in f.iter().skip(4) {
            let (name, value) = line.split_once(':').unwrap_or((line, ""));
            let (Ok(name), Ok(value)) = (
                HeaderName::from_bytes(name.trim().as_bytes()),
                HeaderValue::from_str(value.trim()),
            ) else {
                return;
            };
            req = req.append_header((name, value));
        }
    }
    let status = runner().block_on(async move {
        let app = actix_test::init_service(App::new().service(blobstore::service(store))).await;
        actix_test::call_service(&app, req.to_request())
            .await
            .status()
    });
    assert!(!status.is_server_error(), "{status} for {:?}", text);
    if !signed {
        assert!(status.is_client_error(), "{status} for an unsigned request");
    }
}

/// One actix system per thread, reused across inputs.
fn runner() -> &'static actix_web::rt::SystemRunner {
    thread_local! {
        static RUNNER: &'static actix_web::rt::SystemRunner =
            Box::leak(Box::new(actix_web::rt::System::new()));
    }
    RUNNER.with(|r| *r)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic stand-in for the fuzzer: each seed, then xorshift
    /// mutations of them (characters replaced, inserted, deleted, fields
    /// spliced from other seeds).
    fn mutations(seeds: &[&str], count: usize, check: impl Fn(&[u8])) {
        let mut state = 0xdead_beef_cafe_f00du64;
        let mut rand = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for seed in seeds {
            check(seed.as_bytes());
        }
        let alphabet: Vec<char> = "aZ09/%2F?&=.-_~:;\n TXé€😀".chars().collect();
        for _ in 0..count {
            let mut s: Vec<char> = seeds[rand() as usize % seeds.len()].chars().collect();
            for _ in 0..1 + rand() % 4 {
                let at = if s.is_empty() {
                    0
                } else {
                    rand() as usize % s.len()
                };
                let c = alphabet[rand() as usize % alphabet.len()];
                match rand() % 4 {
                    0 if !s.is_empty() => s[at] = c,
                    1 => s.insert(at, c),
                    2 if !s.is_empty() => {
                        s.remove(at);
                    }
                    _ => {
                        let other: Vec<char> =
                            seeds[rand() as usize % seeds.len()].chars().collect();
                        let from = rand() as usize % (other.len() + 1);
                        s.splice(at..at, other[from..].iter().copied().take(16));
                    }
                }
            }
            check(s.into_iter().collect::<String>().as_bytes());
        }
    }

    /// Seeds of the `sigv4` target: AWS's presigned example, a header-
    /// signed request, and dates around the formats' edges.
    pub(crate) const SIGV4_SEEDS: &[&str] = &[
        "0\nGET\n/test.txt?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20130524%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Date=20130524T000000Z&X-Amz-Expires=86400&X-Amz-SignedHeaders=host&X-Amz-Signature=aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404\nexamplebucket.s3.amazonaws.com\n\n\n\n",
        "0\nGET\n/test.txt\nexamplebucket.s3.amazonaws.com\nAWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41\n20130524T000000Z\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855\nrange=bytes=0-9",
        "86400\nPUT\nm/abc/d.bin\nstore.example:9000\n\n20130524T000000Z\nUNSIGNED-PAYLOAD\nresponse-cache-control=no-store",
        "1\nDELETE\na%2Fb\nlocalhost\n\n99991231T235959Z\n\ncontent-length=1028",
        "x\nHEAD\n/\n\nAWS4-HMAC-SHA256 Credential=a/b/c/d/e, SignedHeaders=host, Signature=00\n20240229T120000Z\n",
    ];

    /// See [`sigv4_multibyte_amz_date_is_refused`].
    const SIGV4_MULTIBYTE_DATE: &str = "0\nGET\n/\nh\nAWS4-HMAC-SHA256 Credential=a/b/c/d/e, SignedHeaders=host;x-amz-date, Signature=00\n202\u{e9}010T000000Z\nUNSIGNED-PAYLOAD\n";

    /// Seeds of the `blobstore` target: raw requests, and signed ones of
    /// every method on keys, on the bucket and with overrides.
    pub(crate) const BLOBSTORE_SEEDS: &[&str] = &[
        "raw\nGET\n/blobs/media/m/abc\n\nhost: localhost",
        "raw\nPUT\n/blobs/media/a?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20130524%2Feph-1%2Fs3%2Faws4_request&X-Amz-Date=20130524T000000Z&X-Amz-Expires=60&X-Amz-SignedHeaders=host&X-Amz-Signature=00\nbody\nhost: localhost",
        "raw\nHEAD\n/blobs/media/a\n\nhost: localhost\nauthorization: AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/eph-1/s3/aws4_request, SignedHeaders=host;x-amz-date, Signature=00\nx-amz-date: 20130524T000000Z\nx-amz-content-sha256: UNSIGNED-PAYLOAD",
        "raw\nGET\n/blobs/media?list-type=2\n\nauthorization: x",
        "signed\nPUT\na",
        "signed\nGET\na\nresponse-cache-control=max-age=60\nresponse-content-type=text/plain",
        "signed\nHEAD\nm/abc",
        "signed\nDELETE\na",
        "signed\nGET\n../etc/passwd",
        "signed\nGET\n?\nlist-type=2\nmax-keys=1\nprefix=a\nstart-after=",
        "signed\nGET\n?\nlist-type=2\nmax-keys=x",
        "signed\nPOST\na",
    ];

    #[test]
    fn sigv4_target_body_holds_on_the_seeds() {
        for seed in SIGV4_SEEDS {
            sigv4(seed.as_bytes());
        }
    }

    #[test]
    fn sigv4_target_body_holds_on_mutations() {
        mutations(SIGV4_SEEDS, 3_000, sigv4);
    }

    /// The crash the fuzzer's input format reaches (kept as
    /// `fuzz/artifacts/sigv4/crash-multibyte-amz-date`): an `x-amz-date`
    /// of 16 bytes with `T` and `Z` in place and a two-byte character
    /// across byte 4, which `parse_amz_date` slices as `&s[0..4]`.
    #[test]
    fn sigv4_multibyte_amz_date_is_refused() {
        sigv4(SIGV4_MULTIBYTE_DATE.as_bytes());
    }

    #[test]
    fn blobstore_target_body_holds_on_the_seeds() {
        for seed in BLOBSTORE_SEEDS {
            blobstore(seed.as_bytes());
        }
        let _ = std::fs::remove_dir_all(store().root());
    }

    #[test]
    fn blobstore_target_body_holds_on_mutations() {
        mutations(BLOBSTORE_SEEDS, 1_000, blobstore);
        // This thread's store directory (the seeds test has its own).
        let _ = std::fs::remove_dir_all(store().root());
    }
}
