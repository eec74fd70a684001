//! Fetch: consumers read `[offset, HW)` straight out of the segments (zero-copy `Bytes`
//! over the mmap, sent with `write_vectored`), long-polling on the partitions' high
//! watermarks until `min_bytes` are there or `max_wait_ms` passes.
//!
//! A follower's fetch (replica id >= 0) is validated against the leader's
//! epochs first (fenced / unknown epoch, diverging history → `DivergingEpoch`, out of
//! range); an accepted one records the follower's position, which moves the HW and may
//! propose an ISR change, and reads up to the leader's log end.
//!
//! Fetch sessions (KIP-227, v7+): a full fetch with epoch 0 opens one; an incremental fetch
//! reads every partition its session holds and answers only those with something new
//! (`crate::fetch_session` holds the rules). An idle partition then costs a fetcher nothing
//! on the wire, and the leader one look at its log end.

use super::{Ctx, Reply};
use crate::clock::now_ms;
use crate::error::storage_error_code;
use crate::fetch_session::{
    self as session, Answered, Opened, Owner, PartitionKey, TopicKey, Want,
};
use crate::metrics as m;
use crate::partition::registry::{leading, Topic, Topics};
use crate::partition::wakeups::{self, Moved};
use crate::partition::Replica;
use crate::replication::{
    is_stale_broker_epoch, validate_follower_fetch, FetchPartitionRequestView, FetchValidation,
};
use bytes::Bytes;
use kafka_protocol::messages::fetch_request::{FetchRequest, FetchTopic};
use kafka_protocol::messages::fetch_response::{
    EpochEndOffset as EpochEndOffsetWire, FetchResponse, FetchableTopicResponse, PartitionData,
};
use kafka_protocol::messages::TopicName;
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

struct Wanted {
    key: TopicKey,
    found: Option<Arc<Topic>>,
    /// For the answer: the name (before v13) or the id (v13+).
    topic: TopicName,
    topic_id: uuid::Uuid,
    /// Set when the request named a topic id this broker does not know (v13+).
    unknown_id: bool,
    partitions: Vec<Part>,
}

struct Part {
    index: i32,
    offset: i64,
    max_bytes: usize,
    current_leader_epoch: i32,
    last_fetched_epoch: i32,
    replica: Option<Arc<Replica>>,
    want: Want,
}

/// Who is fetching.
#[derive(Clone, Copy)]
enum Reader {
    Consumer,
    /// A follower broker; `stale` when its broker epoch is not the registered one.
    Follower {
        id: i32,
        stale: bool,
    },
}

pub(crate) fn handle(ctx: Ctx, req: FetchRequest) -> Reply {
    let by_id = ctx.version >= 13;
    let follower = if ctx.version >= 15 {
        req.replica_state.replica_id.0
    } else {
        req.replica_id.0
    };
    let reader = match &ctx.shared.broker {
        rt if follower >= 0 => {
            let registered = rt.image().broker(follower).map(|b| b.epoch);
            let epoch = if ctx.version >= 15 {
                req.replica_state.replica_epoch
            } else {
                -1
            };
            Reader::Follower {
                id: follower,
                stale: is_stale_broker_epoch(epoch, registered),
            }
        }
        _ => Reader::Consumer,
    };
    let owner = match reader {
        Reader::Consumer => Owner::Consumer,
        Reader::Follower { id, .. } => Owner::Follower(id),
    };
    let named = named_partitions(&req.topics, by_id);
    let forgotten: Vec<PartitionKey> = req
        .forgotten_topics_data
        .iter()
        .flat_map(|t| {
            let topic = topic_key(&t.topic, t.topic_id, by_id);
            t.partitions.iter().map(move |p| (topic.clone(), *p))
        })
        .collect();
    // Fetch v7 brought sessions; older requests are full and sessionless.
    let opened = if ctx.version >= 7 {
        ctx.shared.fetch_sessions().open(
            &session::Request {
                session_id: req.session_id,
                epoch: req.session_epoch,
                owner,
                by_id,
                wants: &named,
                forgotten: &forgotten,
            },
            now_ms(),
        )
    } else {
        Opened::Sessionless
    };
    let (kind, session) = match opened {
        Opened::Sessionless => ("full", Session::None),
        Opened::Full => ("full", Session::Opening),
        Opened::Incremental { id, shape, wants } => {
            ("incremental", Session::Continued { id, shape, wants })
        }
        Opened::Refused(e) => {
            metrics::counter!(m::FETCH_REQUESTS_TOTAL, "kind" => "refused").increment(1);
            return ctx.now(FetchResponse::default().with_error_code(e.code()));
        }
    };
    metrics::counter!(m::FETCH_REQUESTS_TOTAL, "kind" => kind).increment(1);
    let wanted = resolve(
        &ctx.shared.topics,
        match &session {
            Session::Continued { wants, .. } => wants,
            _ => &named,
        },
    );
    if let Reader::Follower { id, stale: false } = reader {
        // The follower's position counts once per request, before anything is read; in a
        // session, for every partition the session holds.
        record_follower_positions(&ctx, &wanted, id);
    }
    let max_bytes = usize::try_from(req.max_bytes).unwrap_or(0);
    let min_bytes = usize::try_from(req.min_bytes).unwrap_or(0);
    let max_wait = Duration::from_millis(u64::try_from(req.max_wait_ms).unwrap_or(0));
    Box::pin(async move {
        let deadline = tokio::time::Instant::now() + max_wait;
        let mut watches = Watches::new(&ctx.shared.topics, &wanted, reader);
        let answer = |ctx: &Ctx, response: FetchResponse, records: &[Bytes], bytes: usize| {
            metrics::counter!(m::FETCH_BYTES_TOTAL).increment(bytes as u64);
            let response = settle(ctx, &session, owner, by_id, &wanted, response);
            ctx.encode(&response, records)
        };
        loop {
            watches.mark_seen();
            let (response, records, bytes, errors) = read_all(&wanted, max_bytes, reader);
            let now = tokio::time::Instant::now();
            let stopping = ctx.shared.stop.is_cancelled();
            if bytes >= min_bytes || errors || now >= deadline || watches.is_empty() || stopping {
                return answer(&ctx, response, &records, bytes);
            }
            // Nothing (enough) yet: wait for any high watermark to move, or the deadline.
            // A stopping broker answers at once with what it has.
            let _waiting = m::Waiting::new(&m::FETCH_WAITING);
            let changed = async {
                tokio::select! {
                    _ = watches.any_changed() => {}
                    _ = ctx.shared.stop.cancelled() => {}
                }
            };
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                let (response, records, bytes, _) = read_all(&wanted, max_bytes, reader);
                return answer(&ctx, response, &records, bytes);
            }
        }
    })
}

/// Where a fetch stands with the session cache.
enum Session {
    /// Sessionless: the answer names every partition read, with session id 0.
    None,
    /// A full fetch opening a session once answered.
    Opening,
    /// An incremental fetch in session `id`, reading `wants` (every partition it holds, in
    /// the session's `shape`).
    Continued {
        id: i32,
        shape: u64,
        wants: Vec<(PartitionKey, Want)>,
    },
}

fn topic_key(name: &TopicName, id: uuid::Uuid, by_id: bool) -> TopicKey {
    if by_id {
        TopicKey::Id(id)
    } else {
        TopicKey::Name(Arc::from(&*name.0))
    }
}

/// The partitions a request names, in order.
fn named_partitions(topics: &[FetchTopic], by_id: bool) -> Vec<(PartitionKey, Want)> {
    topics
        .iter()
        .flat_map(|t| {
            let topic = topic_key(&t.topic, t.topic_id, by_id);
            t.partitions.iter().map(move |p| {
                let want = Want {
                    fetch_offset: p.fetch_offset,
                    max_bytes: p.partition_max_bytes,
                    current_leader_epoch: p.current_leader_epoch,
                    last_fetched_epoch: p.last_fetched_epoch,
                    log_start_offset: p.log_start_offset,
                };
                ((topic.clone(), p.partition), want)
            })
        })
        .collect()
}

/// Looks up the replicas of `wants`, grouping consecutive partitions of one topic (v13+
/// addresses topics by id only; older versions by name).
fn resolve(topics: &Topics, wants: &[(PartitionKey, Want)]) -> Vec<Wanted> {
    let mut wanted: Vec<Wanted> = Vec::new();
    for ((topic, partition), want) in wants {
        let same = wanted.last().is_some_and(|w| &w.key == topic);
        if !same {
            let (found, name, id) = match topic {
                TopicKey::Id(id) => (topics.get_by_id(*id), TopicName::default(), *id),
                TopicKey::Name(n) => (
                    topics.get(n),
                    TopicName(StrBytes::from_string(n.to_string())),
                    uuid::Uuid::nil(),
                ),
            };
            wanted.push(Wanted {
                unknown_id: matches!(topic, TopicKey::Id(_)) && found.is_none(),
                key: topic.clone(),
                found,
                topic: name,
                topic_id: id,
                partitions: Vec::new(),
            });
        }
        let w = wanted.last_mut().expect("pushed above");
        w.partitions.push(Part {
            index: *partition,
            offset: want.fetch_offset,
            max_bytes: usize::try_from(want.max_bytes).unwrap_or(0),
            current_leader_epoch: want.current_leader_epoch,
            last_fetched_epoch: want.last_fetched_epoch,
            replica: w.found.as_ref().and_then(|t| t.replica(*partition)),
            want: *want,
        });
    }
    wanted
}

/// Fits an answer to its session: a full fetch opening one learns its id; an incremental
/// one keeps only the partitions with something the fetcher has not seen.
fn settle(
    ctx: &Ctx,
    session: &Session,
    owner: Owner,
    by_id: bool,
    wanted: &[Wanted],
    mut response: FetchResponse,
) -> FetchResponse {
    let answered = || {
        wanted
            .iter()
            .zip(&response.responses)
            .flat_map(|(w, t)| {
                w.partitions
                    .iter()
                    .zip(&t.partitions)
                    .map(move |(p, d)| (w, p, d))
            })
            .map(|(w, p, d)| {
                let a = Answered {
                    high_watermark: d.high_watermark,
                    log_start_offset: d.log_start_offset,
                    news: d.records.as_ref().is_some_and(|r| !r.is_empty())
                        || d.diverging_epoch.epoch >= 0,
                    error: d.error_code != 0,
                };
                (w, p, a)
            })
    };
    match session {
        Session::None => {}
        Session::Opening => {
            let answered: Vec<_> = answered()
                .map(|(w, p, a)| ((w.key.clone(), p.index), p.want, a))
                .collect();
            response.session_id =
                ctx.shared
                    .fetch_sessions()
                    .create(owner, by_id, &answered, now_ms());
        }
        Session::Continued { id, shape, .. } => {
            let answered: Vec<Answered> = answered().map(|(_, _, a)| a).collect();
            let keep = ctx.shared.fetch_sessions().settle(*id, *shape, &answered);
            let mut keep = keep.into_iter();
            for t in &mut response.responses {
                t.partitions.retain(|_| keep.next().unwrap_or(true));
            }
            response.responses.retain(|t| !t.partitions.is_empty());
            response.session_id = *id;
        }
    }
    response
}

/// What a waiting fetch watches: consumers the high watermarks of its partitions, followers
/// their log ends. A fetch over a few partitions watches each; one over more than there are
/// shards (a session of thousands) watches the shards they fall in, so it registers at most
/// [`wakeups::SHARDS`] waiters instead of thousands.
enum Watches {
    Partitions(Vec<watch::Receiver<i64>>),
    Shards(Vec<watch::Receiver<u64>>),
}

impl Watches {
    fn new(topics: &Topics, wanted: &[Wanted], reader: Reader) -> Self {
        let what = match reader {
            Reader::Consumer => Moved::HighWatermark,
            Reader::Follower { .. } => Moved::LogEnd,
        };
        let replicas = wanted
            .iter()
            .flat_map(|w| w.partitions.iter())
            .filter_map(|p| p.replica.as_ref());
        if replicas.clone().count() <= wakeups::SHARDS {
            return Watches::Partitions(
                replicas
                    .map(|r| match what {
                        Moved::HighWatermark => r.subscribe_hw(),
                        Moved::LogEnd => r.subscribe_leo(),
                    })
                    .collect(),
            );
        }
        let mut shards = [false; wakeups::SHARDS];
        for r in replicas {
            shards[r.shard()] = true;
        }
        Watches::Shards(
            (0..wakeups::SHARDS)
                .filter(|&s| shards[s])
                .map(|s| topics.wakeups().subscribe(what, s))
                .collect(),
        )
    }

    fn is_empty(&self) -> bool {
        match self {
            Watches::Partitions(w) => w.is_empty(),
            Watches::Shards(w) => w.is_empty(),
        }
    }

    /// Marks what the watches show now as seen: only later moves wake [`Watches::any_changed`].
    fn mark_seen(&mut self) {
        match self {
            Watches::Partitions(w) => w.iter_mut().for_each(|w| {
                w.borrow_and_update();
            }),
            Watches::Shards(w) => w.iter_mut().for_each(|w| {
                w.borrow_and_update();
            }),
        }
    }

    /// Resolves when any watch sees a move (or its sender is gone).
    async fn any_changed(&mut self) {
        match self {
            Watches::Partitions(w) => any_changed(w).await,
            Watches::Shards(w) => any_changed(w).await,
        }
    }
}

async fn any_changed<T>(watches: &mut [watch::Receiver<T>]) {
    let changes = watches.iter_mut().map(|w| Box::pin(w.changed()));
    let _ = futures::future::select_all(changes).await;
}

/// Records a follower's fetch offsets on the partitions this broker leads; proposes the
/// ISR changes that follow from them.
fn record_follower_positions(ctx: &Ctx, wanted: &[Wanted], follower: i32) {
    let rt = &ctx.shared.broker;
    for w in wanted {
        for p in &w.partitions {
            let Ok(r) = leading(p.replica.as_ref()) else {
                continue;
            };
            let view = FetchPartitionRequestView {
                fetch_offset: p.offset,
                current_leader_epoch: p.current_leader_epoch,
                last_fetched_epoch: p.last_fetched_epoch,
            };
            let log = r.log();
            let valid = validate_follower_fetch(
                &view,
                r.leader_epoch(),
                log.as_ref(),
                log.log_end_offset(),
                log.log_start_offset(),
            );
            if valid == FetchValidation::Ok {
                if let Some(isr) = r.follower_fetched(follower, p.offset) {
                    rt.propose_isr(r.clone(), w.topic_id, isr);
                }
            }
        }
    }
}

/// Reads every wanted partition once. Returns the response, the record slices to send
/// by reference, the record byte count, and whether any partition has an answer that
/// must go out now (an error or a diverging epoch).
fn read_all(
    wanted: &[Wanted],
    max_bytes: usize,
    reader: Reader,
) -> (FetchResponse, Vec<Bytes>, usize, bool) {
    let mut total = 0usize;
    let mut slices = Vec::new();
    let mut errors = false;
    // Set once a partition's next batch did not fit in what was left of `max_bytes`: the
    // answer is full, and the partitions after it are answered without reading their logs
    // (a fetch over many partitions would otherwise read each of them only to drop the
    // batch). They keep their turn: a session moves answered partitions to its back.
    let mut full = false;
    let responses = wanted
        .iter()
        .map(|w| {
            let partitions = w
                .partitions
                .iter()
                .map(|p| {
                    let mut data = PartitionData::default()
                        .with_partition_index(p.index)
                        .with_high_watermark(-1)
                        .with_last_stable_offset(-1)
                        .with_log_start_offset(-1)
                        .with_records(Some(Bytes::new()));
                    let replica = match leading(p.replica.as_ref()) {
                        Ok(replica) => replica,
                        Err(e) => {
                            errors = true;
                            let code = match e {
                                ResponseError::UnknownTopicOrPartition if w.unknown_id => {
                                    ResponseError::UnknownTopicId
                                }
                                e => e,
                            };
                            return data.with_error_code(code.code());
                        }
                    };
                    let hw = match reader {
                        Reader::Consumer => match replica.consumer_high_watermark() {
                            Some(hw) => hw,
                            None => {
                                errors = true;
                                return data
                                    .with_error_code(ResponseError::OffsetNotAvailable.code());
                            }
                        },
                        Reader::Follower { .. } => replica.high_watermark(),
                    };
                    let log = replica.log();
                    data = data
                        .with_high_watermark(hw)
                        .with_last_stable_offset(hw)
                        .with_log_start_offset(log.log_start_offset());
                    // Consumers read below one HW snapshot; followers up to the log end.
                    let bound = match reader {
                        Reader::Consumer => hw,
                        Reader::Follower { stale: true, .. } => {
                            errors = true;
                            return data.with_error_code(ResponseError::NotLeaderOrFollower.code());
                        }
                        Reader::Follower { .. } => {
                            let view = FetchPartitionRequestView {
                                fetch_offset: p.offset,
                                current_leader_epoch: p.current_leader_epoch,
                                last_fetched_epoch: p.last_fetched_epoch,
                            };
                            let leo = log.log_end_offset();
                            let code = match validate_follower_fetch(
                                &view,
                                replica.leader_epoch(),
                                log.as_ref(),
                                leo,
                                log.log_start_offset(),
                            ) {
                                FetchValidation::Ok => None,
                                FetchValidation::FencedLeaderEpoch => {
                                    Some(ResponseError::FencedLeaderEpoch)
                                }
                                FetchValidation::UnknownLeaderEpoch => {
                                    Some(ResponseError::UnknownLeaderEpoch)
                                }
                                FetchValidation::OffsetOutOfRange => {
                                    Some(ResponseError::OffsetOutOfRange)
                                }
                                FetchValidation::Diverging(e) => {
                                    errors = true;
                                    return data.with_diverging_epoch(
                                        EpochEndOffsetWire::default()
                                            .with_epoch(e.epoch)
                                            .with_end_offset(e.end_offset),
                                    );
                                }
                            };
                            if let Some(code) = code {
                                errors = true;
                                return data.with_error_code(code.code());
                            }
                            leo
                        }
                    };
                    // KIP-74: the first batch of the first non-empty partition always
                    // goes, however large; after that, the caps hold.
                    let left = max_bytes.saturating_sub(total);
                    let budget = p.max_bytes.min(left);
                    if full || (budget == 0 && total > 0) {
                        return data;
                    }
                    // Caught up: nothing to read (the common case of an idle partition in
                    // a session, thousands of times per fetch).
                    if p.offset == bound && p.offset >= data.log_start_offset {
                        return data;
                    }
                    match log.read(p.offset, budget.max(1), bound) {
                        Ok(read) if total > 0 && read.records.len() > budget => {
                            full = read.records.len() > left;
                            data
                        }
                        Ok(read) => {
                            total += read.records.len();
                            if !read.records.is_empty() {
                                slices.push(read.records.clone());
                            }
                            data.with_records(Some(read.records))
                        }
                        Err(e) => {
                            errors = true;
                            data.with_error_code(storage_error_code(&e).code())
                        }
                    }
                })
                .collect();
            FetchableTopicResponse::default()
                .with_topic(w.topic.clone())
                .with_topic_id(w.topic_id)
                .with_partitions(partitions)
        })
        .collect();
    (
        FetchResponse::default().with_responses(responses),
        slices,
        total,
        errors,
    )
}
