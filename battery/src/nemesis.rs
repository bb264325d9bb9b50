//! The nemesis: a seeded schedule of faults, one at a time, each held for
//! a while and then healed, and the record of what was done when.
//!
//! ```text
//!   schedule(seed, duration, kinds) -> [Step { kind, pick, hold, quiet, delay }]
//!     (the same seed gives the same steps; "the leader" is resolved when
//!      the step runs)
//!   for each step: quiet ─> inject ─> hold ─> heal ─> wait until healthy
//! ```

use std::fmt;
use std::time::Duration;

use lookout_testkit::fault_proxy::{LinkRule, Node};
use lookout_testkit::kv_history::Nanos;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::client::Clock;
use crate::topology::Topology;

/// One kind of fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FaultKind {
    /// kill -9 a follower member, restart it after the hold.
    KillMember,
    KillLeader,
    /// kill -9 a gateway, restart it after the hold.
    KillGateway,
    /// SIGSTOP a follower for longer than the election timeout and the
    /// lease TTL, then SIGCONT.
    PauseMember,
    PauseLeader,
    PauseGateway,
    /// Cut the leader off from the other members (both ways).
    IsolateLeader,
    /// Cut a follower off (the majority/minority split of three).
    IsolateFollower,
    /// Bytes from the leader to the others are lost; the other way works.
    LossFromLeader,
    /// Bytes to the leader are lost; the other way works.
    LossToLeader,
    /// Cut a gateway off from every member.
    PartitionGateway,
    /// Delay every link between members and from gateways.
    Delay,
}

impl FaultKind {
    pub const ALL: [FaultKind; 12] = [
        FaultKind::KillMember,
        FaultKind::KillLeader,
        FaultKind::KillGateway,
        FaultKind::PauseMember,
        FaultKind::PauseLeader,
        FaultKind::PauseGateway,
        FaultKind::IsolateLeader,
        FaultKind::IsolateFollower,
        FaultKind::LossFromLeader,
        FaultKind::LossToLeader,
        FaultKind::PartitionGateway,
        FaultKind::Delay,
    ];

    pub fn name(self) -> &'static str {
        match self {
            FaultKind::KillMember => "kill-member",
            FaultKind::KillLeader => "kill-leader",
            FaultKind::KillGateway => "kill-gateway",
            FaultKind::PauseMember => "pause-member",
            FaultKind::PauseLeader => "pause-leader",
            FaultKind::PauseGateway => "pause-gateway",
            FaultKind::IsolateLeader => "isolate-leader",
            FaultKind::IsolateFollower => "isolate-follower",
            FaultKind::LossFromLeader => "loss-from-leader",
            FaultKind::LossToLeader => "loss-to-leader",
            FaultKind::PartitionGateway => "partition-gateway",
            FaultKind::Delay => "delay",
        }
    }

    /// Parses a name as [`FaultKind::name`] prints it.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.name() == s)
    }

    fn pauses(self) -> bool {
        matches!(
            self,
            FaultKind::PauseMember | FaultKind::PauseLeader | FaultKind::PauseGateway
        )
    }
}

impl fmt::Display for FaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One step of a schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    pub kind: FaultKind,
    /// Picks the member or gateway (modulo their number) where the kind
    /// leaves a choice.
    pub pick: u32,
    /// How long the fault lasts.
    pub hold: Duration,
    /// Calm before it.
    pub quiet: Duration,
    /// For [`FaultKind::Delay`].
    pub delay: Duration,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} pick {} hold {:.1}s after {:.1}s",
            self.kind,
            self.pick,
            self.hold.as_secs_f64(),
            self.quiet.as_secs_f64()
        )?;
        if self.kind == FaultKind::Delay {
            write!(f, " delay {}ms", self.delay.as_millis())?;
        }
        Ok(())
    }
}

/// How long a pause lasts at least: longer than the election timeout (1 s)
/// and the battery's lease TTL (3 s).
pub const MIN_PAUSE: Duration = Duration::from_millis(4_000);

/// The steps `seed` gives for about `duration` of faults.
pub fn schedule(seed: u64, duration: Duration, kinds: &[FaultKind]) -> Vec<Step> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut steps = Vec::new();
    let mut total = Duration::ZERO;
    if kinds.is_empty() {
        return steps;
    }
    while total < duration {
        let kind = kinds[rng.random_range(0..kinds.len())];
        let hold = if kind.pauses() {
            MIN_PAUSE + Duration::from_millis(rng.random_range(0..3_000))
        } else {
            Duration::from_millis(rng.random_range(1_500..5_000))
        };
        let quiet = Duration::from_millis(rng.random_range(500..2_000));
        let step = Step {
            kind,
            pick: rng.random_range(0..1000),
            hold,
            quiet,
            delay: Duration::from_millis(rng.random_range(30..250)),
        };
        // Faults take a few seconds more to heal and recover.
        total += hold + quiet + Duration::from_secs(1);
        steps.push(step);
    }
    steps
}

/// What one step did.
#[derive(Debug, Clone)]
pub struct FaultRecord {
    pub kind: FaultKind,
    /// Which process(es): "m1", "g0", "m2->m0,m1".
    pub target: String,
    pub start: Nanos,
    /// When the fault was undone.
    pub healed: Nanos,
    /// How long after healing the cluster was whole again (leader agreed,
    /// everything serving); None if it was not within the bound.
    pub recovered: Option<Duration>,
}

/// Runs one step on `topo`: inject, hold, heal, wait for recovery.
pub async fn run_step(
    topo: &mut Topology,
    step: &Step,
    clock: &Clock,
    recovery: Duration,
) -> FaultRecord {
    tokio::time::sleep(step.quiet).await;
    let n = topo.members.len();
    let gws = topo.gateways.len();
    let leader = topo.leader().await;
    // A follower: any member but the leader (any member when none is known).
    let follower = {
        let mut c: Vec<usize> = (0..n).filter(|i| Some(*i) != leader).collect();
        if c.is_empty() {
            c = (0..n).collect();
        }
        c[step.pick as usize % c.len()]
    };
    let lead = leader.unwrap_or(step.pick as usize % n);
    let gw = step.pick as usize % gws.max(1);
    let members: Vec<Node> = topo.members.iter().map(|m| m.node).collect();
    let start = clock.now();
    let target;
    match step.kind {
        FaultKind::KillMember | FaultKind::KillLeader => {
            let i = if step.kind == FaultKind::KillLeader {
                lead
            } else {
                follower
            };
            target = topo.members[i].name.clone();
            topo.kill(true, i);
            tokio::time::sleep(step.hold).await;
        }
        FaultKind::KillGateway => {
            target = topo.gateways[gw].name.clone();
            topo.kill(false, gw);
            tokio::time::sleep(step.hold).await;
        }
        FaultKind::PauseMember | FaultKind::PauseLeader => {
            let i = if step.kind == FaultKind::PauseLeader {
                lead
            } else {
                follower
            };
            target = topo.members[i].name.clone();
            topo.pause(true, i, true);
            tokio::time::sleep(step.hold).await;
            topo.pause(true, i, false);
        }
        FaultKind::PauseGateway => {
            target = topo.gateways[gw].name.clone();
            topo.pause(false, gw, true);
            tokio::time::sleep(step.hold).await;
            topo.pause(false, gw, false);
        }
        FaultKind::IsolateLeader | FaultKind::IsolateFollower => {
            let i = if step.kind == FaultKind::IsolateLeader {
                lead
            } else {
                follower
            };
            target = topo.members[i].name.clone();
            let others: Vec<Node> = members
                .iter()
                .copied()
                .filter(|m| *m != members[i])
                .collect();
            topo.net.partition(&[members[i]], &others);
            tokio::time::sleep(step.hold).await;
        }
        FaultKind::LossFromLeader | FaultKind::LossToLeader => {
            let others: Vec<Node> = members
                .iter()
                .copied()
                .filter(|m| *m != members[lead])
                .collect();
            let rule = LinkRule {
                blackhole: true,
                delay: Duration::ZERO,
            };
            for o in &others {
                if step.kind == FaultKind::LossFromLeader {
                    topo.net.set(members[lead], *o, rule);
                } else {
                    topo.net.set(*o, members[lead], rule);
                }
            }
            let arrow = if step.kind == FaultKind::LossFromLeader {
                "->"
            } else {
                "<-"
            };
            target = format!("{}{arrow}others", topo.members[lead].name);
            tokio::time::sleep(step.hold).await;
        }
        FaultKind::PartitionGateway => {
            target = topo.gateways[gw].name.clone();
            let g = topo.gateways[gw].node;
            topo.net.partition(&[g], &members);
            tokio::time::sleep(step.hold).await;
        }
        FaultKind::Delay => {
            target = format!("all links +{}ms", step.delay.as_millis());
            let rule = LinkRule {
                blackhole: false,
                delay: step.delay,
            };
            let gateways: Vec<Node> = topo.gateways.iter().map(|g| g.node).collect();
            for a in &members {
                for b in members.iter().chain(&gateways) {
                    if a != b {
                        topo.net.set(*a, *b, rule);
                        topo.net.set(*b, *a, rule);
                    }
                }
            }
            tokio::time::sleep(step.hold).await;
        }
    }
    let healed = clock.now();
    let recovered = topo.heal_all(recovery).await.ok();
    FaultRecord {
        kind: step.kind,
        target,
        start,
        healed,
        recovered,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_gives_the_same_schedule_and_another_seed_another() {
        let d = Duration::from_secs(60);
        let a = schedule(7, d, &FaultKind::ALL);
        assert_eq!(a, schedule(7, d, &FaultKind::ALL));
        assert_ne!(a, schedule(8, d, &FaultKind::ALL));
        assert!(a.len() >= 5, "{a:?}");
        for s in &a {
            if s.kind.pauses() {
                assert!(s.hold >= MIN_PAUSE);
            }
        }
        let only = schedule(1, d, &[FaultKind::KillGateway]);
        assert!(only.iter().all(|s| s.kind == FaultKind::KillGateway));
    }

    #[test]
    fn kinds_parse_by_name() {
        for k in FaultKind::ALL {
            assert_eq!(FaultKind::parse(k.name()), Some(k));
        }
        assert_eq!(FaultKind::parse("nope"), None);
    }
}
