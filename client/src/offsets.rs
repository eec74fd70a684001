//! Offsets as a reader names them ([`Offset`]), and resolving them with ListOffsets at each
//! partition's leader: shared by the consumer (assign, seek) and the admin client.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::{BrokerId, ListOffsetsRequest, TopicName};
use kafka_protocol::protocol::StrBytes;
use tracing::debug;

use crate::cluster::Cluster;
use crate::error::ClientError;

/// Pause before retrying a ListOffsets that failed retriably.
const RETRY_BACKOFF: Duration = Duration::from_millis(100);

/// Where to start (or seek) reading a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offset {
    /// The log start offset.
    Earliest,
    /// The log end offset: only records produced from now on.
    Latest,
    /// This exact offset.
    At(i64),
    /// The first offset whose timestamp is at or after this one (ms); the log end if none.
    Timestamp(i64),
}

/// Resolves `spec` for `partitions` of `topic` with ListOffsets to each leader, retrying
/// retriable errors after a metadata refresh. `Timestamp(t)` with no record at or after `t`
/// resolves to the log end.
pub(crate) async fn resolve_offsets(
    cluster: &Cluster,
    topic: &str,
    partitions: &[i32],
    spec: Offset,
    isolation_level: i8,
) -> Result<HashMap<i32, i64>, ClientError> {
    let timestamp = match spec {
        Offset::At(n) => return Ok(partitions.iter().map(|&p| (p, n)).collect()),
        Offset::Earliest => -2,
        Offset::Latest => -1,
        Offset::Timestamp(t) => t,
    };
    let mut out =
        list_offsets_with_retry(cluster, topic, partitions, timestamp, isolation_level).await?;
    let past_end: Vec<i32> = out
        .iter()
        .filter(|(_, &o)| o < 0)
        .map(|(&p, _)| p)
        .collect();
    if !past_end.is_empty() {
        out.extend(list_offsets_with_retry(cluster, topic, &past_end, -1, isolation_level).await?);
    }
    Ok(out)
}

async fn list_offsets_with_retry(
    cluster: &Cluster,
    topic: &str,
    partitions: &[i32],
    timestamp: i64,
    isolation_level: i8,
) -> Result<HashMap<i32, i64>, ClientError> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        match list_offsets_once(cluster, topic, partitions, timestamp, isolation_level).await {
            Ok(offsets) => return Ok(offsets),
            Err(e) if e.is_retriable() && attempt < 5 => {
                debug!(topic, attempt, error = %e, "list offsets retry");
                tokio::time::sleep(RETRY_BACKOFF).await;
                cluster.refresh(Some(&[topic.to_owned()])).await?;
            }
            Err(e) => return Err(e),
        }
    }
}

async fn list_offsets_once(
    cluster: &Cluster,
    topic: &str,
    partitions: &[i32],
    timestamp: i64,
    isolation_level: i8,
) -> Result<HashMap<i32, i64>, ClientError> {
    let meta = cluster.topic_metadata(topic).await?;
    let mut by_leader: BTreeMap<i32, Vec<i32>> = BTreeMap::new();
    for &p in partitions {
        if !meta.partitions.iter().any(|i| i.partition == p) {
            return Err(ClientError::kafka(
                3,
                format!("topic {topic} has no partition {p}"),
            ));
        }
        let leader = meta
            .leader(p)
            .ok_or_else(|| ClientError::kafka(5, format!("list offsets of {topic}-{p}")))?;
        by_leader.entry(leader).or_default().push(p);
    }
    let mut out = HashMap::new();
    for (leader, parts) in by_leader {
        let conn = cluster.connection(leader).await?;
        let version = conn.version::<ListOffsetsRequest>()?;
        let mut req = ListOffsetsRequest::default();
        req.replica_id = BrokerId(-1);
        if version >= 2 {
            req.isolation_level = isolation_level;
        }
        let mut t = ListOffsetsTopic::default();
        t.name = TopicName(StrBytes::from_string(topic.to_owned()));
        t.partitions = parts
            .iter()
            .map(|&p| {
                let mut lp = ListOffsetsPartition::default();
                lp.partition_index = p;
                lp.timestamp = timestamp;
                lp
            })
            .collect();
        req.topics = vec![t];
        let resp = conn.send(&req).await?;
        for p in resp.topics.iter().flat_map(|t| t.partitions.iter()) {
            if p.error_code != 0 {
                return Err(ClientError::kafka(
                    p.error_code,
                    format!("list offsets of {topic}-{}", p.partition_index),
                ));
            }
            out.insert(p.partition_index, p.offset);
        }
    }
    Ok(out)
}
