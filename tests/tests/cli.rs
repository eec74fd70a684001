//! The `keel` CLI against a real broker: topic admin, produce and consume of lines, and the
//! messages a person sees when something is wrong.

use std::collections::BTreeSet;
use std::time::Duration;

use keel_tests::{keel, wait_until, BrokerOpts, CmdOutput, TestBroker};

/// Runs `keel <args> --bootstrap-server <b>`.
fn keel_at(b: &TestBroker, args: &[&str], stdin: Option<&[u8]>) -> CmdOutput {
    let bootstrap = b.bootstrap();
    let mut all = args.to_vec();
    all.extend(["--bootstrap-server", bootstrap.as_str()]);
    keel(&all, stdin)
}

fn lines(out: &CmdOutput) -> Vec<String> {
    out.stdout_str().lines().map(str::to_string).collect()
}

fn topic_names(b: &TestBroker) -> BTreeSet<String> {
    let out = keel_at(b, &["topic", "list"], None);
    out.assert_success();
    lines(&out).into_iter().collect()
}

/// A port nothing listens on (bound, then released).
fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn topic_create_list_describe_delete() {
    let b = TestBroker::start(BrokerOpts::default());

    let out = keel_at(
        &b,
        &["topic", "create", "orders", "--partitions", "3"],
        None,
    );
    out.assert_success();
    assert!(out.stdout_str().contains("created topic orders"), "{out}");
    keel_at(&b, &["topic", "create", "audit"], None).assert_success();

    let names = topic_names(&b);
    assert!(
        names.contains("orders") && names.contains("audit"),
        "{names:?}"
    );

    let out = keel_at(&b, &["topic", "describe", "orders"], None);
    out.assert_success();
    let text = out.stdout_str();
    assert!(
        text.starts_with("topic orders: 3 partitions, replication factor 1"),
        "{out}"
    );
    for p in 0..3 {
        let row = text
            .lines()
            .find(|l| l.split_whitespace().next() == Some(&p.to_string()))
            .unwrap_or_else(|| panic!("no row for partition {p}: {out}"));
        let cols: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(cols, [p.to_string().as_str(), "1", "1", "1"], "row {row:?}");
    }

    // Creating it again fails and says why.
    let out = keel_at(&b, &["topic", "create", "orders"], None);
    out.assert_failure();
    assert!(out.stderr_str().contains("orders"), "{out}");

    let out = keel_at(&b, &["topic", "delete", "audit"], None);
    out.assert_success();
    assert!(out.stdout_str().contains("deleted topic audit"), "{out}");
    wait_until(
        "audit disappears from the topic list",
        Duration::from_secs(15),
        || !topic_names(&b).contains("audit"),
    );
    assert!(topic_names(&b).contains("orders"));
}

#[test]
fn produced_lines_come_back_in_order() {
    let b = TestBroker::start(BrokerOpts::default());
    keel_at(&b, &["topic", "create", "ordered"], None).assert_success();
    let n = 500;
    let input: String = (0..n).map(|i| format!("key-{i}\tvalue {i} ü\n")).collect();
    keel_at(&b, &["produce", "ordered"], Some(input.as_bytes())).assert_success();

    let n_arg = n.to_string();
    let out = keel_at(
        &b,
        &[
            "consume",
            "ordered",
            "--from-beginning",
            "-n",
            &n_arg,
            "--print-key",
            "--timeout-ms",
            "20000",
        ],
        None,
    );
    out.assert_success();
    assert_eq!(
        out.stdout_str(),
        input,
        "consumed lines differ from produced lines"
    );
}

#[test]
fn keyed_and_unkeyed_lines_over_partitions_and_codecs() {
    let b = TestBroker::start(BrokerOpts::default());
    for codec in ["none", "gzip", "lz4", "zstd", "snappy"] {
        let topic = format!("lines-{codec}");
        keel_at(&b, &["topic", "create", &topic, "--partitions", "3"], None).assert_success();
        let mut input = String::new();
        let mut want = BTreeSet::new();
        for i in 0..300 {
            if i % 10 == 0 {
                input.push_str(&format!("plain line {i}\n"));
                want.insert(format!("null\tplain line {i}"));
            } else {
                input.push_str(&format!("k{i}\tv{i}\n"));
                want.insert(format!("k{i}\tv{i}"));
            }
        }
        keel_at(
            &b,
            &["produce", &topic, "--compression", codec, "--acks", "all"],
            Some(input.as_bytes()),
        )
        .assert_success();
        let out = keel_at(
            &b,
            &[
                "consume",
                &topic,
                "--from-beginning",
                "-n",
                "300",
                "--print-key",
                "--timeout-ms",
                "20000",
            ],
            None,
        );
        out.assert_success();
        let got: Vec<String> = lines(&out);
        assert_eq!(got.len(), 300, "{codec}: {out}");
        let got: BTreeSet<String> = got.into_iter().collect();
        assert_eq!(got, want, "{codec}: consumed lines differ");
    }
}

#[test]
fn unknown_topic_is_explained() {
    let b = TestBroker::start(BrokerOpts::default());
    let cases: &[(&[&str], Option<&[u8]>)] = &[
        (&["produce", "nosuch"], Some(b"a\tb\n")),
        (
            &["consume", "nosuch", "-n", "1", "--timeout-ms", "5000"],
            None,
        ),
        (&["topic", "describe", "nosuch"], None),
        (&["topic", "delete", "nosuch"], None),
    ];
    for (args, stdin) in cases {
        let out = keel_at(&b, args, *stdin);
        out.assert_failure();
        assert!(
            out.stderr_str().contains("unknown topic 'nosuch'"),
            "{args:?}: {out}"
        );
    }
}

#[test]
fn no_broker_is_explained() {
    let port = closed_port();
    let addr = format!("127.0.0.1:{port}");
    let cases: &[&[&str]] = &[
        &["consume", "t", "-n", "1"],
        &["produce", "t"],
        &["topic", "list"],
    ];
    for args in cases {
        let mut all = args.to_vec();
        all.extend(["--bootstrap-server", addr.as_str()]);
        let out = keel(&all, Some(b"x\n"));
        out.assert_failure();
        assert!(
            out.stderr_str().contains(&format!("no broker at {addr}")),
            "{args:?}: {out}"
        );
    }
}

/// The harness finds the CLI at run time (a library has no `CARGO_BIN_EXE_*`); it must be
/// exactly the binary cargo built for these tests.
#[test]
fn harness_runs_the_binary_cargo_built() {
    let built = std::path::Path::new(env!("CARGO_BIN_EXE_keel-testbin"));
    if std::env::var_os("KEEL_TESTBIN").is_none() {
        assert_eq!(
            keel_tests::command::keel_bin().canonicalize().unwrap(),
            built.canonicalize().unwrap()
        );
    }
    let out = keel(&["--version"], None);
    out.assert_success();
    assert!(out.stdout_str().starts_with("keel "), "{out}");
}

/// `keel consume --group` reads from the group's committed offsets and commits what it
/// printed; `keel group` lists, describes (committed, end, lag), resets (a dry run first)
/// and deletes the group.
#[test]
fn group_consume_describe_reset_and_delete() {
    let b = TestBroker::start(BrokerOpts::default().set("group.initial.rebalance.delay.ms", "0"));
    keel_at(&b, &["topic", "create", "gt", "--partitions", "2"], None).assert_success();
    let input: String = (0..10).map(|i| format!("v{i}\n")).collect();
    keel_at(&b, &["produce", "gt"], Some(input.as_bytes())).assert_success();

    let out = keel_at(
        &b,
        &[
            "consume",
            "gt",
            "--group",
            "cg",
            "--from-beginning",
            "-n",
            "6",
            "--timeout-ms",
            "20000",
        ],
        None,
    );
    out.assert_success();
    assert_eq!(lines(&out).len(), 6, "{out}");

    let out = keel_at(&b, &["group", "list"], None);
    out.assert_success();
    assert!(
        out.stdout_str().contains("cg") && out.stdout_str().contains("Empty"),
        "{out}"
    );
    let out = keel_at(&b, &["group", "describe", "cg"], None);
    out.assert_success();
    let committed: i64 = lines(&out)
        .iter()
        .filter(|l| l.starts_with("gt "))
        .map(|l| l.split_whitespace().nth(2).unwrap().parse::<i64>().unwrap())
        .sum();
    assert_eq!(committed, 6, "{out}");
    assert!(out.stdout_str().contains("LAG"), "{out}");

    // The rest, from where the group stopped.
    let out = keel_at(
        &b,
        &["consume", "gt", "--group", "cg", "--timeout-ms", "5000"],
        None,
    );
    out.assert_success();
    assert_eq!(lines(&out).len(), 4, "{out}");

    // Reset: a dry run changes nothing; --execute moves the group back to the start.
    let out = keel_at(
        &b,
        &[
            "group",
            "reset-offsets",
            "cg",
            "--topic",
            "gt",
            "--to-earliest",
        ],
        None,
    );
    out.assert_success();
    assert!(out.stdout_str().contains("dry run"), "{out}");
    let out = keel_at(
        &b,
        &["consume", "gt", "--group", "cg", "--timeout-ms", "3000"],
        None,
    );
    assert_eq!(lines(&out).len(), 0, "the dry run moved nothing: {out}");
    keel_at(
        &b,
        &[
            "group",
            "reset-offsets",
            "cg",
            "--topic",
            "gt",
            "--to-earliest",
            "--execute",
        ],
        None,
    )
    .assert_success();
    let out = keel_at(
        &b,
        &[
            "consume",
            "gt",
            "--group",
            "cg",
            "-n",
            "10",
            "--timeout-ms",
            "20000",
        ],
        None,
    );
    assert_eq!(lines(&out).len(), 10, "{out}");

    keel_at(&b, &["group", "delete", "cg"], None).assert_success();
    let out = keel_at(&b, &["group", "list"], None);
    assert!(!out.stdout_str().contains("cg"), "{out}");
}
