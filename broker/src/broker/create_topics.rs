//! Topic creation as a broker does it: forwarded to the controller, then waited for until
//! this broker's metadata shows the new topics (used by CreateTopics, Metadata's
//! auto-creation and the group coordinator's offsets topic).

use super::controller_link::LinkError;
use super::BrokerRuntime;
use crate::controller::{MetadataImage, PartitionRecord};
use kafka_protocol::messages::create_topics_request::CreateTopicsRequest;
use kafka_protocol::messages::create_topics_response::CreateTopicsResponse;

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

/// The controller creates the topics; the answer waits (bounded) until this broker's
/// metadata shows every new partition with a leader and its replicas of them are open, so a
/// client that produces right after CreateTopics finds them instead of retrying on
/// UNKNOWN_TOPIC_OR_PARTITION; or until it has seen a new topic deleted again. (Other
/// brokers apply the same metadata at about the same time; a client that is faster gets a
/// retriable error.)
pub(crate) async fn create_and_settle(
    rt: &BrokerRuntime,
    req: &CreateTopicsRequest,
) -> Result<CreateTopicsResponse, LinkError> {
    // Nine tenths of the client's own deadline (1–30 s): with no active controller the
    // answer is a timeout that reaches the client before it gives up itself.
    let ms = u64::try_from(req.timeout_ms.clamp(1_000, 30_000)).unwrap_or(30_000);
    let timeout = std::time::Duration::from_millis(ms * 9 / 10);
    // Always v7, whatever the client speaks: its answer carries the new topics' ids, which
    // the wait below needs. Fields the client's version lacks are dropped when the answer is
    // encoded for it (they are all ignorable).
    let resp = rt
        .link
        .call("CreateTopics", req, FORWARD_VERSION, timeout)
        .await?;
    if !req.validate_only {
        let created: Vec<uuid::Uuid> = resp
            .topics
            .iter()
            .filter(|t| t.error_code == 0)
            .map(|t| t.topic_id)
            .collect();
        let settled = |image: &MetadataImage| {
            created_topics_settled(image, &created, |id| rt.metadata.was_removed(id))
        };
        // Every image the broker receives is applied and then announced on `applied`, so
        // waiting on that watch sees each new image too.
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
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::{MetadataRecord, NO_LEADER};
    use std::collections::BTreeMap;

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
