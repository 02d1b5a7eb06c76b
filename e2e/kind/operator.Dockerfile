# Operator image for the kind scenarios: built from this checkout, non-root, no shell.
FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release -p grokcast-operator --bin grokcast-operator

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/grokcast-operator /usr/local/bin/grokcast-operator
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/grokcast-operator"]
