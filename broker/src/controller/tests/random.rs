//! Replay of the metadata log and randomised command sequences.

use super::*;
use crate::controller::*;

use std::collections::BTreeMap;

// ---- replay ---------------------------------------------------------------------------

/// Drives a scenario through every command.
fn scenario() -> Harness {
    let mut h = Harness::cluster(3);
    h.create("orders", 3, 3);
    h.create("audit", 2, 1);
    h.create("temp", 1, 2);
    let (_, r) = h.c.alter_partition(&h.alter("orders", 1, &[1, 3])).unwrap();
    h.commit(r);
    h.pass(10_000, &[2, 3]); // 1 expires
    h.register(1);
    h.heartbeat(1);
    let r = h.c.delete_topic("temp").unwrap();
    h.commit(r);
    h.create("temp", 2, 2);
    h.pass(1000, &[1, 2, 3]);
    let epoch = h.epoch(3);
    let (_, r) =
        h.c.heartbeat(3, epoch, h.image().offset(), true, h.now)
            .unwrap();
    h.commit(r);
    h.pass(1000, &[1, 2]);
    h
}

#[test]
fn replaying_the_json_log_rebuilds_the_same_image() {
    let h = scenario();
    assert!(h.log.len() > 30, "{} records", h.log.len());
    let stored: Vec<(i64, Vec<u8>)> = h.log.iter().map(|(o, r)| (*o, r.encode())).collect();
    let mut replayed = MetadataImage::new();
    for (offset, bytes) in &stored {
        assert!(replayed.apply(*offset, &MetadataRecord::decode(bytes).unwrap()));
    }
    assert_eq!(&replayed, h.image());
    // Replaying again over the same image changes nothing (records are skipped).
    for (offset, bytes) in &stored {
        assert!(!replayed.apply(*offset, &MetadataRecord::decode(bytes).unwrap()));
    }
    assert_eq!(&replayed, h.image());
    // A broker that replays the log learns its replicas from the diff.
    let changes = diff(&MetadataImage::new(), &replayed, 2);
    assert_eq!(changes.len(), replayed.partitions_with_replica(2).count());
}

// ---- randomised sequences -------------------------------------------------------------

/// xorshift64*: a dependency-free, reproducible random source.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Random commands from random brokers; `Harness::commit` checks the invariants after
/// every command (leader ∈ ISR ⊆ replicas, ISR never empty, epochs never go back, a
/// fenced broker never leads), and the final image must equal its replay.
#[test]
fn random_command_sequences_keep_the_invariants() {
    for seed in 1..=60u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        let mut h = Harness::new();
        let brokers = 1..=5;
        let mut topics = 0;
        for _step in 0..250 {
            let id = brokers.start() + rng.below(5) as i32;
            match rng.below(10) {
                0 => {
                    h.register(id);
                }
                1..=3 => {
                    if let Some(epoch) = h.image().broker(id).map(|b| b.epoch) {
                        let lag = rng.below(3) as i64;
                        let shutdown = rng.below(8) == 0;
                        let offset = h.image().offset() - lag;
                        let (_, r) = h.c.heartbeat(id, epoch, offset, shutdown, h.now).unwrap();
                        h.commit(r);
                    }
                }
                4 => {
                    h.now += rng.below(6000);
                    h.tick();
                }
                5 => {
                    let name = format!("t{topics}");
                    topics += 1;
                    let (p, rf) = (1 + rng.below(4) as i32, 1 + rng.below(3) as i16);
                    if let Ok(r) = h.c.create_topic(&name, Some(p), Some(rf), BTreeMap::new()) {
                        h.commit(r);
                    }
                }
                6 => {
                    let victim = h
                        .image()
                        .topics()
                        .nth(rng.below(4) as usize)
                        .map(|t| t.name.clone());
                    if let Some(r) = victim.and_then(|t| h.c.delete_topic(&t).ok()) {
                        h.commit(r);
                    }
                }
                _ => {
                    // A leader (or an impostor) proposes a random ISR.
                    let all: Vec<PartitionRecord> = h.image().partitions().cloned().collect();
                    if all.is_empty() {
                        continue;
                    }
                    let p = &all[rng.below(all.len() as u64) as usize];
                    let requester = if rng.below(4) == 0 { id } else { p.leader };
                    let Some(b) = h.image().broker(requester) else {
                        continue;
                    };
                    let new_isr = p
                        .replicas
                        .iter()
                        .filter(|r| **r == p.leader || rng.below(2) == 0)
                        .map(|r| (*r, h.image().broker(*r).map_or(-1, |b| b.epoch)))
                        .collect();
                    let req = AlterPartitionRequest {
                        broker_id: requester,
                        broker_epoch: b.epoch,
                        topic: p.topic.clone(),
                        partition: p.partition,
                        leader_epoch: p.leader_epoch,
                        partition_epoch: p.partition_epoch,
                        new_isr,
                    };
                    if let Ok((next, r)) = h.c.alter_partition(&req) {
                        h.commit(r);
                        assert_eq!(
                            h.image().partition(&next.topic, next.partition),
                            Some(&next)
                        );
                    }
                }
            }
        }
        let mut replayed = MetadataImage::new();
        for (offset, r) in &h.log {
            replayed.apply(*offset, &MetadataRecord::decode(&r.encode()).unwrap());
        }
        assert_eq!(&replayed, h.image(), "seed {seed}");
    }
}
