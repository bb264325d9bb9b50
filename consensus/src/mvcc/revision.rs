//! Revisions as etcd numbers them: `main` counts committed write requests
//! (a fresh store is at 1, the first write gets 2), `sub` orders the changes
//! inside one request (a txn or a delete of many keys).

use serde::{Deserialize, Serialize};

/// One change's position in the store's history.
#[derive(
    Copy, Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Revision {
    pub main: i64,
    pub sub: i64,
}

impl Revision {
    pub const fn new(main: i64, sub: i64) -> Self {
        Self { main, sub }
    }

    /// The redb key: big-endian halves in one u128, so the table's order is
    /// revision order and a revision range is one key range.
    pub fn to_key(self) -> u128 {
        ((self.main as u64 as u128) << 64) | (self.sub as u64 as u128)
    }

    pub fn from_key(k: u128) -> Self {
        Self {
            main: (k >> 64) as u64 as i64,
            sub: k as u64 as i64,
        }
    }

    /// The first key of main revision `main`.
    pub fn first_key(main: i64) -> u128 {
        Self::new(main, 0).to_key()
    }

    /// The last possible key of main revision `main`.
    pub fn last_key(main: i64) -> u128 {
        ((main as u64 as u128) << 64) | u64::MAX as u128
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_order_is_revision_order() {
        let a = Revision::new(2, 5);
        let b = Revision::new(3, 0);
        assert!(a.to_key() < b.to_key());
        assert_eq!(Revision::from_key(a.to_key()), a);
        assert!(Revision::last_key(2) < Revision::first_key(3));
        assert!(Revision::first_key(2) <= a.to_key() && a.to_key() <= Revision::last_key(2));
    }
}
