//! Accounts and logins in Redis, so every node sees them: a username is
//! taken once cluster-wide, a token minted on one node opens sockets on
//! all of them, and a logout revokes it everywhere at once (the key goes,
//! and every node hears the revocation and closes the device's sockets).
//!
//! Keys: `eph:username:{digest}` -> user id (hex), `eph:account:{id}` ->
//! the account (JSON: the password's salt and PBKDF2 hash, never the
//! password), `eph:token:{sha256 of the token}` -> the login (JSON), living
//! until the token expires. The token itself is never stored or sent.
//!
//! These calls block: storage calls them from the blocking pool.

use ephemera_actors::ids::{to_hex, UserId};
use ephemera_actors::store::now_ms;

use super::{hex_id, Cluster, RedisDown};
use crate::store::{keys, AccountRecord, TokenRecord};

/// Sets the username's key and the account together, if the name is free.
const CREATE: &str = r"
if redis.call('SET', KEYS[1], ARGV[1], 'NX') then
  redis.call('SET', KEYS[2], ARGV[2])
  return 1
end
return 0";

fn username_key(name: &str) -> String {
    format!("eph:username:{}", to_hex(&keys::username(name)))
}

fn account_key(user: UserId) -> String {
    format!("eph:account:{}", hex_id(user))
}

fn token_key(token: &str) -> String {
    format!("eph:token:{}", to_hex(&keys::token(token)))
}

/// The moderators of the whole cluster: user id (hex) -> when granted.
const MODERATORS: &str = "eph:moderators";

impl Cluster {
    /// Whether `user` holds the moderator role (cluster-wide).
    pub fn is_moderator(&self, user: UserId) -> Result<bool, RedisDown> {
        self.block_on(
            self.query(
                redis::cmd("HEXISTS")
                    .arg(MODERATORS)
                    .arg(hex_id(user))
                    .clone(),
            ),
        )
    }

    /// Grants or revokes the moderator role on every node at once.
    pub fn set_moderator(&self, user: UserId, moderator: bool) -> Result<(), RedisDown> {
        let cmd = if moderator {
            redis::cmd("HSET")
                .arg(MODERATORS)
                .arg(hex_id(user))
                .arg(now_ms())
                .clone()
        } else {
            redis::cmd("HDEL").arg(MODERATORS).arg(hex_id(user)).clone()
        };
        let _: u64 = self.block_on(self.query(cmd))?;
        Ok(())
    }

    /// How many groups `user` is in, cluster-wide (`eph:groups:{user}`).
    pub fn group_count(&self, user: UserId) -> Result<usize, RedisDown> {
        let n: Option<i64> = self.block_on(
            self.query(
                redis::cmd("GET")
                    .arg(format!("eph:groups:{}", hex_id(user)))
                    .clone(),
            ),
        )?;
        Ok(n.unwrap_or(0).max(0) as usize)
    }

    /// Counts a group `user` joined (or left). Best effort: a count Redis
    /// does not take leaves the bound that much looser or tighter.
    pub async fn count_group(&self, user: UserId, joined: bool) {
        let r: Result<i64, RedisDown> = self
            .run(
                self.query(
                    redis::cmd("INCRBY")
                        .arg(format!("eph:groups:{}", hex_id(user)))
                        .arg(if joined { 1 } else { -1 })
                        .clone(),
                ),
            )
            .await;
        if r.is_err() {
            tracing::warn!("could not count a group membership in Redis");
        }
    }

    /// Creates an account; `Ok(false)` if the username is taken.
    pub fn create_account(&self, rec: &AccountRecord) -> Result<bool, RedisDown> {
        let json = serde_json::to_string(rec).map_err(|_| RedisDown)?;
        let created: u64 = self.block_on(self.script(
            CREATE,
            &[&username_key(&rec.username), &account_key(rec.user_id)],
            &[&hex_id(rec.user_id), &json],
        ))?;
        Ok(created == 1)
    }

    /// The account of a user, if it exists.
    pub fn account(&self, user: UserId) -> Result<Option<AccountRecord>, RedisDown> {
        let json: Option<String> =
            self.block_on(self.query(redis::cmd("GET").arg(account_key(user)).clone()))?;
        Ok(json.and_then(|j| serde_json::from_str(&j).ok()))
    }

    /// The account with this username.
    pub fn account_by_username(&self, name: &str) -> Result<Option<AccountRecord>, RedisDown> {
        let id: Option<String> =
            self.block_on(self.query(redis::cmd("GET").arg(username_key(name)).clone()))?;
        match id.as_deref().and_then(ephemera_actors::ids::Id::parse) {
            Some(user) => self.account(user),
            None => Ok(None),
        }
    }

    /// Whether an account exists.
    pub fn user_exists(&self, user: UserId) -> Result<bool, RedisDown> {
        let n: u64 =
            self.block_on(self.query(redis::cmd("EXISTS").arg(account_key(user)).clone()))?;
        Ok(n == 1)
    }

    /// Stores a login under its token's digest until it expires.
    pub fn put_token(&self, token: &str, rec: &TokenRecord) -> Result<(), RedisDown> {
        let json = serde_json::to_string(rec).map_err(|_| RedisDown)?;
        let ttl = rec.expires_at.saturating_sub(now_ms()).max(1);
        let _: () = self.block_on(
            self.query(
                redis::cmd("SET")
                    .arg(token_key(token))
                    .arg(json)
                    .arg("PX")
                    .arg(ttl)
                    .clone(),
            ),
        )?;
        Ok(())
    }

    /// The live login of a token.
    pub fn token(&self, token: &str) -> Result<Option<TokenRecord>, RedisDown> {
        let json: Option<String> =
            self.block_on(self.query(redis::cmd("GET").arg(token_key(token)).clone()))?;
        Ok(json
            .and_then(|j| serde_json::from_str::<TokenRecord>(&j).ok())
            .filter(|r| r.expires_at > now_ms()))
    }

    /// Revokes a token at once, on every node: its key goes, and every
    /// node closes the device's sockets.
    pub fn delete_token(&self, token: &str) -> Result<(), RedisDown> {
        let json: Option<String> =
            self.block_on(self.query(redis::cmd("GETDEL").arg(token_key(token)).clone()))?;
        if let Some(rec) = json.and_then(|j| serde_json::from_str::<TokenRecord>(&j).ok()) {
            self.block_on(self.publish_revocation(rec.user_id, rec.device_id))?;
        }
        Ok(())
    }
}
