//! Malformed and hostile input on the Kafka port. After each case the broker must answer
//! with the error Kafka gives (or close that connection), and keep serving everyone else.

use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiVersionsRequest, ApiVersionsResponse, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use kafka_protocol::records::Compression;
use keel_tests::data::{generate, TestRecord};
use keel_tests::raw::{codes, encode_batch, raw_header, to_test_record, RawConn, ReadOutcome};
use keel_tests::{BrokerOpts, TestBroker};

/// How long the broker gets to close a connection it must drop.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);
const ALIVE: &str = "alive";

fn start() -> TestBroker {
    let b = TestBroker::start(BrokerOpts::default());
    RawConn::connect(b.kafka_addr())
        .unwrap()
        .create_topic_ok(ALIVE, 1)
        .unwrap();
    b
}

/// A fresh connection produces one record and reads it back: the broker still serves.
#[track_caller]
fn assert_serves(b: &TestBroker, tag: &str) {
    let mut c = RawConn::connect(b.kafka_addr())
        .unwrap_or_else(|e| panic!("after {tag}: cannot connect: {e:#}"));
    let rec = TestRecord {
        key: tag.as_bytes().to_vec(),
        value: format!("still serving after {tag}").into_bytes(),
        headers: vec![("h".into(), b"1".to_vec())],
    };
    let offset = c
        .produce_ok(ALIVE, 0, std::slice::from_ref(&rec), Compression::None)
        .unwrap_or_else(|e| panic!("after {tag}: produce failed: {e:#}"));
    let got = c
        .fetch_n(ALIVE, 0, offset, 1, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("after {tag}: fetch failed: {e:#}"));
    assert_eq!(
        to_test_record(&got[0]),
        rec,
        "after {tag}: fetched another record"
    );
}

#[track_caller]
fn assert_closed(c: &mut RawConn, what: &str) {
    assert!(
        c.closed_within(CLOSE_TIMEOUT),
        "{what}: the broker kept the connection open for {CLOSE_TIMEOUT:?}"
    );
}

/// Resident set size of `pid` in KiB, from /proc.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS in /proc/<pid>/status")
}

fn frame(body: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(body.len() + 4);
    f.put_i32(body.len() as i32);
    f.extend_from_slice(body);
    f
}

fn api_versions_v3_body() -> BytesMut {
    let mut req = ApiVersionsRequest::default();
    req.client_software_name = StrBytes::from_static_str("keel-tests");
    req.client_software_version = StrBytes::from_static_str("0.1.0");
    let mut body = BytesMut::new();
    req.encode(&mut body, 3).unwrap();
    body
}

#[test]
fn garbage_bytes_close_the_connection() {
    let b = start();
    // Text where a size prefix belongs: "GET " is a 1.2 GB frame.
    let mut c = RawConn::connect(b.kafka_addr()).unwrap();
    c.write_raw(b"GET / HTTP/1.1\r\nHost: keel\r\n\r\n")
        .unwrap();
    assert_closed(&mut c, "an HTTP request");
    assert_serves(&b, "an HTTP request");

    // A small, well-sized frame full of junk (api key 0xdead is negative).
    let mut c = RawConn::connect(b.kafka_addr()).unwrap();
    c.write_raw(&frame(&[0xde, 0xad, 0xbe, 0xef].repeat(8)))
        .unwrap();
    assert_closed(&mut c, "a frame of junk");
    assert_serves(&b, "a frame of junk");
}

#[test]
fn truncated_frame_then_close() {
    let b = start();
    let mut body = raw_header(18, 3, 1, true);
    body.extend_from_slice(&api_versions_v3_body());
    let whole = frame(&body);
    let mut c = RawConn::connect(b.kafka_addr()).unwrap();
    c.write_raw(&whole[..whole.len() / 2]).unwrap();
    c.shutdown_write().unwrap();
    assert_closed(&mut c, "half a frame, then end of input");
    assert_serves(&b, "a truncated frame");

    // Only part of the size prefix.
    let mut c = RawConn::connect(b.kafka_addr()).unwrap();
    c.write_raw(&[0, 0]).unwrap();
    c.shutdown_write().unwrap();
    assert_closed(&mut c, "two bytes of a size prefix");
    assert_serves(&b, "a truncated size prefix");
}

#[test]
fn huge_size_prefix_is_refused_without_allocating() {
    let b = start();
    let before = rss_kib(b.pid());
    let mut c = RawConn::connect(b.kafka_addr()).unwrap();
    let mut bytes = 0x7fff_ffffu32.to_be_bytes().to_vec();
    bytes.extend_from_slice(&raw_header(18, 0, 1, false));
    c.write_raw(&bytes).unwrap();
    assert_closed(&mut c, "a 2 GiB size prefix");
    let after = rss_kib(b.pid());
    assert!(
        after < before + 256 * 1024,
        "broker RSS grew from {before} KiB to {after} KiB after a 2 GiB size prefix"
    );
    assert_serves(&b, "a 2 GiB size prefix");
}

#[test]
fn negative_size_prefix_is_refused() {
    let b = start();
    for size in [-1i32, i32::MIN] {
        let mut c = RawConn::connect(b.kafka_addr()).unwrap();
        let mut bytes = size.to_be_bytes().to_vec();
        bytes.extend_from_slice(&raw_header(18, 0, 1, false));
        c.write_raw(&bytes).unwrap();
        assert_closed(&mut c, &format!("size prefix {size}"));
        assert_serves(&b, &format!("size prefix {size}"));
    }
}

/// After a request the broker can not parse, Kafka closes the connection. An error response
/// is accepted too, if it carries the request's correlation id.
#[track_caller]
fn assert_closed_or_answered(c: &mut RawConn, correlation_id: i32, what: &str) {
    match c.read_frame() {
        Err(_) => {} // closed (or reset) without a response
        Ok(frame) => {
            assert!(
                frame.len() >= 4,
                "{what}: response of {} bytes",
                frame.len()
            );
            let got = i32::from_be_bytes(frame[..4].try_into().unwrap());
            assert_eq!(
                got, correlation_id,
                "{what}: response has another correlation id"
            );
        }
    }
}

#[test]
fn unknown_api_key() {
    let b = start();
    let mut c = RawConn::connect(b.kafka_addr()).unwrap();
    let mut body = raw_header(9999, 0, 42, false);
    body.put_slice(&[0u8; 16]);
    c.write_raw(&frame(&body)).unwrap();
    assert_closed_or_answered(&mut c, 42, "api key 9999");
    assert_serves(&b, "api key 9999");
}

#[test]
fn unsupported_produce_version() {
    let b = start();
    let mut c = RawConn::connect(b.kafka_addr()).unwrap();
    let mut body = raw_header(0, 99, 43, true);
    body.put_slice(&[0u8; 16]);
    c.write_raw(&frame(&body)).unwrap();
    assert_closed_or_answered(&mut c, 43, "Produce v99");
    assert_serves(&b, "Produce v99");
}

/// An array length prefix of 2^31 - 1 in a 12-byte request: the decoder reserves room
/// for the claimed elements before reading them. The broker must answer or close, not
/// abort on a failed 150 GB allocation.
#[test]
fn huge_array_length_prefix_does_not_kill_the_broker() {
    let b = start();
    for (key, version, flexible) in [(3, 1, false), (0, 7, false), (1, 12, true)] {
        let mut c = RawConn::connect(b.kafka_addr()).unwrap();
        let mut body = raw_header(key, version, 45, flexible);
        if key == 0 {
            body.put_slice(&[0xff, 0xff, 0, 0, 0, 0, 0x75, 0x30]); // null txn id, acks, timeout
        }
        if key == 1 {
            // Fetch v12 fields before the topics array, then a compact length of u32::MAX.
            body.put_slice(&[
                0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1, 0,
            ]);
            body.put_slice(&[
                0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x0f,
            ]);
        } else {
            body.put_slice(&0x7fff_ffffi32.to_be_bytes());
        }
        c.write_raw(&frame(&body)).unwrap();
        assert_closed_or_answered(&mut c, 45, "huge array length");
        assert_serves(&b, "huge array length");
    }
}

/// Produce v0–v2 is advertised for librdkafka's feature detection but refused: message
/// formats 0 and 1 are not stored.
#[test]
fn produce_v2_is_advertised_but_refused() {
    let b = start();
    let mut c = RawConn::connect(b.kafka_addr()).unwrap();
    let mut body = raw_header(0, 2, 44, false);
    body.put_slice(&[0u8; 16]);
    c.write_raw(&frame(&body)).unwrap();
    assert_closed(&mut c, "Produce v2");
    assert_serves(&b, "Produce v2");
}

/// Like Kafka: an ApiVersions request at a version the broker does not know gets an
/// ApiVersions v0 response with UNSUPPORTED_VERSION and the broker's key table, so the
/// client can retry with a version both support.
#[test]
fn api_versions_v99_gets_a_v0_answer_with_the_table() {
    let b = start();
    let mut c = RawConn::connect(b.kafka_addr()).unwrap();
    let mut body = raw_header(18, 99, 44, true);
    body.extend_from_slice(&api_versions_v3_body());
    c.write_raw(&frame(&body)).unwrap();
    let mut resp: Bytes = c
        .read_frame()
        .expect("a response to ApiVersions v99 (Kafka answers it, clients rely on it)");
    let header = ResponseHeader::decode(&mut resp, 0).unwrap();
    assert_eq!(header.correlation_id, 44);
    let av = ApiVersionsResponse::decode(&mut resp, 0).expect("an ApiVersions v0 body");
    assert_eq!(av.error_code, codes::UNSUPPORTED_VERSION, "{av:?}");
    for key in [0i16, 1, 2, 3, 18] {
        let k = av
            .api_keys
            .iter()
            .find(|k| k.api_key == key)
            .unwrap_or_else(|| panic!("api key {key} missing from {:?}", av.api_keys));
        assert!(k.min_version <= k.max_version, "{k:?}");
    }
    let av_key = av.api_keys.iter().find(|k| k.api_key == 18).unwrap();
    assert!(
        av_key.max_version >= 3,
        "ApiVersions max {}",
        av_key.max_version
    );

    // The client's retry, on the same connection, at the advertised version, succeeds.
    let again = c.api_versions(av_key.max_version.min(3)).unwrap();
    assert_eq!(again.error_code, codes::NONE);
    assert_serves(&b, "ApiVersions v99");
}

#[test]
fn corrupt_crc_is_rejected() {
    let b = start();
    let mut c = RawConn::connect(b.kafka_addr()).unwrap();
    c.create_topic_ok("crc", 1).unwrap();
    let batch = encode_batch(&generate("crc", 10, 100, 1, 3), Compression::None).unwrap();
    let mut bad = BytesMut::from(&batch[..]);
    // A byte inside the records, which the CRC covers.
    let i = bad.len() - 5;
    bad[i] ^= 0x55;
    let resp = c.produce_bytes("crc", 0, bad.freeze(), -1).unwrap();
    assert_eq!(resp.error_code, codes::CORRUPT_MESSAGE, "{resp:?}");
    assert_eq!(
        c.list_offset("crc", 0, -1).unwrap(),
        0,
        "a corrupt batch was appended"
    );
    assert_serves(&b, "a corrupt batch");

    // The intact batch is then accepted.
    let resp = c.produce_bytes("crc", 0, batch, -1).unwrap();
    assert_eq!(resp.error_code, codes::NONE, "{resp:?}");
    assert_eq!(c.list_offset("crc", 0, -1).unwrap(), 10);
}

#[test]
fn batch_over_the_default_max_message_bytes_is_rejected() {
    let b = start();
    let mut c = RawConn::connect(b.kafka_addr()).unwrap();
    c.create_topic_ok("big", 1).unwrap();
    // Two records of 600 KiB: 1.2 MiB, over Kafka's default of 1048588 bytes.
    let recs: Vec<TestRecord> = (0..2)
        .map(|i| TestRecord {
            key: format!("big-{i}").into_bytes(),
            value: vec![b'x'; 600 * 1024],
            headers: vec![],
        })
        .collect();
    let resp = c
        .produce_bytes(
            "big",
            0,
            encode_batch(&recs, Compression::None).unwrap(),
            -1,
        )
        .unwrap();
    assert_eq!(
        resp.error_code,
        codes::MESSAGE_TOO_LARGE,
        "{:?}",
        resp.error_message
    );
    assert_eq!(c.list_offset("big", 0, -1).unwrap(), 0);
    assert_serves(&b, "a 1.2 MiB batch");
}

#[test]
fn batch_over_the_topic_max_message_bytes_is_rejected() {
    let b = start();
    let mut c = RawConn::connect(b.kafka_addr()).unwrap();
    let code = c
        .create_topic("small", 1, &[("max.message.bytes", "1024")])
        .unwrap();
    assert_eq!(
        code,
        codes::NONE,
        "create topic with max.message.bytes=1024"
    );
    let big = generate("small", 40, 100, 0, 9); // ~4 KiB
    let resp = c
        .produce_bytes(
            "small",
            0,
            encode_batch(&big, Compression::None).unwrap(),
            -1,
        )
        .unwrap();
    assert_eq!(
        resp.error_code,
        codes::MESSAGE_TOO_LARGE,
        "{:?}",
        resp.error_message
    );
    let fits = generate("small", 2, 50, 0, 9);
    c.produce_ok("small", 0, &fits, Compression::None).unwrap();
    assert_eq!(c.list_offset("small", 0, -1).unwrap(), 2);
    assert_serves(&b, "a batch over the topic's max.message.bytes");
}

#[test]
fn produce_to_an_unknown_topic() {
    let b = start();
    let mut c = RawConn::connect(b.kafka_addr()).unwrap();
    let batch = encode_batch(&generate("nope", 3, 10, 0, 1), Compression::None).unwrap();
    let resp = c
        .produce_bytes("no-such-topic", 0, batch.clone(), -1)
        .unwrap();
    assert_eq!(
        resp.error_code,
        codes::UNKNOWN_TOPIC_OR_PARTITION,
        "{resp:?}"
    );
    // An unknown partition of a known topic, too.
    let resp = c.produce_bytes(ALIVE, 7, batch, -1).unwrap();
    assert_eq!(
        resp.error_code,
        codes::UNKNOWN_TOPIC_OR_PARTITION,
        "{resp:?}"
    );
    assert_serves(&b, "produce to an unknown topic");
}

/// acks=0 has no response to carry an error, so a failed one closes the connection (as in
/// Kafka) and the client notices; a good one keeps it open and lands.
#[test]
fn failed_acks_zero_produce_closes_the_connection() {
    use kafka_protocol::messages::ProduceRequest;
    let b = start();
    let produce = |topic: &str, partition: i32, value: &str| {
        let records = [TestRecord {
            key: b"k".to_vec(),
            value: value.as_bytes().to_vec(),
            headers: Vec::new(),
        }];
        let batch = encode_batch(&records, Compression::None).unwrap();
        keel_tests::raw::produce_request(topic, partition, batch, 0)
    };
    let mut c = RawConn::connect(b.kafka_addr()).unwrap();
    let version = c.version_for::<ProduceRequest>().unwrap();
    let before = c.list_offset(ALIVE, 0, -1).unwrap();
    c.send(version, &produce(ALIVE, 0, "fire-and-forget"))
        .unwrap();
    // Still open: the next requests are answered, and the record is there.
    keel_tests::wait_until(
        &format!("the acks=0 record is appended at offset {before}"),
        Duration::from_secs(5),
        || c.list_offset(ALIVE, 0, -1).unwrap() == before + 1,
    );

    c.send(version, &produce("no-such-topic", 0, "lost"))
        .unwrap();
    assert_closed(&mut c, "acks=0 produce to an unknown topic");
    assert_serves(&b, "a failed acks=0 produce");
}

#[test]
fn many_bad_connections_at_once_leave_the_broker_serving() {
    let b = start();
    let mut conns: Vec<RawConn> = (0..50)
        .map(|_| RawConn::connect(b.kafka_addr()).unwrap())
        .collect();
    for (i, c) in conns.iter_mut().enumerate() {
        let junk: &[u8] = match i % 3 {
            0 => &[0xff, 0xff, 0xff, 0xff],
            1 => &[0x7f, 0xff, 0xff, 0xff, 0, 18],
            _ => b"\x00\x00\x00\x08\xde\xad\xbe\xef\xde\xad\xbe\xef",
        };
        c.write_raw(junk).unwrap();
    }
    for (i, c) in conns.iter_mut().enumerate() {
        assert_ne!(
            c.read_outcome(CLOSE_TIMEOUT),
            ReadOutcome::TimedOut,
            "connection {i} was neither closed nor answered"
        );
    }
    assert_serves(&b, "50 bad connections");
}
