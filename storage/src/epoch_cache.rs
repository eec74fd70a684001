//! The leader-epoch cache: `epoch -> start offset` (the first offset written in that epoch).
//!
//! Pure data structure; the log persists it in the `leader-epoch-checkpoint` file and rebuilds
//! the part past the recovery point from batch headers.

/// Sorted by epoch and by start offset, both strictly increasing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct EpochCache {
    entries: Vec<(i32, i64)>,
}

impl EpochCache {
    pub(crate) fn from_entries(mut entries: Vec<(i32, i64)>) -> Self {
        entries.sort_unstable();
        let mut cache = EpochCache::default();
        for (e, o) in entries {
            cache.assign(e, o);
        }
        cache
    }

    pub(crate) fn entries(&self) -> &[(i32, i64)] {
        &self.entries
    }

    pub(crate) fn latest(&self) -> Option<i32> {
        self.entries.last().map(|&(e, _)| e)
    }

    /// Records that `epoch` starts at `start`. Ignored unless `epoch` is newer than the latest
    /// (and not negative). Entries starting at or after `start` are dropped first: they belong
    /// to a history that was truncated away.
    pub(crate) fn assign(&mut self, epoch: i32, start: i64) {
        if epoch < 0 || self.latest().is_some_and(|l| epoch <= l) {
            return;
        }
        self.entries.retain(|&(_, o)| o < start);
        self.entries.push((epoch, start));
    }

    /// Drops entries starting at or after `end` (log truncated to `end`).
    pub(crate) fn truncate_from_end(&mut self, end: i64) {
        self.entries.retain(|&(_, o)| o < end);
    }

    /// Log start moved to `start`: the epoch covering `start` now starts there; older ones go.
    pub(crate) fn truncate_from_start(&mut self, start: i64) {
        let covering = self.entries.iter().rposition(|&(_, o)| o <= start);
        if let Some(i) = covering {
            self.entries.drain(..i);
            self.entries[0].1 = start;
        }
    }

    pub(crate) fn clear(&mut self) {
        self.entries.clear();
    }

    /// OffsetForLeaderEpoch, with Kafka's semantics (`LeaderEpochFileCache.endOffsetFor`):
    /// - an undefined (negative) epoch, an empty cache, or an epoch above the latest known
    ///   one: `None` (the caller answers UNDEFINED_EPOCH / UNDEFINED_EPOCH_OFFSET);
    /// - the latest epoch: `(epoch, log_end)`;
    /// - an epoch below the earliest known one: `(epoch, start of the earliest)`;
    /// - otherwise the largest known epoch `<= epoch` and the start offset of the next one.
    pub(crate) fn end_offset_for(&self, epoch: i32, log_end: i64) -> Option<(i32, i64)> {
        let &(latest, _) = self.entries.last()?;
        if epoch < 0 || epoch > latest {
            return None;
        }
        if epoch == latest {
            return Some((epoch, log_end));
        }
        match self.entries.iter().rposition(|&(e, _)| e <= epoch) {
            None => Some((epoch, self.entries[0].1)),
            Some(i) => Some((self.entries[i].0, self.entries[i + 1].1)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(e: &[(i32, i64)]) -> EpochCache {
        EpochCache::from_entries(e.to_vec())
    }

    #[test]
    fn assign_rules() {
        let mut c = cache(&[(1, 0), (3, 10)]);
        c.assign(3, 20);
        c.assign(2, 30);
        c.assign(-1, 40);
        assert_eq!(c.entries(), &[(1, 0), (3, 10)]);
        c.assign(5, 10);
        assert_eq!(
            c.entries(),
            &[(1, 0), (5, 10)],
            "supersedes entries at >= start"
        );
        c.assign(6, 25);
        assert_eq!(c.latest(), Some(6));
    }

    #[test]
    fn end_offset_table() {
        let c = cache(&[(2, 0), (4, 10), (7, 30)]);
        let table = [
            (-1, None),
            (0, Some((0, 0))),
            (1, Some((1, 0))),
            (2, Some((2, 10))),
            (3, Some((2, 10))),
            (4, Some((4, 30))),
            (6, Some((4, 30))),
            (7, Some((7, 55))),
            (9, None),
        ];
        for (epoch, want) in table {
            assert_eq!(c.end_offset_for(epoch, 55), want, "epoch {epoch}");
        }
        assert_eq!(EpochCache::default().end_offset_for(3, 0), None);
    }

    #[test]
    fn truncation() {
        let mut c = cache(&[(2, 0), (4, 10), (7, 30)]);
        c.truncate_from_end(30);
        assert_eq!(c.entries(), &[(2, 0), (4, 10)]);
        c.truncate_from_end(11);
        assert_eq!(c.entries(), &[(2, 0), (4, 10)]);
        c.truncate_from_start(15);
        assert_eq!(c.entries(), &[(4, 15)]);
        let mut c = cache(&[(2, 5), (4, 10)]);
        c.truncate_from_start(3);
        assert_eq!(
            c.entries(),
            &[(2, 5), (4, 10)],
            "start below first entry: unchanged"
        );
        c.truncate_from_start(10);
        assert_eq!(c.entries(), &[(4, 10)]);
        c.clear();
        assert_eq!(c.latest(), None);
    }
}
