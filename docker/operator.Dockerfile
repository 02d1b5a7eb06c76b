# syntax=docker/dockerfile:1.7
# The GrokCast operator: one static-ish Rust binary on distroless (glibc, no shell).
#   docker build -f docker/operator.Dockerfile -t ghcr.io/grokcast/grokcast-operator:0.1.0 .
# scripts/build-images.sh runs this with the tag the chart defaults to.

ARG RUST_VERSION=1.95
FROM docker.io/library/rust:${RUST_VERSION}-slim-bookworm AS build
WORKDIR /src
# The operator links no system library (rustls with ring); gcc from the image builds ring.
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target,id=grokcast-operator-target \
    cargo build --release --locked -p grokcast-operator --bin grokcast-operator \
 && install -D -m 0755 target/release/grokcast-operator /out/grokcast-operator

# distroless/cc has glibc, libgcc and CA certificates and runs as 65532 ("nonroot").
FROM gcr.io/distroless/cc-debian12:nonroot
LABEL org.opencontainers.image.title="grokcast-operator" \
      org.opencontainers.image.description="Reconciles VoiceAgents and ModelPools" \
      org.opencontainers.image.source="https://github.com/grokcast/grokcast" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /out/grokcast-operator /usr/local/bin/grokcast-operator
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/grokcast-operator"]
CMD ["run"]
