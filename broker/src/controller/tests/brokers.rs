//! register, heartbeat and tick.

use super::*;
use crate::controller::*;

// ---- register -------------------------------------------------------------------------

#[test]
fn register_new_broker_starts_fenced_with_the_next_offset_as_epoch() {
    let mut h = Harness::new();
    let (epoch, records) = h.register(1);
    assert_eq!(epoch, 0);
    assert_eq!(
        records,
        vec![
            MetadataRecord::RegisterBroker {
                id: 1,
                epoch: 0,
                host: HOST.into(),
                port: 9001
            },
            MetadataRecord::FenceBroker { id: 1, epoch: 0 },
        ]
    );
    let b = h.image().broker(1).unwrap();
    assert!(b.fenced);
    assert_eq!((b.registered_at, b.host.as_str(), b.port), (0, HOST, 9001));
    assert_eq!(h.image().unfenced_brokers().count(), 0);

    let (epoch2, _) = h.register(2);
    assert_eq!(epoch2, 2, "the offset the RegisterBroker record gets");
}

#[test]
fn register_rejects_bad_input() {
    let mut c = Controller::new(ControllerConfig::default());
    for (id, host, port) in [
        (-1, HOST, 9092),
        (1, "", 9092),
        (1, HOST, 0),
        (1, HOST, 70000),
    ] {
        let e = c.register(id, host, port, 0).unwrap_err();
        assert_eq!(e.code(), 42, "{e}");
    }
}

#[test]
fn re_registration_gets_a_greater_epoch_and_leaves_every_isr() {
    // (name, topic rf, re-registered broker, expected partition after re-registration)
    let table = [
        (
            "leader with followers",
            3,
            1,
            part(&[1, 2, 3], &[2, 3], 2, 1, 1),
        ),
        ("follower", 3, 2, part(&[1, 2, 3], &[1, 3], 1, 0, 1)),
        ("last isr member", 1, 1, part(&[1], &[1], NO_LEADER, 1, 1)),
        ("not a replica", 1, 3, part(&[1], &[1], 1, 0, 0)),
    ];
    for (name, rf, id, want) in table {
        let mut h = Harness::cluster(3);
        h.create("t", 1, rf);
        let old = h.epoch(id);
        let (epoch, _) = h.register(id);
        assert!(epoch > old, "{name}");
        assert!(h.image().broker(id).unwrap().fenced, "{name}");
        assert_eq!(h.p("t", 0), want, "{name}");
        // The new incarnation is unfenced by a caught-up heartbeat; a leaderless
        // partition whose last ISR member it is gets it back as leader.
        let (reply, _) = h.heartbeat(id);
        assert!(!reply.fenced, "{name}");
        if want.leader == NO_LEADER {
            assert_eq!(h.p("t", 0), part(&[1], &[1], 1, 2, 2), "{name}");
        }
    }
}

// ---- heartbeat ------------------------------------------------------------------------

#[test]
fn heartbeat_errors() {
    let mut h = Harness::cluster(2);
    let old = h.epoch(2);
    h.register(2);
    let now = h.now;
    let table = [
        (9, 0, ControllerError::BrokerIdNotRegistered { id: 9 }, 102),
        (
            2,
            old,
            ControllerError::StaleBrokerEpoch {
                id: 2,
                given: old,
                current: h.epoch(2),
            },
            77,
        ),
        (
            1,
            h.epoch(1) + 1,
            ControllerError::StaleBrokerEpoch {
                id: 1,
                given: h.epoch(1) + 1,
                current: h.epoch(1),
            },
            77,
        ),
    ];
    for (id, epoch, want, code) in table {
        let e = h.c.heartbeat(id, epoch, 100, false, now).unwrap_err();
        assert_eq!(e, want);
        assert_eq!(e.code(), code);
    }
}

#[test]
fn heartbeat_unfences_only_once_caught_up_to_its_registration() {
    let mut h = Harness::new();
    let (epoch, _) = h.register(1);
    let registered_at = h.image().broker(1).unwrap().registered_at;
    // (metadata offset, fenced afterwards, records)
    let table = [
        (-1, true, vec![]),
        (registered_at - 1, true, vec![]),
        (
            registered_at,
            false,
            vec![MetadataRecord::UnfenceBroker { id: 1, epoch }],
        ),
    ];
    for (offset, fenced, records) in table {
        let (reply, got) = h.c.heartbeat(1, epoch, offset, false, h.now).unwrap();
        assert_eq!(
            reply,
            HeartbeatReply {
                fenced,
                should_shutdown: false
            },
            "offset {offset}"
        );
        assert_eq!(got, records, "offset {offset}");
    }
    // Not committed yet: still fenced in the image. Commit, then heartbeats are no-ops.
    assert!(h.image().broker(1).unwrap().fenced);
    h.heartbeat(1);
    assert!(h.image().is_unfenced(1));
    assert_eq!(h.heartbeat(1).1, vec![]);
}

#[test]
fn unfenced_broker_leads_the_leaderless_partitions_whose_isr_it_is() {
    let mut h = Harness::cluster(3);
    h.create("t", 3, 1); // one replica each on 1, 2, 3
    let (p0, p1) = (h.p("t", 0), h.p("t", 1));
    h.pass(10_000, &[2, 3]); // broker 1 expires
    assert_eq!(h.p("t", 0).leader, NO_LEADER);
    h.now += 1;
    let (reply, records) = h.heartbeat(1); // same epoch: the session comes back
    assert!(!reply.fenced);
    assert_eq!(
        partitions_of(&records),
        vec![PartitionRecord {
            leader: 1,
            leader_epoch: p0.leader_epoch + 2,
            partition_epoch: p0.partition_epoch + 2,
            ..p0
        }]
    );
    assert_eq!(h.p("t", 1), p1, "other partitions untouched");
}

#[test]
fn controlled_shutdown_moves_leadership_then_says_go() {
    let mut h = Harness::cluster(3);
    h.create("t", 1, 3);
    let epoch = h.epoch(1);
    let offset = h.image().offset();
    let (reply, records) = h.c.heartbeat(1, epoch, offset, true, h.now).unwrap();
    assert_eq!(
        reply,
        HeartbeatReply {
            fenced: true,
            should_shutdown: false
        }
    );
    assert_eq!(records[0], MetadataRecord::FenceBroker { id: 1, epoch });
    assert_eq!(
        partitions_of(&records),
        vec![part(&[1, 2, 3], &[2, 3], 2, 1, 1)]
    );
    h.commit(records);
    let (reply, records) =
        h.c.heartbeat(1, epoch, h.image().offset(), true, h.now)
            .unwrap();
    assert_eq!(
        reply,
        HeartbeatReply {
            fenced: true,
            should_shutdown: true
        }
    );
    assert!(records.is_empty());
    // It stays fenced while it shuts down: no rebalance back to it.
    h.pass(1000, &[2, 3]);
    h.pass(1000, &[2, 3]);
    assert_eq!(h.p("t", 0).leader, 2);
    // Nor does a plain heartbeat of the same incarnation, sent while it stops, unfence it.
    let (reply, records) =
        h.c.heartbeat(1, epoch, h.image().offset(), false, h.now)
            .unwrap();
    assert!(reply.fenced);
    assert!(records.is_empty());
    // A new incarnation (re-registration) is unfenced as usual.
    let (new_epoch, records) = h.c.register(1, "127.0.0.1", 9001, h.now).unwrap();
    h.commit(records);
    let (reply, records) =
        h.c.heartbeat(1, new_epoch, h.image().offset(), false, h.now)
            .unwrap();
    assert!(!reply.fenced);
    h.commit(records);
}

// ---- tick -----------------------------------------------------------------------------

#[test]
fn tick_fences_exactly_after_the_session_timeout() {
    // (silence in ms, fenced)
    for (silent, fenced) in [(0, false), (9000, false), (9001, true)] {
        let mut h = Harness::cluster(2);
        h.now += silent;
        h.heartbeat(2);
        let records = h.tick();
        assert_eq!(!h.image().is_unfenced(1), fenced, "silent {silent}");
        assert_eq!(records.is_empty(), !fenced, "silent {silent}");
        assert!(h.image().is_unfenced(2));
    }
}

#[test]
fn tick_fencing_the_leader_elects_the_next_isr_member_in_replica_order() {
    // (topic rf, brokers that stay alive, expected partition 0 after broker 1 expires)
    let table = [
        (
            "rf3 all alive",
            3,
            vec![2, 3],
            part(&[1, 2, 3], &[2, 3], 2, 1, 1),
        ),
        (
            "rf3 only 3 alive",
            3,
            vec![3],
            part(&[1, 2, 3], &[3], 3, 1, 2),
        ),
        (
            "rf2 follower alive",
            2,
            vec![2, 3],
            part(&[1, 2], &[2], 2, 1, 1),
        ),
        (
            "rf1 last member",
            1,
            vec![2, 3],
            part(&[1], &[1], NO_LEADER, 1, 1),
        ),
        (
            "rf3 nobody alive",
            3,
            vec![],
            part(&[1, 2, 3], &[3], NO_LEADER, 1, 2),
        ),
    ];
    for (name, rf, alive, want) in table {
        let mut h = Harness::cluster(3);
        h.create("t", 1, rf);
        assert_eq!(h.p("t", 0).leader, 1);
        h.pass(10_000, &alive);
        assert!(!h.image().is_unfenced(1), "{name}");
        let mut got = h.p("t", 0);
        got.topic = "t".into();
        assert_eq!(got, want, "{name}");
    }
}

#[test]
fn a_broker_never_heard_from_is_timed_from_its_registration_or_the_first_tick() {
    let mut h = Harness::cluster(2);
    // A controller restarted over the same image has no heartbeat times: every broker
    // gets a full session from the first tick.
    let mut c = Controller::from_image(ControllerConfig::default(), h.image().clone());
    let t0 = h.now + 50_000;
    assert!(c.tick(t0).is_empty());
    assert!(c.tick(t0 + 9000).is_empty());
    let fenced: Vec<_> = c
        .tick(t0 + 9001)
        .into_iter()
        .filter(|r| matches!(r, MetadataRecord::FenceBroker { .. }))
        .collect();
    assert_eq!(fenced.len(), 2);
    // A registered broker that never heartbeats stays fenced and is not fenced again.
    h.register(3);
    assert!(h.pass(20_000, &[1, 2]).is_empty());
    assert!(!h.image().is_unfenced(3));
}

#[test]
fn rebalance_to_the_preferred_replica_waits_one_tick_after_unfencing() {
    let mut h = Harness::cluster(3);
    h.create("t", 1, 3);
    h.pass(10_000, &[2, 3]); // 1 expires, 2 leads
    assert_eq!(h.p("t", 0), part(&[1, 2, 3], &[2, 3], 2, 1, 1));

    // 1 restarts: registers, catches up, is unfenced, and the leader takes it back in.
    h.register(1);
    h.heartbeat(1);
    let (_, records) = h.c.alter_partition(&h.alter("t", 2, &[1, 2, 3])).unwrap();
    h.commit(records);
    assert_eq!(h.p("t", 0), part(&[1, 2, 3], &[1, 2, 3], 2, 1, 2));

    // First tick: 1 is unfenced but not settled yet.
    assert!(h.pass(1000, &[1, 2, 3]).is_empty());
    // Second tick: leadership goes back to replicas[0].
    let records = h.pass(1000, &[1, 2, 3]);
    assert_eq!(
        partitions_of(&records),
        vec![part(&[1, 2, 3], &[1, 2, 3], 1, 2, 3)]
    );
    assert!(h.pass(1000, &[1, 2, 3]).is_empty(), "stable");
}

#[test]
fn rebalance_needs_the_preferred_replica_in_the_isr() {
    let mut h = Harness::cluster(3);
    h.create("t", 1, 3);
    h.pass(10_000, &[2, 3]);
    h.register(1);
    h.heartbeat(1);
    for _ in 0..3 {
        assert!(h.pass(1000, &[1, 2, 3]).is_empty());
    }
    assert_eq!(h.p("t", 0).leader, 2);
}

#[test]
fn a_broker_that_wants_fencing_stays_fenced_until_it_stops_asking() {
    let mut h = Harness::cluster(2);
    let (epoch, records) = h.c.register(3, "127.0.0.1", 9003, h.now).unwrap();
    h.commit(records);
    let offset = h.image().offset();
    let (reply, records) =
        h.c.heartbeat_with(
            Heartbeat {
                want_fence: true,
                ..Heartbeat::routine(3, epoch, offset)
            },
            h.now,
        )
        .unwrap();
    assert!(reply.fenced, "asked to stay fenced");
    assert!(records.is_empty());
    let (reply, records) =
        h.c.heartbeat_with(Heartbeat::routine(3, epoch, offset), h.now)
            .unwrap();
    assert!(!reply.fenced);
    h.commit(records);
    assert!(h.image().is_unfenced(3));
}

#[test]
fn an_unfenced_broker_that_asks_is_fenced_and_loses_its_isr_places() {
    let mut h = Harness::cluster(3);
    h.create("t", 1, 3);
    let b = h.image().broker(2).cloned().expect("broker 2");
    let offset = h.image().offset();
    let (reply, records) =
        h.c.heartbeat_with(
            Heartbeat {
                want_fence: true,
                ..Heartbeat::routine(2, b.epoch, offset)
            },
            h.now,
        )
        .unwrap();
    h.commit(records);
    assert!(reply.fenced, "fenced at its own request");
    assert!(!h.image().is_unfenced(2));
    let p = h.p("t", 0);
    assert!(!p.isr.contains(&2), "out of the ISR: {p:?}");
    assert_ne!(p.leader, 2, "not the leader: {p:?}");
    // Once it stops asking it is unfenced again (ISR expansion is the leader's business).
    let offset = h.image().offset();
    let (reply, records) =
        h.c.heartbeat_with(Heartbeat::routine(2, b.epoch, offset), h.now)
            .unwrap();
    h.commit(records);
    assert!(!reply.fenced);
    assert!(h.image().is_unfenced(2));
}

#[test]
fn a_broker_asking_to_be_fenced_waits_while_that_would_leave_a_partition_leaderless() {
    let mut h = Harness::cluster(3);
    h.create("t", 1, 3);
    let asks = |h: &mut Harness, id: i32| {
        let b = h.image().broker(id).cloned().expect("broker");
        let offset = h.image().offset();
        let (reply, records) =
            h.c.heartbeat_with(
                Heartbeat {
                    want_fence: true,
                    ..Heartbeat::routine(id, b.epoch, offset)
                },
                h.now,
            )
            .unwrap();
        h.commit(records);
        reply.fenced
    };
    assert!(asks(&mut h, 1), "the first is fenced");
    assert!(asks(&mut h, 2), "the second too: broker 3 still leads");
    assert!(
        !asks(&mut h, 3),
        "the last ISR member stays: t-0 would have no leader"
    );
    assert_eq!(h.p("t", 0).leader, 3);
}

#[test]
fn a_closed_heartbeat_connection_shortens_the_session_to_the_grace() {
    // (ms after the close until the next tick, heartbeat in between, stale epoch) -> fenced
    let cases = [
        (2_900, false, false, false), // within the 3 s grace
        (3_100, false, false, true),  // past it: fenced, long before the 9 s session
        (3_100, true, false, false),  // a heartbeat after the close restores the session
        (3_100, false, true, false),  // a close of an older incarnation changes nothing
    ];
    for (after, heartbeat, stale, fenced) in cases {
        let mut h = Harness::cluster(3);
        h.create("t", 1, 3);
        let epoch = h.epoch(1) - i64::from(stale);
        h.c.connection_lost(1, epoch, h.now);
        h.now += 100;
        if heartbeat {
            h.heartbeat(1);
        }
        let records = h.pass(after - 100, &[2, 3]);
        assert_eq!(
            !h.image().is_unfenced(1),
            fenced,
            "{after} ms, heartbeat {heartbeat}, stale {stale}: {records:?}"
        );
    }
    // A close never moves a session end later, and 0 turns the grace off.
    let mut h = Harness::cluster(3);
    h.now += 8_000;
    h.c.connection_lost(1, h.epoch(1), h.now); // the session ends in 1 s anyway
    h.pass(1_100, &[2, 3]);
    assert!(!h.image().is_unfenced(1));
    let mut h = Harness::cluster(3);
    h.c = Controller::from_image(
        ControllerConfig {
            connection_grace_ms: 0,
            ..ControllerConfig::default()
        },
        h.image().clone(),
    );
    h.c.connection_lost(1, h.epoch(1), h.now);
    h.pass(8_000, &[2, 3]);
    assert!(
        h.image().is_unfenced(1),
        "grace 0: the session timeout alone"
    );
}

#[test]
fn a_quiet_heartbeat_answers_exactly_when_the_full_one_changes_nothing() {
    let mut h = Harness::cluster(3);
    h.create("t", 1, 3);
    // Broker 3 re-registers: fenced, and caught up only from its new registration on.
    h.register(3);
    let caught_up = h.image().broker(3).unwrap().registered_at;
    let now = h.now;
    let routine = |id| Heartbeat::routine(id, h.epoch(id), caught_up);
    // (case, heartbeat, answered at once)
    let table = [
        ("running, routine", routine(1), true),
        (
            "fenced, catching up",
            Heartbeat::routine(3, h.epoch(3), caught_up - 1),
            true,
        ),
        ("fenced, caught up: unfences", routine(3), false),
        (
            "fenced, asking to stay fenced",
            Heartbeat {
                want_fence: true,
                ..routine(3)
            },
            true,
        ),
        (
            "running, asking to be fenced",
            Heartbeat {
                want_fence: true,
                ..routine(1)
            },
            false,
        ),
        (
            "shutting down",
            Heartbeat {
                want_shutdown: true,
                ..routine(1)
            },
            false,
        ),
        ("unknown broker", Heartbeat::routine(9, 0, caught_up), false),
        (
            "stale epoch",
            Heartbeat::routine(1, h.epoch(1) - 1, caught_up),
            false,
        ),
    ];
    for (case, hb, quick) in table {
        let quiet = h.c.clone().quiet_heartbeat(hb, now);
        let full = h.c.clone().heartbeat_with(hb, now);
        assert_eq!(quiet.is_some(), quick, "{case}: {full:?}");
        if let Some(reply) = quiet {
            assert_eq!(full, Ok((reply, vec![])), "{case}");
        }
    }
}

#[test]
fn quiet_heartbeats_keep_a_session_alive() {
    let mut h = Harness::cluster(2);
    for _ in 0..5 {
        h.now += 5_000;
        for id in [1, 2] {
            let (epoch, offset) = (h.epoch(id), h.image().offset());
            let reply =
                h.c.quiet_heartbeat(Heartbeat::routine(id, epoch, offset), h.now);
            assert_eq!(
                reply,
                Some(HeartbeatReply {
                    fenced: false,
                    should_shutdown: false
                })
            );
        }
        assert_eq!(h.tick(), vec![], "nobody expires");
    }
    // Without them, the session ends.
    h.now += 10_000;
    assert!(!h.tick().is_empty());
    assert!(!h.image().is_unfenced(1));
}

#[test]
fn a_close_handled_after_a_later_quick_heartbeat_changes_nothing() {
    // (heartbeat after the close, answered before the close is handled) -> fenced
    for (quick, fenced) in [(false, true), (true, false)] {
        let mut h = Harness::cluster(3);
        let closed_at = h.now;
        h.now += 100;
        if quick {
            let hb = Heartbeat::routine(1, h.epoch(1), h.image().offset());
            assert!(h.c.quiet_heartbeat(hb, h.now).is_some());
        }
        // The close waited in the controller's queue behind commits.
        h.c.connection_lost(1, h.epoch(1), closed_at);
        h.pass(3_100, &[2, 3]);
        assert_eq!(!h.image().is_unfenced(1), fenced, "quick heartbeat {quick}");
    }
}

#[test]
fn a_heartbeat_overtaken_by_a_later_quick_one_asks_for_nothing() {
    let mut h = Harness::cluster(3);
    h.register(3); // fenced, caught up from its registration on
    let (epoch, offset) = (h.epoch(3), h.image().offset());
    let waited = h.now;
    h.now += 100;
    // The later heartbeat asks to stay fenced (a replica under repair): answered at once.
    let later = Heartbeat {
        want_fence: true,
        ..Heartbeat::routine(3, epoch, offset)
    };
    let reply = h.c.quiet_heartbeat(later, h.now).unwrap();
    assert!(reply.fenced);
    // The earlier one, which would unfence it, runs after it: out of date, it changes nothing.
    let earlier = Heartbeat::routine(3, epoch, offset);
    let (reply, records) = h.c.heartbeat_with(earlier, waited).unwrap();
    assert_eq!((reply.fenced, records), (true, vec![]));
    // A heartbeat arriving after both is heard as usual.
    h.now += 100;
    let (reply, records) = h.c.heartbeat_with(earlier, h.now).unwrap();
    assert!(!reply.fenced);
    assert_eq!(
        records,
        vec![MetadataRecord::UnfenceBroker { id: 3, epoch }]
    );
}
