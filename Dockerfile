# Image for every `enrich` command of the local stack (see docker-compose.yml): workers, API, simulator, topics.
#   docker build -t fleet-enrich .
#   docker run --rm fleet-enrich                          # enrich --help
#   docker run --rm --network host fleet-enrich enrich topics create
# Stage 1: the native telemetry decoder (native/, Rust) as an abi3 wheel. enrich works without it (Python
# decoder), but the image ships it: it is the faster path of the enrichment flow.
FROM rust:1-slim-bookworm AS native
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/maturin \
    && /opt/maturin/bin/pip install --no-cache-dir maturin==1.16.0
COPY native/ /native/
RUN /opt/maturin/bin/maturin build --release --compatibility linux -m /native/Cargo.toml -o /wheels

FROM python:3.12-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

WORKDIR /src

# Dependencies first, in their own layer: it is rebuilt only when pyproject.toml changes, not on every code edit.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install --no-cache-dir -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

# The package itself (what is sent is filtered by .dockerignore).
COPY . .
COPY --from=native /wheels /tmp/wheels
RUN pip install --no-cache-dir . /tmp/wheels/enrich_native-*.whl \
    && python -c "import enrich.telemetry as t; assert t.IMPLEMENTATION == 'native'" \
    && rm -rf build ./*.egg-info /tmp/wheels

# Run as an unprivileged user. /var/lib/enrich is created here and owned by that user so that a named volume
# mounted there (bytewax recovery store of the flows, ENRICH_STATE_DIR) starts out writable by it.
RUN groupadd --system --gid 10001 enrich \
    && useradd --system --uid 10001 --gid enrich --home-dir /home/enrich --create-home \
        --shell /usr/sbin/nologin enrich \
    && mkdir -p /var/lib/enrich \
    && chown enrich:enrich /var/lib/enrich

USER enrich
WORKDIR /home/enrich

# HTTP API (`enrich api`); flow workers serve Prometheus metrics (snapshot 9464, enrich 9465).
EXPOSE 8000

# One check for every service of this image: `enrich health auto` finds the enrich command running in the
# container and checks what fits it — flows: their metrics endpoint; API: /readyz; alerts worker: config,
# Redis, Kafka, SMTP and the worker's own Redis activity; one-shots (topics, simulate): nothing to check.
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 CMD ["enrich", "health", "auto"]

ENTRYPOINT []
CMD ["enrich", "--help"]
