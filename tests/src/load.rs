//! Background load for tests that need traffic flowing while they do something else.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use keel_client::{Acks, ClientConfig, Producer, ProducerConfig, ProducerRecord};

/// The steady producer: acks=all batches of 10 to partition 0 of `topic` until `stop` (at
/// most a million records); returns the acknowledged records (offset → value, values
/// `steady-N`) and the failures.
pub async fn steady_producer(
    bootstrap: String,
    topic: &'static str,
    stop: Arc<AtomicBool>,
) -> (BTreeMap<i64, String>, Vec<String>) {
    let producer = Producer::new(
        ClientConfig::new(&bootstrap),
        ProducerConfig {
            acks: Acks::All,
            request_timeout: Duration::from_secs(15),
            ..ProducerConfig::default()
        },
    )
    .await
    .expect("steady producer");
    let mut acked = BTreeMap::new();
    let mut failures = Vec::new();
    let mut i = 0u64;
    while !stop.load(Ordering::Acquire) && i < 1_000_000 {
        let mut pending = Vec::new();
        for _ in 0..10 {
            let value = format!("steady-{i}");
            i += 1;
            let r = ProducerRecord::new(topic, value.clone()).partition(0);
            match producer.send(r).await {
                Ok(d) => pending.push((value, d)),
                Err(e) => failures.push(format!("{value}: {e}")),
            }
        }
        for (value, d) in pending {
            match d.await {
                Ok(meta) => {
                    acked.insert(meta.offset, value);
                }
                Err(e) => failures.push(format!("{value}: {e}")),
            }
        }
    }
    let _ = producer.close().await;
    (acked, failures)
}
