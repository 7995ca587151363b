//! The changelog's bookkeeping: which records a snapshot covers, the
//! snapshots written to the changelog itself in chunks (and read back
//! whole), and the records held back until a cycle's outputs are
//! acknowledged.

use super::*;

/// A changelog snapshot being read back, chunk by chunk.
#[derive(Default)]
pub(super) struct Assembly {
    positions: Positions,
    count: u32,
    next: u32,
    bytes: Vec<u8>,
}

impl Assembly {
    /// Adds the next chunk; the whole snapshot once its last chunk is in.
    /// Chunks out of order (an interrupted snapshot) start nothing.
    pub(super) fn add(&mut self, chunk: SnapshotChunk) -> Option<(Positions, Vec<u8>)> {
        if chunk.index == 0 {
            *self = Assembly {
                positions: chunk.positions,
                count: chunk.count,
                next: 1,
                bytes: chunk.bytes,
            };
        } else if chunk.index == self.next
            && chunk.positions == self.positions
            && chunk.count == self.count
        {
            self.bytes.extend_from_slice(&chunk.bytes);
            self.next += 1;
        } else {
            *self = Assembly::default();
            return None;
        }
        if self.next != self.count {
            return None;
        }
        let whole = std::mem::take(self);
        Some((whole.positions, whole.bytes))
    }
}

impl Processor {
    pub(super) fn note_changelog(&self, p: u16, owned: &mut Owned) {
        if let Some(last) = self
            .producer
            .context()
            .changelog_last
            .lock()
            .get(&i32::from(p))
        {
            owned.changelog_next = owned.changelog_next.max(last + 1);
        }
    }

    /// Hands the cycle's held-back changelog records to the producer.
    pub(super) fn send_changelog_due(&mut self) {
        for (p, key, record) in std::mem::take(&mut self.changelog_due) {
            self.send(
                BaseRecord::to(&self.settings.topics.changelog)
                    .partition(i32::from(p))
                    .key(&key)
                    .payload(&record),
            );
        }
    }

    /// The changelog index: where each partition's latest changelog
    /// snapshot starts. A hint: unreadable or missing entries only mean a
    /// longer restore.
    pub(super) fn read_index(&self) -> HashMap<u16, SnapshotIndex> {
        let mut found = HashMap::new();
        let topic = &self.settings.topics.changelog_index;
        let reader: BaseConsumer = match self
            .settings
            .client(&[
                ("enable.auto.commit", "false"),
                ("group.id", "stockflow-restore"),
                ("fetch.wait.max.ms", "50"),
            ])
            .create()
        {
            Ok(reader) => reader,
            Err(error) => {
                tracing::warn!(%error, "changelog index not read");
                return found;
            }
        };
        let Ok((low, high)) = reader.fetch_watermarks(topic, 0, Duration::from_secs(10)) else {
            return found;
        };
        let mut list = TopicPartitionList::new();
        if high <= low
            || list
                .add_partition_offset(topic, 0, Offset::Offset(low))
                .is_err()
            || reader.assign(&list).is_err()
        {
            return found;
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            match reader.poll(RESTORE_QUIET) {
                Some(Ok(m)) => {
                    let entry = m
                        .key()
                        .and_then(|k| std::str::from_utf8(k).ok()?.parse::<u16>().ok());
                    let value = m
                        .payload()
                        .and_then(|v| serde_json::from_slice::<SnapshotIndex>(v).ok());
                    if let (Some(p), Some(value)) = (entry, value) {
                        found.insert(p, value);
                    }
                    if m.offset() + 1 >= high {
                        break;
                    }
                }
                Some(Err(_)) | None => break,
            }
        }
        found
    }

    /// Writes partition `p`'s state into its changelog as snapshot chunks,
    /// points the index at them and tombstones the records they cover
    /// (so compaction can drop them: the changelog stays the size of the
    /// state plus the records since, and so does a new owner's restore).
    pub(super) fn snapshot_to_changelog(&mut self, p: u16) {
        let Some(mut owned) = self.owned.remove(&p) else {
            return;
        };
        let bytes = match self.encode_snapshot(p, &owned) {
            Ok(bytes) => bytes,
            Err(error) => poison(&format!("encoding partition {p}'s snapshot: {error}")),
        };
        let topic = self.settings.topics.changelog.clone();
        let count = bytes.len().div_ceil(SNAPSHOT_CHUNK_BYTES).max(1) as u32;
        for index in 0..count {
            let start = index as usize * SNAPSHOT_CHUNK_BYTES;
            let end = (start + SNAPSHOT_CHUNK_BYTES).min(bytes.len());
            let chunk = SnapshotChunk {
                positions: owned.positions,
                index,
                count,
                bytes: bytes[start..end].to_vec(),
            };
            self.send(
                BaseRecord::to(&topic)
                    .partition(i32::from(p))
                    .key(&format!("{SNAPSHOT_KEY_PREFIX}{index}"))
                    .payload(&chunk.encode()),
            );
        }
        // The index must name the offset of the first chunk.
        if let Err(error) = crate::flush(&self.producer, Duration::from_secs(60)) {
            poison(&format!("flushing a changelog snapshot: {error}"));
        }
        self.check_deliveries();
        let first = self
            .producer
            .context()
            .snapshot_first
            .lock()
            .remove(&i32::from(p));
        if let Some(offset) = first {
            let entry = SnapshotIndex {
                offset,
                canonical: owned.positions.canonical,
                repartition: owned.positions.repartition,
            };
            let value = serde_json::to_vec(&entry).expect("an index entry serializes");
            self.send(
                BaseRecord::to(&self.settings.topics.changelog_index)
                    .partition(0)
                    .key(&p.to_string())
                    .payload(&value),
            );
            let mut covered = std::mem::take(&mut owned.logged_keys);
            covered.extend(
                (count..owned.snapshot_chunks).map(|i| format!("{SNAPSHOT_KEY_PREFIX}{i}")),
            );
            for key in &covered {
                self.send(
                    BaseRecord::<str, ()>::to(&topic)
                        .partition(i32::from(p))
                        .key(key),
                );
            }
            owned.snapshot_chunks = count;
            metrics::counter!("stockflow_kafka_changelog_snapshots_total").increment(1);
            tracing::debug!(
                partition = p,
                offset,
                chunks = count,
                tombstones = covered.len(),
                "changelog snapshot written"
            );
        }
        owned.since_changelog_snapshot = 0;
        self.owned.insert(p, owned);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(at: i64, index: u32, count: u32, byte: u8) -> SnapshotChunk {
        SnapshotChunk {
            positions: Positions {
                canonical: at,
                repartition: 0,
            },
            index,
            count,
            bytes: vec![byte; 3],
        }
    }

    #[test]
    fn a_snapshot_is_whole_only_when_its_chunks_come_in_a_row() {
        let mut a = Assembly::default();
        assert!(a.add(chunk(5, 0, 3, 1)).is_none());
        assert!(a.add(chunk(5, 1, 3, 2)).is_none());
        let (positions, bytes) = a.add(chunk(5, 2, 3, 3)).expect("whole");
        assert_eq!(positions.canonical, 5);
        assert_eq!(bytes, [1, 1, 1, 2, 2, 2, 3, 3, 3]);

        // A writer that died mid-snapshot, then a later snapshot.
        let mut a = Assembly::default();
        assert!(a.add(chunk(5, 0, 3, 1)).is_none());
        assert!(
            a.add(chunk(9, 1, 2, 2)).is_none(),
            "another snapshot's chunk"
        );
        assert!(a.add(chunk(5, 2, 3, 3)).is_none(), "the run is broken");
        assert!(a.add(chunk(9, 0, 2, 4)).is_none());
        assert_eq!(a.add(chunk(9, 1, 2, 5)).map(|(_, b)| b.len()), Some(6));
        // A one-chunk snapshot is whole at once.
        assert!(a.add(chunk(11, 0, 1, 6)).is_some());
    }
}
