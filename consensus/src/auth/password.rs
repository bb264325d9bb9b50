//! bcrypt, off the async workers: a hash at etcd's default cost 10 takes
//! tens of milliseconds of CPU, so each one runs on tokio's blocking pool
//! and never under a lock. bcrypt's own verify compares the hashes in
//! constant time.

use crate::error::{Error, Result};

/// etcd's `--bcrypt-cost` bounds (Go's bcrypt.MinCost and MaxCost).
pub const MIN_COST: u32 = 4;
pub const MAX_COST: u32 = 31;
/// etcd's default `--bcrypt-cost`.
pub const DEFAULT_COST: u32 = 10;

/// A valid cost, or etcd's default for anything out of range (etcd warns
/// and does the same).
pub fn effective_cost(cost: u32) -> u32 {
    if (MIN_COST..=MAX_COST).contains(&cost) {
        cost
    } else {
        tracing::warn!(
            given = cost,
            default = DEFAULT_COST,
            "bcrypt cost out of range; using the default"
        );
        DEFAULT_COST
    }
}

/// The bcrypt hash of `password` (a fresh random salt each time).
///
/// # Errors
/// The blocking pool is gone (shutting down) or bcrypt failed.
pub async fn hash(password: String, cost: u32) -> Result<Vec<u8>> {
    tokio::task::spawn_blocking(move || bcrypt::hash(password.as_bytes(), cost))
        .await
        .map_err(|e| Error::Internal(format!("password hash task: {e}")))?
        .map(String::into_bytes)
        .map_err(|e| Error::Internal(format!("bcrypt: {e}")))
}

/// Whether `password` matches `hash`; a malformed hash never matches.
///
/// # Errors
/// The blocking pool is gone (shutting down).
pub async fn verify(password: String, hash: Vec<u8>) -> Result<bool> {
    tokio::task::spawn_blocking(move || {
        let Ok(h) = std::str::from_utf8(&hash) else {
            return false;
        };
        bcrypt::verify(password.as_bytes(), h).unwrap_or(false)
    })
    .await
    .map_err(|e| Error::Internal(format!("password check task: {e}")))
}
