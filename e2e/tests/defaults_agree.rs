//! The VoiceAgent CRD and the agent each carry the defaults of `turnTaking`: the CRD's are
//! what `kubectl get -o yaml` shows and what the operator writes, the agent's what it uses
//! when run on its own. They must be the same.

#![allow(clippy::unwrap_used)]

use grokcast_agent::config::TurnTakingConfig;
use grokcast_crds::TurnTakingSpec;

#[test]
fn the_crd_and_the_agent_default_turn_taking_alike() {
    let crd = TurnTakingSpec::default();
    let agent = TurnTakingConfig::default();
    assert_eq!(crd.backchannels, agent.backchannels);
    assert_eq!(
        crd.false_interruption_resume_ms as u64,
        agent.false_interruption_resume_ms
    );
    assert_eq!(
        crd.end_of_turn_silence_ms as u64,
        agent.end_of_turn_silence_ms
    );
    assert_eq!(crd.min_barge_in_ms as u64, agent.min_barge_in_ms);
    assert_eq!(
        crd.min_end_of_turn_silence_ms as u64,
        agent.min_end_of_turn_silence_ms
    );
    assert_eq!(
        crd.max_end_of_turn_silence_ms as u64,
        agent.max_end_of_turn_silence_ms
    );
    assert_eq!(crd.speculative_replies, agent.speculative_replies);
    assert_eq!(crd.preemptive_tts, agent.preemptive_tts);
    assert_eq!(crd.barge_in, agent.barge_in);
    assert_eq!(
        crd.min_interruption_words as u32,
        agent.min_interruption_words
    );
    assert_eq!(
        crd.max_interruption_wait_ms as u64,
        agent.max_interruption_wait_ms
    );
}

/// What the operator writes for `spec.tools` (the CRD's types, serialised) is what the agent
/// reads as its `tools`, defaults included.
#[test]
fn the_crds_tools_read_as_the_agents_tools() {
    let spec: grokcast_crds::ToolsSpec = serde_yaml::from_str(
        "endCall: {enabled: true}\nsendDtmf: {enabled: false}\ntransferCall:\n  enabled: true\n  targets: [{name: sales, to: '+15551230000'}]\nhttp:\n- {name: lookup, description: Looks up, url: 'http://x:1/y'}\n",
    )
    .unwrap();
    let written = serde_yaml::to_string(&spec).unwrap();
    let agent: grokcast_agent::config::ToolsConfig = serde_yaml::from_str(&written).unwrap();
    assert!(agent.end_call.enabled && agent.transfer_call.enabled && !agent.send_dtmf.enabled);
    assert_eq!(agent.transfer_call.targets[0].to, "+15551230000");
    assert!(!agent.transfer_call.allow_caller_numbers);
    let http = &agent.http[0];
    assert_eq!(
        http.timeout_ms,
        grokcast_agent::config::HttpTool::default().timeout_ms
    );
    assert_eq!(http.timeout_ms as i32, spec.http[0].timeout_ms);
    assert!(http.parameters.is_null());
}
