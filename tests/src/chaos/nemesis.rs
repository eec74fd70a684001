//! The fault schedule of a chaos run: a pure function of the seed, so a run replays exactly.
//!
//! One fault at a time: a cycle applies a fault to one node, holds it while the workload
//! runs, heals it, and lets the cluster settle before the next. With RF=3 and min ISR 2 a
//! single fault never makes acks=all impossible, so every cycle exercises the write path
//! and the repair that follows.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use crate::data::Rng;

/// A kind of fault a run may inject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Nemesis {
    /// SIGKILL a node; restart it at heal.
    Kill,
    /// SIGSTOP a node; SIGCONT it at heal.
    Pause,
    /// Cut a node off from every other node through the fault proxies (drop, black-hole or
    /// delay); clients still reach it. Healed by restoring the links.
    Partition,
    /// SIGKILL a broker, flip a byte in one of its segment files, restart it.
    Corrupt,
    /// SIGKILL a broker and discard every segment byte it had not fsynced, then restart it.
    PowerLoss,
    /// Take out a majority of the controller voters at once (the active controller and
    /// one more): SIGKILL or SIGSTOP both; restart or continue both at heal.
    Majority,
}

impl Nemesis {
    pub const ALL: [Nemesis; 6] = [
        Nemesis::Kill,
        Nemesis::Pause,
        Nemesis::Partition,
        Nemesis::Corrupt,
        Nemesis::PowerLoss,
        Nemesis::Majority,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Nemesis::Kill => "kill",
            Nemesis::Pause => "pause",
            Nemesis::Partition => "partition",
            Nemesis::Corrupt => "corrupt",
            Nemesis::PowerLoss => "powerloss",
            Nemesis::Majority => "majority",
        }
    }

    /// Whether the active controller (node 0 in a schedule, resolved when the fault is
    /// injected) may be the target. Corruption and power loss aim at partition segments,
    /// so at brokers by id.
    fn may_hit_controller(self) -> bool {
        matches!(self, Nemesis::Kill | Nemesis::Pause | Nemesis::Partition)
    }
}

impl FromStr for Nemesis {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Nemesis::ALL
            .into_iter()
            .find(|n| n.name() == s)
            .ok_or_else(|| {
                let names: Vec<_> = Nemesis::ALL.iter().map(|n| n.name()).collect();
                format!("unknown nemesis {s:?}; known: {}", names.join(","))
            })
    }
}

/// Parses a comma-separated list such as `kill,pause,partition`; duplicates are ignored.
pub fn parse_nemeses(list: &str) -> Result<Vec<Nemesis>, String> {
    let mut out: Vec<Nemesis> = list
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    out.sort_unstable();
    out.dedup();
    if out.is_empty() {
        return Err("no nemesis given".into());
    }
    Ok(out)
}

/// How a partitioned node's links misbehave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkMode {
    Drop,
    Blackhole,
    /// Every chunk delayed by this many milliseconds.
    Delay(u64),
}

/// One fault on one node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    Kill {
        node: i32,
    },
    Pause {
        node: i32,
    },
    Partition {
        node: i32,
        mode: LinkMode,
    },
    /// `pick` chooses the partition, segment and byte, deterministically.
    Corrupt {
        node: i32,
        pick: u64,
    },
    PowerLoss {
        node: i32,
    },
    /// The active controller and the voter after it: killed (`kill`) or paused.
    Majority {
        kill: bool,
    },
}

/// In a [`Fault`], the node id that means "the active controller when the fault starts".
pub const ACTIVE_CONTROLLER: i32 = 0;

impl Fault {
    pub fn node(&self) -> i32 {
        match *self {
            Fault::Kill { node }
            | Fault::Pause { node }
            | Fault::Partition { node, .. }
            | Fault::Corrupt { node, .. }
            | Fault::PowerLoss { node } => node,
            Fault::Majority { .. } => ACTIVE_CONTROLLER,
        }
    }

    pub fn nemesis(&self) -> Nemesis {
        match self {
            Fault::Kill { .. } => Nemesis::Kill,
            Fault::Pause { .. } => Nemesis::Pause,
            Fault::Partition { .. } => Nemesis::Partition,
            Fault::Corrupt { .. } => Nemesis::Corrupt,
            Fault::PowerLoss { .. } => Nemesis::PowerLoss,
            Fault::Majority { .. } => Nemesis::Majority,
        }
    }
}

/// `node 3`, or `the active controller` for node 0.
fn target(node: i32) -> String {
    if node == ACTIVE_CONTROLLER {
        "the active controller".to_string()
    } else {
        format!("node {node}")
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let node = target(self.node());
        match *self {
            Fault::Kill { .. } => write!(f, "kill {node}"),
            Fault::Pause { .. } => write!(f, "pause {node}"),
            Fault::Partition { mode, .. } => match mode {
                LinkMode::Drop => write!(f, "partition {node} (drop)"),
                LinkMode::Blackhole => write!(f, "partition {node} (black hole)"),
                LinkMode::Delay(ms) => write!(f, "partition {node} (delay {ms} ms)"),
            },
            Fault::Corrupt { pick, .. } => write!(f, "corrupt {node} (pick {pick:#x})"),
            Fault::PowerLoss { .. } => write!(f, "power loss {node}"),
            Fault::Majority { kill: true } => {
                write!(
                    f,
                    "kill a majority of voters (the active controller and one more)"
                )
            }
            Fault::Majority { kill: false } => {
                write!(
                    f,
                    "pause a majority of voters (the active controller and one more)"
                )
            }
        }
    }
}

/// One cycle: the fault, how long it is held, and how long the healed cluster runs before
/// the next cycle (on top of waiting for it to be writable again).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    pub fault: Fault,
    pub hold: Duration,
    pub settle: Duration,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} for {} ms, then {} ms healed",
            self.fault,
            self.hold.as_millis(),
            self.settle.as_millis()
        )
    }
}

/// Bounds of a schedule's timing, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    pub hold_ms: (u64, u64),
    pub settle_ms: (u64, u64),
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            hold_ms: (500, 2500),
            settle_ms: (200, 1000),
        }
    }
}

/// The `cycles` steps of a run over brokers `1..=brokers` and the active controller
/// (node 0, see [`ACTIVE_CONTROLLER`]).
/// The same arguments give the same schedule.
pub fn schedule(
    seed: u64,
    cycles: usize,
    nemeses: &[Nemesis],
    brokers: i32,
    timing: Timing,
) -> Vec<Step> {
    assert!(!nemeses.is_empty(), "a schedule needs at least one nemesis");
    assert!(brokers >= 1, "a schedule needs at least one broker");
    let mut rng = Rng::new(seed);
    let between = |rng: &mut Rng, (lo, hi): (u64, u64)| {
        Duration::from_millis(rng.range(lo as usize, hi.max(lo) as usize) as u64)
    };
    (0..cycles)
        .map(|_| {
            let nemesis = nemeses[rng.range(0, nemeses.len() - 1)];
            // The active controller is one target in eight, where it may be one at all.
            let node = if nemesis.may_hit_controller() && rng.range(0, 7) == 0 {
                ACTIVE_CONTROLLER
            } else {
                rng.range(1, brokers as usize) as i32
            };
            let fault = match nemesis {
                Nemesis::Kill => Fault::Kill { node },
                Nemesis::Pause => Fault::Pause { node },
                Nemesis::Partition => {
                    let mode = match rng.range(0, 2) {
                        0 => LinkMode::Drop,
                        1 => LinkMode::Blackhole,
                        _ => LinkMode::Delay(rng.range(50, 400) as u64),
                    };
                    Fault::Partition { node, mode }
                }
                Nemesis::Corrupt => Fault::Corrupt {
                    node,
                    pick: rng.next_u64(),
                },
                Nemesis::PowerLoss => Fault::PowerLoss { node },
                Nemesis::Majority => Fault::Majority {
                    kill: rng.range(0, 1) == 0,
                },
            };
            Step {
                fault,
                hold: between(&mut rng, timing.hold_ms),
                settle: between(&mut rng, timing.settle_ms),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_lists_and_rejects_unknown_names() {
        assert_eq!(
            parse_nemeses("pause,kill,pause").unwrap(),
            [Nemesis::Kill, Nemesis::Pause]
        );
        assert_eq!(
            parse_nemeses("kill,pause,partition,corrupt,powerloss,majority")
                .unwrap()
                .len(),
            6
        );
        assert!(parse_nemeses("kill,flood").unwrap_err().contains("flood"));
        assert!(parse_nemeses("").is_err());
    }

    #[test]
    fn the_same_seed_gives_the_same_schedule() {
        let a = schedule(7, 50, &Nemesis::ALL, 3, Timing::default());
        let b = schedule(7, 50, &Nemesis::ALL, 3, Timing::default());
        let c = schedule(8, 50, &Nemesis::ALL, 3, Timing::default());
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn steps_stay_within_their_bounds() {
        let timing = Timing {
            hold_ms: (100, 300),
            settle_ms: (10, 20),
        };
        let steps = schedule(42, 500, &Nemesis::ALL, 3, timing);
        let mut kinds = std::collections::BTreeSet::new();
        for s in &steps {
            kinds.insert(s.fault.nemesis());
            assert!((0..=3).contains(&s.fault.node()), "{s}");
            assert!((100..=300).contains(&(s.hold.as_millis() as u64)), "{s}");
            assert!((10..=20).contains(&(s.settle.as_millis() as u64)), "{s}");
            if matches!(s.fault.nemesis(), Nemesis::Corrupt | Nemesis::PowerLoss) {
                assert_ne!(s.fault.node(), 0, "{s}: aimed at a broker's segments");
            }
        }
        assert_eq!(kinds.len(), 6, "500 steps use every nemesis");
        assert!(steps.iter().any(|s| s.fault.node() == 0));
    }

    #[test]
    fn only_the_chosen_nemeses_appear() {
        let steps = schedule(3, 100, &[Nemesis::Pause], 3, Timing::default());
        assert!(steps.iter().all(|s| matches!(s.fault, Fault::Pause { .. })));
    }
}
