//! Turn-taking: Silero speech probabilities in, "caller started/finished a turn" and
//! "caller interrupted" out. Pure state, fed one VAD chunk at a time.
//!
//! With an end-of-turn model ([`SemanticEndpointing`]), the model is asked as soon as the VAD
//! notices a pause ([`TurnEvent::Judge`]), so that its answer is usually in by the time the
//! pause reaches the minimum silence; its answer comes back through [`Endpointer::verdict`].
//! A complete utterance ends at the minimum silence (or when the answer comes, if later); an
//! incomplete one waits for the caller to go on, or for the maximum silence.
//!
//! Silero's probability lags the voice: it stays above the hysteresis threshold for about
//! three 32 ms chunks after the caller falls silent. Counting silence from there would make
//! every turn wait ~100 ms more than `endOfTurnSilenceMs` and start the latency clock late. So
//! each chunk also carries its quiet tail (the samples after its last one louder than the
//! line's noise, from [`QuietMeter`]); when the VAD says speech has stopped, the quiet chunks
//! it still called speech are counted as silence, and the voice is taken to have ended at the
//! last loud sample.

use std::time::Duration;

/// The end-of-turn model's probability at or above which an utterance is complete (the
/// model's own decision point).
pub const END_OF_TURN_PROBABILITY: f32 = 0.5;

/// What callers say to show they are listening, not to take the turn: said over the agent,
/// they are treated like a sound with no words (the agent resumes what it was saying).
pub const DEFAULT_BACKCHANNELS: &[&str] = &[
    "uh-huh",
    "uh huh",
    "mm-hm",
    "mm-hmm",
    "mhm",
    "mm",
    "hmm",
    "hm",
    "okay",
    "ok",
    "right",
    "yeah",
    "yep",
    "sure",
    "got it",
    "i see",
    "alright",
    "all right",
    // Fillers and exclamations: said alone, they hold no words to answer.
    "uh",
    "um",
    "oh",
    "ah",
    "mmm",
];

/// Lower-case words of `text`, without punctuation (hyphens and apostrophes inside a word
/// stay: "uh-huh", "that's"). What STT writes in brackets or asterisks ("(coughs)",
/// "[BLANK_AUDIO]", "*sigh*") describes a sound, not words, and is left out.
fn spoken_words(text: &str) -> Vec<String> {
    let mut said = String::with_capacity(text.len());
    let mut closer = None;
    for c in text.chars() {
        match (closer, c) {
            (None, '(') => closer = Some(')'),
            (None, '[') => closer = Some(']'),
            (None, '*') => closer = Some('*'),
            (Some(end), c) if c == end => {
                closer = None;
                said.push(' ');
            }
            (Some(_), _) => {}
            (None, c) => said.push(c),
        }
    }
    said.split(|c: char| !(c.is_alphanumeric() || c == '-' || c == '\''))
        .map(|w| w.trim_matches(|c| c == '-' || c == '\'').to_lowercase())
        .filter(|w| !w.is_empty())
        .collect()
}

/// Whether `transcript` has any spoken word (a described sound is none).
pub fn has_words(transcript: &str) -> bool {
    !spoken_words(transcript).is_empty()
}

/// The caller's words as an LLM should go on from them at a pause: without the closing
/// period, which STT writes at the end of every clip it is given (Whisper ends "I'd like a
/// pizza with" with one), so it says nothing about whether the sentence is over. A question
/// or exclamation mark, a comma or an ellipsis is kept: STT puts those there from the voice.
pub fn open_words(transcript: &str) -> &str {
    let words = transcript.trim();
    match words.strip_suffix('.') {
        Some(open) if !open.ends_with('.') => open.trim_end(),
        _ => words,
    }
}

/// Backchannel phrases, each split into words once: speech held for its words is checked
/// against them on every VAD chunk.
#[derive(Debug, Clone, PartialEq)]
pub struct Backchannels(Vec<Vec<String>>);

impl Default for Backchannels {
    /// [`DEFAULT_BACKCHANNELS`].
    fn default() -> Self {
        let list: Vec<String> = DEFAULT_BACKCHANNELS.iter().map(|s| s.to_string()).collect();
        Self::new(&list)
    }
}

impl Backchannels {
    /// The phrases of `list` ("uh huh", "okay"); empty ones are left out.
    pub fn new(list: &[String]) -> Self {
        Self(
            list.iter()
                .map(|p| spoken_words(p))
                .filter(|p| !p.is_empty())
                .collect(),
        )
    }

    /// How many words `transcript` says besides backchannels: "Okay." and "uh huh, right"
    /// say none, "Okay, wait" one.
    pub fn words_besides(&self, transcript: &str) -> usize {
        self.besides(&spoken_words(transcript))
    }

    /// Whether `transcript` says nothing but backchannels ("Okay.", "Yeah, right.", "uh
    /// huh okay"); an empty transcript is not one.
    pub fn only(&self, transcript: &str) -> bool {
        let words = spoken_words(transcript);
        !words.is_empty() && self.besides(&words) == 0
    }

    fn besides(&self, words: &[String]) -> usize {
        let (mut at, mut others) = (0, 0);
        while at < words.len() {
            // A hum STT spelt out ("hn", "mmh", "shh") is a sound, not a word.
            if is_sound(&words[at]) {
                at += 1;
                continue;
            }
            // The longest phrase that fits here ("uh huh" before "uh").
            let step = self
                .0
                .iter()
                .filter(|p| {
                    p.len() <= words.len() - at
                        && p.iter().zip(&words[at..]).all(|(p, w)| same_word(p, w))
                })
                .map(Vec::len)
                .max();
            match step {
                Some(n) => at += n,
                None => {
                    others += 1;
                    at += 1;
                }
            }
        }
        others
    }
}

/// Whether `word` is a sound written down rather than a word: two or more letters without a
/// vowel ("hm", "hn", "mmh", "shh", "tsk"). English words all have one (counting `y`: "why",
/// "my"); a single letter is one spelt out ("press B"), and digits are words ("press 5").
fn is_sound(word: &str) -> bool {
    word.chars().filter(|c| c.is_alphabetic()).count() >= 2
        && word
            .chars()
            .all(|c| c.is_alphabetic() || c == '-' || c == '\'')
        && !word
            .chars()
            .any(|c| matches!(c.to_ascii_lowercase(), 'a' | 'e' | 'i' | 'o' | 'u' | 'y'))
}

/// Whether STT's `word` is the backchannel word `phrase`: the same, or with an `s` STT added
/// to a short clip ("rights", "okays").
fn same_word(phrase: &str, word: &str) -> bool {
    word == phrase || word.strip_suffix('s') == Some(phrase)
}

/// [`Backchannels::words_besides`] for a list not kept parsed.
pub fn words_besides_backchannels(transcript: &str, backchannels: &[String]) -> usize {
    Backchannels::new(backchannels).words_besides(transcript)
}

/// [`Backchannels::only`] for a list not kept parsed.
pub fn only_backchannels(transcript: &str, backchannels: &[String]) -> bool {
    Backchannels::new(backchannels).only(transcript)
}

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
    /// Without a model: the silence after which the turn may be over, where a speculative
    /// reply starts ([`TurnEvent::Pause`]); `None` announces no pause. With a model, pauses
    /// are announced at its minimum silence.
    pub speculate_after: Option<Duration>,
    /// Words an interruption needs before it stops the agent, read from interim
    /// transcripts ([`Endpointer::words`]); `None` interrupts on `min_barge_in` of speech.
    pub interruption_words: Option<InterruptionWords>,
}

/// An interruption that must say something: speech over the agent stops it only once its
/// interim transcript has words besides backchannels, so "uh-huh" and a cough never do.
#[derive(Debug, Clone, PartialEq)]
pub struct InterruptionWords {
    /// Words besides backchannels that stop the agent (at least 1).
    pub min_words: usize,
    /// Speech held past `min_barge_in` for this long without the words interrupts anyway:
    /// the transcripts are late or the stream died, and a caller who talks on means it.
    pub max_wait: Duration,
    /// What does not count as a word.
    pub backchannels: Backchannels,
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
            speculate_after: None,
            interruption_words: None,
        }
    }
}

/// One VAD chunk as the endpointer sees it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Chunk {
    /// Silero's speech probability for the chunk.
    pub probability: f32,
    /// The chunk's length.
    pub length: Duration,
    /// How much of the chunk's end is quiet (no sample above the line's noise); the whole
    /// length for a quiet chunk, zero when its last sample is loud or loudness is unknown.
    pub quiet_tail: Duration,
}

/// Finds the quiet tail of each chunk: the samples after the last one louder than the line's
/// noise. The noise level is learnt from chunks the VAD calls silence, so a hissy line does
/// not pass for voice; digital silence and a quiet line share a floor of about -46 dBFS.
#[derive(Debug, Clone)]
pub struct QuietMeter {
    /// Slow average of the RMS of chunks the VAD is sure are not speech.
    noise_rms: f32,
}

impl Default for QuietMeter {
    fn default() -> Self {
        Self::new()
    }
}

impl QuietMeter {
    /// Loudness (peak amplitude, full scale 1.0) below which a sample is never voice: the
    /// fade of a word's last phoneme over the phone line sits above it.
    const FLOOR: f32 = 0.005;
    /// A voice sample stands this far above the noise's RMS (noise peaks reach ~3x its RMS).
    const OVER_NOISE: f32 = 4.0;
    /// Chunks at or under this probability teach the meter the line's noise.
    const NOISE_PROBABILITY: f32 = 0.15;

    /// A meter that has heard no noise yet.
    pub fn new() -> Self {
        Self { noise_rms: 0.0 }
    }

    /// The amplitude a sample must pass to be voice.
    pub fn level(&self) -> f32 {
        (self.noise_rms * Self::OVER_NOISE).max(Self::FLOOR)
    }

    /// The number of samples at the end of `samples` that are quiet, and learns the noise
    /// from chunks the VAD gave `probability` at or under [`Self::NOISE_PROBABILITY`].
    pub fn quiet_tail(&mut self, samples: &[f32], probability: f32) -> usize {
        let level = self.level();
        let tail = samples
            .iter()
            .rposition(|s| s.abs() > level)
            .map_or(samples.len(), |last| samples.len() - last - 1);
        if probability <= Self::NOISE_PROBABILITY && !samples.is_empty() {
            let rms = (samples.iter().map(|s| s * s).sum::<f32>() / samples.len() as f32).sqrt();
            // Fast to learn a quieter line, slow to believe a louder one (a word the VAD
            // missed must not raise the floor much).
            let weight = if rms < self.noise_rms { 0.5 } else { 0.05 };
            self.noise_rms += (rms - self.noise_rms) * weight;
        }
        tail
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
        /// The announced pause ([`TurnEvent::Pause`]) this end closes, if the turn ended in
        /// one: a speculative reply begun there heard every word of the turn.
        pause: Option<u64>,
        /// The speech was over the agent and held for its words, which had not come: it is
        /// a turn only if its transcript has them (or the agent has finished talking), and
        /// the agent talks on meanwhile.
        overheard: bool,
    },
    /// The caller went quiet (the VAD noticed a pause in a turn worth answering): ask the
    /// end-of-turn model now and hand its answer to [`Endpointer::verdict`] with this pause.
    /// Asking before the pause is long enough to end the turn hides the model's time in the
    /// pause: its answer is usually in by the minimum silence. Only with a model.
    Judge(u64),
    /// The caller paused long enough that the turn may be over: start a speculative reply.
    /// When the caller speaks again, [`Endpointer::pause_id`] moves on.
    Pause {
        /// The pause's number, as [`Endpointer::pause_id`] gave it.
        pause: u64,
        /// Ask the end-of-turn model now too: no [`TurnEvent::Judge`] came for this pause
        /// (it was first noticed at this length).
        ask: bool,
    },
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
        /// Enough speech over the agent to interrupt, held for its words: the speech the
        /// hold began at.
        held: Option<Duration>,
        /// The end-of-turn model was asked about the current pause (or, without one, the
        /// pause was announced).
        asked: bool,
        /// The current pause was announced ([`TurnEvent::Pause`]).
        announced: bool,
        /// The model called the utterance complete before the pause reached the minimum
        /// silence: the turn ends when it does.
        complete: bool,
        /// The quiet end of the speech so far: silence the VAD has not noticed yet.
        quiet: Duration,
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

    /// The pause lengths an end-of-turn model works with, if one judges pauses.
    pub fn semantic(&self) -> Option<SemanticEndpointing> {
        self.config.semantic
    }

    /// Whether the caller is in the middle of speaking.
    pub fn in_speech(&self) -> bool {
        matches!(self.state, State::Speaking { .. })
    }

    /// The number the next announced pause gets; it moves past an announced pause as soon
    /// as that pause is over (speech resumed or the turn ended).
    pub fn pause_id(&self) -> u64 {
        self.pause
    }

    /// Feeds one chunk; `agent_speaking` says whether the caller is hearing the agent right
    /// now.
    pub fn push(&mut self, chunk: Chunk, agent_speaking: bool) -> Option<TurnEvent> {
        let c = &self.config;
        let length = chunk.length;
        let quiet_tail = chunk.quiet_tail.min(length);
        match &mut self.state {
            State::Quiet => {
                if chunk.probability >= c.vad_threshold {
                    self.state = State::Speaking {
                        speech: length,
                        silence: Duration::ZERO,
                        total: length,
                        over_agent: agent_speaking,
                        barged: false,
                        held: None,
                        asked: false,
                        announced: false,
                        complete: false,
                        quiet: quiet_tail,
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
                held,
                asked,
                announced,
                complete,
                quiet,
            } => {
                *total += length;
                // The agent fell silent before this speech could interrupt it (its reply
                // ended, or it paused between clauses): what the caller says now is theirs,
                // a turn like any, not a sound over the agent to drop.
                if *over_agent && !agent_speaking && !*barged && held.is_none() {
                    *over_agent = false;
                }
                if chunk.probability >= self.negative_threshold {
                    *speech += *silence + length;
                    *silence = Duration::ZERO;
                    *quiet = if quiet_tail == length {
                        *quiet + length
                    } else {
                        quiet_tail
                    };
                    if *asked {
                        // The caller went on: whatever the model says about that pause is moot.
                        *asked = false;
                        *announced = false;
                        *complete = false;
                        self.pause += 1;
                    }
                } else {
                    if silence.is_zero() {
                        // The VAD has just noticed the silence: the voice really ended where
                        // the quiet began, and so does the pause (never the whole utterance).
                        let lag = (*quiet).min(speech.saturating_sub(length));
                        *speech -= lag;
                        *silence = lag;
                        *quiet = Duration::ZERO;
                    }
                    *silence += length;
                }
                // Only voiced speech interrupts: the quiet the VAD still calls speech after a
                // short sound is not part of it.
                let voiced = speech.saturating_sub(*quiet);
                if *over_agent
                    && !*barged
                    && held.is_none()
                    && c.barge_in
                    && agent_speaking
                    && voiced >= c.min_barge_in
                {
                    if c.interruption_words.is_none() {
                        *barged = true;
                        return Some(TurnEvent::BargeIn);
                    }
                    *held = Some(voiced);
                }
                // Only while the agent talks: held speech that outlasts the reply is a turn
                // anyway, decided when it ends.
                if let (Some(at), Some(words)) = (*held, &c.interruption_words)
                    && agent_speaking
                    && voiced.saturating_sub(at) >= words.max_wait
                {
                    *held = None;
                    *barged = true;
                    return Some(TurnEvent::BargeIn);
                }
                // Speech over the agent only makes a turn if it interrupted (or may yet, by
                // its words); otherwise it was a cough, a "mm-hm" or speech while barge-in is
                // off. An interruption is always a turn, even a short one: the agent stopped
                // for it, and what it said (or did not) decides what comes next.
                let counts = (*speech >= c.min_speech && !*over_agent) || *barged || held.is_some();
                // Only a turn worth answering is worth the model's time; noise, and speech
                // held for its words, end on the plain silence.
                let limit = match c.semantic {
                    Some(s) if counts && held.is_none() => s.max_silence,
                    _ => c.end_of_turn_silence,
                };
                let judged = c
                    .semantic
                    .is_some_and(|s| *complete && *silence >= s.min_silence);
                if *silence < limit && *total < c.max_turn && !judged {
                    let announce = c.semantic.map(|s| s.min_silence).or(c.speculate_after);
                    let answerable = counts && held.is_none() && !silence.is_zero();
                    if let Some(at) = announce
                        && answerable
                        && !*announced
                        && *silence >= at
                    {
                        let ask = c.semantic.is_some() && !*asked;
                        *asked = true;
                        *announced = true;
                        return Some(TurnEvent::Pause {
                            pause: self.pause,
                            ask,
                        });
                    }
                    if c.semantic.is_some() && answerable && !*asked {
                        *asked = true;
                        return Some(TurnEvent::Judge(self.pause));
                    }
                    return None;
                }
                let (speech, silence, overheard) = (*speech, *silence, held.is_some());
                let pause = announced.then_some(self.pause);
                self.end();
                Some(if counts {
                    TurnEvent::EndOfTurn {
                        speech,
                        silence,
                        pause,
                        overheard,
                    }
                } else {
                    TurnEvent::Discarded
                })
            }
        }
    }

    /// The end-of-turn model's answer about `pause`: a complete utterance ends the turn now,
    /// or once the pause reaches the minimum silence if it is shorter yet; an incomplete one
    /// (or an answer about a pause the caller has since spoken past) changes nothing, and the
    /// turn waits for more speech or the maximum silence.
    pub fn verdict(&mut self, pause: u64, complete: bool) -> Option<TurnEvent> {
        let min_silence = self.config.semantic?.min_silence;
        let State::Speaking {
            speech,
            silence,
            asked: true,
            announced,
            complete: judged_complete,
            ..
        } = &mut self.state
        else {
            return None;
        };
        if pause != self.pause || !complete {
            return None;
        }
        if *silence < min_silence {
            *judged_complete = true;
            return None;
        }
        let event = TurnEvent::EndOfTurn {
            speech: *speech,
            silence: *silence,
            pause: announced.then_some(pause),
            overheard: false,
        };
        self.end();
        Some(event)
    }

    /// Silence since the voice ended, in the current pause (zero while the caller speaks).
    pub fn silence(&self) -> Duration {
        match self.state {
            State::Speaking { silence, .. } => silence,
            State::Quiet => Duration::ZERO,
        }
    }

    /// Whether speech over the agent is held for its words ([`Self::words`]).
    pub fn holding(&self) -> bool {
        matches!(self.state, State::Speaking { held: Some(_), .. })
    }

    /// The held speech's interim `transcript`: with enough words besides backchannels it
    /// interrupts the agent now.
    pub fn words(&mut self, transcript: &str) -> Option<TurnEvent> {
        let needed = self.config.interruption_words.as_ref()?;
        let State::Speaking { held, barged, .. } = &mut self.state else {
            return None;
        };
        if held.is_none() || needed.backchannels.words_besides(transcript) < needed.min_words {
            return None;
        }
        *held = None;
        *barged = true;
        Some(TurnEvent::BargeIn)
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

    /// The announcement of pause `pause`, asking the model or not.
    fn paused(pause: u64, ask: bool) -> TurnEvent {
        TurnEvent::Pause { pause, ask }
    }

    fn run(e: &mut Endpointer, pattern: &[(f32, usize)], agent: bool) -> Vec<(usize, TurnEvent)> {
        let mut out = Vec::new();
        let mut i = 0;
        for (p, n) in pattern {
            for _ in 0..*n {
                let chunk = Chunk {
                    probability: *p,
                    length: CHUNK,
                    quiet_tail: Duration::ZERO,
                };
                if let Some(ev) = e.push(chunk, agent) {
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
                        silence: CHUNK * 10,
                        pause: None,
                        overheard: false,
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
    fn speech_begun_over_the_agent_is_a_turn_once_the_agent_falls_silent() {
        // The caller starts answering 64 ms before the agent's last word ends: too soon to
        // interrupt, and their words are still their turn.
        let mut e = Endpointer::new(TurnTaking::default());
        let mut ev = run(&mut e, &[(0.9, 2)], true);
        ev.extend(run(&mut e, &[(0.9, 15), (0.0, 10)], false));
        assert_eq!(ev.len(), 2, "{ev:?}");
        assert!(
            matches!(
                ev[1].1,
                TurnEvent::EndOfTurn {
                    overheard: false,
                    ..
                }
            ),
            "{ev:?}"
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

    fn with_words(min_words: usize) -> TurnTaking {
        TurnTaking {
            interruption_words: Some(InterruptionWords {
                min_words,
                max_wait: Duration::from_millis(1000),
                backchannels: Backchannels::default(),
            }),
            ..TurnTaking::default()
        }
    }

    #[test]
    fn speech_over_the_agent_waits_for_words_and_a_backchannel_never_interrupts() {
        let mut e = Endpointer::new(with_words(1));
        // "Okay" over the agent: long enough to interrupt on its own, but its words are a
        // backchannel. It is held, still turns into a (held) end of turn for the
        // conversation to check, and never barges in.
        let mut ev = run(&mut e, &[(0.9, 12)], true);
        assert!(e.holding(), "held for its words: {ev:?}");
        assert_eq!(e.words("Okay."), None);
        assert_eq!(e.words("(coughs) Mm-hm, okay"), None);
        ev.extend(run(&mut e, &[(0.0, 10)], true));
        assert_eq!(ev.len(), 2, "{ev:?}");
        assert!(
            matches!(
                ev[1].1,
                TurnEvent::EndOfTurn {
                    overheard: true,
                    pause: None,
                    ..
                }
            ),
            "{ev:?}"
        );
        assert!(!e.holding(), "the hold ends with the utterance");
        assert_eq!(e.words("Stop"), None, "no speech, nothing to interrupt");
    }

    #[test]
    fn hums_spelt_out_and_a_plural_s_are_not_words_of_an_interruption() {
        let b = Backchannels::default();
        for sound in ["HN.", "Mmh", "shh!", "Hm-hm", "tsk, tsk"] {
            assert_eq!(b.words_besides(sound), 0, "{sound}");
            assert!(b.only(sound), "{sound}");
        }
        assert!(b.only("Rights."), "STT's plural of a backchannel");
        assert!(b.only("Okays, yeah"));
        // Words keep counting: with a vowel, as digits, or a plural of nothing listed.
        assert_eq!(b.words_besides("Why"), 1);
        assert_eq!(b.words_besides("Press 5"), 2);
        assert_eq!(b.words_besides("Hm, stop"), 1);
        assert_eq!(b.words_besides("Mma"), 1);
        assert_eq!(b.words_besides("B"), 1, "a letter spelt out");
        assert_eq!(b.words_besides("rightss"), 1);
        assert!(!b.only(""), "no sound at all is not a backchannel");
    }

    #[test]
    fn words_in_the_interim_transcript_interrupt_at_once_and_only_once() {
        let mut e = Endpointer::new(with_words(2));
        let ev = run(&mut e, &[(0.9, 8)], true);
        assert_eq!(ev, vec![(0, TurnEvent::SpeechStarted)]);
        assert_eq!(e.words("Okay, wait"), None, "one word of two");
        assert_eq!(e.words("Okay, wait, stop"), Some(TurnEvent::BargeIn));
        assert!(!e.holding());
        assert_eq!(e.words("Okay, wait, stop that"), None, "once");
        let ev = run(&mut e, &[(0.9, 4), (0.0, 10)], true);
        assert!(
            matches!(
                ev[..],
                [(
                    _,
                    TurnEvent::EndOfTurn {
                        overheard: false,
                        ..
                    }
                )]
            ),
            "an interruption is a turn like any: {ev:?}"
        );
    }

    #[test]
    fn held_speech_interrupts_anyway_when_its_words_are_late() {
        let mut e = Endpointer::new(with_words(1));
        // Held at 224 ms of speech; 1000 ms more of it (32 chunks) interrupts without words.
        let ev = run(&mut e, &[(0.9, 7 + 30)], true);
        assert_eq!(ev, vec![(0, TurnEvent::SpeechStarted)]);
        let ev = run(&mut e, &[(0.9, 3)], true);
        assert_eq!(
            ev.iter().map(|e| e.1).collect::<Vec<_>>(),
            [TurnEvent::BargeIn]
        );
        // Once the reply is over, held speech stops nothing: it ends as held, to be judged
        // on its transcript.
        let mut e = Endpointer::new(with_words(1));
        run(&mut e, &[(0.9, 8)], true);
        let ev = run(&mut e, &[(0.9, 60), (0.0, 10)], false);
        assert!(
            matches!(
                ev[..],
                [(
                    _,
                    TurnEvent::EndOfTurn {
                        overheard: true,
                        ..
                    }
                )]
            ),
            "{ev:?}"
        );
    }

    #[test]
    fn a_pause_leaves_the_words_open_but_keeps_what_the_voice_said() {
        assert_eq!(
            open_words(" I'd like a pizza with. "),
            "I'd like a pizza with"
        );
        assert_eq!(open_words("Can you repeat that?"), "Can you repeat that?");
        assert_eq!(open_words("I need eggs,"), "I need eggs,");
        assert_eq!(
            open_words("Um, I was wondering if..."),
            "Um, I was wondering if..."
        );
        assert_eq!(open_words("."), "");
        assert_eq!(open_words(""), "");
    }

    #[test]
    fn held_speech_is_not_judged_by_the_model_and_ends_on_the_plain_silence() {
        let mut e = Endpointer::new(TurnTaking {
            speculate_after: Some(Duration::from_millis(100)),
            ..with_words(1)
        });
        let ev = run(&mut e, &[(0.9, 10), (0.0, 10)], true);
        assert_eq!(ev.len(), 2, "no pause announced: {ev:?}");
        assert!(
            matches!(
                ev[1],
                (
                    19,
                    TurnEvent::EndOfTurn {
                        overheard: true,
                        ..
                    }
                )
            ),
            "{ev:?}"
        );
        // Without the agent talking the same speech is an ordinary turn with its pause.
        let ev = run(&mut e, &[(0.9, 10), (0.0, 10)], false);
        assert!(
            ev.iter().any(|e| matches!(e.1, TurnEvent::Pause { .. })),
            "{ev:?}"
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
        // The model is asked as soon as the VAD notices the pause; 200 ms of silence is the
        // 7th silent chunk (224 ms), where the pause is announced, and the plain 300 ms
        // silence no longer ends the turn by itself.
        assert_eq!(
            ev,
            vec![
                (0, TurnEvent::SpeechStarted),
                (20, TurnEvent::Judge(0)),
                (26, paused(0, false))
            ]
        );
        assert_eq!(
            e.verdict(0, true),
            Some(TurnEvent::EndOfTurn {
                speech: CHUNK * 20,
                silence: CHUNK * 7,
                pause: Some(0),
                overheard: false,
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
        assert_eq!(ev.last(), Some(&(26, paused(0, false))));
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
                    silence: CHUNK * 63,
                    pause: Some(0),
                    overheard: false,
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
            vec![(10, TurnEvent::Judge(1)), (16, paused(1, false))],
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
    fn an_answer_before_the_minimum_silence_ends_the_turn_as_the_pause_reaches_it() {
        let mut e = Endpointer::new(semantic());
        let ev = run(&mut e, &[(0.9, 20), (0.05, 2)], false);
        assert_eq!(ev.last(), Some(&(20, TurnEvent::Judge(0))));
        // "Complete" after 64 ms of silence: too soon to end the turn (a breath is that long)...
        assert_eq!(e.verdict(0, true), None);
        assert!(e.in_speech());
        // ...so it ends as the pause reaches 200 ms (the 7th silent chunk), with no pause
        // announced: no speculative reply started for a turn already decided.
        let ev = run(&mut e, &[(0.05, 6)], false);
        assert_eq!(
            ev,
            vec![(
                4,
                TurnEvent::EndOfTurn {
                    speech: CHUNK * 20,
                    silence: CHUNK * 7,
                    pause: None,
                    overheard: false,
                }
            )]
        );
        // An early "complete" is forgotten when the caller goes on: the next pause waits for
        // its own answer and, without one, for the maximum silence.
        let mut e = Endpointer::new(semantic());
        run(&mut e, &[(0.9, 20), (0.05, 2)], false);
        assert_eq!(e.verdict(0, true), None);
        let ev = run(&mut e, &[(0.9, 5), (0.05, 30)], false);
        assert_eq!(ev, vec![(5, TurnEvent::Judge(1)), (11, paused(1, false))]);
        assert!(e.in_speech());
        assert_eq!(e.verdict(0, true), None, "about the earlier pause");
        assert!(e.in_speech());
    }

    #[test]
    fn a_pause_noticed_past_the_minimum_silence_is_announced_and_asked_at_once() {
        // The VAD calls the voice's quiet end speech for a while: when it drops, the pause is
        // already 224 ms long. One event: the pause, which the call asks the model about.
        let mut e = Endpointer::new(semantic());
        let heard = |probability, quiet_ms| Chunk {
            probability,
            length: CHUNK,
            quiet_tail: Duration::from_millis(quiet_ms),
        };
        let mut events = Vec::new();
        for _ in 0..20 {
            events.extend(e.push(heard(0.9, 0), false));
        }
        for _ in 0..6 {
            events.extend(e.push(heard(0.9, 32), false));
        }
        events.extend(e.push(heard(0.05, 32), false));
        assert_eq!(events, vec![TurnEvent::SpeechStarted, paused(0, true)]);
        assert_eq!(e.silence(), CHUNK * 7);
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

    /// Like `run`, with each chunk's quiet tail: (probability, quiet tail, chunks).
    fn run_heard(
        e: &mut Endpointer,
        pattern: &[(f32, Duration, usize)],
    ) -> Vec<(usize, TurnEvent)> {
        let mut out = Vec::new();
        let mut i = 0;
        for &(probability, quiet_tail, n) in pattern {
            for _ in 0..n {
                let chunk = Chunk {
                    probability,
                    length: CHUNK,
                    quiet_tail,
                };
                if let Some(ev) = e.push(chunk, false) {
                    out.push((i, ev));
                }
                i += 1;
            }
        }
        out
    }

    #[test]
    fn silence_counts_from_the_last_loud_sample_not_from_the_vads_late_drop() {
        let mut e = Endpointer::new(TurnTaking::default());
        let tail = Duration::from_millis(12);
        // 20 chunks of voice, the last ending 12 ms before its end; Silero goes on saying
        // "speech" for 3 quiet chunks, then drops.
        let ev = run_heard(
            &mut e,
            &[
                (0.9, Duration::ZERO, 19),
                (0.9, tail, 1),
                (0.9, CHUNK, 3),
                (0.05, CHUNK, 20),
            ],
        );
        // 300 ms of real silence: 12 ms + 3 lagging chunks + 6 chunks the VAD calls silence
        // (300 ms reached at 12 + 9 * 32 = 300 ms), at index 28, not 32.
        assert_eq!(
            ev,
            vec![
                (0, TurnEvent::SpeechStarted),
                (
                    28,
                    TurnEvent::EndOfTurn {
                        speech: CHUNK * 20 - tail,
                        silence: tail + CHUNK * 9,
                        pause: None,
                        overheard: false,
                    }
                )
            ]
        );
    }

    #[test]
    fn a_quiet_stretch_inside_a_word_is_speech_when_the_voice_goes_on() {
        let mut e = Endpointer::new(TurnTaking::default());
        // "what t|ime": a quiet closure the VAD rightly calls speech, then more voice, then
        // the VAD drops at once: only the last chunk's own quiet tail is silence.
        let tail = Duration::from_millis(5);
        let ev = run_heard(
            &mut e,
            &[
                (0.9, Duration::ZERO, 10),
                (0.9, CHUNK, 2),
                (0.9, tail, 8),
                (0.05, CHUNK, 20),
            ],
        );
        assert_eq!(
            ev.last(),
            Some(&(
                29,
                TurnEvent::EndOfTurn {
                    speech: CHUNK * 20 - tail,
                    silence: tail + CHUNK * 10,
                    pause: None,
                    overheard: false,
                }
            ))
        );
    }

    #[test]
    fn the_quiet_before_the_vads_drop_never_swallows_the_whole_utterance() {
        let mut e = Endpointer::new(TurnTaking::default());
        // A chunk the VAD calls speech with nothing loud in it (a low hum): it stays a
        // noise to discard, not a turn with no speech.
        let ev = run_heard(&mut e, &[(0.9, CHUNK, 6), (0.05, CHUNK, 20)]);
        assert_eq!(
            ev,
            vec![(0, TurnEvent::SpeechStarted), (10, TurnEvent::Discarded)]
        );
    }

    #[test]
    fn the_quiet_meter_finds_the_voices_last_sample_and_learns_the_lines_noise() {
        let mut meter = QuietMeter::new();
        let mut chunk = vec![0.0f32; 512];
        chunk[..300].fill(0.2);
        assert_eq!(
            meter.quiet_tail(&chunk, 0.9),
            212,
            "digital silence after the voice"
        );
        assert_eq!(meter.quiet_tail(&[0.0; 512], 0.9), 512);
        assert_eq!(meter.quiet_tail(&[0.3; 512], 0.9), 0);
        // A hissy line (RMS 0.01, peaks 0.03) is learnt from chunks the VAD calls silence...
        let hiss: Vec<f32> = (0..512)
            .map(|i| if i % 9 == 0 { 0.03 } else { 0.008 } * if i % 2 == 0 { 1.0 } else { -1.0 })
            .collect();
        assert_eq!(
            meter.quiet_tail(&hiss, 0.9),
            0,
            "unknown noise looks like voice"
        );
        for _ in 0..20 {
            meter.quiet_tail(&hiss, 0.01);
        }
        // ...after which it is quiet, while the voice over it is still loud.
        assert_eq!(meter.quiet_tail(&hiss, 0.9), 512);
        let mut voice = hiss.clone();
        voice[..100].fill(0.2);
        assert_eq!(meter.quiet_tail(&voice, 0.9), 412);
        // Speech the VAD missed does not teach the meter that speech is noise.
        let level = meter.level();
        meter.quiet_tail(&[0.3; 512], 0.1);
        assert!(meter.level() < 0.2, "{} -> {}", level, meter.level());
    }

    #[test]
    fn without_a_model_a_pause_is_announced_for_a_speculative_reply_and_silence_still_decides() {
        let mut e = Endpointer::new(TurnTaking {
            speculate_after: Some(Duration::from_millis(200)),
            ..TurnTaking::default()
        });
        // The caller pauses past 200 ms, then goes on: the announced pause is over.
        let ev = run(&mut e, &[(0.9, 20), (0.05, 7)], false);
        assert_eq!(ev.last(), Some(&(26, paused(0, false))));
        let ev = run(&mut e, &[(0.9, 5)], false);
        assert!(ev.is_empty());
        assert_eq!(e.pause_id(), 1, "speech moved past the announced pause");
        // The next pause is announced, and 300 ms of silence ends the turn in it.
        let ev = run(&mut e, &[(0.05, 10)], false);
        assert_eq!(
            ev,
            vec![
                (6, paused(1, false)),
                (
                    9,
                    TurnEvent::EndOfTurn {
                        speech: CHUNK * 32,
                        silence: CHUNK * 10,
                        pause: Some(1),
                        overheard: false,
                    }
                )
            ]
        );
        assert_eq!(e.pause_id(), 2);
        // Noise is never announced.
        let ev = run(&mut e, &[(0.9, 2), (0.0, 12)], false);
        assert!(
            !ev.iter().any(|(_, e)| matches!(e, TurnEvent::Pause { .. })),
            "{ev:?}"
        );
    }

    #[test]
    fn backchannels_are_recognised_only_when_nothing_else_is_said() {
        let list: Vec<String> = DEFAULT_BACKCHANNELS.iter().map(|s| s.to_string()).collect();
        for said in [
            "Okay.",
            "Uh-huh.",
            "uh huh",
            "Yeah, right.",
            "Mm-hm, okay, got it.",
        ] {
            assert!(only_backchannels(said, &list), "{said}");
        }
        for said in [
            "",
            "...",
            "Okay, but what about Sunday?",
            "No.",
            "Right now please.",
            "I see a problem.",
        ] {
            assert!(!only_backchannels(said, &list), "{said}");
        }
        assert!(!only_backchannels("Okay.", &[]), "an empty list has none");
    }

    #[test]
    fn words_besides_backchannels_leave_out_backchannels_and_described_sounds() {
        let list: Vec<String> = DEFAULT_BACKCHANNELS.iter().map(|s| s.to_string()).collect();
        for (said, words) in [
            ("Okay.", 0),
            ("uh huh, right", 0),
            ("(coughing)", 0),
            ("[BLANK_AUDIO]", 0),
            ("*clears throat* okay", 0),
            ("Okay, wait", 1),
            ("Wait, stop, that's not what I asked.", 7),
            ("(coughs) No.", 1),
            ("Hold on (unclear", 2),
        ] {
            assert_eq!(words_besides_backchannels(said, &list), words, "{said}");
        }
        assert!(
            !only_backchannels("(coughs)", &list),
            "a sound is not a backchannel"
        );
    }

    #[test]
    fn a_short_sound_over_the_agent_does_not_interrupt_on_the_vads_lag_and_an_interruption_is_always_a_turn()
     {
        let mut e = Endpointer::new(TurnTaking::default());
        let over = |e: &mut Endpointer, p: f32, quiet: Duration| {
            e.push(
                Chunk {
                    probability: p,
                    length: CHUNK,
                    quiet_tail: quiet,
                },
                true,
            )
        };
        // 4 loud chunks (128 ms), then 3 quiet ones the VAD still calls speech: 224 ms of
        // "speech", but only 128 ms of voice.
        let mut events = Vec::new();
        for _ in 0..4 {
            events.extend(over(&mut e, 0.9, Duration::ZERO));
        }
        for _ in 0..3 {
            events.extend(over(&mut e, 0.9, CHUNK));
        }
        for _ in 0..12 {
            events.extend(over(&mut e, 0.05, CHUNK));
        }
        assert_eq!(events, vec![TurnEvent::SpeechStarted, TurnEvent::Discarded]);
        // 7 loud chunks interrupt at 224 ms, and the interruption is a turn.
        let mut events = Vec::new();
        for _ in 0..7 {
            events.extend(over(&mut e, 0.9, Duration::ZERO));
        }
        for _ in 0..12 {
            events.extend(over(&mut e, 0.05, CHUNK));
        }
        assert_eq!(events[..2], [TurnEvent::SpeechStarted, TurnEvent::BargeIn]);
        assert!(
            matches!(events.last(), Some(TurnEvent::EndOfTurn { .. })),
            "{events:?}"
        );
    }
}
