use super::*;

const S: fn(u64) -> Duration = Duration::from_secs;

fn spec() -> AgentSpec {
    AgentSpec {
        slo_p95_ms: 800.0,
        bounds: Bounds { min: 2, max: 20 },
        target_calls_per_pod: 40,
        max_calls_per_pod: 50,
        budgets_ms: StageValues {
            endpointing: None,
            stt: Some(150.0),
            llm_first_token: Some(250.0),
            tts_first_audio: Some(150.0),
            agent: None,
        },
    }
}

fn obs(calls: f64, turn_p95: Option<f64>, stages: [Option<f64>; 5]) -> AgentObservation {
    let mut stage_p95_ms = StageValues::default();
    for (stage, v) in Stage::ALL.into_iter().zip(stages) {
        stage_p95_ms.set(stage, v);
    }
    AgentObservation {
        turn_p50_ms: turn_p95.map(|p| p / 2.0),
        turn_p95_ms: turn_p95,
        stage_p95_ms,
        active_calls: Some(calls),
        sample_age: Some(S(5)),
    }
}

const ALL_ROLES: [Role; 3] = [Role::Stt, Role::Llm, Role::Tts];

#[test]
fn assess_agent_table() {
    let b = Behaviour::default();
    struct Case {
        name: &'static str,
        current: u32,
        roles: &'static [Role],
        obs: Result<AgentObservation, HoldReason>,
        slo: SloState,
        attributed: Vec<Stage>,
        rec: Recommendation,
        floor: u32,
    }
    use Recommendation::{Hold, Replicas};
    let fine = [
        Some(300.0),
        Some(100.0),
        Some(200.0),
        Some(100.0),
        Some(5.0),
    ];
    let cases = vec![
        Case {
            name: "met, sized from calls with 25% headroom",
            current: 2,
            roles: &ALL_ROLES,
            obs: Ok(obs(100.0, Some(700.0), fine)),
            slo: SloState::Met,
            attributed: vec![],
            rec: Replicas(4, Reason::CallLoad),
            floor: 3,
        },
        Case {
            name: "breach attributed to the one stage over budget",
            current: 4,
            roles: &ALL_ROLES,
            obs: Ok(obs(
                100.0,
                Some(950.0),
                [
                    Some(300.0),
                    Some(400.0),
                    Some(200.0),
                    Some(100.0),
                    Some(5.0),
                ],
            )),
            slo: SloState::Breached,
            attributed: vec![Stage::Stt],
            rec: Replicas(4, Reason::CallLoad),
            floor: 3,
        },
        Case {
            name: "breach attributed to two stages",
            current: 4,
            roles: &ALL_ROLES,
            obs: Ok(obs(
                100.0,
                Some(1200.0),
                [
                    Some(300.0),
                    Some(100.0),
                    Some(600.0),
                    Some(300.0),
                    Some(5.0),
                ],
            )),
            slo: SloState::Breached,
            attributed: vec![Stage::LlmFirstToken, Stage::TtsFirstAudio],
            rec: Replicas(4, Reason::CallLoad),
            floor: 3,
        },
        Case {
            name: "breach with every stage in budget blames the largest share",
            current: 4,
            roles: &ALL_ROLES,
            obs: Ok(obs(
                100.0,
                Some(850.0),
                [
                    Some(400.0),
                    Some(100.0),
                    Some(240.0),
                    Some(100.0),
                    Some(5.0),
                ],
            )),
            slo: SloState::Breached,
            attributed: vec![Stage::LlmFirstToken],
            rec: Replicas(4, Reason::CallLoad),
            floor: 3,
        },
        Case {
            name: "agent stage over budget grows agent pods",
            current: 4,
            roles: &ALL_ROLES,
            obs: Ok(obs(
                100.0,
                Some(900.0),
                [
                    Some(300.0),
                    Some(100.0),
                    Some(200.0),
                    Some(100.0),
                    Some(120.0),
                ],
            )),
            slo: SloState::Breached,
            attributed: vec![Stage::Agent],
            rec: Replicas(5, Reason::AgentStageOverBudget),
            floor: 3,
        },
        Case {
            name: "stage served by an external endpoint is not attributed",
            current: 4,
            roles: &[Role::Llm, Role::Tts],
            obs: Ok(obs(
                100.0,
                Some(950.0),
                [
                    Some(300.0),
                    Some(400.0),
                    Some(200.0),
                    Some(100.0),
                    Some(5.0),
                ],
            )),
            slo: SloState::Breached,
            attributed: vec![Stage::LlmFirstToken],
            rec: Replicas(4, Reason::CallLoad),
            floor: 3,
        },
        Case {
            name: "endpointing alone over the SLO blames nothing scalable beyond shares",
            current: 2,
            roles: &[],
            obs: Ok(obs(
                10.0,
                Some(900.0),
                [Some(850.0), None, None, None, Some(5.0)],
            )),
            slo: SloState::Breached,
            attributed: vec![],
            rec: Replicas(1, Reason::CallLoad),
            floor: 1,
        },
        Case {
            name: "no calls, no turns: idle",
            current: 6,
            roles: &ALL_ROLES,
            obs: Ok(obs(0.0, None, [None; 5])),
            slo: SloState::NoTurns,
            attributed: vec![],
            rec: Replicas(0, Reason::Idle),
            floor: 0,
        },
        Case {
            name: "NaN p95 from an empty histogram means no turns",
            current: 2,
            roles: &ALL_ROLES,
            obs: Ok(obs(3.0, Some(f64::NAN), [None; 5])),
            slo: SloState::NoTurns,
            attributed: vec![],
            rec: Replicas(1, Reason::CallLoad),
            floor: 1,
        },
        Case {
            name: "prometheus down holds",
            current: 6,
            roles: &ALL_ROLES,
            obs: Err(HoldReason::PrometheusUnavailable),
            slo: SloState::Unknown(HoldReason::PrometheusUnavailable),
            attributed: vec![],
            rec: Hold(HoldReason::PrometheusUnavailable),
            floor: 0,
        },
        Case {
            name: "no active-calls series holds",
            current: 6,
            roles: &ALL_ROLES,
            obs: Ok(AgentObservation {
                active_calls: None,
                ..obs(0.0, Some(500.0), fine)
            }),
            slo: SloState::Unknown(HoldReason::MetricsMissing),
            attributed: vec![],
            rec: Hold(HoldReason::MetricsMissing),
            floor: 0,
        },
        Case {
            name: "stale samples hold",
            current: 6,
            roles: &ALL_ROLES,
            obs: Ok(AgentObservation {
                sample_age: Some(S(600)),
                ..obs(0.0, Some(500.0), fine)
            }),
            slo: SloState::Unknown(HoldReason::MetricsStale),
            attributed: vec![],
            rec: Hold(HoldReason::MetricsStale),
            floor: 0,
        },
        Case {
            name: "calls above max per pod raise the floor",
            current: 2,
            roles: &ALL_ROLES,
            obs: Ok(obs(201.0, Some(500.0), fine)),
            slo: SloState::Met,
            attributed: vec![],
            rec: Replicas(7, Reason::CallLoad),
            floor: 6,
        },
    ];
    for case in cases {
        let got = assess_agent(
            &spec(),
            case.current,
            case.roles,
            case.obs.as_ref().map_err(|h| *h),
            &b,
        );
        assert_eq!(got.slo, case.slo, "{}", case.name);
        assert_eq!(got.attributed, case.attributed, "{}", case.name);
        assert_eq!(got.recommendation, case.rec, "{}", case.name);
        assert_eq!(got.live_call_floor, case.floor, "{}", case.name);
        assert_eq!(got.pool_signals.len(), case.roles.len(), "{}", case.name);
        for (role, signal) in &got.pool_signals {
            assert_eq!(
                signal.attributed,
                case.attributed.contains(&role.stage()),
                "{}",
                case.name
            );
        }
    }
}

fn signal(p95: Option<f64>, attributed: bool) -> PoolSignal {
    PoolSignal {
        stage_p95_ms: p95,
        attributed,
        idle: false,
        hold: None,
        calls: 100.0,
    }
}

#[test]
fn recommend_pool_table() {
    let b = Behaviour::default();
    let spec = PoolSpec {
        bounds: Bounds { min: 1, max: 8 },
        target_latency_ms: 250.0,
    };
    let idle = PoolSignal {
        stage_p95_ms: None,
        attributed: false,
        idle: true,
        hold: None,
        calls: 0.0,
    };
    let down = PoolSignal {
        stage_p95_ms: None,
        attributed: false,
        idle: false,
        hold: Some(HoldReason::PrometheusUnavailable),
        calls: 0.0,
    };
    let engine = |ttft: Option<f64>, waiting: Option<f64>| EngineObservation {
        first_token_p95_ms: ttft,
        waiting_requests: waiting,
    };
    use Recommendation::{Hold, Replicas};
    struct Case {
        name: &'static str,
        current: u32,
        signals: Vec<PoolSignal>,
        engine: Option<EngineObservation>,
        want: Recommendation,
    }
    let cases = vec![
        Case {
            name: "attributed 1.5x over budget",
            current: 2,
            signals: vec![signal(Some(375.0), true)],
            engine: None,
            want: Replicas(3, Reason::SloBreachAttributed),
        },
        Case {
            name: "3x over budget at most doubles",
            current: 2,
            signals: vec![signal(Some(750.0), true)],
            engine: None,
            want: Replicas(4, Reason::SloBreachAttributed),
        },
        Case {
            name: "slightly over still adds one",
            current: 4,
            signals: vec![signal(Some(251.0), false)],
            engine: None,
            want: Replicas(5, Reason::StageOverBudget),
        },
        Case {
            name: "worst agent decides",
            current: 2,
            signals: vec![signal(Some(100.0), false), signal(Some(400.0), false)],
            engine: None,
            want: Replicas(4, Reason::StageOverBudget),
        },
        Case {
            name: "attributed as largest share, under budget",
            current: 2,
            signals: vec![signal(Some(240.0), true)],
            engine: None,
            want: Replicas(3, Reason::SloBreachLargestStage),
        },
        Case {
            name: "engine queueing",
            current: 2,
            signals: vec![signal(Some(200.0), false)],
            engine: Some(engine(Some(200.0), Some(9.0))),
            want: Replicas(3, Reason::EngineQueueing),
        },
        Case {
            name: "engine ttft over budget",
            current: 2,
            signals: vec![signal(Some(200.0), false)],
            engine: Some(engine(Some(300.0), Some(0.0))),
            want: Replicas(3, Reason::StageOverBudget),
        },
        Case {
            name: "well under budget sheds one",
            current: 3,
            signals: vec![signal(Some(100.0), false)],
            engine: None,
            want: Replicas(2, Reason::UnderBudget),
        },
        Case {
            name: "under budget but queueing a little keeps",
            current: 3,
            signals: vec![signal(Some(100.0), false)],
            engine: Some(engine(None, Some(1.0))),
            want: Replicas(3, Reason::Steady),
        },
        Case {
            name: "in the band keeps",
            current: 3,
            signals: vec![signal(Some(200.0), false)],
            engine: None,
            want: Replicas(3, Reason::Steady),
        },
        Case {
            name: "every agent idle",
            current: 3,
            signals: vec![idle, idle],
            engine: Some(engine(None, Some(0.0))),
            want: Replicas(0, Reason::Idle),
        },
        Case {
            name: "prometheus down for every agent",
            current: 3,
            signals: vec![down],
            engine: None,
            want: Hold(HoldReason::PrometheusUnavailable),
        },
        Case {
            name: "one agent down, another in budget",
            current: 3,
            signals: vec![down, signal(Some(200.0), false)],
            engine: None,
            want: Replicas(3, Reason::Steady),
        },
        Case {
            name: "no agent uses the pool and no engine metrics",
            current: 3,
            signals: vec![],
            engine: None,
            want: Hold(HoldReason::MetricsMissing),
        },
        Case {
            name: "calls but no stage samples yet",
            current: 3,
            signals: vec![signal(None, false)],
            engine: None,
            want: Hold(HoldReason::MetricsMissing),
        },
        Case {
            name: "engine metrics alone are enough",
            current: 3,
            signals: vec![],
            engine: Some(engine(Some(50.0), Some(0.0))),
            want: Replicas(2, Reason::UnderBudget),
        },
    ];
    for case in cases {
        let got = recommend_pool(
            &spec,
            case.current,
            &case.signals,
            case.engine.as_ref(),
            None,
            &b,
        );
        assert_eq!(got, case.want, "{}", case.name);
    }
}

#[test]
fn scale_down_stops_short_of_the_load_of_the_last_breach() {
    let b = Behaviour::default();
    let spec = PoolSpec {
        bounds: Bounds { min: 1, max: 8 },
        target_latency_ms: 250.0,
    };
    // 100 calls on 3 replicas, well under budget. The pool last breached at 60 calls/replica.
    let signals = [signal(Some(100.0), false)];
    let cases = [
        (None, Recommendation::Replicas(2, Reason::UnderBudget)),
        // 2 replicas would carry 50/replica: above 85% of 55 (46.75), so keep 3.
        (
            Some(55.0),
            Recommendation::Replicas(3, Reason::NearBreachLoad),
        ),
        // 50/replica is below 85% of 70 (59.5): shrink.
        (Some(70.0), Recommendation::Replicas(2, Reason::UnderBudget)),
    ];
    for (breach, want) in cases {
        assert_eq!(
            recommend_pool(&spec, 3, &signals, None, breach, &b),
            want,
            "{breach:?}"
        );
    }
}

fn limits(min: u32, max: u32, floor: u32) -> Limits {
    Limits {
        bounds: Bounds { min, max },
        floor,
        steps: Steps { up: 2, down: 1 },
        window: S(300),
    }
}

/// Feeds `recs` one per 15 s and returns the last decision.
fn run(current: u32, recs: &[Recommendation], limits: Limits) -> Decision {
    let mut history = History::default();
    let mut last = None;
    for (i, rec) in recs.iter().enumerate() {
        last = Some(stabilise(
            current,
            *rec,
            &mut history,
            S(15 * i as u64),
            limits,
        ));
    }
    last.unwrap()
}

#[test]
fn stabilise_table() {
    use Recommendation::{Hold, Replicas};
    let r = |n, reason| Replicas(n, reason);
    let long_low: Vec<Recommendation> = (0..22).map(|_| r(1, Reason::UnderBudget)).collect();
    let mut recent_peak = long_low.clone();
    recent_peak[15] = r(3, Reason::Steady);
    let cases: Vec<(&str, u32, Vec<Recommendation>, Limits, Decision)> = vec![
        (
            "scale-up is immediate but bounded",
            2,
            vec![r(9, Reason::StageOverBudget)],
            limits(1, 10, 0),
            Decision {
                desired: 4,
                reason: Reason::StageOverBudget,
                held: None,
            },
        ),
        (
            "scale-up capped at max",
            9,
            vec![r(15, Reason::CallLoad)],
            limits(1, 10, 0),
            Decision {
                desired: 10,
                reason: Reason::MaxReplicas,
                held: None,
            },
        ),
        (
            "scale-down waits for a full window",
            4,
            long_low[..10].to_vec(),
            limits(1, 10, 0),
            Decision {
                desired: 4,
                reason: Reason::StabilisingScaleDown,
                held: None,
            },
        ),
        (
            "scale-down after a full window, one step",
            4,
            long_low.clone(),
            limits(1, 10, 0),
            Decision {
                desired: 3,
                reason: Reason::UnderBudget,
                held: None,
            },
        ),
        (
            "a higher recommendation in the window stops scale-down",
            4,
            recent_peak.clone(),
            limits(1, 10, 0),
            Decision {
                desired: 3,
                reason: Reason::UnderBudget,
                held: None,
            },
        ),
        (
            "scale-down never below live calls",
            4,
            long_low.clone(),
            limits(1, 10, 4),
            Decision {
                desired: 4,
                reason: Reason::LiveCalls,
                held: None,
            },
        ),
        (
            "scale-down never below min",
            2,
            long_low.clone(),
            limits(2, 10, 0),
            Decision {
                desired: 2,
                reason: Reason::MinReplicas,
                held: None,
            },
        ),
        (
            "hold keeps replicas",
            7,
            vec![Hold(HoldReason::MetricsStale)],
            limits(1, 10, 0),
            Decision {
                desired: 7,
                reason: Reason::Held,
                held: Some(HoldReason::MetricsStale),
            },
        ),
        (
            "hold still honours a lowered max",
            12,
            vec![Hold(HoldReason::PrometheusUnavailable)],
            limits(1, 10, 0),
            Decision {
                desired: 10,
                reason: Reason::MaxReplicas,
                held: Some(HoldReason::PrometheusUnavailable),
            },
        ),
        (
            "below min is raised",
            0,
            vec![r(0, Reason::Idle)],
            limits(2, 10, 0),
            Decision {
                desired: 2,
                reason: Reason::MinReplicas,
                held: None,
            },
        ),
        (
            "equal is steady",
            3,
            vec![r(3, Reason::CallLoad)],
            limits(1, 10, 0),
            Decision {
                desired: 3,
                reason: Reason::Steady,
                held: None,
            },
        ),
    ];
    for (name, current, recs, limits, want) in cases {
        assert_eq!(run(current, &recs, limits), want, "{name}");
    }
}

#[test]
fn higher_recommendation_in_window_bounds_the_step() {
    // Window full of "2" with a "3" inside it: from 5 the scale-down stops at 3, not 4 - 1.
    let mut recs: Vec<Recommendation> = (0..22)
        .map(|_| Recommendation::Replicas(2, Reason::UnderBudget))
        .collect();
    recs[18] = Recommendation::Replicas(3, Reason::Steady);
    let mut lim = limits(1, 10, 0);
    lim.steps.down = 4;
    assert_eq!(run(5, &recs, lim).desired, 3);
}

#[test]
fn agent_steps_follow_hpa_defaults() {
    let b = Behaviour::default();
    assert_eq!(Steps::agent(2, &b), Steps { up: 4, down: 1 });
    assert_eq!(Steps::agent(30, &b), Steps { up: 30, down: 3 });
}

#[test]
fn ceil_div_ignores_float_noise_and_bad_values() {
    assert_eq!(ceil_div(40.000_000_001, 40.0), 1);
    assert_eq!(ceil_div(41.0, 40.0), 2);
    assert_eq!(ceil_div(f64::NAN, 40.0), 0);
    assert_eq!(ceil_div(-3.0, 40.0), 0);
    assert_eq!(ceil_div(1e300, 1.0), u32::MAX);
}
