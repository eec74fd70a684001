//! The one error type of the crate, and the mapping from Kafka error codes to names.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use kafka_protocol::ResponseError;

/// Every failure `keel-client` reports.
///
/// Cloneable because one failed produce request fails many deliveries.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientError {
    /// Connecting was refused by every bootstrap server.
    #[error("no broker at {addrs} — start one with `keel broker`")]
    NoBroker {
        /// The bootstrap servers tried, comma-separated.
        addrs: String,
    },
    /// A socket error on an established or opening connection.
    #[error("{addr}: {source}")]
    Io {
        /// The broker address.
        addr: String,
        /// The underlying error.
        #[source]
        source: Arc<std::io::Error>,
    },
    /// The TCP connect did not finish within `connect_timeout`.
    #[error("{addr}: connect timed out after {} ms", timeout.as_millis())]
    ConnectTimeout {
        /// The broker address.
        addr: String,
        /// The configured connect timeout.
        timeout: Duration,
    },
    /// The connection closed while a request was outstanding.
    #[error("{addr}: connection closed")]
    Disconnected {
        /// The broker address.
        addr: String,
    },
    /// No response arrived within the request timeout.
    #[error("{addr}: {api} request timed out after {} ms", timeout.as_millis())]
    RequestTimeout {
        /// The broker address.
        addr: String,
        /// The API name, e.g. `Produce`.
        api: &'static str,
        /// The timeout that expired.
        timeout: Duration,
    },
    /// A Kafka error code returned by a broker.
    #[error("{context}: {name} (kafka error {code})")]
    Kafka {
        /// The Kafka error code.
        code: i16,
        /// The Kafka name of the code, e.g. `NOT_LEADER_OR_FOLLOWER`.
        name: &'static str,
        /// What was being done, e.g. `produce to orders-3`, with the broker's message if any.
        context: String,
    },
    /// A frame or message could not be encoded or decoded.
    #[error("{context}: {message}")]
    Protocol {
        /// What was being encoded or decoded.
        context: String,
        /// What went wrong.
        message: String,
    },
    /// The broker supports no version of an API in the range this client speaks.
    #[error(
        "{addr}: broker supports {api} versions {broker_min}..={broker_max}, \
         keel-client needs one of {client_min}..={client_max}"
    )]
    UnsupportedVersion {
        /// The broker address.
        addr: String,
        /// The API name.
        api: &'static str,
        /// Lowest version the broker accepts (-1 when the API is absent).
        broker_min: i16,
        /// Highest version the broker accepts (-1 when the API is absent).
        broker_max: i16,
        /// Lowest version this client speaks.
        client_min: i16,
        /// Highest version this client speaks.
        client_max: i16,
    },
    /// A record is larger than `max_request_size`.
    #[error("record of {size} bytes exceeds max_request_size {max} bytes")]
    RecordTooLarge {
        /// Estimated encoded size.
        size: usize,
        /// The configured limit.
        max: usize,
    },
    /// A configuration value or argument is invalid.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The producer was closed before the record was delivered.
    #[error("producer is closed")]
    Closed,
}

impl ClientError {
    /// A Kafka error for `code` (must be non-zero) with context.
    pub fn kafka(code: i16, context: impl Into<String>) -> Self {
        ClientError::Kafka {
            code,
            name: kafka_error_name(code),
            context: context.into(),
        }
    }

    /// Like [`ClientError::kafka`], appending the broker's error message to the context.
    pub fn kafka_with_message(
        code: i16,
        context: impl Into<String>,
        message: Option<&str>,
    ) -> Self {
        let mut context = context.into();
        if let Some(m) = message.filter(|m| !m.is_empty()) {
            context = format!("{context} ({m})");
        }
        Self::kafka(code, context)
    }

    pub(crate) fn io(addr: &str, source: std::io::Error) -> Self {
        ClientError::Io {
            addr: addr.to_owned(),
            source: Arc::new(source),
        }
    }

    pub(crate) fn protocol(context: impl Into<String>, message: impl ToString) -> Self {
        ClientError::Protocol {
            context: context.into(),
            message: message.to_string(),
        }
    }

    /// The Kafka error code, if this error came from a broker.
    pub fn kafka_code(&self) -> Option<i16> {
        match self {
            ClientError::Kafka { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// Whether retrying (after a metadata refresh and a backoff) may succeed.
    ///
    /// Network failures and timeouts are retriable. Kafka codes follow the protocol's
    /// retriable flag, except `CORRUPT_MESSAGE`: re-sending the same bytes cannot fix it.
    pub fn is_retriable(&self) -> bool {
        match self {
            ClientError::Io { .. }
            | ClientError::ConnectTimeout { .. }
            | ClientError::Disconnected { .. }
            | ClientError::RequestTimeout { .. }
            | ClientError::NoBroker { .. } => true,
            ClientError::Kafka { code, .. } => is_retriable_code(*code),
            _ => false,
        }
    }
}

/// Whether a Kafka error code is worth retrying.
pub(crate) fn is_retriable_code(code: i16) -> bool {
    match ResponseError::try_from_code(code) {
        None => false,
        Some(ResponseError::CorruptMessage) => false,
        Some(e) => e.is_retriable(),
    }
}

/// The Kafka name of an error code, e.g. 6 → `NOT_LEADER_OR_FOLLOWER`.
///
/// Names come from `kafka_protocol::ResponseError` (CamelCase) converted to Kafka's
/// UPPER_SNAKE spelling; each distinct known code is converted once and cached.
pub fn kafka_error_name(code: i16) -> &'static str {
    static NAMES: OnceLock<Mutex<HashMap<i16, &'static str>>> = OnceLock::new();
    let err = match ResponseError::try_from_code(code) {
        None => return "NONE",
        Some(ResponseError::Unknown(_)) => return "UNKNOWN_ERROR_CODE",
        Some(e) => e,
    };
    let mut names = NAMES
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    // Bounded leak: one string per named Kafka error code (about 130).
    names
        .entry(code)
        .or_insert_with(|| Box::leak(upper_snake(&err.to_string()).into_boxed_str()))
}

fn upper_snake(camel: &str) -> String {
    let mut out = String::with_capacity(camel.len() + 8);
    for (i, c) in camel.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_match_kafka_spelling() {
        let cases = [
            (6, "NOT_LEADER_OR_FOLLOWER"),
            (3, "UNKNOWN_TOPIC_OR_PARTITION"),
            (36, "TOPIC_ALREADY_EXISTS"),
            (1, "OFFSET_OUT_OF_RANGE"),
            (-1, "UNKNOWN_SERVER_ERROR"),
            (17, "INVALID_TOPIC_EXCEPTION"),
            (0, "NONE"),
            (30000, "UNKNOWN_ERROR_CODE"),
        ];
        for (code, name) in cases {
            assert_eq!(kafka_error_name(code), name, "code {code}");
        }
    }

    #[test]
    fn retriable_classification() {
        let cases = [
            (6, true),   // NOT_LEADER_OR_FOLLOWER
            (5, true),   // LEADER_NOT_AVAILABLE
            (3, true),   // UNKNOWN_TOPIC_OR_PARTITION
            (7, true),   // REQUEST_TIMED_OUT
            (19, true),  // NOT_ENOUGH_REPLICAS
            (2, false),  // CORRUPT_MESSAGE
            (10, false), // MESSAGE_TOO_LARGE
            (1, false),  // OFFSET_OUT_OF_RANGE
            (36, false), // TOPIC_ALREADY_EXISTS
        ];
        for (code, retriable) in cases {
            assert_eq!(
                ClientError::kafka(code, "t").is_retriable(),
                retriable,
                "code {code}"
            );
        }
    }

    #[test]
    fn messages_are_lowercase_with_context() {
        let e = ClientError::NoBroker {
            addrs: "127.0.0.1:9092".into(),
        };
        assert_eq!(
            e.to_string(),
            "no broker at 127.0.0.1:9092 — start one with `keel broker`"
        );
        let e = ClientError::kafka_with_message(36, "create topic orders", Some("exists"));
        assert_eq!(
            e.to_string(),
            "create topic orders (exists): TOPIC_ALREADY_EXISTS (kafka error 36)"
        );
    }
}
