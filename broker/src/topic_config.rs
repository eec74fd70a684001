//! Topic names and topic-level configs: the one parser of each, used by the controller to
//! validate a new topic and by brokers to open its replicas with the same settings.

use keel_storage::LogConfig;
use std::collections::BTreeMap;

/// Kafka's topic-name rules.
/// The internal topic of committed offsets and group metadata (written only by the group
/// coordinator).
pub(crate) const OFFSETS_TOPIC: &str = "__consumer_offsets";

/// Whether Metadata marks `name` internal (clients may not produce to it).
pub(crate) fn is_internal_topic(name: &str) -> bool {
    name == OFFSETS_TOPIC
}

pub(crate) fn validate_topic_name(name: &str) -> Result<(), &'static str> {
    let bad = Err;
    if name.is_empty() {
        return bad("empty");
    }
    if name == "." || name == ".." {
        return bad("`.` and `..` are not allowed");
    }
    if name.len() > 249 {
        return bad("longer than 249 characters");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
    {
        return bad("only ASCII letters, digits, `.`, `_` and `-` are allowed");
    }
    Ok(())
}

/// Topic-level configs Keel accepts, applied over the broker's log defaults.
pub(crate) const TOPIC_CONFIG_KEYS: &[&str] = &[
    "cleanup.policy",
    "retention.ms",
    "retention.bytes",
    "segment.bytes",
    "segment.ms",
    "max.message.bytes",
    "min.insync.replicas",
];

/// The topic's `min.insync.replicas` (1..=2^31-1), or `default` when it sets none. The one
/// parser for it: validation on create and every replica open use this.
pub(crate) fn topic_min_insync_replicas(
    configs: &BTreeMap<String, String>,
    default: i32,
) -> Result<i32, String> {
    match configs.get("min.insync.replicas") {
        None => Ok(default),
        Some(v) => match v.trim().parse::<i32>() {
            Ok(n) if n >= 1 => Ok(n),
            _ => Err(format!(
                "min.insync.replicas: `{v}` is not a number from 1 to {}",
                i32::MAX
            )),
        },
    }
}

pub(crate) fn topic_log_config(
    defaults: &LogConfig,
    configs: &BTreeMap<String, String>,
) -> Result<LogConfig, String> {
    let mut c = defaults.clone();
    for (k, v) in configs {
        let num = || {
            v.trim()
                .parse::<i64>()
                .map_err(|_| format!("{k}: `{v}` is not a number"))
        };
        let limit = || -> Result<Option<u64>, String> {
            match num()? {
                -1 => Ok(None),
                n if n >= 0 => Ok(Some(n as u64)),
                _ => Err(format!("{k}: expected -1 or a non-negative number")),
            }
        };
        let positive = || -> Result<u64, String> {
            match num()? {
                n if n > 0 => Ok(n as u64),
                _ => Err(format!("{k}: must be positive")),
            }
        };
        match k.as_str() {
            "cleanup.policy" => {
                c.compact = match v.trim() {
                    "delete" => false,
                    "compact" | "compact,delete" | "delete,compact" => true,
                    _ => return Err(format!("{k}: expected delete or compact, got `{v}`")),
                }
            }
            "retention.ms" => c.retention_ms = limit()?,
            "retention.bytes" => c.retention_bytes = limit()?,
            "segment.bytes" => {
                let n = positive()?;
                if n < 1024 {
                    return Err(format!("{k}: must be at least 1024"));
                }
                c.segment_bytes = n
            }
            "segment.ms" => c.segment_ms = Some(positive()?),
            "max.message.bytes" => {
                c.max_batch_bytes =
                    u32::try_from(positive()?).map_err(|_| format!("{k}: too large"))?
            }
            "min.insync.replicas" => {
                topic_min_insync_replicas(configs, 1)?;
            }
            _ => return Err(format!("unknown topic config `{k}`")),
        }
    }
    // A compacted topic keeps its data until a newer record with the same key replaces it
    // (Kafka deletes by time or size only with `delete` in the policy). Keel does not
    // compact yet, so such a topic keeps everything.
    if configs.get("cleanup.policy").map(|p| p.trim()) == Some("compact") {
        c.retention_ms = None;
        c.retention_bytes = None;
    }
    c.validate().map_err(|e| e.to_string())?;
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn min_insync_replicas_has_one_parser() {
        let with = |v: &str| BTreeMap::from([("min.insync.replicas".to_string(), v.to_string())]);
        assert_eq!(topic_min_insync_replicas(&BTreeMap::new(), 2), Ok(2));
        assert_eq!(topic_min_insync_replicas(&with("3"), 2), Ok(3));
        assert_eq!(topic_min_insync_replicas(&with(" 1 "), 2), Ok(1));
        for bad in ["0", "-1", "x", "", "2147483648"] {
            assert!(topic_min_insync_replicas(&with(bad), 2).is_err(), "{bad:?}");
            assert!(
                topic_log_config(&LogConfig::default(), &with(bad)).is_err(),
                "create accepts what open would refuse: {bad:?}"
            );
        }
    }

    #[test]
    fn topic_names_follow_kafka_rules() {
        for ok in ["a", "orders.v1", "x_y-z", &"n".repeat(249)] {
            validate_topic_name(ok).unwrap();
        }
        for bad in ["", ".", "..", "a b", "ü", "a/b", &"n".repeat(250)] {
            assert!(validate_topic_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_compact_only_topic_is_not_deleted_by_time_or_size() {
        let mut m = BTreeMap::new();
        m.insert("cleanup.policy".to_string(), "compact".to_string());
        m.insert("retention.ms".to_string(), "1000".to_string());
        let c = topic_log_config(&LogConfig::default(), &m).unwrap();
        assert!(c.compact);
        assert_eq!((c.retention_ms, c.retention_bytes), (None, None));
        m.insert("cleanup.policy".to_string(), "compact,delete".to_string());
        let c = topic_log_config(&LogConfig::default(), &m).unwrap();
        assert_eq!(c.retention_ms, Some(1000));
    }

    #[test]
    fn topic_configs_override_defaults_and_reject_unknowns() {
        let d = LogConfig::default();
        let mut m = BTreeMap::new();
        m.insert("retention.ms".to_string(), "1000".to_string());
        m.insert("segment.bytes".to_string(), "4096".to_string());
        m.insert("retention.bytes".to_string(), "-1".to_string());
        let c = topic_log_config(&d, &m).unwrap();
        assert_eq!(c.retention_ms, Some(1000));
        assert_eq!(c.segment_bytes, 4096);
        assert_eq!(c.retention_bytes, None);
        for (k, v) in [
            ("segment.bytes", "0"),
            ("nope", "1"),
            ("cleanup.policy", "x"),
            ("retention.ms", "-7"),
        ] {
            let mut m = BTreeMap::new();
            m.insert(k.to_string(), v.to_string());
            assert!(topic_log_config(&d, &m).is_err(), "{k}={v}");
        }
    }
}
