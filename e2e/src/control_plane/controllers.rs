//! What the rest of a cluster does to the API's objects, reduced to the parts
//! an operator observes: the deployment controller and kubelets (Deployment
//! status), the job controller, the PV binder, the namespace controller, the
//! CRD finalizer and the garbage collector.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::{Notify, broadcast, watch};

use super::clock;
use super::store::{
    CRD_CLEANUP_FINALIZER, DeleteOpts, Event, EventType, FOREGROUND_FINALIZER, ORPHAN_FINALIZER,
    Store,
};

const DEPLOYMENTS: &str = "apps/deployments";
const JOBS: &str = "batch/jobs";
const PVCS: &str = "/persistentvolumeclaims";
const NAMESPACES: &str = "/namespaces";
const CRDS: &str = "apiextensions.k8s.io/customresourcedefinitions";

/// Test knobs for the simulated cluster.
#[derive(Debug)]
pub struct Knobs {
    /// Whether Deployments' pods become ready (global switch).
    pub deployments_ready: AtomicBool,
    /// Per-Deployment overrides (namespace, name) -> ready.
    pub overrides: Mutex<Vec<((String, String), bool)>>,
    /// Delay before a controller reacts, in milliseconds.
    pub delay_ms: AtomicU64,
    /// Whether Jobs complete.
    pub jobs_complete: AtomicBool,
    /// Wakes the controllers to re-evaluate everything after a knob changes.
    pub changed: Notify,
}

impl Knobs {
    /// Everything becomes ready after `delay`.
    pub fn new(delay: Duration) -> Self {
        Self {
            deployments_ready: AtomicBool::new(true),
            overrides: Mutex::new(vec![]),
            delay_ms: AtomicU64::new(delay.as_millis() as u64),
            jobs_complete: AtomicBool::new(true),
            changed: Notify::new(),
        }
    }

    fn deployment_ready(&self, ns: &str, name: &str) -> bool {
        let o = self.overrides.lock().unwrap_or_else(|e| e.into_inner());
        o.iter()
            .rev()
            .find(|((n, m), _)| n == ns && m == name)
            .map(|(_, r)| *r)
            .unwrap_or_else(|| self.deployments_ready.load(Ordering::Relaxed))
    }

    fn delay(&self) -> Duration {
        Duration::from_millis(self.delay_ms.load(Ordering::Relaxed))
    }
}

fn md<'v>(obj: &'v Value, f: &str) -> &'v str {
    obj.get("metadata")
        .and_then(|m| m.get(f))
        .and_then(Value::as_str)
        .unwrap_or_default()
}

fn owner_uids(obj: &Value) -> Vec<String> {
    obj.pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|r| r.get("uid")?.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn has_finalizer(obj: &Value, f: &str) -> bool {
    obj.pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .is_some_and(|a| a.iter().any(|x| x == f))
}

fn without_finalizer(obj: &Value, f: &str) -> Value {
    let mut v = obj.clone();
    if let Some(a) = v
        .pointer_mut("/metadata/finalizers")
        .and_then(Value::as_array_mut)
    {
        a.retain(|x| x != f);
    }
    v
}

/// Conditions with their timestamps blanked, to compare statuses.
fn timeless(status: &Value) -> Value {
    let mut s = status.clone();
    if let Some(cs) = s.get_mut("conditions").and_then(Value::as_array_mut) {
        for c in cs {
            if let Some(m) = c.as_object_mut() {
                m.remove("lastUpdateTime");
                m.remove("lastTransitionTime");
                m.remove("lastProbeTime");
            }
        }
    }
    s
}

/// Keeps `lastTransitionTime` of conditions whose status did not flip.
fn carry_times(new: &mut Value, old: Option<&Value>) {
    let old_conds = old
        .and_then(|o| o.get("conditions"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if let Some(cs) = new.get_mut("conditions").and_then(Value::as_array_mut) {
        for c in cs {
            let prev = old_conds.iter().find(|o| o.get("type") == c.get("type"));
            if let Some(p) = prev
                && p.get("status") == c.get("status")
            {
                for f in ["lastTransitionTime", "lastUpdateTime"] {
                    if let Some(t) = p.get(f) {
                        c[f] = t.clone();
                    }
                }
            }
        }
    }
}

/// The status the deployment controller and kubelets would converge to.
fn deployment_status(obj: &Value, ready: bool) -> Value {
    let replicas = obj
        .pointer("/spec/replicas")
        .and_then(Value::as_i64)
        .unwrap_or(1);
    let generation = obj
        .pointer("/metadata/generation")
        .and_then(Value::as_i64)
        .unwrap_or(1);
    let now = clock::now_rfc3339();
    let rs = format!(
        "{}-{}",
        md(obj, "name"),
        &md(obj, "uid").replace('-', "")[..10.min(md(obj, "uid").replace('-', "").len())]
    );
    let available = ready || replicas == 0;
    let mut s = json!({
        "observedGeneration": generation,
        "conditions": [
            {
                "type": "Available",
                "status": if available { "True" } else { "False" },
                "reason": if available { "MinimumReplicasAvailable" } else { "MinimumReplicasUnavailable" },
                "message": if available { "Deployment has minimum availability." } else { "Deployment does not have minimum availability." },
                "lastUpdateTime": now, "lastTransitionTime": now,
            },
            {
                "type": "Progressing",
                "status": "True",
                "reason": if ready { "NewReplicaSetAvailable" } else { "ReplicaSetUpdated" },
                "message": if ready { format!("ReplicaSet \"{rs}\" has successfully progressed.") } else { format!("ReplicaSet \"{rs}\" is progressing.") },
                "lastUpdateTime": now, "lastTransitionTime": now,
            }
        ]
    });
    // Zero counts are omitted, as the real API's omitempty does.
    if replicas > 0 {
        s["replicas"] = json!(replicas);
        s["updatedReplicas"] = json!(replicas);
        if ready {
            s["readyReplicas"] = json!(replicas);
            s["availableReplicas"] = json!(replicas);
        } else {
            s["unavailableReplicas"] = json!(replicas);
        }
    }
    s
}

fn job_status(obj: &Value, old: Option<&Value>) -> Option<Value> {
    if obj.pointer("/spec/suspend").and_then(Value::as_bool) == Some(true) {
        return None;
    }
    let completions = obj
        .pointer("/spec/completions")
        .and_then(Value::as_i64)
        .unwrap_or(1);
    let now = clock::now_rfc3339();
    let start = old
        .and_then(|o| o.get("startTime"))
        .cloned()
        .unwrap_or(json!(now));
    Some(json!({
        "startTime": start,
        "completionTime": now,
        "succeeded": completions,
        "ready": 0,
        "terminating": 0,
        "uncountedTerminatedPods": {},
        "conditions": [
            {"type": "SuccessCriteriaMet", "status": "True", "reason": "CompletionsReached", "message": "Reached expected number of succeeded pods", "lastProbeTime": now, "lastTransitionTime": now},
            {"type": "Complete", "status": "True", "reason": "CompletionsReached", "message": "Reached expected number of succeeded pods", "lastProbeTime": now, "lastTransitionTime": now}
        ]
    }))
}

/// Runs the simulated controllers until `stop` flips.
pub async fn run(store: Arc<Store>, knobs: Arc<Knobs>, mut stop: watch::Receiver<bool>) {
    let mut rx = store.subscribe();
    resync(&store, &knobs);
    loop {
        tokio::select! {
            r = rx.recv() => match r {
                Ok(ev) => handle(&store, &knobs, &ev),
                Err(broadcast::error::RecvError::Lagged(_)) => resync(&store, &knobs),
                Err(broadcast::error::RecvError::Closed) => return,
            },
            _ = knobs.changed.notified() => resync(&store, &knobs),
            _ = stop.changed() => return,
        }
    }
}

/// Re-evaluates every object, as controllers do after starting.
fn resync(store: &Arc<Store>, knobs: &Arc<Knobs>) {
    for (key, obj) in store.everything() {
        let ev = Event {
            rv: 0,
            kind: EventType::Added,
            key,
            object: obj,
            old: None,
        };
        handle(store, knobs, &ev);
        if md(&ev.object, "deletionTimestamp").is_empty() {
            continue;
        }
        let ev = Event {
            kind: EventType::Modified,
            ..ev
        };
        handle(store, knobs, &ev);
    }
}

fn handle(store: &Arc<Store>, knobs: &Arc<Knobs>, ev: &Event) {
    let obj = &ev.object;
    let deleting = !md(obj, "deletionTimestamp").is_empty();
    match ev.kind {
        EventType::Deleted => {
            collect_dependents(store, md(obj, "uid"));
            let ns = md(obj, "namespace");
            if !ns.is_empty() {
                namespace_cleanup(store, ns);
            }
            for owner in owner_uids(obj) {
                if let Some((key, o)) = find_uid(store, &owner)
                    && has_finalizer(&o, FOREGROUND_FINALIZER)
                {
                    foreground(store, &key, &o);
                }
            }
            if let Some(info) = store.resource_by_key(&ev.key)
                && info.custom
            {
                let crd_name = format!("{}.{}", info.plural, info.group);
                if let Some(crd) = store
                    .all_of(CRDS)
                    .into_iter()
                    .find(|c| md(c, "name") == crd_name)
                    && !md(&crd, "deletionTimestamp").is_empty()
                {
                    crd_cleanup(store, &crd);
                }
            }
            return;
        }
        EventType::Added => {
            let owners = owner_uids(obj);
            if !owners.is_empty() && owners.iter().all(|u| !store.uid_exists(u)) {
                delete(store, &ev.key, obj);
                return;
            }
        }
        EventType::Modified => {}
    }
    if deleting {
        if has_finalizer(obj, FOREGROUND_FINALIZER) {
            foreground(store, &ev.key, obj);
        }
        if has_finalizer(obj, ORPHAN_FINALIZER) {
            orphan(store, &ev.key, obj);
        }
        match ev.key.as_str() {
            NAMESPACES => namespace_cleanup(store, md(obj, "name")),
            CRDS => crd_cleanup(store, obj),
            _ => {}
        }
    }
    match ev.key.as_str() {
        CRDS if !deleting => establish_crds(store, ev),
        DEPLOYMENTS => {
            let ready = knobs.deployment_ready(md(obj, "namespace"), md(obj, "name"));
            let want = deployment_status(obj, ready);
            if obj.get("status").map(timeless) != Some(timeless(&want)) {
                later(store, knobs, DEPLOYMENTS, obj, move |cur, knobs| {
                    let ready = knobs.deployment_ready(md(cur, "namespace"), md(cur, "name"));
                    let mut s = deployment_status(cur, ready);
                    carry_times(&mut s, cur.get("status"));
                    Some(s)
                });
            }
        }
        JOBS if knobs.jobs_complete.load(Ordering::Relaxed) => {
            let done = obj
                .pointer("/status/conditions")
                .and_then(Value::as_array)
                .is_some_and(|cs| {
                    cs.iter()
                        .any(|c| c["type"] == "Complete" && c["status"] == "True")
                });
            if !done && !deleting {
                later(store, knobs, JOBS, obj, |cur, _| {
                    job_status(cur, cur.get("status"))
                });
            }
        }
        PVCS if obj.pointer("/status/phase").and_then(Value::as_str) != Some("Bound")
            && !deleting =>
        {
            later(store, knobs, PVCS, obj, |cur, _| {
                let mut s = json!({"phase": "Bound", "accessModes": cur.pointer("/spec/accessModes").cloned().unwrap_or(json!(["ReadWriteOnce"]))});
                if let Some(size) = cur.pointer("/spec/resources/requests/storage") {
                    s["capacity"] = json!({"storage": size});
                }
                Some(s)
            });
        }
        _ => {}
    }
}

/// Writes a status computed from the object as it is after the knob delay.
fn later(
    store: &Arc<Store>,
    knobs: &Arc<Knobs>,
    key: &'static str,
    obj: &Value,
    compute: impl FnOnce(&Value, &Knobs) -> Option<Value> + Send + 'static,
) {
    let (store, knobs) = (store.clone(), knobs.clone());
    let (ns, name) = (
        md(obj, "namespace").to_string(),
        md(obj, "name").to_string(),
    );
    tokio::spawn(async move {
        tokio::time::sleep(knobs.delay()).await;
        let Some(info) = store.resource_by_key(key) else {
            return;
        };
        let result = store.modify(&info, &ns, &name, "kube-controller-manager", true, |cur| {
            let status = compute(cur, &knobs)?;
            if cur.get("status").map(timeless) == Some(timeless(&status)) {
                return None;
            }
            let mut new = cur.clone();
            new["status"] = status;
            Some(new)
        });
        if let Err(e) = result {
            tracing::warn!(%ns, %name, error = %e, "simulated controller could not write status");
        }
    });
}

fn find_uid(store: &Store, uid: &str) -> Option<(String, Value)> {
    if !store.uid_exists(uid) {
        return None;
    }
    store
        .everything()
        .into_iter()
        .find(|(_, o)| md(o, "uid") == uid)
        .map(|(k, o)| (k, (*o).clone()))
}

fn delete(store: &Store, key: &str, obj: &Value) {
    let Some(info) = store.resource_by_key(key) else {
        return;
    };
    if !md(obj, "deletionTimestamp").is_empty() {
        return;
    }
    match store.delete(
        &info,
        md(obj, "namespace"),
        md(obj, "name"),
        &DeleteOpts::default(),
    ) {
        Ok(_) => {}
        Err(e) if e.code == 404 => {}
        Err(e) => tracing::warn!(error = %e, "garbage collector could not delete"),
    }
}

/// Background cascading deletion: dependents whose owners are all gone are deleted;
/// dependents with a surviving owner lose the dangling reference.
fn collect_dependents(store: &Store, gone_uid: &str) {
    if gone_uid.is_empty() {
        return;
    }
    for (key, obj) in store.everything() {
        let owners = owner_uids(&obj);
        if !owners.iter().any(|u| u == gone_uid) {
            continue;
        }
        if owners.iter().any(|u| u != gone_uid && store.uid_exists(u)) {
            remove_owner_refs(store, &key, &obj, |u| u == gone_uid || !store.uid_exists(u));
        } else {
            delete(store, &key, &obj);
        }
    }
}

fn remove_owner_refs(store: &Store, key: &str, obj: &Value, drop: impl Fn(&str) -> bool) {
    let Some(info) = store.resource_by_key(key) else {
        return;
    };
    let _ = store.modify(
        &info,
        md(obj, "namespace"),
        md(obj, "name"),
        "generic-garbage-collector",
        false,
        |cur| {
            let mut new = cur.clone();
            let refs = new
                .pointer_mut("/metadata/ownerReferences")
                .and_then(Value::as_array_mut)?;
            refs.retain(|r| !drop(r.get("uid").and_then(Value::as_str).unwrap_or_default()));
            if refs.is_empty()
                && let Some(m) = new.get_mut("metadata").and_then(Value::as_object_mut)
            {
                m.remove("ownerReferences");
            }
            Some(new)
        },
    );
}

fn dependents(store: &Store, uid: &str) -> Vec<(String, Arc<Value>)> {
    store
        .everything()
        .into_iter()
        .filter(|(_, o)| owner_uids(o).iter().any(|u| u == uid))
        .collect()
}

fn remove_finalizer(store: &Store, key: &str, obj: &Value, f: &str) {
    let Some(info) = store.resource_by_key(key) else {
        return;
    };
    let _ = store.modify(
        &info,
        md(obj, "namespace"),
        md(obj, "name"),
        "generic-garbage-collector",
        false,
        |cur| has_finalizer(cur, f).then(|| without_finalizer(cur, f)),
    );
}

/// Foreground deletion: delete dependents, release the owner when the blocking ones are gone.
fn foreground(store: &Store, key: &str, owner: &Value) {
    let uid = md(owner, "uid");
    let deps = dependents(store, uid);
    let mut blocking = false;
    for (k, d) in &deps {
        delete(store, k, d);
        let blocks = d
            .pointer("/metadata/ownerReferences")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .any(|r| r["uid"] == uid && r["blockOwnerDeletion"] == true);
        if blocks && store.uid_exists(md(d, "uid")) {
            blocking = true;
        }
    }
    if !blocking {
        remove_finalizer(store, key, owner, FOREGROUND_FINALIZER);
    }
}

/// Orphan deletion: dependents lose the owner reference, then the owner goes.
fn orphan(store: &Store, key: &str, owner: &Value) {
    let uid = md(owner, "uid").to_string();
    for (k, d) in dependents(store, &uid) {
        remove_owner_refs(store, &k, &d, |u| u == uid);
    }
    remove_finalizer(store, key, owner, ORPHAN_FINALIZER);
}

/// The namespace controller: empties a terminating namespace, then removes it.
fn namespace_cleanup(store: &Store, ns: &str) {
    let Some(info) = store.resource_by_key(NAMESPACES) else {
        return;
    };
    let Ok(nso) = store.get(&info, "", ns) else {
        return;
    };
    if md(&nso, "deletionTimestamp").is_empty() {
        return;
    }
    let mut remaining = 0;
    let mut seen = HashSet::new();
    for (key, obj) in store.everything() {
        if md(&obj, "namespace") != ns || key == NAMESPACES {
            continue;
        }
        remaining += 1;
        if seen.insert(md(&obj, "uid").to_string()) {
            delete(store, &key, &obj);
        }
    }
    let left = store
        .everything()
        .into_iter()
        .filter(|(k, o)| k != NAMESPACES && md(o, "namespace") == ns)
        .count();
    if remaining == 0 || left == 0 {
        let _ = store.modify(&info, "", ns, "namespace-controller", false, |cur| {
            let mut new = cur.clone();
            new["spec"]["finalizers"] = json!([]);
            Some(new)
        });
    }
}

/// The CRD finalizer: deletes every object of the CRD, then lets the CRD go.
fn crd_cleanup(store: &Store, crd: &Value) {
    if !has_finalizer(crd, CRD_CLEANUP_FINALIZER) {
        return;
    }
    let group = crd
        .pointer("/spec/group")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let plural = crd
        .pointer("/spec/names/plural")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let key = format!("{group}/{plural}");
    for obj in store.all_of(&key) {
        delete(store, &key, &obj);
    }
    if store.all_of(&key).is_empty() {
        remove_finalizer(store, CRDS, crd, CRD_CLEANUP_FINALIZER);
    }
}

/// Marks a newly written CRD Established and NamesAccepted, as the apiextensions
/// controllers do right after registration.
fn establish_crds(store: &Store, ev: &Event) {
    if ev.key != CRDS
        || ev.kind == EventType::Deleted
        || !md(&ev.object, "deletionTimestamp").is_empty()
    {
        return;
    }
    let Some(info) = store.resource_by_key(CRDS) else {
        return;
    };
    let _ = store.modify(&info, "", md(&ev.object, "name"), "kube-apiserver", true, |cur| {
        let now = clock::now_rfc3339();
        let names = cur.pointer("/spec/names").cloned().unwrap_or(json!({}));
        let mut status = json!({
            "acceptedNames": names,
            "conditions": [
                {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts", "message": "no conflicts found", "lastTransitionTime": now},
                {"type": "Established", "status": "True", "reason": "InitialNamesAccepted", "message": "the initial names have been accepted", "lastTransitionTime": now}
            ],
            "storedVersions": cur.pointer("/spec/versions").and_then(Value::as_array).map(|vs| vs.iter().filter(|v| v["storage"] == true).map(|v| v["name"].clone()).collect::<Vec<_>>()).unwrap_or_default(),
        });
        carry_times(&mut status, cur.get("status"));
        if cur.get("status").map(timeless) == Some(timeless(&status)) {
            return None;
        }
        let mut new = cur.clone();
        new["status"] = status;
        Some(new)
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deployment_status_reports_readiness_like_the_deployment_controller() {
        let d = json!({"metadata": {"name": "d", "uid": "0123456789abcdef", "generation": 3}, "spec": {"replicas": 2}});
        let s = deployment_status(&d, true);
        assert_eq!(s["observedGeneration"], 3);
        assert_eq!(s["readyReplicas"], 2);
        assert_eq!(s["conditions"][0]["status"], "True");
        let s = deployment_status(&d, false);
        assert!(s.get("readyReplicas").is_none());
        assert_eq!(s["unavailableReplicas"], 2);
        assert_eq!(s["conditions"][0]["reason"], "MinimumReplicasUnavailable");
    }
}
