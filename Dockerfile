# The orchestrator: one binary for every process of a deployment
# (`serve`, `worker --roles ...`, and the CLI commands).
#
#   docker build -t orchestrator .
#
# Build stage: a release build of the workspace.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin orchestrator

# Runtime stage: the binary alone on a slim Debian (it needs only libc and
# CA certificates for the LLM providers' HTTPS endpoints).
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --home /var/lib/orchestrator --create-home orchestrator
COPY --from=build /src/target/release/orchestrator /usr/local/bin/orchestrator
USER orchestrator
WORKDIR /var/lib/orchestrator
# Embedded default when nothing else is configured: a SQLite file here.
ENV DATABASE_URL=sqlite:///var/lib/orchestrator/orchestrator.db
ENTRYPOINT ["orchestrator"]
EXPOSE 8000
CMD ["serve", "--bind", "0.0.0.0:8000"]
