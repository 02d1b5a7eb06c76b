//! The test control plane through kube-rs, the way the operator uses it.

use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use grokcast_e2e::TestControlPlane;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{
    Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams, WatchEvent,
    WatchParams,
};
use kube::core::{ApiResource, GroupVersionKind};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Error};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(10);

fn cm(name: &str, labels: Value, data: Value) -> ConfigMap {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": name, "labels": labels},
        "data": data,
    }))
    .expect("configmap")
}

fn api_code(e: &Error) -> u16 {
    match e {
        Error::Api(s) => s.code,
        other => panic!("expected an API error, got {other:?}"),
    }
}

fn api_message(e: &Error) -> String {
    match e {
        Error::Api(s) => s.message.clone(),
        other => panic!("expected an API error, got {other:?}"),
    }
}

/// Polls `check` until it returns Some, failing the test after `WAIT`.
async fn eventually<T, F, Fut>(what: &str, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    grokcast_e2e::eventually(what, WAIT, Duration::from_millis(20), check).await
}

async fn start() -> (TestControlPlane, Client) {
    let cp = TestControlPlane::start()
        .await
        .expect("control plane starts");
    let client = cp.client().await.expect("client from kubeconfig");
    (cp, client)
}

fn widget_crd(schema: Value) -> CustomResourceDefinition {
    serde_json::from_value(json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.example.com"},
        "spec": {
            "group": "example.com",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget", "shortNames": ["wg"], "categories": ["all"]},
            "scope": "Namespaced",
            "versions": [{
                "name": "v1", "served": true, "storage": true,
                "schema": {"openAPIV3Schema": schema},
                "subresources": {"status": {}, "scale": {"specReplicasPath": ".spec.replicas", "statusReplicasPath": ".status.replicas", "labelSelectorPath": ".status.selector"}},
                "additionalPrinterColumns": [
                    {"name": "Replicas", "type": "integer", "jsonPath": ".spec.replicas"},
                    {"name": "Ready", "type": "string", "jsonPath": ".status.conditions[?(@.type==\"Ready\")].status"}
                ]
            }]
        }
    }))
    .expect("crd")
}

fn widget_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "spec": {
                "type": "object",
                "required": ["engine"],
                "x-kubernetes-validations": [
                    {"rule": "!has(self.minReplicas) || self.minReplicas <= self.replicas", "message": "minReplicas must not exceed replicas"}
                ],
                "properties": {
                    "engine": {"type": "string", "enum": ["vllm", "whisper", "csm", "custom"]},
                    "replicas": {"type": "integer", "minimum": 0, "default": 1},
                    "minReplicas": {"type": "integer", "minimum": 0},
                    "model": {"type": "string", "default": "tiny"},
                    "items": {"type": "array", "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"],
                              "items": {"type": "object", "required": ["name"], "properties": {"name": {"type": "string"}, "value": {"type": "string"}}}}
                }
            },
            "status": {
                "type": "object",
                "properties": {
                    "replicas": {"type": "integer"},
                    "selector": {"type": "string"},
                    "conditions": {"type": "array", "items": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}
                }
            }
        }
    })
}

async fn install_widgets(client: &Client) -> Api<DynamicObject> {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.create(&PostParams::default(), &widget_crd(widget_schema()))
        .await
        .expect("CRD created");
    let established = kube::runtime::wait::await_condition(
        crds,
        "widgets.example.com",
        kube::runtime::conditions::is_crd_established(),
    );
    tokio::time::timeout(WAIT, established)
        .await
        .expect("established in time")
        .expect("watch");
    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("example.com", "v1", "Widget"),
        "widgets",
    );
    Api::namespaced_with(client.clone(), "default", &ar)
}

fn widget(name: &str, spec: Value) -> DynamicObject {
    serde_json::from_value(json!({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": name}, "spec": spec})).expect("widget")
}

#[tokio::test]
async fn crud_round_trip_with_conflicts_and_not_found() {
    let (cp, client) = start().await;
    let api: Api<ConfigMap> = Api::default_namespaced(client);
    let created = api
        .create(
            &PostParams::default(),
            &cm("a", json!({"x": "1"}), json!({"k": "v"})),
        )
        .await
        .expect("create");
    let meta = &created.metadata;
    assert!(meta.uid.as_deref().is_some_and(|u| u.len() == 36));
    assert!(meta.creation_timestamp.is_some());
    assert_eq!(meta.namespace.as_deref(), Some("default"));

    let dup = api
        .create(&PostParams::default(), &cm("a", json!({}), json!({})))
        .await
        .expect_err("duplicate");
    assert_eq!(api_code(&dup), 409);
    assert_eq!(api_message(&dup), "configmaps \"a\" already exists");

    let mut changed = created.clone();
    changed.data = Some([("k".to_string(), "w".to_string())].into());
    let replaced = api
        .replace("a", &PostParams::default(), &changed)
        .await
        .expect("replace");
    assert_eq!(
        replaced
            .data
            .as_ref()
            .and_then(|d| d.get("k"))
            .map(String::as_str),
        Some("w")
    );
    let stale = api
        .replace("a", &PostParams::default(), &changed)
        .await
        .expect_err("stale rv");
    assert_eq!(api_code(&stale), 409);
    assert!(api_message(&stale).contains("the object has been modified"));

    api.delete("a", &DeleteParams::default())
        .await
        .expect("delete");
    let gone = api.get("a").await.expect_err("deleted");
    assert_eq!(api_code(&gone), 404);
    assert_eq!(api_message(&gone), "configmaps \"a\" not found");
    let nowhere: Api<ConfigMap> = Api::namespaced(cp.client().await.expect("client"), "missing");
    let e = nowhere
        .create(&PostParams::default(), &cm("b", json!({}), json!({})))
        .await
        .expect_err("no namespace");
    assert_eq!(api_code(&e), 404);
    cp.shutdown().await;
}

#[tokio::test]
async fn list_filters_by_label_and_field_selectors_and_paginates() {
    let (cp, client) = start().await;
    let api: Api<ConfigMap> = Api::default_namespaced(client);
    for (name, tier) in [
        ("a", "front"),
        ("b", "back"),
        ("c", "front"),
        ("d", "db"),
        ("e", ""),
    ] {
        let labels = if tier.is_empty() {
            json!({})
        } else {
            json!({"tier": tier, "app": "shop"})
        };
        api.create(&PostParams::default(), &cm(name, labels, json!({})))
            .await
            .expect("create");
    }
    let names = |l: kube::core::ObjectList<ConfigMap>| -> Vec<String> {
        l.items
            .into_iter()
            .filter_map(|c| c.metadata.name)
            .collect()
    };
    let cases = [
        ("tier=front", vec!["a", "c"]),
        ("tier!=front", vec!["b", "d", "e"]),
        ("tier in (back,db)", vec!["b", "d"]),
        ("tier notin (front)", vec!["b", "d", "e"]),
        ("app", vec!["a", "b", "c", "d"]),
        ("!app", vec!["e"]),
        ("app=shop,tier=db", vec!["d"]),
    ];
    for (sel, want) in cases {
        let got = names(
            api.list(&ListParams::default().labels(sel))
                .await
                .expect(sel),
        );
        assert_eq!(got, want, "selector {sel}");
    }
    let got = names(
        api.list(&ListParams::default().fields("metadata.name=c"))
            .await
            .expect("field selector"),
    );
    assert_eq!(got, vec!["c"]);
    let bad = api
        .list(&ListParams::default().labels("tier in front"))
        .await
        .expect_err("bad selector");
    assert_eq!(api_code(&bad), 400);
    let bad = api
        .list(&ListParams::default().fields("data.k=v"))
        .await
        .expect_err("unsupported field");
    assert_eq!(api_code(&bad), 400);

    let mut seen = vec![];
    let mut lp = ListParams::default().limit(2);
    loop {
        let page = api.list(&lp).await.expect("page");
        assert!(page.items.len() <= 2);
        let cont = page.metadata.continue_.clone();
        seen.extend(names(page));
        match cont {
            Some(c) if !c.is_empty() => lp = lp.continue_token(&c),
            _ => break,
        }
    }
    assert_eq!(seen, vec!["a", "b", "c", "d", "e"]);
    cp.shutdown().await;
}

#[tokio::test]
async fn watch_from_a_resource_version_sees_every_change_in_order() {
    let (cp, client) = start().await;
    let api: Api<ConfigMap> = Api::default_namespaced(client);
    api.create(&PostParams::default(), &cm("before", json!({}), json!({})))
        .await
        .expect("create");
    let rv = api
        .list(&ListParams::default())
        .await
        .expect("list")
        .metadata
        .resource_version
        .expect("rv");
    let mut stream = api
        .watch(&WatchParams::default().labels("w=1"), &rv)
        .await
        .expect("watch")
        .boxed();
    api.create(
        &PostParams::default(),
        &cm("x", json!({"w": "1"}), json!({})),
    )
    .await
    .expect("create x");
    api.create(
        &PostParams::default(),
        &cm("ignored", json!({"w": "2"}), json!({})),
    )
    .await
    .expect("create other");
    api.patch(
        "x",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"a": "b"}})),
    )
    .await
    .expect("patch");
    // Relabelled out of the selector: the watcher sees it leave.
    api.patch(
        "x",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"w": "3"}}})),
    )
    .await
    .expect("relabel");
    let mut got = vec![];
    while got.len() < 3 {
        let ev = tokio::time::timeout(WAIT, stream.try_next())
            .await
            .expect("event in time")
            .expect("ok")
            .expect("open");
        match ev {
            WatchEvent::Added(o) => got.push(("ADDED", o.metadata.name.unwrap_or_default())),
            WatchEvent::Modified(o) => got.push(("MODIFIED", o.metadata.name.unwrap_or_default())),
            WatchEvent::Deleted(o) => got.push(("DELETED", o.metadata.name.unwrap_or_default())),
            WatchEvent::Bookmark(_) => {}
            WatchEvent::Error(e) => panic!("watch error {e:?}"),
        }
    }
    assert_eq!(
        got,
        vec![
            ("ADDED", "x".into()),
            ("MODIFIED", "x".into()),
            ("DELETED", "x".into())
        ]
    );
    cp.shutdown().await;
}

#[tokio::test]
async fn compacted_versions_are_gone_and_watchers_recover_by_relisting() {
    let (cp, client) = start().await;
    let api: Api<ConfigMap> = Api::default_namespaced(client);
    api.create(&PostParams::default(), &cm("one", json!({}), json!({})))
        .await
        .expect("create");
    let old_rv = api
        .list(&ListParams::default())
        .await
        .expect("list")
        .metadata
        .resource_version
        .expect("rv");
    let mut seen = watcher(api.clone(), watcher::Config::default())
        .applied_objects()
        .boxed();
    let first = tokio::time::timeout(WAIT, seen.try_next())
        .await
        .expect("initial")
        .expect("ok")
        .expect("obj");
    assert_eq!(first.metadata.name.as_deref(), Some("one"));

    api.create(&PostParams::default(), &cm("two", json!({}), json!({})))
        .await
        .expect("create");
    cp.compact();
    let mut raw = api
        .watch(&WatchParams::default(), &old_rv)
        .await
        .expect("watch")
        .boxed();
    match tokio::time::timeout(WAIT, raw.try_next())
        .await
        .expect("event")
        .expect("ok")
    {
        Some(WatchEvent::Error(e)) => {
            assert_eq!(e.code, 410);
            assert_eq!(e.reason, "Expired");
        }
        other => panic!("expected 410 Expired, got {other:?}"),
    }
    let paged = api
        .list(&ListParams::default().limit(1))
        .await
        .expect("first page");
    api.create(&PostParams::default(), &cm("three", json!({}), json!({})))
        .await
        .expect("create");
    cp.compact();
    let token = paged.metadata.continue_.expect("continue token");
    let e = api
        .list(&ListParams::default().limit(1).continue_token(&token))
        .await
        .expect_err("expired token");
    assert_eq!(api_code(&e), 410);

    // The running watcher loses its connection and must re-list past the compaction.
    cp.close_watches();
    api.create(&PostParams::default(), &cm("four", json!({}), json!({})))
        .await
        .expect("create");
    let (names, expired) = tokio::time::timeout(WAIT, async {
        let (mut names, mut expired) = (vec![], 0);
        // kube-rs surfaces the 410 as one error item, then re-lists on the next poll.
        while let Some(item) = seen.next().await {
            match item {
                Ok(o) => names.push(o.metadata.name.unwrap_or_default()),
                Err(watcher::Error::WatchError(s)) if s.code == 410 => expired += 1,
                Err(e) => panic!("unexpected watcher error {e:?}"),
            }
            if names.iter().any(|n| n == "four") {
                break;
            }
        }
        (names, expired)
    })
    .await
    .expect("watcher delivered the object created after the restart");
    assert_eq!(expired, 1, "the resumed watch was told its version is gone");
    assert!(names.contains(&"four".to_string()), "{names:?}");
    cp.shutdown().await;
}

#[tokio::test]
async fn server_side_apply_merges_by_manager_removes_dropped_fields_and_conflicts() {
    let (cp, client) = start().await;
    let api: Api<ConfigMap> = Api::default_namespaced(client);
    let op = PatchParams::apply("operator");
    let first = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "s", "labels": {"a": "1", "b": "2"}}, "data": {"x": "1", "y": "2"}});
    api.patch("s", &op, &Patch::Apply(first))
        .await
        .expect("apply creates");
    let human = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "s"}, "data": {"z": "3"}});
    api.patch("s", &PatchParams::apply("human"), &Patch::Apply(human))
        .await
        .expect("second manager");
    let second = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "s", "labels": {"a": "1"}}, "data": {"x": "1"}});
    let after = api
        .patch("s", &op, &Patch::Apply(second.clone()))
        .await
        .expect("reapply");
    let data = after.data.clone().expect("data");
    assert_eq!(
        data.keys().cloned().collect::<Vec<_>>(),
        vec!["x", "z"],
        "y removed, z kept"
    );
    let labels = after.metadata.labels.clone().expect("labels");
    assert_eq!(labels.keys().cloned().collect::<Vec<_>>(), vec!["a"]);
    let managers: Vec<String> = after
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .filter_map(|m| m.manager.clone())
        .collect();
    assert_eq!(managers, vec!["operator", "human"]);

    // Re-applying the same configuration writes nothing.
    let rv = after.metadata.resource_version.clone();
    let again = api
        .patch("s", &op, &Patch::Apply(second))
        .await
        .expect("no-op apply");
    assert_eq!(again.metadata.resource_version, rv);

    let steal = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "s"}, "data": {"x": "changed"}});
    let e = api
        .patch(
            "s",
            &PatchParams::apply("human"),
            &Patch::Apply(steal.clone()),
        )
        .await
        .expect_err("conflict");
    assert_eq!(api_code(&e), 409);
    assert_eq!(
        api_message(&e),
        "Apply failed with 1 conflict: conflict with \"operator\" using v1: .data.x"
    );
    assert_eq!(
        api.get("s").await.expect("get").data.expect("data")["x"],
        "1",
        "nothing changed"
    );
    let forced = api
        .patch(
            "s",
            &PatchParams::apply("human").force(),
            &Patch::Apply(steal),
        )
        .await
        .expect("forced");
    assert_eq!(forced.data.expect("data")["x"], "changed");
    let e = api
        .patch(
            "s",
            &PatchParams::default(),
            &Patch::Apply(json!({"apiVersion": "v1", "kind": "ConfigMap"})),
        )
        .await
        .expect_err("no manager");
    assert_eq!(api_code(&e), 400);
    cp.shutdown().await;
}

#[tokio::test]
async fn custom_resources_get_status_scale_generation_and_map_list_merges() {
    let (cp, client) = start().await;
    let widgets = install_widgets(&client).await;
    let created = widgets
        .create(
            &PostParams::default(),
            &widget("w", json!({"engine": "vllm", "replicas": 2})),
        )
        .await
        .expect("create");
    assert_eq!(created.metadata.generation, Some(1));
    assert_eq!(
        created.data["spec"]["model"], "tiny",
        "schema default applied"
    );

    let status = json!({"status": {"replicas": 2, "selector": "app=w", "conditions": [{"type": "Ready", "status": "True"}]}});
    let s = widgets
        .patch_status("w", &PatchParams::default(), &Patch::Merge(status))
        .await
        .expect("status");
    assert_eq!(s.metadata.generation, Some(1));
    assert_eq!(s.data["status"]["replicas"], 2);

    let mut main = s.clone();
    main.data["status"]["replicas"] = json!(99);
    main.data["spec"]["replicas"] = json!(3);
    let u = widgets
        .replace("w", &PostParams::default(), &main)
        .await
        .expect("replace");
    assert_eq!(u.metadata.generation, Some(2));
    assert_eq!(
        u.data["status"]["replicas"], 2,
        "main endpoint ignores status"
    );

    let labelled = widgets
        .patch(
            "w",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"x": "y"}}})),
        )
        .await
        .expect("labels");
    assert_eq!(
        labelled.metadata.generation,
        Some(2),
        "metadata changes keep generation"
    );

    let scale = widgets.get_scale("w").await.expect("scale");
    assert_eq!(scale.spec.as_ref().and_then(|s| s.replicas), Some(3));
    assert_eq!(scale.status.as_ref().map(|s| s.replicas), Some(2));
    assert_eq!(
        scale
            .status
            .as_ref()
            .and_then(|s| s.selector.clone())
            .as_deref(),
        Some("app=w")
    );
    widgets
        .patch_scale(
            "w",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 5}})),
        )
        .await
        .expect("scale patch");
    let w = widgets.get("w").await.expect("get");
    assert_eq!(w.data["spec"]["replicas"], 5);
    assert_eq!(w.metadata.generation, Some(3));

    // Map-lists keyed by name merge across managers.
    let a = json!({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}, "spec": {"engine": "vllm", "items": [{"name": "a", "value": "1"}]}});
    widgets
        .patch("w", &PatchParams::apply("one").force(), &Patch::Apply(a))
        .await
        .expect("one");
    let b = json!({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}, "spec": {"items": [{"name": "b", "value": "2"}]}});
    let merged = widgets
        .patch("w", &PatchParams::apply("two"), &Patch::Apply(b))
        .await
        .expect("two");
    assert_eq!(
        merged.data["spec"]["items"],
        json!([{"name": "a", "value": "1"}, {"name": "b", "value": "2"}])
    );
    cp.shutdown().await;
}

#[tokio::test]
async fn schema_and_cel_validation_reject_bad_objects_with_clear_messages() {
    let (cp, client) = start().await;
    let widgets = install_widgets(&client).await;
    let cases = [
        (
            json!({"replicas": 1}),
            "Widget.example.com \"bad\" is invalid: spec.engine: Required value",
        ),
        (
            json!({"engine": "tgi"}),
            "Widget.example.com \"bad\" is invalid: spec.engine: Unsupported value: \"tgi\": supported values: \"vllm\", \"whisper\", \"csm\", \"custom\"",
        ),
        (
            json!({"engine": "vllm", "replicas": -1}),
            "Widget.example.com \"bad\" is invalid: spec.replicas: Invalid value: -1: spec.replicas in body should be greater than or equal to 0",
        ),
        (
            json!({"engine": "vllm", "replicas": 1, "minReplicas": 3}),
            "Widget.example.com \"bad\" is invalid: spec: Invalid value: \"object\": minReplicas must not exceed replicas",
        ),
    ];
    for (spec, want) in cases {
        let e = widgets
            .create(&PostParams::default(), &widget("bad", spec.clone()))
            .await
            .expect_err("invalid");
        assert_eq!(api_code(&e), 422, "for {spec}");
        assert_eq!(api_message(&e), want);
    }
    assert_eq!(
        api_code(&widgets.get("bad").await.expect_err("nothing stored")),
        404
    );
    widgets
        .create(
            &PostParams::default(),
            &widget("good", json!({"engine": "vllm"})),
        )
        .await
        .expect("valid");
    let e = widgets
        .patch(
            "good",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": "many"}})),
        )
        .await
        .expect_err("bad patch");
    assert_eq!(api_code(&e), 422);
    assert_eq!(
        widgets.get("good").await.expect("get").data["spec"]["replicas"],
        1,
        "stored object untouched"
    );
    let strict = widgets
        .patch("good", &PatchParams::apply("x").validation_strict(), &Patch::Apply(json!({"apiVersion": "example.com/v1", "kind": "Widget", "spec": {"engine": "vllm", "typo": 1}})))
        .await
        .expect_err("unknown field");
    assert_eq!(api_code(&strict), 400);
    assert!(
        api_message(&strict).contains("unknown field \"spec.typo\""),
        "{}",
        api_message(&strict)
    );
    cp.shutdown().await;
}

#[tokio::test]
async fn finalizers_hold_an_object_until_removed() {
    let (cp, client) = start().await;
    let widgets = install_widgets(&client).await;
    let mut w = widget("f", json!({"engine": "vllm"}));
    w.metadata.finalizers = Some(vec!["example.com/cleanup".into()]);
    widgets
        .create(&PostParams::default(), &w)
        .await
        .expect("create");
    let res = widgets
        .delete("f", &DeleteParams::default())
        .await
        .expect("delete accepted");
    let lingering = res.left().expect("object still there");
    assert!(lingering.metadata.deletion_timestamp.is_some());
    assert_eq!(lingering.metadata.generation, Some(2));
    widgets
        .patch(
            "f",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": null}})),
        )
        .await
        .expect("finalizer removed");
    assert_eq!(api_code(&widgets.get("f").await.expect_err("gone")), 404);
    cp.shutdown().await;
}

#[tokio::test]
async fn owner_references_are_garbage_collected_and_orphaning_keeps_dependents() {
    let (cp, client) = start().await;
    let api: Api<ConfigMap> = Api::default_namespaced(client);
    let owner = api
        .create(&PostParams::default(), &cm("owner", json!({}), json!({})))
        .await
        .expect("owner");
    let uid = owner.metadata.uid.clone().expect("uid");
    for name in ["dep1", "dep2"] {
        let mut d = cm(name, json!({}), json!({}));
        d.metadata.owner_references = Some(vec![serde_json::from_value(json!({"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": uid, "controller": true})).expect("ref")]);
        api.create(&PostParams::default(), &d)
            .await
            .expect("dependent");
    }
    api.delete("owner", &DeleteParams::background())
        .await
        .expect("delete owner");
    eventually("dependents collected", || async {
        let n = api.list(&ListParams::default()).await.ok()?.items.len();
        (n == 0).then_some(())
    })
    .await;

    let owner = api
        .create(&PostParams::default(), &cm("owner2", json!({}), json!({})))
        .await
        .expect("owner2");
    let mut d = cm("kept", json!({}), json!({}));
    d.metadata.owner_references = Some(vec![serde_json::from_value(json!({"apiVersion": "v1", "kind": "ConfigMap", "name": "owner2", "uid": owner.metadata.uid})).expect("ref")]);
    api.create(&PostParams::default(), &d)
        .await
        .expect("dependent");
    api.delete("owner2", &DeleteParams::orphan())
        .await
        .expect("orphan delete");
    eventually("owner gone, dependent orphaned", || async {
        let kept = api.get("kept").await.ok()?;
        let gone = api.get_opt("owner2").await.ok()?.is_none();
        (gone
            && kept
                .metadata
                .owner_references
                .unwrap_or_default()
                .is_empty())
        .then_some(())
    })
    .await;
    cp.shutdown().await;
}

#[tokio::test]
async fn deployments_become_ready_unless_held_back() {
    let (cp, client) = start().await;
    let api: Api<Deployment> = Api::default_namespaced(client);
    let dep = |name: &str| -> Deployment {
        serde_json::from_value(json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": name},
            "spec": {"replicas": 3, "selector": {"matchLabels": {"app": name}},
                     "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": [{"name": "c", "image": "i"}]}}}
        }))
        .expect("deployment")
    };
    cp.set_deployment_ready("default", "held", false);
    api.create(&PostParams::default(), &dep("ok"))
        .await
        .expect("create");
    api.create(&PostParams::default(), &dep("held"))
        .await
        .expect("create");
    let ready = eventually("ok ready", || async {
        let d = api.get("ok").await.ok()?;
        let s = d.status?;
        (s.ready_replicas == Some(3)).then_some(s)
    })
    .await;
    assert_eq!(ready.observed_generation, Some(1));
    assert_eq!(ready.available_replicas, Some(3));
    let conds = ready.conditions.unwrap_or_default();
    assert!(
        conds
            .iter()
            .any(|c| c.type_ == "Available" && c.status == "True")
    );
    let held = eventually("held observed", || async {
        let s = api.get("held").await.ok()?.status?;
        (s.observed_generation == Some(1)).then_some(s)
    })
    .await;
    assert_eq!(held.ready_replicas, None);
    assert_eq!(held.unavailable_replicas, Some(3));

    // A spec change is observed again (new generation), then ready again.
    api.patch(
        "ok",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"replicas": 5}})),
    )
    .await
    .expect("scale");
    eventually("new generation observed", || async {
        let s = api.get("ok").await.ok()?.status?;
        (s.observed_generation == Some(2) && s.ready_replicas == Some(5)).then_some(())
    })
    .await;
    cp.set_deployment_ready("default", "held", true);
    eventually("held released", || async {
        let s = api.get("held").await.ok()?.status?;
        (s.ready_replicas == Some(3)).then_some(())
    })
    .await;
    cp.set_deployments_ready(false);
    api.create(&PostParams::default(), &dep("later"))
        .await
        .expect("create");
    let later = eventually("later observed", || async {
        api.get("later").await.ok()?.status
    })
    .await;
    assert_eq!(later.ready_replicas, None);
    cp.shutdown().await;
}

#[tokio::test]
async fn restart_on_the_same_port_keeps_data_and_counts_requests() {
    let (mut cp, client) = start().await;
    let api: Api<ConfigMap> = Api::default_namespaced(client.clone());
    cp.reset_request_counts();
    api.create(&PostParams::default(), &cm("keep", json!({}), json!({})))
        .await
        .expect("create");
    api.get("keep").await.expect("get");
    api.list(&ListParams::default()).await.expect("list");
    let counts = cp.request_counts();
    assert_eq!(
        (
            counts.verb("create"),
            counts.verb("get"),
            counts.verb("list")
        ),
        (1, 1, 1)
    );
    assert_eq!(counts.writes(), 1);
    let url = cp.url();
    cp.stop().await;
    assert!(
        api.get("keep").await.is_err(),
        "stopped server refuses requests"
    );
    cp.restart().await.expect("restart");
    assert_eq!(cp.url(), url);
    let kept = api.get("keep").await.expect("data survives a restart");
    assert_eq!(kept.metadata.name.as_deref(), Some("keep"));
    cp.shutdown().await;
}

#[tokio::test]
async fn deleting_a_namespace_removes_its_contents() {
    let (cp, client) = start().await;
    let nss: Api<Namespace> = Api::all(client.clone());
    nss.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": "scratch"}})).expect("ns"),
    )
    .await
    .expect("namespace");
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), "scratch");
    api.create(&PostParams::default(), &cm("inside", json!({}), json!({})))
        .await
        .expect("create");
    nss.delete("scratch", &DeleteParams::default())
        .await
        .expect("delete namespace");
    eventually("namespace gone", || async {
        nss.get_opt("scratch").await.ok()?.is_none().then_some(())
    })
    .await;
    assert!(api.get_opt("inside").await.expect("get").is_none());
    cp.shutdown().await;
}

#[tokio::test]
async fn discovery_lists_built_ins_and_registered_crds() {
    let (cp, client) = start().await;
    install_widgets(&client).await;
    let discovery = kube::Discovery::new(client.clone())
        .run()
        .await
        .expect("discovery");
    let (ar, caps) = discovery
        .resolve_gvk(&GroupVersionKind::gvk("example.com", "v1", "Widget"))
        .expect("widgets discoverable");
    assert_eq!(ar.plural, "widgets");
    assert!(caps.supports_operation(kube::discovery::verbs::WATCH));
    assert!(
        discovery
            .resolve_gvk(&GroupVersionKind::gvk("apps", "v1", "Deployment"))
            .is_some()
    );
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.delete("widgets.example.com", &DeleteParams::default())
        .await
        .expect("delete CRD");
    eventually("CRD gone", || async {
        crds.get_opt("widgets.example.com")
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await;
    let discovery = kube::Discovery::new(client).run().await.expect("discovery");
    assert!(
        discovery
            .resolve_gvk(&GroupVersionKind::gvk("example.com", "v1", "Widget"))
            .is_none()
    );
    cp.shutdown().await;
}
