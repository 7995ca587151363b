//! The stream's journal: every published message, written before anyone
//! sees it, in a few bounded segments, so that a restart knows every id a
//! client may resume from (and builds again what the journal lacks).

use super::*;

/// Journal segments roll at this size; the newest [`JOURNAL_SEGMENTS_KEPT`]
/// hold at least the ring (a stock message takes ~250 bytes). Small, so
/// that deleting one never makes the log's next fdatasync wait on a trim.
pub(super) const JOURNAL_SEGMENT_BYTES: u64 = 4 << 20;

pub(super) const JOURNAL_SEGMENTS_KEPT: usize = 10;

/// Old journal segments are looked for every this many entries.
pub(super) const JOURNAL_TRIM_EVERY: u32 = 256;

pub(super) fn journal_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("stream")
}

/// One journal record.
#[derive(serde::Serialize, serde::Deserialize)]
pub(super) enum Entry<'a> {
    /// Everything `source` published for log record `record`, numbered
    /// from `first_seq`.
    Messages {
        source: u16,
        record: u64,
        first_seq: u64,
        #[serde(borrow)]
        messages: Vec<SavedMessage<'a>>,
    },
    /// `partitions` and the order step have published everything before
    /// log record `next`; the hub's numbering at that point.
    Through {
        epoch: u64,
        seq: u64,
        unbuilt_after: [u64; 3],
        next: u64,
        partitions: Vec<u16>,
    },
}

#[derive(serde::Serialize, serde::Deserialize)]
pub(super) struct SavedMessage<'a> {
    kind: u8,
    #[serde(borrow)]
    sku: Option<&'a str>,
    #[serde(borrow)]
    location_id: Option<&'a str>,
    #[serde(borrow)]
    body: SavedBody<'a>,
}

/// Stock changes are journaled as numbers, not JSON: the applier that
/// writes them should not pay for rendering (the first reader does, or a
/// restart).
#[derive(serde::Serialize, serde::Deserialize)]
pub(super) enum SavedBody<'a> {
    Stock {
        numbers: [i64; 4],
        event_id: &'a str,
        event_type: &'a str,
        outcome: &'a str,
    },
    Json(#[serde(borrow)] std::borrow::Cow<'a, str>),
}

impl SavedMessage<'_> {
    pub(super) fn of(m: &Message) -> SavedMessage<'_> {
        let body = match &m.body {
            Body::Stock {
                numbers,
                event_id,
                event_type,
                outcome,
            } => SavedBody::Stock {
                numbers: *numbers,
                event_id,
                event_type,
                outcome,
            },
            Body::Json(_) | Body::Saved => SavedBody::Json(m.data().to_string().into()),
        };
        SavedMessage {
            kind: m.kind as u8,
            sku: m.sku.as_deref(),
            location_id: m.location_id.as_deref(),
            body,
        }
    }

    fn into_message(self, seq: u64) -> Option<Arc<Message>> {
        let kind = Kind::ALL.get(self.kind as usize).copied()?;
        let data = match self.body {
            SavedBody::Stock {
                numbers,
                event_id,
                event_type,
                outcome,
            } => stock_json(
                self.sku,
                self.location_id,
                numbers,
                event_id,
                event_type,
                outcome,
            ),
            SavedBody::Json(text) => text.into_owned(),
        };
        Some(Arc::new(Message {
            seq,
            kind,
            sku: self.sku.map(Arc::from),
            location_id: self.location_id.map(Arc::from),
            body: Body::Saved,
            rendered: std::sync::OnceLock::from(Arc::<str>::from(data)),
        }))
    }
}

pub(super) struct JournalWriter {
    log: stockflow_log::LogWriter,
    dir: PathBuf,
    appends: u32,
    /// Set after a failed write: the journal stops (the stream does not),
    /// and the next start reports a gap rather than trust it.
    failed: bool,
}

impl JournalWriter {
    pub(super) fn new(log: stockflow_log::LogWriter, dir: PathBuf) -> JournalWriter {
        JournalWriter {
            log,
            dir,
            appends: 0,
            failed: false,
        }
    }

    /// A new, empty journal (an old one is removed first).
    pub(super) fn create(dir: &Path) -> anyhow::Result<JournalWriter> {
        match std::fs::remove_dir_all(dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
            _ => {}
        }
        let (log, _) = stockflow_log::LogWriter::open(dir, JOURNAL_SEGMENT_BYTES)?;
        Ok(JournalWriter::new(log, dir.to_owned()))
    }

    pub(super) fn append(&mut self, entry: &Entry) {
        if self.failed {
            return;
        }
        let bytes = postcard::to_stdvec(entry).expect("encoding into a Vec cannot fail");
        if let Err(error) = self.log.append(&bytes) {
            tracing::error!(%error, "cannot write the stream journal; stream clients will be told of a gap after a restart");
            self.failed = true;
            // A journal with a hole must not be read back as whole.
            let _ = std::fs::remove_dir_all(&self.dir);
            return;
        }
        self.appends += 1;
        if self.appends.is_multiple_of(JOURNAL_TRIM_EVERY) {
            if let Err(error) = trim(&self.dir) {
                tracing::warn!(%error, "cannot delete old stream journal segments");
            }
        }
    }
}

pub(super) fn trim(dir: &Path) -> anyhow::Result<()> {
    let segments = stockflow_log::segments(dir)?;
    let excess = segments.len().saturating_sub(JOURNAL_SEGMENTS_KEPT);
    for (_, path) in &segments[..excess] {
        std::fs::remove_file(path)?;
    }
    Ok(())
}

/// The journal as read back at a start.
pub struct Loaded {
    pub(super) epoch: u64,
    pub(super) seq: u64,
    pub(super) unbuilt_after: [u64; 3],
    pub(super) ring: VecDeque<Arc<Message>>,
    /// Per partition: the first log record whose messages it has not
    /// published (journaled) yet.
    pub partition_next: Vec<u64>,
    /// The same for the order step.
    pub orders_next: u64,
    pub(super) writer: stockflow_log::LogWriter,
}

/// What a restart hands to [`Hub::start`].
pub struct Restored {
    pub journal: Loaded,
    /// Messages the log replay built again, as (source, record, drafts), in
    /// log order per source.
    pub backlog: Vec<(u16, u64, Vec<Draft>)>,
    /// Per kind: messages that are neither journaled nor rebuilt (their
    /// records are inside the checkpoint), so resuming across is a gap.
    pub gap: [bool; 3],
}

impl Loaded {
    /// Reads the journal of `data_dir`, if it has a whole one for this
    /// partition count. A missing or unreadable journal is no error: the
    /// stream is derived data, and its clients are told of a gap.
    pub fn read(data_dir: &Path, partitions: u16) -> Option<Loaded> {
        let dir = journal_dir(data_dir);
        match Loaded::try_read(&dir, partitions) {
            Ok(loaded) => loaded,
            Err(error) => {
                tracing::warn!(%error, "cannot read the stream journal; stream clients of the last run will be told of a gap");
                None
            }
        }
    }

    fn try_read(dir: &Path, partitions: u16) -> anyhow::Result<Option<Loaded>> {
        if !dir.exists() {
            return Ok(None);
        }
        // Opening cuts a torn tail (a write the kill interrupted).
        let (writer, _) = stockflow_log::LogWriter::open(dir, JOURNAL_SEGMENT_BYTES)?;
        let Some(&(oldest, _)) = stockflow_log::segments(dir)?.first() else {
            return Ok(None);
        };
        let mut loaded = Loaded {
            epoch: 0,
            seq: 0,
            unbuilt_after: [0; 3],
            ring: VecDeque::new(),
            partition_next: vec![0; partitions as usize],
            orders_next: 0,
            writer,
        };
        let mut marked = false;
        for item in stockflow_log::read_records(dir, oldest)? {
            let (_, payload) = item?;
            match postcard::from_bytes::<Entry>(&payload)? {
                Entry::Messages {
                    source,
                    record,
                    first_seq,
                    messages,
                } => {
                    // Totals are published per cycle, not per record.
                    let mut per_cycle = 0;
                    let next = match source {
                        ORDER_STEP => &mut loaded.orders_next,
                        TOTALS_STEP => &mut per_cycle,
                        p => loaded
                            .partition_next
                            .get_mut(p as usize)
                            .ok_or_else(|| anyhow::anyhow!("partition {p} out of range"))?,
                    };
                    *next = (*next).max(record + 1);
                    for (seq, message) in (first_seq..).zip(messages) {
                        loaded.seq = loaded.seq.max(seq);
                        loaded.ring.extend(message.into_message(seq));
                        if loaded.ring.len() > RING_MAX {
                            loaded.ring.pop_front();
                        }
                    }
                }
                Entry::Through {
                    epoch,
                    seq,
                    unbuilt_after,
                    next,
                    partitions: marked_partitions,
                } => {
                    marked = true;
                    loaded.epoch = epoch;
                    loaded.seq = loaded.seq.max(seq);
                    loaded.unbuilt_after = unbuilt_after;
                    for p in marked_partitions {
                        let slot = loaded
                            .partition_next
                            .get_mut(p as usize)
                            .ok_or_else(|| anyhow::anyhow!("partition {p} out of range"))?;
                        *slot = (*slot).max(next);
                    }
                    loaded.orders_next = loaded.orders_next.max(next);
                }
            }
        }
        Ok(marked.then_some(loaded))
    }
}
