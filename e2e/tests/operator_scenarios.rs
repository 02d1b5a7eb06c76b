//! The operator against the test control plane: what a platform team sees after
//! `kubectl apply`. Each scenario has a deadline so a wrong sequence fails fast.

#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::time::Duration;

use grokcast_crds::{ModelPool, VoiceAgent, condition};
use grokcast_e2e::TestControlPlane;
use grokcast_operator::leader::LeaseConfig;
use grokcast_operator::metrics::Metrics;
use grokcast_operator::run::{CancellationToken, OperatorConfig};
use grokcast_operator::settings::BuildSettings;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use tokio::task::JoinHandle;

const WAIT: Duration = Duration::from_secs(20);
const NS: &str = "voice";

fn samples() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../config/samples")
}

fn sample_text(file: &str) -> String {
    std::fs::read_to_string(samples().join(file)).expect("sample file")
}

fn pool(file: &str) -> ModelPool {
    serde_yaml::from_str(&sample_text(file)).expect("pool sample")
}

fn agent_from(text: &str) -> VoiceAgent {
    serde_yaml::from_str(text).expect("agent yaml")
}

async fn eventually<T, F, Fut>(what: &str, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    eventually_within(what, WAIT, check).await
}

async fn eventually_within<T, F, Fut>(what: &str, limit: Duration, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    grokcast_e2e::eventually(what, limit, Duration::from_millis(50), check).await
}

struct Harness {
    cp: TestControlPlane,
    client: Client,
}

struct Running {
    stop: CancellationToken,
    task: JoinHandle<Result<(), grokcast_operator::run::RunError>>,
    metrics: Metrics,
}

impl Running {
    async fn stop(self) {
        self.stop.cancel();
        let _ = tokio::time::timeout(WAIT, self.task)
            .await
            .expect("operator stops in time");
    }
}

impl Harness {
    async fn start() -> Self {
        let (cp, client) = grokcast_e2e::project::start(NS, WAIT)
            .await
            .expect("control plane with CRDs, namespace and secrets");
        Self { cp, client }
    }

    fn operator(&self, identity: &str, lease: bool) -> Running {
        let metrics = Metrics::new().expect("metrics");
        let stop = CancellationToken::new();
        let config = OperatorConfig {
            settings: BuildSettings::default(),
            namespaces: Vec::new(),
            identity: identity.into(),
            lease: lease.then(|| {
                let mut l = LeaseConfig::new(
                    "grokcast-operator-leader".into(),
                    "default".into(),
                    identity.into(),
                );
                l.retry_period = Duration::from_millis(500);
                l.lease_duration = Duration::from_secs(3);
                l
            }),
            autoscaler: None,
        };
        let task = tokio::spawn(grokcast_operator::run::run(
            self.client.clone(),
            config,
            metrics.clone(),
            stop.clone(),
        ));
        Running {
            stop,
            task,
            metrics,
        }
    }

    fn pools(&self) -> Api<ModelPool> {
        Api::namespaced(self.client.clone(), NS)
    }

    fn agents(&self) -> Api<VoiceAgent> {
        Api::namespaced(self.client.clone(), NS)
    }

    fn deployments(&self) -> Api<Deployment> {
        Api::namespaced(self.client.clone(), NS)
    }

    async fn apply_pool(&self, p: &ModelPool) {
        self.pools()
            .patch(
                &p.name_any(),
                &PatchParams::apply("kubectl").force(),
                &Patch::Apply(p),
            )
            .await
            .expect("pool applied");
    }

    async fn apply_agent(&self, a: &VoiceAgent) -> Result<VoiceAgent, kube::Error> {
        self.agents()
            .patch(
                &a.name_any(),
                &PatchParams::apply("kubectl").force(),
                &Patch::Apply(a),
            )
            .await
    }

    async fn apply_samples(&self) {
        for f in ["gemma-27b.yaml", "whisper.yaml", "csm.yaml"] {
            self.apply_pool(&pool(f)).await;
        }
        self.apply_agent(&agent_from(&sample_text("receptionist.yaml")))
            .await
            .expect("agent applied");
    }

    async fn agent_condition(&self, name: &str, type_: &str) -> Option<(String, String, String)> {
        let a = self.agents().get_opt(name).await.ok()??;
        let c = a
            .status?
            .conditions
            .into_iter()
            .find(|c| c.type_ == type_)?;
        Some((c.status, c.reason, c.message))
    }

    async fn wait_agent(&self, name: &str, status: &str, reason: &str) -> String {
        eventually(&format!("{name} Ready={status} ({reason})"), || async {
            let (s, r, m) = self.agent_condition(name, condition::READY).await?;
            (s == status && r == reason).then_some(m)
        })
        .await
    }

    async fn template_hash(&self, deployment: &str) -> Option<String> {
        let d = self.deployments().get_opt(deployment).await.ok()??;
        d.spec?
            .template
            .metadata?
            .annotations?
            .get("grokcast.io/config-hash")
            .cloned()
    }

    /// Wait until the control plane serves no request for a while: the operator has
    /// finished converging, so what follows is caused by the test alone.
    async fn quiet(&self) {
        eventually("no requests for 500 ms", || async {
            self.cp.reset_request_counts();
            tokio::time::sleep(Duration::from_millis(500)).await;
            (self.cp.request_count() == 0).then_some(())
        })
        .await;
    }

    async fn events_for(&self, name: &str, reason: &str) -> usize {
        grokcast_e2e::project::events_for(&self.client, NS, name, reason)
            .await
            .expect("events")
    }
}

#[tokio::test]
async fn samples_apply_and_reach_ready() {
    let h = Harness::start().await;
    let op = h.operator("op-a", false);
    h.apply_samples().await;
    h.wait_agent("receptionist", "True", condition::reason::AVAILABLE)
        .await;
    let agent = h.agents().get("receptionist").await.expect("agent");
    let st = agent.status.expect("status");
    assert_eq!(
        st.webhook_url.as_deref(),
        Some("https://voice.example.com/twilio/voice")
    );
    assert_eq!(
        st.endpoint.as_deref(),
        Some("http://receptionist-agent.voice.svc:8080")
    );
    assert_eq!(st.ready_replicas, Some(2));
    assert_eq!(st.observed_generation, agent.metadata.generation);
    let models = st
        .conditions
        .iter()
        .find(|c| c.type_ == condition::MODELS_READY)
        .expect("ModelsReady");
    assert_eq!(models.status, "True");

    let gemma = h.pools().get("gemma-27b").await.expect("pool");
    let ps = gemma.status.expect("pool status");
    assert_eq!(
        ps.endpoint.as_deref(),
        Some("http://gemma-27b.voice.svc:8000/v1")
    );
    assert_eq!(ps.gpus_requested, Some(1));
    for name in ["gemma-27b", "whisper-v3", "csm-1b", "receptionist-agent"] {
        assert!(
            h.deployments().get_opt(name).await.expect("get").is_some(),
            "Deployment {name}"
        );
        let svc: Api<Service> = Api::namespaced(h.client.clone(), NS);
        assert!(
            svc.get_opt(name).await.expect("get").is_some(),
            "Service {name}"
        );
    }
    let cm: Api<ConfigMap> = Api::namespaced(h.client.clone(), NS);
    let data = cm
        .get("receptionist-agent")
        .await
        .expect("configmap")
        .data
        .expect("data");
    assert!(data["agent.yaml"].contains("http://gemma-27b.voice.svc:8000/v1"));
    op.stop().await;
    h.cp.shutdown().await;
}

#[tokio::test]
async fn dangling_pool_ref_is_reported_once_and_recovers() {
    let h = Harness::start().await;
    let op = h.operator("op-a", false);
    for f in ["gemma-27b.yaml", "whisper.yaml"] {
        h.apply_pool(&pool(f)).await;
    }
    h.apply_agent(&agent_from(&sample_text("receptionist.yaml")))
        .await
        .expect("agent");
    let msg = h
        .wait_agent(
            "receptionist",
            "False",
            condition::reason::MODEL_POOL_NOT_FOUND,
        )
        .await;
    assert_eq!(
        msg,
        "tts modelPoolRef \"csm-1b\": ModelPool not found in namespace voice"
    );
    assert!(
        h.deployments()
            .get_opt("receptionist-agent")
            .await
            .expect("get")
            .is_none()
    );
    // Give the operator time to (wrongly) loop; there must still be one Event.
    tokio::time::sleep(Duration::from_secs(1)).await;
    eventually("one Warning event", || async {
        (h.events_for("receptionist", condition::reason::MODEL_POOL_NOT_FOUND)
            .await
            == 1)
            .then_some(())
    })
    .await;

    h.apply_pool(&pool("csm.yaml")).await;
    h.wait_agent("receptionist", "True", condition::reason::AVAILABLE)
        .await;
    assert_eq!(
        h.events_for("receptionist", condition::reason::MODEL_POOL_NOT_FOUND)
            .await,
        1
    );
    op.stop().await;
    h.cp.shutdown().await;
}

#[tokio::test]
async fn missing_secret_blocks_then_recovers_when_created() {
    let h = Harness::start().await;
    let secrets: Api<Secret> = Api::namespaced(h.client.clone(), NS);
    secrets
        .delete("twilio", &DeleteParams::default())
        .await
        .expect("delete secret");
    let op = h.operator("op-a", false);
    h.apply_samples().await;
    let msg = h
        .wait_agent("receptionist", "False", condition::reason::SECRET_NOT_FOUND)
        .await;
    assert!(msg.contains("Secret \"twilio\" not found"), "{msg}");
    let s: Secret = serde_json::from_value(
        json!({"metadata": {"name": "twilio"}, "stringData": {"authToken": "x"}}),
    )
    .expect("secret");
    secrets
        .create(&PostParams::default(), &s)
        .await
        .expect("secret");
    // Secrets are polled every 30 s (no list/watch permission on Secrets).
    let deadline = Duration::from_secs(45);
    tokio::time::timeout(deadline, async {
        loop {
            if let Some((s, ..)) = h.agent_condition("receptionist", condition::READY).await
                && s == "True"
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await
    .expect("recovers after the Secret appears");
    op.stop().await;
    h.cp.shutdown().await;
}

#[tokio::test]
async fn spec_change_rolls_pods_and_removed_fields_disappear() {
    let h = Harness::start().await;
    let op = h.operator("op-a", false);
    h.apply_samples().await;
    h.wait_agent("receptionist", "True", condition::reason::AVAILABLE)
        .await;
    let before = h.template_hash("receptionist-agent").await.expect("hash");

    let text = sample_text("receptionist.yaml");
    let changed = text.replace(
        "never give medical advice.",
        "never give medical advice. Be warm.",
    );
    let with_selector = changed.replace(
        "  replicas: 2 ",
        "  nodeSelector: {tier: voice}\n  replicas: 2 ",
    );
    assert_ne!(with_selector, changed);
    h.apply_agent(&agent_from(&with_selector))
        .await
        .expect("apply");
    let after = eventually("pod template hash changes", || async {
        let h2 = h.template_hash("receptionist-agent").await?;
        (h2 != before).then_some(h2)
    })
    .await;
    assert_ne!(before, after);
    eventually("nodeSelector applied", || async {
        let d = h.deployments().get("receptionist-agent").await.ok()?;
        d.spec?
            .template
            .spec?
            .node_selector?
            .contains_key("tier")
            .then_some(())
    })
    .await;
    h.apply_agent(&agent_from(&changed))
        .await
        .expect("apply without nodeSelector");
    eventually("nodeSelector removed", || async {
        let d = h.deployments().get("receptionist-agent").await.ok()?;
        let sel = d.spec?.template.spec?.node_selector.unwrap_or_default();
        (!sel.contains_key("tier")).then_some(())
    })
    .await;
    assert_eq!(
        h.template_hash("receptionist-agent").await,
        Some(after),
        "selector is not config"
    );
    op.stop().await;
    h.cp.shutdown().await;
}

#[tokio::test]
async fn deleted_child_is_recreated_and_deleting_the_cr_removes_children() {
    let h = Harness::start().await;
    let op = h.operator("op-a", false);
    h.apply_samples().await;
    h.wait_agent("receptionist", "True", condition::reason::AVAILABLE)
        .await;
    let svc: Api<Service> = Api::namespaced(h.client.clone(), NS);
    let old_uid = svc
        .get("receptionist-agent")
        .await
        .expect("svc")
        .metadata
        .uid;
    svc.delete("receptionist-agent", &DeleteParams::default())
        .await
        .expect("delete");
    eventually("Service recreated", || async {
        let s = svc.get_opt("receptionist-agent").await.ok()??;
        (s.metadata.uid != old_uid).then_some(())
    })
    .await;

    h.agents()
        .delete("receptionist", &DeleteParams::default())
        .await
        .expect("delete agent");
    eventually("children garbage-collected", || async {
        let d = h.deployments().get_opt("receptionist-agent").await.ok()?;
        let s = svc.get_opt("receptionist-agent").await.ok()?;
        (d.is_none() && s.is_none()).then_some(())
    })
    .await;
    assert!(
        h.deployments()
            .get_opt("gemma-27b")
            .await
            .expect("get")
            .is_some(),
        "pools untouched"
    );
    op.stop().await;
    h.cp.shutdown().await;
}

#[tokio::test]
async fn a_reconcile_with_nothing_to_change_writes_nothing_but_deleted_or_drifted_children_return()
{
    let h = Harness::start().await;
    let op = h.operator("op-a", false);
    h.apply_samples().await;
    h.wait_agent("receptionist", "True", condition::reason::AVAILABLE)
        .await;
    h.quiet().await;
    let finished = |m: &Metrics| {
        m.duration
            .with_label_values(&["voiceagent"])
            .get_sample_count()
    };
    let skipped = |m: &Metrics| {
        m.child_applies
            .with_label_values(&["Deployment", "skipped"])
            .get()
    };
    let (reconciled, skipped_before) = (finished(&op.metrics), skipped(&op.metrics));

    // An annotation that is not ours changes the Deployment (so the agent is reconciled)
    // but nothing the operator would send.
    h.cp.reset_request_counts();
    h.deployments()
        .patch(
            "receptionist-agent",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"example.com/note": "touched"}}})),
        )
        .await
        .expect("annotate");
    eventually("agent reconciled", || async {
        (finished(&op.metrics) > reconciled).then_some(())
    })
    .await;
    let counts = h.cp.request_counts();
    assert_eq!(
        counts.writes(),
        1,
        "only the test's own patch, no apply or status write: {counts:?}"
    );
    assert!(skipped(&op.metrics) > skipped_before);

    // Someone else edits a field the operator owns: applied again, the edit reverted.
    h.deployments()
        .patch(
            "receptionist-agent",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 5}})),
        )
        .await
        .expect("scale by hand");
    eventually("replicas restored", || async {
        let d = h.deployments().get("receptionist-agent").await.ok()?;
        (d.spec?.replicas == Some(2)).then_some(())
    })
    .await;

    // A deleted child comes back, as a new object.
    let cms: Api<ConfigMap> = Api::namespaced(h.client.clone(), NS);
    let old_uid = cms
        .get("receptionist-agent")
        .await
        .expect("configmap")
        .metadata
        .uid;
    cms.delete("receptionist-agent", &DeleteParams::default())
        .await
        .expect("delete");
    eventually("ConfigMap recreated", || async {
        let c = cms.get_opt("receptionist-agent").await.ok()??;
        (c.metadata.uid != old_uid).then_some(())
    })
    .await;
    op.stop().await;
    h.cp.shutdown().await;
}

#[tokio::test]
async fn invalid_specs_are_rejected_or_flagged() {
    let h = Harness::start().await;
    let op = h.operator("op-a", false);
    // Rejected by the CRD's CEL rules at apply time.
    let text = sample_text("gemma-27b.yaml").replace("minReplicas: 1", "minReplicas: 9");
    let bad: ModelPool = serde_yaml::from_str(&text).expect("yaml");
    let err = h
        .pools()
        .patch(
            "gemma-27b",
            &PatchParams::apply("kubectl"),
            &Patch::Apply(&bad),
        )
        .await
        .expect_err("CEL rejects min > max");
    match err {
        kube::Error::Api(s) => {
            assert_eq!(s.code, 422);
            assert!(
                s.message.contains("minReplicas must not exceed"),
                "{}",
                s.message
            );
        }
        other => panic!("unexpected {other:?}"),
    }
    // Passes the schema but cannot be built: flagged on status, nothing created.
    for f in ["gemma-27b.yaml", "whisper.yaml", "csm.yaml"] {
        h.apply_pool(&pool(f)).await;
    }
    let text = sample_text("receptionist.yaml").replace(
        "modelPoolRef: gemma-27b",
        "endpoint: https://llm.example.com/v1",
    );
    h.apply_agent(&agent_from(&text))
        .await
        .expect("schema-valid");
    let msg = h
        .wait_agent("receptionist", "False", condition::reason::INVALID_SPEC)
        .await;
    assert_eq!(msg, "llm.model is required with llm.endpoint");
    assert!(
        h.deployments()
            .get_opt("receptionist-agent")
            .await
            .expect("get")
            .is_none()
    );
    op.stop().await;
    h.cp.shutdown().await;
}

#[tokio::test]
async fn restart_mid_reconcile_leaves_no_duplicates() {
    let h = Harness::start().await;
    h.apply_samples().await;
    let first = h.operator("op-a", false);
    tokio::time::sleep(Duration::from_millis(150)).await;
    first.stop().await;
    let second = h.operator("op-a", false);
    h.wait_agent("receptionist", "True", condition::reason::AVAILABLE)
        .await;
    let all = h
        .deployments()
        .list(&ListParams::default().labels("app.kubernetes.io/managed-by=grokcast-operator"))
        .await
        .expect("list");
    let mut names: Vec<String> = all.items.iter().map(|d| d.name_any()).collect();
    names.sort();
    assert_eq!(
        names,
        ["csm-1b", "gemma-27b", "receptionist-agent", "whisper-v3"]
    );
    second.stop().await;
    h.cp.shutdown().await;
}

#[tokio::test]
async fn with_two_replicas_only_the_leader_writes() {
    let h = Harness::start().await;
    let a = h.operator("op-a", true);
    let leases: Api<Lease> = Api::namespaced(h.client.clone(), "default");
    eventually("op-a holds the lease", || async {
        let l = leases.get_opt("grokcast-operator-leader").await.ok()??;
        (l.spec?.holder_identity.as_deref() == Some("op-a")).then_some(())
    })
    .await;
    let b = h.operator("op-b", true);
    h.apply_samples().await;
    h.wait_agent("receptionist", "True", condition::reason::AVAILABLE)
        .await;
    let reconciles = |m: &Metrics| {
        m.reconciles.with_label_values(&["voiceagent"]).get()
            + m.reconciles.with_label_values(&["modelpool"]).get()
    };
    assert!(reconciles(&a.metrics) > 0);
    assert_eq!(reconciles(&b.metrics), 0, "the standby must not reconcile");
    assert_eq!(a.metrics.leader.get(), 1);
    assert_eq!(b.metrics.leader.get(), 0);

    // The leader leaves (and releases the lease): the standby takes over and keeps working.
    a.stop().await;
    eventually("op-b takes the lease", || async {
        let l = leases.get_opt("grokcast-operator-leader").await.ok()??;
        (l.spec?.holder_identity.as_deref() == Some("op-b")).then_some(())
    })
    .await;
    let svc: Api<Service> = Api::namespaced(h.client.clone(), NS);
    svc.delete("receptionist-agent", &DeleteParams::default())
        .await
        .expect("delete");
    eventually("new leader recreates the Service", || async {
        svc.get_opt("receptionist-agent").await.ok()?.map(|_| ())
    })
    .await;
    assert!(reconciles(&b.metrics) > 0);
    b.stop().await;
    h.cp.shutdown().await;
}

#[tokio::test]
async fn watches_recover_after_410_gone() {
    let h = Harness::start().await;
    let op = h.operator("op-a", false);
    h.apply_samples().await;
    h.wait_agent("receptionist", "True", condition::reason::AVAILABLE)
        .await;
    let before = h.template_hash("receptionist-agent").await.expect("hash");
    // History compacted and every watch dropped: resuming from the old version gets 410,
    // and the watchers must re-list to see what follows.
    h.cp.compact();
    h.cp.close_watches();
    let text = sample_text("receptionist.yaml")
        .replace("How can I help you today?", "What can I do for you?");
    h.apply_agent(&agent_from(&text)).await.expect("apply");
    // Every watch gets 410 at once. Each backs off on its own (the first retry within about
    // a second) and re-lists; a backoff shared by all of a controller's watches would grow
    // with each one's error and leave the operator blind for about a minute.
    eventually_within("change seen after 410", Duration::from_secs(20), || async {
        let now = h.template_hash("receptionist-agent").await?;
        (now != before).then_some(())
    })
    .await;
    op.stop().await;
    h.cp.shutdown().await;
}
