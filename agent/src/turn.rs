//! Turn-taking: Silero speech probabilities in, "caller started/finished a turn" and
//! "caller interrupted" out. Pure state, fed one VAD chunk at a time.
//!
//! With an end-of-turn model ([`SemanticEndpointing`]), a pause of the minimum silence asks
//! the model ([`TurnEvent::Pause`]) instead of ending the turn; its answer comes back through
//! [`Endpointer::verdict`]. A complete utterance ends there; an incomplete one waits for the
//! caller to go on, or for the maximum silence.

use std::time::Duration;

/// Turn-taking thresholds, from the VoiceAgent's `turnTaking`.
#[derive(Debug, Clone, PartialEq)]
pub struct TurnTaking {
    /// Speech probability at or above which a chunk is speech.
    pub vad_threshold: f32,
    /// Silence after real speech that ends the caller's turn.
    pub end_of_turn_silence: Duration,
    /// Speech shorter than this is a noise, not a turn.
    pub min_speech: Duration,
    /// Whether caller speech may interrupt the agent.
    pub barge_in: bool,
    /// Caller speech needed while the agent talks before it counts as an interruption.
    pub min_barge_in: Duration,
    /// A turn longer than this is ended anyway (bounds the audio kept per call).
    pub max_turn: Duration,
    /// Ask an end-of-turn model at pauses; `None` ends turns on silence alone.
    pub semantic: Option<SemanticEndpointing>,
}

/// Pause lengths when an end-of-turn model judges the caller's pauses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SemanticEndpointing {
    /// Silence after which the model is asked; a complete utterance ends here.
    pub min_silence: Duration,
    /// Silence that ends the turn whatever the model said.
    pub max_silence: Duration,
}

impl Default for TurnTaking {
    fn default() -> Self {
        Self {
            vad_threshold: 0.5,
            end_of_turn_silence: Duration::from_millis(300),
            min_speech: Duration::from_millis(150),
            barge_in: true,
            min_barge_in: Duration::from_millis(200),
            max_turn: Duration::from_secs(20),
            semantic: None,
        }
    }
}

/// What one chunk changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TurnEvent {
    /// Speech began in this chunk: start keeping audio for STT.
    SpeechStarted,
    /// The caller interrupted the agent.
    BargeIn,
    /// The caller finished a turn with this much speech in it.
    EndOfTurn {
        /// Speech (not silence) in the turn.
        speech: Duration,
        /// Silence since the voice ended: the caller stopped this long ago.
        silence: Duration,
    },
    /// The caller paused long enough that the turn may be over: ask the end-of-turn model,
    /// and hand its answer to [`Endpointer::verdict`] with this pause.
    Pause(u64),
    /// The speech that started was too short or ignored; drop the kept audio.
    Discarded,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum State {
    Quiet,
    Speaking {
        speech: Duration,
        silence: Duration,
        total: Duration,
        over_agent: bool,
        barged: bool,
        /// The end-of-turn model was asked about the current pause.
        asked: bool,
    },
}

/// Per-call endpointing and barge-in detector.
#[derive(Debug, Clone)]
pub struct Endpointer {
    config: TurnTaking,
    negative_threshold: f32,
    state: State,
    /// Names the pause the model was last asked about; bumped when that pause ends, so a
    /// late answer about an earlier pause is recognised and ignored.
    pause: u64,
}

impl Endpointer {
    /// A detector with these thresholds.
    pub fn new(config: TurnTaking) -> Self {
        // Hysteresis as in Silero's reference iterator: speech continues until the probability
        // falls well below the start threshold, so breathy syllables do not end a turn.
        let negative_threshold = (config.vad_threshold - 0.15).max(0.01);
        Self {
            config,
            negative_threshold,
            state: State::Quiet,
            pause: 0,
        }
    }

    /// Whether the caller is in the middle of speaking.
    pub fn in_speech(&self) -> bool {
        matches!(self.state, State::Speaking { .. })
    }

    /// Feeds one chunk's speech probability; `agent_speaking` says whether the caller is
    /// hearing the agent right now.
    pub fn push(
        &mut self,
        probability: f32,
        chunk: Duration,
        agent_speaking: bool,
    ) -> Option<TurnEvent> {
        let c = &self.config;
        match &mut self.state {
            State::Quiet => {
                if probability >= c.vad_threshold {
                    self.state = State::Speaking {
                        speech: chunk,
                        silence: Duration::ZERO,
                        total: chunk,
                        over_agent: agent_speaking,
                        barged: false,
                        asked: false,
                    };
                    return Some(TurnEvent::SpeechStarted);
                }
                None
            }
            State::Speaking {
                speech,
                silence,
                total,
                over_agent,
                barged,
                asked,
            } => {
                *total += chunk;
                if probability >= self.negative_threshold {
                    *speech += *silence + chunk;
                    *silence = Duration::ZERO;
                    if *asked {
                        // The caller went on: whatever the model says about that pause is moot.
                        *asked = false;
                        self.pause += 1;
                    }
                } else {
                    *silence += chunk;
                }
                if *over_agent
                    && !*barged
                    && c.barge_in
                    && agent_speaking
                    && *speech >= c.min_barge_in
                {
                    *barged = true;
                    return Some(TurnEvent::BargeIn);
                }
                // Speech over the agent only makes a turn if it interrupted; otherwise it was
                // a cough, a "mm-hm" or speech while barge-in is off.
                let counts = *speech >= c.min_speech && (!*over_agent || *barged);
                // Only a turn worth answering is worth the model's time; noise ends on the
                // plain silence.
                let limit = match c.semantic {
                    Some(s) if counts => s.max_silence,
                    _ => c.end_of_turn_silence,
                };
                if *silence < limit && *total < c.max_turn {
                    if let Some(s) = c.semantic
                        && counts
                        && !*asked
                        && *silence >= s.min_silence
                    {
                        *asked = true;
                        return Some(TurnEvent::Pause(self.pause));
                    }
                    return None;
                }
                let (speech, silence) = (*speech, *silence);
                self.end();
                Some(if counts {
                    TurnEvent::EndOfTurn { speech, silence }
                } else {
                    TurnEvent::Discarded
                })
            }
        }
    }

    /// The end-of-turn model's answer about `pause`: a complete utterance ends the turn now;
    /// an incomplete one (or an answer about a pause the caller has since spoken past) changes
    /// nothing, and the turn waits for more speech or the maximum silence.
    pub fn verdict(&mut self, pause: u64, complete: bool) -> Option<TurnEvent> {
        let State::Speaking {
            speech,
            silence,
            asked: true,
            ..
        } = self.state
        else {
            return None;
        };
        if pause != self.pause || !complete {
            return None;
        }
        self.end();
        Some(TurnEvent::EndOfTurn { speech, silence })
    }

    fn end(&mut self) {
        if matches!(self.state, State::Speaking { asked: true, .. }) {
            self.pause += 1;
        }
        self.state = State::Quiet;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHUNK: Duration = Duration::from_millis(32);

    fn run(e: &mut Endpointer, pattern: &[(f32, usize)], agent: bool) -> Vec<(usize, TurnEvent)> {
        let mut out = Vec::new();
        let mut i = 0;
        for (p, n) in pattern {
            for _ in 0..*n {
                if let Some(ev) = e.push(*p, CHUNK, agent) {
                    out.push((i, ev));
                }
                i += 1;
            }
        }
        out
    }

    #[test]
    fn turn_ends_after_the_configured_silence_following_speech() {
        let mut e = Endpointer::new(TurnTaking::default());
        let ev = run(&mut e, &[(0.0, 5), (0.9, 20), (0.05, 20)], false);
        // 300 ms of silence is the 10th silent 32 ms chunk (index 25 + 9).
        assert_eq!(
            ev,
            vec![
                (5, TurnEvent::SpeechStarted),
                (
                    34,
                    TurnEvent::EndOfTurn {
                        speech: CHUNK * 20,
                        silence: CHUNK * 10
                    }
                )
            ]
        );
    }

    #[test]
    fn a_short_pause_inside_speech_does_not_end_the_turn() {
        let mut e = Endpointer::new(TurnTaking::default());
        let ev = run(&mut e, &[(0.9, 10), (0.1, 6), (0.9, 10), (0.1, 10)], false);
        assert_eq!(ev.len(), 2);
        assert!(matches!(ev[1].1, TurnEvent::EndOfTurn { speech, .. } if speech == CHUNK * 26));
    }

    #[test]
    fn a_click_is_not_a_turn() {
        let mut e = Endpointer::new(TurnTaking::default());
        let ev = run(&mut e, &[(0.9, 2), (0.0, 12)], false);
        assert_eq!(
            ev,
            vec![(0, TurnEvent::SpeechStarted), (11, TurnEvent::Discarded)]
        );
    }

    #[test]
    fn hysteresis_keeps_speech_going_between_thresholds() {
        let mut e = Endpointer::new(TurnTaking::default());
        let ev = run(&mut e, &[(0.9, 5), (0.4, 20), (0.0, 10)], false);
        assert!(matches!(ev[1].1, TurnEvent::EndOfTurn { speech, .. } if speech == CHUNK * 25));
    }

    #[test]
    fn barge_in_fires_once_min_barge_in_of_speech_is_heard_over_the_agent() {
        let mut e = Endpointer::new(TurnTaking::default());
        let ev = run(&mut e, &[(0.9, 12), (0.0, 10)], true);
        // 200 ms of speech is reached at the 7th chunk (224 ms).
        assert_eq!(ev[0], (0, TurnEvent::SpeechStarted));
        assert_eq!(ev[1], (6, TurnEvent::BargeIn));
        assert!(
            matches!(ev[2].1, TurnEvent::EndOfTurn { .. }),
            "the interruption is a turn"
        );
    }

    #[test]
    fn short_noise_over_the_agent_does_not_interrupt_or_make_a_turn() {
        let mut e = Endpointer::new(TurnTaking::default());
        let ev = run(&mut e, &[(0.9, 5), (0.0, 10)], true);
        assert_eq!(
            ev,
            vec![(0, TurnEvent::SpeechStarted), (14, TurnEvent::Discarded)]
        );
    }

    #[test]
    fn barge_in_off_ignores_speech_over_the_agent() {
        let mut e = Endpointer::new(TurnTaking {
            barge_in: false,
            ..TurnTaking::default()
        });
        let ev = run(&mut e, &[(0.9, 30), (0.0, 10)], true);
        assert!(!ev.iter().any(|(_, ev)| *ev == TurnEvent::BargeIn));
        assert_eq!(ev.last().map(|e| e.1), Some(TurnEvent::Discarded));
    }

    #[test]
    fn endless_speech_is_cut_at_max_turn() {
        let config = TurnTaking {
            max_turn: Duration::from_secs(1),
            ..TurnTaking::default()
        };
        let mut e = Endpointer::new(config);
        let ev = run(&mut e, &[(0.9, 100)], false);
        assert!(matches!(ev[1], (31, TurnEvent::EndOfTurn { .. })), "{ev:?}");
    }

    fn semantic() -> TurnTaking {
        TurnTaking {
            semantic: Some(SemanticEndpointing {
                min_silence: Duration::from_millis(200),
                max_silence: Duration::from_millis(2000),
            }),
            ..TurnTaking::default()
        }
    }

    #[test]
    fn with_a_model_a_pause_asks_it_and_a_complete_utterance_ends_there() {
        let mut e = Endpointer::new(semantic());
        let ev = run(&mut e, &[(0.9, 20), (0.05, 7)], false);
        // 200 ms of silence is the 7th silent chunk (224 ms): the model is asked, and the
        // plain 300 ms silence no longer ends the turn by itself.
        assert_eq!(
            ev,
            vec![(0, TurnEvent::SpeechStarted), (26, TurnEvent::Pause(0))]
        );
        assert_eq!(
            e.verdict(0, true),
            Some(TurnEvent::EndOfTurn {
                speech: CHUNK * 20,
                silence: CHUNK * 7
            })
        );
        assert!(!e.in_speech());
        // A second answer about the same pause finds nothing to end.
        assert_eq!(e.verdict(0, true), None);
    }

    #[test]
    fn an_incomplete_utterance_waits_for_the_caller_or_the_maximum_silence() {
        let mut e = Endpointer::new(semantic());
        let ev = run(&mut e, &[(0.9, 20), (0.05, 7)], false);
        assert_eq!(ev.last(), Some(&(26, TurnEvent::Pause(0))));
        assert_eq!(e.verdict(0, false), None);
        // Well past today's 300 ms, the turn is still open...
        assert!(run(&mut e, &[(0.05, 20)], false).is_empty());
        assert!(e.in_speech());
        // ...until 2 s of silence in all (63 chunks = 2016 ms).
        let ev = run(&mut e, &[(0.05, 40)], false);
        assert_eq!(
            ev,
            vec![(
                35,
                TurnEvent::EndOfTurn {
                    speech: CHUNK * 20,
                    silence: CHUNK * 63
                }
            )]
        );
    }

    #[test]
    fn speech_after_a_pause_makes_the_models_answer_about_it_moot() {
        let mut e = Endpointer::new(semantic());
        run(&mut e, &[(0.9, 20), (0.05, 7)], false);
        // The caller goes on before the model answers ("my number is... 555 1234").
        let ev = run(&mut e, &[(0.9, 10), (0.05, 7)], false);
        assert_eq!(
            ev,
            vec![(16, TurnEvent::Pause(1))],
            "a new pause, a new question"
        );
        assert_eq!(
            e.verdict(0, true),
            None,
            "the answer about the first pause is stale"
        );
        assert!(e.in_speech());
        assert!(matches!(
            e.verdict(1, true),
            Some(TurnEvent::EndOfTurn { speech, .. }) if speech == CHUNK * 37
        ));
    }

    #[test]
    fn noise_does_not_ask_the_model_and_ends_on_the_plain_silence() {
        let mut e = Endpointer::new(semantic());
        let ev = run(&mut e, &[(0.9, 2), (0.0, 12)], false);
        assert_eq!(
            ev,
            vec![(0, TurnEvent::SpeechStarted), (11, TurnEvent::Discarded)]
        );
    }
}
