# syntax=docker/dockerfile:1.7
# grokcast-csm: grokcast-serve with Sesame CSM-1B on candle's CUDA kernels, for ModelPools
# with `engine: csm`. The weights are not in the image: the pool's preload Job assembles the
# model directory (config.json, model.safetensors, tokenizer.json, mimi.safetensors) in its
# cache volume, and the server reads it from --csm-model-dir (docs/engines.md).
#   docker build -f docker/csm.Dockerfile -t ghcr.io/grokcast/grokcast-csm:0.1.0 .
# CUDA_COMPUTE_CAP picks the GPU generation the kernels are built for (80: A100).

ARG CUDA_VERSION=12.4.1
FROM docker.io/nvidia/cuda:${CUDA_VERSION}-devel-ubuntu22.04 AS build
ARG RUST_VERSION=1.95.0
ARG CUDA_COMPUTE_CAP=80
RUN apt-get update \
 && apt-get install -y --no-install-recommends curl ca-certificates pkg-config g++ \
 && rm -rf /var/lib/apt/lists/*
# The CUDA devel image has no Rust; rustup installs the project's toolchain version.
RUN curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal --default-toolchain ${RUST_VERSION}
ENV PATH=/root/.cargo/bin:$PATH \
    CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP}
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/root/.cargo/registry \
    --mount=type=cache,target=/src/target,id=grokcast-csm-target \
    cargo build --release --locked -p grokcast-engines --no-default-features --features cuda --bin grokcast-serve \
 && install -D -m 0755 target/release/grokcast-serve /out/grokcast-serve

FROM docker.io/nvidia/cuda:${CUDA_VERSION}-runtime-ubuntu22.04
LABEL org.opencontainers.image.title="grokcast-csm" \
      org.opencontainers.image.description="Sesame CSM-1B text to speech on GPUs over the OpenAI speech API, streaming 24 kHz PCM" \
      org.opencontainers.image.source="https://github.com/grokcast/grokcast" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /out/grokcast-serve /usr/local/bin/grokcast-serve
# An empty models directory: this build serves CSM only, from --csm-model-dir.
RUN mkdir -p /opt/grokcast/models
ENV GROKCAST_MODELS_DIR=/opt/grokcast/models \
    GROKCAST_SERVE_ROLE=tts \
    GROKCAST_SERVE_TTS_ENGINE=csm \
    HOME=/tmp
USER 65532:65532
EXPOSE 8000
ENTRYPOINT ["/usr/local/bin/grokcast-serve"]
