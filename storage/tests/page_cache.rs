//! `log.cache.bytes`: written pages that fall out of the node's window of recent writes are
//! handed back to the kernel, across segment rolls and across the logs sharing the window,
//! and reading them still gives the same bytes. Residency is read with `mincore` on a mapping of each segment file.
//!
//! The logs live under the target directory, not the system temp dir: on tmpfs the kernel
//! keeps every page whatever we advise.

mod common;

use common::{batch, describe, read_all, segment_files};
use keel_storage::{FlushPolicy, Log, LogConfig, PageCache};
use std::fs::File;
use std::path::Path;

const PAGE: usize = 4096;
const TAIL: u64 = 1 << 20;
/// Drops go in aligned 2 MiB steps (the largest page-cache folio), so up to that much more
/// than the tail stays.
const STEP: u64 = 2 << 20;
const BATCHES: u64 = 224;
const PER_BATCH: i64 = 64;

fn config(window: Option<u64>) -> LogConfig {
    LogConfig {
        segment_bytes: 4 << 20,
        flush_policy: FlushPolicy::Always,
        page_cache: PageCache::new(window),
        ..Default::default()
    }
}

/// Appends about 14 MiB in 64 KiB batches, fsyncing after each as the broker does.
fn fill(log: &Log) {
    for i in 0..BATCHES {
        log.append_as_leader(&batch(PER_BATCH as usize, 1000, i, i as i64), 1)
            .unwrap();
        log.flush().unwrap();
    }
}

/// Per page of `path`: is it in the page cache?
fn resident_pages(path: &Path) -> Vec<bool> {
    let file = File::open(path).unwrap();
    let len = file.metadata().unwrap().len() as usize;
    if len == 0 {
        return Vec::new();
    }
    // SAFETY: read-only shared mapping of a file nobody writes while it is mapped here; its
    // bytes are never read, only its residency.
    let map = unsafe { memmap2::Mmap::map(&file) }.unwrap();
    let mut vec = vec![0u8; len.div_ceil(PAGE)];
    // SAFETY: `map` is a live mapping of `len` bytes and `vec` has one byte per page of it.
    let r = unsafe { libc::mincore(map.as_ptr() as *mut libc::c_void, len, vec.as_mut_ptr()) };
    assert_eq!(r, 0, "mincore: {}", std::io::Error::last_os_error());
    vec.iter().map(|b| b & 1 == 1).collect()
}

/// (pages resident further than TAIL + STEP behind the end, pages resident nearer the end).
fn residency(dir: &Path) -> (usize, usize) {
    let files = segment_files(dir, "log");
    let sizes: Vec<u64> = files.iter().map(|f| f.metadata().unwrap().len()).collect();
    let total: u64 = sizes.iter().sum();
    let (mut behind, mut within, mut start) = (0, 0, 0u64);
    for (i, f) in files.iter().enumerate() {
        for (p, resident) in resident_pages(f).iter().enumerate() {
            let end_of_page = start + ((p + 1) * PAGE) as u64;
            if !resident {
                continue;
            }
            if end_of_page + TAIL + STEP <= total {
                behind += 1;
            } else {
                within += 1;
            }
        }
        start += sizes[i];
    }
    (behind, within)
}

fn scratch_dir() -> tempfile::TempDir {
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap()
}

#[test]
fn pages_out_of_the_window_leave_the_page_cache_and_read_back_intact() {
    let dir = scratch_dir();
    let log = Log::open(dir.path(), config(Some(TAIL))).unwrap();
    fill(&log);
    assert!(
        segment_files(dir.path(), "log").len() >= 3,
        "the log should have rolled"
    );
    let (behind, within) = residency(dir.path());
    assert_eq!(
        behind, 0,
        "pages further than the window behind the end stayed cached"
    );
    assert!(within > 0, "the newest tail should stay in the page cache");

    // Everything reads back whole and valid (CRCs checked), faulted in from disk.
    let all = read_all(&log, 0);
    assert_eq!(describe(&all).len(), BATCHES as usize);
    assert_eq!(
        describe(&all).last().map(|d| d.1),
        Some(BATCHES as i64 * PER_BATCH - 1)
    );
}

#[test]
fn without_a_window_the_page_cache_is_left_to_the_kernel() {
    let dir = scratch_dir();
    let log = Log::open(dir.path(), config(None)).unwrap();
    fill(&log);
    let (behind, _) = residency(dir.path());
    assert!(behind > 0, "nothing should have been advised away");
}

#[test]
fn truncation_rewinds_the_dropped_range() {
    let dir = scratch_dir();
    let log = Log::open(
        dir.path(),
        LogConfig {
            segment_bytes: 8 << 20,
            ..config(Some(0))
        },
    )
    .unwrap();
    let segment = segment_files(dir.path(), "log").pop().unwrap();
    let size = || segment.metadata().unwrap().len();
    let mut seed = 0;
    let mut fill_to = |bytes: u64| {
        while size() < bytes {
            seed += 1;
            log.append_as_leader(&batch(PER_BATCH as usize, 1000, seed, 0), 1)
                .unwrap();
            log.flush().unwrap();
        }
    };
    // Dropped below 4 MiB; cut back to about 1 MiB and write past 5 MiB again: the rewritten
    // range below 4 MiB must be dropped too.
    fill_to(5 << 20);
    let cut = log.log_end_offset() / 5;
    log.truncate_to(cut).unwrap();
    assert!(size() < 2 << 20, "the cut should land near 1 MiB");
    fill_to(5 << 20);
    let stale = resident_pages(&segment)[..(4 << 20) / PAGE]
        .iter()
        .filter(|r| **r)
        .count();
    assert_eq!(stale, 0, "rewritten pages stayed cached");
    let all = read_all(&log, 0);
    assert_eq!(
        describe(&all).last().map(|d| d.1),
        Some(log.log_end_offset() - 1)
    );
}

#[test]
fn a_window_larger_than_what_was_written_keeps_it_all_for_readers() {
    let dir = scratch_dir();
    let log = Log::open(dir.path(), config(Some(64 << 20))).unwrap();
    fill(&log);
    let (behind, within) = residency(dir.path());
    assert!(
        behind > 0 && within > 0,
        "a reader of older data would go to disk"
    );
    let resident: usize = segment_files(dir.path(), "log")
        .iter()
        .map(|f| resident_pages(f).iter().filter(|r| **r).count())
        .sum();
    let written: u64 = segment_files(dir.path(), "log")
        .iter()
        .map(|f| f.metadata().unwrap().len())
        .sum();
    assert_eq!(
        resident as u64,
        written.div_ceil(PAGE as u64),
        "every written page should still be cached"
    );
}

#[test]
fn the_window_spans_every_log_that_shares_it() {
    let (a_dir, b_dir) = (scratch_dir(), scratch_dir());
    let shared = config(Some(TAIL));
    let a = Log::open(a_dir.path(), shared.clone()).unwrap();
    let b = Log::open(b_dir.path(), shared).unwrap();
    fill(&a);
    // Log b's writes push all of a's out of the shared window.
    fill(&b);
    let files = segment_files(a_dir.path(), "log");
    let (sealed, active) = files.split_at(files.len() - 1);
    for f in sealed {
        let cached = resident_pages(f).iter().filter(|r| **r).count();
        assert_eq!(
            cached, 0,
            "{f:?}: a sealed segment out of the window stayed cached"
        );
    }
    // The active segment is dropped in whole steps: less than one step may stay.
    let cached = resident_pages(&active[0]).iter().filter(|r| **r).count();
    assert!(
        (cached as u64) * (PAGE as u64) < STEP,
        "{cached} pages of a's active segment stayed cached"
    );
    let (behind, within) = residency(b_dir.path());
    assert_eq!(behind, 0, "b's pages out of the window stayed cached");
    assert!(within > 0, "the newest writes should stay cached");
    assert_eq!(describe(&read_all(&a, 0)).len(), BATCHES as usize);
}

#[test]
fn a_follower_replica_keeps_none_of_its_writes_in_the_window() {
    let (leader_dir, follower_dir) = (scratch_dir(), scratch_dir());
    let window = config(Some(64 << 20));
    let leader = Log::open(leader_dir.path(), window.clone()).unwrap();
    let follower = Log::open(follower_dir.path(), window.clone()).unwrap();
    fill(&leader);
    let held = window.page_cache.held_bytes();
    // The follower copies the leader's log the way a fetcher does, fsyncing each fetch.
    while follower.log_end_offset() < leader.log_end_offset() {
        let r = leader
            .read(follower.log_end_offset(), 1 << 20, i64::MAX)
            .unwrap();
        follower.append_as_follower(&r.records).unwrap();
        follower.flush().unwrap();
    }
    assert_eq!(
        window.page_cache.held_bytes(),
        held,
        "a follower's writes joined the window"
    );
    let cached: usize = segment_files(follower_dir.path(), "log")
        .iter()
        .map(|f| resident_pages(f).iter().filter(|r| **r).count())
        .sum();
    assert!(
        (cached as u64) * (PAGE as u64) <= STEP,
        "{cached} pages of the follower's log stayed cached"
    );
    assert_eq!(describe(&read_all(&follower, 0)).len(), BATCHES as usize);
}
