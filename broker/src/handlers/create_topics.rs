//! CreateTopics: validates each topic (name, partitions, replication factor, configs),
//! then creates its partition logs, unless `validate_only`.

use super::{Ctx, Reply};
use crate::controller::{MetadataImage, PartitionRecord};
use crate::topics::CreateError;
use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreateTopicsRequest};
use kafka_protocol::messages::create_topics_response::{
    CreatableTopicResult, CreateTopicsResponse,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;
use std::collections::{BTreeMap, HashSet};

pub fn handle(ctx: &Ctx, req: CreateTopicsRequest) -> Reply {
    if let Some(rt) = ctx.shared.cluster.clone() {
        return forward(ctx.clone(), rt, req);
    }
    let mut seen = HashSet::new();
    let duplicates: HashSet<_> = req
        .topics
        .iter()
        .filter(|t| !seen.insert(t.name.0.clone()))
        .map(|t| t.name.0.clone())
        .collect();
    let results = req
        .topics
        .into_iter()
        .map(|t| {
            let name = t.name.clone();
            let result = CreatableTopicResult::default().with_name(name.clone());
            if duplicates.contains(&name.0) {
                return fail(
                    result,
                    ResponseError::InvalidRequest,
                    "topic named twice in one request",
                );
            }
            match create_one(ctx, t, req.validate_only) {
                Ok((id, partitions, rf)) => result
                    .with_topic_id(id)
                    .with_num_partitions(partitions)
                    .with_replication_factor(rf),
                Err((code, message)) => fail(result, code, &message),
            }
        })
        .collect();
    ctx.now(CreateTopicsResponse::default().with_topics(results))
}

fn fail(r: CreatableTopicResult, code: ResponseError, message: &str) -> CreatableTopicResult {
    r.with_error_code(code.code())
        .with_error_message(Some(StrBytes::from_string(message.to_string())))
        .with_num_partitions(-1)
        .with_replication_factor(-1)
}

type Created = (uuid::Uuid, i32, i16);

fn create_one(
    ctx: &Ctx,
    t: CreatableTopic,
    validate_only: bool,
) -> Result<Created, (ResponseError, String)> {
    let config = &ctx.shared.config;
    let node = config.node_id;
    let (partitions, rf) = if t.assignments.is_empty() {
        let p = if t.num_partitions == -1 {
            config.num_partitions
        } else {
            t.num_partitions
        };
        let rf = if t.replication_factor == -1 {
            config.default_replication_factor
        } else {
            t.replication_factor
        };
        (p, rf)
    } else {
        if t.num_partitions != -1 || t.replication_factor != -1 {
            return Err((
                ResponseError::InvalidRequest,
                "give either assignments or partitions and replication factor".into(),
            ));
        }
        for (i, a) in t.assignments.iter().enumerate() {
            if a.partition_index != i as i32 || a.broker_ids.iter().map(|b| b.0).ne([node]) {
                return Err((
                    ResponseError::InvalidReplicaAssignment,
                    format!(
                        "partition {} must be assigned to broker {node} alone",
                        a.partition_index
                    ),
                ));
            }
        }
        (t.assignments.len() as i32, 1)
    };
    let mut configs = BTreeMap::new();
    for c in &t.configs {
        let Some(value) = &c.value else {
            return Err((
                ResponseError::InvalidConfig,
                format!("config {} has no value", c.name),
            ));
        };
        configs.insert(c.name.to_string(), value.to_string());
    }
    let topics = &ctx.shared.topics;
    let outcome = if validate_only {
        topics
            .validate_new(&t.name, partitions, rf, &configs)
            .map(|()| uuid::Uuid::nil())
    } else {
        topics
            .create(&t.name, partitions, rf, configs)
            .map(|topic| topic.meta.id)
    };
    outcome.map(|id| (id, partitions, rf)).map_err(|e| {
        let code = match &e {
            CreateError::Exists(_) => ResponseError::TopicAlreadyExists,
            CreateError::InvalidName { .. } => ResponseError::InvalidTopicException,
            CreateError::InvalidPartitions(_) => ResponseError::InvalidPartitions,
            CreateError::InvalidReplicationFactor { .. } => ResponseError::InvalidReplicationFactor,
            CreateError::InvalidConfig(_) => ResponseError::InvalidConfig,
            CreateError::Broker(_) => ResponseError::KafkaStorageError,
        };
        if code == ResponseError::KafkaStorageError {
            tracing::error!(topic = %t.name.0, error = %e, "creating topic failed");
        }
        (code, e.to_string())
    })
}

/// The CreateTopics version a broker forwards with: the first one with topic ids.
const FORWARD_VERSION: i16 = 7;

/// Whether this broker's metadata has settled the topics a forwarded CreateTopics created
/// (by id): each either has a leader for every partition, or was removed again (a delete
/// racing the create: there is nothing left to wait for). A topic of the same name but
/// another id is neither: it is the previous incarnation, not deleted yet here.
fn created_topics_settled(
    image: &MetadataImage,
    created: &[uuid::Uuid],
    was_removed: impl Fn(uuid::Uuid) -> bool,
) -> bool {
    created.iter().all(|&id| {
        was_removed(id)
            || image
                .topic_by_id(id)
                .is_some_and(|t| t.partitions.iter().all(PartitionRecord::has_leader))
    })
}

/// How long a forwarded CreateTopics waits for this broker's metadata to settle.
const SETTLE_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Cluster mode: the controller creates the topic; the answer waits (bounded) until this
/// broker's metadata shows every new partition with a leader and its replicas of them are
/// open, so a client that produces right after CreateTopics finds them instead of retrying
/// on UNKNOWN_TOPIC_OR_PARTITION; or until it has seen the new topic deleted again. (Other brokers apply the same metadata at about the same
/// time; a client that is faster gets a retriable error.)
fn forward(
    ctx: Ctx,
    rt: std::sync::Arc<crate::cluster::broker_runtime::ClusterBroker>,
    req: CreateTopicsRequest,
) -> Reply {
    Box::pin(async move {
        let timeout = std::time::Duration::from_secs(30);
        // Always v7, whatever the client speaks: its answer carries the new topics' ids,
        // which the wait below needs. Fields the client's version lacks are dropped when the
        // answer is encoded for it (they are all ignorable).
        let sent = match rt.controller().await {
            Ok(c) => c.send_version(&req, FORWARD_VERSION, timeout).await,
            Err(e) => Err(e),
        };
        let resp: CreateTopicsResponse = match sent {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "forwarding CreateTopics to the controller failed");
                return super::CLOSE;
            }
        };
        if !req.validate_only {
            let created: Vec<uuid::Uuid> = resp
                .topics
                .iter()
                .filter(|t| t.error_code == 0)
                .map(|t| t.topic_id)
                .collect();
            let settled = |image: &MetadataImage| {
                created_topics_settled(image, &created, |id| rt.was_removed(id))
            };
            // Every image the broker receives is applied and then announced on `applied`,
            // so waiting on that watch sees each new image too.
            let mut applied = rt.applied();
            let wait = async {
                loop {
                    let image = rt.image();
                    if settled(&image) && *applied.borrow_and_update() >= image.offset() {
                        return;
                    }
                    if applied.changed().await.is_err() {
                        return;
                    }
                }
            };
            if tokio::time::timeout(SETTLE_WAIT, wait).await.is_err() {
                tracing::warn!(ids = ?created, "created topics not settled in this broker's metadata in time");
                metrics::counter!(crate::metrics::CREATE_TOPICS_UNSETTLED_TOTAL).increment(1);
            }
        }
        ctx.encode(&resp, &[])
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::{MetadataRecord, NO_LEADER};

    fn topic(name: &str, id: uuid::Uuid) -> MetadataRecord {
        MetadataRecord::Topic {
            name: name.into(),
            id,
            configs: BTreeMap::new(),
        }
    }

    /// Partition 0 of topic "t".
    fn partition(leader: i32) -> MetadataRecord {
        MetadataRecord::Partition(PartitionRecord::test_record(leader, 0, &[1, 2, 3]))
    }

    #[test]
    fn created_topics_settle_when_led_or_deleted_again() {
        let (old, new) = (uuid::Uuid::from_u128(1), uuid::Uuid::from_u128(2));
        // (records applied, ids the broker saw removed, settled?)
        let table: Vec<(Vec<MetadataRecord>, Vec<uuid::Uuid>, bool)> = vec![
            // Not seen yet.
            (vec![], vec![], false),
            // Created, partition not led yet.
            (vec![topic("t", new), partition(NO_LEADER)], vec![], false),
            // Created and led.
            (vec![topic("t", new), partition(1)], vec![], true),
            // The previous topic of that name is still here: not ours.
            (vec![topic("t", old), partition(1)], vec![], false),
            // Created and deleted again before this broker looked.
            (vec![], vec![new], true),
            // Deleted and its name reused by someone else since.
            (vec![topic("t", old), partition(1)], vec![new], true),
        ];
        for (i, (records, removed, want)) in table.into_iter().enumerate() {
            let mut image = MetadataImage::new();
            for (offset, r) in records.iter().enumerate() {
                image.apply(offset as i64, r);
            }
            let got = created_topics_settled(&image, &[new], |id| removed.contains(&id));
            assert_eq!(got, want, "row {i}");
        }
    }
}
