# autoresearch-coordinator: the operator image. `docker build -t autoresearch-coordinator .`
# Build stage: a release binary. rustls with ring, no OpenSSL: only glibc and libgcc at run time.
FROM docker.io/library/rust:1.95.0-slim-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY crds ./crds
RUN cargo build --release --locked --bin autoresearch-coordinator \
 && cp target/release/autoresearch-coordinator /autoresearch-coordinator

# Run stage: distroless with glibc, no shell, non-root (UID/GID 65532).
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /autoresearch-coordinator /autoresearch-coordinator
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/autoresearch-coordinator"]
CMD ["controller"]
