//! The raft log as it was kept before the WAL: tables in `raft-log.redb`,
//! read once to import them.

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::{Meta, storage};

const LOG: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("log");
const META: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("meta");

/// Log records as the WAL takes them: (index, bincode `Entry`).
pub(super) type Records = Vec<(u64, Vec<u8>)>;

/// Writes the log of `path` as a WAL in `dir/raft-wal.import/`, makes
/// it durable, then renames it to `wal_dir` (a crash before the
/// rename leaves the redb file in charge, and the import runs again).
pub(super) fn import(
    path: &std::path::Path,
    dir: &std::path::Path,
    wal_dir: &std::path::Path,
) -> crate::error::Result<()> {
    let (meta, recs) = read(path)?;
    let tmp = dir.join("raft-wal.import");
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp)?;
    }
    {
        let (wal, _) = crate::raft::wal::Wal::open(&tmp, |_| None)?;
        for (i, b) in &recs {
            wal.append(*i, b)?;
        }
        wal.sync()?;
        wal.save_meta(&bincode::serialize(&meta).map_err(storage)?)?;
    }
    std::fs::rename(&tmp, wal_dir)?;
    std::fs::File::open(dir)?.sync_all()?;
    tracing::info!(
        entries = recs.len(),
        "imported raft-log.redb into raft-wal/"
    );
    Ok(())
}

/// The vote, purged id and every entry.
pub(super) fn read(path: &std::path::Path) -> crate::error::Result<(Meta, Records)> {
    let db = Database::open(path)?;
    let tx = db.begin_read()?;
    let mut meta = Meta::default();
    if let Ok(t) = tx.open_table(META) {
        if let Some(v) = t.get("vote")? {
            meta.vote = bincode::deserialize(v.value()).map_err(storage)?;
        }
        if let Some(v) = t.get("purged")? {
            meta.purged = bincode::deserialize(v.value()).map_err(storage)?;
        }
    }
    let mut recs = Vec::new();
    if let Ok(t) = tx.open_table(LOG) {
        for row in t.iter()? {
            let (k, v) = row?;
            recs.push((k.value(), v.value().to_vec()));
        }
    }
    Ok((meta, recs))
}
