//! Reaching the cluster, and turning failures into sentences a person can act on.

use std::error::Error;

use anyhow::{anyhow, bail, Context as _};
use keel_client::{Admin, ClientConfig, ClientError, TopicDescription};

use crate::args::Bootstrap;

/// The client configuration for `bootstrap`.
pub fn client_config(bootstrap: &Bootstrap) -> ClientConfig {
    ClientConfig::new(&bootstrap.to_config_string())
}

/// An admin client for the cluster behind `bootstrap`.
pub async fn admin(bootstrap: &Bootstrap) -> anyhow::Result<Admin> {
    Admin::new(client_config(bootstrap))
        .await
        .with_context(|| format!("cannot connect to {bootstrap}"))
}

/// When no broker listens at any bootstrap server, that is the whole story:
/// drop the surrounding context so the user reads just
/// "no broker at … — start one with `keel broker`". Other errors pass through.
pub fn explain(err: anyhow::Error) -> anyhow::Error {
    let no_broker = err.chain().find_map(|cause| match cause.downcast_ref() {
        Some(e @ ClientError::NoBroker { .. }) => Some(e.to_string()),
        _ => None,
    });
    match no_broker {
        Some(message) => anyhow!(message),
        None => err,
    }
}

/// `outer: cause: cause`, like anyhow's `{:#}`, except that a cause whose text
/// the message already ends with is not repeated (some errors print their
/// source in their own message and also return it from `source()`).
pub fn error_chain<'a>(causes: impl IntoIterator<Item = &'a (dyn Error + 'static)>) -> String {
    let mut text = String::new();
    for cause in causes {
        let cause_text = cause.to_string();
        if text.is_empty() {
            text = cause_text;
        } else if !text.ends_with(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
    }
    text
}

/// The causes of a std error, itself first.
pub fn causes<'a>(
    err: &'a (dyn Error + 'static),
) -> impl Iterator<Item = &'a (dyn Error + 'static)> {
    std::iter::successors(Some(err), |e: &&'a (dyn Error + 'static)| (*e).source())
}

/// Describes `topic`, or fails with "unknown topic" and a hint to create it.
pub async fn require_topic(admin: &Admin, topic: &str) -> anyhow::Result<TopicDescription> {
    let mut described = admin
        .describe_topics(&[topic.to_string()])
        .await
        .with_context(|| format!("cannot describe topic '{topic}'"))?;
    let index = described
        .iter()
        .position(|d| d.name == topic)
        .ok_or_else(|| anyhow!(unknown_topic(topic)))?;
    let desc = described.swap_remove(index);
    match desc.error.as_deref() {
        None => Ok(desc),
        Some("UNKNOWN_TOPIC_OR_PARTITION") => bail!(unknown_topic(topic)),
        Some(code) => bail!("cannot describe topic '{topic}': {code}"),
    }
}

pub fn unknown_topic(topic: &str) -> String {
    format!("unknown topic '{topic}' — create it with `keel topic create {topic}`")
}

/// Fails unless `partition` exists in `desc`.
pub fn check_partition(desc: &TopicDescription, partition: i32) -> anyhow::Result<()> {
    if desc.partitions.iter().any(|p| p.partition == partition) {
        return Ok(());
    }
    bail!(
        "topic '{}' has no partition {partition} (it has {} partitions, numbered from 0)",
        desc.name,
        desc.partitions.len()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_broker_drops_the_context() {
        let err = anyhow::Error::new(ClientError::NoBroker {
            addrs: "127.0.0.1:9092".to_string(),
        })
        .context("cannot connect to 127.0.0.1:9092");
        assert_eq!(
            format!("{:#}", explain(err)),
            "no broker at 127.0.0.1:9092 — start one with `keel broker`"
        );
    }

    #[test]
    fn other_errors_pass_through() {
        let err = anyhow::Error::new(ClientError::Closed).context("cannot send");
        assert_eq!(
            format!("{:#}", explain(err)),
            "cannot send: producer is closed"
        );
    }

    #[test]
    fn error_chain_skips_repeated_causes() {
        #[derive(Debug)]
        struct Outer(std::io::Error);
        impl std::fmt::Display for Outer {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "opening data dir: {}", self.0)
            }
        }
        impl Error for Outer {
            fn source(&self) -> Option<&(dyn Error + 'static)> {
                Some(&self.0)
            }
        }
        let io = || std::io::Error::other("resource busy");
        let err = anyhow::Error::new(Outer(io())).context("broker failed to start");
        assert_eq!(
            error_chain(err.chain()),
            "broker failed to start: opening data dir: resource busy"
        );
        let plain = anyhow::Error::new(io()).context("cannot read");
        assert_eq!(error_chain(plain.chain()), "cannot read: resource busy");
        assert_eq!(
            error_chain(causes(&Outer(io()))),
            "opening data dir: resource busy"
        );
    }

    #[test]
    fn partition_check() {
        let desc = TopicDescription {
            name: "t".to_string(),
            partitions: (0..3)
                .map(|p| keel_client::PartitionInfo {
                    partition: p,
                    leader: 1,
                    leader_epoch: 0,
                    replicas: vec![1],
                    isr: vec![1],
                    offline: vec![],
                })
                .collect(),
            configs: Vec::new(),
            error: None,
        };
        assert!(check_partition(&desc, 0).is_ok());
        assert!(check_partition(&desc, 2).is_ok());
        let err = check_partition(&desc, 3).unwrap_err();
        assert_eq!(
            err.to_string(),
            "topic 't' has no partition 3 (it has 3 partitions, numbered from 0)"
        );
        assert!(check_partition(&desc, -1).is_err());
    }

    #[tokio::test]
    async fn nothing_listening_is_no_broker() {
        // Bind then drop a listener: its port is now (almost certainly) closed.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let bootstrap = crate::args::parse_bootstrap(&format!("127.0.0.1:{port}")).unwrap();
        let err = admin(&bootstrap)
            .await
            .err()
            .expect("no broker listens there");
        assert_eq!(
            format!("{:#}", explain(err)),
            format!("no broker at 127.0.0.1:{port} — start one with `keel broker`")
        );
    }
}
