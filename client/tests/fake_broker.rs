//! The client against an in-test fake broker: a TcpListener on 127.0.0.1:0 answering
//! ApiVersions, Metadata, Produce, Fetch, ListOffsets and CreateTopics with `kafka-protocol`
//! codecs, with knobs to hold, fail or reorder responses.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::create_topics_response::CreatableTopicResult;
use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{decode_request_header_from_buffer, Decodable, Encodable, StrBytes};
use kafka_protocol::records::RecordBatchDecoder;
use keel_client::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

// ---------------------------------------------------------------- fake broker

#[derive(Default)]
struct State {
    /// topic → partition count
    topics: BTreeMap<String, i32>,
    /// (topic, partition) → stored batches (base offset stamped) and the next offset
    logs: HashMap<(String, i32), (Vec<Bytes>, i64)>,
    /// Produce to these partitions fails once with the given error code.
    fail_once: HashMap<(String, i32), i16>,
    /// Produce to these partitions always fails with the given error code.
    fail_always: HashMap<(String, i32), i16>,
    /// Hold produce responses until this many are outstanding, then answer in reverse order.
    hold_produce: usize,
    /// Append these bytes to every fetch response's records (e.g. a partial batch).
    fetch_tail: Option<Bytes>,
    /// What happened, in order: "metadata", "produce:ok", "produce:6", "fetch", ...
    events: Vec<String>,
    /// Most produce requests outstanding (read, not answered) at once on one connection.
    max_outstanding_produce: usize,
}

#[derive(Clone)]
struct FakeBroker {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
}

impl FakeBroker {
    async fn start(topics: &[(&str, i32)]) -> FakeBroker {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State::default()));
        for (t, n) in topics {
            state.lock().unwrap().topics.insert(t.to_string(), *n);
        }
        let broker = FakeBroker { addr, state };
        let b = broker.clone();
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                tokio::spawn(b.clone().serve(socket));
            }
        });
        broker
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap()
    }

    fn client(&self) -> ClientConfig {
        let mut c = ClientConfig::new(&self.addr.to_string());
        c.request_timeout = Duration::from_secs(5);
        c
    }

    fn events(&self) -> Vec<String> {
        self.state().events.clone()
    }

    async fn serve(self, mut socket: TcpStream) {
        let mut held: Vec<Bytes> = Vec::new();
        loop {
            let read = tokio::time::timeout(Duration::from_secs(2), read_frame(&mut socket));
            let frame = match read.await {
                Err(_) => {
                    // Idle: release anything held so a non-pipelining client cannot hang us.
                    for resp in held.drain(..).rev() {
                        socket.write_all(&resp).await.unwrap();
                    }
                    continue;
                }
                Ok(None) => return,
                Ok(Some(f)) => f,
            };
            let (is_produce, response) = self.handle(frame);
            let Some(response) = response else { continue };
            let hold = self.state().hold_produce;
            if is_produce && hold > 0 {
                held.push(response);
                {
                    let mut st = self.state();
                    st.max_outstanding_produce = st.max_outstanding_produce.max(held.len());
                }
                if held.len() >= hold {
                    for resp in held.drain(..).rev() {
                        socket.write_all(&resp).await.unwrap();
                    }
                }
            } else {
                socket.write_all(&response).await.unwrap();
            }
        }
    }

    /// Returns (is produce, response frame); `None` for acks=0 produce.
    fn handle(&self, mut frame: Bytes) -> (bool, Option<Bytes>) {
        let header = decode_request_header_from_buffer(&mut frame).unwrap();
        let v = header.request_api_version;
        let key = ApiKey::try_from(header.request_api_key).unwrap();
        let corr = header.correlation_id;
        match key {
            ApiKey::ApiVersions => {
                let req = ApiVersionsRequest::decode(&mut frame, v).unwrap();
                assert_eq!(req.client_software_name.as_str(), "keel-client");
                (false, Some(respond(corr, key, v, &self.api_versions())))
            }
            ApiKey::Metadata => {
                let req = MetadataRequest::decode(&mut frame, v).unwrap();
                (false, Some(respond(corr, key, v, &self.metadata(req))))
            }
            ApiKey::Produce => {
                let req = ProduceRequest::decode(&mut frame, v).unwrap();
                let acks = req.acks;
                let resp = self.produce(req);
                (true, (acks != 0).then(|| respond(corr, key, v, &resp)))
            }
            ApiKey::Fetch => {
                let req = FetchRequest::decode(&mut frame, v).unwrap();
                (false, Some(respond(corr, key, v, &self.fetch(req))))
            }
            ApiKey::ListOffsets => {
                let req = ListOffsetsRequest::decode(&mut frame, v).unwrap();
                (false, Some(respond(corr, key, v, &self.list_offsets(req))))
            }
            ApiKey::CreateTopics => {
                let req = CreateTopicsRequest::decode(&mut frame, v).unwrap();
                (false, Some(respond(corr, key, v, &self.create_topics(req))))
            }
            other => panic!("fake broker does not handle {other:?}"),
        }
    }

    fn api_versions(&self) -> ApiVersionsResponse {
        let ranges = [
            (ApiKey::Produce, 0, 13),
            (ApiKey::Fetch, 4, 13),
            (ApiKey::ListOffsets, 1, 10),
            (ApiKey::Metadata, 1, 12),
            (ApiKey::ApiVersions, 0, 4),
            (ApiKey::CreateTopics, 2, 7),
        ];
        let mut resp = ApiVersionsResponse::default();
        resp.api_keys = ranges
            .iter()
            .map(|&(k, lo, hi)| {
                let mut a = ApiVersion::default();
                a.api_key = k as i16;
                a.min_version = lo;
                a.max_version = hi;
                a
            })
            .collect();
        resp
    }

    fn metadata(&self, req: MetadataRequest) -> MetadataResponse {
        let mut st = self.state();
        st.events.push("metadata".into());
        let mut resp = MetadataResponse::default();
        let mut broker = MetadataResponseBroker::default();
        broker.node_id = BrokerId(1);
        broker.host = StrBytes::from_static_str("127.0.0.1");
        broker.port = i32::from(self.addr.port());
        resp.brokers = vec![broker];
        resp.controller_id = BrokerId(1);
        let names: Vec<String> = match req.topics {
            None => st.topics.keys().cloned().collect(),
            Some(ts) => ts
                .iter()
                .filter_map(|t| t.name.as_ref())
                .map(|n| n.0.to_string())
                .collect(),
        };
        for name in names {
            let mut t = MetadataResponseTopic::default();
            t.name = Some(TopicName(StrBytes::from_string(name.clone())));
            match st.topics.get(&name) {
                None => t.error_code = 3,
                Some(&n) => {
                    t.partitions = (0..n)
                        .map(|p| {
                            let mut mp = MetadataResponsePartition::default();
                            mp.partition_index = p;
                            mp.leader_id = BrokerId(1);
                            mp.replica_nodes = vec![BrokerId(1)];
                            mp.isr_nodes = vec![BrokerId(1)];
                            mp
                        })
                        .collect();
                }
            }
            resp.topics.push(t);
        }
        resp
    }

    fn produce(&self, req: ProduceRequest) -> ProduceResponse {
        let mut st = self.state();
        let mut resp = ProduceResponse::default();
        for t in req.topic_data {
            let name = t.name.0.to_string();
            let mut tr = TopicProduceResponse::default();
            tr.name = t.name.clone();
            for p in t.partition_data {
                let key = (name.clone(), p.index);
                let mut pr = PartitionProduceResponse::default();
                pr.index = p.index;
                let fail = st
                    .fail_once
                    .remove(&key)
                    .or(st.fail_always.get(&key).copied());
                if let Some(code) = fail {
                    pr.error_code = code;
                    pr.base_offset = -1;
                    st.events.push(format!("produce:{code}"));
                } else {
                    let records = p.records.unwrap();
                    pr.base_offset = st.append(&key, records);
                    st.events.push("produce:ok".into());
                }
                tr.partition_responses.push(pr);
            }
            resp.responses.push(tr);
        }
        resp
    }

    fn fetch(&self, req: FetchRequest) -> FetchResponse {
        let mut st = self.state();
        st.events.push("fetch".into());
        let mut resp = FetchResponse::default();
        for t in req.topics {
            let name = t.topic.0.to_string();
            let mut tr = FetchableTopicResponse::default();
            tr.topic = t.topic.clone();
            for p in t.partitions {
                let (batches, next) = st
                    .logs
                    .get(&(name.clone(), p.partition))
                    .cloned()
                    .unwrap_or_default();
                let mut data = BytesMut::new();
                for b in &batches {
                    let info = RecordBatchDecoder::decode_batch_info(&mut b.clone()).unwrap();
                    if info[0].min_offset + i64::from(info[0].record_count) > p.fetch_offset {
                        data.extend_from_slice(b);
                    }
                }
                if let Some(tail) = &st.fetch_tail {
                    data.extend_from_slice(tail);
                }
                let mut pd = PartitionData::default();
                pd.partition_index = p.partition;
                pd.high_watermark = next;
                pd.records = Some(data.freeze());
                tr.partitions.push(pd);
            }
            resp.responses.push(tr);
        }
        resp
    }

    fn list_offsets(&self, req: ListOffsetsRequest) -> ListOffsetsResponse {
        let st = self.state();
        let mut resp = ListOffsetsResponse::default();
        for t in req.topics {
            let name = t.name.0.to_string();
            let mut tr = ListOffsetsTopicResponse::default();
            tr.name = t.name.clone();
            for p in t.partitions {
                let next = st
                    .logs
                    .get(&(name.clone(), p.partition_index))
                    .map_or(0, |l| l.1);
                let mut pr = ListOffsetsPartitionResponse::default();
                pr.partition_index = p.partition_index;
                pr.offset = if p.timestamp == -1 { next } else { 0 };
                tr.partitions.push(pr);
            }
            resp.topics.push(tr);
        }
        resp
    }

    fn create_topics(&self, req: CreateTopicsRequest) -> CreateTopicsResponse {
        let mut st = self.state();
        let mut resp = CreateTopicsResponse::default();
        for t in req.topics {
            let name = t.name.0.to_string();
            let mut r = CreatableTopicResult::default();
            r.name = t.name.clone();
            let message = format!("Topic '{name}' already exists.");
            match st.topics.entry(name) {
                std::collections::btree_map::Entry::Occupied(_) => {
                    r.error_code = 36;
                    r.error_message = Some(StrBytes::from_string(message));
                }
                std::collections::btree_map::Entry::Vacant(v) => {
                    v.insert(t.num_partitions);
                }
            }
            resp.topics.push(r);
        }
        resp
    }
}

impl State {
    /// Appends a produced batch, stamping its base offset as a broker does; returns it.
    fn append(&mut self, key: &(String, i32), records: Bytes) -> i64 {
        let info = RecordBatchDecoder::decode_batch_info(&mut records.clone()).unwrap();
        assert_eq!(info.len(), 1, "one batch per partition per request");
        let log = self.logs.entry(key.clone()).or_default();
        let base = log.1;
        let mut stamped = BytesMut::from(&records[..]);
        stamped[..8].copy_from_slice(&base.to_be_bytes());
        log.0.push(stamped.freeze());
        log.1 += i64::from(info[0].record_count);
        base
    }
}

async fn read_frame(socket: &mut TcpStream) -> Option<Bytes> {
    let size = socket.read_i32().await.ok()?;
    let mut buf = vec![0; size as usize];
    socket.read_exact(&mut buf).await.ok()?;
    Some(Bytes::from(buf))
}

fn respond<T: Encodable>(corr: i32, key: ApiKey, version: i16, body: &T) -> Bytes {
    let mut buf = BytesMut::new();
    buf.extend_from_slice(&[0; 4]);
    let mut header = ResponseHeader::default();
    header.correlation_id = corr;
    header
        .encode(&mut buf, key.response_header_version(version))
        .unwrap();
    body.encode(&mut buf, version).unwrap();
    let size = (buf.len() - 4) as i32;
    buf[..4].copy_from_slice(&size.to_be_bytes());
    buf.freeze()
}

/// A control batch (a transaction marker) of one record at offset 0, as a broker writes it.
fn control_batch() -> Bytes {
    use keel_protocol::encode::{encode_records, place_one, Compression, NewRecord, ProducerIds};
    let mut record = NewRecord {
        key: Some(Bytes::from_static(&[0, 0, 0, 1])),
        value: Some(Bytes::from_static(&[0, 0, 0, 0, 0, 0])),
        headers: Vec::new(),
        timestamp: 0,
    }
    .into_wire();
    let producer = ProducerIds {
        producer_id: 7,
        producer_epoch: 0,
        base_sequence: 0,
    };
    place_one(&mut record, 0, producer);
    record.transactional = true;
    record.control = true;
    record.partition_leader_epoch = 0;
    encode_records(&[record], Compression::None).unwrap()
}

/// Fails the test instead of hanging it.
async fn within<F: Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(20), f)
        .await
        .expect("test timed out")
}

/// The fake broker speaks the plain produce path only (no InitProducerId), so these tests
/// run the producer with idempotence off; the idempotent path is tested against real brokers.
fn producer_config() -> ProducerConfig {
    ProducerConfig {
        enable_idempotence: false,
        linger: Duration::from_millis(1),
        retry_backoff: Duration::from_millis(10),
        request_timeout: Duration::from_secs(5),
        ..ProducerConfig::default()
    }
}

// ---------------------------------------------------------------- tests

#[tokio::test]
async fn idempotent_producer_refuses_a_broker_without_init_producer_id() {
    let broker = FakeBroker::start(&[("t", 1)]).await;
    within(async {
        let config = ProducerConfig {
            enable_idempotence: true,
            ..producer_config()
        };
        let err = match Producer::new(broker.client(), config).await {
            Ok(_) => {
                panic!("an idempotent producer started against a broker without InitProducerId")
            }
            Err(e) => e.to_string(),
        };
        assert!(err.contains("enable_idempotence = false"), "{err}");
    })
    .await;
}

#[tokio::test]
async fn producer_pipelines_requests_and_routes_reordered_responses() {
    let broker = FakeBroker::start(&[("t", 1)]).await;
    broker.state().hold_produce = 3;
    within(async {
        let config = ProducerConfig {
            batch_size: 100, // every 200-byte record fills a batch: one request each
            linger: Duration::ZERO,
            ..producer_config()
        };
        let producer = Producer::new(broker.client(), config).await.unwrap();
        let mut deliveries = Vec::new();
        for i in 0..3 {
            let value = format!("{i:0>200}");
            deliveries.push(
                producer
                    .send(ProducerRecord::new("t", value).partition(0))
                    .await
                    .unwrap(),
            );
        }
        for (i, d) in deliveries.into_iter().enumerate() {
            let meta = d.await.unwrap();
            assert_eq!(
                (meta.topic.as_str(), meta.partition, meta.offset),
                ("t", 0, i as i64)
            );
        }
        producer.close().await.unwrap();
    })
    .await;
    let st = broker.state();
    assert_eq!(
        st.max_outstanding_produce, 3,
        "three produce requests in flight at once"
    );
    assert_eq!(st.events.iter().filter(|e| *e == "produce:ok").count(), 3);
}

#[tokio::test]
async fn producer_retries_not_leader_after_metadata_refresh() {
    let broker = FakeBroker::start(&[("t", 2)]).await;
    broker.state().fail_once.insert(("t".into(), 1), 6); // NOT_LEADER_OR_FOLLOWER
    let meta = within(async {
        let producer = Producer::new(broker.client(), producer_config())
            .await
            .unwrap();
        let d = producer
            .send(ProducerRecord::new("t", "v").partition(1))
            .await
            .unwrap();
        producer.flush().await.unwrap();
        d.await.unwrap()
    })
    .await;
    assert_eq!((meta.partition, meta.offset), (1, 0));
    let events = broker.events();
    let failed = events
        .iter()
        .position(|e| e == "produce:6")
        .expect("first produce failed");
    let ok = events
        .iter()
        .position(|e| e == "produce:ok")
        .expect("retry succeeded");
    assert!(
        events[failed..ok].iter().any(|e| e == "metadata"),
        "metadata refreshed between the failure and the retry: {events:?}"
    );
    assert_eq!(
        events.iter().filter(|e| e.starts_with("produce")).count(),
        2
    );
}

#[tokio::test]
async fn producer_fails_non_retriable_errors_with_their_name() {
    let broker = FakeBroker::start(&[("t", 1)]).await;
    broker.state().fail_always.insert(("t".into(), 0), 10); // MESSAGE_TOO_LARGE
    within(async {
        let producer = Producer::new(broker.client(), producer_config())
            .await
            .unwrap();
        let d = producer.send(ProducerRecord::new("t", "v")).await.unwrap();
        let err = d.await.unwrap_err();
        assert_eq!(err.kafka_code(), Some(10));
        assert!(!err.is_retriable());
        assert_eq!(
            err.to_string(),
            "produce to t-0: MESSAGE_TOO_LARGE (kafka error 10)"
        );
        let flushed = producer.flush().await.unwrap_err();
        assert_eq!(flushed.kafka_code(), Some(10), "flush reports the failure");
    })
    .await;
    let produces = broker
        .events()
        .iter()
        .filter(|e| e.starts_with("produce"))
        .count();
    assert_eq!(produces, 1, "no retry of a non-retriable error");
}

#[tokio::test]
async fn keyed_records_follow_murmur2_and_acks_zero_resolves_without_response() {
    let broker = FakeBroker::start(&[("t", 4)]).await;
    within(async {
        let config = ProducerConfig {
            acks: Acks::None,
            ..producer_config()
        };
        let producer = Producer::new(broker.client(), config).await.unwrap();
        let d = producer
            .send(ProducerRecord::new("t", "v").key("foobar"))
            .await
            .unwrap();
        let meta = d.await.unwrap();
        let expected = keel_client::partitioner::partition_for_key(b"foobar", 4);
        assert_eq!((meta.partition, meta.offset), (expected, -1));
        producer.close().await.unwrap();
    })
    .await;
    // The record reached the broker even though nothing was answered.
    let st = broker.state();
    let p = keel_client::partitioner::partition_for_key(b"foobar", 4);
    assert_eq!(st.logs.get(&("t".to_owned(), p)).map(|l| l.1), Some(1));
}

#[tokio::test]
async fn consumer_decodes_batches_and_skips_records_below_position() {
    let broker = FakeBroker::start(&[("t", 1)]).await;
    within(async {
        let config = ProducerConfig {
            compression: Compression::Lz4,
            ..producer_config()
        };
        let producer = Producer::new(broker.client(), config).await.unwrap();
        for round in 0..2 {
            for i in 0..5 {
                let v = format!("v{}", round * 5 + i);
                producer
                    .send(ProducerRecord::new("t", v).key("k").header("h", "x"))
                    .await
                    .unwrap();
            }
            producer.flush().await.unwrap(); // one batch per round: offsets 0-4, 5-9
        }
        producer.close().await.unwrap();
    })
    .await;
    {
        let mut st = broker.state();
        // A transaction marker at offset 10, and a truncated batch at the end of each fetch.
        let control = control_batch();
        st.append(&("t".into(), 0), control);
        let tail = st.logs[&("t".to_owned(), 0)].0[0].slice(..30);
        st.fetch_tail = Some(tail);
    }
    let records = within(async {
        let mut consumer = Consumer::new(broker.client(), ConsumerConfig::default())
            .await
            .unwrap();
        consumer.assign("t", &[0], Offset::At(3)).await.unwrap();
        assert_eq!(consumer.position("t", 0), Some(3));
        let mut records = Vec::new();
        for _ in 0..10 {
            records.extend(consumer.poll().await.unwrap());
            if consumer.position("t", 0) == Some(11) {
                break;
            }
        }
        assert_eq!(
            consumer.position("t", 0),
            Some(11),
            "advanced past the control batch"
        );
        records
    })
    .await;
    let offsets: Vec<i64> = records.iter().map(|r| r.offset).collect();
    assert_eq!(offsets, (3..10).collect::<Vec<i64>>());
    for r in &records {
        assert_eq!(
            r.value.as_deref(),
            Some(format!("v{}", r.offset).as_bytes())
        );
        assert_eq!(r.key.as_deref(), Some(&b"k"[..]));
        assert_eq!(r.headers, vec![("h".to_owned(), Some(Bytes::from("x")))]);
    }
}

#[tokio::test]
async fn consumer_resolves_earliest_and_latest_and_rejects_unknown_topics() {
    let broker = FakeBroker::start(&[("t", 2)]).await;
    within(async {
        let producer = Producer::new(broker.client(), producer_config())
            .await
            .unwrap();
        for i in 0..4 {
            producer
                .send(ProducerRecord::new("t", format!("{i}")).partition(1))
                .await
                .unwrap();
        }
        producer.close().await.unwrap();

        let mut consumer = Consumer::new(broker.client(), ConsumerConfig::default())
            .await
            .unwrap();
        let parts = consumer.assign_all("t", Offset::Latest).await.unwrap();
        assert_eq!(parts, vec![0, 1]);
        assert_eq!(consumer.position("t", 1), Some(4));
        consumer.seek("t", 1, Offset::Earliest).await.unwrap();
        assert_eq!(consumer.position("t", 1), Some(0));

        let err = consumer
            .assign("missing", &[0], Offset::Earliest)
            .await
            .unwrap_err();
        assert_eq!(err.kafka_code(), Some(3), "{err}");
        assert!(err.to_string().contains("missing"), "{err}");
        let err = consumer
            .assign("t", &[5], Offset::Earliest)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("no partition 5"), "{err}");
    })
    .await;
}

#[tokio::test]
async fn admin_creates_lists_and_names_already_existing_topics() {
    let broker = FakeBroker::start(&[("old", 1)]).await;
    within(async {
        let admin = Admin::new(broker.client()).await.unwrap();
        let spec = |name: &str| TopicSpec {
            name: name.into(),
            partitions: 3,
            replication_factor: 1,
            configs: vec![],
        };
        admin.create_topics(&[spec("new")]).await.unwrap();
        assert_eq!(admin.list_topics().await.unwrap(), vec!["new", "old"]);
        let err = admin.create_topics(&[spec("old")]).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            "create topic old (Topic 'old' already exists.): TOPIC_ALREADY_EXISTS (kafka error 36)"
        );
        let described = admin
            .describe_topics(&["new".into(), "nope".into()])
            .await
            .unwrap();
        assert_eq!(described[0].partitions.len(), 3);
        assert_eq!(described[0].partitions[2].leader, 1);
        assert_eq!(
            described[1].error.as_deref(),
            Some("UNKNOWN_TOPIC_OR_PARTITION")
        );
        let brokers = admin.brokers().await.unwrap();
        assert_eq!(brokers.len(), 1);
        assert_eq!(brokers[0].port, i32::from(broker.addr.port()));
    })
    .await;
}

#[tokio::test]
async fn refused_connection_names_the_bootstrap_server() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let err = within(Admin::new(ClientConfig::new(&addr.to_string())))
        .await
        .err()
        .unwrap();
    assert_eq!(
        err.to_string(),
        format!("no broker at {addr} — start one with `keel broker`")
    );
}

#[tokio::test]
async fn stream_yields_records_in_order() {
    use futures_util::StreamExt;
    let broker = FakeBroker::start(&[("t", 1)]).await;
    within(async {
        let producer = Producer::new(broker.client(), producer_config())
            .await
            .unwrap();
        for i in 0..20 {
            producer
                .send(ProducerRecord::new("t", format!("{i}")))
                .await
                .unwrap();
        }
        producer.close().await.unwrap();
        let mut consumer = Consumer::new(broker.client(), ConsumerConfig::default())
            .await
            .unwrap();
        consumer.assign("t", &[0], Offset::Earliest).await.unwrap();
        let records: Vec<_> = consumer.into_stream().take(20).collect().await;
        let offsets: Vec<i64> = records.into_iter().map(|r| r.unwrap().offset).collect();
        assert_eq!(offsets, (0..20).collect::<Vec<i64>>());
    })
    .await;
}
