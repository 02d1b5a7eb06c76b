# syntax=docker/dockerfile:1.7
# The GrokCast agent: answers Twilio calls and talks to the model pools over HTTP.
# Needs models/ in the build context (run scripts/install.sh first): it bakes in the Silero VAD
# model, the Smart Turn end-of-turn model and the ONNX Runtime library (about 30 MiB together).
#   docker build -f docker/agent.Dockerfile -t ghcr.io/grokcast/grokcast-agent:0.1.0 .

ARG RUST_VERSION=1.95
FROM docker.io/library/rust:${RUST_VERSION}-slim-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends g++ cmake clang libclang-dev pkg-config libespeak-ng-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target,id=grokcast-agent-target \
    cargo build --release --locked -p grokcast-agent --bin grokcast-agent -p grokcast-harness --bin grokcast-harness \
 && install -D -m 0755 target/release/grokcast-agent /out/grokcast-agent \
 && install -D -m 0755 target/release/grokcast-harness /out/grokcast-harness

# debian-slim rather than distroless: the agent loads libonnxruntime with dlopen, links
# libespeak-ng (Piper phonemes for embedded voices), and `grokcast-harness call` speaks the
# caller's lines with the espeak-ng command.
FROM docker.io/library/debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates espeak-ng libespeak-ng1 espeak-ng-data libgomp1 \
 && rm -rf /var/lib/apt/lists/*
LABEL org.opencontainers.image.title="grokcast-agent" \
      org.opencontainers.image.description="Answers Twilio Media Streams calls with a streaming VAD, STT, LLM and TTS pipeline" \
      org.opencontainers.image.source="https://github.com/grokcast/grokcast" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /out/grokcast-agent /usr/local/bin/grokcast-agent
# The test caller (a separate binary: nothing of it is in the agent that answers calls), for
# placing a signed test call from inside the cluster (docs/quickstart.md).
COPY --from=build /out/grokcast-harness /usr/local/bin/grokcast-harness
COPY models/vad/ /opt/grokcast/models/vad/
COPY models/onnxruntime/ /opt/grokcast/models/onnxruntime/
# Smart Turn v3.2 (8.7 MB), loaded when a VoiceAgent sets turnTaking.endOfTurnModel: smart-turn.
COPY models/turn/ /opt/grokcast/models/turn/
ENV GROKCAST_MODELS_DIR=/opt/grokcast/models \
    HOME=/tmp
USER 65532:65532
EXPOSE 8080 9090
ENTRYPOINT ["/usr/local/bin/grokcast-agent"]
CMD ["serve"]
