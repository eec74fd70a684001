//! Disk faults on the data directory of a stopped (or killed) node: a simulated power cut, a
//! flipped byte, a torn tail.
//!
//! A broker killed with SIGKILL loses nothing it wrote: the page cache survives. To test what
//! a power cut would lose, start the brokers with [`SYNC_JOURNAL_ENV`]`=1`: every segment fsync
//! then records the length it made durable in a sidecar `<base>.log.synced` (see
//! `keel_storage::sync_journal`), and [`simulate_power_loss`] cuts every segment back to it.
//!
//! Layout used here: one directory per partition replica, `<data dir>/<topic>-<partition>/`,
//! holding `<20-digit base offset>.log` segments (plus `.index`, `.timeindex`, checkpoints).
//! Directories renamed `*-delete` are on their way out and left alone.
//!
//! Every function panics, with the path involved, on an I/O error or on a replica without
//! segments: these are test steps.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use keel_protocol::batch::{BatchHeader, BATCH_HEADER_LEN, CRC_START};
use keel_storage::sync_journal;

/// The environment variable that makes a broker keep the sync journal: set it to `1` in the
/// environment of every node whose data [`simulate_power_loss`] will be applied to.
pub const SYNC_JOURNAL_ENV: &str = sync_journal::ENV_VAR;

/// The directory of replica `topic`-`partition` in `data_dir`.
pub fn replica_dir(data_dir: &Path, topic: &str, partition: i32) -> PathBuf {
    data_dir.join(format!("{topic}-{partition}"))
}

/// The `.log` segment files of the log directory `dir` as `(base offset, path)`, oldest
/// first. Panics if `dir` cannot be listed.
#[track_caller]
pub fn segment_files(dir: &Path) -> Vec<(i64, PathBuf)> {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("list {}: {e}", dir.display()));
    let mut segments: Vec<(i64, PathBuf)> = entries
        .map(|e| e.unwrap_or_else(|e| panic!("list {}: {e}", dir.display())))
        .filter_map(|e| {
            let name = e.file_name();
            let stem = name.to_str()?.strip_suffix(".log")?;
            let base = (stem.len() == 20 && stem.bytes().all(|b| b.is_ascii_digit()))
                .then(|| stem.parse().ok())??;
            Some((base, e.path()))
        })
        .collect();
    segments.sort_unstable();
    segments
}

#[track_caller]
fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("stat {}: {e}", path.display()))
        .len()
}

#[track_caller]
fn set_len(path: &Path, len: u64) {
    OpenOptions::new()
        .write(true)
        .open(path)
        .and_then(|f| f.set_len(len))
        .unwrap_or_else(|e| panic!("truncate {} to {len} bytes: {e}", path.display()));
}

/// `parent dir/file name` of `path`, for reports.
fn short(path: &Path) -> String {
    let mut parts: Vec<String> = path
        .iter()
        .rev()
        .take(2)
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    parts.reverse();
    parts.join("/")
}

/// One segment file [`simulate_power_loss`] cut.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentCut {
    /// The `.log` file.
    pub file: PathBuf,
    /// The durable length its sidecar recorded; `None`: never synced.
    pub synced: Option<u64>,
    /// Its length before and after the cut.
    pub len_before: u64,
    pub len_after: u64,
}

impl SegmentCut {
    /// Bytes this cut discarded.
    pub fn discarded(&self) -> u64 {
        self.len_before - self.len_after
    }
}

impl fmt::Display for SegmentCut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {} -> {} bytes ({} discarded; ",
            short(&self.file),
            self.len_before,
            self.len_after,
            self.discarded()
        )?;
        match self.synced {
            Some(n) => write!(f, "synced {n})"),
            None => f.write_str("never synced)"),
        }
    }
}

/// What [`simulate_power_loss`] did to a data directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PowerLoss {
    pub data_dir: PathBuf,
    /// Segment files looked at.
    pub segments: usize,
    /// Of those, how many had a sync-journal sidecar.
    pub journaled: usize,
    /// The segments that lost bytes, in directory then base-offset order.
    pub cuts: Vec<SegmentCut>,
}

impl PowerLoss {
    /// Bytes discarded over all segments.
    pub fn bytes_discarded(&self) -> u64 {
        self.cuts.iter().map(SegmentCut::discarded).sum()
    }
}

impl fmt::Display for PowerLoss {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "power loss in {}: {} of {} segment files cut, {} bytes discarded",
            self.data_dir.display(),
            self.cuts.len(),
            self.segments,
            self.bytes_discarded()
        )?;
        if self.journaled == 0 && !self.cuts.is_empty() {
            write!(
                f,
                "\n  no sync journal found: was the node started with {SYNC_JOURNAL_ENV}=1?"
            )?;
        }
        for cut in &self.cuts {
            write!(f, "\n  {cut}")?;
        }
        Ok(())
    }
}

/// Simulates a power cut on the data directory of a stopped or SIGKILLed node: in every
/// partition directory (not those named `*-delete`), every `.log` segment is cut to the
/// length its last sync made durable, as its sync-journal sidecar records it; a segment
/// without a sidecar was never synced and is cut to 0 bytes. The node must have run with
/// [`SYNC_JOURNAL_ENV`]`=1` (the report says so when no sidecar was found).
///
/// Limitations: only segment data is rolled back, and only by cutting appended bytes off (a
/// real cut may also leave a torn mix of old and new pages, or lose files whose directory
/// entry was never synced: those stay, possibly empty). Checkpoints are already written
/// atomically with fsync, so they are as a power cut would leave them. Index files are left
/// as they are: recovery must cope with index entries pointing past the end of the data.
#[track_caller]
pub fn simulate_power_loss(data_dir: &Path) -> PowerLoss {
    let mut report = PowerLoss {
        data_dir: data_dir.to_path_buf(),
        segments: 0,
        journaled: 0,
        cuts: Vec::new(),
    };
    let entries =
        std::fs::read_dir(data_dir).unwrap_or_else(|e| panic!("list {}: {e}", data_dir.display()));
    let mut dirs: Vec<PathBuf> = entries
        .map(|e| e.unwrap_or_else(|e| panic!("list {}: {e}", data_dir.display())))
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter(|e| !e.file_name().to_string_lossy().ends_with("-delete"))
        .map(|e| e.path())
        .collect();
    dirs.sort();
    for dir in dirs {
        for (_, file) in segment_files(&dir) {
            report.segments += 1;
            let synced = sync_journal::synced_len(&file)
                .unwrap_or_else(|e| panic!("sync journal of {}: {e}", file.display()));
            report.journaled += usize::from(synced.is_some());
            let len_before = file_len(&file);
            let len_after = len_before.min(synced.unwrap_or(0));
            if len_after < len_before {
                set_len(&file, len_after);
                report.cuts.push(SegmentCut {
                    file,
                    synced,
                    len_before,
                    len_after,
                });
            }
        }
    }
    report
}

/// One whole batch found in a segment file.
#[derive(Debug, Clone, Copy)]
struct BatchSpan {
    pos: u64,
    len: u64,
    base_offset: i64,
    last_offset: i64,
}

/// The whole batches with sane headers at the start of segment `file` (CRCs not checked),
/// read header by header.
#[track_caller]
fn batch_spans(file: &Path) -> Vec<BatchSpan> {
    let f = File::open(file).unwrap_or_else(|e| panic!("open {}: {e}", file.display()));
    let len = file_len(file);
    let mut spans = Vec::new();
    let mut pos = 0u64;
    let mut head = [0u8; BATCH_HEADER_LEN];
    while pos + BATCH_HEADER_LEN as u64 <= len {
        f.read_exact_at(&mut head, pos)
            .unwrap_or_else(|e| panic!("read {} at {pos}: {e}", file.display()));
        let Ok(h) = BatchHeader::parse(&head) else {
            break;
        };
        let total = h.total_len() as u64;
        if h.validate_header().is_err() || pos + total > len {
            break;
        }
        spans.push(BatchSpan {
            pos,
            len: total,
            base_offset: h.base_offset(),
            last_offset: h.last_offset(),
        });
        pos += total;
    }
    spans
}

/// A byte [`corrupt_byte`] flipped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Corruption {
    /// The segment file.
    pub file: PathBuf,
    /// Position of the byte in the file.
    pub position: u64,
    /// Offsets of the batch holding it.
    pub batch_base_offset: i64,
    pub batch_last_offset: i64,
    /// The byte before and after.
    pub old: u8,
    pub new: u8,
}

impl fmt::Display for Corruption {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "flipped {}[{}] {:#04x} -> {:#04x}, in the batch of offsets {}..={}",
            short(&self.file),
            self.position,
            self.old,
            self.new,
            self.batch_base_offset,
            self.batch_last_offset
        )
    }
}

/// SplitMix64: a well-mixed 64-bit value from `x` (deterministic, no dependency).
fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_4d1f_ce4e_5b9d);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Flips one bit of one byte of replica `topic`-`partition` in `data_dir`, chosen from `seed`
/// alone given the same files: a batch among every whole batch of every segment, then a byte
/// of its CRC-covered part (attributes to the end: header fields after the CRC, or records).
/// The batch then fails its CRC check; its length and base offset stay intact, so a scan can
/// still walk past it. Panics if the replica has no batch.
#[track_caller]
pub fn corrupt_byte(data_dir: &Path, topic: &str, partition: i32, seed: u64) -> Corruption {
    let dir = replica_dir(data_dir, topic, partition);
    let spans: Vec<(PathBuf, BatchSpan)> = segment_files(&dir)
        .into_iter()
        .flat_map(|(_, file)| {
            batch_spans(&file)
                .into_iter()
                .map(move |s| (file.clone(), s))
        })
        .collect();
    assert!(
        !spans.is_empty(),
        "no batch to corrupt in {}",
        dir.display()
    );
    let pick = mix(seed);
    let byte = mix(pick);
    let (file, span) = &spans[(pick % spans.len() as u64) as usize];
    let covered = span.len - CRC_START as u64;
    let position = span.pos + CRC_START as u64 + (byte >> 3) % covered;
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(file)
        .unwrap_or_else(|e| panic!("open {}: {e}", file.display()));
    let mut b = [0u8];
    f.read_exact_at(&mut b, position)
        .unwrap_or_else(|e| panic!("read {} at {position}: {e}", file.display()));
    let old = b[0];
    let new = old ^ (1 << (byte & 7));
    f.write_all_at(&[new], position)
        .unwrap_or_else(|e| panic!("write {} at {position}: {e}", file.display()));
    Corruption {
        file: file.clone(),
        position,
        batch_base_offset: span.base_offset,
        batch_last_offset: span.last_offset,
        old,
        new,
    }
}

/// What [`truncate_tail`] cut.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TailCut {
    /// The last segment file of the replica.
    pub file: PathBuf,
    /// Bytes asked to cut.
    pub requested: u64,
    /// Its length before and after.
    pub len_before: u64,
    pub len_after: u64,
}

impl TailCut {
    /// Bytes actually cut (less than requested when the segment was shorter).
    pub fn removed(&self) -> u64 {
        self.len_before - self.len_after
    }
}

impl fmt::Display for TailCut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cut {} bytes off {} ({} -> {} bytes, {} requested)",
            self.removed(),
            short(&self.file),
            self.len_before,
            self.len_after,
            self.requested
        )
    }
}

/// Cuts `bytes` off the end of the last segment of replica `topic`-`partition` in `data_dir`
/// (a torn write: usually mid-batch), or all of it if it is shorter; earlier segments are
/// untouched. Panics if the replica has no segment.
#[track_caller]
pub fn truncate_tail(data_dir: &Path, topic: &str, partition: i32, bytes: u64) -> TailCut {
    let dir = replica_dir(data_dir, topic, partition);
    let (_, file) = segment_files(&dir)
        .pop()
        .unwrap_or_else(|| panic!("no segment in {}", dir.display()));
    let len_before = file_len(&file);
    let len_after = len_before.saturating_sub(bytes);
    set_len(&file, len_after);
    TailCut {
        file,
        requested: bytes,
        len_before,
        len_after,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_protocol::batch::batches;
    use keel_storage::test_support::sized_batch;
    use keel_storage::{FlushPolicy, Log, LogConfig};

    /// Small segments and a dense index, so that tests roll and index often.
    fn config() -> LogConfig {
        LogConfig {
            segment_bytes: 4096,
            index_interval_bytes: 128,
            max_index_bytes: 1024,
            flush_policy: FlushPolicy::Always,
            retention_ms: None,
            ..Default::default()
        }
    }

    /// A data dir with the sync journal on for everything under it (off again on drop).
    struct DataDir(tempfile::TempDir);

    impl DataDir {
        fn new() -> DataDir {
            let dir = tempfile::tempdir().unwrap();
            sync_journal::enable_for_dir(dir.path());
            DataDir(dir)
        }

        fn path(&self) -> &Path {
            self.0.path()
        }

        fn open(&self, topic: &str, partition: i32) -> Log {
            Log::open(&replica_dir(self.path(), topic, partition), config()).unwrap()
        }
    }

    impl Drop for DataDir {
        fn drop(&mut self) {
            sync_journal::disable_for_dir(self.0.path());
        }
    }

    /// Appends `n` batches of two ~150-byte records; returns the LEO.
    fn append(log: &Log, n: u64) -> i64 {
        let start = log.log_end_offset() as u64;
        for i in start..start + n {
            log.append_as_leader(&sized_batch(2, 150, i, 1000 + i as i64), 1)
                .unwrap();
        }
        log.log_end_offset()
    }

    /// Reads `[log start, LEO)` one offset at a time through the index: every read must
    /// return the batch holding the offset, valid, and the batches chain without gaps.
    fn assert_readable(log: &Log) {
        let mut next = log.log_start_offset();
        while next < log.log_end_offset() {
            let r = log.read(next, 1, i64::MAX).unwrap();
            let b = batches(&r.records)
                .next()
                .unwrap_or_else(|| panic!("nothing read at {next}"))
                .unwrap();
            b.header.validate(b.bytes).unwrap();
            assert!(
                b.header.base_offset() <= next && next <= b.header.last_offset(),
                "read at {next} returned {}..={}",
                b.header.base_offset(),
                b.header.last_offset()
            );
            next += 1;
        }
    }

    /// Largest offset in the offset index file of segment `base` in `dir` (8-byte entries:
    /// relative offset, position; zero entries past the end).
    fn last_indexed_offset(dir: &Path, base: i64) -> Option<i64> {
        let idx = std::fs::read(dir.join(format!("{base:020}.index"))).unwrap();
        idx.chunks_exact(8)
            .map(|e| {
                (
                    i64::from(u32::from_be_bytes(e[..4].try_into().unwrap())),
                    u32::from_be_bytes(e[4..].try_into().unwrap()),
                )
            })
            .take_while(|&(_, pos)| pos > 0)
            .last()
            .map(|(rel, _)| base + rel)
    }

    #[test]
    fn power_loss_cuts_segments_to_their_synced_length() {
        let data = DataDir::new();
        let synced = {
            let log = data.open("t", 0);
            append(&log, 3);
            log.flush().unwrap();
            append(&log, 2);
            let never = data.open("never", 0);
            append(&never, 2);
            segment_files(&replica_dir(data.path(), "t", 0))
        };
        assert_eq!(synced.len(), 1);
        let (_, t0) = &synced[0];
        let flushed = sync_journal::synced_len(t0).unwrap().unwrap();
        let t0_len = file_len(t0);
        assert!(t0_len > flushed);
        let never = segment_files(&replica_dir(data.path(), "never", 0))[0]
            .1
            .clone();
        let never_len = file_len(&never);
        // Left alone: a directory being deleted, and files that are not segments.
        let deleted = data.path().join("gone-0.18c3a-delete");
        std::fs::create_dir(&deleted).unwrap();
        std::fs::write(deleted.join(format!("{:020}.log", 0)), b"bytes").unwrap();
        std::fs::write(data.path().join("meta.properties"), b"node.id=1").unwrap();

        let report = simulate_power_loss(data.path());
        assert_eq!(report.segments, 2);
        assert_eq!(report.journaled, 1);
        assert_eq!(
            report.cuts,
            vec![
                SegmentCut {
                    file: never.clone(),
                    synced: None,
                    len_before: never_len,
                    len_after: 0,
                },
                SegmentCut {
                    file: t0.clone(),
                    synced: Some(flushed),
                    len_before: t0_len,
                    len_after: flushed,
                },
            ]
        );
        assert_eq!(report.bytes_discarded(), never_len + t0_len - flushed);
        assert_eq!((file_len(t0), file_len(&never)), (flushed, 0));
        assert_eq!(file_len(&deleted.join(format!("{:020}.log", 0))), 5);
        let text = report.to_string();
        assert!(text.contains("2 of 2 segment files cut"), "{text}");
        assert!(
            text.contains(&format!("never-0/{:020}.log: {never_len} -> 0 bytes", 0)),
            "{text}"
        );
        assert!(text.contains("never synced"), "{text}");
        assert!(text.contains(&format!("synced {flushed})")), "{text}");
        assert!(!text.contains("no sync journal"), "{text}");

        // Idempotent: a second cut finds nothing more to discard.
        let again = simulate_power_loss(data.path());
        assert!(again.cuts.is_empty(), "{again}");
    }

    #[test]
    fn power_loss_report_warns_without_a_journal() {
        // Not enabled for this dir: no sidecars, everything goes.
        let dir = tempfile::tempdir().unwrap();
        {
            let log = Log::open(&replica_dir(dir.path(), "t", 0), config()).unwrap();
            append(&log, 2);
            log.flush().unwrap();
        }
        let report = simulate_power_loss(dir.path());
        assert_eq!(report.journaled, 0);
        assert_eq!(report.cuts.len(), 1);
        assert!(report.to_string().contains(SYNC_JOURNAL_ENV), "{report}");
    }

    #[test]
    fn recovery_after_power_loss_ends_at_the_flushed_offset() {
        let data = DataDir::new();
        let dir = replica_dir(data.path(), "t", 0);
        let (flushed, leo) = {
            let log = data.open("t", 0);
            // Ten batches fill a segment: the active one holds five at the flush.
            append(&log, 25);
            let flushed = log.flush().unwrap();
            // Unflushed appends within the active segment.
            let leo = append(&log, 3);
            (flushed, leo)
        };
        let (active, _) = *segment_files(&dir).last().unwrap();
        assert!(leo > flushed && active < flushed, "no roll after the flush");
        assert!(
            last_indexed_offset(&dir, active).is_some_and(|o| o >= flushed),
            "the index has entries past the flushed end"
        );

        let report = simulate_power_loss(data.path());
        assert_eq!(report.cuts.len(), 1, "{report}");
        assert!(report.bytes_discarded() > 0);

        let log = data.open("t", 0);
        assert!(!log.recovery_info().clean_shutdown);
        assert_eq!(log.log_end_offset(), flushed, "{:?}", log.recovery_info());
        assert_readable(&log);
        assert!(matches!(
            log.read(flushed + 1, 1 << 20, i64::MAX),
            Err(keel_storage::StorageError::OffsetOutOfRange { .. })
        ));
        assert_eq!(log.digest(0, flushed).unwrap().corrupt_batch, None);
        // The log goes on from there.
        assert_eq!(append(&log, 1), flushed + 2);
        assert_readable(&log);
    }

    #[test]
    fn recovery_after_power_loss_across_unsynced_rolls() {
        let data = DataDir::new();
        let dir = replica_dir(data.path(), "t", 0);
        let (flushed, segments_at_flush) = {
            let log = data.open("t", 0);
            append(&log, 30);
            let flushed = log.flush().unwrap();
            let segments = log.segment_count();
            // Enough to roll twice without a flush: the rolled segments are never synced.
            append(&log, 30);
            assert!(log.segment_count() >= segments + 2);
            (flushed, segments)
        };
        assert!(segment_files(&dir).len() >= segments_at_flush + 2);

        let report = simulate_power_loss(data.path());
        assert!(report.cuts.len() >= 3, "{report}");
        assert!(report.cuts.iter().filter(|c| c.synced.is_none()).count() >= 2);

        let log = data.open("t", 0);
        assert_eq!(log.log_end_offset(), flushed, "{:?}", log.recovery_info());
        assert_readable(&log);
        assert_eq!(append(&log, 1), flushed + 2);
        assert_readable(&log);
    }

    #[test]
    fn corrupt_byte_breaks_one_batch_crc_deterministically() {
        let data = DataDir::new();
        let leo = {
            let log = data.open("t", 3);
            let leo = append(&log, 30);
            log.flush().unwrap();
            leo
        };
        let dir = replica_dir(data.path(), "t", 3);
        assert!(segment_files(&dir).len() > 1);
        let pristine = tempfile::tempdir().unwrap();
        let copy = replica_dir(pristine.path(), "t", 3);
        std::fs::create_dir(&copy).unwrap();
        for (_, f) in segment_files(&dir) {
            std::fs::copy(&f, copy.join(f.file_name().unwrap())).unwrap();
        }

        let c = corrupt_byte(data.path(), "t", 3, 42);
        assert_ne!(c.old, c.new);
        assert_eq!((c.old ^ c.new).count_ones(), 1);
        let bytes = std::fs::read(&c.file).unwrap();
        assert_eq!(bytes[c.position as usize], c.new);
        let b = batches(&bytes)
            .map(|b| b.unwrap())
            .find(|b| b.header.base_offset() == c.batch_base_offset)
            .unwrap();
        let (start, end) = (b.pos as u64, (b.pos + b.bytes.len()) as u64);
        assert!(
            start + CRC_START as u64 <= c.position && c.position < end,
            "{c}"
        );
        assert_eq!(b.header.last_offset(), c.batch_last_offset);
        assert!(
            b.header.validate(b.bytes).is_err(),
            "CRC still matches: {c}"
        );
        let text = c.to_string();
        let name = c.file.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            text.contains(&format!("t-3/{name}[{}]", c.position)),
            "{text}"
        );

        // Same seed, same files: same byte. Other seeds reach other batches.
        let again = corrupt_byte(pristine.path(), "t", 3, 42);
        assert_eq!(
            (
                again.position,
                again.batch_base_offset,
                again.old,
                again.new
            ),
            (c.position, c.batch_base_offset, c.old, c.new)
        );
        assert_eq!(again.file.file_name(), c.file.file_name());
        let batches_hit: std::collections::BTreeSet<i64> = (0..20)
            .map(|seed| corrupt_byte(pristine.path(), "t", 3, 1000 + seed).batch_base_offset)
            .collect();
        assert!(batches_hit.len() > 5, "{batches_hit:?}");

        // Recovery (a full scan: no checkpoint was written) cuts the log at that batch.
        let log = data.open("t", 3);
        assert!(leo > c.batch_last_offset);
        assert_eq!(log.log_end_offset(), c.batch_base_offset);
        assert!(log.recovery_info().truncated_bytes > 0);
        assert_readable(&log);
    }

    #[test]
    fn truncate_tail_tears_the_last_batch() {
        let data = DataDir::new();
        let leo = {
            let log = data.open("t", 0);
            let leo = append(&log, 30);
            log.flush().unwrap();
            leo
        };
        let dir = replica_dir(data.path(), "t", 0);
        let segments = segment_files(&dir);
        let (_, last) = segments.last().unwrap();
        let spans = batch_spans(last);
        let last_batch = *spans.last().unwrap();
        assert!(last_batch.len > 10);

        let cut = truncate_tail(data.path(), "t", 0, 10);
        assert_eq!(&cut.file, last);
        assert_eq!((cut.removed(), cut.requested), (10, 10));
        assert_eq!(cut.len_after, last_batch.pos + last_batch.len - 10);
        assert_eq!(file_len(last), cut.len_after);
        assert!(
            cut.to_string().starts_with("cut 10 bytes off t-0/"),
            "{cut}"
        );
        // Earlier segments untouched.
        for (_, f) in &segments[..segments.len() - 1] {
            assert_eq!(
                batch_spans(f).last().map(|s| s.pos + s.len),
                Some(file_len(f))
            );
        }

        // Recovery drops the torn batch and nothing else.
        {
            let log = data.open("t", 0);
            assert_eq!(log.log_end_offset(), last_batch.base_offset);
            assert_eq!(log.log_end_offset(), leo - 2);
            assert_eq!(log.recovery_info().truncated_bytes, last_batch.len - 10);
            assert_readable(&log);
            log.close().unwrap();
        }

        // Asking for more than the segment holds empties it.
        let all = truncate_tail(data.path(), "t", 0, u64::MAX);
        assert_eq!((all.len_after, all.removed()), (0, all.len_before));
        assert_eq!(all.requested, u64::MAX);
    }
}
