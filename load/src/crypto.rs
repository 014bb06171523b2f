//! Media encryption as PROTOCOL 4 describes it: AES-256-GCM under the
//! `data_key` the server minted, a 12-byte random nonce before the
//! ciphertext (and its 16-byte tag). Object storage only ever sees the
//! output of [`seal`].

use anyhow::{anyhow, Result};
use base64::Engine;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};

/// Bytes a sealed object has beyond its plaintext (nonce and tag).
pub const OVERHEAD: usize = NONCE_LEN + 16;

/// The size of the object [`seal`] makes of `plaintext_len` bytes: what a
/// client declares as `bytes` in `POST /api/v1/media/upload-urls`
/// (PROTOCOL 4: the exact size of the object it will `PUT`).
pub const fn sealed_len(plaintext_len: usize) -> usize {
    plaintext_len + OVERHEAD
}

/// Decodes a base64 `data_key` (32 bytes).
pub fn data_key(b64: &str) -> Result<[u8; 32]> {
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|_| anyhow!("data_key is not base64"))?;
    raw.try_into()
        .map_err(|_| anyhow!("data_key is not 32 bytes"))
}

fn key(k: &[u8; 32]) -> LessSafeKey {
    LessSafeKey::new(UnboundKey::new(&AES_256_GCM, k).expect("a 32-byte key is valid for AES-256"))
}

/// Encrypts a file for upload: nonce, then ciphertext and tag.
pub fn seal(data_key: &[u8; 32], plaintext: &[u8]) -> Result<Vec<u8>> {
    let mut nonce = [0u8; NONCE_LEN];
    SystemRandom::new()
        .fill(&mut nonce)
        .map_err(|_| anyhow!("no randomness"))?;
    let mut buf = plaintext.to_vec();
    key(data_key)
        .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::empty(), &mut buf)
        .map_err(|_| anyhow!("encryption failed"))?;
    let mut out = Vec::with_capacity(NONCE_LEN + buf.len());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&buf);
    Ok(out)
}

/// Decrypts a downloaded object; fails on a wrong key or any tampering.
pub fn open(data_key: &[u8; 32], sealed: &[u8]) -> Result<Vec<u8>> {
    if sealed.len() < OVERHEAD {
        return Err(anyhow!("object too short to be sealed"));
    }
    let nonce =
        Nonce::try_assume_unique_for_key(&sealed[..NONCE_LEN]).map_err(|_| anyhow!("bad nonce"))?;
    let mut buf = sealed[NONCE_LEN..].to_vec();
    let plain = key(data_key)
        .open_in_place(nonce, Aad::empty(), &mut buf)
        .map_err(|_| anyhow!("decryption failed: wrong key or tampered object"))?;
    Ok(plain.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_tamper() {
        let k = [7u8; 32];
        let sealed = seal(&k, b"a photo").unwrap();
        assert_eq!(sealed.len(), 7 + OVERHEAD);
        assert_eq!(sealed.len(), sealed_len(7));
        assert_eq!(open(&k, &sealed).unwrap(), b"a photo");
        let mut bad = sealed.clone();
        bad[NONCE_LEN] ^= 1;
        assert!(open(&k, &bad).is_err());
        assert!(open(&[8u8; 32], &sealed).is_err());
        let b64 = base64::engine::general_purpose::STANDARD.encode(k);
        assert_eq!(data_key(&b64).unwrap(), k);
    }
}
