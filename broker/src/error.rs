//! Broker errors, and the one place where internal errors become Kafka error codes.

use crate::config::ConfigError;
use kafka_protocol::ResponseError;
use keel_storage::producer_state::ProducerError;
use keel_storage::StorageError;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

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
pub(crate) fn storage_error_code(e: &StorageError) -> ResponseError {
    match e {
        StorageError::OffsetOutOfRange { .. } => ResponseError::OffsetOutOfRange,
        StorageError::CorruptBatch { .. } => ResponseError::CorruptMessage,
        StorageError::RecordTooLarge { .. } => ResponseError::MessageTooLarge,
        StorageError::Producer(ProducerError::OutOfOrder { .. }) => {
            ResponseError::OutOfOrderSequenceNumber
        }
        StorageError::Producer(ProducerError::InvalidEpoch { .. }) => {
            ResponseError::InvalidProducerEpoch
        }
        _ => ResponseError::KafkaStorageError,
    }
}

/// Raised by any task that hits an error the broker cannot survive (an fsync failure:
/// after one, the kernel may have dropped dirty pages, so nobody knows what is on disk).
#[derive(Clone, Default)]
pub(crate) struct FatalSignal {
    token: CancellationToken,
    reason: Arc<std::sync::Mutex<Option<String>>>,
}

impl FatalSignal {
    pub(crate) fn raise(&self, reason: String) {
        tracing::error!(%reason, "fatal error, stopping the broker");
        self.reason
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_or_insert(reason);
        self.token.cancel();
    }

    pub(crate) async fn raised(&self) -> String {
        self.token.cancelled().await;
        self.reason
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .unwrap_or_default()
    }
}
