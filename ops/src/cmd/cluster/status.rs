//! `keel cluster status`: brokers, partitions (leader, epoch, replicas, ISR) and, for
//! a cluster from `keel cluster start`, LEO/HW per replica from each node's `/metrics`.

use std::collections::BTreeMap;

use anyhow::{anyhow, Context as _};

use super::file::{ClusterFile, FILE_NAME};
use super::metrics::{partition_offsets, scrape_metrics, PartitionOffsets};
use super::{StatusArgs, PROBE_TIMEOUT};
use crate::args::parse_bootstrap;
use crate::connect;
use crate::table::{ids, strings, table};

pub async fn run(args: StatusArgs) -> anyhow::Result<()> {
    let file = ClusterFile::read(&args.data_dir.join(FILE_NAME))?;
    let bootstrap = match (args.bootstrap_server, &file) {
        (Some(b), _) => b,
        (None, Some(f)) if !f.bootstrap().is_empty() => {
            parse_bootstrap(&f.bootstrap().join(",")).map_err(|e| anyhow!(e))?
        }
        (None, _) => parse_bootstrap("127.0.0.1:9092").expect("a valid address"),
    };
    if let Some(f) = &file {
        print!("{}", super::file::render_nodes(f));
        println!();
        let voters: Vec<(i32, std::net::SocketAddr)> = f
            .nodes
            .iter()
            .filter_map(|n| Some((n.id, n.controller?)))
            .collect();
        let states = super::quorum::quorum_states(&voters, None, PROBE_TIMEOUT).await;
        println!("{}", super::quorum::render(&states));
    }
    let admin = connect::admin(&bootstrap).await?;
    let brokers = admin.brokers().await.context("cannot list brokers")?;
    let mut rows = vec![strings(&["BROKER", "ADDRESS"])];
    for b in &brokers {
        rows.push(vec![
            b.node_id.to_string(),
            format!("{}:{}", b.host, b.port),
        ]);
    }
    print!("{}", table(&rows));

    let mut topics = admin.list_topics().await.context("cannot list topics")?;
    topics.sort();
    let described = admin
        .describe_topics(&topics)
        .await
        .context("cannot describe topics")?;
    let offsets = match &file {
        Some(f) => Some(scrape_all(f).await),
        None => None,
    };
    let mut header = strings(&["TOPIC", "PARTITION", "LEADER", "EPOCH", "REPLICAS", "ISR"]);
    if offsets.is_some() {
        header.push("LEO/HW PER REPLICA".to_string());
    }
    let mut rows = vec![header];
    for topic in &described {
        let mut partitions = topic.partitions.clone();
        partitions.sort_by_key(|p| p.partition);
        for p in partitions {
            let mut row = vec![
                topic.name.clone(),
                p.partition.to_string(),
                if p.leader < 0 {
                    "none".into()
                } else {
                    p.leader.to_string()
                },
                p.leader_epoch.to_string(),
                ids(&p.replicas),
                ids(&p.isr),
            ];
            if let Some(offsets) = &offsets {
                let key = (topic.name.clone(), p.partition);
                let cells: Vec<String> = p
                    .replicas
                    .iter()
                    .map(|r| match offsets.get(r) {
                        Some(Ok(map)) => match map.get(&key) {
                            Some(o) => format!("{r}:{}/{}", opt(o.leo), opt(o.hw)),
                            None => format!("{r}:-"),
                        },
                        _ => format!("{r}:?"),
                    })
                    .collect();
                row.push(cells.join(" "));
            }
            rows.push(row);
        }
    }
    println!();
    if described.is_empty() {
        println!("no topics");
    } else {
        print!("{}", table(&rows));
    }
    match &offsets {
        None => println!(
            "(LEO/HW per replica needs {} from `keel cluster start`)",
            args.data_dir.join(FILE_NAME).display()
        ),
        Some(offsets) => {
            for (id, r) in offsets {
                if let Err(e) = r {
                    println!("node {id}: no metrics ({e:#})");
                }
            }
        }
    }
    Ok(())
}

/// Every node's partition gauges, by node id; a failed scrape is a value, not an error.
async fn scrape_all(file: &ClusterFile) -> BTreeMap<i32, anyhow::Result<PartitionOffsets>> {
    let mut out = BTreeMap::new();
    for n in &file.nodes {
        let Some(addr) = n.metrics else { continue };
        if n.state != super::file::NodeState::Up {
            out.insert(n.id, Err(anyhow!("node {} is {}", n.id, n.state.as_str())));
            continue;
        }
        let r = scrape_metrics(addr, PROBE_TIMEOUT).await;
        out.insert(n.id, r.map(|text| partition_offsets(&text)));
    }
    out
}

fn opt(v: Option<i64>) -> String {
    v.map_or_else(|| "?".to_string(), |v| v.to_string())
}
