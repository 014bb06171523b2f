//! Passwords and tokens. Passwords are hashed with PBKDF2-HMAC-SHA256 and
//! a random salt; tokens are 256 random bits, handed to the client once and
//! stored only as their SHA-256 digest (see `store::keys::token`).

use std::num::NonZeroU32;

use base64::Engine;
use ephemera_actors::ids::random_bytes;
use ring::pbkdf2;

const ALGORITHM: pbkdf2::Algorithm = pbkdf2::PBKDF2_HMAC_SHA256;

/// A salted password hash.
pub struct PasswordHash {
    /// 16 random bytes.
    pub salt: Vec<u8>,
    /// 32 bytes of PBKDF2 output.
    pub hash: Vec<u8>,
    /// Iterations used.
    pub iterations: u32,
}

/// Hashes a password with a fresh salt (slow by design: run it off the event loop).
pub fn hash_password(password: &str, iterations: u32) -> PasswordHash {
    let mut salt = vec![0u8; 16];
    random_bytes(&mut salt);
    let mut hash = vec![0u8; 32];
    let n = NonZeroU32::new(iterations.max(1)).expect("at least one iteration");
    pbkdf2::derive(ALGORITHM, n, &salt, password.as_bytes(), &mut hash);
    PasswordHash {
        salt,
        hash,
        iterations,
    }
}

/// Checks a password against a stored hash in constant time.
pub fn verify_password(password: &str, salt: &[u8], hash: &[u8], iterations: u32) -> bool {
    let Some(n) = NonZeroU32::new(iterations) else {
        return false;
    };
    pbkdf2::verify(ALGORITHM, n, salt, password.as_bytes(), hash).is_ok()
}

/// Spends what a [`verify_password`] at `iterations` spends, for a login
/// whose username does not exist: the same derivation against a fixed salt
/// and hash, whose outcome is ignored, so the answer takes as long as a
/// wrong password for an account that does exist. Always `false`.
pub fn verify_unknown_user(password: &str, iterations: u32) -> bool {
    /// No account has this salt; the hash is not a derivation of anything,
    /// and the verification's result is thrown away regardless.
    const SALT: [u8; 16] = *b"ephemera:no-user";
    const HASH: [u8; 32] = [0; 32];
    let _ = verify_password(password, &SALT, &HASH, iterations);
    false
}

/// A new bearer token: 256 random bits, URL-safe base64 without padding.
pub fn new_token() -> String {
    let mut b = [0u8; 32];
    random_bytes(&mut b);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn right_password_verifies_and_wrong_one_does_not() {
        let h = hash_password("correct horse", 1_000);
        assert!(verify_password(
            "correct horse",
            &h.salt,
            &h.hash,
            h.iterations
        ));
        assert!(!verify_password(
            "correct horsf",
            &h.salt,
            &h.hash,
            h.iterations
        ));
        let h2 = hash_password("correct horse", 1_000);
        assert_ne!(h.salt, h2.salt, "every hash has its own salt");
    }

    #[test]
    fn an_unknown_user_never_verifies() {
        for password in ["", "correct horse", "\u{1f600}"] {
            assert!(!verify_unknown_user(password, 1_000));
        }
    }

    #[test]
    fn tokens_are_256_bits_and_distinct() {
        let t = new_token();
        assert_eq!(t.len(), 43);
        assert_ne!(t, new_token());
    }
}
