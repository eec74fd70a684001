use super::*;

fn key(p: i32) -> PartitionKey {
    (TopicKey::Name(std::sync::Arc::from("t")), p)
}

fn want(offset: i64) -> Want {
    Want {
        fetch_offset: offset,
        max_bytes: 1 << 20,
        current_leader_epoch: 3,
        last_fetched_epoch: 3,
        log_start_offset: 0,
    }
}

fn quiet(hw: i64) -> Answered {
    Answered {
        high_watermark: hw,
        log_start_offset: 0,
        news: false,
        error: false,
    }
}

fn limits(slots: usize) -> Limits {
    Limits {
        slots,
        eviction_ms: 120_000,
    }
}

fn req<'a>(
    id: i32,
    epoch: i32,
    owner: Owner,
    wants: &'a [(PartitionKey, Want)],
    forgotten: &'a [PartitionKey],
) -> Request<'a> {
    Request {
        session_id: id,
        epoch,
        owner,
        by_id: false,
        wants,
        forgotten,
    }
}

/// Opens a session of `n` partitions (offset 10, HW 10) for `owner` at `now`.
fn open_session(cache: &mut SessionCache, owner: Owner, n: i32, now: i64) -> i32 {
    let wants: Vec<_> = (0..n).map(|p| (key(p), want(10))).collect();
    assert_eq!(
        cache.open(&req(0, 0, owner, &wants, &[]), now),
        Opened::Full
    );
    let answered: Vec<_> = wants
        .iter()
        .map(|(k, w)| (k.clone(), *w, quiet(10)))
        .collect();
    cache.create(owner, false, &answered, now)
}

#[test]
fn the_session_fields_of_a_request_decide_what_it_means() {
    let consumer = Owner::Consumer;
    let mut cache = SessionCache::new(limits(10), 0);
    let id = open_session(&mut cache, consumer, 3, 0);
    assert_eq!(id, 1);
    let none: &[(PartitionKey, Want)] = &[];
    let table: Vec<(&str, Request<'_>, Opened)> = vec![
        (
            "epoch -1 without an id: sessionless",
            req(0, -1, consumer, none, &[]),
            Opened::Sessionless,
        ),
        (
            "unknown id",
            req(99, 1, consumer, none, &[]),
            Opened::Refused(ResponseError::FetchSessionIdNotFound),
        ),
        (
            "id 0 with an incremental epoch",
            req(0, 1, consumer, none, &[]),
            Opened::Refused(ResponseError::FetchSessionIdNotFound),
        ),
        (
            "an epoch from the future",
            req(id, 2, consumer, none, &[]),
            Opened::Refused(ResponseError::InvalidFetchSessionEpoch),
        ),
        (
            "a negative epoch other than -1",
            req(id, -7, consumer, none, &[]),
            Opened::Refused(ResponseError::InvalidFetchSessionEpoch),
        ),
        (
            "a follower continuing a consumer's session",
            req(id, 1, Owner::Follower(2), none, &[]),
            Opened::Refused(ResponseError::FetchSessionIdNotFound),
        ),
        (
            "the expected epoch: every partition, in order",
            req(id, 1, consumer, none, &[]),
            Opened::Incremental {
                id,
                shape: 3,
                wants: (0..3).map(|p| (key(p), want(10))).collect(),
            },
        ),
        (
            "the same epoch again: already used",
            req(id, 1, consumer, none, &[]),
            Opened::Refused(ResponseError::InvalidFetchSessionEpoch),
        ),
        (
            "the next epoch",
            req(id, 2, consumer, none, &[]),
            Opened::Incremental {
                id,
                shape: 3,
                wants: (0..3).map(|p| (key(p), want(10))).collect(),
            },
        ),
    ];
    for (what, r, expected) in table {
        assert_eq!(cache.open(&r, 1), expected, "{what}");
    }
    assert_eq!(cache.len(), 1);
    // Naming a session with epoch -1 closes it; with epoch 0 closes it and opens anew.
    assert_eq!(
        cache.open(&req(id, -1, consumer, none, &[]), 2),
        Opened::Sessionless
    );
    assert_eq!(cache.len(), 0);
    let id = open_session(&mut cache, consumer, 1, 3);
    assert_eq!(
        cache.open(&req(id, 0, consumer, none, &[]), 4),
        Opened::Full
    );
    assert_eq!(cache.len(), 0, "epoch 0 closes the named session");
}

#[test]
fn a_session_keeps_one_way_of_naming_topics() {
    let mut cache = SessionCache::new(limits(10), 0);
    let id = open_session(&mut cache, Owner::Consumer, 1, 0);
    let mut r = req(id, 1, Owner::Consumer, &[], &[]);
    r.by_id = true;
    assert_eq!(
        cache.open(&r, 1),
        Opened::Refused(ResponseError::FetchSessionTopicIdError)
    );
}

#[test]
fn incremental_requests_add_change_and_forget_partitions() {
    let mut cache = SessionCache::new(limits(10), 0);
    let id = open_session(&mut cache, Owner::Follower(1), 3, 0);
    let changes = [(key(1), want(15)), (key(7), want(0))];
    let forgotten = [key(0), key(42)];
    let opened = cache.open(&req(id, 1, Owner::Follower(1), &changes, &forgotten), 1);
    assert_eq!(
        opened,
        Opened::Incremental {
            id,
            shape: 5,
            wants: vec![(key(1), want(15)), (key(2), want(10)), (key(7), want(0))],
        }
    );
    assert_eq!(cache.partitions(), 3);
}

#[test]
fn an_answer_carries_only_what_the_fetcher_has_not_seen() {
    let mut cache = SessionCache::new(limits(10), 0);
    let id = open_session(&mut cache, Owner::Consumer, 1, 0);
    let news = Answered {
        news: true,
        ..quiet(10)
    };
    let error = Answered {
        error: true,
        ..quiet(10)
    };
    let moved_start = Answered {
        log_start_offset: 5,
        ..quiet(10)
    };
    // (what, answered, must be in the answer); each row builds on the rows before.
    let table = [
        ("nothing new", quiet(10), false),
        ("the HW moved", quiet(12), true),
        ("the same HW again", quiet(12), false),
        ("records", news, true),
        ("an error", error, true),
        ("the error gone, HW as before: sent again", quiet(10), true),
        ("then quiet", quiet(10), false),
        ("the log start moved", moved_start, true),
        ("then quiet", moved_start, false),
    ];
    for (epoch, (what, a, must)) in (1..).zip(table) {
        let shape = shape_of(&mut cache, id, epoch);
        assert_eq!(cache.settle(id, shape, &[a]), vec![must], "{what}");
    }
    // A session evicted during the long poll, or reshaped since it was read: everything
    // goes, and nothing is remembered.
    assert_eq!(cache.settle(99, 0, &[quiet(10)]), vec![true]);
    let shape = shape_of(&mut cache, id, 10);
    assert_eq!(cache.settle(id, shape + 1, &[quiet(11)]), vec![true]);
    assert_eq!(cache.settle(id, shape, &[moved_start]), vec![false]);
}

/// Opens the incremental fetch `epoch` of session `id` and returns the shape it was read in.
fn shape_of(cache: &mut SessionCache, id: i32, epoch: i32) -> u64 {
    match cache.open(&req(id, epoch, Owner::Consumer, &[], &[]), 1) {
        Opened::Incremental { shape, .. } => shape,
        other => panic!("epoch {epoch}: {other:?}"),
    }
}

#[test]
fn partitions_that_answered_with_records_move_to_the_back() {
    let mut cache = SessionCache::new(limits(10), 0);
    let id = open_session(&mut cache, Owner::Consumer, 4, 0);
    let news = Answered {
        news: true,
        ..quiet(10)
    };
    let shape = shape_of(&mut cache, id, 1);
    cache.settle(id, shape, &[news, quiet(10), news, quiet(10)]);
    let Opened::Incremental { wants, .. } = cache.open(&req(id, 2, Owner::Consumer, &[], &[]), 1)
    else {
        panic!("session lost");
    };
    let order: Vec<i32> = wants.iter().map(|((_, p), _)| *p).collect();
    assert_eq!(order, vec![1, 3, 0, 2]);
}

#[test]
fn a_full_cache_evicts_by_staleness_then_by_rank() {
    let eviction = 120_000;
    // (what, sessions there (owner, partitions, last used), newcomer (owner, partitions), now,
    //  evicted index or None when the newcomer gets no session)
    type Row = (
        &'static str,
        Vec<(Owner, i32, i64)>,
        (Owner, i32),
        i64,
        Option<usize>,
    );
    let c = Owner::Consumer;
    let f = Owner::Follower;
    let table: Vec<Row> = vec![
        (
            "the longest unused stale session goes, even for a consumer",
            vec![(c, 5, 10), (c, 5, 0), (f(1), 5, 5)],
            (c, 1),
            eviction + 20,
            Some(1),
        ),
        (
            "no stale session: a consumer gets none",
            vec![(c, 1, 10), (c, 1, 0)],
            (c, 100),
            eviction,
            None,
        ),
        (
            "a follower evicts the smallest consumer session",
            vec![(c, 9, 10), (c, 3, 0), (f(1), 1, 0)],
            (f(2), 2),
            eviction,
            Some(1),
        ),
        (
            "a follower evicts a smaller follower session when no consumer holds one",
            vec![(f(1), 9, 10), (f(3), 3, 0)],
            (f(2), 5),
            eviction,
            Some(1),
        ),
        (
            "a follower does not evict a larger follower session",
            vec![(f(1), 9, 10), (f(3), 30, 0)],
            (f(2), 5),
            eviction,
            None,
        ),
    ];
    for (what, there, (owner, n), now, evicted) in table {
        let mut cache = SessionCache::new(limits(there.len()), 0);
        let ids: Vec<i32> = there
            .iter()
            .map(|(o, n, at)| open_session(&mut cache, *o, *n, *at))
            .collect();
        let wants: Vec<_> = (0..n).map(|p| (key(p), want(0), quiet(0))).collect();
        let id = cache.create(owner, false, &wants, now);
        match evicted {
            Some(i) => {
                assert_ne!(id, 0, "{what}: a session");
                assert_eq!(cache.evictions(), 1, "{what}");
                for (j, old) in ids.iter().enumerate() {
                    let r = req(*old, 1, there[j].0, &[], &[]);
                    let gone = cache.open(&r, now)
                        == Opened::Refused(ResponseError::FetchSessionIdNotFound);
                    assert_eq!(gone, i == j, "{what}: session {j}");
                }
            }
            None => {
                assert_eq!(id, 0, "{what}: no session");
                assert_eq!(cache.len(), there.len(), "{what}");
            }
        }
    }
    let mut none = SessionCache::new(limits(0), 0);
    assert_eq!(open_session(&mut none, Owner::Follower(1), 1, 0), 0);
}

#[test]
fn ids_skip_zero_and_ids_in_use() {
    let mut cache = SessionCache::new(limits(10), i32::MAX - 1);
    let a = open_session(&mut cache, Owner::Consumer, 1, 0);
    let b = open_session(&mut cache, Owner::Consumer, 1, 0);
    assert_eq!((a, b), (i32::MAX, 1));
    assert_eq!(next_epoch(i32::MAX), 1);
    assert_eq!(next_epoch(5), 6);
}
