# Multi-stage build: compile in the Rust image, run in a small Debian image as an unprivileged user.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY fixtures ./fixtures
# The workspace's other member (the benchmark): cargo reads every member's manifest.
COPY bench ./bench
RUN cargo build --release --locked --bin stencil-relay

FROM debian:bookworm-slim
# ca-certificates: deliveries go to Make over HTTPS and verify it against the OS roots.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --user-group --home-dir /data --shell /usr/sbin/nologin relay \
 && mkdir -p /data && chown relay:relay /data && chmod 700 /data
COPY --from=build /src/target/release/stencil-relay /usr/local/bin/stencil-relay
COPY deploy/docker-entrypoint.sh /usr/local/bin/docker-entrypoint
RUN chmod 755 /usr/local/bin/docker-entrypoint
ENV RELAY_LISTEN=0.0.0.0:8080 \
    RELAY_DATABASE_URL=sqlite:///data/relay.db
EXPOSE 8080
VOLUME ["/data"]
# The entrypoint hands a freshly mounted (root-owned) volume to the relay user, then drops to
# that user: the relay itself never runs as root. Started as non-root it just runs the relay.
ENTRYPOINT ["/usr/local/bin/docker-entrypoint"]
CMD ["serve"]
