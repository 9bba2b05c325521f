# The regroup image: one binary for the operator (`regroup operator`), the workers' restore init
# container (`regroup restore`) and the reference worker (`regroup worker`).
#
#   podman build -t regroup:0.1.0 .        (or: docker build -t regroup:0.1.0 .)
#
# Build arguments: BUILDER_IMAGE (Rust on Debian 12) and RUNTIME_IMAGE (a glibc runtime with
# libstdc++ and CA certificates, Debian 12 like the builder) choose the bases; VERSION and REVISION
# go into the labels. e2e/image builds this file with bases made on the machine (no registry).

ARG BUILDER_IMAGE=docker.io/library/rust:1.95-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot

FROM ${BUILDER_IMAGE} AS build
WORKDIR /src
COPY . .
# A builder image that already holds /prebuilt/regroup (e2e/image's) is used as is: no compiling.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target,sharing=locked \
    set -eu; \
    if [ -e /prebuilt/regroup ]; then \
      cp /prebuilt/regroup /regroup; \
    else \
      apt-get update; \
      apt-get install -y --no-install-recommends libclang-dev; \
      cargo build --release --locked --bin regroup; \
      cp target/release/regroup /regroup; \
    fi

FROM ${RUNTIME_IMAGE}
ARG RUNTIME_IMAGE
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="regroup" \
      org.opencontainers.image.description="Kubernetes operator for stateful, key-partitioned jobs: operator, restore init container and reference worker" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="${RUNTIME_IMAGE}"
COPY --from=build /regroup /usr/local/bin/regroup
# The restore init container's command is `regroup`, found on PATH.
ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
# The workers' state is the volume at /state (a claim: fsGroup makes it writable for this user).
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/regroup"]
CMD ["--help"]
