//! A controller-only node in-process, driven over its listener with Kafka's own APIs:
//! brokers register and heartbeat, topics are created with replicas spread over the
//! unfenced brokers, the metadata log is readable with Fetch, a silent broker is fenced,
//! and a restarted controller replays the same state.

use kafka_protocol::messages::broker_heartbeat_request::BrokerHeartbeatRequest;
use kafka_protocol::messages::broker_registration_request::{BrokerRegistrationRequest, Listener};
use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreateTopicsRequest};
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchRequest, FetchTopic};
use kafka_protocol::messages::metadata_request::{MetadataRequest, MetadataRequestTopic};
use kafka_protocol::messages::{BrokerId, TopicName};
use kafka_protocol::protocol::StrBytes;
use keel_broker::{decode_batches, MetadataRecord, METADATA_TOPIC};
use keel_broker::{Broker, BrokerConfig, BrokerHandle};
use keel_client::connection::Connection;
use std::path::Path;
use std::time::Duration;

const T: Duration = Duration::from_secs(5);

async fn start(dir: &Path, session_timeout_ms: &str) -> BrokerHandle {
    let mut config = BrokerConfig::default();
    for (k, v) in [
        ("process.roles", "controller"),
        ("controller.listener", "127.0.0.1:0"),
        ("metrics.listener", "none"),
        ("broker.session.timeout.ms", session_timeout_ms),
        ("broker.heartbeat.interval.ms", "200"),
    ] {
        config.set(k, v).unwrap();
    }
    config.data_dir = dir.to_path_buf();
    Broker::start(config).await.unwrap()
}

async fn connect(node: &BrokerHandle) -> Connection {
    let addr = node.controller_addr().unwrap().to_string();
    Connection::connect(&addr, "test", T, T).await.unwrap()
}

async fn register(c: &Connection, id: i32) -> i64 {
    let req = BrokerRegistrationRequest::default()
        .with_broker_id(BrokerId(id))
        .with_cluster_id(StrBytes::from_static_str("keel-local"))
        .with_listeners(vec![Listener::default()
            .with_name(StrBytes::from_static_str("PLAINTEXT"))
            .with_host(StrBytes::from_static_str("127.0.0.1"))
            .with_port(9000 + id as u16)]);
    let resp = c.send_version(&req, 0, T).await.unwrap();
    assert_eq!(resp.error_code, 0, "register {id}");
    resp.broker_epoch
}

/// Heartbeats with the given metadata offset; returns (error, fenced).
async fn heartbeat(c: &Connection, id: i32, epoch: i64, offset: i64) -> (i16, bool) {
    let req = BrokerHeartbeatRequest::default()
        .with_broker_id(BrokerId(id))
        .with_broker_epoch(epoch)
        .with_current_metadata_offset(offset);
    let resp = c.send_version(&req, 0, T).await.unwrap();
    (resp.error_code, resp.is_fenced)
}

/// Every record of the metadata log with the offset of its entry, read with Fetch as a
/// broker does.
async fn metadata_log(c: &Connection) -> Vec<(i64, MetadataRecord)> {
    let mut p = FetchPartition::default();
    p.partition = 0;
    p.fetch_offset = 0;
    p.current_leader_epoch = -1;
    p.last_fetched_epoch = -1;
    p.log_start_offset = -1;
    p.partition_max_bytes = 1 << 20;
    let mut t = FetchTopic::default();
    t.topic = TopicName(StrBytes::from_static_str(METADATA_TOPIC));
    t.partitions = vec![p];
    let mut req = FetchRequest::default();
    req.replica_id = BrokerId(1);
    req.max_wait_ms = 0;
    req.max_bytes = 1 << 20;
    req.session_epoch = -1;
    req.topics = vec![t];
    let resp = c.send_version(&req, 12, T).await.unwrap();
    let records = resp.responses[0].partitions[0].records.clone().unwrap();
    decode_batches(records)
        .unwrap()
        .into_iter()
        .flat_map(|(offset, records)| records.into_iter().map(move |r| (offset, r)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn brokers_register_create_topics_and_a_restart_replays_them() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path(), "60000").await;
    assert!(
        node.kafka_addr().is_none(),
        "a controller-only node has no Kafka listener"
    );
    let c = connect(&node).await;

    let mut epochs = Vec::new();
    for id in 1..=3 {
        let epoch = register(&c, id).await;
        let log = metadata_log(&c).await;
        let offset = log.last().unwrap().0;
        assert_eq!(
            heartbeat(&c, id, epoch, offset).await,
            (0, false),
            "broker {id} unfenced"
        );
        epochs.push(epoch);
    }
    assert!(epochs.windows(2).all(|w| w[0] < w[1]));
    // A stale epoch is refused (STALE_BROKER_EPOCH).
    assert_eq!(heartbeat(&c, 1, epochs[0] - 1, 0).await.0, 77);

    let mut topic = CreatableTopic::default();
    topic.name = TopicName(StrBytes::from_static_str("orders"));
    topic.num_partitions = 3;
    topic.replication_factor = 3;
    let req = CreateTopicsRequest::default()
        .with_topics(vec![topic])
        .with_timeout_ms(5000);
    let resp = c.send_version(&req, 7, T).await.unwrap();
    assert_eq!(resp.topics[0].error_code, 0);

    let md_req = MetadataRequest::default()
        .with_topics(Some(vec![MetadataRequestTopic::default()
            .with_name(Some(TopicName(StrBytes::from_static_str("orders"))))]));
    let md = c.send_version(&md_req, 12, T).await.unwrap();
    assert_eq!(md.brokers.len(), 3);
    let leaders: Vec<i32> = md.topics[0]
        .partitions
        .iter()
        .map(|p| p.leader_id.0)
        .collect();
    let mut sorted = leaders.clone();
    sorted.sort();
    assert_eq!(sorted, vec![1, 2, 3], "leadership is spread: {leaders:?}");
    assert!(md.topics[0]
        .partitions
        .iter()
        .all(|p| p.isr_nodes.len() == 3));
    let before = metadata_log(&c).await;
    assert!(before
        .iter()
        .any(|(_, r)| matches!(r, MetadataRecord::Topic { name, .. } if name == "orders")));
    drop(c);
    node.shutdown().await.unwrap();

    let node = start(dir.path(), "60000").await;
    let c = connect(&node).await;
    assert_eq!(
        metadata_log(&c).await,
        before,
        "the metadata log survives a restart"
    );
    let md = c.send_version(&md_req, 12, T).await.unwrap();
    assert_eq!(md.topics[0].partitions.len(), 3);
    node.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_broker_is_fenced_and_loses_its_leaderships() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path(), "600").await;
    let c = connect(&node).await;
    let mut epochs = Vec::new();
    for id in 1..=2 {
        let epoch = register(&c, id).await;
        let offset = metadata_log(&c).await.last().unwrap().0;
        assert_eq!(heartbeat(&c, id, epoch, offset).await, (0, false));
        epochs.push(epoch);
    }
    let mut topic = CreatableTopic::default();
    topic.name = TopicName(StrBytes::from_static_str("t"));
    topic.num_partitions = 2;
    topic.replication_factor = 2;
    let req = CreateTopicsRequest::default().with_topics(vec![topic]);
    assert_eq!(
        c.send_version(&req, 7, T).await.unwrap().topics[0].error_code,
        0
    );

    // Broker 1 keeps heartbeating, broker 2 goes silent.
    let md_req = MetadataRequest::default().with_topics(None);
    let mut fenced = false;
    for _ in 0..40 {
        let offset = metadata_log(&c).await.last().unwrap().0;
        heartbeat(&c, 1, epochs[0], offset).await;
        let md = c.send_version(&md_req, 12, T).await.unwrap();
        if md.brokers.len() == 1 {
            assert!(md.topics[0]
                .partitions
                .iter()
                .all(|p| p.leader_id.0 == 1 && p.isr_nodes.iter().map(|b| b.0).eq([1])));
            fenced = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(fenced, "broker 2 was never fenced");
    node.shutdown().await.unwrap();
}
