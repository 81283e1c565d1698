# Image for every `enrich` command of the local stack (see docker-compose.yml): workers, API, simulator, topics.
#   docker build -t fleet-enrich .
#   docker run --rm fleet-enrich                          # enrich --help
#   docker run --rm --network host fleet-enrich enrich topics create
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
RUN pip install --no-cache-dir . \
    && rm -rf build ./*.egg-info

# Run as an unprivileged user. /var/lib/enrich is created here and owned by that user so that a named volume
# mounted there (bytewax recovery store of the flows, ENRICH_STATE_DIR) starts out writable by it.
RUN groupadd --system --gid 10001 enrich \
    && useradd --system --uid 10001 --gid enrich --home-dir /home/enrich --create-home \
        --shell /usr/sbin/nologin enrich \
    && mkdir -p /var/lib/enrich \
    && chown enrich:enrich /var/lib/enrich

USER enrich
WORKDIR /home/enrich

# HTTP API (`enrich api`); flow workers serve Prometheus metrics on ENRICH_METRICS_PORT (9464).
EXPOSE 8000

# One check for every service of this image: `enrich health auto` finds the enrich command running in the
# container and checks what fits it — flows: their metrics endpoint; API: /readyz; alerts worker: config,
# Redis, Kafka, SMTP and the worker's own Redis activity; one-shots (topics, simulate): nothing to check.
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 CMD ["enrich", "health", "auto"]

ENTRYPOINT []
CMD ["enrich", "--help"]
