//! Version-dependent request shapes against the real broker: Fetch by topic name (v12)
//! and by topic id (v13+), and OffsetForLeaderEpoch.

use kafka_protocol::messages::fetch_request::FetchRequest;
use kafka_protocol::messages::offset_for_leader_epoch_request::{
    OffsetForLeaderEpochRequest, OffsetForLeaderPartition, OffsetForLeaderTopic,
};
use kafka_protocol::messages::BrokerId;
use kafka_protocol::records::Compression;
use keel_tests::data::generate;
use keel_tests::raw::{fetch_request, topic_name, RawConn};
use keel_tests::{BrokerOpts, TestBroker};

const UNKNOWN_TOPIC_ID: i16 = 100;
const UNKNOWN_LEADER_EPOCH: i16 = 75;

/// (error code, high watermark, record bytes) of partition 0 in a fetch response.
fn fetch(c: &mut RawConn, version: i16, req: &FetchRequest) -> (i16, i64, usize) {
    let resp = c.request(version, req).unwrap();
    assert_eq!(resp.error_code, 0, "v{version}: top-level error");
    let p = &resp.responses[0].partitions[0];
    let len = p.records.as_ref().map_or(0, |r| r.len());
    (p.error_code, p.high_watermark, len)
}

#[test]
fn fetch_by_name_and_by_topic_id_return_the_same_records() {
    let b = TestBroker::start(BrokerOpts::default());
    let mut c = RawConn::connect(b.kafka_addr()).unwrap();
    c.create_topic_ok("ids", 1).unwrap();
    c.produce_ok("ids", 0, &generate("k", 50, 100, 1, 1), Compression::None)
        .unwrap();
    let id = c.topic_id("ids").unwrap();
    assert!(!id.is_nil());

    let by_name = fetch(&mut c, 12, &fetch_request("ids", uuid::Uuid::nil(), 0, 0));
    assert_eq!(by_name.0, 0);
    assert_eq!(by_name.1, 50);
    assert!(by_name.2 > 0);
    for version in [13, 14, 15] {
        let by_id = fetch(&mut c, version, &fetch_request("", id, 0, 0));
        assert_eq!(by_id, by_name, "fetch v{version} by topic id");
    }
    let unknown = fetch(
        &mut c,
        15,
        &fetch_request("", uuid::Uuid::from_u128(7), 0, 0),
    );
    assert_eq!(unknown.0, UNKNOWN_TOPIC_ID);
}

#[test]
fn offset_for_leader_epoch_answers_like_kafka() {
    let b = TestBroker::start(BrokerOpts::default());
    let mut c = RawConn::connect(b.kafka_addr()).unwrap();
    c.create_topic_ok("epochs", 1).unwrap();
    c.produce_ok(
        "epochs",
        0,
        &generate("k", 30, 100, 0, 2),
        Compression::None,
    )
    .unwrap();
    // (current leader epoch, asked epoch) -> (error, epoch, end offset)
    let table: &[(i32, i32, (i16, i32, i64))] = &[
        (-1, 0, (0, 0, 30)),  // the latest epoch ends at the log end
        (0, 0, (0, 0, 30)),   // current epoch matches
        (-1, 5, (0, -1, -1)), // a future epoch is undefined
        (3, 0, (UNKNOWN_LEADER_EPOCH, -1, -1)),
    ];
    for &(current, asked, want) in table {
        let mut p = OffsetForLeaderPartition::default();
        p.partition = 0;
        p.current_leader_epoch = current;
        p.leader_epoch = asked;
        let mut t = OffsetForLeaderTopic::default();
        t.topic = topic_name("epochs");
        t.partitions = vec![p];
        let mut req = OffsetForLeaderEpochRequest::default();
        req.replica_id = BrokerId(-1);
        req.topics = vec![t];
        let resp = c.request(4, &req).unwrap();
        let r = &resp.topics[0].partitions[0];
        assert_eq!(
            (r.error_code, r.leader_epoch, r.end_offset),
            want,
            "current {current}, asked {asked}"
        );
    }
}

/// The client's connection, as the broker will use it for inter-broker calls: an explicit
/// version inside the broker's range is sent as is; one outside it is refused locally.
#[test]
fn connection_sends_explicit_versions_within_the_broker_range() {
    use keel_client::connection::Connection;
    use keel_client::ClientError;
    use std::time::Duration;

    let b = TestBroker::start(BrokerOpts::default());
    let mut c = RawConn::connect(b.kafka_addr()).unwrap();
    c.create_topic_ok("explicit", 1).unwrap();
    c.produce_ok(
        "explicit",
        0,
        &generate("k", 5, 10, 0, 3),
        Compression::None,
    )
    .unwrap();
    let id = c.topic_id("explicit").unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let timeout = Duration::from_secs(5);
        let conn = Connection::connect(&b.bootstrap(), "t", timeout, timeout)
            .await
            .unwrap();
        assert_eq!(conn.broker_range(1), (4, 15));
        let resp = conn
            .send_version(&fetch_request("", id, 0, 0), 15, timeout)
            .await
            .unwrap();
        assert_eq!(resp.responses[0].partitions[0].high_watermark, 5);
        let refused = conn
            .send_version(&fetch_request("", id, 0, 0), 16, timeout)
            .await
            .unwrap_err();
        assert!(
            matches!(refused, ClientError::UnsupportedVersion { .. }),
            "{refused}"
        );
    });
}
