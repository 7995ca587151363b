//! `stockflow repair`: moves a damaged part of the log aside and says
//! exactly what was lost.
//!
//! A start refuses a log with damage (a bad record with whole records
//! after it, or a bad or missing record the durable mark says was
//! acknowledged) rather than cut it. Repair cuts the log at the first
//! damaged record, keeps every byte it cut in `damaged/<time>/`, and
//! reports, record by record, the eventIds and order commands that are no
//! longer in the data directory, so that their senders can send them again
//! (their dedup records went with them: a re-send is applied).
//!
//! Records a checkpoint holds are not lost. If the newest checkpoint holds
//! the damaged record, the log continues at the checkpoint's position and
//! the whole records after it are written back. A checkpoint that holds
//! only part of what is cut is moved aside too, so that state is rebuilt
//! from an older one: state never includes what the log lost.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::Context;
use stockflow_log::{find_damage, move_aside, Damage, LogWriter};

use stockflow_core::event::DamagedBatch;
use stockflow_core::{Batch, CatalogChange, Timestamp};

use crate::record::CommitGroup;
use crate::recovery::{self, CheckpointMeta};

/// What a repair found and did.
pub struct Repaired {
    /// Human-readable report (also written to `REPORT.txt` in `aside`).
    pub report: String,
    /// Where the cut bytes went (`None`: nothing was damaged, or a dry run).
    pub aside: Option<PathBuf>,
    /// eventIds no longer in the data directory.
    pub lost_event_ids: Vec<String>,
    /// Records lost whose contents cannot be read at all.
    pub unreadable_records: u64,
}

/// Repairs the log of `data_dir` (with `dry_run`, only reports).
pub fn repair(data_dir: &Path, dry_run: bool) -> anyhow::Result<Repaired> {
    let _lock = recovery::lock(data_dir)?;
    let log = recovery::log_dir(data_dir);
    let mut report = String::new();
    if let Err(error) = stockflow_log::Mark::read(&log) {
        writeln!(report, "{error}")?;
        if dry_run {
            writeln!(report, "dry run: nothing was changed")?;
            return Ok(Repaired {
                report,
                aside: None,
                lost_event_ids: Vec::new(),
                unreadable_records: 0,
            });
        }
        let end = stockflow_log::Mark::reset(&log)?;
        writeln!(
            report,
            "the mark now says the acknowledged records end at record {end}, after the last whole one; any acknowledged after it are lost and cannot be named"
        )?;
    }
    let Some(damage) = find_damage(&log)? else {
        writeln!(report, "the log is whole: nothing to repair")?;
        return Ok(Repaired {
            report,
            aside: None,
            lost_event_ids: Vec::new(),
            unreadable_records: 0,
        });
    };
    writeln!(
        report,
        "damage: {} at byte {}: {}",
        damage.segment.display(),
        damage.offset,
        damage.what
    )?;
    let plan = plan(data_dir, &damage)?;
    let lost = Lost::of(&damage, &plan);
    writeln!(report, "{}", plan.describe(&damage))?;
    lost.describe(&mut report)?;
    if dry_run {
        writeln!(report, "dry run: nothing was changed")?;
        lost.list(&mut report)?;
        return Ok(Repaired {
            report,
            aside: None,
            lost_event_ids: lost.event_ids,
            unreadable_records: lost.unreadable,
        });
    }
    let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%SZ");
    let aside = data_dir.join("damaged").join(stamp.to_string());
    writeln!(report, "the cut bytes are kept in {}", aside.display())?;
    lost.list(&mut report)?;
    move_aside(&log, &damage, &aside)?;
    for checkpoint in &plan.checkpoints_aside {
        let to = aside.join("checkpoints");
        fs::create_dir_all(&to)?;
        fs::rename(checkpoint, to.join(checkpoint.file_name().expect("named")))
            .with_context(|| format!("cannot move {} aside", checkpoint.display()))?;
    }
    // The live stream's journal may describe records that are gone; it
    // starts anew (subscribers resume from a snapshot).
    let journal = data_dir.join("stream");
    if journal.exists() {
        fs::rename(&journal, aside.join("stream"))?;
    }
    if let Some(at) = plan.resume_at {
        LogWriter::start_at(&log, at)?;
        let (mut writer, _) = LogWriter::open(&log, u64::MAX)?;
        let mut last = None;
        for (number, payload) in &plan.written_back {
            let appended = writer.append(payload)?;
            anyhow::ensure!(
                appended.record == *number,
                "record {number} was written back as record {}",
                appended.record
            );
            last = Some(appended);
        }
        writer.sync()?;
        // (`start_at` marked the empty log; the records move the mark on.)
        if let Some(last) = last {
            stockflow_log::Mark::write_synced(&log, stockflow_log::Mark::after(&last))?;
        }
    }
    fs::write(aside.join("REPORT.txt"), &report)?;
    Ok(Repaired {
        report,
        aside: Some(aside),
        lost_event_ids: lost.event_ids,
        unreadable_records: lost.unreadable,
    })
}

/// How the data directory is put back together.
struct Plan {
    /// Checkpoints that hold part of what is cut: moved aside.
    checkpoints_aside: Vec<PathBuf>,
    /// The checkpoint that holds the damaged record: the log resumes at
    /// its position.
    resume_at: Option<u64>,
    /// Whole records from `resume_at` on, written back.
    written_back: Vec<(u64, Vec<u8>)>,
}

fn plan(data_dir: &Path, damage: &Damage) -> anyhow::Result<Plan> {
    let mut plan = Plan {
        checkpoints_aside: Vec::new(),
        resume_at: None,
        written_back: Vec::new(),
    };
    for path in recovery::checkpoints(data_dir)?.into_iter().rev() {
        let meta: CheckpointMeta = recovery::load(&path.join("meta.snap"))?;
        let spread_end = meta.partition_records.iter().copied().max().unwrap_or(0);
        if damage.record >= spread_end.max(meta.next_record) {
            break; // holds nothing past the cut
        }
        if damage.record < meta.next_record {
            // Holds the damaged record: write back the whole records from
            // its position on, as far as they run without a gap.
            let back: Vec<(u64, Vec<u8>)> = damage
                .after
                .iter()
                .filter(|(n, _)| *n >= meta.next_record)
                .enumerate()
                .take_while(|(i, (n, _))| *n == meta.next_record + *i as u64)
                .map(|(_, r)| r.clone())
                .collect();
            let runs_to = meta.next_record + back.len() as u64;
            if runs_to >= spread_end {
                plan.resume_at = Some(meta.next_record);
                plan.written_back = back;
                break;
            }
        }
        plan.checkpoints_aside.push(path);
    }
    Ok(plan)
}

impl Plan {
    fn describe(&self, damage: &Damage) -> String {
        let mut text = match self.resume_at {
            Some(at) => format!(
                "records {}..{at} are held by the newest checkpoint; the log continues at record {at} with {} whole records written back",
                damage.record,
                self.written_back.len()
            ),
            None => format!("the log is cut at record {}", damage.record),
        };
        for path in &self.checkpoints_aside {
            write!(
                text,
                "\ncheckpoint {} holds part of what is cut: moved aside, state is rebuilt from an older one",
                path.display()
            )
            .expect("writing to a String");
        }
        text
    }
}

/// Reads what it can of a damaged record: all of it if it still decodes,
/// else its events, which come first (a record cut short usually keeps
/// them whole).
fn read_damaged(bytes: &[u8]) -> Option<CommitGroup> {
    if let Ok(group) = CommitGroup::decode(bytes) {
        return Some(group);
    }
    // A flipped bit in the events' text usually leaves it not UTF-8, and
    // then nothing decodes: mend the text (same length, so every event's
    // place in it holds) and try again.
    let mut mended = bytes.to_vec();
    if mend_texts(&mut mended).is_some() {
        if let Ok(group) = CommitGroup::decode(&mended) {
            return Some(group);
        }
    }
    type Head = (Timestamp, Vec<CatalogChange>, Vec<Batch>);
    let (now, catalog, batches) = match postcard::take_from_bytes::<Head>(&mended) {
        Ok((head, _)) => head,
        // A flip in an event's record may have moved a span out of the
        // text: the ids still in it are read, the others counted.
        Err(_) => {
            type Damaged = (Timestamp, Vec<CatalogChange>, Vec<DamagedBatch>);
            let ((now, catalog, damaged), _) =
                postcard::take_from_bytes::<Damaged>(&mended).ok()?;
            let batches = damaged
                .into_iter()
                .map(|d| {
                    let (batch, unreadable) = d.salvage();
                    if unreadable > 0 {
                        tracing::warn!(
                            unreadable,
                            "events of a damaged record whose eventId cannot be read"
                        );
                    }
                    batch
                })
                .collect();
            (now, catalog, batches)
        }
    };
    Some(CommitGroup {
        now,
        catalog,
        batches,
        dead_letters: Vec::new(),
        discarded: Vec::new(),
        orders: Vec::new(),
        event_hold_ns: 0,
    })
}

/// Replaces the bytes of each batch's text that are not UTF-8 by `?`.
/// Walks the record's layout (`CommitGroupRef`: the time, the catalog
/// changes, then each batch's text and events).
fn mend_texts(bytes: &mut [u8]) -> Option<()> {
    let offset = |bytes: &[u8], rest: &[u8]| bytes.len() - rest.len();
    let (_, rest) = postcard::take_from_bytes::<(Timestamp, Vec<CatalogChange>)>(bytes).ok()?;
    let mut at = offset(bytes, rest);
    let (batches, rest) = postcard::take_from_bytes::<u64>(&bytes[at..]).ok()?;
    at = offset(bytes, rest);
    for _ in 0..batches {
        let (len, rest) = postcard::take_from_bytes::<u64>(&bytes[at..]).ok()?;
        let start = offset(bytes, rest);
        let end = start.checked_add(usize::try_from(len).ok()?)?;
        let mut text = bytes.get_mut(start..end)?;
        while let Err(error) = std::str::from_utf8(text) {
            let bad = error.valid_up_to();
            let n = error.error_len().unwrap_or(text.len() - bad);
            text[bad..bad + n].fill(b'?');
            text = &mut text[bad + n..];
        }
        let (_, rest) = postcard::take_from_bytes::<Batch>(&bytes[at..]).ok()?;
        at = offset(bytes, rest);
    }
    Some(())
}

/// What the data directory no longer holds.
struct Lost {
    /// (record, what it held) for every lost record.
    records: Vec<(u64, String)>,
    event_ids: Vec<String>,
    unreadable: u64,
    /// Records the mark says were acknowledged but no byte of which is left.
    vanished: Option<(u64, u64)>,
}

impl Lost {
    fn of(damage: &Damage, plan: &Plan) -> Lost {
        let kept = |n: u64| {
            plan.resume_at.is_some_and(|at| n < at)
                || plan.written_back.iter().any(|(w, _)| *w == n)
        };
        let mut lost = Lost {
            records: Vec::new(),
            event_ids: Vec::new(),
            unreadable: 0,
            vanished: None,
        };
        if !kept(damage.record) {
            match damage.damaged.as_deref().and_then(read_damaged) {
                Some(group) => {
                    let what = lost.take(&group);
                    lost.records.push((
                        damage.record,
                        format!("{what}, read from its damaged bytes: one id may be misspelt; if so, its original is the one re-sending everything applies"),
                    ));
                }
                None => {
                    lost.unreadable += 1;
                    lost.records.push((
                        damage.record,
                        "unreadable: its events cannot be named".into(),
                    ));
                }
            }
        }
        let mut next = damage.record + 1;
        for (number, payload) in &damage.after {
            for missing in next..*number {
                if !kept(missing) {
                    lost.unreadable += 1;
                    lost.records
                        .push((missing, "unreadable: its events cannot be named".into()));
                }
            }
            next = number + 1;
            if kept(*number) {
                continue;
            }
            let what = match CommitGroup::decode(payload) {
                Ok(group) => lost.take(&group),
                Err(error) => format!("does not decode ({error})"),
            };
            lost.records.push((*number, what));
        }
        // Past every record found, the mark may say more were acknowledged:
        // those not held by the checkpoint or written back are gone.
        let kept_to = plan
            .resume_at
            .map_or(0, |at| at + plan.written_back.len() as u64);
        let gone_from = next.max(kept_to);
        if let Some(acknowledged) = damage.acknowledged.filter(|a| *a > gone_from) {
            lost.unreadable += acknowledged - gone_from;
            lost.vanished = Some((gone_from, acknowledged));
        }
        lost
    }

    /// Notes a lost record's ids; returns a summary of it.
    fn take(&mut self, group: &CommitGroup) -> String {
        let mut events = 0;
        for batch in &group.batches {
            for i in 0..batch.len() {
                self.event_ids.push(batch.event_id(i).to_owned());
                events += 1;
            }
        }
        let orders: Vec<&str> = group.orders.iter().map(|o| o.order_id()).collect();
        format!(
            "{events} events, {} order commands{}, {} catalog changes, {} dead letters",
            orders.len(),
            if orders.is_empty() {
                String::new()
            } else {
                format!(" (orders {})", orders.join(", "))
            },
            group.catalog.len(),
            group.dead_letters.len()
        )
    }

    fn describe(&self, out: &mut String) -> std::fmt::Result {
        if self.records.is_empty() && self.vanished.is_none() {
            return writeln!(out, "nothing is lost");
        }
        writeln!(
            out,
            "lost: {} records, {} eventIds (re-send them: they are no longer deduplicated)",
            self.records.len() as u64 + self.vanished.map_or(0, |(a, b)| b - a),
            self.event_ids.len()
        )?;
        for (number, what) in &self.records {
            writeln!(out, "  record {number}: {what}")?;
        }
        if let Some((from, to)) = self.vanished {
            writeln!(
                out,
                "  records {from}..{to}: acknowledged, but no byte of them is left; they cannot be named"
            )?;
        }
        Ok(())
    }

    /// The lost eventIds, one per line, last in the report.
    fn list(&self, out: &mut String) -> std::fmt::Result {
        writeln!(out, "lost eventIds:")?;
        for id in &self.event_ids {
            writeln!(out, "{id}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn missing_segment(first: u64, acknowledged: u64) -> Damage {
        Damage {
            segment: PathBuf::from(format!("{first:020}.seg")),
            segment_first: first,
            offset: 0,
            record: first,
            what: "the segment is missing".into(),
            acknowledged: Some(acknowledged),
            damaged: None,
            after: Vec::new(),
            later: Vec::new(),
        }
    }

    /// Found by a hostile test: the newest segment (records 355..520)
    /// deleted, a checkpoint at 400; the records past the checkpoint were
    /// acknowledged and are gone, and the report said nothing was lost.
    #[test]
    fn records_acknowledged_past_the_checkpoint_that_holds_the_damage_are_reported_lost() {
        let damage = missing_segment(355, 520);
        let plan = Plan {
            checkpoints_aside: Vec::new(),
            resume_at: Some(400),
            written_back: Vec::new(),
        };
        let lost = Lost::of(&damage, &plan);
        assert_eq!(lost.vanished, Some((400, 520)));
        assert_eq!(lost.unreadable, 120);
        let mut report = String::new();
        lost.describe(&mut report).unwrap();
        assert!(report.contains("lost: 120 records"), "{report}");

        let written_back = (400..410).map(|n| (n, Vec::new())).collect();
        let plan = Plan {
            written_back,
            ..plan
        };
        assert_eq!(Lost::of(&damage, &plan).vanished, Some((410, 520)));
    }

    /// Found by a hostile test: a byte flipped inside an eventId (0xFF on
    /// ASCII) left the record's text not UTF-8, so the whole record was
    /// "unreadable" and 500 lost events went unnamed.
    #[test]
    fn a_record_whose_text_a_flip_made_not_utf8_is_still_read_one_id_misspelt() {
        let body = (0..50)
            .map(|i| format!(r#"{{"eventId":"flip-{i:02}","eventType":"RECEIPT","sku":"F","locationId":"S1","quantity":1}}"#))
            .collect::<Vec<_>>()
            .join("\n");
        let parsed =
            stockflow_core::parse_body(body.as_bytes(), stockflow_core::BodyFormat::Ndjson, 100)
                .unwrap();
        let record = crate::record::CommitGroupRef {
            now: Timestamp(1),
            catalog: &[],
            batches: vec![&parsed.batch, &parsed.batch],
            dead_letters: &[],
            discarded: &[],
            orders: &[],
            event_hold_ns: 0,
        }
        .encode_into(Vec::new());
        let mut damaged = record.clone();
        let at = damaged.windows(7).position(|w| w == b"flip-17").unwrap();
        damaged[at + 5] ^= 0xFF;
        assert!(
            CommitGroup::decode(&damaged).is_err(),
            "no longer decodes as it is"
        );
        let group = read_damaged(&damaged).expect("read after mending");
        let first = &group.batches[0];
        let ids: Vec<&str> = (0..first.len()).map(|i| first.event_id(i)).collect();
        assert_eq!(ids.len(), 50);
        assert!(
            ids.contains(&"flip-?7") && !ids.contains(&"flip-17"),
            "{ids:?}"
        );
        assert_eq!(
            group.batches[1].event_id(17),
            "flip-17",
            "the other batch is intact"
        );
    }

    #[test]
    fn without_a_checkpoint_everything_from_the_damage_on_is_lost() {
        let damage = missing_segment(355, 520);
        let plan = Plan {
            checkpoints_aside: Vec::new(),
            resume_at: None,
            written_back: Vec::new(),
        };
        let lost = Lost::of(&damage, &plan);
        assert_eq!((lost.records.len(), lost.vanished), (1, Some((356, 520))));
        assert_eq!(lost.unreadable, 165);
    }
}
