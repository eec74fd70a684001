//! Incremental fetch sessions (KIP-227) as pure state machines: no I/O, no clocks.
//!
//! A fetcher that asks for thousands of partitions need not list them all in every Fetch,
//! nor hear about every one in every answer. The first (full) request names them all and the
//! broker keeps them in a session; later (incremental) requests name only the partitions
//! whose fetch state changed, plus those to forget, and the answer carries only partitions
//! with something new: records, an error, a moved high watermark or log start.
//!
//! - [`SessionCache`]: the broker's side. Opens, advances, closes and evicts sessions, and
//!   decides per answered partition whether it must be in the answer.
//! - The fetcher's side (which partitions a request carries, how an answer moves the session
//!   on) is `keel_client::fetch_session`, shared by the consumer and the follower fetcher;
//!   its module doc has the wire rules.

#[cfg(test)]
mod tests;

use kafka_protocol::ResponseError;
use std::collections::HashMap;

/// How a request names a topic: by id (Fetch v13+) or by name (older versions). One session
/// uses one of the two throughout.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum TopicKey {
    Id(uuid::Uuid),
    Name(std::sync::Arc<str>),
}

/// A partition in a session.
pub(crate) type PartitionKey = (TopicKey, i32);

pub(crate) use keel_client::fetch_session::{next_epoch, Want};

/// Who a session belongs to. A session is only ever continued by the same kind of fetcher:
/// a consumer cannot continue a follower's session (or another follower's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Owner {
    Consumer,
    Follower(i32),
}

impl Owner {
    /// Follower sessions may evict consumer sessions (and smaller follower sessions) from a
    /// full cache: replication matters more than one consumer's savings.
    fn privileged(self) -> bool {
        matches!(self, Owner::Follower(_))
    }
}

/// What an answered partition carried, as far as the session cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Answered {
    pub(crate) high_watermark: i64,
    pub(crate) log_start_offset: i64,
    /// Records, or a diverging epoch: something the fetcher must act on.
    pub(crate) news: bool,
    pub(crate) error: bool,
}

/// The cache's settings: `max.incremental.fetch.session.cache.slots` and
/// `min.incremental.fetch.session.eviction.ms`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub(crate) slots: usize,
    pub(crate) eviction_ms: i64,
}

/// One partition of a session: the fetcher's last word on it, and what the broker last
/// told the fetcher (-1: nothing yet, or an error since, so the next answer includes it).
#[derive(Debug, Clone)]
struct Slot {
    key: PartitionKey,
    want: Want,
    high_watermark: i64,
    log_start_offset: i64,
}

#[derive(Debug)]
struct Session {
    owner: Owner,
    by_id: bool,
    /// The epoch the next incremental request must carry.
    epoch: i32,
    /// In reading order: partitions that answered with records move to the back, so a
    /// response size cap cannot starve the partitions behind them.
    slots: Vec<Slot>,
    index: HashMap<PartitionKey, usize>,
    /// Moves whenever `slots` gains, loses or reorders partitions: an answer read in an
    /// older shape is not matched to slots by position.
    shape: u64,
    last_used_ms: i64,
}

impl Session {
    fn new(owner: Owner, by_id: bool, now_ms: i64) -> Self {
        Self {
            owner,
            by_id,
            epoch: 1,
            slots: Vec::new(),
            index: HashMap::new(),
            shape: 0,
            last_used_ms: now_ms,
        }
    }

    fn upsert(&mut self, key: PartitionKey, want: Want) {
        match self.index.get(&key) {
            Some(&i) => self.slots[i].want = want,
            None => {
                self.shape += 1;
                self.index.insert(key.clone(), self.slots.len());
                self.slots.push(Slot {
                    key,
                    want,
                    high_watermark: -1,
                    log_start_offset: -1,
                });
            }
        }
    }

    fn forget(&mut self, forgotten: &[PartitionKey]) {
        if forgotten.iter().all(|k| !self.index.contains_key(k)) {
            return;
        }
        self.slots.retain(|s| !forgotten.contains(&s.key));
        self.shape += 1;
        self.reindex();
    }

    fn reindex(&mut self) {
        self.index = self
            .slots
            .iter()
            .enumerate()
            .map(|(i, s)| (s.key.clone(), i))
            .collect();
    }

    fn wants(&self) -> Vec<(PartitionKey, Want)> {
        self.slots.iter().map(|s| (s.key.clone(), s.want)).collect()
    }

    /// Eviction order: consumer sessions before follower sessions, then smaller first.
    fn rank(&self) -> (bool, usize) {
        (self.owner.privileged(), self.slots.len())
    }
}

/// What the broker does with a Fetch request, as far as sessions go.
#[derive(Debug, PartialEq)]
pub(crate) enum Opened {
    /// Read what the request names; answer without a session (id 0).
    Sessionless,
    /// Read what the request names; once answered, open a session over it
    /// ([`SessionCache::create`]).
    Full,
    /// Read every partition of session `id`, in this order, then keep in the answer only
    /// what [`SessionCache::settle`] says must go (given this `shape`).
    Incremental {
        id: i32,
        shape: u64,
        wants: Vec<(PartitionKey, Want)>,
    },
    /// Answer with this top-level error and no partitions.
    Refused(ResponseError),
}

/// The request's session fields and the partitions it names.
#[derive(Debug)]
pub(crate) struct Request<'a> {
    pub(crate) session_id: i32,
    pub(crate) epoch: i32,
    pub(crate) owner: Owner,
    pub(crate) by_id: bool,
    /// Partitions added or changed (all of them, in a full request).
    pub(crate) wants: &'a [(PartitionKey, Want)],
    pub(crate) forgotten: &'a [PartitionKey],
}

/// The broker's fetch sessions.
#[derive(Debug)]
pub(crate) struct SessionCache {
    limits: Limits,
    sessions: HashMap<i32, Session>,
    /// The last id handed out: ids count up from a random start, skipping 0, negatives and
    /// ids in use.
    last_id: i32,
    evictions: u64,
}

impl SessionCache {
    pub(crate) fn new(limits: Limits, first_id: i32) -> Self {
        Self {
            limits,
            sessions: HashMap::new(),
            last_id: first_id,
            evictions: 0,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.sessions.len()
    }

    /// Partitions held across all sessions.
    pub(crate) fn partitions(&self) -> usize {
        self.sessions.values().map(|s| s.slots.len()).sum()
    }

    pub(crate) fn evictions(&self) -> u64 {
        self.evictions
    }

    /// Decides what a request means (see the module doc) and, for an incremental one,
    /// applies its changes and advances the session's epoch.
    pub(crate) fn open(&mut self, req: &Request<'_>, now_ms: i64) -> Opened {
        match req.epoch {
            -1 => {
                self.sessions.remove(&req.session_id);
                Opened::Sessionless
            }
            0 => {
                self.sessions.remove(&req.session_id);
                Opened::Full
            }
            e if e < -1 => Opened::Refused(ResponseError::InvalidFetchSessionEpoch),
            epoch => {
                let Some(s) = self.sessions.get_mut(&req.session_id) else {
                    return Opened::Refused(ResponseError::FetchSessionIdNotFound);
                };
                if s.owner != req.owner {
                    // Someone else's session: as good as unknown to this fetcher.
                    return Opened::Refused(ResponseError::FetchSessionIdNotFound);
                }
                if s.by_id != req.by_id {
                    return Opened::Refused(ResponseError::FetchSessionTopicIdError);
                }
                if s.epoch != epoch {
                    return Opened::Refused(ResponseError::InvalidFetchSessionEpoch);
                }
                s.epoch = next_epoch(epoch);
                s.last_used_ms = now_ms;
                for (key, want) in req.wants {
                    s.upsert(key.clone(), *want);
                }
                s.forget(req.forgotten);
                Opened::Incremental {
                    id: req.session_id,
                    shape: s.shape,
                    wants: s.wants(),
                }
            }
        }
    }

    /// Opens a session over an answered full fetch: `answered` in request order, with what
    /// each partition's answer carried. Returns the new id, or 0 when the cache is full of
    /// sessions this one may not evict (the fetcher then goes on without one).
    pub(crate) fn create(
        &mut self,
        owner: Owner,
        by_id: bool,
        answered: &[(PartitionKey, Want, Answered)],
        now_ms: i64,
    ) -> i32 {
        if self.limits.slots == 0 {
            return 0;
        }
        if self.sessions.len() >= self.limits.slots
            && !self.evict_for((owner.privileged(), answered.len()), now_ms)
        {
            return 0;
        }
        let mut s = Session::new(owner, by_id, now_ms);
        for (key, want, a) in answered {
            s.upsert(key.clone(), *want);
            let slot = s.slots.last_mut().expect("just added");
            remember(slot, a);
        }
        let id = self.fresh_id();
        self.sessions.insert(id, s);
        id
    }

    /// Makes room for a session ranked `rank`: a session unused for the eviction time goes
    /// first (the longest unused); otherwise a follower's session may evict the lowest
    /// ranked one if it ranks higher itself.
    fn evict_for(&mut self, rank: (bool, usize), now_ms: i64) -> bool {
        let stale = self
            .sessions
            .iter()
            .filter(|(_, s)| now_ms - s.last_used_ms > self.limits.eviction_ms)
            .min_by_key(|(id, s)| (s.last_used_ms, **id))
            .map(|(id, _)| *id);
        let victim = stale.or_else(|| {
            if !rank.0 {
                return None;
            }
            self.sessions
                .iter()
                .min_by_key(|(id, s)| (s.rank(), **id))
                .filter(|(_, s)| s.rank() < rank)
                .map(|(id, _)| *id)
        });
        match victim {
            Some(id) => {
                self.sessions.remove(&id);
                self.evictions += 1;
                true
            }
            None => false,
        }
    }

    fn fresh_id(&mut self) -> i32 {
        loop {
            self.last_id = next_epoch(self.last_id);
            if !self.sessions.contains_key(&self.last_id) {
                return self.last_id;
            }
        }
    }

    /// After an incremental fetch in session `id` was answered: which partitions the
    /// answer must carry, given what each carried (`answered`, in the order
    /// [`Opened::Incremental`] listed them, in `shape`). Remembers what it carries and moves
    /// partitions that answered with records to the back. A session evicted or reshaped
    /// meanwhile keeps every partition in the answer.
    pub(crate) fn settle(&mut self, id: i32, shape: u64, answered: &[Answered]) -> Vec<bool> {
        let Some(s) = self
            .sessions
            .get_mut(&id)
            .filter(|s| s.shape == shape && s.slots.len() == answered.len())
        else {
            return vec![true; answered.len()];
        };
        let keep: Vec<bool> = s
            .slots
            .iter_mut()
            .zip(answered)
            .map(|(slot, a)| remember(slot, a))
            .collect();
        if answered.iter().any(|a| a.news && !a.error) {
            let mut moved = Vec::new();
            let mut kept = Vec::with_capacity(s.slots.len());
            for (slot, a) in std::mem::take(&mut s.slots).into_iter().zip(answered) {
                if a.news && !a.error {
                    moved.push(slot);
                } else {
                    kept.push(slot);
                }
            }
            kept.extend(moved);
            s.slots = kept;
            s.shape += 1;
            s.reindex();
        }
        keep
    }
}

/// Whether an answered partition must be in the answer, remembering what it carries: news
/// or an error always, otherwise only a high watermark or log start the fetcher has not
/// seen. After an error the next answer includes the partition again.
fn remember(slot: &mut Slot, a: &Answered) -> bool {
    let mut must = a.news || a.error;
    if slot.high_watermark != a.high_watermark {
        slot.high_watermark = a.high_watermark;
        must = true;
    }
    if slot.log_start_offset != a.log_start_offset {
        slot.log_start_offset = a.log_start_offset;
        must = true;
    }
    if a.error {
        slot.high_watermark = -1;
    }
    must
}
