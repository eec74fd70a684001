//! The broker in-process, with storage failpoints: a full disk fails one partition's
//! produce and nothing else; a failed fsync stops the broker; `/metrics` shows requests and
//! per-partition offsets.

use keel_broker::{Broker, BrokerConfig, BrokerHandle};
use keel_client::{
    Acks, Admin, ClientConfig, Consumer, ConsumerConfig, Offset, Producer, ProducerConfig,
    ProducerRecord, TopicSpec,
};
use keel_storage::failpoint::{self, FailAction, SEGMENT_FSYNC, SEGMENT_WRITE};
use std::path::Path;
use std::time::Duration;

const KAFKA_STORAGE_ERROR: i16 = 56;

async fn start(dir: &Path) -> BrokerHandle {
    let mut config = BrokerConfig::default();
    for (k, v) in [
        ("listeners", "127.0.0.1:0"),
        ("metrics.listener", "127.0.0.1:0"),
    ] {
        config.set(k, v).unwrap();
    }
    config.data_dir = dir.to_path_buf();
    let broker = Broker::start(config).await.unwrap();
    broker.serving().await;
    broker
}

async fn setup(broker: &BrokerHandle, topic: &str) -> (ClientConfig, Producer) {
    let client = ClientConfig::new(&broker.kafka_addr().unwrap().to_string());
    Admin::new(client.clone())
        .await
        .unwrap()
        .create_topics(&[TopicSpec {
            name: topic.into(),
            partitions: 2,
            replication_factor: 1,
            configs: vec![],
        }])
        .await
        .unwrap();
    let producer = Producer::new(
        client.clone(),
        ProducerConfig {
            acks: Acks::All,
            retries: 0,
            linger: Duration::ZERO,
            request_timeout: Duration::from_secs(5),
            ..ProducerConfig::default()
        },
    )
    .await
    .unwrap();
    (client, producer)
}

/// Sends one record and returns its offset, or the Kafka error code it failed with.
async fn send(p: &Producer, topic: &str, partition: i32, value: &'static str) -> Result<i64, i16> {
    let delivery = p
        .send(ProducerRecord::new(topic, value).partition(partition))
        .await
        .map_err(|e| e.kafka_code().unwrap_or(-1))?;
    delivery
        .await
        .map(|m| m.offset)
        .map_err(|e| e.kafka_code().unwrap_or(-1))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_disk_fails_one_partition_and_hides_the_partial_write() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path()).await;
    let (client, p) = setup(&broker, "t").await;
    assert_eq!(send(&p, "t", 0, "first").await, Ok(0));

    // The next write to partition 0 gets 10 bytes onto the disk, then ENOSPC.
    let p0 = dir.path().join("t-0");
    failpoint::set(
        SEGMENT_WRITE,
        &p0,
        FailAction::PartialWrite {
            bytes: 10,
            errno: libc::ENOSPC,
        },
        Some(1),
    );
    assert_eq!(send(&p, "t", 0, "lost").await, Err(KAFKA_STORAGE_ERROR));
    assert_eq!(send(&p, "t", 1, "other partition").await, Ok(0));
    failpoint::clear(&p0);
    assert_eq!(send(&p, "t", 0, "after").await, Ok(1));

    let mut c = Consumer::new(client, ConsumerConfig::default())
        .await
        .unwrap();
    c.assign("t", &[0], Offset::Earliest).await.unwrap();
    let mut got = Vec::new();
    for _ in 0..20 {
        got.extend(c.poll().await.unwrap());
        if got.len() >= 2 {
            break;
        }
    }
    let values: Vec<_> = got
        .iter()
        .map(|r| (r.offset, r.value.clone().unwrap()))
        .collect();
    assert_eq!(values, vec![(0, "first".into()), (1, "after".into())]);
    broker.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_fsync_stops_the_broker() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path()).await;
    let (_client, p) = setup(&broker, "f").await;
    let p0 = dir.path().join("f-0");
    failpoint::set(
        SEGMENT_FSYNC,
        &p0,
        FailAction::Error { errno: libc::EIO },
        None,
    );
    let pending = tokio::spawn(async move { send(&p, "f", 0, "never acknowledged").await });
    let stopped = tokio::time::timeout(Duration::from_secs(10), broker.wait())
        .await
        .expect("the broker kept running after a failed fsync");
    let reason = stopped.unwrap_err().to_string();
    assert!(reason.contains("flush failed"), "{reason}");
    // The write was never acknowledged.
    assert!(pending.await.unwrap().is_err());
    failpoint::clear(&p0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_endpoint_shows_requests_and_partition_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path()).await;
    let (_client, p) = setup(&broker, "m").await;
    for v in ["a", "b", "c"] {
        send(&p, "m", 1, v).await.unwrap();
    }
    let addr = broker.metrics_addr().unwrap();
    let want = r#"keel_partition_high_watermark{topic="m",partition="1"} 3"#;
    let mut body = String::new();
    for _ in 0..50 {
        body = scrape(addr).await;
        if body.contains(want) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for needle in [
        want,
        r#"keel_partition_log_end_offset{topic="m",partition="1"} 3"#,
        r#"keel_server_requests_total{api="produce",version="#,
        "keel_server_request_duration_seconds_bucket",
        "keel_partition_size_bytes",
    ] {
        assert!(body.contains(needle), "/metrics lacks {needle}:\n{body}");
    }
    broker.shutdown().await.unwrap();
}

async fn scrape(addr: std::net::SocketAddr) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    out
}
