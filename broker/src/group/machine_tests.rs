//! Scenario and table tests of the group state machine; the harness plays the coordinator.

use super::*;

const SESSION: i32 = 10_000;
const REBALANCE: i32 = 30_000;

fn config(delay: i32) -> GroupConfig {
    GroupConfig {
        initial_rebalance_delay_ms: delay,
        max_size: 4,
        ..GroupConfig::default()
    }
}

/// A group plus the coordinator's job: numbered waiters, the clock, stores acknowledged
/// on request.
struct H {
    g: Group,
    now: u64,
    next: Waiter,
    out: Vec<Effect>,
}

fn join_req(member: &str, protocols: &[&str]) -> Join {
    Join {
        member_id: member.to_string(),
        instance_id: None,
        client_id: "c".into(),
        client_host: "/127.0.0.1".into(),
        session_timeout_ms: SESSION,
        rebalance_timeout_ms: REBALANCE,
        protocol_type: "consumer".into(),
        protocols: protocols
            .iter()
            .map(|p| (p.to_string(), Bytes::from(format!("{member}:{p}"))))
            .collect(),
        require_known_member_id: true,
        new_member_id: String::new(),
    }
}

impl H {
    fn new(delay: i32) -> Self {
        H {
            g: Group::new(config(delay), 0),
            now: 1_000,
            next: 1,
            out: Vec::new(),
        }
    }

    fn waiter(&mut self) -> Waiter {
        self.next += 1;
        self.next
    }

    fn take(&mut self) -> Vec<Effect> {
        std::mem::take(&mut self.out)
    }

    /// Sends a join; returns its waiter.
    fn join(&mut self, mut j: Join, new_id: &str) -> Waiter {
        let w = self.waiter();
        j.new_member_id = new_id.to_string();
        self.g.join(w, j, self.now, 0, &mut self.out);
        w
    }

    /// The join answer for `w`, if one was given.
    fn join_answer(&mut self, w: Waiter) -> Option<JoinResult> {
        let pos = self
            .out
            .iter()
            .position(|e| matches!(e, Effect::Join(x, _) if *x == w))?;
        match self.out.remove(pos) {
            Effect::Join(_, r) => Some(r),
            _ => unreachable!(),
        }
    }

    fn sync_answer(&mut self, w: Waiter) -> Option<SyncResult> {
        let pos = self
            .out
            .iter()
            .position(|e| matches!(e, Effect::Sync(x, _) if *x == w))?;
        match self.out.remove(pos) {
            Effect::Sync(_, r) => Some(r),
            _ => unreachable!(),
        }
    }

    fn sync(&mut self, member: &str, generation: i32, assignments: &[(&str, &str)]) -> Waiter {
        let w = self.waiter();
        let a = assignments
            .iter()
            .map(|(m, a)| (m.to_string(), Bytes::from(a.to_string())))
            .collect();
        self.g.sync(
            w,
            member,
            None,
            generation,
            Some("consumer"),
            None,
            a,
            self.now,
            &mut self.out,
        );
        w
    }

    /// Acknowledges every store asked for.
    fn store_all(&mut self) {
        let stores: Vec<i32> = self
            .out
            .iter()
            .filter_map(|e| match e {
                Effect::Store { generation } => Some(*generation),
                _ => None,
            })
            .collect();
        self.out.retain(|e| !matches!(e, Effect::Store { .. }));
        for generation in stores {
            self.g
                .stored(generation, Ok(()), self.now, 0, &mut self.out);
        }
    }

    fn advance(&mut self, ms: u64) {
        self.now += ms;
        self.g.tick(self.now, 0, &mut self.out);
    }

    /// A member joined through KIP-394 (MEMBER_ID_REQUIRED, then the real join).
    fn dynamic_join(&mut self, id: &str) -> Waiter {
        let w = self.join(join_req("", &["range"]), id);
        let first = self.join_answer(w).expect("answered at once");
        assert_eq!(first.error, ResponseError::MemberIdRequired.code());
        assert_eq!(first.member_id, id);
        self.join(join_req(id, &["range"]), "unused")
    }

    /// A stable group of `ids` (the first is the leader) at generation 1.
    fn stable(ids: &[&str]) -> Self {
        // The initial delay lets every member into generation 1.
        let mut h = H::new(100);
        let waiters: Vec<Waiter> = ids.iter().map(|id| h.dynamic_join(id)).collect();
        h.advance(100);
        for w in &waiters {
            let r = h.join_answer(*w).expect("join phase complete");
            assert_eq!(r.error, 0);
        }
        let leader = h.g.leader().unwrap().to_string();
        let assignments: Vec<(&str, &str)> = ids.iter().map(|id| (*id, "a")).collect();
        for id in ids {
            let a = if *id == leader {
                assignments.clone()
            } else {
                vec![]
            };
            h.sync(id, 1, &a);
        }
        h.store_all();
        assert_eq!(h.g.state(), GroupState::Stable);
        h.take();
        h
    }
}

#[test]
fn first_join_requires_a_member_id_then_completes_a_generation() {
    let mut h = H::new(0);
    let w = h.dynamic_join("m1");
    let r = h.join_answer(w).expect("the only member has joined");
    assert_eq!(r.error, 0);
    assert_eq!(r.generation, 1);
    assert_eq!(r.leader, "m1");
    assert_eq!(r.protocol.as_deref(), Some("range"));
    assert_eq!(r.members.len(), 1, "the leader sees every member");
    assert_eq!(h.g.state(), GroupState::CompletingRebalance);

    let s = h.sync("m1", 1, &[("m1", "p0,p1")]);
    assert!(
        h.sync_answer(s).is_none(),
        "held until the assignment is stored"
    );
    h.store_all();
    let r = h.sync_answer(s).expect("answered once stored");
    assert_eq!((r.error, &r.assignment[..]), (0, &b"p0,p1"[..]));
    assert_eq!(h.g.state(), GroupState::Stable);
}

#[test]
fn a_second_member_rebalances_and_only_the_leader_gets_the_members() {
    let mut h = H::stable(&["m1"]);
    let w2 = h.dynamic_join("m2");
    assert_eq!(h.g.state(), GroupState::PreparingRebalance);
    assert!(h.join_answer(w2).is_none(), "waits for m1 to rejoin");
    // m1 learns of the rebalance from its heartbeat.
    assert_eq!(
        h.g.heartbeat("m1", None, 1, h.now),
        Err(ResponseError::RebalanceInProgress)
    );
    let w1 = h.join(join_req("m1", &["range"]), "unused");
    let r1 = h.join_answer(w1).unwrap();
    let r2 = h.join_answer(w2).unwrap();
    assert_eq!((r1.generation, r2.generation), (2, 2));
    assert_eq!(r1.leader, "m1", "the leader stays while it is a member");
    assert_eq!(r1.members.len(), 2);
    assert!(r2.members.is_empty());
    // Follower syncs first and waits; the leader's assignment answers both.
    let s2 = h.sync("m2", 2, &[]);
    let s1 = h.sync("m1", 2, &[("m1", "p0"), ("m2", "p1")]);
    h.store_all();
    assert_eq!(&h.sync_answer(s1).unwrap().assignment[..], b"p0");
    assert_eq!(&h.sync_answer(s2).unwrap().assignment[..], b"p1");
}

#[test]
fn heartbeat_and_sync_errors() {
    let mut h = H::stable(&["m1", "m2"]);
    let cases: &[(&str, i32, Result<(), ResponseError>)] = &[
        ("m1", 1, Ok(())),
        ("nobody", 1, Err(ResponseError::UnknownMemberId)),
        ("m1", 0, Err(ResponseError::IllegalGeneration)),
        ("m1", 7, Err(ResponseError::IllegalGeneration)),
    ];
    for (member, generation, want) in cases {
        assert_eq!(
            h.g.heartbeat(member, None, *generation, h.now),
            *want,
            "{member} gen {generation}"
        );
    }
    let s = h.sync("nobody", 1, &[]);
    assert_eq!(
        h.sync_answer(s).unwrap().error,
        ResponseError::UnknownMemberId.code()
    );
    let s = h.sync("m2", 9, &[]);
    assert_eq!(
        h.sync_answer(s).unwrap().error,
        ResponseError::IllegalGeneration.code()
    );
    // Stable: a sync is answered at once with the member's assignment.
    let s = h.sync("m2", 1, &[]);
    assert_eq!(&h.sync_answer(s).unwrap().assignment[..], b"a");
}

#[test]
fn commit_validation_table() {
    let h = H::stable(&["m1"]);
    let empty = H::new(0);
    let cases: &[(&Group, &str, i32, Result<(), ResponseError>)] = &[
        (&h.g, "m1", 1, Ok(())),
        (&h.g, "m1", 2, Err(ResponseError::IllegalGeneration)),
        (&h.g, "zz", 1, Err(ResponseError::UnknownMemberId)),
        (&h.g, "", -1, Err(ResponseError::UnknownMemberId)),
        (&empty.g, "", -1, Ok(())),
        (&empty.g, "m1", 1, Err(ResponseError::UnknownMemberId)),
    ];
    for (g, member, generation, want) in cases {
        assert_eq!(
            g.validate_commit(member, None, *generation),
            *want,
            "{member} gen {generation}"
        );
    }
}

#[test]
fn a_silent_member_expires_and_the_rest_rebalance() {
    let mut h = H::stable(&["m1", "m2"]);
    h.now += 6_000;
    h.g.heartbeat("m1", None, 1, h.now).unwrap();
    h.advance(4_500); // m2's session (10 s) has run out, m1's has not.
    assert!(!h.g.has_member("m2"));
    assert_eq!(h.g.state(), GroupState::PreparingRebalance);
    let w = h.join(join_req("m1", &["range"]), "unused");
    let r = h.join_answer(w).unwrap();
    assert_eq!((r.error, r.generation, r.members.len()), (0, 2, 1));
}

#[test]
fn a_member_that_does_not_rejoin_is_dropped_at_the_rebalance_timeout() {
    let mut h = H::stable(&["m1", "m2"]);
    let w3 = h.dynamic_join("m3");
    let w1 = h.join(join_req("m1", &["range"]), "unused");
    // m2 keeps heartbeating but never rejoins.
    for _ in 0..5 {
        h.now += 5_000;
        let _ = h.g.heartbeat("m2", None, 1, h.now);
        h.g.tick(h.now, 0, &mut h.out);
    }
    assert!(h.join_answer(w1).is_none());
    h.advance(REBALANCE as u64);
    let r1 = h.join_answer(w1).unwrap();
    assert!(h.join_answer(w3).is_some());
    assert_eq!(r1.generation, 2);
    assert!(!h.g.has_member("m2"));
    assert_eq!(r1.members.len(), 2);
}

#[test]
fn a_clean_leave_rebalances_at_once_and_the_last_leave_empties_the_group() {
    let mut h = H::stable(&["m1", "m2"]);
    h.g.leave("m2", None, h.now, 0, &mut h.out).unwrap();
    assert_eq!(h.g.state(), GroupState::PreparingRebalance);
    let w = h.join(join_req("m1", &["range"]), "unused");
    assert_eq!(h.join_answer(w).unwrap().generation, 2);
    assert_eq!(
        h.g.leave("m2", None, h.now, 0, &mut h.out),
        Err(ResponseError::UnknownMemberId)
    );
    h.g.leave("m1", None, h.now, 0, &mut h.out).unwrap();
    assert_eq!(h.g.state(), GroupState::Empty);
    assert_eq!(h.g.generation(), 3);
    assert!(h.take().contains(&Effect::Store { generation: 3 }));
}

#[test]
fn leaving_during_the_sync_phase_answers_held_syncs_rebalance_in_progress() {
    let mut h = H::stable(&["m1"]);
    let w2 = h.dynamic_join("m2");
    let w1 = h.join(join_req("m1", &["range"]), "unused");
    assert_eq!(h.join_answer(w1).unwrap().generation, 2);
    h.join_answer(w2).unwrap();
    assert_eq!(h.g.state(), GroupState::CompletingRebalance);
    let s2 = h.sync("m2", 2, &[]);
    assert!(h.sync_answer(s2).is_none());
    h.g.leave("m1", None, h.now, 0, &mut h.out).unwrap();
    assert_eq!(
        h.sync_answer(s2).unwrap().error,
        ResponseError::RebalanceInProgress.code()
    );
    assert_eq!(h.g.state(), GroupState::PreparingRebalance);
}

#[test]
fn the_initial_delay_collects_members_before_the_first_generation() {
    let mut h = H::new(3_000);
    let w1 = h.dynamic_join("m1");
    h.now += 2_000;
    let w2 = h.dynamic_join("m2");
    h.advance(2_000); // 4 s after m1: the delay was pushed to 5 s by m2
    assert!(h.join_answer(w1).is_none());
    h.advance(1_000);
    let r1 = h.join_answer(w1).unwrap();
    let r2 = h.join_answer(w2).unwrap();
    assert_eq!((r1.generation, r2.generation), (1, 1));
    assert_eq!(r1.members.len() + r2.members.len(), 2);
}

#[test]
fn kip_394_ids_expire_unused_and_a_full_group_refuses() {
    let mut h = H::stable(&["m1", "m2", "m3"]);
    let w = h.join(join_req("", &["range"]), "p4");
    assert_eq!(
        h.join_answer(w).unwrap().error,
        ResponseError::MemberIdRequired.code()
    );
    // The group (max 4) counts the pending id.
    let w = h.join(join_req("", &["range"]), "p5");
    assert_eq!(
        h.join_answer(w).unwrap().error,
        ResponseError::GroupMaxSizeReached.code()
    );
    for id in ["m1", "m2", "m3"] {
        h.g.heartbeat(id, None, 1, h.now + 9_000).unwrap();
    }
    h.advance(SESSION as u64 + 1);
    let w = h.join(join_req("p4", &["range"]), "unused");
    assert_eq!(
        h.join_answer(w).unwrap().error,
        ResponseError::UnknownMemberId.code(),
        "the id expired unused"
    );
}

#[test]
fn join_errors_table() {
    let mut h = H::stable(&["m1"]);
    let mut short = join_req("", &["range"]);
    short.session_timeout_ms = 10;
    let mut other_type = join_req("", &["range"]);
    other_type.protocol_type = "connect".into();
    let cases = vec![
        (short, ResponseError::InvalidSessionTimeout),
        (other_type, ResponseError::InconsistentGroupProtocol),
        (
            join_req("", &["roundrobin"]),
            ResponseError::InconsistentGroupProtocol,
        ),
        (join_req("", &[]), ResponseError::InconsistentGroupProtocol),
        (
            join_req("ghost", &["range"]),
            ResponseError::UnknownMemberId,
        ),
    ];
    for (j, want) in cases {
        let w = h.join(j.clone(), "x");
        assert_eq!(h.join_answer(w).unwrap().error, want.code(), "{j:?}");
    }
    assert_eq!(
        h.g.state(),
        GroupState::Stable,
        "refused joins change nothing"
    );
}

#[test]
fn protocol_vote_picks_what_most_members_prefer_among_common_ones() {
    let mut h = H::new(0);
    let j = |h: &mut H, id: &str, p: &[&str]| {
        let mut r = join_req("", p);
        r.require_known_member_id = false;
        h.join(r, id)
    };
    let w1 = j(&mut h, "a", &["sticky", "range", "rr"]);
    let _ = h.join_answer(w1);
    let w2 = j(&mut h, "b", &["range", "sticky"]);
    let w3 = j(&mut h, "c", &["range", "rr", "sticky"]);
    let wa = h.join(join_req("a", &["sticky", "range", "rr"]), "u");
    for w in [w2, w3, wa] {
        assert_eq!(h.join_answer(w).unwrap().protocol.as_deref(), Some("range"));
    }
}

#[test]
fn a_static_member_restarted_within_its_session_keeps_its_assignment_without_a_rebalance() {
    let mut h = H::new(0);
    let mut s = join_req("", &["range"]);
    s.instance_id = Some("inst-1".into());
    let w = h.join(s.clone(), "s-1");
    let r = h.join_answer(w).unwrap();
    assert_eq!(
        (r.error, r.member_id.as_str()),
        (0, "s-1"),
        "static: no KIP-394 round"
    );
    let sy = h.sync("s-1", 1, &[("s-1", "p0")]);
    h.store_all();
    assert_eq!(&h.sync_answer(sy).unwrap().assignment[..], b"p0");

    // Restart: a new join with no member id and the same instance id.
    h.now += 3_000;
    let w = h.join(s.clone(), "s-2");
    let r = h.join_answer(w).unwrap();
    assert_eq!((r.error, r.generation, r.member_id.as_str()), (0, 1, "s-2"));
    assert!(r.skip_assignment, "the leader keeps the current assignment");
    assert_eq!(h.g.state(), GroupState::Stable, "no rebalance");
    assert!(h.take().contains(&Effect::Store { generation: 1 }));
    let sy = h.sync("s-2", 1, &[]);
    assert_eq!(&h.sync_answer(sy).unwrap().assignment[..], b"p0");
    // The old incarnation is fenced.
    assert_eq!(
        h.g.heartbeat("s-1", Some("inst-1"), 1, h.now),
        Err(ResponseError::FencedInstanceId)
    );
}

#[test]
fn a_snapshot_restores_a_stable_group_with_fresh_sessions() {
    let h = H::stable(&["m1", "m2"]);
    let snap = h.g.snapshot();
    assert_eq!(snap.generation, 1);
    assert_eq!(snap.members.len(), 2);
    assert_eq!(&snap.members[0].subscription[..], b"m1:range");
    let mut g = Group::restore(config(0), snap.clone(), 50_000);
    assert_eq!(g.state(), GroupState::Stable);
    assert_eq!(g.heartbeat("m2", None, 1, 55_000), Ok(()));
    assert_eq!(g.snapshot().members, snap.members);
    let mut out = Vec::new();
    g.tick(50_000 + SESSION as u64 + 1, 0, &mut out);
    assert!(!g.has_member("m1"), "m1 never heartbeat after the load");
    assert!(g.has_member("m2"));
}

#[test]
fn a_failed_store_answers_the_syncs_and_starts_over() {
    let mut h = H::new(0);
    let w = h.dynamic_join("m1");
    h.join_answer(w).unwrap();
    let s = h.sync("m1", 1, &[("m1", "p0")]);
    h.out.retain(|e| !matches!(e, Effect::Store { .. }));
    h.g.stored(1, Err(ResponseError::NotCoordinator), h.now, 0, &mut h.out);
    assert_eq!(
        h.sync_answer(s).unwrap().error,
        ResponseError::NotCoordinator.code()
    );
    assert_eq!(h.g.state(), GroupState::PreparingRebalance);
}

#[test]
fn a_leader_that_never_syncs_takes_everyone_out_at_the_rebalance_timeout() {
    let mut h = H::new(0);
    let w1 = h.dynamic_join("m1");
    h.join_answer(w1).unwrap();
    let w2 = h.dynamic_join("m2");
    let w1 = h.join(join_req("m1", &["range"]), "u");
    assert_eq!(h.join_answer(w1).unwrap().generation, 2);
    h.join_answer(w2).unwrap();
    let s2 = h.sync("m2", 2, &[]);
    // Both stay alive; only the leader's SyncGroup never comes.
    for _ in 0..5 {
        h.now += 5_000;
        h.g.heartbeat("m1", None, 2, h.now).unwrap();
        h.g.heartbeat("m2", None, 2, h.now).unwrap();
        h.g.tick(h.now, 0, &mut h.out);
    }
    assert!(h.sync_answer(s2).is_none());
    h.advance(5_000);
    assert_eq!(
        h.sync_answer(s2).unwrap().error,
        ResponseError::UnknownMemberId.code()
    );
    assert_eq!(h.g.state(), GroupState::Empty);
}

#[test]
fn next_deadline_is_the_earliest_session_or_phase_end() {
    let mut h = H::stable(&["m1"]);
    assert_eq!(h.g.next_deadline(), Some(h.now + SESSION as u64));
    h.g.kill(&mut h.out, 0);
    assert_eq!(h.g.state(), GroupState::Dead);
    assert_eq!(h.g.next_deadline(), None);
    assert_eq!(
        h.g.heartbeat("m1", None, 1, h.now),
        Err(ResponseError::CoordinatorNotAvailable)
    );
}
