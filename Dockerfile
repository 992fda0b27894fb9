# cedar-pdp container image: a release build in a Rust image, copied into a distroless
# base that has glibc and nothing else (no shell, no package manager), running as the
# unprivileged user 65532.
#
#   docker build -t cedar-pdp:0.1.0 .
#   docker run --rm -p 50051:50051 -p 9464:9464 \
#     -v "$PWD/policies:/etc/cedar-pdp/policies:ro" cedar-pdp:0.1.0
#
# No policies are baked in: mount a directory (the Helm chart mounts a ConfigMap or a
# git-sync checkout) at /etc/cedar-pdp/policies.

FROM docker.io/library/rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin cedar-pdp \
 && strip target/release/cedar-pdp

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/cedar-pdp /usr/local/bin/cedar-pdp
USER 65532:65532
EXPOSE 50051 9464
ENTRYPOINT ["/usr/local/bin/cedar-pdp"]
CMD ["serve", "--policies=/etc/cedar-pdp/policies", "--listen=0.0.0.0:50051", "--metrics-listen=0.0.0.0:9464"]
