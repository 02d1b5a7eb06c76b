//! Without a Prometheus URL nothing measures the SLO. Rather than leave a VoiceAgent that asks
//! for `scaling` with no word on why its replicas never move, the autoscaler's field manager
//! sets its `SLOMet` condition to Unknown with reason `AutoscalerDisabled` and says what to
//! configure.
//!
//! It is driven by a watch, not a timer, so an idle cluster costs no API requests, and it
//! writes only when the condition is not already what it would write.

use futures::StreamExt;
use grokcast_crds::{AUTOSCALER_FIELD_MANAGER, VoiceAgent, condition, condition::reason};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Resource, ResourceExt};
use serde_json::json;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::leader::Leadership;

/// The `SLOMet` message on autoscaled VoiceAgents while the operator has no Prometheus URL.
pub const DISABLED_MESSAGE: &str = "the operator runs without a Prometheus URL (--prometheus-url / GROKCAST_PROMETHEUS_URL, the chart's prometheus.url), so the SLO is not measured and replicas follow spec.replicas";

/// Marks every VoiceAgent with `scaling` as not autoscaled, until `shutdown`. Waits for
/// `leader` first: only the leader writes, and the operator exits when it loses the lease.
pub async fn report_disabled(
    client: kube::Client,
    namespaces: Vec<String>,
    mut leader: watch::Receiver<Leadership>,
    shutdown: CancellationToken,
) {
    tokio::select! {
        led = leader.wait_for(Leadership::is_leading) => if led.is_err() { return },
        () = shutdown.cancelled() => return,
    }
    let apis: Vec<Api<VoiceAgent>> = if namespaces.is_empty() {
        vec![Api::all(client.clone())]
    } else {
        namespaces
            .iter()
            .map(|ns| Api::namespaced(client.clone(), ns))
            .collect()
    };
    let streams = apis.into_iter().map(|api| {
        watcher(api, watcher::Config::default())
            .default_backoff()
            .applied_objects()
            .boxed()
    });
    let mut agents = futures::stream::select_all(streams);
    loop {
        let next = tokio::select! {
            next = agents.next() => next,
            () = shutdown.cancelled() => return,
        };
        let agent = match next {
            Some(Ok(agent)) => agent,
            Some(Err(error)) => {
                tracing::warn!(%error, "watching VoiceAgents to report autoscaling off");
                continue;
            }
            None => return,
        };
        if !leader.borrow().is_leading() || !needs_report(&agent) {
            continue;
        }
        if let Err(error) = report(&client, &agent).await {
            tracing::warn!(
                voiceagent = %format!("{}/{}", agent.namespace().unwrap_or_default(), agent.name_any()),
                %error,
                "writing SLOMet=Unknown (autoscaling off)"
            );
        }
    }
}

/// True for an agent that asks for autoscaling and does not say yet that it is off.
fn needs_report(agent: &VoiceAgent) -> bool {
    if agent.spec.scaling.is_none() {
        return false;
    }
    let current = agent
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == condition::SLO_MET));
    !current.is_some_and(|c| {
        c.status == "Unknown"
            && c.reason == reason::AUTOSCALER_DISABLED
            && c.message == DISABLED_MESSAGE
            && c.observed_generation == agent.meta().generation
    })
}

async fn report(client: &kube::Client, agent: &VoiceAgent) -> Result<(), kube::Error> {
    let namespace = agent.namespace().unwrap_or_default();
    let api: Api<VoiceAgent> = Api::namespaced(client.clone(), &namespace);
    let previous = agent
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == condition::SLO_MET));
    let now = Time(Timestamp::now());
    let condition = Condition {
        type_: condition::SLO_MET.into(),
        status: "Unknown".into(),
        reason: reason::AUTOSCALER_DISABLED.into(),
        message: DISABLED_MESSAGE.into(),
        observed_generation: agent.meta().generation,
        last_transition_time: previous
            .filter(|c| c.status == "Unknown")
            .map_or(now, |c| c.last_transition_time.clone()),
    };
    // Applied with the autoscaler's field manager and only this condition: measurements a
    // previous autoscaler run left in status.autoscaling are released (they would be stale),
    // and an autoscaler started later takes the condition over by the same manager.
    let status = json!({
        "apiVersion": VoiceAgent::api_version(&()),
        "kind": VoiceAgent::kind(&()),
        "status": { "conditions": [condition] },
    });
    let params = PatchParams::apply(AUTOSCALER_FIELD_MANAGER).force();
    api.patch_status(&agent.name_any(), &params, &Patch::Apply(&status))
        .await
        .map(|_| ())
}
