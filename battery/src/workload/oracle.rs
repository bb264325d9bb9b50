//! The history's witnesses: one watch of every key, with prev_kv, from
//! revision 1 on each member, staying on that member (it resumes there
//! after the member comes back). Merged, they are the store's history; a
//! member whose watch disagrees with the others is a finding.

use bytes::Bytes;
use lookout_testkit::watch_check::WatchFilter;

/// Every key, with the previous value of each.
pub fn filter() -> WatchFilter {
    WatchFilter {
        key: Bytes::from_static(&[0]),
        range_end: Bytes::from_static(&[0]),
        prev_kv: true,
        no_put: false,
        no_delete: false,
    }
}
