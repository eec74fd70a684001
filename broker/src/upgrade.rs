//! Data directories written before the one control plane.
//!
//! A broker started alone used to keep its topics in `<data>/topics.toml` rather than in a
//! metadata log. On its first start as a node with both roles (what `keel broker` runs by
//! default) those topics are imported: the same names, ids and configs, each partition on
//! this node, written to the metadata log in one batch. Each existing partition directory
//! first gets the file naming its topic id (without it the directory would be taken for a
//! leftover and moved aside), and `topics.toml` is renamed `topics.toml.imported` last. A
//! crash anywhere in between leaves `topics.toml` in place and the next start imports again;
//! topics already in the log are skipped.
//!
//! A node without both roles refuses such a directory with a message that says what to do:
//! it has no controller to import into, or no broker to hold the replicas.

use crate::config::BrokerConfig;
use crate::controller::quorum::driver::Quorum;
use crate::controller::quorum::voter::{Answer, CommandError};
use crate::error::BrokerError;
use crate::partition::registry::{sync_dir, write_partition_topic_id};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;

/// The registry file of a broker from before the one control plane.
pub(crate) const STANDALONE_REGISTRY: &str = "topics.toml";
/// What it is renamed to once imported.
pub(crate) const IMPORTED_REGISTRY: &str = "topics.toml.imported";

#[derive(Debug, Deserialize)]
struct RegistryFile {
    #[serde(default, rename = "topic")]
    topics: Vec<RegistryTopic>,
}

#[derive(Debug, Deserialize)]
struct RegistryTopic {
    name: String,
    id: uuid::Uuid,
    partitions: i32,
    #[serde(default)]
    configs: BTreeMap<String, String>,
}

/// A topic of a broker from before the one control plane, to import.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ImportedTopic {
    name: String,
    id: uuid::Uuid,
    partitions: i32,
    configs: BTreeMap<String, String>,
}

fn upgrade_error(data_dir: &Path, reason: impl Into<String>) -> BrokerError {
    BrokerError::Upgrade {
        path: data_dir.join(STANDALONE_REGISTRY).display().to_string(),
        reason: reason.into(),
    }
}

/// Imports `<data>/topics.toml`, if there is one, into the metadata log of this node's
/// controller (`driver`); refuses to start a node that cannot.
pub(crate) async fn import_standalone_topics(
    config: &BrokerConfig,
    quorum: Option<&Quorum>,
) -> Result<(), BrokerError> {
    let data_dir = &config.data_dir;
    let path = data_dir.join(STANDALONE_REGISTRY);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(BrokerError::io(format!("reading {}", path.display()), e)),
    };
    let Some(quorum) =
        quorum.filter(|_| config.roles.broker && config.controller_voters.len() <= 1)
    else {
        return Err(upgrade_error(
            data_dir,
            "this data directory holds the topics of a single broker of an earlier Keel, \
             which this node cannot import: start it once with process.roles=broker,controller \
             (what `keel broker` runs with no configuration) to import them into its metadata \
             log, or give this node another log.dirs",
        ));
    };
    let file: RegistryFile =
        toml::from_str(&text).map_err(|e| upgrade_error(data_dir, e.to_string()))?;
    let topics: Vec<ImportedTopic> = file
        .topics
        .into_iter()
        .map(|t| ImportedTopic {
            name: t.name,
            id: t.id,
            partitions: t.partitions,
            configs: t.configs,
        })
        .collect();
    for t in &topics {
        for p in 0..t.partitions.max(0) {
            let dir = data_dir.join(format!("{}-{p}", t.name));
            if dir.is_dir() {
                write_partition_topic_id(&dir, t.id)?;
            }
        }
    }
    if !quorum.wait_active(std::time::Duration::from_secs(30)).await {
        return Err(BrokerError::Fatal(
            "the controller did not become active to import topics.toml".into(),
        ));
    }
    let broker = config.node_id;
    let import = topics.clone();
    let answer = quorum
        .run(Box::new(move |c| {
            let mut records = Vec::new();
            let mut imported = 0;
            for t in &import {
                let r = c.import_topic(&t.name, t.id, t.partitions, broker, t.configs.clone())?;
                imported += usize::from(!r.is_empty());
                records.extend(r);
            }
            Ok((Answer::Count(imported), records))
        }))
        .await;
    let imported = match answer {
        Ok(Answer::Count(n)) => n,
        Ok(other) => unreachable!("an import answers a count, not {other:?}"),
        Err(CommandError::Refused(e)) => {
            return Err(upgrade_error(data_dir, format!("cannot import: {e}")))
        }
        Err(e) => return Err(BrokerError::Fatal(format!("importing topics.toml: {e}"))),
    };
    std::fs::rename(&path, data_dir.join(IMPORTED_REGISTRY))
        .map_err(|e| BrokerError::io(format!("renaming {}", path.display()), e))?;
    sync_dir(data_dir)?;
    tracing::warn!(
        topics = topics.len(),
        imported,
        node = config.node_id,
        "imported the topics of a single broker of an earlier Keel into the metadata log; \
         topics.toml is now topics.toml.imported"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::quorum::driver::Timing;
    use crate::controller::ControllerConfig;
    use std::sync::Arc;

    const OLD: &str = r#"version = 1

[[topic]]
name = "orders"
id = "6f1c4e52-4f5b-4f62-9a55-1f0d5f3f7a11"
partitions = 2
replication_factor = 1

[topic.configs]
"retention.ms" = "1000"
"#;

    fn config(dir: &Path, roles: &str) -> BrokerConfig {
        let mut c = BrokerConfig {
            data_dir: dir.to_path_buf(),
            ..BrokerConfig::default()
        };
        c.set("process.roles", roles).unwrap();
        if roles == "broker" {
            c.set("controller.quorum.voters", "0@127.0.0.1:9093")
                .unwrap();
        }
        c
    }

    fn quorum(dir: &Path) -> Arc<Quorum> {
        let node = BrokerConfig::default().node_id;
        Quorum::start(
            node,
            &dir.join("meta"),
            &[(node, "127.0.0.1:1".into())],
            ControllerConfig::default(),
            Timing::new(1000, 200, 1000, std::time::Duration::from_secs(1)),
            crate::error::FatalSignal::default(),
            tokio_util::sync::CancellationToken::new(),
        )
        .unwrap()
        .0
    }

    #[tokio::test]
    async fn an_old_registry_is_imported_once_with_ids_and_configs() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(STANDALONE_REGISTRY), OLD).unwrap();
        std::fs::create_dir_all(dir.path().join("orders-0")).unwrap();
        let d = quorum(dir.path());
        let c = config(dir.path(), "broker,controller");
        import_standalone_topics(&c, Some(&d)).await.unwrap();

        let id: uuid::Uuid = "6f1c4e52-4f5b-4f62-9a55-1f0d5f3f7a11".parse().unwrap();
        let image = d.image();
        let t = image.topic("orders").expect("imported");
        assert_eq!(t.id, id);
        assert_eq!(
            t.configs.get("retention.ms").map(String::as_str),
            Some("1000")
        );
        assert_eq!(t.partitions.len(), 2);
        for p in &t.partitions {
            assert_eq!((p.replicas.clone(), p.isr.clone()), (vec![1], vec![1]));
            assert!(!p.has_leader(), "leaderless until node 1 registers");
        }
        let marker = std::fs::read_to_string(dir.path().join("orders-0/partition.metadata"));
        assert!(marker.unwrap().contains(&id.to_string()));
        assert!(!dir.path().join(STANDALONE_REGISTRY).exists());
        assert!(dir.path().join(IMPORTED_REGISTRY).exists());

        // A crash before the rename: the next start imports nothing twice.
        std::fs::rename(
            dir.path().join(IMPORTED_REGISTRY),
            dir.path().join(STANDALONE_REGISTRY),
        )
        .unwrap();
        let before = d.image().offset();
        import_standalone_topics(&c, Some(&d)).await.unwrap();
        assert_eq!(d.image().offset(), before, "nothing written again");
    }

    #[tokio::test]
    async fn a_node_that_cannot_import_refuses_with_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(STANDALONE_REGISTRY), OLD).unwrap();
        let err = import_standalone_topics(&config(dir.path(), "broker"), None)
            .await
            .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("process.roles=broker,controller"), "{msg}");
        let d = quorum(dir.path());
        let err = import_standalone_topics(&config(dir.path(), "controller"), Some(&d))
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("topics.toml"), "{err}");
        assert!(
            dir.path().join(STANDALONE_REGISTRY).exists(),
            "left as it was"
        );
        std::fs::write(dir.path().join(STANDALONE_REGISTRY), "not = [toml").unwrap();
        let bad =
            import_standalone_topics(&config(dir.path(), "broker,controller"), Some(&d)).await;
        assert!(bad.is_err());
        // Nothing to import: nothing to do.
        let empty = tempfile::tempdir().unwrap();
        import_standalone_topics(&config(empty.path(), "broker"), None)
            .await
            .unwrap();
    }
}
