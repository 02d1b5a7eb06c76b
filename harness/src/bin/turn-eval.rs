//! Turn-taking evaluation: how often the agent cuts a caller off, how long it waits after a
//! caller finished, and whether it stops talking for a backchannel or keeps talking over a
//! real interruption.
//!
//! The set is built here, from the Piper voice and espeak-ng, squeezed through the 8 kHz
//! mu-law phone line as Twilio carries it:
//!
//! * **paused**: sentences with mid-sentence pauses of 0.5-1 s (phone numbers, addresses,
//!   lists, "um, I was wondering if..."): ending the turn in a pause is a premature cut-off;
//! * **complete**: short complete answers and questions ("Yes.", "No thanks."): the
//!   end-of-turn delay is from the voice's end to the decision that the turn is over;
//! * **backchannel**: "uh-huh", "okay", "right", a cough, heard while the agent talks: a
//!   barge-in is a false one;
//! * **interruption**: "Wait, stop...", heard while the agent talks: no barge-in is a missed one.
//!
//! Each case runs through the agent's own turn-taking code (Silero VAD, the quiet meter, the
//! endpointer and, for the semantic modes, Smart Turn v3.2), chunk by chunk on a virtual
//! clock: a Smart Turn judgement's answer arrives as many ms of audio later as the judgement
//! really took on this machine. So the figures are the agent's decisions, without network or
//! model servers.
//!
//! The modes whose interruptions need words (`minInterruptionWords`, with streaming STT)
//! stream the speech over the agent through Whisper as `grokcast-serve`'s Riva service does
//! (the same decode policy, the same model as the demo): each interim transcript arrives as
//! much audio later as its decode took, and speech that ends while held for its words is
//! judged on its final transcript, as the agent does.
//!
//! `cargo run --release -p grokcast-harness --bin turn-eval` (after `scripts/install.sh`;
//! docs/benchmarks.md has the figures).

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Parser;
use grokcast_agent::backend::Llm as _;
use grokcast_agent::backend::openai::OpenAiLlm;
use grokcast_agent::backend::sure_text;
use grokcast_agent::call::HEARD_SLACK;
use grokcast_agent::config::{DEFAULT_LLM_END_OF_TURN_THRESHOLD, Persona};
use grokcast_agent::conversation::Conversation;
use grokcast_agent::turn::{
    Backchannels, Chunk, END_OF_TURN_PROBABILITY, Endpointer, InterruptionWords, QuietMeter,
    SemanticEndpointing, TurnEvent, TurnTaking,
};
use grokcast_agent::{codec, resample::StreamResampler};
use grokcast_engines::models::{ModelPaths, init_onnxruntime};
use grokcast_engines::smart_turn::{self, SmartTurn};
use grokcast_engines::stt::WhisperStt;
use grokcast_engines::stt_stream::{LineEncoding, Policy, Utterance};
use grokcast_engines::vad::{CHUNK_SAMPLES, SileroVad};
use grokcast_harness::{caller, demo};

#[derive(Parser)]
#[command(about = "Premature cut-offs, end-of-turn delay and barge-in errors on a built set")]
struct Args {
    /// Print every case's outcome.
    #[arg(long)]
    verbose: bool,
    /// An OpenAI-compatible LLM server (`grokcast-serve-llm`, vLLM) at this base URL, e.g.
    /// `http://127.0.0.1:8081/v1`: adds the modes where the LLM judges the caller's words.
    #[arg(long)]
    llm_url: Option<String>,
    /// The model the LLM server serves.
    #[arg(long, default_value = "gemma-3-270m")]
    llm_model: String,
    /// `turnTaking.llmEndOfTurnThreshold` for the LLM modes; more than one (comma-separated)
    /// adds an `--assume-llm-ms` row for each.
    #[arg(long, value_delimiter = ',', default_values_t = [DEFAULT_LLM_END_OF_TURN_THRESHOLD])]
    llm_threshold: Vec<f32>,
    /// Also run the LLM mode with each judgement taking this many ms instead of what it took
    /// here (the same answers, timed as on a GPU pool).
    #[arg(long)]
    assume_llm_ms: Option<u64>,
    /// With `--assume-llm-ms`: also run those modes with each Whisper decode taking this many
    /// ms instead of what it took here (the same decoder, timed as on a GPU STT pool: a faster
    /// decoder also decodes more often, as the service's policy asks, so the interims are the
    /// ones such a pool would send).
    #[arg(long)]
    assume_stt_ms: Option<u64>,
    /// Write the set to this directory (`cases.json` and one 16 kHz WAV a case, as the agent
    /// hears them) and stop, for other turn-taking code to run on the same audio
    /// (`harness/pipecat/turn_eval.py`).
    #[arg(long)]
    export: Option<std::path::PathBuf>,
}

/// The LLM pool judging the caller's words at a pause, as the agent asks it: after the
/// agent's default persona and greeting, through the agent's own HTTP client.
struct WordsJudge {
    runtime: tokio::runtime::Runtime,
    llm: OpenAiLlm,
    conversation: Conversation,
    /// The answers already given, by words, with the time they took: a mode that replays
    /// them at another timing asks nothing twice.
    answers: std::cell::RefCell<std::collections::HashMap<String, (f32, Duration)>>,
}

impl WordsJudge {
    fn new(url: &str, model: &str) -> anyhow::Result<Self> {
        let persona = Persona::default();
        let mut conversation = Conversation::new(&persona.system_prompt);
        conversation.agent(&persona.greeting);
        Ok(Self {
            runtime: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?,
            llm: OpenAiLlm::new(url, model, 0.0, 1, Duration::from_secs(10)),
            conversation,
            answers: Default::default(),
        })
    }

    /// How likely `words` end the turn, and how long the LLM took to say.
    fn judge(&self, words: &str) -> anyhow::Result<(f32, Duration)> {
        let Some(messages) = self.conversation.judging(words) else {
            return Ok((1.0, Duration::ZERO));
        };
        if let Some(&answer) = self.answers.borrow().get(words) {
            return Ok(answer);
        }
        let started = Instant::now();
        let p = self
            .runtime
            .block_on(self.llm.turn_end_probability(messages))?;
        let took = started.elapsed();
        self.answers
            .borrow_mut()
            .insert(words.to_owned(), (p, took));
        Ok((p, took))
    }
}

/// 16 kHz samples per ms.
const PER_MS: usize = 16;
const CHUNK: Duration = Duration::from_millis(32);

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Paused,
    Complete,
    Backchannel,
    Interruption,
}

/// What the caller says, as pieces of speech each with the pause (ms) before it.
type Script = (Kind, Vec<(u64, &'static str)>);

fn scripts() -> Vec<Script> {
    let paused = |pieces: &[(u64, &'static str)]| (Kind::Paused, pieces.to_vec());
    let one = |kind: Kind, text: &'static str| (kind, vec![(0, text)]);
    let mut out = vec![
        paused(&[
            (0, "My number is five five five"),
            (700, "one two three four."),
        ]),
        paused(&[
            (0, "I live at forty two"),
            (600, "Baker Street, in Springfield."),
        ]),
        paused(&[
            (0, "I'd like a pizza with"),
            (800, "mushrooms, olives and peppers."),
        ]),
        paused(&[(0, "Can I book a table for"), (700, "four people tonight?")]),
        paused(&[
            (0, "Um, I was wondering if"),
            (900, "you are open on Sunday?"),
        ]),
        paused(&[(0, "The order number is"), (800, "A B seven seven nine.")]),
        paused(&[
            (0, "I need to change my appointment to"),
            (600, "Friday morning."),
        ]),
        paused(&[
            (0, "So what I want is"),
            (1000, "a refund for the blue jacket."),
        ]),
        paused(&[(0, "My email is john"), (700, "at example dot com.")]),
        paused(&[
            (0, "I need eggs,"),
            (600, "milk,"),
            (600, "and some bread."),
        ]),
    ];
    for text in [
        "Yes.",
        "No thanks.",
        "Okay, that works for me.",
        "Sure.",
        "That's all, thank you.",
        "What time do you open tomorrow?",
        "Can you repeat that?",
        "I'd like to speak to a manager.",
        "No.",
        "Perfect, goodbye.",
    ] {
        out.push(one(Kind::Complete, text));
    }
    for text in ["Uh-huh.", "Okay.", "Right.", "Mm-hm.", "Yeah.", "Hm."] {
        out.push(one(Kind::Backchannel, text));
    }
    for text in [
        "Wait, stop, that's not what I asked.",
        "Sorry, can you say that again?",
        "No, I said Tuesday, not Thursday.",
        "Hold on a second.",
        "Actually, I want to cancel my order.",
    ] {
        out.push(one(Kind::Interruption, text));
    }
    out
}

/// One case as heard by the agent.
struct Case {
    name: String,
    kind: Kind,
    /// 16 kHz, after the line and the upsampler.
    audio: Vec<f32>,
    /// Where each piece of voice starts and ends, in samples of `audio`.
    voice: Vec<(usize, usize)>,
}

fn build(voice: &str, kind: Kind, pieces: &[(u64, &str)]) -> anyhow::Result<Case> {
    let lead_in = 300 * 8;
    let mut line = vec![codec::encode_sample(0); lead_in];
    let mut spans8k = Vec::new();
    for (pause, text) in pieces {
        line.resize(line.len() + *pause as usize * 8, codec::encode_sample(0));
        let said = speak(voice, text)?;
        spans8k.push((line.len(), line.len() + said.len()));
        line.extend_from_slice(&said);
    }
    // Long enough for the longest wait (2 s) to run out.
    line.resize(line.len() + 3000 * 8, codec::encode_sample(0));
    let mut pcm = vec![0f32; line.len()];
    codec::decode_into(&line, &mut pcm);
    let mut upsampler = StreamResampler::new(8000, 16_000)?;
    let delay = upsampler.output_delay();
    let mut audio = Vec::with_capacity(pcm.len() * 2);
    upsampler.push(&pcm, &mut |s| audio.extend_from_slice(s))?;
    let voice_spans = spans8k
        .iter()
        .map(|&(a, b)| (a * 2 + delay, b * 2 + delay))
        .collect();
    let text: Vec<&str> = pieces.iter().map(|(_, t)| *t).collect();
    Ok(Case {
        name: format!("{voice}: {}", text.join(" … ")),
        kind,
        audio,
        voice: voice_spans,
    })
}

/// Writes `cases` to `dir`: each case's audio as a 16-bit 16 kHz WAV and, in `cases.json`,
/// its name, voice, kind and where each piece of voice starts and ends (samples).
fn export(dir: &std::path::Path, cases: &[Case]) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: 16_000,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut listed = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        let wav = format!("case-{i:02}.wav");
        let mut writer = hound::WavWriter::create(dir.join(&wav), spec)?;
        for &sample in &case.audio {
            writer.write_sample((sample.clamp(-1.0, 1.0) * 32767.0) as i16)?;
        }
        writer.finalize()?;
        let kind = match case.kind {
            Kind::Paused => "paused",
            Kind::Complete => "complete",
            Kind::Backchannel => "backchannel",
            Kind::Interruption => "interruption",
        };
        listed.push(serde_json::json!({
            "name": case.name,
            "voice": case.name.split(':').next().unwrap_or_default(),
            "kind": kind,
            "wav": wav,
            "voice_spans": case.voice,
        }));
    }
    let index = serde_json::json!({"sample_rate": 16_000, "cases": listed});
    std::fs::write(dir.join("cases.json"), serde_json::to_vec_pretty(&index)?)?;
    Ok(())
}

fn speak(voice: &str, text: &str) -> anyhow::Result<Vec<u8>> {
    Ok(match voice {
        "piper" => demo::caller_voice(&[text.to_owned()])?
            .pop()
            .map(|a| a.as_ref().clone())
            .context("no audio")?,
        _ => caller::espeak_audio(text)?,
    })
}

/// One way of ending turns.
struct Mode {
    name: &'static str,
    turn_taking: TurnTaking,
    /// The LLM judges the words at pauses (streamed through Whisper) instead of Smart Turn
    /// judging the audio.
    words: bool,
    /// With `words`: count each judgement as taking this long, not what it took here.
    assume_llm: Option<Duration>,
    /// Count each Whisper decode as taking this long, not what it took here.
    assume_stt: Option<Duration>,
    /// With `words`: `llmEndOfTurnThreshold`.
    threshold: f32,
}

/// What one case did.
#[derive(Default, Debug)]
struct Outcome {
    /// Decision times (samples) of each end of turn.
    ends: Vec<usize>,
    barge_ins: Vec<usize>,
    judgements: Vec<Duration>,
    /// Pauses announced (where a speculative reply would start).
    announced: usize,
    /// Turns that ended in an announced pause (a speculative reply begun there is used).
    hits: usize,
    /// What streaming STT heard of speech held for its words (interim, or final at its end).
    heard: Option<String>,
    /// What the LLM judged at each pause: the words and its probability of the turn's end.
    judged: Vec<(String, f32)>,
}

/// Speech over the agent streamed to Whisper on the virtual clock, as the Riva service
/// decodes it: on every step of new audio and at every pause after voice.
struct Listening {
    utterance: Utterance,
    /// Each decode counted as taking this long instead of what it took.
    assume: Option<Duration>,
    /// How much the last decode started with took.
    attempted: usize,
    /// A decode's text, the sample it arrives at, and the samples it heard.
    running: Option<(Heard, usize, usize)>,
    /// The latest interim transcript.
    interim: String,
    /// Its words up to the last one Whisper was sure of (the end-of-turn judge reads both).
    interim_sure: String,
    /// The samples the latest interim transcript heard.
    interim_heard: usize,
}

impl Listening {
    fn new(assume: Option<Duration>) -> anyhow::Result<Self> {
        Ok(Self {
            utterance: Utterance::new(LineEncoding::Linear16, 16_000)?,
            assume,
            attempted: 0,
            running: None,
            interim: String::new(),
            interim_sure: String::new(),
            interim_heard: 0,
        })
    }

    fn push(&mut self, samples: &[f32]) {
        let mut bytes = Vec::with_capacity(samples.len() * 2);
        grokcast_engines::audio::push_s16le(&mut bytes, samples);
        self.utterance.push(&bytes);
    }

    /// Advances to sample `now`: a decode due by then gives its interim, and a new one
    /// starts when the policy asks.
    fn tick(&mut self, now: usize, whisper: &WhisperStt) -> anyhow::Result<()> {
        if let Some((_, due, _)) = &self.running
            && *due <= now
        {
            let (decoded, _, heard) = self.running.take().context("checked")?;
            if !decoded.text.is_empty() {
                self.interim = decoded.text;
                self.interim_sure = decoded.sure;
            }
            self.interim_heard = heard;
        }
        if self.running.is_none()
            && Policy::default().should_decode(&self.utterance, self.attempted)
        {
            self.start_decode(now, whisper)?;
        }
        Ok(())
    }

    fn start_decode(&mut self, now: usize, whisper: &WhisperStt) -> anyhow::Result<()> {
        let upto = self.utterance.decode_end();
        self.attempted = upto;
        let (decoded, took) = decode(whisper, &self.utterance.pcm16k(upto))?;
        let took = self.assume.unwrap_or(took);
        self.running = Some((decoded, now + took.as_millis() as usize * PER_MS, upto));
        Ok(())
    }

    /// The transcript that heard the voice up to `voice_end` (samples, less the agent's
    /// slack), and the sample it is ready at, `now` or later: the running decode's, the
    /// latest interim's, or a decode started now.
    fn heard_up_to(
        &mut self,
        voice_end: usize,
        now: usize,
        whisper: &WhisperStt,
    ) -> anyhow::Result<(Heard, usize)> {
        let voice_end = voice_end.saturating_sub(HEARD_SLACK.as_millis() as usize * PER_MS);
        if self.interim_heard >= voice_end {
            let heard = Heard {
                text: self.interim.clone(),
                sure: self.interim_sure.clone(),
            };
            return Ok((heard, now));
        }
        if !matches!(&self.running, Some((_, _, heard)) if *heard >= voice_end) {
            self.start_decode(now, whisper)?;
        }
        let (heard, due, _) = self.running.clone().context("a decode runs")?;
        Ok((heard, due.max(now)))
    }

    /// The final transcript of everything heard, and how long it took.
    fn finish(&self, whisper: &WhisperStt) -> anyhow::Result<(String, Duration)> {
        let (decoded, took) = decode(whisper, &self.utterance.pcm16k(self.utterance.len()))?;
        Ok((decoded.text, self.assume.unwrap_or(took)))
    }
}

/// One decode: its transcript, and that transcript less the trailing words Whisper was
/// unsure of (`sure_text`; the agent's end-of-turn judge reads both).
#[derive(Clone)]
struct Heard {
    text: String,
    sure: String,
}

fn decode(whisper: &WhisperStt, pcm16k: &[f32]) -> anyhow::Result<(Heard, Duration)> {
    let started = Instant::now();
    let cancel = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let transcript = whisper.transcribe_words(pcm16k, Some("en"), &cancel)?;
    let took = started.elapsed();
    let words: Vec<(String, f32)> = transcript
        .words
        .iter()
        .map(|w| (w.text.clone(), w.confidence))
        .collect();
    let sure = sure_text(&words).unwrap_or_else(|| transcript.text.clone());
    Ok((
        Heard {
            text: transcript.text,
            sure,
        },
        took,
    ))
}

fn run(
    case: &Case,
    mode: &Mode,
    vad: &SileroVad,
    model: Option<&SmartTurn>,
    judge: Option<&WordsJudge>,
    whisper: &WhisperStt,
) -> anyhow::Result<Outcome> {
    let agent_speaking = matches!(case.kind, Kind::Backchannel | Kind::Interruption);
    let words = mode.turn_taking.interruption_words.as_ref();
    // Speech over the agent held for its words needs a transcript, and so does every
    // utterance whose pauses the LLM judges.
    let streams = (agent_speaking && words.is_some()) || judge.is_some();
    let mut listening: Option<Listening> = None;
    let mut state = vad.new_state();
    let mut meter = QuietMeter::new();
    let mut endpointer = Endpointer::new(mode.turn_taking.clone());
    let mut outcome = Outcome::default();
    let mut utterance: Vec<f32> = Vec::new();
    let mut previous: &[f32] = &[];
    // A judgement in flight: (pause, due at sample, complete).
    let mut pending: Option<(u64, usize, bool)> = None;
    for (i, chunk) in case.audio.chunks_exact(CHUNK_SAMPLES).enumerate() {
        let start = i * CHUNK_SAMPLES;
        let end = start + CHUNK_SAMPLES;
        if let Some((pause, due, complete)) = pending
            && due <= start
        {
            pending = None;
            if let Some(TurnEvent::EndOfTurn { pause, .. }) = endpointer.verdict(pause, complete) {
                outcome.ends.push(due);
                outcome.hits += usize::from(pause.is_some());
                utterance.clear();
            }
        }
        let probability = vad.speech_probability(&mut state, chunk)?;
        let tail = meter.quiet_tail(chunk, probability);
        let heard = Chunk {
            probability,
            length: CHUNK,
            quiet_tail: grokcast_engines::audio::duration(tail, 16_000),
        };
        let event = endpointer.push(heard, agent_speaking);
        match event {
            Some(TurnEvent::SpeechStarted) => {
                utterance.clear();
                utterance.extend_from_slice(previous);
                if streams {
                    let mut stream = Listening::new(mode.assume_stt)?;
                    stream.push(previous);
                    listening = Some(stream);
                }
            }
            Some(TurnEvent::BargeIn) => outcome.barge_ins.push(end),
            Some(TurnEvent::EndOfTurn {
                pause, overheard, ..
            }) => {
                outcome.ends.push(end);
                outcome.hits += usize::from(pause.is_some());
                pending = None;
                if let (true, Some(mut stream), Some(words)) = (overheard, listening.take(), words)
                {
                    // Held to its end: the final transcript decides, the agent still talking.
                    stream.push(chunk);
                    let (text, took) = stream.finish(whisper)?;
                    outcome.heard = Some(text.clone());
                    if words.backchannels.words_besides(&text) >= words.min_words {
                        outcome
                            .barge_ins
                            .push(end + took.as_millis() as usize * PER_MS);
                    }
                }
            }
            _ => {}
        }
        if let Some(stream) = listening.as_mut()
            && endpointer.in_speech()
        {
            stream.push(chunk);
            stream.tick(end, whisper)?;
            if endpointer.holding() {
                if let Some(TurnEvent::BargeIn) = endpointer.words(&stream.interim) {
                    outcome.barge_ins.push(end);
                }
                outcome.heard = Some(stream.interim.clone());
            }
        }
        if endpointer.in_speech() || matches!(event, Some(TurnEvent::EndOfTurn { .. })) {
            utterance.extend_from_slice(chunk);
        }
        let ask = match event {
            Some(TurnEvent::Judge(pause)) => Some(pause),
            Some(TurnEvent::Pause { pause, ask }) => {
                outcome.announced += 1;
                ask.then_some(pause)
            }
            _ => None,
        };
        if let Some(pause) = ask {
            if let (Some(judge), Some(stream)) = (judge, listening.as_mut()) {
                // The agent reads the streaming transcript that heard the voice up to the
                // pause, then asks the LLM: the answer arrives as much later as both took.
                let voice_end = stream
                    .utterance
                    .len()
                    .saturating_sub(endpointer.silence().as_millis() as usize * PER_MS);
                let (heard, ready) = stream.heard_up_to(voice_end, end, whisper)?;
                // As the agent does: with and without a last word Whisper was unsure of,
                // both asked at once, the lower probability deciding.
                let (mut p, mut took) = judge.judge(&heard.text)?;
                if heard.sure != heard.text {
                    let (sure_p, sure_took) = judge.judge(&heard.sure)?;
                    p = p.min(sure_p);
                    took = took.max(sure_took);
                }
                let text = if heard.sure == heard.text {
                    heard.text
                } else {
                    format!("{} | {}", heard.text, heard.sure)
                };
                let complete = p >= mode.threshold;
                let took = mode.assume_llm.unwrap_or(took);
                let due = ready + took.as_millis() as usize * PER_MS;
                outcome
                    .judgements
                    .push(Duration::from_millis(ms(due - end) as u64));
                outcome.judged.push((text, p));
                pending = Some((pause, due, complete));
            } else if let Some(model) = model {
                let started = Instant::now();
                let heard = smart_turn::heard_at_pause(&utterance, endpointer.silence());
                let p = model.completion_probability(&heard)?;
                let took = started.elapsed();
                outcome.judgements.push(took);
                let due = end + took.as_millis() as usize * PER_MS;
                pending = Some((pause, due, p >= END_OF_TURN_PROBABILITY));
            }
        }
        previous = chunk;
    }
    Ok(outcome)
}

fn ms(samples: usize) -> f64 {
    samples as f64 / PER_MS as f64
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[(((sorted.len() - 1) as f64) * p).round() as usize]
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let paths = ModelPaths::discover()?;
    init_onnxruntime(&paths.onnxruntime()?)?;
    let vad = SileroVad::load(&paths.vad()?)?;
    let model = SmartTurn::load(&paths.smart_turn()?)?;
    let whisper = WhisperStt::load(&paths.whisper()?)?;

    let mut cases = Vec::new();
    for voice in ["piper", "espeak"] {
        for (kind, pieces) in scripts() {
            cases.push(build(voice, kind, &pieces)?);
        }
    }
    if cases.is_empty() {
        bail!("no cases");
    }
    if let Some(dir) = &args.export {
        export(dir, &cases)?;
        println!("{} cases written to {}", cases.len(), dir.display());
        return Ok(());
    }
    // Speculative replies start at 200 ms of silence, where the turn may be over.
    let speculate_at = Duration::from_millis(200);
    let silence = |ms: u64| TurnTaking {
        end_of_turn_silence: Duration::from_millis(ms),
        speculate_after: (Duration::from_millis(ms) > speculate_at).then_some(speculate_at),
        ..TurnTaking::default()
    };
    let semantic = |plain: u64| TurnTaking {
        semantic: Some(SemanticEndpointing {
            min_silence: Duration::from_millis(200),
            max_silence: Duration::from_millis(2000),
        }),
        ..silence(plain)
    };
    let word_needed = Some(InterruptionWords {
        min_words: 1,
        max_wait: Duration::from_millis(1000),
        backchannels: Backchannels::default(),
    });
    let mut modes = vec![
        Mode {
            name: "silence 200 ms",
            turn_taking: silence(200),
            words: false,
            assume_llm: None,
            assume_stt: None,
            threshold: 0.0,
        },
        Mode {
            name: "silence 300 ms (default)",
            turn_taking: silence(300),
            words: false,
            assume_llm: None,
            assume_stt: None,
            threshold: 0.0,
        },
        Mode {
            name: "silence 800 ms",
            turn_taking: silence(800),
            words: false,
            assume_llm: None,
            assume_stt: None,
            threshold: 0.0,
        },
        Mode {
            name: "Smart Turn, min 200 ms, max 2 s",
            turn_taking: semantic(300),
            words: false,
            assume_llm: None,
            assume_stt: None,
            threshold: 0.0,
        },
        Mode {
            name: "silence 300 ms, interruptions need a word (streaming Whisper)",
            turn_taking: TurnTaking {
                interruption_words: word_needed.clone(),
                ..silence(300)
            },
            words: false,
            assume_llm: None,
            assume_stt: None,
            threshold: 0.0,
        },
    ];
    let judge = match &args.llm_url {
        Some(url) => {
            let first = *args
                .llm_threshold
                .first()
                .context("--llm-threshold needs a value")?;
            // A bench binary: the names live as long as the run anyway.
            let name = |text: String| -> &'static str { Box::leak(text.into_boxed_str()) };
            modes.push(Mode {
                name: name(format!(
                    "LLM judges the words, min 200 ms, max 2 s, threshold {first} (streaming Whisper)"
                )),
                turn_taking: semantic(300),
                words: true,
                assume_llm: None,
                assume_stt: None,
                threshold: first,
            });
            modes.push(Mode {
                name: "the same, and interruptions need a word",
                turn_taking: TurnTaking {
                    interruption_words: word_needed.clone(),
                    ..semantic(300)
                },
                words: true,
                assume_llm: None,
                assume_stt: None,
                threshold: first,
            });
            if let Some(ms) = args.assume_llm_ms {
                // Answers timed as on a GPU LLM pool; then also decodes as on a GPU STT pool.
                let decodes = std::iter::once(None).chain(args.assume_stt_ms.map(Some));
                for stt_ms in decodes {
                    for &threshold in &args.llm_threshold {
                        let timing = match stt_ms {
                            None => format!("each answer counted as {ms} ms"),
                            Some(stt) => {
                                format!(
                                    "each answer counted as {ms} ms and each decode as {stt} ms"
                                )
                            }
                        };
                        modes.push(Mode {
                            name: name(format!(
                                "LLM judges the words, {timing}, threshold {threshold}"
                            )),
                            turn_taking: semantic(300),
                            words: true,
                            assume_llm: Some(Duration::from_millis(ms)),
                            assume_stt: stt_ms.map(Duration::from_millis),
                            threshold,
                        });
                    }
                }
            }
            Some(WordsJudge::new(url, &args.llm_model)?)
        }
        None => {
            eprintln!("(no --llm-url: the modes where the LLM judges the words are left out)");
            None
        }
    };
    let count = |k: Kind| cases.iter().filter(|c| c.kind == k).count();
    println!(
        "{} paused sentences, {} complete answers, {} backchannels, {} interruptions (Piper and espeak-ng voices, 8 kHz mu-law); barge-in after {} ms of speech",
        count(Kind::Paused),
        count(Kind::Complete),
        count(Kind::Backchannel),
        count(Kind::Interruption),
        TurnTaking::default().min_barge_in.as_millis(),
    );
    println!();
    println!(
        "| end of turn | premature cut-offs | end-of-turn delay p50 / p95 | false barge-ins | missed barge-ins | barge-in into the voice p50 / p95 | speculative hit rate (at 200 ms) | judgement p50 / p95 |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for mode in &modes {
        let (model, words_judge) = match (mode.words, mode.turn_taking.semantic) {
            (true, _) => (None, judge.as_ref()),
            (false, Some(_)) => (Some(&model), None),
            (false, None) => (None, None),
        };
        let (mut cut_off, mut turns) = (0, 0);
        let (mut false_barge, mut missed_barge) = (0, 0);
        let mut delays = Vec::new();
        let mut barge_delays = Vec::new();
        let mut judgements = Vec::new();
        let (mut announced, mut hits) = (0, 0);
        for case in &cases {
            let outcome = run(case, mode, &vad, model, words_judge, &whisper)?;
            announced += outcome.announced;
            hits += outcome.hits;
            judgements.extend(outcome.judgements.iter().map(|d| d.as_secs_f64() * 1000.0));
            let last_start = case.voice.last().map_or(0, |v| v.0);
            let voice_end = case.voice.last().map_or(0, |v| v.1);
            let verdict = match case.kind {
                Kind::Paused | Kind::Complete => {
                    turns += 1;
                    match outcome.ends.first() {
                        Some(&end) if end < last_start => {
                            cut_off += 1;
                            format!("cut off at {:.0} ms", ms(end))
                        }
                        Some(&end) => {
                            let delay = ms(end.saturating_sub(voice_end));
                            delays.push(delay);
                            format!("ended {delay:.0} ms after the voice")
                        }
                        None => "never ended".into(),
                    }
                }
                Kind::Backchannel => {
                    if outcome.barge_ins.is_empty() {
                        "no barge-in".into()
                    } else {
                        false_barge += 1;
                        "FALSE barge-in".into()
                    }
                }
                Kind::Interruption => match outcome.barge_ins.first() {
                    Some(&at) => {
                        let into = ms(at.saturating_sub(case.voice[0].0));
                        barge_delays.push(into);
                        format!("barge-in {into:.0} ms into the voice")
                    }
                    None => {
                        missed_barge += 1;
                        "MISSED barge-in".into()
                    }
                },
            };
            let verdict = match &outcome.heard {
                Some(text) => format!("{verdict} (heard {text:?})"),
                None => verdict,
            };
            let judged: Vec<String> = outcome
                .judged
                .iter()
                .map(|(text, p)| format!("{text:?} {p:.3}"))
                .collect();
            let verdict = if judged.is_empty() {
                verdict
            } else {
                format!("{verdict} [judged {}]", judged.join(", "))
            };
            if args.verbose {
                eprintln!("{:32} {:60} {verdict}", mode.name, case.name);
            }
        }
        delays.sort_by(f64::total_cmp);
        barge_delays.sort_by(f64::total_cmp);
        judgements.sort_by(f64::total_cmp);
        let judged = if judgements.is_empty() {
            "-".to_owned()
        } else {
            format!(
                "{:.0} / {:.0} ms",
                percentile(&judgements, 0.5),
                percentile(&judgements, 0.95)
            )
        };
        let speculation = if announced == 0 {
            "-".to_owned()
        } else {
            format!(
                "{hits}/{announced} ({:.0}%)",
                100.0 * hits as f64 / announced as f64
            )
        };
        println!(
            "| {} | {}/{} ({:.0}%) | {:.0} / {:.0} ms | {}/{} | {}/{} | {:.0} / {:.0} ms | {speculation} | {judged} |",
            mode.name,
            cut_off,
            turns,
            100.0 * cut_off as f64 / turns.max(1) as f64,
            percentile(&delays, 0.5),
            percentile(&delays, 0.95),
            false_barge,
            count(Kind::Backchannel),
            missed_barge,
            count(Kind::Interruption),
            percentile(&barge_delays, 0.5),
            percentile(&barge_delays, 0.95),
        );
    }
    Ok(())
}
