#!/usr/bin/env python3
"""Pipecat 1.14 turn-taking on GrokCast's turn-eval utterances, offline.

Usage: python3 harness/pipecat/turn_eval.py DIR [--verbose]

DIR is what `turn-eval --export DIR` writes: cases.json plus one 16 kHz mono
16-bit WAV per case. Run it with the venv described in requirements.txt.

What runs, and which Pipecat 1.14.0 code path it mirrors
--------------------------------------------------------
In Pipecat 1.14 the VAD and the turn strategies live in the user aggregator,
`LLMUserAggregator` (pipecat/processors/aggregators/llm_response_universal.py).
For every `InputAudioRawFrame`, its `process_frame` calls, in this order:

  1. `VADController.process_frame` (pipecat/audio/vad/vad_controller.py),
     which runs `VADAnalyzer.analyze_audio` (here `SileroVADAnalyzer`) and, on a
     QUIET<->SPEAKING change, fires `on_speech_started` / `on_speech_stopped`;
     the aggregator's `_on_vad_speech_started` / `_on_vad_speech_stopped` then
     queue a `VADUserStartedSpeakingFrame(start_secs)` /
     `VADUserStoppedSpeakingFrame(stop_secs)` that is processed after the
     audio frame;
  2. `UserTurnController.process_frame` (pipecat/turns/user_turn_controller.py)
     with the same audio frame, which hands it to the start strategies and the
     stop strategies.

This script builds those very objects (VADController, UserTurnController,
UserTurnStrategies, VADUserTurnStartStrategy and the stop strategy of each
mode) and stands in only for the aggregator's frame queue: it calls the two
`process_frame`s in that order for each 20 ms frame, then the queued VAD frame.
The decision is the controller's `on_user_turn_stopped` event (a stop strategy
or the controller's `user_turn_stop_timeout` watchdog, 5 s by default).

Pipecat 1.14 defaults found in the source:
  * `VADParams()` (pipecat/audio/vad/vad_analyzer.py): confidence 0.7,
    start_secs 0.2, stop_secs 0.2 (VAD_STOP_SECS; it was 0.8 in older Pipecat),
    min_volume 0.6.
  * `UserTurnStrategies()` (pipecat/turns/user_turn_strategies.py):
    start [VADUserTurnStartStrategy, TranscriptionUserTurnStartStrategy],
    stop `default_user_turn_stop_strategies()` =
    [TurnAnalyzerUserTurnStopStrategy(turn_analyzer=LocalSmartTurnAnalyzerV3())].
  * `SmartTurnParams()` (pipecat/audio/turn/smart_turn/base_smart_turn.py):
    stop_secs 3 (silence that ends the turn whatever the model said),
    pre_speech_ms 500, max_duration_secs 8; LocalSmartTurnAnalyzerV3 uses the
    bundled smart-turn-v3.2-cpu.onnx on 1 CPU thread, "complete" when p > 0.5.
  * TurnAnalyzerUserTurnStopStrategy
    (pipecat/turns/user_stop/turn_analyzer_user_turn_stop_strategy.py):
    `_handle_vad_user_stopped_speaking` runs `analyze_end_of_turn()` (the model,
    on the turn's audio from 0.5 s + VAD start_secs before the speech started)
    once each time the VAD reports a stop. "complete" ends the turn;
    "incomplete" keeps it open, and `BaseSmartTurn.append_audio` then counts the
    silence (frames the strategy marks not-speech, i.e. after the VAD stop) and
    returns COMPLETE once it reaches SmartTurnParams.stop_secs (3 s), which
    `_handle_input_audio` turns into the end of the turn. Speech again (a new
    VAD start) resets the silence and discards the pending verdict; the next
    VAD stop asks the model again about the whole turn so far.

Rows of the table (each is one stop strategy behind the same VAD/controller glue):
  * VAD alone: SpeechTimeoutUserTurnStopStrategy(user_speech_timeout=0), i.e.
    the turn ends when the VAD reports the user stopped; at stop_secs 0.2 s
    (the 1.14 VADParams default, so modes "0.2 s" and "default" are one row)
    and at 0.8 s (the default of older Pipecat releases), for comparison.
  * SpeechTimeoutUserTurnStopStrategy with its defaults (0.6 s after the VAD
    stop): Pipecat's documented non-model alternative, extra.
  * Pipecat 1.14's default: TurnAnalyzerUserTurnStopStrategy(
    LocalSmartTurnAnalyzerV3()) with Silero VAD at stop_secs 0.2 s.

Deliberate differences from a live Pipecat bot, all in the glue:
  * No STT service, so the stop strategies run with wait_for_transcript=False
    (what `LLMContextAggregatorPair(realtime_service_mode=True)` sets). With the
    default wait_for_transcript=True and an STT service, the turn also waits for
    a finalized transcript or the STT's ttfs_p99_latency after the voice ended,
    so a live bot's delays are these or longer. TranscriptionUserTurnStartStrategy
    is left out for the same reason (no transcripts). Backchannels and
    interruptions are skipped: Pipecat's interruption strategies need an STT.
  * Virtual clock. Frame i (samples [320*i, 320*(i+1)), what Pipecat's Twilio
    serializer delivers at 16 kHz) is processed at the end of its audio, or
    later if the pipeline is still busy. The aggregator awaits
    `analyze_end_of_turn()` inline, so the pipeline is blocked while Smart Turn
    runs: a judgement that took T ms of wall time makes its answer (and every
    frame queued behind it) arrive T ms of audio later. Only Smart Turn
    judgements cost time; the VAD is counted as free. The event loop's clock
    (so asyncio.sleep / wait_for timers inside Pipecat) and the `time.monotonic`
    that BaseSmartTurn stamps its audio buffer with both read this virtual clock.
  * After the WAV's 3 s of trailing silence, digital silence is fed on (up to
    10 s) so the 3 s Smart Turn fallback and the 5 s watchdog can still fire.
  * VADController's audio_idle_timeout (a wall-clock mic-mute guard) is off.
"""

import argparse
import asyncio
import json
import math
import os
import sys
import time
import wave

from loguru import logger

# Pipecat logs every VAD/turn step at DEBUG; keep warnings and errors only.
# (Configured before importing pipecat, whose import logs a banner.)
# The strategies also warn, once per case, that stop_secs 0.8 differs from the
# 0.2 s their STT latency figures assume: no STT here, so that one is dropped.
logger.remove()
logger.add(
    sys.stderr,
    level="WARNING",
    filter=lambda record: "differs from the recommended default" not in record["message"],
)

import numpy as np  # noqa: E402

import pipecat  # noqa: E402
from pipecat.audio.turn.smart_turn import base_smart_turn  # noqa: E402
from pipecat.audio.turn.smart_turn.base_smart_turn import SmartTurnParams  # noqa: E402
from pipecat.audio.turn.smart_turn.local_smart_turn_v3 import LocalSmartTurnAnalyzerV3  # noqa: E402
from pipecat.audio.vad.silero import SileroVADAnalyzer  # noqa: E402
from pipecat.audio.vad.vad_analyzer import VADParams  # noqa: E402
from pipecat.audio.vad.vad_controller import VADController  # noqa: E402
from pipecat.clocks.system_clock import SystemClock  # noqa: E402
from pipecat.frames.frames import (  # noqa: E402
    InputAudioRawFrame,
    VADUserStartedSpeakingFrame,
    VADUserStoppedSpeakingFrame,
)
from pipecat.processors.frame_processor import FrameProcessorSetup  # noqa: E402
from pipecat.turns.user_start import VADUserTurnStartStrategy  # noqa: E402
from pipecat.turns.user_stop import (  # noqa: E402
    SpeechTimeoutUserTurnStopStrategy,
    TurnAnalyzerUserTurnStopStrategy,
)
from pipecat.turns.user_turn_controller import UserTurnController  # noqa: E402
from pipecat.turns.user_turn_strategies import UserTurnStrategies  # noqa: E402
from pipecat.utils.asyncio.task_manager import TaskManager  # noqa: E402

SAMPLE_RATE = 16000
FRAME_SAMPLES = 320  # 20 ms
TAIL_PAD_SECS = 10.0  # digital silence fed after the WAV ends, at most
CLOCK_ORIGIN = 1000.0  # virtual seconds at sample 0 (BaseSmartTurn treats 0 as "unset")
JUDGED_KINDS = ("paused", "complete")


class VirtualClock:
    """Seconds of audio time, advanced by the feeder and by Smart Turn's cost."""

    def __init__(self):
        self.now = CLOCK_ORIGIN

    def samples(self) -> float:
        return (self.now - CLOCK_ORIGIN) * SAMPLE_RATE


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """An event loop whose time() is the virtual clock.

    Pipecat's timers (asyncio.sleep in the stop strategies, wait_for in the
    turn controller's watchdog) are scheduled on loop.time(), so they expire in
    audio time: a timer fires on the first loop pass after the feeder has moved
    the clock past it. The feeder never waits on a timer itself, so the loop
    never sleeps on one in wall time.
    """

    def __init__(self, clock: VirtualClock):
        self._virtual_clock = clock
        super().__init__()

    def time(self) -> float:
        return self._virtual_clock.now


class _TimeShim:
    """Stands in for the `time` module inside base_smart_turn: monotonic() is virtual."""

    def __init__(self, clock: VirtualClock):
        self._clock = clock

    def monotonic(self) -> float:
        return self._clock.now

    def __getattr__(self, name):
        return getattr(time, name)


class Mode:
    def __init__(self, label, vad_stop_secs, kind, smart_turn=False):
        self.label = label
        self.vad_stop_secs = vad_stop_secs
        self.kind = kind  # "vad" | "speech_timeout" | "smart_turn"
        self.smart_turn = smart_turn


def build_modes():
    default_stop = VADParams().stop_secs
    st = SmartTurnParams()
    modes = []
    if abs(default_stop - 0.2) < 1e-9:
        # In 1.14 the VADParams default *is* 0.2 s, so modes (1) and (2) are one row.
        modes.append(Mode("Silero VAD alone, stop_secs 0.2 s (= VADParams default)", 0.2, "vad"))
    else:
        modes.append(Mode("Silero VAD alone, stop_secs 0.2 s", 0.2, "vad"))
        modes.append(
            Mode(f"Silero VAD alone, stop_secs {default_stop:g} s (VADParams default)",
                 default_stop, "vad")
        )
    modes.append(Mode("Silero VAD alone, stop_secs 0.8 s (older Pipecat default)", 0.8, "vad"))
    modes.append(
        Mode("SpeechTimeoutUserTurnStopStrategy: VAD 0.2 s + user_speech_timeout 0.6 s",
             0.2, "speech_timeout")
    )
    modes.append(
        Mode(
            f"**default**: Silero VAD 0.2 s + LocalSmartTurnAnalyzerV3 (v3.2), "
            f"silence fallback {st.stop_secs:g} s",
            0.2, "smart_turn", smart_turn=True,
        )
    )
    return modes


def make_stop_strategy(mode: Mode, turn_analyzer):
    if mode.kind == "vad":
        # Ends the turn as soon as the VAD reports the user stopped (no extra wait).
        return SpeechTimeoutUserTurnStopStrategy(user_speech_timeout=0.0, wait_for_transcript=False)
    if mode.kind == "speech_timeout":
        return SpeechTimeoutUserTurnStopStrategy(wait_for_transcript=False)  # default 0.6 s
    return TurnAnalyzerUserTurnStopStrategy(turn_analyzer=turn_analyzer, wait_for_transcript=False)


class TimedTurnAnalyzer:
    """Wraps analyze_end_of_turn of one LocalSmartTurnAnalyzerV3 to charge its wall time.

    The aggregator awaits the judgement inline, so the pipeline is blocked for
    as long as it takes: the virtual clock moves on by that much before the
    verdict is acted on.
    """

    def __init__(self, analyzer, clock: VirtualClock):
        self.analyzer = analyzer
        self.clock = clock
        self.judgements_ms = []  # model runs only (not the empty-buffer fallback call)
        self.verdicts = []  # (sample time, probability) of the current case
        original = analyzer.analyze_end_of_turn

        async def timed_analyze_end_of_turn():
            t0 = time.perf_counter()
            state, metrics = await original()
            took = time.perf_counter() - t0
            self.clock.now += took
            if metrics is not None:
                self.judgements_ms.append(took * 1000.0)
                self.verdicts.append((self.clock.samples(), metrics.probability))
            return state, metrics

        analyzer.analyze_end_of_turn = timed_analyze_end_of_turn


async def run_case(audio: np.ndarray, mode: Mode, clock: VirtualClock, timed: TimedTurnAnalyzer):
    """Feed one case through Pipecat's VAD and turn controllers; return the decision."""
    clock.now = CLOCK_ORIGIN
    task_manager = TaskManager(loop=asyncio.get_running_loop())
    setup = FrameProcessorSetup(
        clock=SystemClock(),
        task_manager=task_manager,
        pipeline_worker=None,
        audio_in_sample_rate=SAMPLE_RATE,
    )

    vad_analyzer = SileroVADAnalyzer(params=VADParams(stop_secs=mode.vad_stop_secs))
    vad = VADController(vad_analyzer, audio_idle_timeout=0)
    await vad.setup(setup)

    turn_analyzer = timed.analyzer if timed else None
    if turn_analyzer is not None:
        turn_analyzer.clear()
        timed.verdicts = []
    strategies = UserTurnStrategies(
        start=[VADUserTurnStartStrategy()],
        stop=[make_stop_strategy(mode, turn_analyzer)],
    )
    turns = UserTurnController(user_turn_strategies=strategies)  # user_turn_stop_timeout 5 s
    await turns.setup(setup)

    queued = []  # frames the aggregator would queue behind the current one
    decision = {}

    async def on_speech_started(_controller):
        queued.append(VADUserStartedSpeakingFrame(start_secs=vad_analyzer.params.start_secs))

    async def on_speech_stopped(_controller):
        queued.append(VADUserStoppedSpeakingFrame(stop_secs=vad_analyzer.params.stop_secs))

    async def on_user_turn_started(_controller, _strategy, _params):
        decision["started"] = True

    async def on_user_turn_stopped(_controller, strategy, _params):
        if "at" not in decision:
            decision["at"] = clock.samples()
            decision["by"] = type(strategy).__name__ if strategy else "user_turn_stop_timeout"

    vad.add_event_handler("on_speech_started", on_speech_started)
    vad.add_event_handler("on_speech_stopped", on_speech_stopped)
    turns.add_event_handler("on_user_turn_started", on_user_turn_started)
    turns.add_event_handler("on_user_turn_stopped", on_user_turn_stopped)
    await vad.start()
    await turns.start()

    pcm = (np.clip(audio, -32768, 32767)).astype(np.int16)
    n_frames = (len(pcm) + FRAME_SAMPLES - 1) // FRAME_SAMPLES
    n_frames += int(TAIL_PAD_SECS * SAMPLE_RATE) // FRAME_SAMPLES
    silence = bytes(FRAME_SAMPLES * 2)
    try:
        for i in range(n_frames):
            chunk = pcm[i * FRAME_SAMPLES:(i + 1) * FRAME_SAMPLES]
            data = chunk.tobytes()
            if len(data) < len(silence):
                data += silence[len(data):]
            # The frame is processed when its audio has arrived, or when the
            # pipeline is free again, whichever is later.
            clock.now = max(clock.now, CLOCK_ORIGIN + (i + 1) * FRAME_SAMPLES / SAMPLE_RATE)
            frame = InputAudioRawFrame(audio=data, sample_rate=SAMPLE_RATE, num_channels=1)
            await vad.process_frame(frame)
            await turns.process_frame(frame)
            while queued:
                await turns.process_frame(queued.pop(0))
            # Let Pipecat's own tasks (strategy timers, watchdog) run at this time.
            for _ in range(6):
                await asyncio.sleep(0)
            if "at" in decision:
                break
    finally:
        await turns.cleanup()
        await vad.cleanup()
        await task_manager_cancel_all(task_manager)
    decision["verdicts"] = list(timed.verdicts) if timed else []
    return decision


async def task_manager_cancel_all(task_manager: TaskManager):
    for task in list(task_manager.current_tasks()):
        await task_manager.cancel_task(task)


def read_wav(path: str) -> np.ndarray:
    with wave.open(path, "rb") as w:
        if w.getnchannels() != 1 or w.getsampwidth() != 2 or w.getframerate() != SAMPLE_RATE:
            raise SystemExit(f"{path}: expected mono 16-bit {SAMPLE_RATE} Hz")
        return np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16).astype(np.int32)


def pct(values, p):
    """sorted[round((n-1)*p)], rounding halves up as turn-eval (Rust's f64::round) does."""
    s = sorted(values)
    return s[math.floor((len(s) - 1) * p + 0.5)]


def ms(samples: float) -> float:
    return samples * 1000.0 / SAMPLE_RATE


async def main_async(args, clock: VirtualClock):
    with open(os.path.join(args.dir, "cases.json")) as f:
        spec = json.load(f)
    if spec.get("sample_rate", SAMPLE_RATE) != SAMPLE_RATE:
        raise SystemExit(f"cases.json: sample_rate must be {SAMPLE_RATE}")
    cases = [c for c in spec["cases"] if c["kind"] in JUDGED_KINDS]
    skipped = {}
    for c in spec["cases"]:
        if c["kind"] not in JUDGED_KINDS:
            skipped[c["kind"]] = skipped.get(c["kind"], 0) + 1
    audio = {c["wav"]: read_wav(os.path.join(args.dir, c["wav"])) for c in cases}

    smart_turn = LocalSmartTurnAnalyzerV3()  # bundled smart-turn-v3.2-cpu.onnx, cpu_count=1
    smart_turn.set_sample_rate(SAMPLE_RATE)
    # One judgement before timing anything: ONNX Runtime's first run is slow,
    # and a live bot pays that once per process, not once per turn.
    smart_turn.append_audio(bytes(SAMPLE_RATE * 2), True)
    await smart_turn.analyze_end_of_turn()
    smart_turn.clear()
    timed = TimedTurnAnalyzer(smart_turn, clock)

    rows = []
    started = time.perf_counter()
    for mode in build_modes():
        mode_started = time.perf_counter()
        if args.verbose:
            print(f"== {mode.label}", file=sys.stderr)
        cut_offs, delays, undecided, unstarted = 0, [], 0, 0
        judgements_before = len(timed.judgements_ms)
        for case in cases:
            d = await run_case(audio[case["wav"]], mode, clock, timed if mode.smart_turn else None)
            spans = case["voice_spans"]
            last_start, last_end = spans[-1]
            extra = ""
            if mode.smart_turn and args.verbose and d["verdicts"]:
                extra = " [Smart Turn: " + ", ".join(
                    f"p={p:.2f} at {ms(t):.0f} ms" for t, p in d["verdicts"]
                ) + "]"
            # Scored as turn-eval scores GrokCast: a cut-off ends the turn before the
            # last piece of voice starts; otherwise the delay runs from that piece's
            # end, and a decision inside it counts as 0 ms (turn-eval's saturating_sub).
            if "at" not in d:
                undecided += 1
                if d.get("started"):
                    outcome = "never ended"
                else:
                    unstarted += 1
                    outcome = "never ended (no turn started: the VAD never confirmed speech)"
            elif d["at"] < last_start:
                cut_offs += 1
                outcome = f"cut off at {ms(d['at']):.0f} ms"
            else:
                delays.append(max(0.0, ms(d["at"] - last_end)))
                outcome = f"ended {delays[-1]:.0f} ms after the voice"
                if d["at"] < last_end:
                    outcome += f" (decided {ms(d['at'] - last_start):.0f} ms into its last piece)"
            if args.verbose:
                by = f" ({d['by']})" if "by" in d else ""
                print(f"  {case['kind']:8s} {case['name']}: {outcome}{by}{extra}", file=sys.stderr)
        n = len(cases)
        judgements = timed.judgements_ms[judgements_before:]
        rows.append((
            mode.label,
            f"{cut_offs}/{n} ({100.0 * cut_offs / n:.0f}%)" if n else "-",
            f"{pct(delays, 0.5):.0f} / {pct(delays, 0.95):.0f} ms" if delays else "-",
            f"{pct(judgements, 0.5):.0f} / {pct(judgements, 0.95):.0f} ms" if judgements else "-",
            (undecided, unstarted),
        ))
        if args.verbose:
            took = time.perf_counter() - mode_started
            print(f"  ({took:.1f} s, {1000 * took / max(n, 1):.0f} ms per case)", file=sys.stderr)

    counts = ", ".join(f"{sum(c['kind'] == k for c in cases)} {k}" for k in JUDGED_KINDS)
    print(f"Pipecat {pipecat.__version__}, {len(cases)} cases ({counts})")
    print()
    print("| end of turn (Pipecat 1.14) | premature cut-offs | end-of-turn delay p50 / p95 "
          "| Smart Turn judgement p50 / p95 |")
    print("|---|---:|---:|---:|")
    for label, cut, delay, judge, _ in rows:
        print(f"| {label} | {cut} | {delay} | {judge} |")
    print()
    for label, _, _, _, (undecided, unstarted) in rows:
        if undecided:
            print(f"- {label}: {undecided} case(s) never ended (counted as neither a cut-off "
                  f"nor a delay), {unstarted} of them because the VAD never confirmed speech "
                  f"(confidence 0.7 and min_volume 0.6 for start_secs 0.2 s), so no turn began")
    if skipped:
        kinds = ", ".join(f"{v} {k}" for k, v in sorted(skipped.items()))
        print(f"- Skipped {kinds}: Pipecat's interruption strategies need an STT service "
              f"(word counts / transcripts), which this offline run does not have.")
    print("- No STT: the stop strategies run with wait_for_transcript=False; with the default "
          "(True) a live bot also waits for a final transcript, so its delays are these or longer.")
    print(f"- Smart Turn ran on 1 CPU thread (LocalSmartTurnAnalyzerV3 default); "
          f"total {time.perf_counter() - started:.1f} s.")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("dir", help="directory written by `turn-eval --export DIR`")
    ap.add_argument("--verbose", action="store_true", help="print each case's outcome on stderr")
    args = ap.parse_args()

    clock = VirtualClock()
    # BaseSmartTurn stamps its buffered audio with time.monotonic(); make it audio time.
    base_smart_turn.time = _TimeShim(clock)
    loop = VirtualTimeLoop(clock)
    asyncio.set_event_loop(loop)
    try:
        loop.run_until_complete(main_async(args, clock))
    finally:
        loop.close()


if __name__ == "__main__":
    main()
