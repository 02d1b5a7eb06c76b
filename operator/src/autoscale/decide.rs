//! The scaling decision as plain functions: observed latencies and calls in, desired replicas
//! and the reason out. Nothing here talks to Kubernetes or Prometheus, so every rule is covered
//! by table tests and the simulated-day benchmark drives exactly this code.
//!
//! The flow per evaluation period is:
//! 1. [`assess_agent`]: compare the agent's turn p95 with its SLO, attribute a breach to the
//!    stages whose p95 exceeds their budget, and size agent pods from live calls.
//! 2. [`recommend_pool`]: combine what every agent that uses a pool says about its stage with
//!    the engine's own metrics (time to first token, waiting requests).
//! 3. [`stabilise`]: turn a raw recommendation into the replica count to write: fast bounded
//!    scale-up, scale-down only to the highest recommendation seen over the stabilisation
//!    window, never outside min/max, never below what live calls need.

use std::collections::VecDeque;
use std::time::Duration;

/// A stage of one turn, as labelled in `grokcast_stage_latency_seconds{stage}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Stage {
    /// End-of-turn detection: mostly the configured silence, not scalable capacity.
    Endpointing,
    /// Speech to text, served by a pool of role `stt`.
    Stt,
    /// Time to the LLM's first token, served by a pool of role `llm`.
    LlmFirstToken,
    /// Time to the first synthesised audio, served by a pool of role `tts`.
    TtsFirstAudio,
    /// The agent pod's own work (VAD, resampling, orchestration), served by agent pods.
    Agent,
}

impl Stage {
    /// Every stage, in the order a turn goes through them.
    pub const ALL: [Stage; 5] = [
        Stage::Endpointing,
        Stage::Stt,
        Stage::LlmFirstToken,
        Stage::TtsFirstAudio,
        Stage::Agent,
    ];

    /// The `stage` label value the agent exports.
    pub fn label(self) -> &'static str {
        match self {
            Stage::Endpointing => "endpointing",
            Stage::Stt => "stt",
            Stage::LlmFirstToken => "llm_first_token",
            Stage::TtsFirstAudio => "tts_first_audio",
            Stage::Agent => "agent",
        }
    }

    /// The pool role whose replicas make this stage faster, if any.
    pub fn role(self) -> Option<Role> {
        match self {
            Stage::Stt => Some(Role::Stt),
            Stage::LlmFirstToken => Some(Role::Llm),
            Stage::TtsFirstAudio => Some(Role::Tts),
            Stage::Endpointing | Stage::Agent => None,
        }
    }
}

/// What a ModelPool serves in a turn.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// Speech to text.
    Stt,
    /// Chat completions.
    Llm,
    /// Text to speech.
    Tts,
}

impl Role {
    /// The turn stage this role is measured by.
    pub fn stage(self) -> Stage {
        match self {
            Role::Stt => Stage::Stt,
            Role::Llm => Stage::LlmFirstToken,
            Role::Tts => Stage::TtsFirstAudio,
        }
    }
}

/// Per-stage values (latencies in milliseconds, or budgets); `None` where unknown.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct StageValues {
    /// End-of-turn detection.
    pub endpointing: Option<f64>,
    /// Speech to text.
    pub stt: Option<f64>,
    /// LLM time to first token.
    pub llm_first_token: Option<f64>,
    /// TTS time to first audio.
    pub tts_first_audio: Option<f64>,
    /// The agent's own work.
    pub agent: Option<f64>,
}

impl StageValues {
    /// The value for one stage.
    pub fn get(&self, stage: Stage) -> Option<f64> {
        match stage {
            Stage::Endpointing => self.endpointing,
            Stage::Stt => self.stt,
            Stage::LlmFirstToken => self.llm_first_token,
            Stage::TtsFirstAudio => self.tts_first_audio,
            Stage::Agent => self.agent,
        }
    }

    /// Sets the value for one stage.
    pub fn set(&mut self, stage: Stage, value: Option<f64>) {
        let slot = match stage {
            Stage::Endpointing => &mut self.endpointing,
            Stage::Stt => &mut self.stt,
            Stage::LlmFirstToken => &mut self.llm_first_token,
            Stage::TtsFirstAudio => &mut self.tts_first_audio,
            Stage::Agent => &mut self.agent,
        };
        *slot = value;
    }
}

/// Tunables shared by every decision; the defaults are what the docs describe.
#[derive(Clone, Debug, PartialEq)]
pub struct Behaviour {
    /// How often the loop evaluates.
    pub period: Duration,
    /// Scale-down waits until every recommendation over this window agrees.
    pub scale_down_stabilisation: Duration,
    /// Samples older than this are treated as missing (hold).
    pub max_sample_age: Duration,
    /// Extra agent capacity kept above `calls / targetCallsPerPod` (0.25 = 25%).
    pub call_headroom: f64,
    /// Most agent pods added in one period (HPA's default: the larger of 4 pods and 100%).
    pub agent_scale_up_pods: u32,
    /// Most agent pods removed in one period, as a fraction of current (at least one pod).
    pub agent_scale_down_fraction: f64,
    /// Most pool replicas added in one period.
    pub pool_scale_up_replicas: u32,
    /// Most pool replicas removed in one period.
    pub pool_scale_down_replicas: u32,
    /// A pool shrinks only while its stage p95 is below this fraction of its budget.
    pub scale_down_below_budget: f64,
    /// Budget for the agent pod's own stage, in milliseconds.
    pub agent_stage_budget_ms: f64,
    /// Waiting requests per replica above which an engine counts as queueing.
    pub waiting_per_replica: f64,
    /// A pool shrinks only if the calls per replica it would then carry stay below this
    /// fraction of the calls per replica at which it last went over budget.
    pub breach_load_margin: f64,
    /// After a pool grows, further growth waits this long (and for the new replicas to be
    /// ready): the SLO window still holds the slow turns from before the growth.
    pub pool_scale_up_cooldown: Duration,
}

impl Default for Behaviour {
    fn default() -> Self {
        Self {
            period: Duration::from_secs(15),
            scale_down_stabilisation: Duration::from_secs(300),
            max_sample_age: Duration::from_secs(90),
            call_headroom: 0.25,
            agent_scale_up_pods: 4,
            agent_scale_down_fraction: 0.1,
            pool_scale_up_replicas: 2,
            pool_scale_down_replicas: 1,
            scale_down_below_budget: 0.6,
            agent_stage_budget_ms: 50.0,
            waiting_per_replica: 2.0,
            breach_load_margin: 0.85,
            pool_scale_up_cooldown: Duration::from_secs(180),
        }
    }
}

/// Why replicas are held where they are instead of following the metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HoldReason {
    /// Prometheus could not be reached or answered with an error.
    PrometheusUnavailable,
    /// Prometheus answered but the series the decision needs are absent.
    MetricsMissing,
    /// The newest sample is older than `max_sample_age`: scrapes have stopped.
    MetricsStale,
}

impl HoldReason {
    /// The condition reason / status string.
    pub fn as_str(self) -> &'static str {
        match self {
            HoldReason::PrometheusUnavailable => "PrometheusUnavailable",
            HoldReason::MetricsMissing => "MetricsMissing",
            HoldReason::MetricsStale => "MetricsStale",
        }
    }
}

/// Why a replica count was chosen; static so it can be a condition reason or a metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    /// Agent pods sized from live calls and `targetCallsPerPod` plus headroom.
    CallLoad,
    /// The agent's own stage is over its budget while the SLO is breached.
    AgentStageOverBudget,
    /// The turn p95 breaches the SLO and this pool's stage is over its budget.
    SloBreachAttributed,
    /// No stage is over its budget but this pool's stage uses the most of it.
    SloBreachLargestStage,
    /// The stage is over budget although the turn SLO still holds: grow before it breaches.
    StageOverBudget,
    /// The engine reports requests waiting for a slot.
    EngineQueueing,
    /// The stage is well under budget: one replica fewer.
    UnderBudget,
    /// Under budget, but one replica fewer would carry nearly the load of the last breach.
    NearBreachLoad,
    /// No calls: shrink towards minReplicas.
    Idle,
    /// The metrics say the current count is right.
    Steady,
    /// A lower count was recommended but the stabilisation window has not agreed yet.
    StabilisingScaleDown,
    /// The count was raised to minReplicas.
    MinReplicas,
    /// The count was capped at maxReplicas.
    MaxReplicas,
    /// Live calls need this many pods; scale-down stops here.
    LiveCalls,
    /// Not enough GPUs of the pool's product to grow further.
    CapacityLimited,
    /// Metrics unusable; see [`HoldReason`].
    Held,
    /// Replicas added earlier are not ready yet, or the last growth is too recent to judge.
    WaitingForNewReplicas,
}

impl Reason {
    /// The reason as written to status and Events.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::CallLoad => "CallLoad",
            Reason::AgentStageOverBudget => "AgentStageOverBudget",
            Reason::SloBreachAttributed => "SLOBreachAttributed",
            Reason::SloBreachLargestStage => "SLOBreachLargestStage",
            Reason::StageOverBudget => "StageOverBudget",
            Reason::EngineQueueing => "EngineQueueing",
            Reason::UnderBudget => "UnderBudget",
            Reason::NearBreachLoad => "NearBreachLoad",
            Reason::Idle => "Idle",
            Reason::Steady => "Steady",
            Reason::StabilisingScaleDown => "StabilisingScaleDown",
            Reason::MinReplicas => "MinReplicas",
            Reason::MaxReplicas => "MaxReplicas",
            Reason::LiveCalls => "LiveCalls",
            Reason::CapacityLimited => "CapacityLimited",
            Reason::Held => "Held",
            Reason::WaitingForNewReplicas => "WaitingForNewReplicas",
        }
    }
}

/// A raw recommendation before stabilisation and bounds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Recommendation {
    /// Run this many replicas, because of this.
    Replicas(u32, Reason),
    /// Keep the current count: the metrics cannot be trusted.
    Hold(HoldReason),
}

/// Replica bounds for one object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bounds {
    /// `minReplicas`.
    pub min: u32,
    /// `maxReplicas`.
    pub max: u32,
}

/// The SLO of one VoiceAgent and how its pods are sized.
#[derive(Clone, Debug, PartialEq)]
pub struct AgentSpec {
    /// `slo.turnLatencyP95Ms`.
    pub slo_p95_ms: f64,
    /// `scaling.minReplicas` / `scaling.maxReplicas`.
    pub bounds: Bounds,
    /// `scaling.targetCallsPerPod`.
    pub target_calls_per_pod: u32,
    /// `telephony.maxConcurrentCallsPerPod`: a pod refuses calls beyond this.
    pub max_calls_per_pod: u32,
    /// Per-stage budgets in ms: the `targetLatencyMs` of the pool serving each stage.
    pub budgets_ms: StageValues,
}

/// What Prometheus says about one VoiceAgent.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AgentObservation {
    /// Turn latency p50 over the SLO window, ms (`None`: no turns in the window).
    pub turn_p50_ms: Option<f64>,
    /// Turn latency p95 over the SLO window, ms.
    pub turn_p95_ms: Option<f64>,
    /// Per-stage p95, ms.
    pub stage_p95_ms: StageValues,
    /// Live calls summed over the agent's pods (`None`: no pod is being scraped).
    pub active_calls: Option<f64>,
    /// Age of the newest `grokcast_active_calls` sample.
    pub sample_age: Option<Duration>,
}

/// Whether the agent meets its SLO right now.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum SloState {
    /// Turn p95 at or below the SLO.
    Met,
    /// Turn p95 above the SLO.
    Breached,
    /// No turns in the window: nothing to measure.
    NoTurns,
    /// Metrics unusable.
    Unknown(HoldReason),
}

/// What one agent says about one of the pools it uses.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PoolSignal {
    /// The agent-side p95 of the pool's stage, ms.
    pub stage_p95_ms: Option<f64>,
    /// The agent's SLO breach was attributed to this pool.
    pub attributed: bool,
    /// The agent has no live calls, so silence from the stage means idle, not missing.
    pub idle: bool,
    /// The agent's metrics are unusable.
    pub hold: Option<HoldReason>,
    /// The agent's live calls: the load this pool's stage carries for it.
    pub calls: f64,
}

/// The outcome of [`assess_agent`].
#[derive(Clone, Debug, PartialEq)]
pub struct AgentAssessment {
    /// SLO state.
    pub slo: SloState,
    /// Stages the breach is attributed to (empty unless breached).
    pub attributed: Vec<Stage>,
    /// Agent pods wanted.
    pub recommendation: Recommendation,
    /// Pods live calls need right now (scale-down never goes below this).
    pub live_call_floor: u32,
    /// What this agent says about each pool role it uses.
    pub pool_signals: Vec<(Role, PoolSignal)>,
}

fn ceil_div(value: f64, per: f64) -> u32 {
    if value <= 0.0 || per <= 0.0 || !value.is_finite() {
        return 0;
    }
    // Float noise (40.000001 calls) must not cost a whole pod.
    let pods = (value / per - 1e-9).ceil();
    if pods >= f64::from(u32::MAX) {
        u32::MAX
    } else {
        pods as u32
    }
}

fn usable(value: Option<f64>) -> Option<f64> {
    value.filter(|v| v.is_finite() && *v >= 0.0)
}

/// Why this agent's metrics cannot be used, if they cannot.
fn agent_hold<'a>(
    observation: Result<&'a AgentObservation, HoldReason>,
    behaviour: &Behaviour,
) -> Result<&'a AgentObservation, HoldReason> {
    let obs = observation?;
    if usable(obs.active_calls).is_none() {
        return Err(HoldReason::MetricsMissing);
    }
    match obs.sample_age {
        Some(age) if age > behaviour.max_sample_age => Err(HoldReason::MetricsStale),
        _ => Ok(obs),
    }
}

/// Compares one agent's turn latency with its SLO, attributes a breach to stages and sizes the
/// agent pods from live calls.
pub fn assess_agent(
    spec: &AgentSpec,
    current: u32,
    roles: &[Role],
    observation: Result<&AgentObservation, HoldReason>,
    behaviour: &Behaviour,
) -> AgentAssessment {
    let obs = match agent_hold(observation, behaviour) {
        Ok(obs) => obs,
        Err(hold) => {
            return AgentAssessment {
                slo: SloState::Unknown(hold),
                attributed: Vec::new(),
                recommendation: Recommendation::Hold(hold),
                live_call_floor: 0,
                pool_signals: roles
                    .iter()
                    .map(|r| {
                        let signal = PoolSignal {
                            stage_p95_ms: None,
                            attributed: false,
                            idle: false,
                            hold: Some(hold),
                            calls: 0.0,
                        };
                        (*r, signal)
                    })
                    .collect(),
            };
        }
    };
    let calls = usable(obs.active_calls).unwrap_or(0.0);
    let turn_p95 = usable(obs.turn_p95_ms);
    let slo = match turn_p95 {
        None => SloState::NoTurns,
        Some(p95) if p95 > spec.slo_p95_ms => SloState::Breached,
        Some(_) => SloState::Met,
    };
    let budget = |stage: Stage| match stage {
        Stage::Agent => Some(behaviour.agent_stage_budget_ms),
        _ => spec.budgets_ms.get(stage),
    };
    let scalable =
        |stage: Stage| stage == Stage::Agent || stage.role().is_some_and(|r| roles.contains(&r));
    let mut attributed = Vec::new();
    if slo == SloState::Breached {
        attributed = Stage::ALL
            .into_iter()
            .filter(|s| scalable(*s))
            .filter(|s| match (usable(obs.stage_p95_ms.get(*s)), budget(*s)) {
                (Some(p95), Some(b)) => p95 > b,
                _ => false,
            })
            .collect();
        if attributed.is_empty() {
            // Budgets that add up to more than the SLO: blame the stage using most of its own.
            let largest = Stage::ALL
                .into_iter()
                .filter(|s| scalable(*s))
                .filter_map(|s| {
                    let ratio = usable(obs.stage_p95_ms.get(s))? / budget(s)?;
                    // A stage comfortably inside its budget would not help if it grew.
                    let busy = ratio.is_finite() && ratio >= behaviour.scale_down_below_budget;
                    busy.then_some((s, ratio))
                })
                .max_by(|a, b| a.1.total_cmp(&b.1));
            attributed.extend(largest.map(|(s, _)| s));
        }
    }
    let target = f64::from(spec.target_calls_per_pod.max(1));
    let by_calls = ceil_div(calls * (1.0 + behaviour.call_headroom.max(0.0)), target);
    let live_call_floor =
        ceil_div(calls, f64::from(spec.max_calls_per_pod.max(1))).max(ceil_div(calls, target));
    let recommendation = if attributed.contains(&Stage::Agent) {
        Recommendation::Replicas(
            by_calls.max(current.saturating_add(1)),
            Reason::AgentStageOverBudget,
        )
    } else if calls <= 0.0 {
        Recommendation::Replicas(0, Reason::Idle)
    } else {
        Recommendation::Replicas(by_calls, Reason::CallLoad)
    };
    let pool_signals = roles
        .iter()
        .map(|role| {
            let stage = role.stage();
            let signal = PoolSignal {
                stage_p95_ms: usable(obs.stage_p95_ms.get(stage)),
                attributed: attributed.contains(&stage),
                idle: calls <= 0.0,
                hold: None,
                calls,
            };
            (*role, signal)
        })
        .collect();
    AgentAssessment {
        slo,
        attributed,
        recommendation,
        live_call_floor,
        pool_signals,
    }
}

/// The spec of one ModelPool, as the decision sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct PoolSpec {
    /// `autoscaling.minReplicas` / `autoscaling.maxReplicas`.
    pub bounds: Bounds,
    /// `autoscaling.targetLatencyMs`: the p95 budget of this pool's stage.
    pub target_latency_ms: f64,
}

/// The engine's own metrics for one pool.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct EngineObservation {
    /// Time to first token (or first audio) p95 measured by the engine, ms.
    pub first_token_p95_ms: Option<f64>,
    /// Requests waiting for a slot, summed over replicas.
    pub waiting_requests: Option<f64>,
}

/// Sums the live calls behind a pool's signals.
pub fn pool_calls(signals: &[PoolSignal]) -> f64 {
    signals
        .iter()
        .filter(|s| s.hold.is_none())
        .map(|s| s.calls)
        .sum()
}

/// Recommends a replica count for one pool from what every agent using it says and from the
/// engine's own metrics. `breach_load` is the calls per replica at which the pool last went
/// over budget, if it ever did: latency alone cannot tell how close one replica fewer would be
/// to the edge, the load at the last breach can.
pub fn recommend_pool(
    spec: &PoolSpec,
    current: u32,
    signals: &[PoolSignal],
    engine: Option<&EngineObservation>,
    breach_load: Option<f64>,
    behaviour: &Behaviour,
) -> Recommendation {
    let budget = spec.target_latency_ms.max(1.0);
    let engine_p95 = engine.and_then(|e| usable(e.first_token_p95_ms));
    let waiting = engine.and_then(|e| usable(e.waiting_requests));
    let live: Vec<&PoolSignal> = signals.iter().filter(|s| s.hold.is_none()).collect();
    if live.is_empty() && engine_p95.is_none() && waiting.is_none() {
        let hold = signals
            .iter()
            .find_map(|s| s.hold)
            .unwrap_or(HoldReason::MetricsMissing);
        return Recommendation::Hold(hold);
    }
    let worst = live
        .iter()
        .filter_map(|s| s.stage_p95_ms)
        .chain(engine_p95)
        .fold(None, |acc: Option<f64>, v| {
            Some(acc.map_or(v, |a| a.max(v)))
        });
    let attributed = live.iter().any(|s| s.attributed);
    let queueing =
        waiting.is_some_and(|w| w > behaviour.waiting_per_replica * f64::from(current.max(1)));
    let ratio = worst.map(|w| w / budget);
    let grow = |ratio: f64| {
        // Proportional to the overshoot, at least one replica, at most doubling.
        let step = (f64::from(current.max(1)) * (ratio - 1.0).clamp(0.0, 1.0)).ceil() as u32;
        current.saturating_add(step.max(1))
    };
    match ratio {
        Some(r) if r > 1.0 => {
            let reason = if attributed {
                Reason::SloBreachAttributed
            } else {
                Reason::StageOverBudget
            };
            return Recommendation::Replicas(grow(r), reason);
        }
        _ => {}
    }
    if attributed {
        return Recommendation::Replicas(current.saturating_add(1), Reason::SloBreachLargestStage);
    }
    if queueing {
        return Recommendation::Replicas(current.saturating_add(1), Reason::EngineQueueing);
    }
    let everyone_idle = !live.is_empty() && live.iter().all(|s| s.idle);
    if everyone_idle && waiting.unwrap_or(0.0) <= 0.0 {
        return Recommendation::Replicas(0, Reason::Idle);
    }
    match ratio {
        Some(r) if r < behaviour.scale_down_below_budget && waiting.unwrap_or(0.0) <= 0.0 => {
            let calls = pool_calls(signals);
            let after = f64::from(current.saturating_sub(1).max(1));
            match breach_load {
                Some(limit) if calls / after > limit * behaviour.breach_load_margin => {
                    Recommendation::Replicas(current, Reason::NearBreachLoad)
                }
                _ => Recommendation::Replicas(current.saturating_sub(1), Reason::UnderBudget),
            }
        }
        Some(_) => Recommendation::Replicas(current, Reason::Steady),
        // Agents with calls but no samples for this stage yet, and no engine data.
        None => Recommendation::Hold(HoldReason::MetricsMissing),
    }
}

/// Recent raw recommendations of one object, for scale-down stabilisation.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct History {
    /// `(time, recommended replicas)`, oldest first.
    entries: VecDeque<(Duration, u32)>,
    /// When this object was first evaluated.
    first_seen: Option<Duration>,
}

impl History {
    /// Records a recommendation and forgets what fell out of the window.
    fn record(&mut self, now: Duration, replicas: u32, window: Duration) {
        self.first_seen.get_or_insert(now);
        self.entries.push_back((now, replicas));
        while let Some((at, _)) = self.entries.front() {
            if now.saturating_sub(*at) > window {
                self.entries.pop_front();
            } else {
                break;
            }
        }
    }

    /// Whether this object has been watched for a whole window: after a restart the operator
    /// does not know what was recommended before, so it must not scale down at once.
    fn covers(&self, now: Duration, window: Duration) -> bool {
        self.first_seen
            .is_some_and(|first| now.saturating_sub(first) >= window)
    }

    fn max(&self) -> Option<u32> {
        self.entries.iter().map(|(_, r)| *r).max()
    }
}

/// Step limits for one kind of object.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Steps {
    /// Most replicas added per period.
    pub up: u32,
    /// Most replicas removed per period.
    pub down: u32,
}

impl Steps {
    /// Agent pod steps for the current count: HPA's max(4 pods, 100%) up, a fraction down.
    pub fn agent(current: u32, behaviour: &Behaviour) -> Steps {
        let down = (f64::from(current) * behaviour.agent_scale_down_fraction).floor() as u32;
        Steps {
            up: behaviour.agent_scale_up_pods.max(current),
            down: down.max(1),
        }
    }

    /// Pool replica steps: GPUs are expensive and slow to start, so small steps both ways.
    pub fn pool(behaviour: &Behaviour) -> Steps {
        Steps {
            up: behaviour.pool_scale_up_replicas.max(1),
            down: behaviour.pool_scale_down_replicas.max(1),
        }
    }
}

/// The replica count to write and why.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    /// Replicas to run.
    pub desired: u32,
    /// Why.
    pub reason: Reason,
    /// Set when the metrics were unusable and replicas were held.
    pub held: Option<HoldReason>,
}

/// The limits [`stabilise`] works within.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Limits {
    /// min/max replicas.
    pub bounds: Bounds,
    /// Scale-down never goes below this (pods live calls need; 0 for pools).
    pub floor: u32,
    /// Step sizes.
    pub steps: Steps,
    /// Scale-down stabilisation window.
    pub window: Duration,
}

/// Turns a raw recommendation into the count to write: bounded fast scale-up, scale-down only to
/// the highest recommendation over the stabilisation window, within the bounds, never below the
/// floor (capacity live calls still need).
pub fn stabilise(
    current: u32,
    recommendation: Recommendation,
    history: &mut History,
    now: Duration,
    limits: Limits,
) -> Decision {
    let Limits {
        bounds,
        floor,
        steps,
        window,
    } = limits;
    let max = bounds.max.max(bounds.min);
    let clamp = |desired: u32, reason: Reason| {
        if desired < bounds.min {
            (bounds.min, Reason::MinReplicas)
        } else if desired > max {
            (max, Reason::MaxReplicas)
        } else {
            (desired, reason)
        }
    };
    let (wanted, reason) = match recommendation {
        Recommendation::Hold(hold) => {
            // Holding means the current count, but a spec change to min/max still applies.
            let (desired, reason) = clamp(current, Reason::Held);
            return Decision {
                desired,
                reason,
                held: Some(hold),
            };
        }
        Recommendation::Replicas(r, reason) => (r, reason),
    };
    history.record(now, wanted, window);
    let (desired, reason) = if wanted > current {
        (wanted.min(current.saturating_add(steps.up)), reason)
    } else if wanted < current {
        let stabilised = history.max().unwrap_or(current).max(wanted);
        if stabilised >= current || !history.covers(now, window) {
            (current, Reason::StabilisingScaleDown)
        } else {
            let stepped = stabilised.max(current.saturating_sub(steps.down));
            if stepped < floor {
                (floor.min(current), Reason::LiveCalls)
            } else {
                (stepped, reason)
            }
        }
    } else {
        (
            current,
            if reason == Reason::CallLoad {
                Reason::Steady
            } else {
                reason
            },
        )
    };
    let (desired, reason) = clamp(desired, reason);
    Decision {
        desired,
        reason,
        held: None,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
