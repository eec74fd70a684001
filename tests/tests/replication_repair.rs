//! A replica that recovers below its checkpointed high watermark has lost acknowledged
//! data (here: its segment file is cut while the broker is down). Its broker must stay
//! fenced — out of every ISR, never elected — until the replica has caught up from the
//! leader, and then the logs are identical again.

use std::time::Duration;

use keel_client::{Acks, Admin, ClientConfig, Producer, ProducerConfig, ProducerRecord, TopicSpec};
use keel_tests::{runtime, wait_until, ClusterOpts, TestCluster};

const TOPIC: &str = "repair";
const RECORDS: usize = 2_000;
const TIMEOUT: Duration = Duration::from_secs(60);

#[test]
fn a_replica_that_lost_acknowledged_data_stays_fenced_until_repaired() {
    let mut cluster = TestCluster::start(
        ClusterOpts::default()
            .brokers(3)
            .set("log.flush.offset.checkpoint.interval.ms", "100")
            .set("broker.session.timeout.ms", "1500")
            .set("broker.heartbeat.interval.ms", "200"),
    );
    let client = ClientConfig::new(&cluster.bootstrap());
    let rt = runtime();
    rt.block_on(async {
        Admin::new(client.clone())
            .await
            .unwrap()
            .create_topics(&[TopicSpec {
                name: TOPIC.into(),
                partitions: 1,
                replication_factor: 3,
                configs: vec![],
            }])
            .await
            .unwrap();
    });
    wait_until("the partition has a leader", TIMEOUT, || {
        cluster.leader_of(TOPIC, 0).is_some_and(|l| l > 0)
    });
    rt.block_on(async {
        let config = ProducerConfig {
            acks: Acks::All,
            ..ProducerConfig::default()
        };
        let p = Producer::new(client.clone(), config).await.unwrap();
        for i in 0..RECORDS {
            let d = p
                .send(ProducerRecord::new(TOPIC, format!("value-{i:05}")).partition(0))
                .await
                .unwrap();
            if i + 1 == RECORDS {
                d.await.unwrap();
            }
        }
        p.flush().await.unwrap();
    });
    let leader = cluster.leader_of(TOPIC, 0).unwrap();
    let victim = *cluster.broker_ids().iter().find(|&&b| b != leader).unwrap();
    // The victim's checkpointed HW covers everything (checkpoints every 100 ms): the
    // checkpoint file's second line is the HW.
    let hw_file = cluster
        .broker(victim)
        .data_dir()
        .join(format!("{TOPIC}-0"))
        .join("replication-offset-checkpoint");
    wait_until(
        "the follower's checkpointed HW covers every record",
        TIMEOUT,
        || {
            std::fs::read_to_string(&hw_file)
                .is_ok_and(|t| t.lines().nth(1) == Some(&RECORDS.to_string()))
        },
    );

    // Crash it and cut its segment in half: acknowledged records are gone from it.
    cluster.kill9(victim);
    let dir = cluster.broker(victim).data_dir().join(format!("{TOPIC}-0"));
    let segment = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "log"))
        .expect("a segment file");
    let len = std::fs::metadata(&segment).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&segment)
        .unwrap()
        .set_len(len / 2)
        .unwrap();

    cluster.restart(victim);
    // It repairs from the leader and comes back into the ISR...
    wait_until("the repaired follower rejoins the ISR", TIMEOUT, || {
        cluster
            .describe_topic(TOPIC)
            .is_some_and(|d| d.partitions[0].isr.contains(&victim))
            && cluster.replica_offsets(victim, TOPIC, 0).leo == Some(RECORDS as i64)
    });
    // ...having asked to stay fenced while it was behind its checkpointed HW.
    let log = std::fs::read_to_string(cluster.broker(victim).log_path()).unwrap();
    assert!(
        log.contains("recovered log ends below its checkpointed high watermark"),
        "the lost data was not detected:\n{log}"
    );
    let waited = log.lines().any(|l| {
        l.contains("ready to serve") && l.contains("ready=false") && l.contains("repair-0")
    });
    assert!(
        waited,
        "the broker did not hold itself fenced while repairing:\n{log}"
    );
    let became_ready = log
        .lines()
        .any(|l| l.contains("ready to serve") && l.contains("ready=true"));
    assert!(became_ready, "the broker never became ready:\n{log}");
}
