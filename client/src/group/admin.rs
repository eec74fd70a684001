//! Group administration through [`Admin`], like `kafka-consumer-groups`: list the groups of
//! every broker, describe one (state, members, assignments), read and set its committed
//! offsets, delete it.

use std::collections::BTreeMap;

use kafka_protocol::messages::delete_groups_request::DeleteGroupsRequest;
use kafka_protocol::messages::describe_groups_request::DescribeGroupsRequest;
use kafka_protocol::messages::list_groups_request::ListGroupsRequest;
use kafka_protocol::messages::offset_commit_request::OffsetCommitRequest;
use kafka_protocol::messages::offset_fetch_request::OffsetFetchRequest;
use kafka_protocol::messages::GroupId;
use kafka_protocol::protocol::StrBytes;

use super::assignor;
use super::member::{commit_topics, find_coordinator};
use crate::admin::Admin;
use crate::cluster::Cluster;
use crate::connection::Connection;
use crate::error::ClientError;
use std::future::Future;
use std::sync::Arc;

/// A group as ListGroups shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupListing {
    pub group_id: String,
    pub protocol_type: String,
    pub state: String,
}

/// A group as DescribeGroups shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupDescription {
    pub group_id: String,
    /// `Empty`, `PreparingRebalance`, `CompletingRebalance`, `Stable` or `Dead`.
    pub state: String,
    pub protocol_type: String,
    /// The assignor in use (`range`, …); empty when the group has no members.
    pub protocol: String,
    /// The coordinator's `host:port`.
    pub coordinator: String,
    pub members: Vec<MemberDescription>,
}

/// One member of a described group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberDescription {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    /// Its partitions (consumer groups in the Stable state; empty otherwise).
    pub assignment: Vec<(String, i32)>,
}

fn s(v: &str) -> StrBytes {
    StrBytes::from_string(v.to_string())
}

/// Whether the group's coordinator is loading, moving or not there yet: ask again (after
/// finding it again), as the Java admin client does.
fn coordinator_moving(e: &ClientError) -> bool {
    use kafka_protocol::ResponseError as E;
    matches!(e, ClientError::Kafka { code, .. } if [
        E::CoordinatorLoadInProgress.code(),
        E::CoordinatorNotAvailable.code(),
        E::NotCoordinator.code(),
    ].contains(code))
}

/// Runs `call` on a connection to `group`'s coordinator; while the coordinator is loading
/// or has moved ([`coordinator_moving`]), finds it again and retries, within the client's
/// request timeout.
async fn at_coordinator<T, F, Fut>(
    cluster: &Cluster,
    group: &str,
    mut call: F,
) -> Result<T, ClientError>
where
    F: FnMut(String, Arc<Connection>) -> Fut,
    Fut: Future<Output = Result<T, ClientError>>,
{
    let deadline = tokio::time::Instant::now() + cluster.config().request_timeout;
    loop {
        let attempt = async {
            let addr = find_coordinator(cluster, group).await?;
            let conn = cluster.connection_to_addr(&addr).await?;
            call(addr, conn).await
        }
        .await;
        match attempt {
            Err(e) if coordinator_moving(&e) && tokio::time::Instant::now() < deadline => {
                tracing::debug!(group, error = %e, "the coordinator is loading or moved; again");
                tokio::time::sleep(COORDINATOR_BACKOFF).await;
            }
            other => return other,
        }
    }
}

const COORDINATOR_BACKOFF: std::time::Duration = std::time::Duration::from_millis(100);

fn check(code: i16, context: &str) -> Result<(), ClientError> {
    if code == 0 {
        Ok(())
    } else {
        Err(ClientError::kafka(code, context.to_string()))
    }
}

impl Admin {
    /// The `host:port` of `group`'s coordinator (FindCoordinator; the first call may have
    /// the cluster create its offsets topic).
    pub async fn group_coordinator(&self, group: &str) -> Result<String, ClientError> {
        find_coordinator(self.cluster(), group).await
    }

    /// Every group of the cluster (ListGroups to each broker, which lists the groups it
    /// coordinates), sorted by id.
    pub async fn list_groups(&self) -> Result<Vec<GroupListing>, ClientError> {
        let cluster = self.cluster();
        cluster.refresh(Some(&[])).await?;
        let mut out = Vec::new();
        for b in cluster.brokers() {
            let conn = cluster.connection(b.node_id).await?;
            let resp = conn.send(&ListGroupsRequest::default()).await?;
            check(
                resp.error_code,
                &format!("list groups on broker {}", b.node_id),
            )?;
            out.extend(resp.groups.into_iter().map(|g| GroupListing {
                group_id: g.group_id.0.to_string(),
                protocol_type: g.protocol_type.to_string(),
                state: g.group_state.to_string(),
            }));
        }
        out.sort_by(|a, b| a.group_id.cmp(&b.group_id));
        Ok(out)
    }

    /// One group's state and members. A group that does not exist is `Dead` with no members.
    pub async fn describe_group(&self, group: &str) -> Result<GroupDescription, ClientError> {
        let (coordinator, g) = at_coordinator(self.cluster(), group, |addr, conn| async move {
            let req = DescribeGroupsRequest::default().with_groups(vec![GroupId(s(group))]);
            let resp = conn.send(&req).await?;
            let g =
                resp.groups.into_iter().next().ok_or_else(|| {
                    ClientError::protocol("describe group", "no group in the answer")
                })?;
            if g.error_code != kafka_protocol::ResponseError::GroupIdNotFound.code() {
                check(g.error_code, &format!("describe group {group}"))?;
            }
            Ok((addr, g))
        })
        .await?;
        let consumer = g.protocol_type.as_str() == "consumer";
        Ok(GroupDescription {
            group_id: group.to_string(),
            state: if g.group_state.is_empty() {
                "Dead".to_string()
            } else {
                g.group_state.to_string()
            },
            protocol_type: g.protocol_type.to_string(),
            protocol: g.protocol_data.to_string(),
            coordinator,
            members: g
                .members
                .into_iter()
                .map(|m| MemberDescription {
                    member_id: m.member_id.to_string(),
                    instance_id: m.group_instance_id.map(|i| i.to_string()),
                    client_id: m.client_id.to_string(),
                    client_host: m.client_host.to_string(),
                    assignment: if consumer {
                        assignor::decode_assignment(m.member_assignment).unwrap_or_default()
                    } else {
                        Vec::new()
                    },
                })
                .collect(),
        })
    }

    /// The group's committed offsets: (topic, partition) → next offset to read.
    pub async fn group_offsets(
        &self,
        group: &str,
    ) -> Result<BTreeMap<(String, i32), i64>, ClientError> {
        let resp = at_coordinator(self.cluster(), group, |_, conn| async move {
            let req = OffsetFetchRequest::default()
                .with_group_id(GroupId(s(group)))
                .with_topics(None);
            let resp = conn.send(&req).await?;
            check(resp.error_code, &format!("offsets of group {group}"))?;
            Ok(resp)
        })
        .await?;
        let mut out = BTreeMap::new();
        for t in resp.topics {
            for p in t.partitions {
                check(p.error_code, &format!("offsets of group {group}"))?;
                if p.committed_offset >= 0 {
                    out.insert(
                        (t.name.0.to_string(), p.partition_index),
                        p.committed_offset,
                    );
                }
            }
        }
        Ok(out)
    }

    /// Sets the group's committed offsets (the group must have no members: the coordinator
    /// refuses a commit from outside a live generation).
    pub async fn set_group_offsets(
        &self,
        group: &str,
        offsets: &BTreeMap<(String, i32), i64>,
    ) -> Result<(), ClientError> {
        let offsets: Vec<((String, i32), i64)> =
            offsets.iter().map(|(k, o)| (k.clone(), *o)).collect();
        let offsets = &offsets;
        at_coordinator(self.cluster(), group, |_, conn| async move {
            let req = OffsetCommitRequest::default()
                .with_group_id(GroupId(s(group)))
                .with_generation_id_or_member_epoch(-1)
                .with_topics(commit_topics(offsets));
            let resp = conn.send(&req).await?;
            for t in resp.topics {
                for p in t.partitions {
                    check(
                        p.error_code,
                        &format!(
                            "set the offset of {}-{} in {group}",
                            t.name.0, p.partition_index
                        ),
                    )?;
                }
            }
            Ok(())
        })
        .await
    }

    /// Deletes an empty group and its committed offsets.
    pub async fn delete_group(&self, group: &str) -> Result<(), ClientError> {
        at_coordinator(self.cluster(), group, |_, conn| async move {
            let req = DeleteGroupsRequest::default().with_groups_names(vec![GroupId(s(group))]);
            let resp = conn.send(&req).await?;
            for r in resp.results {
                check(r.error_code, &format!("delete group {group}"))?;
            }
            Ok(())
        })
        .await
    }
}
