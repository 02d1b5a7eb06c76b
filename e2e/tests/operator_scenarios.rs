//! The operator against the real test cluster (kube-apiserver, controller-manager,
//! scheduler, kwok nodes): what a platform team sees after `kubectl apply`. The operator runs
//! in-process as the Helm chart's ServiceAccount, with the chart's RBAC, watching this
//! test's namespace only; each scenario has a deadline so a wrong sequence fails fast.

#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::time::Duration;

use grokcast_crds::{ModelPool, VoiceAgent, condition};
use grokcast_e2e::cluster::AuditMark;
use grokcast_e2e::project::Project;
use grokcast_operator::leader::LeaseConfig;
use grokcast_operator::metrics::Metrics;
use grokcast_operator::run::{CancellationToken, OperatorConfig};
use grokcast_operator::settings::BuildSettings;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use tokio::task::JoinHandle;

const WAIT: Duration = Duration::from_secs(30);

fn samples() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../config/samples")
}

fn sample_text(file: &str) -> String {
    std::fs::read_to_string(samples().join(file)).expect("sample file")
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
    grokcast_e2e::eventually(what, limit, Duration::from_millis(100), check).await
}

struct Harness {
    p: Project,
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
        let p = Project::shared(env!("CARGO_BIN_EXE_grokcast-e2e"), "op", WAIT).await;
        Self { p }
    }

    fn ns(&self) -> &str {
        self.p.ns()
    }

    fn client(&self) -> Client {
        self.p.admin.clone()
    }

    fn pool(&self, file: &str) -> ModelPool {
        let mut p: ModelPool = serde_yaml::from_str(&sample_text(file)).expect("pool sample");
        p.metadata.namespace = Some(self.ns().to_owned());
        p
    }

    fn agent_from(&self, text: &str) -> VoiceAgent {
        let mut a: VoiceAgent = serde_yaml::from_str(text).expect("agent yaml");
        a.metadata.namespace = Some(self.ns().to_owned());
        a
    }

    fn operator(&self, identity: &str, lease: bool) -> Running {
        let metrics = Metrics::new().expect("metrics");
        let stop = CancellationToken::new();
        let config = OperatorConfig {
            settings: BuildSettings::default(),
            namespaces: vec![self.ns().to_owned()],
            identity: identity.into(),
            lease: lease.then(|| {
                let mut l = LeaseConfig::new(
                    "grokcast-operator-leader".into(),
                    self.ns().to_owned(),
                    identity.into(),
                );
                l.retry_period = Duration::from_millis(500);
                l.lease_duration = Duration::from_secs(3);
                l
            }),
            autoscaler: None,
        };
        let task = tokio::spawn(grokcast_operator::run::run(
            self.p.operator.client.clone(),
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
        Api::namespaced(self.client(), self.ns())
    }

    fn agents(&self) -> Api<VoiceAgent> {
        Api::namespaced(self.client(), self.ns())
    }

    fn deployments(&self) -> Api<Deployment> {
        Api::namespaced(self.client(), self.ns())
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
            self.apply_pool(&self.pool(f)).await;
        }
        self.apply_agent(&self.agent_from(&sample_text("receptionist.yaml")))
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

    /// The operator's requests, as the API server's audit log recorded them, since `mark`.
    fn operator_requests(&self, mark: AuditMark) -> Vec<grokcast_e2e::cluster::AuditEntry> {
        self.p.cluster.audit().by_user(mark, &self.p.operator.user)
    }

    /// Wait until the operator sends no request for a second: it has finished converging,
    /// so what follows is caused by the test alone. Returns the audit mark at that point.
    async fn quiet(&self) -> AuditMark {
        eventually("the operator quiet for 1 s", || async {
            let mark = self.p.cluster.audit().mark();
            tokio::time::sleep(Duration::from_secs(1)).await;
            self.operator_requests(mark).is_empty().then_some(mark)
        })
        .await
    }

    async fn events_for(&self, name: &str, reason: &str) -> usize {
        grokcast_e2e::project::events_for(&self.client(), self.ns(), name, reason)
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
        Some(format!("http://receptionist-agent.{}.svc:8080", h.ns()).as_str())
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
        Some(format!("http://gemma-27b.{}.svc:8000/v1", h.ns()).as_str())
    );
    assert_eq!(ps.gpus_requested, Some(1));
    for name in ["gemma-27b", "whisper-v3", "csm-1b", "receptionist-agent"] {
        assert!(
            h.deployments().get_opt(name).await.expect("get").is_some(),
            "Deployment {name}"
        );
        let svc: Api<Service> = Api::namespaced(h.client(), h.ns());
        assert!(
            svc.get_opt(name).await.expect("get").is_some(),
            "Service {name}"
        );
    }
    let cm: Api<ConfigMap> = Api::namespaced(h.client(), h.ns());
    let data = cm
        .get("receptionist-agent")
        .await
        .expect("configmap")
        .data
        .expect("data");
    assert!(
        data["agent.yaml"].contains(format!("http://gemma-27b.{}.svc:8000/v1", h.ns()).as_str())
    );
    op.stop().await;
}

#[tokio::test]
async fn dangling_pool_ref_is_reported_once_and_recovers() {
    let h = Harness::start().await;
    let op = h.operator("op-a", false);
    for f in ["gemma-27b.yaml", "whisper.yaml"] {
        h.apply_pool(&h.pool(f)).await;
    }
    h.apply_agent(&h.agent_from(&sample_text("receptionist.yaml")))
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
        format!(
            "tts modelPoolRef \"csm-1b\": ModelPool not found in namespace {}",
            h.ns()
        )
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

    h.apply_pool(&h.pool("csm.yaml")).await;
    h.wait_agent("receptionist", "True", condition::reason::AVAILABLE)
        .await;
    assert_eq!(
        h.events_for("receptionist", condition::reason::MODEL_POOL_NOT_FOUND)
            .await,
        1
    );
    op.stop().await;
}

#[tokio::test]
async fn missing_secret_blocks_then_recovers_when_created() {
    let h = Harness::start().await;
    let secrets: Api<Secret> = Api::namespaced(h.client(), h.ns());
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
    h.apply_agent(&h.agent_from(&with_selector))
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
    h.apply_agent(&h.agent_from(&changed))
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
}

#[tokio::test]
async fn deleted_child_is_recreated_and_deleting_the_cr_removes_children() {
    let h = Harness::start().await;
    let op = h.operator("op-a", false);
    h.apply_samples().await;
    h.wait_agent("receptionist", "True", condition::reason::AVAILABLE)
        .await;
    let svc: Api<Service> = Api::namespaced(h.client(), h.ns());
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
    // The garbage collector learns a new CRD's kind on its 30 s discovery rescan, and the
    // CRDs may be newer than that in this cluster.
    eventually_within(
        "children garbage-collected",
        Duration::from_secs(75),
        || async {
            let d = h.deployments().get_opt("receptionist-agent").await.ok()?;
            let s = svc.get_opt("receptionist-agent").await.ok()?;
            (d.is_none() && s.is_none()).then_some(())
        },
    )
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
}

#[tokio::test]
async fn a_reconcile_with_nothing_to_change_writes_nothing_but_deleted_or_drifted_children_return()
{
    let h = Harness::start().await;
    let op = h.operator("op-a", false);
    h.apply_samples().await;
    h.wait_agent("receptionist", "True", condition::reason::AVAILABLE)
        .await;
    let _ = h.quiet().await;
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

    // An annotation that is not ours changes the Service, so the agent is reconciled. A
    // Service has no generation, so the cached metadata cannot tell a foreign annotation
    // from an edit of what the operator owns: it applies the Service once more. That apply
    // changes nothing (the server keeps the resourceVersion) and nothing else is written.
    // (On a Deployment the real API server bumps the generation for annotations too, and the
    // Deployment controller then re-observes it, so that edit also costs a status write.)
    let services: Api<Service> = Api::namespaced(h.client(), h.ns());
    let mark = h.p.cluster.audit().mark();
    let annotated = services
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
    let _ = h.quiet().await;
    let writes: Vec<_> = h
        .operator_requests(mark)
        .into_iter()
        .filter(|e| e.is_write())
        .collect();
    assert!(
        writes.len() <= 1
            && writes
                .iter()
                .all(|w| w.resource == "services" && w.subresource.is_empty()),
        "at most the Service's no-op apply, no other apply or status write: {writes:?}"
    );
    let after = services.get("receptionist-agent").await.unwrap();
    assert_eq!(
        after.metadata.resource_version, annotated.metadata.resource_version,
        "the operator's apply changed nothing"
    );
    assert!(
        skipped(&op.metrics) > skipped_before,
        "the unchanged Deployment is skipped"
    );

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
    let cms: Api<ConfigMap> = Api::namespaced(h.client(), h.ns());
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
}

#[tokio::test]
async fn invalid_specs_are_rejected_or_flagged() {
    let h = Harness::start().await;
    let op = h.operator("op-a", false);
    // Rejected by the CRD's CEL rules at apply time.
    let text = sample_text("gemma-27b.yaml").replace("minReplicas: 1", "minReplicas: 9");
    let mut bad: ModelPool = serde_yaml::from_str(&text).expect("yaml");
    bad.metadata.namespace = Some(h.ns().to_owned());
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
        h.apply_pool(&h.pool(f)).await;
    }
    let text = sample_text("receptionist.yaml").replace(
        "modelPoolRef: gemma-27b",
        "endpoint: https://llm.example.com/v1",
    );
    h.apply_agent(&h.agent_from(&text))
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
}

#[tokio::test]
async fn with_two_replicas_only_the_leader_writes() {
    let h = Harness::start().await;
    let a = h.operator("op-a", true);
    let leases: Api<Lease> = Api::namespaced(h.client(), h.ns());
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
    let svc: Api<Service> = Api::namespaced(h.client(), h.ns());
    svc.delete("receptionist-agent", &DeleteParams::default())
        .await
        .expect("delete");
    eventually("new leader recreates the Service", || async {
        svc.get_opt("receptionist-agent").await.ok()?.map(|_| ())
    })
    .await;
    assert!(reconciles(&b.metrics) > 0);
    b.stop().await;
}

// ---- Scenarios only a real control plane shows (each failed on the operator before the
// ---- fixes it names).

async fn pool_condition(h: &Harness, name: &str, type_: &str) -> Option<(String, String, String)> {
    let p = h.pools().get_opt(name).await.ok()??;
    let c = p
        .status?
        .conditions
        .into_iter()
        .find(|c| c.type_ == type_)?;
    Some((c.status, c.reason, c.message))
}

async fn preload_jobs(h: &Harness, pool: &str) -> Vec<Job> {
    let jobs: Api<Job> = Api::namespaced(h.client(), h.ns());
    jobs.list(&ListParams::default())
        .await
        .expect("jobs")
        .items
        .into_iter()
        .filter(|j| j.name_any().starts_with(&format!("{pool}-preload-")))
        .collect()
}

/// A ModelPool named like a Service the user already has: the operator must not adopt it
/// (it used to force-apply and add its ownerReference, so deleting the pool deleted the
/// user's Service).
#[tokio::test]
async fn a_child_name_taken_by_a_foreign_object_is_a_name_conflict_not_a_takeover() {
    let h = Harness::start().await;
    let services: Api<Service> = Api::namespaced(h.client(), h.ns());
    let foreign: Service = serde_json::from_value(json!({
        "metadata": {"name": "whisper-v3", "labels": {"team": "speech"}},
        "spec": {"ports": [{"port": 9999}], "selector": {"app": "theirs"}},
    }))
    .unwrap();
    let before = services
        .create(&PostParams::default(), &foreign)
        .await
        .expect("the user's Service");
    let op = h.operator("op-a", false);
    h.apply_pool(&h.pool("whisper.yaml")).await;
    let (_, _, message) = eventually("whisper-v3 Ready=False (NameConflict)", || async {
        let c = pool_condition(&h, "whisper-v3", condition::READY).await?;
        (c.0 == "False" && c.1 == condition::reason::NAME_CONFLICT).then_some(c)
    })
    .await;
    assert!(message.contains("Service whisper-v3"), "{message}");
    eventually("one NameConflict Event", || async {
        (h.events_for("whisper-v3", condition::reason::NAME_CONFLICT)
            .await
            == 1)
            .then_some(())
    })
    .await;
    let now = services.get("whisper-v3").await.unwrap();
    assert_eq!(
        now.metadata.resource_version,
        before.metadata.resource_version
    );
    assert!(now.metadata.owner_references.unwrap_or_default().is_empty());

    // Deleting the pool leaves the user's Service alone, through the real garbage collector.
    h.pools()
        .delete("whisper-v3", &DeleteParams::default())
        .await
        .expect("delete pool");
    eventually("the pool gone", || async {
        h.pools()
            .get_opt("whisper-v3")
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let kept = services
        .get("whisper-v3")
        .await
        .expect("the Service survives");
    assert_eq!(kept.metadata.uid, before.metadata.uid);
    op.stop().await;
}

/// A change to the preload Job's template (here the pool's tolerations) used to be applied
/// to the existing Job, whose template is immutable: a 422 that blocked the Deployment
/// update and left no condition. Now a new Job replaces the old one and the Deployment
/// follows. A completed preload whose Job is gone (the TTL controller's work) is not run
/// again; a new checkpoint is.
#[tokio::test]
async fn preload_jobs_follow_their_template_and_never_run_again_once_done() {
    let h = Harness::start().await;
    let op = h.operator("op-a", false);
    h.apply_pool(&h.pool("gemma-27b.yaml")).await;
    let first = eventually("the preload recorded in status", || async {
        let p = h.pools().get_opt("gemma-27b").await.ok()??;
        p.status?.preload.map(|s| s.job_name)
    })
    .await;

    let mut moved = h.pool("gemma-27b.yaml");
    moved.spec.tolerations = vec![
        serde_json::from_value(json!({
            "key": "example.com/gpu-team", "operator": "Exists", "effect": "NoSchedule",
        }))
        .unwrap(),
    ];
    h.apply_pool(&moved).await;
    let second = eventually("a new preload Job for the new template", || async {
        let names: Vec<String> = preload_jobs(&h, "gemma-27b")
            .await
            .iter()
            .map(|j| j.name_any())
            .collect();
        names.into_iter().find(|n| *n != first)
    })
    .await;
    eventually("the Deployment has the new toleration", || async {
        let d = h.deployments().get("gemma-27b").await.ok()?;
        d.spec?
            .template
            .spec?
            .tolerations?
            .iter()
            .any(|t| t.key.as_deref() == Some("example.com/gpu-team"))
            .then_some(())
    })
    .await;
    eventually("the old Job deleted", || async {
        let names: Vec<String> = preload_jobs(&h, "gemma-27b")
            .await
            .iter()
            .map(|j| j.name_any())
            .collect();
        (!names.contains(&first)).then_some(())
    })
    .await;
    assert!(
        pool_condition(&h, "gemma-27b", condition::READY)
            .await
            .is_none_or(|c| c.1 != condition::reason::APPLY_FAILED)
    );

    // The new preload completes; its Job then goes, as after ttlSecondsAfterFinished.
    eventually("the new preload recorded", || async {
        let p = h.pools().get_opt("gemma-27b").await.ok()??;
        (p.status?.preload?.job_name == second).then_some(())
    })
    .await;
    let jobs: Api<Job> = Api::namespaced(h.client(), h.ns());
    jobs.delete(&second, &DeleteParams::background())
        .await
        .expect("delete the finished Job");
    eventually("the finished Job gone", || async {
        preload_jobs(&h, "gemma-27b").await.is_empty().then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        preload_jobs(&h, "gemma-27b").await.is_empty(),
        "a completed preload is never re-run"
    );

    // A new checkpoint is a new preload.
    let mut newer = moved.clone();
    newer.spec.model = "google/gemma-3-12b-it".into();
    h.apply_pool(&newer).await;
    eventually("a preload Job for the new checkpoint", || async {
        (!preload_jobs(&h, "gemma-27b").await.is_empty()).then_some(())
    })
    .await;
    op.stop().await;
}

/// A missing Secret used to blank status (selector, endpoint, webhookUrl, replicas: /scale
/// reads its selector there) and was noticed again only by a 30 s poll.
#[tokio::test]
async fn a_missing_secret_keeps_the_status_that_stays_true_and_its_return_is_seen_at_once() {
    let h = Harness::start().await;
    let op = h.operator("op-a", false);
    h.apply_samples().await;
    h.wait_agent("receptionist", "True", condition::reason::AVAILABLE)
        .await;
    let ready = h
        .agents()
        .get("receptionist")
        .await
        .unwrap()
        .status
        .unwrap();
    let secrets: Api<Secret> = Api::namespaced(h.client(), h.ns());
    secrets
        .delete("twilio", &DeleteParams::default())
        .await
        .expect("delete secret");
    // A spec change makes the operator look at the Secret again.
    let mut changed = h.agent_from(&sample_text("receptionist.yaml"));
    changed.spec.persona.greeting = "Harbor Dental, how can I help?".into();
    h.apply_agent(&changed).await.expect("apply");
    h.wait_agent("receptionist", "False", condition::reason::SECRET_NOT_FOUND)
        .await;
    let st = h
        .agents()
        .get("receptionist")
        .await
        .unwrap()
        .status
        .unwrap();
    assert_eq!(st.selector, ready.selector);
    assert_eq!(st.endpoint, ready.endpoint);
    assert_eq!(st.webhook_url, ready.webhook_url);
    assert!(st.replicas.is_some());
    let scale = h.agents().get_scale("receptionist").await.unwrap();
    assert!(
        scale.status.and_then(|s| s.selector).is_some(),
        "/scale keeps its selector"
    );

    let s: Secret = serde_json::from_value(
        json!({"metadata": {"name": "twilio"}, "stringData": {"authToken": "x"}}),
    )
    .unwrap();
    secrets.create(&PostParams::default(), &s).await.unwrap();
    // Watched, not polled every 30 s.
    eventually_within(
        "Ready again within seconds",
        Duration::from_secs(10),
        || async {
            let (s, ..) = h.agent_condition("receptionist", condition::READY).await?;
            (s == "True").then_some(())
        },
    )
    .await;
    op.stop().await;
}

/// A rollout whose new pods take seconds to be Ready (kwok's slow pool): Progressing says so
/// while it lasts, Ready stays true because enough replicas serve, and it ends complete.
#[tokio::test]
async fn a_slow_rollout_is_progressing_while_the_agent_stays_ready() {
    let h = Harness::start().await;
    let op = h.operator("op-a", false);
    for f in ["gemma-27b.yaml", "whisper.yaml", "csm.yaml"] {
        h.apply_pool(&h.pool(f)).await;
    }
    let mut agent = h.agent_from(&sample_text("receptionist.yaml"));
    agent.spec.node_selector.insert(
        grokcast_e2e::cluster::SLOW_POOL_LABEL.into(),
        grokcast_e2e::cluster::SLOW_POOL.into(),
    );
    agent.spec.tolerations = vec![
        serde_json::from_value(json!({
            "key": grokcast_e2e::cluster::SLOW_POOL_LABEL,
            "operator": "Exists",
            "effect": "NoSchedule",
        }))
        .unwrap(),
    ];
    h.apply_agent(&agent).await.expect("apply");
    h.wait_agent("receptionist", "True", condition::reason::AVAILABLE)
        .await;
    eventually("rollout complete", || async {
        let (s, r, _) = h
            .agent_condition("receptionist", condition::PROGRESSING)
            .await?;
        (s == "False" && r == condition::reason::ROLLOUT_COMPLETE).then_some(())
    })
    .await;

    agent.spec.persona.greeting = "Harbor Dental, good day.".into();
    h.apply_agent(&agent).await.expect("apply the change");
    let (_, _, message) = eventually("Progressing=True (RollingOut)", || async {
        let c = h
            .agent_condition("receptionist", condition::PROGRESSING)
            .await?;
        (c.0 == "True" && c.1 == condition::reason::ROLLING_OUT).then_some(c)
    })
    .await;
    assert!(message.contains("replicas"), "{message}");
    let (ready, ..) = h
        .agent_condition("receptionist", condition::READY)
        .await
        .unwrap();
    assert_eq!(ready, "True", "old pods keep serving during the rollout");
    eventually("rollout complete again", || async {
        let (s, r, _) = h
            .agent_condition("receptionist", condition::PROGRESSING)
            .await?;
        (s == "False" && r == condition::reason::ROLLOUT_COMPLETE).then_some(())
    })
    .await;
    let (ready, ..) = h
        .agent_condition("receptionist", condition::READY)
        .await
        .unwrap();
    assert_eq!(ready, "True");
    op.stop().await;
}
