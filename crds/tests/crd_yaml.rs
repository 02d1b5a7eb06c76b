//! The committed CRD YAML must be exactly what the types generate, and the generated
//! schema must carry the rules, columns and merge keys users and the autoscaler rely on.
//!
//! Regenerate the YAML with `GROKCAST_BLESS=1 cargo test -p grokcast-crds --test crd_yaml`.

use std::path::PathBuf;

use grokcast_crds::{ModelPool, VoiceAgent, crd_yaml};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;
use serde_json::Value;

fn yaml_path(file: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("yaml")
        .join(file)
}

fn check_committed(crd: &CustomResourceDefinition, file: &str) {
    let generated = crd_yaml(crd).expect("CRD serializes");
    let path = yaml_path(file);
    if std::env::var_os("GROKCAST_BLESS").is_some() {
        std::fs::write(&path, &generated).expect("write CRD YAML");
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "{} is out of date with the Rust types; run \
         `GROKCAST_BLESS=1 cargo test -p grokcast-crds --test crd_yaml` and commit the result",
        path.display()
    );
}

#[test]
fn modelpool_yaml_matches_types() {
    check_committed(&ModelPool::crd(), "modelpools.grokcast.io.yaml");
}

#[test]
fn voiceagent_yaml_matches_types() {
    check_committed(&VoiceAgent::crd(), "voiceagents.grokcast.io.yaml");
}

fn schema(crd: &CustomResourceDefinition) -> Value {
    serde_json::to_value(
        crd.spec.versions[0]
            .schema
            .as_ref()
            .and_then(|s| s.open_api_v3_schema.as_ref())
            .expect("schema"),
    )
    .expect("json")
}

fn rules(v: &Value) -> Vec<String> {
    v["x-kubernetes-validations"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|r| r["rule"].as_str().unwrap_or_default().to_string())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn voiceagent_schema_has_cel_rules_defaults_and_columns() {
    let crd = VoiceAgent::crd();
    let s = schema(&crd);
    let spec = &s["properties"]["spec"];
    for stage in ["stt", "llm", "tts"] {
        assert_eq!(
            rules(&spec["properties"][stage]).first(),
            Some(&"has(self.modelPoolRef) != has(self.endpoint)".to_string()),
            "stage {stage} must require exactly one of modelPoolRef/endpoint"
        );
    }
    // Streaming STT to an external server names where it streams.
    assert_eq!(rules(&spec["properties"]["stt"]).len(), 3);
    assert!(
        rules(&spec["properties"]["scaling"])
            .contains(&"self.minReplicas <= self.maxReplicas".into())
    );
    assert_eq!(
        spec["properties"]["slo"]["properties"]["turnLatencyP95Ms"]["minimum"],
        1.0
    );
    assert_eq!(
        spec["properties"]["slo"]["properties"]["turnLatencyP95Ms"]["default"],
        800
    );
    assert_eq!(spec["properties"]["replicas"]["default"], 2);
    assert_eq!(
        spec["properties"]["turnTaking"]["default"]["endOfTurnSilenceMs"],
        300
    );

    let cols: Vec<String> = crd.spec.versions[0]
        .additional_printer_columns
        .as_ref()
        .expect("columns")
        .iter()
        .map(|c| c.name.clone())
        .collect();
    assert_eq!(cols, ["READY", "REPLICAS", "CALLS", "P95", "SLO", "AGE"]);
    assert_eq!(crd.spec.names.short_names, Some(vec!["va".to_string()]));
    assert_eq!(
        crd.spec.names.categories,
        Some(vec!["grokcast".to_string()])
    );
    let scale = crd.spec.versions[0]
        .subresources
        .as_ref()
        .and_then(|s| s.scale.as_ref())
        .expect("scale subresource");
    assert_eq!(scale.spec_replicas_path, ".spec.replicas");
    assert_eq!(
        scale.label_selector_path.as_deref(),
        Some(".status.selector")
    );
}

#[test]
fn status_conditions_merge_by_type_for_two_field_managers() {
    for crd in [ModelPool::crd(), VoiceAgent::crd()] {
        let s = schema(&crd);
        let conditions = &s["properties"]["status"]["properties"]["conditions"];
        assert_eq!(
            conditions["x-kubernetes-list-type"], "map",
            "{}",
            crd.spec.names.kind
        );
        assert_eq!(
            conditions["x-kubernetes-list-map-keys"],
            serde_json::json!(["type"])
        );
    }
}

#[test]
fn modelpool_schema_has_engine_enum_rules_and_columns() {
    let crd = ModelPool::crd();
    let s = schema(&crd);
    let spec = &s["properties"]["spec"];
    assert_eq!(
        spec["properties"]["engine"]["enum"],
        serde_json::json!(["vllm", "whisper", "csm", "grokcast", "custom"])
    );
    let r = rules(spec);
    assert!(
        r.iter()
            .any(|r| r.contains("has(self.image) && has(self.port)")),
        "{r:?}"
    );
    assert!(
        rules(&spec["properties"]["autoscaling"])
            .contains(&"self.minReplicas <= self.maxReplicas".into())
    );
    assert_eq!(
        spec["properties"]["gpu"]["default"]["memoryUtilization"],
        0.85
    );
    let cols: Vec<String> = crd.spec.versions[0]
        .additional_printer_columns
        .as_ref()
        .expect("columns")
        .iter()
        .map(|c| c.name.clone())
        .collect();
    assert_eq!(
        cols,
        ["ENGINE", "MODEL", "READY", "REPLICAS", "GPUS", "AGE"]
    );
    assert_eq!(crd.spec.names.short_names, Some(vec!["mp".to_string()]));
}

/// Every property in both schemas carries a description, because `kubectl explain` and
/// docs/crd-reference.md show them to users.
#[test]
fn every_field_is_described() {
    fn walk(v: &Value, path: &str, missing: &mut Vec<String>) {
        if let Some(props) = v["properties"].as_object() {
            for (k, p) in props {
                let here = format!("{path}.{k}");
                // Embedded Kubernetes types (tolerations, resources, conditions) carry upstream docs.
                if p.get("description").is_none() && !path.contains("tolerations") {
                    missing.push(here.clone());
                }
                walk(p, &here, missing);
            }
        }
        if let Some(items) = v.get("items") {
            walk(items, &format!("{path}[]"), missing);
        }
    }
    for crd in [ModelPool::crd(), VoiceAgent::crd()] {
        let mut missing = Vec::new();
        walk(&schema(&crd)["properties"]["spec"], "spec", &mut missing);
        walk(
            &schema(&crd)["properties"]["status"],
            "status",
            &mut missing,
        );
        assert!(
            missing.is_empty(),
            "{}: undocumented fields {missing:?}",
            crd.spec.names.kind
        );
    }
}

#[test]
fn crd_reference_doc_matches_types() {
    let generated = grokcast_crds::reference::markdown(&grokcast_crds::crds());
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/crd-reference.md");
    if std::env::var_os("GROKCAST_BLESS").is_some() {
        std::fs::write(&path, &generated).expect("write docs/crd-reference.md");
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "docs/crd-reference.md is out of date; run \
         `GROKCAST_BLESS=1 cargo test -p grokcast-crds --test crd_yaml` and commit the result"
    );
    for field in [
        "spec.engine",
        "spec.slo.turnLatencyP95Ms",
        "status.autoscaling.gpusMissing",
    ] {
        assert!(
            generated.contains(field),
            "{field} missing from the reference"
        );
    }
}
