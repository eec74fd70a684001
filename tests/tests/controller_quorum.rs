//! The controller quorum under faults, with real processes on 127.0.0.1: brokers 1..=3 are
//! also the three controller voters (as `keel cluster start` runs them).
//!
//! - `kill -9` of the node that is both the active controller and a partition's leader, in
//!   the middle of an acks=all stream: a new controller is elected, the partition gets a new
//!   leader, production goes on, nothing acknowledged is lost; restarted, the node rejoins
//!   as a follower voter and its ISR places come back.
//! - Two of three voters down: produce and fetch on leaders that are not voters keep working;
//!   creating a topic waits and then fails with a timeout that says why; restarted, it heals.
//! - The active controller cut off from the other voters: it stops being the active
//!   controller within the election timeout, another voter takes over, no term ever has two
//!   leaders, and no partition's leader epoch goes backwards.
//!
//! Every wait is a condition with a deadline. When a test fails (or always, with
//! `KEEL_TEST_KEEP_LOGS` set), each node's stderr is copied to
//! `$TMPDIR/keel-controller-quorum/<test>/`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use keel_client::{Admin, ClientConfig, TopicSpec};
use keel_tests::proxy::LinkFault;
use keel_tests::stream::{
    high_watermarks, read_all, read_partitions, BackgroundProducer, ProduceLog,
};
use keel_tests::{runtime, wait_for, wait_until, ClusterOpts, KeepLogs, TestCluster};

const WAIT: Duration = Duration::from_secs(45);
const LOG_DIR: &str = "keel-controller-quorum";

/// Three voters on brokers 1..=3 (of `brokers`), fast fencing and fast elections.
fn opts(brokers: usize) -> ClusterOpts {
    ClusterOpts::default()
        .brokers(brokers)
        .voters(3)
        .fast_failover()
        .fast_elections()
        .set("min.insync.replicas", "2")
        .set("default.replication.factor", "3")
}

/// Every acknowledged record is at its acknowledged offset in what the topic holds now.
fn assert_nothing_lost(
    rt: &tokio::runtime::Runtime,
    cluster: &TestCluster,
    topic: &str,
    partitions: i32,
    produced: &ProduceLog,
) {
    let mut want = vec![0i64; partitions as usize];
    for (p, o) in produced.acked.values() {
        want[*p as usize] = want[*p as usize].max(o + 1);
    }
    let ends = wait_for(
        &format!("every HW of {topic} reaches the acknowledged ends {want:?}"),
        WAIT,
        || {
            high_watermarks(rt, &cluster.bootstrap(), topic, partitions)
                .filter(|hw| hw.iter().zip(&want).all(|(h, w)| h >= w))
        },
    );
    let log = read_all(rt, &cluster.bootstrap(), topic, &ends);
    let missing: Vec<String> = produced
        .acked
        .iter()
        .filter(|(value, at)| log.get(at) != Some(value))
        .take(10)
        .map(|(value, (p, o))| {
            format!("{value} acked at {p}@{o}, log has {:?}", log.get(&(*p, *o)))
        })
        .collect();
    assert!(missing.is_empty(), "acknowledged records lost: {missing:?}");
}

#[test]
fn killing_the_active_controller_that_leads_a_partition_loses_nothing() {
    let test = "killing_the_active_controller_that_leads_a_partition_loses_nothing";
    let topic = "quorum-kill";
    let rt = runtime();
    let mut cluster = TestCluster::start(opts(3));
    let keep = KeepLogs::new(LOG_DIR, test, &cluster);
    cluster.create_replicated_topic(topic, 3, WAIT);
    let active = wait_for("an active controller", WAIT, || cluster.active_controller());
    // Round-robin placement gives each broker one partition to lead.
    let led = wait_for(
        &format!("a partition of {topic} led by the active controller {active}"),
        WAIT,
        || (0..3).find(|&p| cluster.leader_of(topic, p) == Some(active)),
    );
    let producer = BackgroundProducer::start(&rt, &cluster.bootstrap(), topic, 3, None, None);
    wait_until("1,000 acknowledgements", WAIT, || producer.acks() >= 1_000);

    cluster.kill9(active);
    let killed_at = Instant::now();
    let new_active = wait_for("another voter becomes the active controller", WAIT, || {
        cluster.active_controller().filter(|&c| c != active)
    });
    let elected_after = killed_at.elapsed();
    let new_leader = cluster.wait_for_leader(topic, led, Some(active), WAIT);
    let led_after = killed_at.elapsed();
    eprintln!(
        "killed node {active}: node {new_active} active after {:.2}s, {topic}-{led} led by \
         {new_leader} after {:.2}s",
        elected_after.as_secs_f64(),
        led_after.as_secs_f64()
    );
    let acks = producer.acks();
    wait_until("production continues after the failover", WAIT, || {
        producer.acks() >= acks + 1_000
    });

    cluster.restart(active);
    wait_until(
        &format!("node {active} is back as a follower voter of node {new_active}"),
        WAIT,
        || {
            cluster
                .quorum_state(active)
                .is_some_and(|s| s.leader == new_active && s.applied > 0)
        },
    );
    wait_until(
        &format!("node {active} is back in the ISR of every partition of {topic}"),
        WAIT,
        || {
            (0..3).all(|p| {
                cluster
                    .isr_of(topic, p)
                    .is_some_and(|isr| isr.len() == 3 && isr.contains(&active))
            })
        },
    );
    let (sent, produced) = producer.finish(&rt, Duration::from_secs(60));
    eprintln!(
        "sent {sent}, acknowledged {}, failed {}",
        produced.acked.len(),
        produced.failed.len()
    );
    assert!(
        produced.failed.is_empty(),
        "deliveries failed across the controller failover, e.g. {:?}",
        produced.failed.iter().next()
    );
    assert_nothing_lost(&rt, &cluster, topic, 3, &produced);
    drop(keep);
}

#[test]
fn with_two_of_three_voters_down_data_flows_and_metadata_waits() {
    let test = "with_two_of_three_voters_down_data_flows_and_metadata_waits";
    let topic = "quorum-minority";
    let rt = runtime();
    // Brokers 4 and 5 are no voters; the partition they hold keeps its leader and ISR.
    let mut cluster = TestCluster::start(opts(5).set("min.insync.replicas", "1"));
    let keep = KeepLogs::new(LOG_DIR, test, &cluster);
    let admin_config = || {
        let mut c = ClientConfig::new(&cluster.bootstrap());
        c.request_timeout = Duration::from_secs(8);
        c
    };
    rt.block_on(async {
        let admin = Admin::new(admin_config()).await.unwrap();
        admin
            .create_topics(&[TopicSpec {
                name: topic.into(),
                partitions: 5,
                replication_factor: 2,
                configs: Vec::new(),
            }])
            .await
            .unwrap();
    });
    // Round-robin placement: one of the five partitions is on brokers 4 and 5 only.
    let on_brokers = wait_for(
        &format!("a partition of {topic} on brokers 4 and 5 with a leader"),
        WAIT,
        || {
            let d = cluster.describe_topic(topic)?;
            d.partitions
                .iter()
                .find(|p| {
                    let mut r = p.replicas.clone();
                    r.sort();
                    r == [4, 5] && p.leader > 0 && p.isr.len() == 2
                })
                .map(|p| p.partition)
        },
    );
    // A first idempotent producer while the quorum is whole: brokers 4 and 5 hold their
    // blocks of producer ids from their registration on, so later producers need no
    // controller to start.
    let bootstrap = cluster.kafka_addrs(&[4, 5]);
    let (_, warm) = BackgroundProducer::start_on(&rt, &bootstrap, topic, on_brokers, Some(10))
        .finish(&rt, Duration::from_secs(30));
    assert_eq!(warm.acked.len(), 10, "{:?}", warm.failed.iter().next());
    let mut down: Vec<i32> = vec![1, 2, 3];
    let survivor = down.remove(2);
    for &v in &down {
        cluster.kill9(v);
    }
    wait_until(
        &format!("voter {survivor} knows it has no quorum"),
        WAIT,
        || {
            cluster
                .quorum_state(survivor)
                .is_some_and(|s| s.leader != survivor)
        },
    );

    // Data: acks=all to the partition on brokers 4 and 5, read back.
    let producer = BackgroundProducer::start_on(&rt, &bootstrap, topic, on_brokers, Some(500));
    let (sent, produced) = producer.finish(&rt, Duration::from_secs(60));
    assert_eq!(sent, 500);
    assert!(
        produced.failed.is_empty() && produced.acked.len() == 500,
        "with no active controller, produce to a known leader failed: {:?}",
        produced.failed.iter().next()
    );
    let end = produced.acked.values().map(|(_, o)| o + 1).max().unwrap();
    let mut ends = vec![0; 5];
    ends[on_brokers as usize] = end;
    let log = read_partitions(&rt, &bootstrap, topic, &[on_brokers], &ends);
    assert_eq!(log.len() as i64, end, "fetch without a controller");
    assert!(
        produced.acked.iter().all(|(v, at)| log.get(at) == Some(v)),
        "an acknowledged record is not where it was acknowledged"
    );

    // Metadata: a new topic waits for a controller, then times out with the reason.
    let started = Instant::now();
    let refused = rt.block_on(async {
        let mut config = ClientConfig::new(&bootstrap);
        config.request_timeout = Duration::from_secs(6);
        let admin = Admin::new(config).await.unwrap();
        admin
            .create_topics(&[TopicSpec {
                name: "quorum-new".into(),
                partitions: 1,
                replication_factor: 2,
                configs: Vec::new(),
            }])
            .await
    });
    let text = format!("{:?}", refused);
    eprintln!(
        "create without a quorum, after {:.1}s: {text}",
        started.elapsed().as_secs_f64()
    );
    assert!(refused.is_err(), "a topic was created without a quorum");
    assert!(
        text.contains("REQUEST_TIMED_OUT") || text.contains("RequestTimedOut"),
        "{text}"
    );
    assert!(text.contains("no active controller"), "{text}");

    // Heal: the voters come back, a controller is elected, the topic can be created.
    for &v in &down {
        cluster.restart(v);
    }
    wait_for("an active controller again", WAIT, || {
        cluster.active_controller()
    });
    cluster.create_replicated_topic("quorum-healed", 1, WAIT);
    drop(keep);
}

#[test]
fn an_isolated_active_controller_steps_down_and_history_stays_single() {
    let test = "an_isolated_active_controller_steps_down_and_history_stays_single";
    let topic = "quorum-isolated";
    let cluster = TestCluster::start(opts(3).fault_proxies());
    let keep = KeepLogs::new(LOG_DIR, test, &cluster);
    cluster.create_replicated_topic(topic, 3, WAIT);
    let active = wait_for("an active controller", WAIT, || cluster.active_controller());
    let others: Vec<i32> = cluster
        .voter_ids()
        .into_iter()
        .filter(|&v| v != active)
        .collect();

    // Every (term, leader) a voter claims, and every leader epoch a partition shows.
    let mut leaders_by_term: BTreeMap<u64, i32> = BTreeMap::new();
    let mut epochs: BTreeMap<i32, i32> = BTreeMap::new();
    let mut observe = |cluster: &TestCluster| {
        for id in cluster.voter_ids() {
            if let Some(s) = cluster.quorum_state(id) {
                if s.leader == s.node_id {
                    let before = leaders_by_term.insert(s.term, s.node_id);
                    assert!(
                        before.is_none_or(|l| l == s.node_id),
                        "term {} has two leaders: {before:?} and {}",
                        s.term,
                        s.node_id
                    );
                }
            }
        }
        if let Some(d) = cluster.describe_topic(topic) {
            for p in d.partitions {
                let seen = epochs.entry(p.partition).or_insert(p.leader_epoch);
                assert!(
                    *seen <= p.leader_epoch,
                    "{topic}-{}: leader epoch went back from {seen} to {}",
                    p.partition,
                    p.leader_epoch
                );
                *seen = p.leader_epoch;
            }
        }
    };
    observe(&cluster);

    cluster.net().isolate(active, &others, LinkFault::Blackhole);
    let cut_at = Instant::now();
    wait_until(
        &format!("the isolated node {active} stops being the active controller"),
        WAIT,
        || {
            observe(&cluster);
            cluster
                .quorum_state(active)
                .is_some_and(|s| s.leader != active)
        },
    );
    let stepped_down = cut_at.elapsed();
    let new_active = wait_for(
        "one of the others becomes the active controller",
        WAIT,
        || {
            observe(&cluster);
            cluster.active_controller().filter(|c| others.contains(c))
        },
    );
    eprintln!(
        "node {active} isolated: stepped down after {:.2}s, node {new_active} active after {:.2}s",
        stepped_down.as_secs_f64(),
        cut_at.elapsed().as_secs_f64()
    );
    cluster.net().heal_all();
    wait_until(
        &format!("node {active} follows node {new_active} again"),
        WAIT,
        || {
            observe(&cluster);
            cluster.quorum_state(active).is_some_and(|s| {
                s.leader == new_active
                    && cluster
                        .quorum_state(new_active)
                        .is_some_and(|l| s.applied == l.applied)
            })
        },
    );
    cluster.create_replicated_topic("quorum-after-heal", 1, WAIT);
    observe(&cluster);
    drop(keep);
}
