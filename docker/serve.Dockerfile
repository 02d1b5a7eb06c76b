# syntax=docker/dockerfile:1.7
# grokcast-serve: the project's CPU model server (Whisper, Gemma 3 270M, Piper) behind the
# OpenAI-compatible APIs, for ModelPools with `engine: grokcast`.
# Needs models/ in the build context (run scripts/install.sh first); the models are baked in
# (about 400 MiB). To mount them instead, build with --build-arg BAKE_MODELS=false and mount a
# volume holding the same layout at /opt/grokcast/models.
#   docker build -f docker/serve.Dockerfile -t ghcr.io/grokcast/grokcast-serve:0.1.0 .

ARG RUST_VERSION=1.95
FROM docker.io/library/rust:${RUST_VERSION}-slim-bookworm AS build
# whisper.cpp and llama.cpp build with cmake; bindgen needs libclang; Piper phonemes need espeak-ng.
RUN apt-get update \
 && apt-get install -y --no-install-recommends g++ cmake clang libclang-dev pkg-config libespeak-ng-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target,id=grokcast-serve-target \
    cargo build --release --locked -p grokcast-engines --bin grokcast-serve \
 && install -D -m 0755 target/release/grokcast-serve /out/grokcast-serve \
 && cargo build --release --locked -p grokcast-engines --no-default-features --features llama --bin grokcast-serve-llm \
 && install -D -m 0755 target/release/grokcast-serve-llm /out/grokcast-serve-llm

# Only the model files the server loads, not the unpacked packages under models/sources/.
FROM docker.io/library/debian:bookworm-slim AS models
ARG BAKE_MODELS=true
COPY models/ /staging/
RUN mkdir -p /opt/grokcast/models \
 && if [ "$BAKE_MODELS" = "true" ]; then \
      for d in vad onnxruntime whisper piper llm; do cp -a "/staging/$d" /opt/grokcast/models/; done; \
    else \
      cp -a /staging/onnxruntime /opt/grokcast/models/; \
    fi

FROM docker.io/library/debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends libespeak-ng1 espeak-ng-data libgomp1 \
 && rm -rf /var/lib/apt/lists/*
LABEL org.opencontainers.image.title="grokcast-serve" \
      org.opencontainers.image.description="CPU model server for speech to text, LLM and text to speech over OpenAI-compatible APIs" \
      org.opencontainers.image.source="https://github.com/grokcast/grokcast" \
      org.opencontainers.image.licenses="Apache-2.0"
# whisper.cpp and llama.cpp each link their own ggml, so Gemma is a second binary; grokcast-serve
# --role llm (what an `engine: grokcast, role: llm` pool runs) replaces itself with it.
COPY --from=build /out/grokcast-serve /out/grokcast-serve-llm /usr/local/bin/
COPY --from=models /opt/grokcast/models/ /opt/grokcast/models/
ENV GROKCAST_MODELS_DIR=/opt/grokcast/models \
    HOME=/tmp
USER 65532:65532
EXPOSE 8000
ENTRYPOINT ["/usr/local/bin/grokcast-serve"]
