//! The project's own CRDs and samples on the real kube-apiserver of the test cluster: the
//! committed CRD YAML registers, the samples are accepted with their defaults, and the CEL
//! rules reject what they should with the rule's message.

use std::path::{Path, PathBuf};
use std::time::Duration;

use grokcast_e2e::cluster::Cluster;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::{Client, Error};
use serde::Deserialize;
use serde_json::{Value, json};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn documents(dir: &Path) -> Vec<Value> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("directory")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    let mut docs = vec![];
    for f in files {
        let text = std::fs::read_to_string(&f).expect("readable");
        for d in serde_yaml::Deserializer::from_str(&text) {
            let v = Value::deserialize(d).expect("yaml");
            if !v.is_null() {
                docs.push(v);
            }
        }
    }
    docs
}

async fn install_crds(client: &Client) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for doc in documents(&repo().join("crds/yaml")) {
        let crd: CustomResourceDefinition = serde_json::from_value(doc).expect("a CRD");
        let name = crd.metadata.name.clone().expect("name");
        crds.patch(
            &name,
            &PatchParams::apply("grokcast-e2e").force(),
            &Patch::Apply(&crd),
        )
        .await
        .expect("CRD registers");
        let est = kube::runtime::wait::await_condition(
            crds.clone(),
            &name,
            kube::runtime::conditions::is_crd_established(),
        );
        tokio::time::timeout(Duration::from_secs(10), est)
            .await
            .expect("in time")
            .expect("watch");
    }
}

fn api(client: &Client, kind: &str, plural: &str, ns: &str) -> Api<DynamicObject> {
    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("grokcast.io", "v1alpha1", kind),
        plural,
    );
    Api::namespaced_with(client.clone(), ns, &ar)
}

fn invalid_message(e: Error) -> String {
    match e {
        Error::Api(s) if s.code == 422 => s.message,
        other => panic!("expected 422 Invalid, got {other:?}"),
    }
}

#[tokio::test]
async fn samples_are_accepted_and_cel_rules_reject_bad_specs() {
    let cluster = tokio::task::spawn_blocking(|| {
        Cluster::shared(env!("CARGO_BIN_EXE_grokcast-e2e").as_ref())
    })
    .await
    .expect("attach")
    .expect("test cluster");
    let client = cluster.client().await.expect("client");
    install_crds(&client).await;
    let ns = cluster.namespace("crds").await.expect("namespace");

    let pools = api(&client, "ModelPool", "modelpools", ns.name());
    let agents = api(&client, "VoiceAgent", "voiceagents", ns.name());
    let mut applied = 0;
    for doc in documents(&repo().join("config/samples")) {
        let kind = doc["kind"].as_str().unwrap_or_default().to_string();
        let name = doc["metadata"]["name"].as_str().expect("name").to_string();
        let mut doc = doc;
        doc["metadata"]["namespace"] = json!(ns.name());
        let target = match kind.as_str() {
            "ModelPool" => &pools,
            "VoiceAgent" => &agents,
            _ => continue,
        };
        let obj = target
            .patch(
                &name,
                &PatchParams::apply("samples").validation_strict(),
                &Patch::Apply(doc),
            )
            .await
            .unwrap_or_else(|e| panic!("sample {kind}/{name} rejected: {e}"));
        assert_eq!(obj.metadata.generation, Some(1));
        applied += 1;
    }
    assert!(
        applied >= 4,
        "expected the three pools and the receptionist, applied {applied}"
    );

    let gemma = pools.get("gemma-27b").await.expect("sample pool");
    let mut bad = json!({"apiVersion": "grokcast.io/v1alpha1", "kind": "ModelPool", "metadata": {"name": "bad-range"}, "spec": gemma.data["spec"].clone()});
    bad["spec"]["autoscaling"] =
        json!({"minReplicas": 5, "maxReplicas": 1, "targetLatencyMs": 250});
    let msg = invalid_message(
        pools
            .patch("bad-range", &PatchParams::apply("test"), &Patch::Apply(bad))
            .await
            .expect_err("min > max rejected"),
    );
    // The real API server's shape: the field path, then the rule's message.
    assert!(
        msg.starts_with(
            "ModelPool.grokcast.io \"bad-range\" is invalid: spec.autoscaling: Invalid value: "
        ),
        "{msg}"
    );
    assert!(
        msg.contains("autoscaling.minReplicas must not exceed autoscaling.maxReplicas"),
        "{msg}"
    );
    assert!(
        pools.get_opt("bad-range").await.expect("get").is_none(),
        "nothing stored"
    );

    let receptionist = agents.get("receptionist").await.expect("sample agent");
    let mut both = json!({"apiVersion": "grokcast.io/v1alpha1", "kind": "VoiceAgent", "metadata": {"name": "both-refs"}, "spec": receptionist.data["spec"].clone()});
    both["spec"]["llm"]["endpoint"] = json!("http://llm.example:8000/v1");
    let msg = invalid_message(
        agents
            .patch(
                "both-refs",
                &PatchParams::apply("test"),
                &Patch::Apply(both),
            )
            .await
            .expect_err("modelPoolRef and endpoint together rejected"),
    );
    assert!(msg.contains("spec.llm: Invalid value: "), "{msg}");

    // Speculative replies without a model start at minEndOfTurnSilenceMs (200 by default),
    // which must come before the end of the turn; preemptive TTS needs them.
    for (turn_taking, rule) in [
        (
            json!({"speculativeReplies": true, "endOfTurnSilenceMs": 200}),
            "speculativeReplies without a model starts replies at minEndOfTurnSilenceMs",
        ),
        (
            json!({"preemptiveTts": true}),
            "turnTaking.preemptiveTts needs speculativeReplies",
        ),
    ] {
        let mut agent = json!({"apiVersion": "grokcast.io/v1alpha1", "kind": "VoiceAgent", "metadata": {"name": "bad-turns"}, "spec": receptionist.data["spec"].clone()});
        agent["spec"]["turnTaking"] = turn_taking;
        let msg = invalid_message(
            agents
                .patch(
                    "bad-turns",
                    &PatchParams::apply("test"),
                    &Patch::Apply(agent),
                )
                .await
                .expect_err("rejected"),
        );
        assert!(msg.contains("spec.turnTaking: Invalid value: "), "{msg}");
        assert!(msg.contains(rule), "{msg}");
    }
    // Traces go to an OTLP/gRPC URL, for a share of calls between 0 and 1.
    for (tracing, field) in [
        (
            json!({"otlpEndpoint": "otel-collector:4317"}),
            "spec.tracing.otlpEndpoint",
        ),
        (
            json!({"otlpEndpoint": "http://otel-collector:4317", "sampleRatio": 1.5}),
            "spec.tracing.sampleRatio",
        ),
        (json!({"sampleRatio": 0.5}), "spec.tracing.otlpEndpoint"),
    ] {
        let mut agent = json!({"apiVersion": "grokcast.io/v1alpha1", "kind": "VoiceAgent", "metadata": {"name": "bad-tracing"}, "spec": receptionist.data["spec"].clone()});
        agent["spec"]["tracing"] = tracing;
        let msg = invalid_message(
            agents
                .patch(
                    "bad-tracing",
                    &PatchParams::apply("test"),
                    &Patch::Apply(agent),
                )
                .await
                .expect_err("rejected"),
        );
        assert!(msg.contains(field), "{msg}");
    }
    let mut traced = json!({"apiVersion": "grokcast.io/v1alpha1", "kind": "VoiceAgent", "metadata": {"name": "traced"}, "spec": receptionist.data["spec"].clone()});
    traced["spec"]["tracing"] = json!({"otlpEndpoint": "http://otel-collector.observability:4317"});
    let stored = agents
        .patch("traced", &PatchParams::apply("test"), &Patch::Apply(traced))
        .await
        .expect("a traced agent is accepted");
    assert_eq!(
        stored.data["spec"]["tracing"]["sampleRatio"].as_f64(),
        Some(1.0),
        "every call by default"
    );
    // Tools: a transfer needs an API key and somewhere to go; targets are numbers or SIP
    // URIs; an HTTP tool's arguments are a JSON Schema object kept as written.
    let transfer = json!({"enabled": true, "targets": [{"name": "sales", "to": "+15551230000"}]});
    for (tools, key, says) in [
        (
            json!({"transferCall": transfer.clone()}),
            None,
            "tools.transferCall needs telephony.twilio.apiKeySecretRef",
        ),
        (
            json!({"transferCall": {"enabled": true}}),
            Some(json!({"name": "twilio-api-key"})),
            "transferCall needs targets",
        ),
        (
            json!({"transferCall": {"enabled": true, "targets": [{"name": "sales", "to": "555-1234"}]}}),
            Some(json!({"name": "twilio-api-key"})),
            "spec.tools.transferCall.targets[0].to",
        ),
        (
            json!({"http": [{"name": "look up", "description": "x", "url": "http://x:1/y"}]}),
            None,
            "spec.tools.http[0].name",
        ),
    ] {
        let mut agent = json!({"apiVersion": "grokcast.io/v1alpha1", "kind": "VoiceAgent", "metadata": {"name": "bad-tools"}, "spec": receptionist.data["spec"].clone()});
        agent["spec"]["tools"] = tools;
        if let Some(key) = key {
            agent["spec"]["telephony"]["twilio"]["apiKeySecretRef"] = key;
        }
        let msg = invalid_message(
            agents
                .patch(
                    "bad-tools",
                    &PatchParams::apply("test"),
                    &Patch::Apply(agent),
                )
                .await
                .expect_err("rejected"),
        );
        assert!(msg.contains(says), "{msg}");
    }
    let mut tooled = json!({"apiVersion": "grokcast.io/v1alpha1", "kind": "VoiceAgent", "metadata": {"name": "tooled"}, "spec": receptionist.data["spec"].clone()});
    tooled["spec"]["telephony"]["twilio"]["apiKeySecretRef"] = json!({"name": "twilio-api-key"});
    tooled["spec"]["tools"] = json!({"endCall": {"enabled": true}, "transferCall": transfer,
        "http": [{"name": "order_status", "description": "Looks up an order", "url": "https://orders.example.com/status",
                  "parameters": {"type": "object", "properties": {"order_id": {"type": "string", "minLength": 1}}}}]});
    let stored = agents
        .patch("tooled", &PatchParams::apply("test"), &Patch::Apply(tooled))
        .await
        .expect("an agent with tools is accepted");
    let spec = &stored.data["spec"];
    assert_eq!(
        spec["telephony"]["twilio"]["apiKeySecretRef"]["keySecretKey"],
        "apiKeySecret"
    );
    assert_eq!(spec["tools"]["http"][0]["timeoutMs"], 3000);
    assert_eq!(
        spec["tools"]["http"][0]["parameters"]["properties"]["order_id"]["minLength"], 1,
        "the arguments' schema is kept as written"
    );
    // Streaming STT: riva is for speech-recognition pools, and an external endpoint that
    // streams says where.
    let mut riva = json!({"apiVersion": "grokcast.io/v1alpha1", "kind": "ModelPool", "metadata": {"name": "riva-llm"}, "spec": gemma.data["spec"].clone()});
    riva["spec"]["protocol"] = json!("riva");
    let msg = invalid_message(
        pools
            .patch("riva-llm", &PatchParams::apply("test"), &Patch::Apply(riva))
            .await
            .expect_err("riva on an LLM pool rejected"),
    );
    assert!(
        msg.contains("protocol riva is streaming speech recognition"),
        "{msg}"
    );
    for (stt, rule) in [
        (
            json!({"endpoint": "http://stt.example:8000/v1", "model": "w", "protocol": "riva"}),
            "stt.protocol riva with an external endpoint needs stt.streamingEndpoint",
        ),
        (
            json!({"modelPoolRef": "whisper-v3", "streamingEndpoint": "http://stt.example:50051"}),
            "stt.streamingEndpoint goes with stt.endpoint",
        ),
    ] {
        let mut agent = json!({"apiVersion": "grokcast.io/v1alpha1", "kind": "VoiceAgent", "metadata": {"name": "bad-stt"}, "spec": receptionist.data["spec"].clone()});
        agent["spec"]["stt"] = stt;
        let msg = invalid_message(
            agents
                .patch("bad-stt", &PatchParams::apply("test"), &Patch::Apply(agent))
                .await
                .expect_err("rejected"),
        );
        assert!(msg.contains("spec.stt: Invalid value: "), "{msg}");
        assert!(msg.contains(rule), "{msg}");
    }
    let mut agent = json!({"apiVersion": "grokcast.io/v1alpha1", "kind": "VoiceAgent", "metadata": {"name": "speculating"}, "spec": receptionist.data["spec"].clone()});
    agent["spec"]["turnTaking"] = json!({"speculativeReplies": true, "preemptiveTts": true});
    agents
        .patch(
            "speculating",
            &PatchParams::apply("test"),
            &Patch::Apply(agent),
        )
        .await
        .expect("speculative replies with the default silences are valid");
}
