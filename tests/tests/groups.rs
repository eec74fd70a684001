//! Consumer groups with real clients as oracles: confluent-kafka consumers sharing a topic
//! through the group coordinator, their commits read back through the admin API, the group
//! listed, described, emptied and deleted.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use keel_tests::{require_python_modules, run, serial, ClusterOpts, TestCluster};

const SCRIPT_TIMEOUT: Duration = Duration::from_secs(180);

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("python")
        .join(name)
}

#[test]
fn three_confluent_consumers_share_a_topic_and_their_commits_read_back() {
    let _serial = serial();
    let python = require_python_modules(&["confluent_kafka"]);
    let cluster = TestCluster::start(ClusterOpts::default().brokers(3));
    cluster.create_replicated_topic("orders", 6, Duration::from_secs(60));
    let out = run(
        Command::new(&python)
            .arg(script("confluent_groups.py"))
            .args(["--bootstrap", &cluster.bootstrap(), "--topic", "orders"])
            .args(["--group", "g1", "--partitions", "6", "--count", "600"])
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .env("PYTHONUNBUFFERED", "1"),
        None,
        SCRIPT_TIMEOUT,
    );
    eprintln!("{}", out.stdout_str().trim_end());
    assert!(out.success(), "{out}");
    let seen: serde_json::Value = serde_json::from_str(out.stdout_str().trim()).unwrap();
    assert_eq!(seen["consumed"], 600);
    assert_eq!(seen["distinct"], 600);
    // The offsets topic was created on first use, replicated like data.
    let offsets = cluster
        .describe_topic("__consumer_offsets")
        .expect("__consumer_offsets exists");
    assert_eq!(offsets.partitions.len(), 50);
    assert!(offsets.partitions.iter().all(|p| p.replicas.len() == 3));
    // keel check compares its replicas like any topic's.
    let check = cluster.keel_check("__consumer_offsets", &[]);
    assert!(check.success(), "{check}");
    assert!(check.stdout_str().contains("50 partitions"), "{check}");
}

/// Writes `count` values `v-0`… round-robin over `partitions` with the Keel client.
fn produce_values(bootstrap: &str, topic: &str, partitions: i32, count: usize) {
    use keel_client::{ClientConfig, Producer, ProducerConfig, ProducerRecord};
    let rt = keel_tests::runtime();
    rt.block_on(async {
        let producer = Producer::new(ClientConfig::new(bootstrap), ProducerConfig::default())
            .await
            .unwrap();
        let mut deliveries = Vec::new();
        for i in 0..count {
            let record =
                ProducerRecord::new(topic, format!("v-{i}")).partition(i as i32 % partitions);
            deliveries.push(producer.send(record).await.unwrap());
        }
        for d in deliveries {
            d.await.unwrap();
        }
        producer.close().await.unwrap();
    });
}

#[test]
fn kcat_balanced_consumer_reads_a_topic_to_the_end() {
    let _serial = serial();
    let kcat = keel_tests::require_tool("kcat");
    let cluster = TestCluster::start(ClusterOpts::default().brokers(3));
    cluster.create_replicated_topic("kcat-g", 4, Duration::from_secs(60));
    produce_values(&cluster.bootstrap(), "kcat-g", 4, 400);
    let out = run(
        Command::new(kcat)
            .args(["-b", &cluster.bootstrap(), "-G", "kcat-group", "kcat-g"])
            .args(["-c", "400", "-f", "%s\\n", "-q"])
            .args(["-X", "auto.offset.reset=earliest"]),
        None,
        SCRIPT_TIMEOUT,
    );
    assert!(out.success(), "{out}");
    let stdout = out.stdout_str();
    let mut values: Vec<&str> = stdout.lines().collect();
    values.sort_unstable();
    let mut want: Vec<String> = (0..400).map(|i| format!("v-{i}")).collect();
    want.sort_unstable();
    assert_eq!(values, want);
}

#[test]
fn kafka_python_group_consumer_reads_to_the_end_and_commits() {
    let _serial = serial();
    let python = require_python_modules(&["kafka"]);
    let cluster = TestCluster::start(ClusterOpts::default().brokers(3));
    cluster.create_replicated_topic("kpy-g", 3, Duration::from_secs(60));
    produce_values(&cluster.bootstrap(), "kpy-g", 3, 300);
    let out = run(
        Command::new(&python)
            .arg(script("kafka_python_group.py"))
            .args(["--bootstrap", &cluster.bootstrap(), "--topic", "kpy-g"])
            .args(["--group", "kpy-group", "--count", "300"])
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .env("PYTHONUNBUFFERED", "1"),
        None,
        SCRIPT_TIMEOUT,
    );
    eprintln!("{}", out.stdout_str().trim_end());
    assert!(out.success(), "{out}");
}

/// A group member in its own process (`confluent_member.py`), whose events are collected
/// as they are printed.
struct Member {
    child: std::process::Child,
    events: std::sync::Arc<std::sync::Mutex<Vec<serde_json::Value>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Member {
    fn start(
        python: &Path,
        cluster: &TestCluster,
        topic: &str,
        group: &str,
        extra: &[&str],
    ) -> Member {
        use std::io::BufRead;
        let mut child = Command::new(python)
            .arg(script("confluent_member.py"))
            .args([
                "--bootstrap",
                &cluster.bootstrap(),
                "--topic",
                topic,
                "--group",
                group,
            ])
            .args(extra)
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .env("PYTHONUNBUFFERED", "1")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start a group member");
        let events = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let stdout = child.stdout.take().unwrap();
        let sink = events.clone();
        let reader = std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                    sink.lock().unwrap().push(v);
                }
            }
        });
        Member {
            child,
            events,
            reader: Some(reader),
        }
    }

    fn events(&self) -> Vec<serde_json::Value> {
        self.events.lock().unwrap().clone()
    }

    /// The partitions assigned now: the last assignment, unless revoked since.
    fn assigned(&self) -> Vec<i64> {
        let mut now = Vec::new();
        for e in self.events() {
            match e["event"].as_str() {
                Some("assign") => {
                    now = e["partitions"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .filter_map(|p| p.as_i64())
                        .collect()
                }
                Some("revoke") => now.clear(),
                _ => {}
            }
        }
        now
    }

    fn count(&self, event: &str) -> usize {
        self.events().iter().filter(|e| e["event"] == event).count()
    }

    fn signal(&mut self, sig: i32) {
        // SAFETY: the pid is our own child's, still unreaped.
        unsafe { libc::kill(self.child.id() as i32, sig) };
        let _ = self.child.wait();
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        if self.reader.is_some() {
            self.signal(libc::SIGKILL);
        }
    }
}

fn wait_assignments(members: &[&Member], partitions: i64, what: &str) {
    keel_tests::wait::wait_until(what, Duration::from_secs(60), || {
        let mut all: Vec<i64> = members.iter().flat_map(|m| m.assigned()).collect();
        all.sort_unstable();
        all == (0..partitions).collect::<Vec<_>>()
            && members.iter().all(|m| !m.assigned().is_empty())
    });
}

/// A member killed with kill -9 loses its partitions to the others once its session times
/// out; one that closes cleanly leaves at once (its session is long, so only the LeaveGroup
/// can explain the quick rebalance); a static member restarted within its session gets its
/// partitions back without a rebalance of the others.
#[test]
fn members_die_leave_and_come_back() {
    let _serial = serial();
    let python = require_python_modules(&["confluent_kafka"]);
    let cluster = TestCluster::start(ClusterOpts::default().brokers(3));
    cluster.create_replicated_topic("members", 4, Duration::from_secs(60));

    // kill -9: the survivor takes everything after the 6 s session.
    let a = Member::start(&python, &cluster, "members", "g-kill", &["--name", "a"]);
    let mut b = Member::start(&python, &cluster, "members", "g-kill", &["--name", "b"]);
    wait_assignments(&[&a, &b], 4, "a and b share the partitions");
    b.signal(libc::SIGKILL);
    wait_assignments(
        &[&a],
        4,
        "a holds every partition after b's session expired",
    );
    drop(a);

    // A clean close with a 60 s session: the rebalance comes from the LeaveGroup.
    let long = ["--session-timeout-ms", "60000"];
    let a = Member::start(
        &python,
        &cluster,
        "members",
        "g-leave",
        &[&["--name", "a"][..], &long].concat(),
    );
    let mut c = Member::start(
        &python,
        &cluster,
        "members",
        "g-leave",
        &[&["--name", "c"][..], &long].concat(),
    );
    wait_assignments(&[&a, &c], 4, "a and c share the partitions");
    let left_at = std::time::Instant::now();
    c.signal(libc::SIGTERM);
    wait_assignments(&[&a], 4, "a holds every partition after c left");
    assert!(
        left_at.elapsed() < Duration::from_secs(60),
        "the rebalance came from the session timeout, not the leave"
    );
    drop(a);

    // Static membership: s1 restarts within its 30 s session and gets its partitions back;
    // a sees no rebalance.
    let st = ["--session-timeout-ms", "30000"];
    let a = Member::start(
        &python,
        &cluster,
        "members",
        "g-static",
        &[&["--name", "a", "--instance-id", "inst-a"][..], &st].concat(),
    );
    let mut s1 = Member::start(
        &python,
        &cluster,
        "members",
        "g-static",
        &[&["--name", "s1", "--instance-id", "inst-s1"][..], &st].concat(),
    );
    wait_assignments(&[&a, &s1], 4, "a and s1 share the partitions");
    let before = s1.assigned();
    let a_rebalances = a.count("assign") + a.count("revoke");
    s1.signal(libc::SIGKILL);
    let s1 = Member::start(
        &python,
        &cluster,
        "members",
        "g-static",
        &[&["--name", "s1", "--instance-id", "inst-s1"][..], &st].concat(),
    );
    keel_tests::wait::wait_until("s1 is assigned again", Duration::from_secs(25), || {
        !s1.assigned().is_empty()
    });
    assert_eq!(s1.assigned(), before, "s1 gets its partitions back");
    keel_tests::wait::stays_true("a sees no rebalance", Duration::from_secs(2), || {
        a.count("assign") + a.count("revoke") == a_rebalances
    });
    assert_eq!(
        a.count("assign") + a.count("revoke"),
        a_rebalances,
        "a saw a rebalance: {:?}",
        a.events()
    );
}

/// The `__consumer_offsets` partition of `group` (Kafka's rule: Java's `String.hashCode`,
/// abs, modulo the partition count).
fn offsets_partition(group: &str, partitions: i32) -> i32 {
    let h = group
        .encode_utf16()
        .fold(0i32, |h, u| h.wrapping_mul(31).wrapping_add(u as i32));
    (if h == i32::MIN { 0 } else { h.abs() }) % partitions
}

/// The last acknowledged commit of each partition among `events`.
fn last_commits(events: &[serde_json::Value]) -> std::collections::BTreeMap<i64, i64> {
    let mut out = std::collections::BTreeMap::new();
    for e in events.iter().filter(|e| e["event"] == "committed") {
        let (p, o) = (
            e["partition"].as_i64().unwrap(),
            e["offset"].as_i64().unwrap(),
        );
        let slot = out.entry(p).or_insert(o);
        *slot = (*slot).max(o);
    }
    out
}

/// kill -9 of the coordinator's broker while a consumer commits: the consumer finds the new
/// coordinator by itself, every commit acknowledged before the kill is still there, and a
/// new member of the group resumes exactly where the commits say.
#[test]
fn coordinator_failover_keeps_every_acknowledged_commit() {
    let _serial = serial();
    let python = require_python_modules(&["confluent_kafka"]);
    let mut cluster = TestCluster::start(ClusterOpts::default().brokers(3));
    cluster.create_replicated_topic("fo", 3, Duration::from_secs(60));
    produce_values(&cluster.bootstrap(), "fo", 3, 3000);

    let mut m = Member::start(
        &python,
        &cluster,
        "fo",
        "g-fo",
        &["--name", "m", "--commit", "--max-records", "2000"],
    );
    keel_tests::wait::wait_until("300 commits", Duration::from_secs(60), || {
        m.count("committed") >= 300
    });
    let p = offsets_partition("g-fo", 50);
    let coordinator = cluster
        .leader_of("__consumer_offsets", p)
        .expect("the group's offsets partition has a leader");
    let before_kill = last_commits(&m.events());
    let commits_at_kill = m.count("committed");
    cluster.kill9(coordinator);
    keel_tests::wait::wait_until(
        "m read 2000 records and closed",
        Duration::from_secs(90),
        || m.count("closed") == 1,
    );
    m.signal(libc::SIGKILL);
    let events = m.events();
    let acknowledged = last_commits(&events);
    assert!(
        m.count("committed") > commits_at_kill + 100,
        "commits went on after the kill through the new coordinator"
    );
    for (p, o) in &before_kill {
        assert!(
            acknowledged[p] >= *o,
            "partition {p}: commit {o} acknowledged before the kill, later {}",
            acknowledged[p]
        );
    }

    // A new member resumes at the committed positions: its first record of each partition
    // is at the offset last committed there (0 where nothing was), and it reads exactly the
    // records after them.
    let committed = |p: i64| acknowledged.get(&p).copied().unwrap_or(0);
    let rest: i64 = (0..3).map(|p| 1000 - committed(p)).sum();
    let n = Member::start(&python, &cluster, "fo", "g-fo", &["--name", "n"]);
    keel_tests::wait::wait_until("n read the rest", Duration::from_secs(60), || {
        n.count("record") as i64 >= rest
    });
    let mut first: std::collections::BTreeMap<i64, i64> = std::collections::BTreeMap::new();
    for e in n.events().iter().filter(|e| e["event"] == "record") {
        first
            .entry(e["partition"].as_i64().unwrap())
            .or_insert(e["offset"].as_i64().unwrap());
    }
    for p in 0..3 {
        if committed(p) < 1000 {
            assert_eq!(
                first.get(&p),
                Some(&committed(p)),
                "partition {p}: n starts at the commit"
            );
        } else {
            assert!(
                !first.contains_key(&p),
                "partition {p} was fully committed, yet n read it"
            );
        }
    }
    keel_tests::wait::stays_true("n reads no record twice", Duration::from_secs(1), || {
        n.count("record") as i64 <= rest
    });
    assert_eq!(
        n.count("record") as i64,
        rest,
        "n reads each remaining record once"
    );
}

/// Bad group requests get the codes Kafka clients expect, change nothing, and the broker
/// keeps serving the same connection.
#[test]
fn bad_group_requests_get_their_codes_and_change_nothing() {
    use kafka_protocol::messages::find_coordinator_request::FindCoordinatorRequest;
    use kafka_protocol::messages::heartbeat_request::HeartbeatRequest;
    use kafka_protocol::messages::join_group_request::{
        JoinGroupRequest, JoinGroupRequestProtocol,
    };
    use kafka_protocol::messages::offset_commit_request::{
        OffsetCommitRequest, OffsetCommitRequestPartition, OffsetCommitRequestTopic,
    };
    use kafka_protocol::messages::offset_fetch_request::{
        OffsetFetchRequest, OffsetFetchRequestTopic,
    };
    use kafka_protocol::messages::sync_group_request::SyncGroupRequest;
    use kafka_protocol::messages::{GroupId, TopicName};
    use kafka_protocol::protocol::StrBytes;
    use keel_tests::raw::RawConn;

    const INVALID_TOPIC: i16 = 17;
    const OFFSET_METADATA_TOO_LARGE: i16 = 12;
    const ILLEGAL_GENERATION: i16 = 22;
    const INVALID_GROUP_ID: i16 = 24;
    const UNKNOWN_MEMBER_ID: i16 = 25;
    const INVALID_SESSION_TIMEOUT: i16 = 26;
    const INVALID_REQUEST: i16 = 42;
    const MEMBER_ID_REQUIRED: i16 = 79;

    let broker = keel_tests::TestBroker::start(
        keel_tests::BrokerOpts::default().set("group.initial.rebalance.delay.ms", "0"),
    );
    let mut c = RawConn::connect(broker.kafka_addr()).unwrap();
    c.create_topic_ok("t", 1).unwrap();
    let s = |v: &str| StrBytes::from_string(v.to_string());
    // The first FindCoordinator creates the offsets topic; ask until it names us.
    keel_tests::wait::wait_until("a coordinator", Duration::from_secs(30), || {
        let r = c
            .request(3, &FindCoordinatorRequest::default().with_key(s("g")))
            .unwrap();
        r.error_code == 0
    });
    // And until the coordinator has loaded the group's offsets partition.
    keel_tests::wait::wait_until(
        "the group's partition loaded",
        Duration::from_secs(30),
        || {
            let r = c
                .request(
                    3,
                    &HeartbeatRequest::default().with_group_id(GroupId(s("g"))),
                )
                .unwrap();
            r.error_code == UNKNOWN_MEMBER_ID
        },
    );
    let join = |group: &str, member: &str, session: i32, metadata: usize| {
        JoinGroupRequest::default()
            .with_group_id(GroupId(s(group)))
            .with_session_timeout_ms(session)
            .with_rebalance_timeout_ms(10_000)
            .with_member_id(s(member))
            .with_protocol_type(s("consumer"))
            .with_protocols(vec![JoinGroupRequestProtocol::default()
                .with_name(s("range"))
                .with_metadata(bytes::Bytes::from(vec![0u8; metadata]))])
    };
    let long_id = "g".repeat(300);
    let cases: Vec<(&str, JoinGroupRequest, i16)> = vec![
        (
            "an over-long group id",
            join(&long_id, "", 10_000, 10),
            INVALID_GROUP_ID,
        ),
        (
            "an empty group id",
            join("", "", 10_000, 10),
            INVALID_GROUP_ID,
        ),
        (
            "300 KiB of protocol metadata",
            join("g", "", 10_000, 300 << 10),
            INVALID_REQUEST,
        ),
        (
            "a 10 ms session",
            join("g", "", 10, 10),
            INVALID_SESSION_TIMEOUT,
        ),
        (
            "an unknown member",
            join("g", "nobody", 10_000, 10),
            UNKNOWN_MEMBER_ID,
        ),
    ];
    for (what, req, code) in cases {
        let r = c.request(5, &req).unwrap();
        assert_eq!(r.error_code, code, "{what}");
    }

    // A real member: MEMBER_ID_REQUIRED, then generation 1 as the leader.
    let r = c.request(5, &join("g", "", 10_000, 10)).unwrap();
    assert_eq!(r.error_code, MEMBER_ID_REQUIRED);
    let member = r.member_id.to_string();
    let r = c.request(5, &join("g", &member, 10_000, 10)).unwrap();
    assert_eq!((r.error_code, r.generation_id), (0, 1));
    let hb = |generation: i32, member: &str| {
        HeartbeatRequest::default()
            .with_group_id(GroupId(s("g")))
            .with_generation_id(generation)
            .with_member_id(s(member))
    };
    assert_eq!(
        c.request(3, &hb(1, "nobody")).unwrap().error_code,
        UNKNOWN_MEMBER_ID
    );
    assert_eq!(
        c.request(3, &hb(7, &member)).unwrap().error_code,
        ILLEGAL_GENERATION
    );
    let sync = SyncGroupRequest::default()
        .with_group_id(GroupId(s("g")))
        .with_generation_id(9)
        .with_member_id(s(&member));
    assert_eq!(c.request(3, &sync).unwrap().error_code, ILLEGAL_GENERATION);

    let commit = |generation: i32, topic: &str, metadata: &str| {
        OffsetCommitRequest::default()
            .with_group_id(GroupId(s("g")))
            .with_generation_id_or_member_epoch(generation)
            .with_member_id(s(&member))
            .with_topics(vec![OffsetCommitRequestTopic::default()
                .with_name(TopicName(s(topic)))
                .with_partitions(vec![OffsetCommitRequestPartition::default()
                    .with_partition_index(0)
                    .with_committed_offset(5)
                    .with_committed_metadata(Some(s(metadata)))])])
    };
    let code =
        |r: kafka_protocol::messages::OffsetCommitResponse| r.topics[0].partitions[0].error_code;
    assert_eq!(
        code(c.request(7, &commit(1, "no-such-topic", "")).unwrap()),
        3
    );
    assert_eq!(
        code(c.request(7, &commit(4, "t", "")).unwrap()),
        ILLEGAL_GENERATION
    );
    assert_eq!(
        code(c.request(7, &commit(1, "t", &"m".repeat(5000))).unwrap()),
        OFFSET_METADATA_TOO_LARGE
    );
    // Forged group state: nobody produces to the offsets topic but the coordinator.
    let forged = keel_protocol::encode::values_batch(["forged"], 0);
    let r = c
        .produce_bytes("__consumer_offsets", 0, forged, -1)
        .unwrap();
    assert_eq!(r.error_code, INVALID_TOPIC);

    // Nothing was committed; a valid commit still works on the same connection.
    let fetch = OffsetFetchRequest::default()
        .with_group_id(GroupId(s("g")))
        .with_topics(Some(vec![OffsetFetchRequestTopic::default()
            .with_name(TopicName(s("t")))
            .with_partition_indexes(vec![0])]));
    let r = c.request(7, &fetch).unwrap();
    assert_eq!(r.topics[0].partitions[0].committed_offset, -1);
    // Between join and sync a commit is refused; after the leader's sync it is taken.
    assert_eq!(code(c.request(7, &commit(1, "t", "ok")).unwrap()), 27);
    let sync = SyncGroupRequest::default()
        .with_group_id(GroupId(s("g")))
        .with_generation_id(1)
        .with_member_id(s(&member));
    assert_eq!(c.request(3, &sync).unwrap().error_code, 0);
    assert_eq!(code(c.request(7, &commit(1, "t", "ok")).unwrap()), 0);
    let r = c.request(7, &fetch).unwrap();
    assert_eq!(r.topics[0].partitions[0].committed_offset, 5);
    assert_eq!(r.topics[0].partitions[0].metadata.as_deref(), Some("ok"));
}

/// Offsets retention: a group without members loses its offsets (tombstones on the log) once
/// they are older than the retention, and stays gone after a restart; a group whose member
/// keeps consuming keeps them.
#[test]
fn offsets_of_an_idle_group_expire_and_a_live_group_keeps_its_own() {
    use keel_client::{Admin, ClientConfig, Consumer, ConsumerConfig, GroupConfig, Offset};
    use std::collections::BTreeMap;
    let mut broker = keel_tests::TestBroker::start(
        keel_tests::BrokerOpts::default()
            .set("group.initial.rebalance.delay.ms", "0")
            .set("offsets.retention.ms", "2000")
            .set("offsets.retention.check.interval.ms", "300"),
    );
    let boot = broker.bootstrap();
    let mut conn = keel_tests::raw::RawConn::connect(broker.kafka_addr()).unwrap();
    conn.create_topic_ok("ret", 1).unwrap();
    produce_values(&boot, "ret", 1, 10);
    let rt = keel_tests::runtime();
    let listed = |rt: &tokio::runtime::Runtime, boot: &str| -> Vec<String> {
        rt.block_on(async {
            let admin = Admin::new(ClientConfig::new(boot)).await.unwrap();
            admin
                .list_groups()
                .await
                .map(|gs| gs.into_iter().map(|g| g.group_id).collect())
                .unwrap_or_default()
        })
    };
    rt.block_on(async {
        let admin = Admin::new(ClientConfig::new(&boot)).await.unwrap();
        let offsets = BTreeMap::from([(("ret".to_string(), 0), 5)]);
        admin.set_group_offsets("idle", &offsets).await.unwrap();
    });
    // A live member that commits as it goes.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let live = {
        let (boot, stop) = (boot.clone(), stop.clone());
        rt.spawn(async move {
            let config = ConsumerConfig {
                max_wait: Duration::from_millis(100),
                ..ConsumerConfig::default()
            };
            let mut c = Consumer::new(ClientConfig::new(&boot), config)
                .await
                .unwrap();
            let g = GroupConfig {
                auto_offset_reset: Offset::Earliest,
                auto_commit_interval: Duration::from_millis(200),
                session_timeout: Duration::from_secs(10),
                heartbeat_interval: Duration::from_millis(300),
                ..GroupConfig::new("live")
            };
            c.subscribe(&["ret"], g).await.unwrap();
            while !stop.load(std::sync::atomic::Ordering::Acquire) {
                c.poll().await.unwrap();
            }
            c
        })
    };
    keel_tests::wait::wait_until("both groups listed", Duration::from_secs(20), || {
        let l = listed(&rt, &boot);
        l.contains(&"live".to_string()) && l.contains(&"idle".to_string())
    });
    keel_tests::wait::wait_until("the idle group expired", Duration::from_secs(30), || {
        !listed(&rt, &boot).contains(&"idle".to_string())
    });
    let offsets = |rt: &tokio::runtime::Runtime, boot: &str, g: &str| {
        rt.block_on(async {
            let admin = Admin::new(ClientConfig::new(boot)).await.unwrap();
            admin.group_offsets(g).await.unwrap()
        })
    };
    // Past the retention once more: the live group keeps its offset all along.
    keel_tests::wait::stays_true(
        "the live group keeps its offset past the retention",
        Duration::from_secs(3),
        || offsets(&rt, &boot, "live").get(&("ret".to_string(), 0)) == Some(&10),
    );
    assert!(offsets(&rt, &boot, "idle").is_empty());
    assert_eq!(
        offsets(&rt, &boot, "live").get(&("ret".to_string(), 0)),
        Some(&10)
    );
    stop.store(true, std::sync::atomic::Ordering::Release);
    let consumer = rt.block_on(live).unwrap();
    drop(consumer); // no LeaveGroup: the member just goes away
                    // After a crash and a reload from the log: the tombstones hold.
    broker.kill9();
    broker.restart();
    let boot = broker.bootstrap();
    keel_tests::wait::wait_until(
        "the reloaded coordinator answers",
        Duration::from_secs(30),
        || {
            rt.block_on(async {
                let admin = Admin::new(ClientConfig::new(&boot)).await.unwrap();
                admin.group_offsets("live").await.is_ok()
            })
        },
    );
    assert!(
        offsets(&rt, &boot, "idle").is_empty(),
        "expired offsets came back"
    );
}
