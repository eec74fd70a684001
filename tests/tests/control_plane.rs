//! One control plane: what clients are told about the controller (Metadata, DescribeCluster)
//! on a one-node combined cluster and on a cluster with a dedicated controller, and topic
//! creation as the controller checks it (manual assignments, `validate_only`, a name given
//! twice, auto-creation through the controller).

use kafka_protocol::messages::create_topics_request::{
    CreatableReplicaAssignment, CreatableTopic, CreateTopicsRequest,
};
use kafka_protocol::messages::describe_cluster_request::DescribeClusterRequest;
use kafka_protocol::messages::metadata_request::{MetadataRequest, MetadataRequestTopic};
use kafka_protocol::messages::BrokerId;
use keel_tests::raw::{topic_name, RawConn};
use keel_tests::{BrokerOpts, ClusterOpts, TestBroker, TestCluster};

const INVALID_REQUEST: i16 = 42;
const INVALID_REPLICA_ASSIGNMENT: i16 = 39;
const UNSUPPORTED_ENDPOINT_TYPE: i16 = 115;

fn describe_cluster(c: &mut RawConn, version: i16, endpoint_type: i8) -> (i16, i32, Vec<i32>) {
    let req = DescribeClusterRequest::default().with_endpoint_type(endpoint_type);
    let resp = c.request(version, &req).unwrap();
    let mut brokers: Vec<i32> = resp.brokers.iter().map(|b| b.broker_id.0).collect();
    brokers.sort_unstable();
    (resp.error_code, resp.controller_id.0, brokers)
}

fn topic(name: &str, partitions: i32, rf: i16) -> CreatableTopic {
    CreatableTopic::default()
        .with_name(topic_name(name))
        .with_num_partitions(partitions)
        .with_replication_factor(rf)
}

#[test]
fn a_combined_node_is_its_own_controller() {
    let b = TestBroker::start(BrokerOpts::default().set("auto.create.topics.enable", "true"));
    let mut c = RawConn::connect(b.kafka_addr()).unwrap();
    assert_eq!(c.metadata(None).unwrap().controller_id.0, 1);
    for version in [0, 1] {
        assert_eq!(describe_cluster(&mut c, version, 1), (0, 1, vec![1]));
    }
    assert_eq!(
        describe_cluster(&mut c, 1, 2).0,
        UNSUPPORTED_ENDPOINT_TYPE,
        "brokers do not describe controllers"
    );

    // The controller checks what a broker forwards.
    let req = CreateTopicsRequest::default()
        .with_timeout_ms(10_000)
        .with_topics(vec![
            topic("twice", 1, 1),
            topic("twice", 2, 1),
            CreatableTopic::default()
                .with_name(topic_name("assigned"))
                .with_num_partitions(-1)
                .with_replication_factor(-1)
                .with_assignments(vec![
                    CreatableReplicaAssignment::default()
                        .with_partition_index(0)
                        .with_broker_ids(vec![BrokerId(1)]),
                    CreatableReplicaAssignment::default()
                        .with_partition_index(1)
                        .with_broker_ids(vec![BrokerId(1)]),
                ]),
            CreatableTopic::default()
                .with_name(topic_name("nobody"))
                .with_num_partitions(-1)
                .with_replication_factor(-1)
                .with_assignments(vec![CreatableReplicaAssignment::default()
                    .with_partition_index(0)
                    .with_broker_ids(vec![BrokerId(7)])]),
        ]);
    let resp = c.request(7, &req).unwrap();
    let codes: Vec<(String, i16, i32)> = resp
        .topics
        .iter()
        .map(|t| (t.name.to_string(), t.error_code, t.num_partitions))
        .collect();
    assert_eq!(
        codes,
        [
            ("twice".into(), INVALID_REQUEST, -1),
            ("twice".into(), INVALID_REQUEST, -1),
            ("assigned".into(), 0, 2),
            ("nobody".into(), INVALID_REPLICA_ASSIGNMENT, -1),
        ]
    );
    let validate = CreateTopicsRequest::default()
        .with_timeout_ms(10_000)
        .with_validate_only(true)
        .with_topics(vec![topic("checked", 3, 1)]);
    let resp = c.request(7, &validate).unwrap();
    assert_eq!(resp.topics[0].error_code, 0);
    assert_eq!(resp.topics[0].num_partitions, 3);
    let meta = c.metadata(Some(&["assigned"])).unwrap();
    assert_eq!(meta.topics[0].partitions.len(), 2);

    // Auto-creation goes through the controller too, and is answered with the new topic.
    let auto = MetadataRequest::default()
        .with_allow_auto_topic_creation(true)
        .with_topics(Some(vec![
            MetadataRequestTopic::default().with_name(Some(topic_name("auto")))
        ]));
    let resp = c.request(12, &auto).unwrap();
    assert_eq!(resp.topics[0].error_code, 0, "{resp:?}");
    assert_eq!(resp.topics[0].partitions.len(), 1);
    let checked_was_not_created = c.metadata(Some(&["checked"])).unwrap();
    assert_ne!(checked_was_not_created.topics[0].error_code, 0);
}

#[test]
fn with_a_dedicated_controller_each_broker_names_itself() {
    let cluster = TestCluster::start(ClusterOpts::default().brokers(2));
    for id in cluster.broker_ids() {
        let mut c = RawConn::connect(cluster.broker(id).kafka_addr()).unwrap();
        assert_eq!(c.metadata(None).unwrap().controller_id.0, id);
        assert_eq!(describe_cluster(&mut c, 1, 1), (0, id, vec![1, 2]));
    }
}
