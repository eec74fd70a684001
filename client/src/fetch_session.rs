//! Incremental fetch sessions (KIP-227), the fetcher's side: what the next request carries,
//! and how an answer (or its absence) moves the session on. Pure: the consumer and the
//! broker's follower fetcher do the I/O.
//!
//! The wire rules (`session_id`, `session_epoch` in a Fetch request, v7+):
//! - epoch -1: a full fetch without a session; a non-zero id names a session to close.
//! - epoch 0: a full fetch that opens a session (closing the named one, if any); the answer
//!   carries the new id, or 0 when the broker has no room.
//! - epoch n > 0: an incremental fetch in session `id`, whose previous answer was epoch
//!   n - 1: it names only partitions added or changed since, and those to forget. The answer
//!   carries only partitions with something new (records, an error, a moved high watermark
//!   or log start). An unknown id is `FETCH_SESSION_ID_NOT_FOUND`, any other epoch
//!   `INVALID_FETCH_SESSION_EPOCH`; either way the fetcher starts over with a full fetch.

use kafka_protocol::ResponseError;
use std::collections::HashMap;
use std::hash::Hash;

/// What a fetcher asks of one partition: where to read and as whom.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Want {
    pub fetch_offset: i64,
    pub max_bytes: i32,
    pub current_leader_epoch: i32,
    pub last_fetched_epoch: i32,
    pub log_start_offset: i64,
}

/// The epoch after `e`: 1 follows `i32::MAX` (0 and -1 have their own meanings).
pub fn next_epoch(e: i32) -> i32 {
    if (1..i32::MAX).contains(&e) {
        e + 1
    } else {
        1
    }
}

/// A top-level Fetch error that only means the session is gone or out of step: the fetcher
/// starts over with a full fetch.
pub fn is_session_error(code: i16) -> bool {
    [
        ResponseError::FetchSessionIdNotFound,
        ResponseError::InvalidFetchSessionEpoch,
        ResponseError::FetchSessionTopicIdError,
    ]
    .iter()
    .any(|e| e.code() == code)
}

/// One request's session fields and partitions.
#[derive(Debug, PartialEq)]
pub struct Plan<K> {
    pub session_id: i32,
    pub epoch: i32,
    /// Partitions the request names: all of them in a full request, only new or changed
    /// ones in an incremental one.
    pub send: Vec<(K, Want)>,
    /// Partitions the session holds that the fetcher no longer wants.
    pub forget: Vec<K>,
}

impl<K> Plan<K> {
    pub fn is_full(&self) -> bool {
        self.epoch <= 0
    }
}

/// The fetcher's view of its session with one broker.
#[derive(Debug)]
pub struct SessionBuilder<K> {
    /// 0: no session; the next request is a full one that asks for a new one.
    id: i32,
    /// The epoch of the next request: 0 for a full one.
    epoch: i32,
    /// What the broker's session holds for each partition, as of the last answer.
    held: HashMap<K, Want>,
}

impl<K: Clone + Eq + Hash + Ord> Default for SessionBuilder<K> {
    fn default() -> Self {
        Self {
            id: 0,
            epoch: 0,
            held: HashMap::new(),
        }
    }
}

impl<K: Clone + Eq + Hash + Ord> SessionBuilder<K> {
    pub fn session_id(&self) -> i32 {
        self.id
    }

    /// The next request for `wanted` (every partition the fetcher wants now, in order).
    pub fn plan(&self, wanted: &[(K, Want)]) -> Plan<K> {
        if self.epoch == 0 {
            return Plan {
                session_id: self.id,
                epoch: 0,
                send: wanted.to_vec(),
                forget: Vec::new(),
            };
        }
        let send = wanted
            .iter()
            .filter(|(k, w)| self.held.get(k) != Some(w))
            .cloned()
            .collect();
        let still: std::collections::HashSet<&K> = wanted.iter().map(|(k, _)| k).collect();
        let mut forget: Vec<K> = self
            .held
            .keys()
            .filter(|k| !still.contains(k))
            .cloned()
            .collect();
        forget.sort();
        Plan {
            session_id: self.id,
            epoch: self.epoch,
            send,
            forget,
        }
    }

    /// The broker answered `plan` with top-level `error` (0: none) and `session_id`.
    /// Returns false when the session is gone and the next request must be a full one.
    pub fn answered(&mut self, plan: Plan<K>, error: i16, session_id: i32) -> bool {
        if error != 0 {
            // Unknown session, wrong epoch, topic-id mix-up or anything else: start over.
            // An unknown id is not worth closing; any other is closed by the full request.
            let gone = error == ResponseError::FetchSessionIdNotFound.code();
            self.start_over(!gone);
            return false;
        }
        if plan.is_full() {
            self.held = plan.send.into_iter().collect();
            self.id = session_id;
            // No session granted (a full cache): the next request is full again, and asks
            // again.
            self.epoch = if session_id == 0 { 0 } else { 1 };
            return session_id != 0;
        }
        if session_id != self.id {
            self.start_over(true);
            return false;
        }
        for k in &plan.forget {
            self.held.remove(k);
        }
        self.held.extend(plan.send);
        self.epoch = next_epoch(self.epoch);
        true
    }

    /// The request went unanswered (connection lost, abandoned): the broker may or may not
    /// have moved the session on, so start over with a full request that closes it.
    pub fn lost(&mut self) {
        self.start_over(true);
    }

    fn start_over(&mut self, close: bool) {
        if !close {
            self.id = 0;
        }
        self.epoch = 0;
        self.held.clear();
    }

    /// What the broker's session holds for `key`, as of the last answer.
    pub fn held(&self, key: &K) -> Option<&Want> {
        self.held.get(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn want(offset: i64) -> Want {
        Want {
            fetch_offset: offset,
            max_bytes: 1 << 20,
            current_leader_epoch: 3,
            last_fetched_epoch: 3,
            log_start_offset: 0,
        }
    }

    #[test]
    fn the_fetcher_sends_everything_once_then_only_changes() {
        let mut b: SessionBuilder<i32> = SessionBuilder::default();
        let wanted = vec![(0, want(10)), (1, want(10)), (2, want(10))];
        let plan = b.plan(&wanted);
        assert!(plan.is_full());
        assert_eq!((plan.session_id, plan.epoch, plan.send.len()), (0, 0, 3));
        assert!(b.answered(plan, 0, 77));

        let same = b.plan(&wanted);
        assert_eq!((same.session_id, same.epoch), (77, 1));
        assert!(same.send.is_empty() && same.forget.is_empty());
        assert!(b.answered(same, 0, 77));

        let moved = vec![(0, want(10)), (1, want(12)), (3, want(0))];
        let plan = b.plan(&moved);
        assert_eq!(plan.epoch, 2);
        assert_eq!(plan.send, vec![(1, want(12)), (3, want(0))]);
        assert_eq!(plan.forget, vec![2]);
        assert!(b.answered(plan, 0, 77));
        assert_eq!(b.held(&3), Some(&want(0)));
        assert_eq!(b.held(&2), None);
    }

    #[test]
    fn the_fetcher_starts_over_when_the_session_is_lost() {
        let wanted = vec![(0, want(10))];
        let not_found = ResponseError::FetchSessionIdNotFound.code();
        let bad_epoch = ResponseError::InvalidFetchSessionEpoch.code();
        // (what, what happens to the request at epoch 1 of session 77, the next request's
        //  (session id, epoch))
        type Row = (
            &'static str,
            Box<dyn Fn(&mut SessionBuilder<i32>, Plan<i32>)>,
            (i32, i32),
        );
        let table: Vec<Row> = vec![
            (
                "evicted: no id to close",
                Box::new(move |b, p| assert!(!b.answered(p, not_found, 0))),
                (0, 0),
            ),
            (
                "wrong epoch: close it and open anew",
                Box::new(move |b, p| assert!(!b.answered(p, bad_epoch, 0))),
                (77, 0),
            ),
            (
                "no answer: close it and open anew",
                Box::new(|b, _| b.lost()),
                (77, 0),
            ),
            (
                "an answer from another session",
                Box::new(|b, p| assert!(!b.answered(p, 0, 78))),
                (77, 0),
            ),
            (
                "answered",
                Box::new(|b, p| assert!(b.answered(p, 0, 77))),
                (77, 2),
            ),
        ];
        for (what, happen, next) in table {
            let mut b: SessionBuilder<i32> = SessionBuilder::default();
            let full = b.plan(&wanted);
            b.answered(full, 0, 77);
            let plan = b.plan(&wanted);
            assert_eq!(plan.epoch, 1);
            happen(&mut b, plan);
            let after = b.plan(&wanted);
            assert_eq!((after.session_id, after.epoch), next, "{what}");
            if after.is_full() {
                assert_eq!(
                    after.send, wanted,
                    "{what}: a full request names everything"
                );
            }
        }
    }

    #[test]
    fn without_a_session_every_request_is_full() {
        let mut b: SessionBuilder<i32> = SessionBuilder::default();
        let wanted = vec![(0, want(10))];
        for _ in 0..3 {
            let plan = b.plan(&wanted);
            assert_eq!((plan.session_id, plan.epoch, plan.send.len()), (0, 0, 1));
            assert!(!b.answered(plan, 0, 0), "the cache had no room");
        }
    }
}
