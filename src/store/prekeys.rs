//! The key directory (PROTOCOL 12): per device, a public identity key, a
//! signed prekey and a pool of one-time prekeys that other users claim, one
//! per device and fetch. Public keys only: the server never sees a private
//! key. Writes and claims of one user's keys hold that user's lock, so a
//! claim reads and removes a one-time prekey as one step: two concurrent
//! fetchers never get the same one.

use base64::Engine;
use ephemera_actors::ids::{DeviceId, UserId};
use rocksdb::WriteBatch;
use serde::{Deserialize, Serialize};

use super::{filter, json, keys, Cf, RocksStore, Step, StoreError};

/// How many locks a user's keys are spread over (by the first byte of the
/// user id): claims of different users rarely wait for each other.
pub(super) const LOCKS: usize = 16;

/// A signed prekey as uploaded: `signature` is the identity key's Ed25519
/// signature of `public_key`'s bytes, checked before it is stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedPrekey {
    /// The client's id for it.
    pub key_id: u32,
    /// Base64 of the 32-byte public key.
    pub public_key: String,
    /// Base64 of the 64-byte signature.
    pub signature: String,
}

/// A one-time prekey, handed out once.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OneTimePrekey {
    /// The client's id for it.
    pub key_id: u32,
    /// Base64 of the 32-byte public key.
    pub public_key: String,
}

/// What a device publishes besides its one-time prekeys.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceKeys {
    /// Base64 of the 32-byte Ed25519 identity key.
    pub identity_key: String,
    /// The current signed prekey.
    pub signed_prekey: SignedPrekey,
}

/// One device's keys as a fetcher gets them.
#[derive(Debug, Serialize)]
pub struct Claimed {
    /// The device.
    pub device_id: DeviceId,
    /// Its identity key.
    pub identity_key: String,
    /// Its signed prekey.
    pub signed_prekey: SignedPrekey,
    /// A one-time prekey, now removed; none when the device has run out.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub one_time_prekey: Option<OneTimePrekey>,
}

/// Why an upload was not stored.
#[derive(Debug, thiserror::Error)]
pub enum PutKeysError {
    /// The device would hold more one-time prekeys than allowed.
    #[error("too many one-time prekeys")]
    TooMany,
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn b64(raw: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(raw)
}

impl RocksStore {
    fn keys_lock(&self, user: UserId) -> std::sync::MutexGuard<'_, ()> {
        self.prekey_locks[usize::from(user.0[0]) % LOCKS]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Stores `device`'s keys and adds `prekeys` to its pool (one with the
    /// same id is replaced). A new identity key makes the old pool useless:
    /// it is dropped first. Refused when the pool would exceed `max_pool`.
    pub fn put_device_keys(
        &self,
        user: UserId,
        device: DeviceId,
        bundle: &DeviceKeys,
        prekeys: &[(u32, [u8; 32])],
        max_pool: usize,
    ) -> Result<(), PutKeysError> {
        let _guard = self.keys_lock(user);
        let dk = keys::device_keys(user, device);
        let same_identity = match self.get_json::<DeviceKeys>(Cf::DeviceKeys, &dk)? {
            Some(old) => old.identity_key == bundle.identity_key,
            None => false,
        };
        let mut b = WriteBatch::default();
        let held = if same_identity {
            self.pool_size(user, device)?
        } else {
            self.drop_pool(&mut b, user, device);
            0
        };
        if held + prekeys.len() > max_pool {
            return Err(PutKeysError::TooMany);
        }
        b.put_cf(
            self.cf(Cf::DeviceKeys),
            dk,
            filter::with_expiry(u64::MAX, &json(bundle)),
        );
        for (id, key) in prekeys {
            b.put_cf(
                self.cf(Cf::Prekeys),
                keys::prekey(user, device, *id),
                filter::with_expiry(u64::MAX, key),
            );
        }
        self.db
            .write_opt(b, &self.write_opts)
            .map_err(StoreError::from)?;
        Ok(())
    }

    /// Every device's keys of `user`, each with one one-time prekey that
    /// this call removes (claimed), in one write under the user's lock.
    pub fn claim_keys(&self, user: UserId) -> Result<Vec<Claimed>, StoreError> {
        let _guard = self.keys_lock(user);
        let mut devices = Vec::new();
        let from = keys::device_keys(user, ephemera_actors::ids::Id([0; 16]));
        self.scan_prefix(Cf::DeviceKeys, &from, 16, usize::MAX, |k, v| {
            let (_, p) = filter::split(v).ok_or(StoreError::Corrupt("device_keys"))?;
            let bundle: DeviceKeys =
                serde_json::from_slice(p).map_err(|_| StoreError::Corrupt("device_keys"))?;
            devices.push((keys::id_at(k, 16), bundle));
            Ok(Step::Take)
        })?;
        let mut b = WriteBatch::default();
        let mut out = Vec::with_capacity(devices.len());
        for (device, bundle) in devices {
            let mut first = None;
            let from = keys::prekey(user, device, 0);
            self.scan_prefix(Cf::Prekeys, &from, 32, 1, |k, v| {
                let (_, p) = filter::split(v).ok_or(StoreError::Corrupt("prekeys"))?;
                first = Some((k.to_vec(), keys::decode_prekey_id(k), b64(p)));
                Ok(Step::Stop)
            })?;
            let one_time_prekey = match first {
                Some((k, Some(key_id), public_key)) => {
                    b.delete_cf(self.cf(Cf::Prekeys), k);
                    Some(OneTimePrekey { key_id, public_key })
                }
                Some((_, None, _)) => return Err(StoreError::Corrupt("prekeys")),
                None => None,
            };
            out.push(Claimed {
                device_id: device,
                identity_key: bundle.identity_key,
                signed_prekey: bundle.signed_prekey,
                one_time_prekey,
            });
        }
        if !b.is_empty() {
            self.db.write_opt(b, &self.write_opts)?;
        }
        Ok(out)
    }

    /// How many one-time prekeys `device` has left.
    pub fn prekey_count(&self, user: UserId, device: DeviceId) -> Result<usize, StoreError> {
        let _guard = self.keys_lock(user);
        self.pool_size(user, device)
    }

    /// Removes every key of `device` (it logged out).
    pub fn delete_device_keys(&self, user: UserId, device: DeviceId) -> Result<(), StoreError> {
        let _guard = self.keys_lock(user);
        let mut b = WriteBatch::default();
        b.delete_cf(self.cf(Cf::DeviceKeys), keys::device_keys(user, device));
        self.drop_pool(&mut b, user, device);
        self.db.write_opt(b, &self.write_opts)?;
        Ok(())
    }

    fn pool_size(&self, user: UserId, device: DeviceId) -> Result<usize, StoreError> {
        let mut n = 0;
        self.scan_prefix(
            Cf::Prekeys,
            &keys::prekey(user, device, 0),
            32,
            usize::MAX,
            |_, _| {
                n += 1;
                Ok(Step::Take)
            },
        )?;
        Ok(n)
    }

    fn drop_pool(&self, b: &mut WriteBatch, user: UserId, device: DeviceId) {
        let start = keys::prekey(user, device, 0);
        if let Some(end) = keys::prefix_end(&start[..32]) {
            b.delete_range_cf(self.cf(Cf::Prekeys), &start[..], &end[..]);
        }
    }
}
