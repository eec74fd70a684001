//! Controller errors and their Kafka error codes.

use kafka_protocol::ResponseError;

/// Why the controller refused a command. Nothing was changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ControllerError {
    #[error("broker {id} is not registered")]
    BrokerIdNotRegistered { id: i32 },
    #[error("broker {id}: stale broker epoch {given} (current {current})")]
    StaleBrokerEpoch { id: i32, given: i64, current: i64 },
    #[error("invalid topic name `{name}`: {reason}")]
    InvalidTopicName { name: String, reason: String },
    #[error("topic `{0}` already exists")]
    TopicExists(String),
    #[error("unknown topic `{0}`")]
    UnknownTopic(String),
    #[error("unknown partition {topic}-{partition}")]
    UnknownTopicOrPartition { topic: String, partition: i32 },
    #[error("invalid partition count {0}")]
    InvalidPartitions(i32),
    #[error("replication factor {factor} is not between 1 and the {brokers} unfenced broker(s)")]
    InvalidReplicationFactor { factor: i16, brokers: usize },
    #[error("invalid config: {0}")]
    InvalidConfig(String),
    #[error("invalid replica assignment: {0}")]
    InvalidReplicaAssignment(String),
    #[error("{topic}-{partition}: leader epoch {given} of broker {broker} is fenced (current leader {leader}, epoch {current})")]
    FencedLeaderEpoch {
        topic: String,
        partition: i32,
        broker: i32,
        given: i32,
        leader: i32,
        current: i32,
    },
    #[error("{topic}-{partition}: leader epoch {given} is newer than the current {current}")]
    UnknownLeaderEpoch {
        topic: String,
        partition: i32,
        given: i32,
        current: i32,
    },
    #[error("{topic}-{partition}: partition epoch {given} is not the current {current}")]
    InvalidUpdateVersion {
        topic: String,
        partition: i32,
        given: i32,
        current: i32,
    },
    #[error("{topic}-{partition}: replica {replica} may not join the isr ({reason})")]
    IneligibleReplica {
        topic: String,
        partition: i32,
        replica: i32,
        reason: &'static str,
    },
    #[error("invalid request: {0}")]
    InvalidRequest(String),
}

impl ControllerError {
    /// The Kafka error code to answer with.
    pub(crate) fn code(&self) -> i16 {
        self.response_error().code()
    }

    pub(crate) fn response_error(&self) -> ResponseError {
        match self {
            Self::BrokerIdNotRegistered { .. } => ResponseError::BrokerIdNotRegistered,
            Self::StaleBrokerEpoch { .. } => ResponseError::StaleBrokerEpoch,
            Self::InvalidTopicName { .. } => ResponseError::InvalidTopicException,
            Self::TopicExists(_) => ResponseError::TopicAlreadyExists,
            Self::UnknownTopic(_) | Self::UnknownTopicOrPartition { .. } => {
                ResponseError::UnknownTopicOrPartition
            }
            Self::InvalidPartitions(_) => ResponseError::InvalidPartitions,
            Self::InvalidReplicationFactor { .. } => ResponseError::InvalidReplicationFactor,
            Self::InvalidConfig(_) => ResponseError::InvalidConfig,
            Self::InvalidReplicaAssignment(_) => ResponseError::InvalidReplicaAssignment,
            Self::FencedLeaderEpoch { .. } => ResponseError::FencedLeaderEpoch,
            Self::UnknownLeaderEpoch { .. } => ResponseError::UnknownLeaderEpoch,
            Self::InvalidUpdateVersion { .. } => ResponseError::InvalidUpdateVersion,
            Self::IneligibleReplica { .. } => ResponseError::IneligibleReplica,
            Self::InvalidRequest(_) => ResponseError::InvalidRequest,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_kafkas() {
        let t = || "t".to_string();
        let table: Vec<(ControllerError, i16)> = vec![
            (ControllerError::UnknownTopic(t()), 3),
            (
                ControllerError::InvalidTopicName {
                    name: t(),
                    reason: t(),
                },
                17,
            ),
            (ControllerError::TopicExists(t()), 36),
            (ControllerError::InvalidPartitions(0), 37),
            (
                ControllerError::InvalidReplicationFactor {
                    factor: 4,
                    brokers: 3,
                },
                38,
            ),
            (ControllerError::InvalidConfig(t()), 40),
            (ControllerError::InvalidRequest(t()), 42),
            (
                ControllerError::FencedLeaderEpoch {
                    topic: t(),
                    partition: 0,
                    broker: 1,
                    given: 1,
                    leader: 2,
                    current: 2,
                },
                74,
            ),
            (
                ControllerError::UnknownLeaderEpoch {
                    topic: t(),
                    partition: 0,
                    given: 3,
                    current: 2,
                },
                75,
            ),
            (
                ControllerError::StaleBrokerEpoch {
                    id: 1,
                    given: 1,
                    current: 2,
                },
                77,
            ),
            (
                ControllerError::InvalidUpdateVersion {
                    topic: t(),
                    partition: 0,
                    given: 1,
                    current: 2,
                },
                95,
            ),
            (ControllerError::BrokerIdNotRegistered { id: 1 }, 102),
            (
                ControllerError::IneligibleReplica {
                    topic: t(),
                    partition: 0,
                    replica: 3,
                    reason: "fenced",
                },
                107,
            ),
        ];
        for (e, code) in table {
            assert_eq!(e.code(), code, "{e}");
        }
    }
}
