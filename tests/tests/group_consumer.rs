//! The client crate's group consumer against Keel: members share a topic with the range and
//! the cooperative-sticky assignor, every record is read once, commits carry a new member on
//! from where the old ones stopped, and the rebalance listener sees every change.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keel_client::{
    Assignor, ClientConfig, Consumer, ConsumerConfig, GroupConfig, Offset, Producer,
    ProducerConfig, ProducerRecord, Rebalance,
};
use keel_tests::{serial, ClusterOpts, TestCluster};

async fn produce(bootstrap: &str, topic: &str, partitions: i32, from: usize, count: usize) {
    let producer = Producer::new(ClientConfig::new(bootstrap), ProducerConfig::default())
        .await
        .unwrap();
    let mut pending = Vec::new();
    for i in from..from + count {
        let r = ProducerRecord::new(topic, format!("v-{i}")).partition(i as i32 % partitions);
        pending.push(producer.send(r).await.unwrap());
    }
    for d in pending {
        d.await.unwrap();
    }
    producer.close().await.unwrap();
}

fn group(id: &str, assignor: Assignor) -> GroupConfig {
    GroupConfig {
        session_timeout: Duration::from_secs(10),
        rebalance_timeout: Duration::from_secs(15),
        heartbeat_interval: Duration::from_millis(500),
        assignors: vec![assignor],
        auto_offset_reset: Offset::Earliest,
        auto_commit_interval: Duration::from_millis(500),
        ..GroupConfig::new(id)
    }
}

async fn member(
    bootstrap: &str,
    topic: &str,
    g: GroupConfig,
) -> (Consumer, Arc<Mutex<Vec<Rebalance>>>) {
    let config = ConsumerConfig {
        max_wait: Duration::from_millis(100),
        ..ConsumerConfig::default()
    };
    let mut c = Consumer::new(ClientConfig::new(bootstrap), config)
        .await
        .unwrap();
    c.subscribe(&[topic], g).await.unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    c.on_rebalance(move |r| log.lock().unwrap().push(r));
    (c, seen)
}

/// A member polling in its own task until stopped, publishing what it read and what it
/// is assigned.
struct Running {
    read: Arc<Mutex<Vec<String>>>,
    assigned: Arc<Mutex<Vec<i32>>>,
    seen: Arc<Mutex<Vec<Rebalance>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<Consumer>,
}

impl Running {
    fn start(mut c: Consumer, seen: Arc<Mutex<Vec<Rebalance>>>) -> Running {
        let read = Arc::new(Mutex::new(Vec::new()));
        let assigned = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (r, a, s) = (read.clone(), assigned.clone(), stop.clone());
        let task = tokio::spawn(async move {
            while !s.load(std::sync::atomic::Ordering::Acquire) {
                let records = c.poll().await.unwrap();
                r.lock().unwrap().extend(
                    records
                        .into_iter()
                        .map(|x| String::from_utf8(x.value.unwrap().to_vec()).unwrap()),
                );
                *a.lock().unwrap() = c.assignment().into_iter().map(|(_, p)| p).collect();
            }
            c
        });
        Running {
            read,
            assigned,
            seen,
            stop,
            task,
        }
    }

    async fn stop(self) -> Consumer {
        self.stop.store(true, std::sync::atomic::Ordering::Release);
        self.task.await.unwrap()
    }
}

fn covers(members: &[Running], partitions: i32, each: usize) -> bool {
    let mut all: Vec<i32> = members
        .iter()
        .flat_map(|m| m.assigned.lock().unwrap().clone())
        .collect();
    all.sort_unstable();
    all == (0..partitions).collect::<Vec<_>>()
        && members
            .iter()
            .all(|m| m.assigned.lock().unwrap().len() == each)
}

fn read_total(members: &[Running]) -> Vec<String> {
    members
        .iter()
        .flat_map(|m| m.read.lock().unwrap().clone())
        .collect()
}

#[test]
fn range_and_cooperative_members_share_a_topic_and_commit() {
    let _serial = serial();
    let cluster = TestCluster::start(ClusterOpts::default().brokers(3));
    let rt = keel_tests::runtime();
    let boot = cluster.bootstrap();
    rt.block_on(async {
        for assignor in [Assignor::Range, Assignor::CooperativeSticky] {
            let id = format!("g-{}", assignor.name());
            let topic = format!("gc-{}", assignor.name());
            cluster.create_replicated_topic(&topic, 6, Duration::from_secs(60));
            let topic = topic.as_str();
            let mut ms = Vec::new();
            for _ in 0..2 {
                let (c, seen) = member(&boot, topic, group(&id, assignor)).await;
                ms.push(Running::start(c, seen));
            }
            keel_tests::wait::wait_until_async(
                "two members cover six partitions",
                Duration::from_secs(30),
                || covers(&ms, 6, 3),
            )
            .await;
            produce(&boot, topic, 6, 0, 600).await;
            keel_tests::wait::wait_until_async("600 records read", Duration::from_secs(30), || {
                read_total(&ms).len() >= 600
            })
            .await;
            keel_tests::wait::stays_true_async(
                "no more than 600 records are read",
                Duration::from_millis(500),
                || read_total(&ms).len() <= 600,
            )
            .await;
            let all = read_total(&ms);
            let distinct: BTreeSet<&String> = all.iter().collect();
            assert_eq!(
                (all.len(), distinct.len()),
                (600, 600),
                "{assignor:?}: each record once"
            );

            // A third member: in the end three members hold two partitions each. With
            // cooperative-sticky only what moves is revoked, one partition at a time here.
            let (c, seen) = member(&boot, topic, group(&id, assignor)).await;
            ms.push(Running::start(c, seen));
            keel_tests::wait::wait_until_async(
                "three members cover six partitions",
                Duration::from_secs(40),
                || covers(&ms, 6, 2),
            )
            .await;
            let events = ms[0].seen.lock().unwrap().clone();
            assert!(
                matches!(events.first(), Some(Rebalance::Assigned(_))),
                "{assignor:?}: the listener saw the first assignment: {events:?}"
            );
            if assignor == Assignor::CooperativeSticky {
                assert!(
                    events.iter().all(|e| match e {
                        Rebalance::Revoked(p) => p.len() == 1,
                        Rebalance::Assigned(_) => true,
                    }),
                    "cooperative revocations: {events:?}"
                );
            } else {
                assert!(
                    events
                        .iter()
                        .any(|e| matches!(e, Rebalance::Revoked(p) if p.len() == 3)),
                    "range revokes everything before a rejoin: {events:?}"
                );
            }
            // New records reach the group once: positions (auto-committed before each
            // revocation) carry over to the new owners.
            let before = read_total(&ms).len();
            produce(&boot, topic, 6, 600, 300).await;
            keel_tests::wait::wait_until_async(
                "the new records read",
                Duration::from_secs(30),
                || read_total(&ms).len() >= before + 300,
            )
            .await;
            keel_tests::wait::stays_true_async(
                "no more than 900 records are read",
                Duration::from_millis(500),
                || read_total(&ms).len() <= 900,
            )
            .await;
            let all = read_total(&ms);
            let distinct: BTreeSet<&String> = all.iter().collect();
            assert_eq!(distinct.len(), 900, "{assignor:?}: every record read");
            assert_eq!(all.len(), 900, "{assignor:?}: and each once");
            for m in ms {
                m.stop().await.close().await.unwrap();
            }
        }
    });
}
