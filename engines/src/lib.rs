//! Embedded engines: Silero VAD, Whisper STT, Piper TTS and a Gemma LLM, all on CPU.
