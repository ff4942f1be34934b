//! The audit trail, persisted in an embedded store (redb: pure Rust, ACID,
//! one file). Each append is one durable transaction, so a `kill -9` loses
//! at most a batch the node has not seen acknowledged, and the node resends
//! it.
//!
//! Tables: `audit` (seq → MessagePack [`AuditRecord`]) and `event_hwm`
//! (node id → (epoch, last stored event number)), updated in the same
//! transaction, so a resent batch is never stored twice.

use std::path::{Path, PathBuf};

use redb::{Database, ReadableTable, ReadableTableMetadata, TableDefinition};

use crate::proto::{AuditKind, AuditRecord, NodeEvent};

const AUDIT: TableDefinition<u64, &[u8]> = TableDefinition::new("audit");
const HWM: TableDefinition<&str, (u64, u64)> = TableDefinition::new("event_hwm");

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create data dir {path}: {source}")]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("audit store: {0}")]
    Db(String),
    #[error("corrupt audit record {seq}: {message}")]
    Corrupt { seq: u64, message: String },
}

fn dberr(e: impl Into<redb::Error>) -> StoreError {
    StoreError::Db(e.into().to_string())
}

/// Who sent a batch of events.
#[derive(Debug, Clone)]
pub struct Origin<'a> {
    pub node_id: &'a str,
    pub node_spiffe_id: &'a str,
    pub epoch: u64,
}

#[derive(Debug)]
pub struct AuditStore {
    db: Database,
}

impl AuditStore {
    /// Opens (or creates) `dir/audit.redb`.
    pub fn open(dir: &Path) -> Result<AuditStore, StoreError> {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::Dir {
            path: dir.to_owned(),
            source,
        })?;
        let db = Database::create(dir.join("audit.redb")).map_err(dberr)?;
        // Create the tables up front so readers never meet a missing table.
        let tx = db.begin_write().map_err(dberr)?;
        tx.open_table(AUDIT).map_err(dberr)?;
        tx.open_table(HWM).map_err(dberr)?;
        tx.commit().map_err(dberr)?;
        Ok(AuditStore { db })
    }

    /// Stores the audit-worthy events of a batch numbered `first_seq..`,
    /// skipping numbers already stored for this node and epoch. Returns the
    /// number of the last event now covered, and how many records were
    /// added. Link events are acknowledged but not audited.
    pub fn append(
        &self,
        origin: &Origin<'_>,
        first_seq: u64,
        events: &[NodeEvent],
        recorded_ms: u64,
    ) -> Result<(u64, usize), StoreError> {
        let Some(last) = first_seq
            .checked_add(events.len() as u64)
            .and_then(|e| e.checked_sub(1))
        else {
            return Ok((first_seq.saturating_sub(1), 0));
        };
        let tx = self.db.begin_write().map_err(dberr)?;
        let mut added = 0;
        {
            let mut hwm = tx.open_table(HWM).map_err(dberr)?;
            let stored = hwm
                .get(origin.node_id)
                .map_err(dberr)?
                .map(|v| v.value())
                .filter(|(epoch, _)| *epoch == origin.epoch)
                .map(|(_, upto)| upto);
            let mut audit = tx.open_table(AUDIT).map_err(dberr)?;
            let mut next = audit
                .last()
                .map_err(dberr)?
                .map_or(1, |(k, _)| k.value() + 1);
            for (i, ev) in events.iter().enumerate() {
                let seq = first_seq + i as u64;
                if stored.is_some_and(|s| seq <= s) {
                    continue;
                }
                let Some(rec) = to_record(ev, origin, next, recorded_ms) else {
                    continue;
                };
                let bytes = rmp_serde::to_vec(&rec).map_err(|e| StoreError::Db(e.to_string()))?;
                audit.insert(next, bytes.as_slice()).map_err(dberr)?;
                next += 1;
                added += 1;
            }
            let upto = stored.map_or(last, |s| s.max(last));
            hwm.insert(origin.node_id, (origin.epoch, upto))
                .map_err(dberr)?;
        }
        tx.commit().map_err(dberr)?;
        Ok((last, added))
    }

    /// The newest `limit` records matching `channel` (exact name) and
    /// `since_ms` (inclusive, by event time), oldest first, and whether more
    /// matched. Scans from the newest record backwards.
    pub fn query(
        &self,
        channel: Option<&str>,
        since_ms: Option<u64>,
        limit: usize,
    ) -> Result<(Vec<AuditRecord>, bool), StoreError> {
        let tx = self.db.begin_read().map_err(dberr)?;
        let table = tx.open_table(AUDIT).map_err(dberr)?;
        let mut out = Vec::new();
        let mut truncated = false;
        for entry in table.iter().map_err(dberr)?.rev() {
            let (k, v) = entry.map_err(dberr)?;
            let rec: AuditRecord =
                rmp_serde::from_slice(v.value()).map_err(|e| StoreError::Corrupt {
                    seq: k.value(),
                    message: e.to_string(),
                })?;
            if channel.is_some_and(|c| rec.channel.as_deref() != Some(c))
                || since_ms.is_some_and(|s| rec.at_ms < s)
            {
                continue;
            }
            if out.len() == limit {
                truncated = true;
                break;
            }
            out.push(rec);
        }
        out.reverse();
        Ok((out, truncated))
    }

    pub fn len(&self) -> Result<u64, StoreError> {
        let tx = self.db.begin_read().map_err(dberr)?;
        tx.open_table(AUDIT).map_err(dberr)?.len().map_err(dberr)
    }

    pub fn is_empty(&self) -> Result<bool, StoreError> {
        Ok(self.len()? == 0)
    }
}

fn to_record(
    ev: &NodeEvent,
    origin: &Origin<'_>,
    seq: u64,
    recorded_ms: u64,
) -> Option<AuditRecord> {
    let (kind, client, spiffe_id, channel, at_ms) = match ev {
        NodeEvent::ClientConnected {
            client,
            spiffe_id,
            at_ms,
        } => (AuditKind::ClientConnected, client, spiffe_id, None, at_ms),
        NodeEvent::ClientDisconnected {
            client,
            spiffe_id,
            at_ms,
        } => (
            AuditKind::ClientDisconnected,
            client,
            spiffe_id,
            None,
            at_ms,
        ),
        NodeEvent::Subscribed {
            name,
            client,
            spiffe_id,
            at_ms,
        } => (AuditKind::Subscribed, client, spiffe_id, Some(name), at_ms),
        NodeEvent::Unsubscribed {
            name,
            client,
            spiffe_id,
            at_ms,
        } => (
            AuditKind::Unsubscribed,
            client,
            spiffe_id,
            Some(name),
            at_ms,
        ),
        NodeEvent::LinkUp { .. } | NodeEvent::LinkDown { .. } => return None,
    };
    Some(AuditRecord {
        seq,
        at_ms: *at_ms,
        recorded_ms,
        node_id: origin.node_id.to_owned(),
        node_spiffe_id: origin.node_spiffe_id.to_owned(),
        kind,
        client: client.clone(),
        spiffe_id: spiffe_id.clone(),
        channel: channel.cloned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sub(name: &str, at_ms: u64) -> NodeEvent {
        NodeEvent::Subscribed {
            name: name.into(),
            client: "acme/a/agent/1".into(),
            spiffe_id: Some("spiffe://acme/agent".into()),
            at_ms,
        }
    }

    fn origin(epoch: u64) -> Origin<'static> {
        Origin {
            node_id: "a",
            node_spiffe_id: "spiffe://acme/a/node/a",
            epoch,
        }
    }

    #[test]
    fn resent_batches_are_stored_once_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = AuditStore::open(dir.path()).unwrap();
            let evs = [
                sub("o/n/x", 10),
                NodeEvent::LinkUp {
                    peer_node_id: "b".into(),
                    at_ms: 11,
                },
                sub("o/n/y", 12),
            ];
            assert_eq!(s.append(&origin(1), 1, &evs, 100).unwrap(), (3, 2));
            // The ack was lost: the node resends 2..=3 plus a new event 4.
            let again = [evs[1].clone(), evs[2].clone(), sub("o/n/z", 13)];
            assert_eq!(s.append(&origin(1), 2, &again, 101).unwrap(), (4, 1));
            // A new node process (new epoch) starts numbering from 1 again.
            assert_eq!(
                s.append(&origin(2), 1, &[sub("o/n/x", 20)], 102).unwrap(),
                (1, 1)
            );
            assert_eq!(s.len().unwrap(), 4);
        }
        let s = AuditStore::open(dir.path()).unwrap();
        let (all, truncated) = s.query(None, None, 100).unwrap();
        assert!(!truncated);
        let chans: Vec<_> = all.iter().map(|r| r.channel.clone().unwrap()).collect();
        assert_eq!(chans, ["o/n/x", "o/n/y", "o/n/z", "o/n/x"]);
        assert_eq!(all.iter().map(|r| r.seq).collect::<Vec<_>>(), [1, 2, 3, 4]);
        let (x, _) = s.query(Some("o/n/x"), None, 100).unwrap();
        assert_eq!(x.len(), 2);
        let (recent, _) = s.query(None, Some(13), 100).unwrap();
        assert_eq!(recent.iter().map(|r| r.at_ms).collect::<Vec<_>>(), [13, 20]);
        let (last2, truncated) = s.query(None, None, 2).unwrap();
        assert!(truncated);
        assert_eq!(last2.iter().map(|r| r.seq).collect::<Vec<_>>(), [3, 4]);
    }

    #[test]
    fn empty_batch_stores_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let s = AuditStore::open(dir.path()).unwrap();
        assert_eq!(s.append(&origin(1), 5, &[], 1).unwrap(), (4, 0));
        assert!(s.is_empty().unwrap());
    }
}
