//! Broker errors, and the one place where internal errors become Kafka error codes.

use crate::config::ConfigError;
use kafka_protocol::ResponseError;
use keel_storage::StorageError;

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot listen on {addr} for {what}")]
    Bind {
        what: &'static str,
        addr: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("{context}")]
    Io {
        context: String,
        source: std::io::Error,
    },
    #[error("topic metadata {path}: {reason}")]
    TopicMetadata { path: String, reason: String },
    #[error("{path}: {reason}")]
    Upgrade { path: String, reason: String },
    #[error("broker stopped after a fatal error: {0}")]
    Fatal(String),
}

impl BrokerError {
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }
}

/// The Kafka error code a client gets for a storage failure of one partition.
pub fn storage_error_code(e: &StorageError) -> ResponseError {
    match e {
        StorageError::OffsetOutOfRange { .. } => ResponseError::OffsetOutOfRange,
        StorageError::CorruptBatch { .. } => ResponseError::CorruptMessage,
        StorageError::RecordTooLarge { .. } => ResponseError::MessageTooLarge,
        _ => ResponseError::KafkaStorageError,
    }
}

pub fn code(e: Option<ResponseError>) -> i16 {
    e.map_or(0, |e| e.code())
}
