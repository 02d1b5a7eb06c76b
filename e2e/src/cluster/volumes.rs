//! A volume provisioner for the test cluster, standing in for a cloud's CSI driver: every
//! PersistentVolumeClaim of the default StorageClass gets a PersistentVolume made for it,
//! which kube-controller-manager's volume binder then binds, as it would a provisioned
//! disk. The volumes are hostPath entries that nothing mounts (kwok's pods run no
//! containers). Released volumes are deleted, as a `Delete` reclaim policy would.

use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::runtime::watcher;
use serde_json::json;

/// The default StorageClass of the test cluster.
pub const STORAGE_CLASS: &str = "standard";
/// Its provisioner name.
pub const PROVISIONER: &str = "grokcast.test/hostpath";
const MADE_BY: &str = "grokcast.test/provisioned";

/// Creates the default StorageClass, then provisions claims until the task is aborted.
pub async fn run(client: kube::Client) {
    let classes: Api<StorageClass> = Api::all(client.clone());
    let class = serde_json::from_value::<StorageClass>(json!({
        "metadata": {
            "name": STORAGE_CLASS,
            "annotations": {"storageclass.kubernetes.io/is-default-class": "true"},
        },
        "provisioner": PROVISIONER,
        "reclaimPolicy": "Delete",
        "volumeBindingMode": "Immediate",
    }));
    if let Ok(class) = class {
        let _ = classes.create(&PostParams::default(), &class).await;
    }
    let claims: Api<PersistentVolumeClaim> = Api::all(client.clone());
    let volumes: Api<PersistentVolume> = Api::all(client.clone());
    let mut events = watcher(claims, watcher::Config::default()).boxed();
    let mut sweep = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            ev = events.next() => match ev {
                Some(Ok(watcher::Event::Apply(pvc) | watcher::Event::InitApply(pvc))) => {
                    provision(&volumes, &pvc).await;
                }
                Some(_) => {}
                None => return,
            },
            _ = sweep.tick() => delete_released(&volumes).await,
        }
    }
}

async fn provision(volumes: &Api<PersistentVolume>, pvc: &PersistentVolumeClaim) {
    let Some(spec) = pvc.spec.as_ref() else {
        return;
    };
    let class = spec.storage_class_name.as_deref().unwrap_or("");
    if spec.volume_name.is_some() || class != STORAGE_CLASS {
        return;
    }
    let (Some(name), Some(ns), Some(uid)) = (
        pvc.metadata.name.as_deref(),
        pvc.metadata.namespace.as_deref(),
        pvc.metadata.uid.as_deref(),
    ) else {
        return;
    };
    let size = spec
        .resources
        .as_ref()
        .and_then(|r| r.requests.as_ref())
        .and_then(|r| r.get("storage"))
        .map(|q| q.0.clone())
        .unwrap_or_else(|| "1Gi".into());
    let pv = serde_json::from_value::<PersistentVolume>(json!({
        "metadata": {"name": format!("pvc-{uid}"), "labels": {MADE_BY: "true"}},
        "spec": {
            "capacity": {"storage": size},
            "accessModes": spec.access_modes.clone().unwrap_or_default(),
            "storageClassName": STORAGE_CLASS,
            "persistentVolumeReclaimPolicy": "Delete",
            "hostPath": {"path": format!("/var/lib/grokcast-test-volumes/{uid}")},
            "claimRef": {"namespace": ns, "name": name, "uid": uid},
        },
    }));
    if let Ok(pv) = pv {
        // Already made (an earlier event for the same claim): nothing to do.
        let _ = volumes.create(&PostParams::default(), &pv).await;
    }
}

async fn delete_released(volumes: &Api<PersistentVolume>) {
    let Ok(list) = volumes
        .list(&ListParams::default().labels(&format!("{MADE_BY}=true")))
        .await
    else {
        return;
    };
    for pv in list.items {
        let released = pv
            .status
            .as_ref()
            .and_then(|s| s.phase.as_deref())
            .is_some_and(|p| p == "Released" || p == "Failed");
        if released && let Some(name) = pv.metadata.name.as_deref() {
            let _ = volumes.delete(name, &DeleteParams::default()).await;
        }
    }
}
