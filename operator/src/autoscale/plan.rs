//! One evaluation period over everything autoscaled: agents assessed, pools recommended from
//! all the agents that use them, stabilised, then fitted into the GPUs the cluster has.
//!
//! [`Autoscaler`] is the only state the decision keeps between periods (recommendation
//! histories); the Kubernetes loop and the simulated-day benchmark both drive it.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use super::capacity::{self, GpuInventory, PoolGpus};
use super::decide::{
    self, AgentObservation, AgentSpec, Behaviour, Decision, EngineObservation, History, HoldReason,
    Limits, PoolSignal, PoolSpec, Reason, Recommendation, Role, SloState, Stage, Steps,
};

/// One autoscaled VoiceAgent as seen this period.
#[derive(Clone, Debug, PartialEq)]
pub struct AgentInput {
    /// `namespace/name`.
    pub key: String,
    /// SLO and scaling spec.
    pub spec: AgentSpec,
    /// `spec.replicas` now.
    pub current: u32,
    /// The pools it uses, by role, as pool keys (`namespace/name`).
    pub pools: Vec<(Role, String)>,
    /// What Prometheus said, or why it could not be used.
    pub observation: Result<AgentObservation, HoldReason>,
}

/// One ModelPool as seen this period. Pools with autoscaling off are included with
/// `spec: None` so their GPUs are counted, and are never given a decision.
#[derive(Clone, Debug, PartialEq)]
pub struct PoolInput {
    /// `namespace/name`.
    pub key: String,
    /// Autoscaling spec; `None` when autoscaling is off.
    pub spec: Option<PoolSpec>,
    /// `spec.replicas` now.
    pub current: u32,
    /// Replicas the scheduler has bound to a node (their GPUs are off the inventory).
    pub scheduled: u32,
    /// Replicas ready to serve (`None`: unknown, taken as `current`).
    pub ready: Option<u32>,
    /// GPUs per replica.
    pub gpus_per_replica: u32,
    /// `spec.gpu.product`.
    pub product: Option<String>,
    /// The engine's own metrics, when it exports them.
    pub engine: Option<EngineObservation>,
}

/// Everything one period decides from.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Snapshot {
    /// Autoscaled VoiceAgents.
    pub agents: Vec<AgentInput>,
    /// Every ModelPool (autoscaled or not).
    pub pools: Vec<PoolInput>,
    /// Free GPUs on the cluster (allocatable less what bound pods request); `None` when they
    /// could not be read (growth is then not limited).
    pub inventory: Option<GpuInventory>,
}

/// The outcome for one agent.
#[derive(Clone, Debug, PartialEq)]
pub struct AgentPlan {
    /// `namespace/name`.
    pub key: String,
    /// Replicas before.
    pub current: u32,
    /// Replicas to write and why.
    pub decision: Decision,
    /// SLO state.
    pub slo: SloState,
    /// Stages a breach was attributed to.
    pub attributed: Vec<Stage>,
    /// Pools this agent uses that could not grow for lack of GPUs: its SLO is at risk.
    pub capacity_limited_pools: Vec<String>,
}

/// The outcome for one autoscaled pool.
#[derive(Clone, Debug, PartialEq)]
pub struct PoolPlan {
    /// `namespace/name`.
    pub key: String,
    /// Replicas before.
    pub current: u32,
    /// Replicas to write and why.
    pub decision: Decision,
    /// Replicas the metrics asked for before GPU capacity was applied.
    pub wanted: u32,
    /// GPUs missing to reach `wanted` (0: not capacity-limited).
    pub gpus_missing: u32,
    /// The product those GPUs must be.
    pub product: Option<String>,
}

/// The decisions of one period.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Plan {
    /// One entry per autoscaled agent, in snapshot order.
    pub agents: Vec<AgentPlan>,
    /// One entry per autoscaled pool, in snapshot order.
    pub pools: Vec<PoolPlan>,
}

/// The decision state kept between periods.
#[derive(Debug, Default)]
pub struct Autoscaler {
    behaviour: Behaviour,
    agent_history: HashMap<String, History>,
    pool_history: HashMap<String, History>,
    /// Calls per replica at which each pool last went over budget.
    breach_load: HashMap<String, f64>,
    /// When each pool last grew.
    last_growth: HashMap<String, Duration>,
}

impl Autoscaler {
    /// A new autoscaler with these tunables and no history.
    pub fn new(behaviour: Behaviour) -> Autoscaler {
        Autoscaler {
            behaviour,
            ..Autoscaler::default()
        }
    }

    /// The tunables in use.
    pub fn behaviour(&self) -> &Behaviour {
        &self.behaviour
    }

    /// Decides one period. `now` is any monotonic clock (the benchmark uses simulated time).
    pub fn evaluate(&mut self, now: Duration, snapshot: &Snapshot) -> Plan {
        let behaviour = &self.behaviour;
        let window = behaviour.scale_down_stabilisation;
        let mut signals: BTreeMap<&str, Vec<PoolSignal>> = BTreeMap::new();
        let mut agents = Vec::with_capacity(snapshot.agents.len());
        for agent in &snapshot.agents {
            let roles: Vec<Role> = agent.pools.iter().map(|(r, _)| *r).collect();
            let assessment = decide::assess_agent(
                &agent.spec,
                agent.current,
                &roles,
                agent.observation.as_ref().map_err(|h| *h),
                behaviour,
            );
            for ((_, key), (_, signal)) in agent.pools.iter().zip(&assessment.pool_signals) {
                signals.entry(key.as_str()).or_default().push(*signal);
            }
            let history = self.agent_history.entry(agent.key.clone()).or_default();
            let limits = Limits {
                bounds: agent.spec.bounds,
                floor: assessment.live_call_floor,
                steps: Steps::agent(agent.current, behaviour),
                window,
            };
            let decision = decide::stabilise(
                agent.current,
                assessment.recommendation,
                history,
                now,
                limits,
            );
            agents.push(AgentPlan {
                key: agent.key.clone(),
                current: agent.current,
                decision,
                slo: assessment.slo,
                attributed: assessment.attributed,
                capacity_limited_pools: Vec::new(),
            });
        }

        let mut pools = Vec::new();
        let mut gpus = Vec::with_capacity(snapshot.pools.len());
        for pool in &snapshot.pools {
            let mut use_ = PoolGpus {
                product: pool.product.clone(),
                per_replica: pool.gpus_per_replica,
                current: pool.current,
                scheduled: pool.scheduled,
                desired: pool.current,
                priority: 0,
            };
            if let Some(spec) = &pool.spec {
                let pool_signals = signals
                    .get(pool.key.as_str())
                    .map(Vec::as_slice)
                    .unwrap_or(&[]);
                let recommendation = decide::recommend_pool(
                    spec,
                    pool.current,
                    pool_signals,
                    pool.engine.as_ref(),
                    self.breach_load.get(&pool.key).copied(),
                    behaviour,
                );
                let calls = decide::pool_calls(pool_signals);
                let over = matches!(
                    recommendation,
                    Recommendation::Replicas(
                        _,
                        Reason::StageOverBudget
                            | Reason::SloBreachAttributed
                            | Reason::EngineQueueing
                    )
                );
                if over && calls > 0.0 && pool.current > 0 {
                    self.breach_load
                        .insert(pool.key.clone(), calls / f64::from(pool.current));
                }
                let history = self.pool_history.entry(pool.key.clone()).or_default();
                let limits = Limits {
                    bounds: spec.bounds,
                    floor: 0,
                    steps: Steps::pool(behaviour),
                    window,
                };
                let mut decision =
                    decide::stabilise(pool.current, recommendation, history, now, limits);
                let starting = pool.ready.is_some_and(|ready| ready < pool.current);
                let recent = self
                    .last_growth
                    .get(&pool.key)
                    .is_some_and(|at| now.saturating_sub(*at) < behaviour.pool_scale_up_cooldown);
                // Growth from below minReplicas is not held: that is a spec change.
                if decision.desired > pool.current
                    && pool.current >= spec.bounds.min
                    && (starting || recent)
                {
                    decision.desired = pool.current;
                    decision.reason = Reason::WaitingForNewReplicas;
                }
                use_.desired = decision.desired;
                use_.priority = match recommendation {
                    Recommendation::Replicas(_, Reason::SloBreachAttributed) => 2,
                    Recommendation::Replicas(_, Reason::SloBreachLargestStage) => 2,
                    Recommendation::Replicas(..) => 1,
                    Recommendation::Hold(_) => 0,
                };
                pools.push((
                    gpus.len(),
                    PoolPlan {
                        key: pool.key.clone(),
                        current: pool.current,
                        decision,
                        wanted: decision.desired,
                        gpus_missing: 0,
                        product: pool.product.clone(),
                    },
                ));
            }
            gpus.push(use_);
        }

        if let Some(inventory) = &snapshot.inventory {
            let grants = capacity::grant(inventory, &gpus);
            for (index, plan) in &mut pools {
                let grant = grants[*index];
                if grant.gpus_missing > 0 {
                    plan.decision.desired = grant.replicas;
                    plan.decision.reason = Reason::CapacityLimited;
                    plan.gpus_missing = grant.gpus_missing;
                }
            }
        }
        let pools: Vec<PoolPlan> = pools.into_iter().map(|(_, p)| p).collect();
        for pool in pools.iter().filter(|p| p.decision.desired > p.current) {
            self.last_growth.insert(pool.key.clone(), now);
        }
        for (agent, input) in agents.iter_mut().zip(&snapshot.agents) {
            agent.capacity_limited_pools = input
                .pools
                .iter()
                .filter(|(_, key)| pools.iter().any(|p| &p.key == key && p.gpus_missing > 0))
                .map(|(_, key)| key.clone())
                .collect();
        }

        // Objects that left the snapshot (deleted, autoscaling switched off) start afresh.
        self.agent_history
            .retain(|k, _| snapshot.agents.iter().any(|a| &a.key == k));
        self.pool_history.retain(|k, _| {
            snapshot
                .pools
                .iter()
                .any(|p| &p.key == k && p.spec.is_some())
        });
        self.breach_load
            .retain(|k, _| self.pool_history.contains_key(k));
        self.last_growth
            .retain(|k, _| self.pool_history.contains_key(k));
        Plan { agents, pools }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::autoscale::capacity::GpuNode;
    use crate::autoscale::decide::{Bounds, StageValues};

    const A100: &str = "NVIDIA-A100-SXM4-80GB";

    fn agent(observation: Result<AgentObservation, HoldReason>) -> AgentInput {
        let budgets = StageValues {
            stt: Some(150.0),
            llm_first_token: Some(250.0),
            tts_first_audio: Some(150.0),
            ..StageValues::default()
        };
        AgentInput {
            key: "voice/receptionist".into(),
            spec: AgentSpec {
                slo_p95_ms: 800.0,
                bounds: Bounds { min: 2, max: 20 },
                target_calls_per_pod: 40,
                max_calls_per_pod: 50,
                budgets_ms: budgets,
            },
            current: 4,
            pools: vec![
                (Role::Stt, "voice/whisper".into()),
                (Role::Llm, "voice/gemma".into()),
                (Role::Tts, "voice/csm".into()),
            ],
            observation,
        }
    }

    fn pool(name: &str, budget: f64, current: u32) -> PoolInput {
        PoolInput {
            key: format!("voice/{name}"),
            spec: Some(PoolSpec {
                bounds: Bounds { min: 1, max: 6 },
                target_latency_ms: budget,
            }),
            current,
            scheduled: current,
            ready: None,
            gpus_per_replica: 1,
            product: Some(A100.into()),
            engine: None,
        }
    }

    fn observation(llm_ms: f64, calls: f64) -> AgentObservation {
        let stages = StageValues {
            endpointing: Some(320.0),
            stt: Some(100.0),
            llm_first_token: Some(llm_ms),
            tts_first_audio: Some(100.0),
            agent: Some(5.0),
        };
        AgentObservation {
            turn_p50_ms: Some(400.0),
            turn_p95_ms: Some(525.0 + llm_ms),
            stage_p95_ms: stages,
            active_calls: Some(calls),
            sample_age: Some(Duration::from_secs(3)),
        }
    }

    fn snapshot(obs: Result<AgentObservation, HoldReason>, gpus: u32, gemma: u32) -> Snapshot {
        Snapshot {
            agents: vec![agent(obs)],
            pools: vec![
                pool("whisper", 150.0, 1),
                pool("gemma", 250.0, gemma),
                pool("csm", 150.0, 1),
                // Fixed replicas: never decided, but its GPUs are taken.
                PoolInput {
                    spec: None,
                    ..pool("batch", 100.0, 2)
                },
            ],
            // Every replica is scheduled: 1 + gemma + 1 + 2 GPUs are taken.
            inventory: Some(
                GpuInventory::from_nodes(&[GpuNode {
                    name: "gpu-1".into(),
                    product: Some(A100.into()),
                    allocatable: gpus,
                    requested: 0,
                    schedulable: true,
                }])
                .less(Some(A100), 4 + gemma),
            ),
        }
    }

    #[test]
    fn breach_grows_only_the_attributed_pool() {
        let mut autoscaler = Autoscaler::default();
        let plan = autoscaler.evaluate(
            Duration::ZERO,
            &snapshot(Ok(observation(500.0, 150.0)), 16, 1),
        );
        let desired: Vec<(&str, u32)> = plan
            .pools
            .iter()
            .map(|p| (p.key.as_str(), p.decision.desired))
            .collect();
        assert_eq!(
            desired,
            vec![("voice/whisper", 1), ("voice/gemma", 2), ("voice/csm", 1)]
        );
        assert_eq!(plan.pools[1].decision.reason, Reason::SloBreachAttributed);
        assert_eq!(plan.agents[0].slo, SloState::Breached);
        assert_eq!(plan.agents[0].attributed, vec![Stage::LlmFirstToken]);
        assert!(plan.agents[0].capacity_limited_pools.is_empty());
    }

    #[test]
    fn gpu_shortage_limits_the_pool_and_puts_the_agent_at_risk() {
        // 6 A100s: whisper 1 + gemma 2 + csm 1 + batch 2 = all taken.
        let mut autoscaler = Autoscaler::default();
        let plan = autoscaler.evaluate(
            Duration::ZERO,
            &snapshot(Ok(observation(600.0, 150.0)), 6, 2),
        );
        let gemma = &plan.pools[1];
        assert_eq!(gemma.wanted, 4);
        assert_eq!(gemma.decision.desired, 2);
        assert_eq!(gemma.decision.reason, Reason::CapacityLimited);
        assert_eq!(gemma.gpus_missing, 2);
        assert_eq!(gemma.product.as_deref(), Some(A100));
        assert_eq!(
            plan.agents[0].capacity_limited_pools,
            vec!["voice/gemma".to_owned()]
        );
        // The pool with autoscaling off gets no plan at all.
        assert_eq!(plan.pools.len(), 3);
        // One GPU more: one replica granted, one GPU still missing.
        let plan = autoscaler.evaluate(
            Duration::from_secs(15),
            &snapshot(Ok(observation(600.0, 150.0)), 7, 2),
        );
        assert_eq!(
            (plan.pools[1].decision.desired, plan.pools[1].gpus_missing),
            (3, 1)
        );
    }

    #[test]
    fn outage_holds_everything_then_resumes() {
        let mut autoscaler = Autoscaler::default();
        let mut t = Duration::ZERO;
        let period = Duration::from_secs(15);
        // Twenty minutes of idle night: without the outage everything would shrink.
        for _ in 0..80 {
            let plan =
                autoscaler.evaluate(t, &snapshot(Err(HoldReason::PrometheusUnavailable), 16, 3));
            assert_eq!(plan.agents[0].decision.desired, 4);
            assert_eq!(
                plan.agents[0].slo,
                SloState::Unknown(HoldReason::PrometheusUnavailable)
            );
            assert!(
                plan.pools.iter().all(|p| p.decision.desired == p.current),
                "{plan:?}"
            );
            t += period;
        }
        let plan = autoscaler.evaluate(t, &snapshot(Ok(observation(100.0, 0.0)), 16, 3));
        // Back with data: idle, but scale-down still waits for its window.
        assert_eq!(plan.agents[0].decision.desired, 4);
        assert_eq!(plan.agents[0].decision.reason, Reason::StabilisingScaleDown);
    }

    #[test]
    fn steady_load_never_reverses() {
        let mut autoscaler = Autoscaler::default();
        let mut current = (4u32, 2u32);
        let mut changes = Vec::new();
        for i in 0..400u64 {
            // Steady 150 calls with +-3% noise on the LLM stage, inside its budget band.
            let noise = [0.0, 4.0, -3.0, 6.0, -5.0][(i % 5) as usize];
            let mut snap = snapshot(Ok(observation(200.0 + noise, 150.0)), 16, current.1);
            snap.agents[0].current = current.0;
            let plan = autoscaler.evaluate(Duration::from_secs(15 * i), &snap);
            let next = (
                plan.agents[0].decision.desired,
                plan.pools[1].decision.desired,
            );
            if next != current {
                changes.push((i, current, next));
            }
            current = next;
        }
        // 150 calls * 1.25 / 40 -> 5 pods, reached once; gemma stays at 2.
        assert_eq!(changes, vec![(0, (4, 2), (5, 2))]);
    }

    #[test]
    fn growth_waits_for_new_replicas_and_the_cooldown() {
        let mut autoscaler = Autoscaler::default();
        let over = || Ok(observation(500.0, 150.0));
        let mut snap = snapshot(over(), 16, 2);
        snap.pools[1].ready = Some(1);
        let plan = autoscaler.evaluate(Duration::ZERO, &snap);
        assert_eq!(plan.pools[1].decision.desired, 2);
        assert_eq!(plan.pools[1].decision.reason, Reason::WaitingForNewReplicas);
        snap.pools[1].ready = Some(2);
        let plan = autoscaler.evaluate(Duration::from_secs(15), &snap);
        assert_eq!(plan.pools[1].decision.desired, 4, "{plan:?}");
        // Still slow in the window right after: no further growth for the cooldown.
        let mut snap = snapshot(over(), 16, 4);
        snap.pools[1].ready = Some(4);
        let plan = autoscaler.evaluate(Duration::from_secs(30), &snap);
        assert_eq!(plan.pools[1].decision.desired, 4);
        let plan = autoscaler.evaluate(Duration::from_secs(15 + 180), &snap);
        assert_eq!(plan.pools[1].decision.desired, 6);
    }

    #[test]
    fn deleted_objects_lose_their_history() {
        let mut autoscaler = Autoscaler::default();
        autoscaler.evaluate(
            Duration::ZERO,
            &snapshot(Ok(observation(100.0, 10.0)), 16, 2),
        );
        assert_eq!(autoscaler.agent_history.len(), 1);
        assert_eq!(autoscaler.pool_history.len(), 3);
        autoscaler.evaluate(Duration::from_secs(15), &Snapshot::default());
        assert!(autoscaler.agent_history.is_empty() && autoscaler.pool_history.is_empty());
    }
}
