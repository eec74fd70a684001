//! A small blocking Kafka connection built only on the `kafka-protocol` codecs.
//!
//! It is the suites' independent oracle (it shares no code with keel-client) and the way
//! to put malformed bytes on the wire. Versions are negotiated with ApiVersions and capped at
//! versions that still address topics by name.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{
    create_topics_request::{CreatableTopic, CreatableTopicConfig},
    fetch_request::{FetchPartition, FetchTopic},
    list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic},
    metadata_request::MetadataRequestTopic,
    produce_request::{PartitionProduceData, TopicProduceData},
    produce_response::PartitionProduceResponse,
    ApiVersionsRequest, ApiVersionsResponse, BrokerId, CreateTopicsRequest, FetchRequest,
    ListOffsetsRequest, MetadataRequest, MetadataResponse, ProduceRequest, RequestHeader,
    ResponseHeader, TopicName,
};
use kafka_protocol::messages::{InitProducerIdRequest, ProducerId};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, Request, StrBytes};
use kafka_protocol::records::{Compression, Record, RecordBatchDecoder};
use keel_protocol::encode::{NewRecord, ProducerIds};

use crate::data::TestRecord;

/// Socket read/write timeout of a [`RawConn`].
pub const IO_TIMEOUT: Duration = Duration::from_secs(15);
/// Largest response frame the connection accepts.
const MAX_RESPONSE: usize = 256 << 20;
const CLIENT_ID: &str = "keel-tests-raw";

/// Kafka error codes the suites assert on.
pub mod codes {
    pub const NONE: i16 = 0;
    pub const CORRUPT_MESSAGE: i16 = 2;
    pub const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
    pub const NOT_LEADER_OR_FOLLOWER: i16 = 6;
    pub const MESSAGE_TOO_LARGE: i16 = 10;
    pub const UNSUPPORTED_VERSION: i16 = 35;
    pub const TOPIC_ALREADY_EXISTS: i16 = 36;
    pub const INVALID_REQUEST: i16 = 42;
    pub const OUT_OF_ORDER_SEQUENCE_NUMBER: i16 = 45;
    pub const INVALID_PRODUCER_EPOCH: i16 = 47;
    pub const UNKNOWN_PRODUCER_ID: i16 = 59;
    pub const INVALID_RECORD: i16 = 87;
}

/// Highest version this connection uses per API (all address topics by name).
fn version_cap(api_key: i16) -> i16 {
    match api_key {
        0 => 9,  // Produce
        1 => 12, // Fetch
        2 => 7,  // ListOffsets
        3 => 12, // Metadata
        18 => 3, // ApiVersions
        19 => 7, // CreateTopics
        22 => 4, // InitProducerId
        _ => 0,
    }
}

/// What a read from a connection saw within a timeout.
#[derive(Debug, PartialEq, Eq)]
pub enum ReadOutcome {
    /// The peer closed (read returned 0) or reset the connection.
    Closed,
    /// The peer sent this many bytes.
    Data(usize),
    /// Nothing happened within the timeout.
    TimedOut,
}

/// One blocking connection to a broker.
pub struct RawConn {
    stream: TcpStream,
    next_correlation: i32,
    versions: Option<HashMap<i16, (i16, i16)>>,
}

impl RawConn {
    pub fn connect(addr: SocketAddr) -> Result<Self> {
        let stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT)
            .with_context(|| format!("connect to {addr}"))?;
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        stream.set_write_timeout(Some(IO_TIMEOUT))?;
        stream.set_nodelay(true)?;
        Ok(RawConn {
            stream,
            next_correlation: 1,
            versions: None,
        })
    }

    /// Writes raw bytes (possibly garbage) to the socket.
    pub fn write_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)?;
        self.stream.flush()
    }

    /// Half-closes the connection: the broker sees end of input.
    pub fn shutdown_write(&mut self) -> io::Result<()> {
        self.stream.shutdown(Shutdown::Write)
    }

    /// Waits up to `timeout` for the broker to close the connection or send something.
    pub fn read_outcome(&mut self, timeout: Duration) -> ReadOutcome {
        self.stream
            .set_read_timeout(Some(timeout))
            .expect("set_read_timeout");
        let mut buf = [0u8; 4096];
        let outcome = match self.stream.read(&mut buf) {
            Ok(0) => ReadOutcome::Closed,
            Ok(n) => ReadOutcome::Data(n),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                ReadOutcome::TimedOut
            }
            Err(_) => ReadOutcome::Closed,
        };
        self.stream
            .set_read_timeout(Some(IO_TIMEOUT))
            .expect("set_read_timeout");
        outcome
    }

    /// Reads and discards until the broker closes the connection; false if it is still open
    /// after `timeout` (or keeps sending more than 1 MiB).
    pub fn closed_within(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut received = 0usize;
        for _ in 0..1024 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            match self.read_outcome(left) {
                ReadOutcome::Closed => return true,
                ReadOutcome::TimedOut => return false,
                ReadOutcome::Data(n) => {
                    received += n;
                    if received > 1 << 20 {
                        return false;
                    }
                }
            }
        }
        false
    }

    fn correlation(&mut self) -> i32 {
        let c = self.next_correlation;
        self.next_correlation += 1;
        c
    }

    /// Sends `req` as `version` with a correct header; returns the correlation id.
    pub fn send<R: Request>(&mut self, version: i16, req: &R) -> Result<i32> {
        let correlation_id = self.correlation();
        let mut header = RequestHeader::default();
        header.request_api_key = R::KEY;
        header.request_api_version = version;
        header.correlation_id = correlation_id;
        header.client_id = Some(StrBytes::from_static_str(CLIENT_ID));
        let mut body = BytesMut::new();
        header.encode(&mut body, R::header_version(version))?;
        req.encode(&mut body, version)?;
        self.write_frame(&body)?;
        Ok(correlation_id)
    }

    /// Writes `body` with its 4-byte size prefix.
    pub fn write_frame(&mut self, body: &[u8]) -> Result<()> {
        let mut frame = Vec::with_capacity(body.len() + 4);
        frame.put_i32(body.len() as i32);
        frame.extend_from_slice(body);
        self.write_raw(&frame).context("write request")
    }

    /// Reads one size-prefixed response frame.
    pub fn read_frame(&mut self) -> Result<Bytes> {
        let mut size = [0u8; 4];
        self.stream
            .read_exact(&mut size)
            .context("read response size")?;
        let size = i32::from_be_bytes(size);
        ensure!(
            (0..=MAX_RESPONSE as i32).contains(&size),
            "bad response size {size}"
        );
        let mut body = vec![0u8; size as usize];
        self.stream
            .read_exact(&mut body)
            .context("read response body")?;
        Ok(Bytes::from(body))
    }

    /// Reads the response to the request sent with `correlation_id` as `version`.
    pub fn recv<R: Request>(&mut self, version: i16, correlation_id: i32) -> Result<R::Response> {
        let mut frame = self.read_frame()?;
        let header = ResponseHeader::decode(&mut frame, R::Response::header_version(version))?;
        ensure!(
            header.correlation_id == correlation_id,
            "correlation id {} in response, {correlation_id} expected",
            header.correlation_id
        );
        let resp = R::Response::decode(&mut frame, version)
            .with_context(|| format!("decode response to api key {} v{version}", R::KEY))?;
        ensure!(
            !frame.has_remaining(),
            "{} bytes left after the response to api key {} v{version}",
            frame.remaining(),
            R::KEY
        );
        Ok(resp)
    }

    /// Sends `req` as `version` and reads its response.
    pub fn request<R: Request>(&mut self, version: i16, req: &R) -> Result<R::Response> {
        let c = self.send(version, req)?;
        self.recv::<R>(version, c)
    }

    /// ApiVersions at `version` (no negotiation).
    pub fn api_versions(&mut self, version: i16) -> Result<ApiVersionsResponse> {
        let mut req = ApiVersionsRequest::default();
        if version >= 3 {
            req.client_software_name = StrBytes::from_static_str("keel-tests");
            req.client_software_version = StrBytes::from_static_str("0.1.0");
        }
        self.request(version, &req)
    }

    /// The version to use for `R`: the highest that the broker, the codec and
    /// [`version_cap`] all allow.
    pub fn version_for<R: Request>(&mut self) -> Result<i16> {
        if self.versions.is_none() {
            let resp = self.api_versions(3).or_else(|_| {
                // Some brokers answer v3 badly; v0 is the one every broker supports.
                self.api_versions(0)
            })?;
            ensure!(
                resp.error_code == 0,
                "ApiVersions error {}",
                resp.error_code
            );
            self.versions = Some(
                resp.api_keys
                    .iter()
                    .map(|k| (k.api_key, (k.min_version, k.max_version)))
                    .collect(),
            );
        }
        let versions = self.versions.as_ref().expect("set above");
        let Some(&(min, max)) = versions.get(&R::KEY) else {
            bail!("broker does not support api key {}", R::KEY)
        };
        let v = max.min(version_cap(R::KEY)).min(R::VERSIONS.max);
        ensure!(
            v >= min.max(R::VERSIONS.min),
            "no common version for api key {}: broker {min}..={max}, codec {}",
            R::KEY,
            R::VERSIONS
        );
        Ok(v)
    }

    /// Sends `req` at the negotiated version.
    pub fn call<R: Request>(&mut self, req: &R) -> Result<R::Response> {
        let v = self.version_for::<R>()?;
        self.request(v, req)
    }

    /// Creates `name` with `partitions` partitions, replication factor 1 and `configs`.
    /// Returns the topic's error code (0, or 36 if it exists).
    pub fn create_topic(
        &mut self,
        name: &str,
        partitions: i32,
        configs: &[(&str, &str)],
    ) -> Result<i16> {
        let mut topic = CreatableTopic::default();
        topic.name = topic_name(name);
        topic.num_partitions = partitions;
        topic.replication_factor = 1;
        topic.configs = configs
            .iter()
            .map(|(k, v)| {
                let mut c = CreatableTopicConfig::default();
                c.name = StrBytes::from_string(k.to_string());
                c.value = Some(StrBytes::from_string(v.to_string()));
                c
            })
            .collect();
        let mut req = CreateTopicsRequest::default();
        req.topics = vec![topic];
        req.timeout_ms = 10_000;
        let resp = self.call(&req)?;
        let t = resp
            .topics
            .first()
            .context("CreateTopics response without topics")?;
        Ok(t.error_code)
    }

    /// Creates `name` and fails unless the broker says it succeeded.
    pub fn create_topic_ok(&mut self, name: &str, partitions: i32) -> Result<()> {
        let code = self.create_topic(name, partitions, &[])?;
        ensure!(
            code == codes::NONE,
            "create topic {name}: error code {code}"
        );
        Ok(())
    }

    /// Metadata for `topics` (all topics when `None`), without auto-creation.
    pub fn metadata(&mut self, topics: Option<&[&str]>) -> Result<MetadataResponse> {
        let mut req = MetadataRequest::default();
        req.topics = topics.map(|ts| {
            ts.iter()
                .map(|t| {
                    let mut m = MetadataRequestTopic::default();
                    m.name = Some(topic_name(t));
                    m
                })
                .collect()
        });
        req.allow_auto_topic_creation = false;
        self.call(&req)
    }

    /// Produces one already-encoded record batch (or any bytes) to `topic`/`partition`.
    pub fn produce_bytes(
        &mut self,
        topic: &str,
        partition: i32,
        records: Bytes,
        acks: i16,
    ) -> Result<PartitionProduceResponse> {
        let resp = self.call(&produce_request(topic, partition, records, acks))?;
        let t = resp
            .responses
            .into_iter()
            .next()
            .context("produce response without topics")?;
        t.partition_responses
            .into_iter()
            .next()
            .context("produce response without partitions")
    }

    /// Produces `records` as one batch; fails unless the broker returns no error.
    pub fn produce_ok(
        &mut self,
        topic: &str,
        partition: i32,
        records: &[TestRecord],
        compression: Compression,
    ) -> Result<i64> {
        let resp = self.produce_bytes(topic, partition, encode_batch(records, compression)?, -1)?;
        ensure!(
            resp.error_code == codes::NONE,
            "produce to {topic}/{partition}: error code {} ({:?})",
            resp.error_code,
            resp.error_message
        );
        Ok(resp.base_offset)
    }

    /// A new idempotent producer id and epoch (InitProducerId); fails on an error code.
    pub fn init_producer_id(&mut self) -> Result<(i64, i16)> {
        let req = InitProducerIdRequest::default()
            .with_transactional_id(None)
            .with_transaction_timeout_ms(-1)
            .with_producer_id(ProducerId(-1))
            .with_producer_epoch(-1);
        let resp = self.call(&req)?;
        ensure!(
            resp.error_code == codes::NONE,
            "init producer id: error {}",
            resp.error_code
        );
        Ok((resp.producer_id.0, resp.producer_epoch))
    }

    /// The next epoch of an issued producer id (InitProducerId v4 with the id and epoch).
    pub fn bump_epoch(&mut self, producer_id: i64, epoch: i16) -> Result<(i64, i16)> {
        let req = InitProducerIdRequest::default()
            .with_transactional_id(None)
            .with_transaction_timeout_ms(-1)
            .with_producer_id(ProducerId(producer_id))
            .with_producer_epoch(epoch);
        let resp = self.call(&req)?;
        ensure!(
            resp.error_code == codes::NONE,
            "bump epoch: error {}",
            resp.error_code
        );
        Ok((resp.producer_id.0, resp.producer_epoch))
    }

    /// Produces `values` as one batch of `producer` (id, epoch, base sequence), acks=all.
    pub fn produce_idempotent(
        &mut self,
        topic: &str,
        partition: i32,
        producer: ProducerIds,
        values: &[&str],
    ) -> Result<PartitionProduceResponse> {
        let records = values.iter().map(|v| NewRecord::value(v.to_string(), 0));
        let batch = keel_protocol::encode::encode_batch(records, Compression::None, producer)?;
        self.produce_bytes(topic, partition, batch, -1)
    }

    /// The topic's id from Metadata (nil if the topic is unknown).
    pub fn topic_id(&mut self, topic: &str) -> Result<uuid::Uuid> {
        let md = self.metadata(Some(&[topic]))?;
        Ok(md.topics.first().map(|t| t.topic_id).unwrap_or_default())
    }

    /// One Fetch of `topic`/`partition` from `offset`.
    pub fn fetch_once(&mut self, topic: &str, partition: i32, offset: i64) -> Result<Fetched> {
        // Fetch v13+ names topics by id only.
        let req = fetch_request(topic, self.topic_id(topic)?, partition, offset);
        let resp = self.call(&req)?;
        ensure!(
            resp.error_code == 0,
            "fetch: top-level error {}",
            resp.error_code
        );
        let p = resp
            .responses
            .into_iter()
            .flat_map(|t| t.partitions)
            .find(|p| p.partition_index == partition)
            .context("fetch response without the partition")?;
        let mut fetched = match p.records {
            Some(bytes) => decode_complete_batches(bytes)?,
            None => Fetched::default(),
        };
        fetched.error_code = p.error_code;
        fetched.high_watermark = p.high_watermark;
        Ok(fetched)
    }

    /// Fetches from `offset` until `count` records were read or `timeout` passed.
    pub fn fetch_n(
        &mut self,
        topic: &str,
        partition: i32,
        mut offset: i64,
        count: usize,
        timeout: Duration,
    ) -> Result<Vec<Record>> {
        Ok(self
            .fetch_n_batches(topic, partition, &mut offset, count, timeout)?
            .records)
    }

    /// Like [`RawConn::fetch_n`], also reporting the codecs of the batches read and the
    /// offset after the last record (in `offset`).
    pub fn fetch_n_batches(
        &mut self,
        topic: &str,
        partition: i32,
        offset: &mut i64,
        count: usize,
        timeout: Duration,
    ) -> Result<Fetched> {
        let deadline = Instant::now() + timeout;
        let mut out = Fetched::default();
        for _ in 0..100_000 {
            if out.records.len() >= count {
                break;
            }
            ensure!(
                Instant::now() < deadline,
                "fetched {} of {count} records from {topic}/{partition} within {timeout:?}",
                out.records.len()
            );
            let f = self.fetch_once(topic, partition, *offset)?;
            ensure!(
                f.error_code == 0,
                "fetch {topic}/{partition}@{offset}: error {}",
                f.error_code
            );
            out.high_watermark = f.high_watermark;
            for c in f.codecs {
                if !out.codecs.contains(&c) {
                    out.codecs.push(c);
                }
            }
            for r in f.records {
                // A fetch may start inside a batch: skip records before the requested offset.
                if r.offset >= *offset {
                    *offset = r.offset + 1;
                    out.records.push(r);
                }
            }
        }
        Ok(out)
    }

    /// The earliest (`-2`) or latest (`-1`) offset of `topic`/`partition`.
    pub fn list_offset(&mut self, topic: &str, partition: i32, timestamp: i64) -> Result<i64> {
        let mut p = ListOffsetsPartition::default();
        p.partition_index = partition;
        p.timestamp = timestamp;
        p.current_leader_epoch = -1;
        let mut t = ListOffsetsTopic::default();
        t.name = topic_name(topic);
        t.partitions = vec![p];
        let mut req = ListOffsetsRequest::default();
        req.replica_id = BrokerId(-1);
        req.topics = vec![t];
        let resp = self.call(&req)?;
        let p = resp
            .topics
            .into_iter()
            .flat_map(|t| t.partitions)
            .next()
            .context("ListOffsets response without partitions")?;
        ensure!(p.error_code == 0, "ListOffsets error {}", p.error_code);
        Ok(p.offset)
    }
}

/// Whether stored batches show that a client really used `want`: at least one batch is
/// compressed with it and every other one is uncompressed. librdkafka and kafka-python
/// both send a batch uncompressed when compressing would not make it smaller (a small
/// batch of random values), so which batches are compressed depends on timing; a client
/// that silently dropped the codec (as librdkafka does when ApiVersions makes it think
/// the broker lacks it) stores no batch with it.
pub fn used_codec(stored: &[Compression], want: Compression) -> bool {
    stored.contains(&want) && stored.iter().all(|c| *c == want || *c == Compression::None)
}

/// The codec named as on the kcat and Python clients' command lines.
pub fn codec_of(name: &str) -> Compression {
    match name {
        "none" => Compression::None,
        "gzip" => Compression::Gzip,
        "snappy" => Compression::Snappy,
        "lz4" => Compression::Lz4,
        "zstd" => Compression::Zstd,
        other => panic!("unknown codec {other}"),
    }
}

/// A Produce of `records` (one or more encoded batches) to one partition, 10 s timeout.
pub fn produce_request(topic: &str, partition: i32, records: Bytes, acks: i16) -> ProduceRequest {
    let mut p = PartitionProduceData::default();
    p.index = partition;
    p.records = Some(records);
    let mut t = TopicProduceData::default();
    t.name = topic_name(topic);
    t.partition_data = vec![p];
    let mut req = ProduceRequest::default();
    req.acks = acks;
    req.timeout_ms = 10_000;
    req.topic_data = vec![t];
    req
}

/// A consumer's wish for one partition of a Fetch: from `offset`, up to `max_bytes`, no
/// epochs.
pub fn consumer_fetch_partition(partition: i32, offset: i64, max_bytes: i32) -> FetchPartition {
    let mut p = FetchPartition::default();
    p.partition = partition;
    p.fetch_offset = offset;
    p.current_leader_epoch = -1;
    p.last_fetched_epoch = -1;
    p.log_start_offset = -1;
    p.partition_max_bytes = max_bytes;
    p
}

/// A consumer's Fetch of one partition from `offset` (no session, up to 4 MiB of it, waiting
/// up to 200 ms for a first byte).
pub fn fetch_request(
    topic: &str,
    topic_id: uuid::Uuid,
    partition: i32,
    offset: i64,
) -> FetchRequest {
    let p = consumer_fetch_partition(partition, offset, 4 << 20);
    let mut t = FetchTopic::default();
    t.topic = topic_name(topic);
    t.topic_id = topic_id;
    t.partitions = vec![p];
    let mut req = FetchRequest::default();
    req.replica_id = BrokerId(-1);
    req.max_wait_ms = 200;
    req.min_bytes = 1;
    req.max_bytes = 16 << 20;
    req.session_id = 0;
    req.session_epoch = -1;
    req.topics = vec![t];
    req
}

pub fn topic_name(name: &str) -> TopicName {
    TopicName(StrBytes::from_string(name.to_string()))
}

/// Encodes `records` as one v2 record batch with base offset 0 (empty input: no batch).
pub fn encode_batch(records: &[TestRecord], compression: Compression) -> Result<Bytes> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as i64;
    let records = records.iter().map(|r| NewRecord {
        key: Some(Bytes::from(r.key.clone())),
        value: Some(Bytes::from(r.value.clone())),
        headers: r
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), Some(Bytes::from(v.clone()))))
            .collect(),
        timestamp: now,
    });
    Ok(keel_protocol::encode::encode_batch(
        records,
        compression,
        ProducerIds::NONE,
    )?)
}

/// What a fetch returned.
#[derive(Debug, Default)]
pub struct Fetched {
    pub error_code: i16,
    pub high_watermark: i64,
    /// Records of complete batches, control records left out.
    pub records: Vec<Record>,
    /// The distinct codecs of the batches, in order of appearance.
    pub codecs: Vec<Compression>,
}

/// Decodes every complete batch in `bytes`; a partial batch at the end (which a broker may
/// send when it cuts a response at the byte limit) is ignored.
pub fn decode_complete_batches(bytes: Bytes) -> Result<Fetched> {
    let mut complete = 0usize;
    let mut guard = 0;
    while bytes.len() - complete >= 12 && guard < 1_000_000 {
        guard += 1;
        let len = i32::from_be_bytes(bytes[complete + 8..complete + 12].try_into()?);
        ensure!(len > 0, "bad batch length {len} at {complete}");
        let end = complete + 12 + len as usize;
        if end > bytes.len() {
            break;
        }
        complete = end;
    }
    let mut whole = bytes.slice(..complete);
    let mut out = Fetched::default();
    for set in RecordBatchDecoder::decode_all(&mut whole)? {
        if !out.codecs.contains(&set.compression) {
            out.codecs.push(set.compression);
        }
        out.records
            .extend(set.records.into_iter().filter(|r| !r.control));
    }
    Ok(out)
}

/// A record as the suites compare it: key, value, headers.
pub fn to_test_record(r: &Record) -> TestRecord {
    TestRecord {
        key: r.key.as_ref().map(|k| k.to_vec()).unwrap_or_default(),
        value: r.value.as_ref().map(|v| v.to_vec()).unwrap_or_default(),
        headers: r
            .headers
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_string(),
                    v.as_ref().map(|v| v.to_vec()).unwrap_or_default(),
                )
            })
            .collect(),
    }
}

/// A request header encoded by hand, for versions and keys the codecs refuse.
pub fn raw_header(api_key: i16, version: i16, correlation_id: i32, flexible: bool) -> BytesMut {
    let mut b = BytesMut::new();
    b.put_i16(api_key);
    b.put_i16(version);
    b.put_i32(correlation_id);
    b.put_i16(CLIENT_ID.len() as i16);
    b.put_slice(CLIENT_ID.as_bytes());
    if flexible {
        b.put_u8(0); // no tagged fields
    }
    b
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::generate;

    #[test]
    fn batches_round_trip_through_the_codec() {
        let recs = generate("k", 50, 100, 2, 1);
        for c in [Compression::None, Compression::Gzip, Compression::Lz4] {
            let bytes = encode_batch(&recs, c).unwrap();
            let mut twice = BytesMut::from(&bytes[..]);
            twice.extend_from_slice(&bytes);
            // A trailing partial batch is ignored.
            twice.extend_from_slice(&bytes[..30]);
            let got = decode_complete_batches(twice.freeze()).unwrap();
            assert_eq!(got.codecs, [c]);
            let got: Vec<_> = got.records.iter().map(to_test_record).collect();
            assert_eq!(got.len(), 100);
            assert_eq!(got[..50], recs[..]);
            assert_eq!(got[50..], recs[..]);
        }
    }

    #[test]
    fn records_go_into_one_batch() {
        let recs = generate("k", 20, 10, 1, 2);
        let bytes = encode_batch(&recs, Compression::None).unwrap();
        let len = i32::from_be_bytes(bytes[8..12].try_into().unwrap()) as usize;
        assert_eq!(len + 12, bytes.len(), "more than one batch");
        let base_sequence = i32::from_be_bytes(bytes[53..57].try_into().unwrap());
        assert_eq!(base_sequence, -1);
        let count = i32::from_be_bytes(bytes[57..61].try_into().unwrap());
        assert_eq!(count, 20);
    }

    #[test]
    fn raw_header_matches_the_codec() {
        let mut h = RequestHeader::default();
        h.request_api_key = 18;
        h.request_api_version = 3;
        h.correlation_id = 7;
        h.client_id = Some(StrBytes::from_static_str(CLIENT_ID));
        let mut b = BytesMut::new();
        h.encode(&mut b, 2).unwrap();
        assert_eq!(raw_header(18, 3, 7, true), b);
        let mut b1 = BytesMut::new();
        h.encode(&mut b1, 1).unwrap();
        assert_eq!(raw_header(18, 3, 7, false), b1);
    }
}
