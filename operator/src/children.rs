//! The objects the operator applies, as one enum so that apply, render and tests treat
//! every kind alike.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{
    ConfigMap, PersistentVolumeClaim, Service, ServicePort, ServiceSpec,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::DynamicObject;
use kube::core::{ApiResource, GroupVersionKind};
use serde::Serialize;

use crate::meta::Owner;

/// One child object of a ModelPool or VoiceAgent.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Child {
    /// Agent pipeline config.
    ConfigMap(ConfigMap),
    /// Model servers or agent pods.
    Deployment(Box<Deployment>),
    /// Stable in-cluster address.
    Service(Service),
    /// Keeps voluntary evictions to one pod at a time.
    PodDisruptionBudget(PodDisruptionBudget),
    /// Weight cache.
    PersistentVolumeClaim(PersistentVolumeClaim),
    /// Weight preload.
    Job(Box<Job>),
    /// Prometheus Operator scrape config; dynamic because the CRD may not exist.
    ServiceMonitor(DynamicObject),
}

impl Child {
    /// Kind, for logs and errors.
    pub fn kind(&self) -> &'static str {
        match self {
            Child::ConfigMap(_) => "ConfigMap",
            Child::Deployment(_) => "Deployment",
            Child::Service(_) => "Service",
            Child::PodDisruptionBudget(_) => "PodDisruptionBudget",
            Child::PersistentVolumeClaim(_) => "PersistentVolumeClaim",
            Child::Job(_) => "Job",
            Child::ServiceMonitor(_) => "ServiceMonitor",
        }
    }

    /// Object name.
    pub fn name(&self) -> &str {
        self.meta().name.as_deref().unwrap_or_default()
    }

    /// The uid in the child's controller owner reference: the resource that builds it.
    pub fn owner_uid(&self) -> Option<&str> {
        self.meta()
            .owner_references
            .iter()
            .flatten()
            .find(|r| r.controller == Some(true))
            .map(|r| r.uid.as_str())
    }

    fn meta(&self) -> &ObjectMeta {
        match self {
            Child::ConfigMap(o) => &o.metadata,
            Child::Deployment(o) => &o.metadata,
            Child::Service(o) => &o.metadata,
            Child::PodDisruptionBudget(o) => &o.metadata,
            Child::PersistentVolumeClaim(o) => &o.metadata,
            Child::Job(o) => &o.metadata,
            Child::ServiceMonitor(o) => &o.metadata,
        }
    }
}

/// `monitoring.coreos.com/v1` ServiceMonitor.
pub fn service_monitor_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("monitoring.coreos.com", "v1", "ServiceMonitor"),
        "servicemonitors",
    )
}

/// A ClusterIP Service exposing the owner's pods' named container ports, each as the same
/// number and name.
pub fn service(owner: &Owner, name: String, ports: &[(&str, i32)]) -> Service {
    Service {
        metadata: owner.child_meta(name),
        spec: Some(ServiceSpec {
            selector: Some(owner.selector_labels()),
            ports: Some(
                ports
                    .iter()
                    .map(|&(port_name, port)| ServicePort {
                        name: Some(port_name.into()),
                        port,
                        target_port: Some(IntOrString::String(port_name.into())),
                        protocol: Some("TCP".into()),
                        ..ServicePort::default()
                    })
                    .collect(),
            ),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

/// A PodDisruptionBudget allowing one voluntary disruption at a time.
pub fn pod_disruption_budget(owner: &Owner, name: String) -> PodDisruptionBudget {
    PodDisruptionBudget {
        metadata: owner.child_meta(name),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(owner.label_selector()),
            ..PodDisruptionBudgetSpec::default()
        }),
        ..PodDisruptionBudget::default()
    }
}

/// A ServiceMonitor scraping `/metrics` on the owner's Service port named `port`.
pub fn service_monitor(owner: &Owner, name: String, port: &str, interval: &str) -> DynamicObject {
    let mut obj = DynamicObject::new(&name, &service_monitor_resource()).within(&owner.namespace);
    obj.metadata = owner.child_meta(name);
    obj.data = serde_json::json!({
        "spec": {
            "selector": {"matchLabels": owner.selector_labels()},
            "endpoints": [{"port": port, "path": "/metrics", "interval": interval}],
        }
    });
    obj
}
