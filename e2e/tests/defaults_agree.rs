//! The VoiceAgent CRD and the agent each carry the defaults of `turnTaking`: the CRD's are
//! what `kubectl get -o yaml` shows and what the operator writes, the agent's what it uses
//! when run on its own. They must be the same.

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
