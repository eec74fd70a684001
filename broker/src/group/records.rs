//! The records of `__consumer_offsets`, in Kafka's own format so tools that read that topic
//! understand Keel's: a key with a version (0 and 1: an offset commit of group/topic/partition;
//! 2: a group's metadata) and a value (OffsetCommitValue v0–v3, GroupMetadataValue v0–v3;
//! Keel writes v3 of both). A record without a value is a tombstone: the key is deleted.

use super::machine::{GroupSnapshot, StoredMember};
use bytes::{Buf, BufMut, Bytes, BytesMut};

pub(crate) use crate::topic_config::OFFSETS_TOPIC;

/// What a record of the offsets topic is about.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Key {
    Offset {
        group: String,
        topic: String,
        partition: i32,
    },
    Group {
        group: String,
    },
}

/// A committed offset (OffsetCommitValue).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CommittedOffset {
    pub(crate) offset: i64,
    /// -1 when the client did not say.
    pub(crate) leader_epoch: i32,
    pub(crate) metadata: String,
    pub(crate) commit_timestamp: i64,
}

/// A decoded record: its key and its value (`None`: a tombstone).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Record {
    Offset(Key, Option<CommittedOffset>),
    Group(Key, Option<GroupSnapshot>),
}

/// Why a record of the offsets topic could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum RecordError {
    #[error("offsets record {what}: truncated")]
    Truncated { what: &'static str },
    #[error("offsets record key version {0} is unknown")]
    KeyVersion(i16),
    #[error("offsets record {what} value version {version} is unknown")]
    ValueVersion { what: &'static str, version: i16 },
    #[error("offsets record {what}: invalid utf-8 or negative length")]
    Invalid { what: &'static str },
}

pub(crate) fn offset_key(group: &str, topic: &str, partition: i32) -> Bytes {
    let mut b = BytesMut::new();
    b.put_i16(1);
    put_str(&mut b, group);
    put_str(&mut b, topic);
    b.put_i32(partition);
    b.freeze()
}

pub(crate) fn group_key(group: &str) -> Bytes {
    let mut b = BytesMut::new();
    b.put_i16(2);
    put_str(&mut b, group);
    b.freeze()
}

pub(crate) fn offset_value(v: &CommittedOffset) -> Bytes {
    let mut b = BytesMut::new();
    b.put_i16(3);
    b.put_i64(v.offset);
    b.put_i32(v.leader_epoch);
    put_str(&mut b, &v.metadata);
    b.put_i64(v.commit_timestamp);
    b.freeze()
}

pub(crate) fn group_value(g: &GroupSnapshot) -> Bytes {
    let mut b = BytesMut::new();
    b.put_i16(3);
    put_str(&mut b, &g.protocol_type);
    b.put_i32(g.generation);
    put_nullable_str(&mut b, g.protocol.as_deref());
    put_nullable_str(&mut b, g.leader.as_deref());
    b.put_i64(g.state_timestamp);
    b.put_i32(g.members.len() as i32);
    for m in &g.members {
        put_str(&mut b, &m.id);
        put_nullable_str(&mut b, m.instance_id.as_deref());
        put_str(&mut b, &m.client_id);
        put_str(&mut b, &m.client_host);
        b.put_i32(m.rebalance_timeout_ms);
        b.put_i32(m.session_timeout_ms);
        put_bytes(&mut b, &m.subscription);
        put_bytes(&mut b, &m.assignment);
    }
    b.freeze()
}

/// Decodes one record of the offsets topic.
pub(crate) fn decode(key: &[u8], value: Option<&[u8]>) -> Result<Record, RecordError> {
    let mut k = key;
    let version = get_i16(&mut k, "key")?;
    match version {
        0 | 1 => {
            let key = Key::Offset {
                group: get_str(&mut k, "key group")?,
                topic: get_str(&mut k, "key topic")?,
                partition: get_i32(&mut k, "key partition")?,
            };
            let value = value.map(decode_offset).transpose()?;
            Ok(Record::Offset(key, value))
        }
        2 => {
            let key = Key::Group {
                group: get_str(&mut k, "key group")?,
            };
            let value = value.map(decode_group).transpose()?;
            Ok(Record::Group(key, value))
        }
        v => Err(RecordError::KeyVersion(v)),
    }
}

fn decode_offset(mut v: &[u8]) -> Result<CommittedOffset, RecordError> {
    let b = &mut v;
    let version = get_i16(b, "offset")?;
    if !(0..=3).contains(&version) {
        return Err(RecordError::ValueVersion {
            what: "offset",
            version,
        });
    }
    let offset = get_i64(b, "offset")?;
    let leader_epoch = if version >= 3 {
        get_i32(b, "offset leader epoch")?
    } else {
        -1
    };
    let metadata = get_str(b, "offset metadata")?;
    let commit_timestamp = get_i64(b, "offset commit timestamp")?;
    Ok(CommittedOffset {
        offset,
        leader_epoch,
        metadata,
        commit_timestamp,
    })
}

fn decode_group(mut v: &[u8]) -> Result<GroupSnapshot, RecordError> {
    let b = &mut v;
    let version = get_i16(b, "group")?;
    if !(0..=3).contains(&version) {
        return Err(RecordError::ValueVersion {
            what: "group",
            version,
        });
    }
    let protocol_type = get_str(b, "group protocol type")?;
    let generation = get_i32(b, "group generation")?;
    let protocol = get_nullable_str(b, "group protocol")?;
    let leader = get_nullable_str(b, "group leader")?;
    let state_timestamp = if version >= 2 {
        get_i64(b, "group state timestamp")?
    } else {
        -1
    };
    let count = get_i32(b, "group members")?;
    let mut members = Vec::new();
    for _ in 0..count.max(0) {
        let id = get_str(b, "member id")?;
        let instance_id = if version >= 3 {
            get_nullable_str(b, "member instance id")?
        } else {
            None
        };
        let client_id = get_str(b, "member client id")?;
        let client_host = get_str(b, "member client host")?;
        let rebalance_timeout_ms = if version >= 1 {
            get_i32(b, "member rebalance timeout")?
        } else {
            -1
        };
        let session_timeout_ms = get_i32(b, "member session timeout")?;
        let subscription = get_bytes(b, "member subscription")?;
        let assignment = get_bytes(b, "member assignment")?;
        let rebalance_timeout_ms = if rebalance_timeout_ms < 0 {
            session_timeout_ms
        } else {
            rebalance_timeout_ms
        };
        members.push(StoredMember {
            id,
            instance_id,
            client_id,
            client_host,
            rebalance_timeout_ms,
            session_timeout_ms,
            subscription,
            assignment,
        });
    }
    Ok(GroupSnapshot {
        protocol_type,
        generation,
        protocol,
        leader,
        state_timestamp,
        members,
    })
}

fn put_str(b: &mut BytesMut, s: &str) {
    b.put_i16(s.len() as i16);
    b.put_slice(s.as_bytes());
}

fn put_nullable_str(b: &mut BytesMut, s: Option<&str>) {
    match s {
        Some(s) => put_str(b, s),
        None => b.put_i16(-1),
    }
}

fn put_bytes(b: &mut BytesMut, v: &[u8]) {
    b.put_i32(v.len() as i32);
    b.put_slice(v);
}

fn need(b: &[u8], n: usize, what: &'static str) -> Result<(), RecordError> {
    if b.remaining() < n {
        Err(RecordError::Truncated { what })
    } else {
        Ok(())
    }
}

fn get_i16(b: &mut &[u8], what: &'static str) -> Result<i16, RecordError> {
    need(b, 2, what)?;
    Ok(b.get_i16())
}

fn get_i32(b: &mut &[u8], what: &'static str) -> Result<i32, RecordError> {
    need(b, 4, what)?;
    Ok(b.get_i32())
}

fn get_i64(b: &mut &[u8], what: &'static str) -> Result<i64, RecordError> {
    need(b, 8, what)?;
    Ok(b.get_i64())
}

fn get_nullable_str(b: &mut &[u8], what: &'static str) -> Result<Option<String>, RecordError> {
    let len = get_i16(b, what)?;
    if len < 0 {
        return Ok(None);
    }
    need(b, len as usize, what)?;
    let s = std::str::from_utf8(&b[..len as usize])
        .map_err(|_| RecordError::Invalid { what })?
        .to_string();
    b.advance(len as usize);
    Ok(Some(s))
}

fn get_str(b: &mut &[u8], what: &'static str) -> Result<String, RecordError> {
    get_nullable_str(b, what)?.ok_or(RecordError::Invalid { what })
}

fn get_bytes(b: &mut &[u8], what: &'static str) -> Result<Bytes, RecordError> {
    let len = get_i32(b, what)?;
    if len < 0 {
        return Ok(Bytes::new());
    }
    need(b, len as usize, what)?;
    let v = Bytes::copy_from_slice(&b[..len as usize]);
    b.advance(len as usize);
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot() -> GroupSnapshot {
        GroupSnapshot {
            protocol_type: "consumer".into(),
            generation: 7,
            protocol: Some("range".into()),
            leader: Some("m-1".into()),
            state_timestamp: 1_700_000_000_000,
            members: vec![StoredMember {
                id: "m-1".into(),
                instance_id: Some("i-1".into()),
                client_id: "app".into(),
                client_host: "/127.0.0.1".into(),
                rebalance_timeout_ms: 30_000,
                session_timeout_ms: 10_000,
                subscription: Bytes::from_static(b"sub"),
                assignment: Bytes::from_static(b"asg"),
            }],
        }
    }

    #[test]
    fn offsets_and_groups_round_trip() {
        let v = CommittedOffset {
            offset: 42,
            leader_epoch: 3,
            metadata: "m".into(),
            commit_timestamp: 99,
        };
        let r = decode(&offset_key("g", "t", 5), Some(&offset_value(&v))).unwrap();
        let key = Key::Offset {
            group: "g".into(),
            topic: "t".into(),
            partition: 5,
        };
        assert_eq!(r, Record::Offset(key, Some(v)));
        let r = decode(&group_key("g"), Some(&group_value(&snapshot()))).unwrap();
        assert_eq!(
            r,
            Record::Group(Key::Group { group: "g".into() }, Some(snapshot()))
        );
        let r = decode(&group_key("g"), None).unwrap();
        assert_eq!(r, Record::Group(Key::Group { group: "g".into() }, None));
    }

    /// Kafka's bytes for an OffsetCommitValue v1 (with an expire timestamp) and a
    /// GroupMetadataValue v0 (no rebalance timeout, state timestamp or instance id).
    #[test]
    fn older_value_versions_decode() {
        let mut v1 = BytesMut::new();
        v1.put_i16(1);
        v1.put_i64(10);
        put_str(&mut v1, "");
        v1.put_i64(5);
        v1.put_i64(6);
        let r = decode(&offset_key("g", "t", 0), Some(&v1)).unwrap();
        let Record::Offset(_, Some(o)) = r else {
            panic!("{r:?}")
        };
        assert_eq!((o.offset, o.leader_epoch, o.commit_timestamp), (10, -1, 5));

        let mut g0 = BytesMut::new();
        g0.put_i16(0);
        put_str(&mut g0, "consumer");
        g0.put_i32(1);
        put_nullable_str(&mut g0, None);
        put_nullable_str(&mut g0, None);
        g0.put_i32(1);
        put_str(&mut g0, "m");
        put_str(&mut g0, "c");
        put_str(&mut g0, "h");
        g0.put_i32(6000);
        put_bytes(&mut g0, b"s");
        put_bytes(&mut g0, b"a");
        let r = decode(&group_key("g"), Some(&g0)).unwrap();
        let Record::Group(_, Some(g)) = r else {
            panic!("{r:?}")
        };
        assert_eq!(g.members[0].rebalance_timeout_ms, 6000);
        assert_eq!(g.state_timestamp, -1);
    }

    #[test]
    fn damaged_records_are_errors_not_panics() {
        let key = offset_key("group", "topic", 1);
        for cut in 0..key.len() {
            assert!(decode(&key[..cut], None).is_err(), "key cut at {cut}");
        }
        let value = group_value(&snapshot());
        for cut in 0..value.len() {
            assert!(
                decode(&group_key("g"), Some(&value[..cut])).is_err(),
                "value cut at {cut}"
            );
        }
        assert_eq!(decode(&[0, 9, 0, 0], None), Err(RecordError::KeyVersion(9)));
        let mut bad = BytesMut::new();
        bad.put_i16(0);
        bad.put_i16(2);
        bad.put_slice(&[0xff, 0xfe]);
        assert!(matches!(
            decode(&bad, None),
            Err(RecordError::Invalid { .. }) | Err(RecordError::Truncated { .. })
        ));
    }
}
