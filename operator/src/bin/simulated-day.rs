//! A simulated day through the autoscaler's decision loop.
//!
//! A call-rate curve (night trough, morning ramp, two peaks, evening decline) drives one
//! VoiceAgent and its three ModelPools. Each period the latency model turns load per ready
//! replica into stage p95s, the observations Prometheus would return (averaged over the SLO
//! window, as a `rate()` over `_bucket`s would) go through `Autoscaler::evaluate`, and the
//! decided replicas become ready after a start-up delay (model servers load weights for
//! minutes). A ten-minute Prometheus outage is injected at 13:00.
//!
//! Prints SLO compliance, replica-minutes and GPU-minutes against a fixed fleet sized for the
//! peak, scale events and reversals. Run: `cargo run --release -p grokcast-operator --bin
//! simulated-day` (optional args: `--seed N`, `--gpus N`).

use std::collections::VecDeque;
use std::time::Duration;

use grokcast_operator::autoscale::capacity::{GpuInventory, GpuNode};
use grokcast_operator::autoscale::decide::{
    AgentObservation, AgentSpec, Behaviour, Bounds, HoldReason, PoolSpec, Role, StageValues,
};
use grokcast_operator::autoscale::plan::{AgentInput, Autoscaler, PoolInput, Snapshot};

const PERIOD_S: u64 = 15;
const DAY_S: u64 = 24 * 3600;
const SLO_MS: f64 = 800.0;
const ENDPOINTING_MS: f64 = 320.0;
const SLO_WINDOW_PERIODS: usize = 20; // 5m
const AGENT_START_S: u64 = 20;
const POOL_START_S: u64 = 150;
const GPU_PRODUCT: &str = "NVIDIA-A100-SXM4-80GB";

/// A model pool in the simulation.
struct SimPool {
    name: &'static str,
    role: Role,
    /// p95 with no queueing, ms.
    base_ms: f64,
    /// The stage budget (`targetLatencyMs`).
    budget_ms: f64,
    /// Concurrent calls one replica serves at utilisation 1.
    calls_per_replica: f64,
    bounds: Bounds,
    /// Replicas asked for, and when each pending one becomes ready.
    spec_replicas: u32,
    ready: u32,
    starting: VecDeque<(u64, u32)>,
}

/// p95 of a batching server at utilisation `rho`: flat, then a queueing knee.
fn p95(base_ms: f64, rho: f64) -> f64 {
    let rho = rho.max(0.0);
    if rho >= 0.98 {
        return base_ms * 30.0;
    }
    (base_ms * (1.0 + rho.powi(4) / (1.0 - rho))).min(base_ms * 30.0)
}

/// Concurrent calls at time `t` seconds: keypoints joined by cosine easing.
fn calls_at(t: u64) -> f64 {
    const KEYS: [(f64, f64); 10] = [
        (0.0, 60.0),
        (3.0, 30.0),
        (6.0, 80.0),
        (9.0, 700.0),
        (11.0, 1000.0),
        (12.5, 760.0),
        (15.0, 1100.0),
        (18.0, 600.0),
        (21.0, 220.0),
        (24.0, 60.0),
    ];
    let h = t as f64 / 3600.0;
    for pair in KEYS.windows(2) {
        let ((h0, c0), (h1, c1)) = (pair[0], pair[1]);
        if h >= h0 && h <= h1 {
            let x = (h - h0) / (h1 - h0);
            let ease = (1.0 - (std::f64::consts::PI * x).cos()) / 2.0;
            return c0 + (c1 - c0) * ease;
        }
    }
    KEYS[0].1
}

/// A small deterministic generator, so every run of the benchmark prints the same figures.
struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> f64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        ((self.0 >> 11) as f64) / ((1u64 << 53) as f64)
    }
    /// Multiplicative noise of +-`spread`.
    fn jitter(&mut self, spread: f64) -> f64 {
        1.0 + spread * (2.0 * self.next() - 1.0)
    }
}

#[derive(Default)]
struct Changes {
    events: u32,
    reversals: u32,
    last: Option<(u64, i64)>,
}

impl Changes {
    fn record(&mut self, t: u64, from: u32, to: u32, window_s: u64) {
        if from == to {
            return;
        }
        let direction = if to > from { 1 } else { -1 };
        self.events += 1;
        if let Some((at, previous)) = self.last
            && previous != direction
            && t - at <= window_s
        {
            self.reversals += 1;
        }
        self.last = Some((t, direction));
    }
}

fn arg(name: &str) -> Option<u64> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
}

fn percentile(values: &mut [f64], q: f64) -> f64 {
    values.sort_by(f64::total_cmp);
    let index = ((values.len() as f64 - 1.0) * q).round() as usize;
    values.get(index).copied().unwrap_or(0.0)
}

fn main() {
    let seed = arg("--seed").unwrap_or(7);
    let gpus = u32::try_from(arg("--gpus").unwrap_or(24)).unwrap_or(24);
    let behaviour = Behaviour {
        period: Duration::from_secs(PERIOD_S),
        ..Behaviour::default()
    };
    let window_s = behaviour.scale_down_stabilisation.as_secs();
    let mut autoscaler = Autoscaler::new(behaviour);
    let mut rng = Lcg(seed);
    let inventory = GpuInventory::from_nodes(&[GpuNode {
        name: "gpu".into(),
        product: Some(GPU_PRODUCT.into()),
        allocatable: gpus,
        requested: 0,
        schedulable: true,
    }]);

    let pool = |name, role, base_ms, budget_ms, calls_per_replica| SimPool {
        name,
        role,
        base_ms,
        budget_ms,
        calls_per_replica,
        bounds: Bounds { min: 1, max: 10 },
        spec_replicas: 1,
        ready: 1,
        starting: VecDeque::new(),
    };
    let mut pools = [
        pool("whisper", Role::Stt, 55.0, 100.0, 300.0),
        pool("gemma-27b", Role::Llm, 100.0, 200.0, 180.0),
        pool("csm-1b", Role::Tts, 60.0, 120.0, 350.0),
    ];
    let max_calls_per_pod = 50.0;
    let agent_spec = AgentSpec {
        slo_p95_ms: SLO_MS,
        bounds: Bounds { min: 2, max: 40 },
        target_calls_per_pod: 40,
        max_calls_per_pod: 50,
        budgets_ms: {
            let mut b = StageValues::default();
            for p in &pools {
                b.set(p.role.stage(), Some(p.budget_ms));
            }
            b
        },
    };
    let mut agent_replicas = 2u32;
    let mut agent_ready = 2u32;
    let mut agent_starting: VecDeque<(u64, u32)> = VecDeque::new();

    let mut turn_history: VecDeque<f64> = VecDeque::new();
    let mut stage_history: Vec<VecDeque<f64>> = vec![VecDeque::new(); 5];
    let mut windows_met = 0u32;
    let mut windows = 0u32;
    let mut slo_windows_met = 0u32;
    let mut slo_windows = 0u32;
    let mut turn_p95s = Vec::new();
    let mut gpu_minutes = 0.0;
    let mut pool_replica_minutes = 0.0;
    let mut agent_pod_minutes = 0.0;
    let mut busy_call_minutes = 0.0;
    let mut peak_calls: f64 = 0.0;
    let mut agent_changes = Changes::default();
    let mut pool_changes: Vec<Changes> = pools.iter().map(|_| Changes::default()).collect();
    let mut capacity_limited_periods = 0u32;
    let mut outage_changes = 0u32;
    let outage = (13 * 3600)..(13 * 3600 + 600);

    let mut t = 0;
    while t < DAY_S {
        // Replicas finishing start-up.
        while agent_starting.front().is_some_and(|(at, _)| *at <= t) {
            if let Some((_, n)) = agent_starting.pop_front() {
                agent_ready = n;
            }
        }
        for p in pools.iter_mut() {
            while p.starting.front().is_some_and(|(at, _)| *at <= t) {
                if let Some((_, n)) = p.starting.pop_front() {
                    p.ready = n;
                }
            }
        }

        let calls = calls_at(t) * rng.jitter(0.04);
        peak_calls = peak_calls.max(calls);
        let capacity = f64::from(agent_ready) * max_calls_per_pod;
        let served = calls.min(capacity);
        busy_call_minutes += (calls - served).max(0.0) * PERIOD_S as f64 / 60.0;
        let agent_rho = served / (f64::from(agent_ready.max(1)) * max_calls_per_pod);
        let mut stage = [
            ENDPOINTING_MS * rng.jitter(0.02),
            0.0,
            0.0,
            0.0,
            p95(5.0, agent_rho) * rng.jitter(0.05),
        ];
        for p in &pools {
            let rho = served / (f64::from(p.ready.max(1)) * p.calls_per_replica);
            let index = match p.role {
                Role::Stt => 1,
                Role::Llm => 2,
                Role::Tts => 3,
            };
            stage[index] = p95(p.base_ms, rho) * rng.jitter(0.05);
        }
        // Percentiles do not add; the sum is the pessimistic bound the SLO is judged on.
        let turn = stage.iter().sum::<f64>();
        turn_p95s.push(turn);
        windows += 1;
        if turn <= SLO_MS {
            windows_met += 1;
        }
        turn_history.push_back(turn);
        for (h, v) in stage_history.iter_mut().zip(stage) {
            h.push_back(v);
            if h.len() > SLO_WINDOW_PERIODS {
                h.pop_front();
            }
        }
        if turn_history.len() > SLO_WINDOW_PERIODS {
            turn_history.pop_front();
        }
        if (t / PERIOD_S) % SLO_WINDOW_PERIODS as u64 == SLO_WINDOW_PERIODS as u64 - 1 {
            slo_windows += 1;
            let mut w: Vec<f64> = turn_history.iter().copied().collect();
            if percentile(&mut w, 0.95) <= SLO_MS {
                slo_windows_met += 1;
            }
        }

        // What Prometheus would answer: figures over the SLO window.
        let mean = |h: &VecDeque<f64>| h.iter().sum::<f64>() / h.len().max(1) as f64;
        let observation = if outage.contains(&t) {
            Err(HoldReason::PrometheusUnavailable)
        } else {
            let mut stage_p95_ms = StageValues::default();
            for (s, h) in grokcast_operator::autoscale::decide::Stage::ALL
                .into_iter()
                .zip(&stage_history)
            {
                stage_p95_ms.set(s, Some(mean(h)));
            }
            Ok(AgentObservation {
                turn_p50_ms: None,
                turn_p95_ms: Some(mean(&turn_history)),
                stage_p95_ms,
                active_calls: Some(served),
                sample_age: Some(Duration::from_secs(5)),
            })
        };
        let snapshot = Snapshot {
            agents: vec![AgentInput {
                key: "voice/receptionist".into(),
                spec: agent_spec.clone(),
                current: agent_replicas,
                pools: pools
                    .iter()
                    .map(|p| (p.role, format!("voice/{}", p.name)))
                    .collect(),
                observation,
            }],
            pools: pools
                .iter()
                .map(|p| PoolInput {
                    key: format!("voice/{}", p.name),
                    spec: Some(PoolSpec {
                        bounds: p.bounds,
                        target_latency_ms: p.budget_ms,
                    }),
                    current: p.spec_replicas,
                    // The simulated scheduler binds every replica at once.
                    scheduled: p.spec_replicas,
                    ready: Some(p.ready),
                    gpus_per_replica: 1,
                    product: Some(GPU_PRODUCT.into()),
                    engine: None,
                })
                .collect(),
            inventory: Some(inventory.clone().less(
                Some(GPU_PRODUCT),
                pools.iter().map(|p| p.spec_replicas).sum(),
            )),
        };
        let plan = autoscaler.evaluate(Duration::from_secs(t), &snapshot);
        for a in &plan.agents {
            let to = a.decision.desired;
            agent_changes.record(t, agent_replicas, to, window_s);
            if outage.contains(&t) && to != agent_replicas {
                outage_changes += 1;
            }
            if to > agent_replicas {
                agent_starting.push_back((t + AGENT_START_S, to));
            } else if to < agent_replicas {
                // Draining pods stop taking calls at once.
                agent_starting.clear();
                agent_ready = agent_ready.min(to);
            }
            agent_replicas = to;
        }
        for (i, plan) in plan.pools.iter().enumerate() {
            let p = &mut pools[i];
            let to = plan.decision.desired;
            if plan.gpus_missing > 0 {
                capacity_limited_periods += 1;
            }
            pool_changes[i].record(t, p.spec_replicas, to, window_s);
            if outage.contains(&t) && to != p.spec_replicas {
                outage_changes += 1;
            }
            if to > p.spec_replicas {
                p.starting.push_back((t + POOL_START_S, to));
            } else if to < p.spec_replicas {
                p.starting.clear();
                p.ready = p.ready.min(to);
            }
            p.spec_replicas = to;
        }
        let minutes = PERIOD_S as f64 / 60.0;
        agent_pod_minutes += f64::from(agent_replicas) * minutes;
        for p in &pools {
            pool_replica_minutes += f64::from(p.spec_replicas) * minutes;
            gpu_minutes += f64::from(p.spec_replicas) * minutes;
        }
        t += PERIOD_S;
    }

    // The fixed fleet: the fewest replicas that keep every stage within budget at the peak.
    let fixed: Vec<u32> = pools
        .iter()
        .map(|p| {
            (1..=64u32)
                .find(|n| {
                    p95(
                        p.base_ms,
                        peak_calls / (f64::from(*n) * p.calls_per_replica),
                    ) <= p.budget_ms
                })
                .unwrap_or(64)
        })
        .collect();
    let fixed_gpu_minutes = f64::from(fixed.iter().sum::<u32>()) * (DAY_S as f64 / 60.0);
    let fixed_agents = (peak_calls / 40.0).ceil();

    println!(
        "simulated day: {} periods of {PERIOD_S} s, seed {seed}, {gpus} x {GPU_PRODUCT}",
        windows
    );
    println!("peak concurrent calls: {peak_calls:.0}; SLO p95 {SLO_MS:.0} ms over 5m");
    println!(
        "SLO compliance: {:.2}% of {windows} evaluation periods, {:.2}% of {slo_windows} 5-minute SLO windows",
        100.0 * f64::from(windows_met) / f64::from(windows),
        100.0 * f64::from(slo_windows_met) / f64::from(slo_windows)
    );
    let mut all = turn_p95s.clone();
    println!(
        "turn p95 per period: median {:.0} ms, p95 {:.0} ms, max {:.0} ms",
        percentile(&mut all, 0.5),
        percentile(&mut all, 0.95),
        percentile(&mut all, 1.0)
    );
    println!(
        "GPU-minutes: {gpu_minutes:.0} autoscaled vs {fixed_gpu_minutes:.0} fixed at peak {:?} ({:.1}% saved)",
        fixed,
        100.0 * (1.0 - gpu_minutes / fixed_gpu_minutes)
    );
    println!(
        "replica-minutes: pools {pool_replica_minutes:.0}, agent pods {agent_pod_minutes:.0} vs fixed {:.0}",
        fixed_agents * DAY_S as f64 / 60.0
    );
    println!(
        "scale events: agent {} ({} reversals within {window_s} s)",
        agent_changes.events, agent_changes.reversals
    );
    for (p, c) in pools.iter().zip(&pool_changes) {
        println!(
            "scale events: pool {} {} ({} reversals within {window_s} s)",
            p.name, c.events, c.reversals
        );
    }
    println!("busy-rejected call-minutes: {busy_call_minutes:.1}");
    println!("capacity-limited pool-periods: {capacity_limited_periods}");
    println!("replica changes during the 10-minute Prometheus outage: {outage_changes}");
}
