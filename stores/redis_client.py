"""The one place that builds the engine's Redis clients, so every worker survives a Redis restart.

``redis_client(settings)`` (workers) retries every command that fails because Redis is away —
``ConnectionError``, ``TimeoutError``, ``BusyLoadingError`` (Redis loading its AOF after a restart) — for
ever, with exponential backoff and jitter (redis-py's ``Retry(ExponentialWithJitterBackoff, retries=-1)``;
``-1`` is how redis-py spells "unlimited"). The calling thread blocks meanwhile: for a bytewax worker that
*is* the pause of its input, and it resumes where it stopped. Commands are idempotent or run in Lua/MULTI,
so a command retried after a lost reply does no harm. Lua scripts registered with ``register_script``
reload themselves on ``NOSCRIPT`` (redis-py's ``Script``), so a restarted Redis without the script cache
is fine.

``api_client(settings)`` (HTTP API) retries briefly and then fails, so a request answers 503 quickly.

Every retry goes through ``MonitoredRetry``, which reports to ``connectors.health.monitor("redis")``: one
log line and one ``enrich_dependency_outages_total`` per outage, ``enrich_dependency_up`` 0 while it lasts.
``ensure_retrying(client)`` installs the unlimited retry on a client built elsewhere (the stores call it
for the clients they are given).

Redis Cluster: a URL ``redis+cluster://host:port`` (``rediss+cluster://`` with TLS; any node of the
cluster, the others are discovered) makes every factory here return redis-py's cluster client
(``RedisCluster``, sync or asyncio) instead. Stores key their data with hash tags so every Lua script and
MULTI touches one slot (``one_slot``), and split cross-slot work per slot (``stores/vehicles``).
redis-py's cluster client follows ``MOVED``/``ASK`` redirections, and re-reads the slot map and retries a
command that met a lost node (``CLUSTER_RETRIES`` times). It does not wait for ever as the single
instance's clients do: a cluster outage longer than those retries raises to the caller (bytewax restarts
the worker from its recovery state; the alerts worker's loops log and retry), and it is not reported to the
dependency monitor.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable
from typing import Any, TypeVar, cast

import redis
import redis.asyncio as aioredis
import redis.asyncio.cluster as aiocluster
import redis.cluster
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import BusyLoadingError, ConnectionError, TimeoutError
from redis.retry import Retry

from connectors.health import DependencyMonitor, monitor
from enrich.settings import Settings

T = TypeVar("T")
RETRY_ON: tuple[type[Exception], ...] = (ConnectionError, TimeoutError, BusyLoadingError)
UNLIMITED = -1
BACKOFF_BASE_S = 0.05
BACKOFF_CAP_S = 5.0
WORKER_SOCKET_TIMEOUT_S = 30.0  # a command slower than this is treated as lost and retried
API_SOCKET_TIMEOUT_S = 2.0
_SHUTTING_DOWN = threading.Event()
CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}
CLUSTER_RETRIES = 20

# A client of either kind: the stores take both (redis-py's cluster client has the same commands).
SyncRedis = redis.Redis | redis.cluster.RedisCluster
AsyncRedis = aioredis.Redis | aiocluster.RedisCluster


def cluster_url(url: str) -> str | None:
    """The plain ``redis://`` URL of a ``redis+cluster://`` one, or None when ``url`` is no cluster URL."""
    scheme, sep, rest = url.partition("://")
    plain = CLUSTER_SCHEMES.get(scheme.lower())
    return f"{plain}{sep}{rest.split('/', 1)[0]}" if plain and sep else None


def is_cluster(client: object) -> bool:
    return isinstance(client, redis.cluster.RedisCluster | aiocluster.RedisCluster)


def one_slot(prefix: str, client: object, tag: str) -> str:
    """The key prefix of a store whose keys must share one slot (its Lua scripts and MULTIs touch several):
    on a cluster ``<prefix>{<tag>}:`` (the hash tag puts every key in the slot of ``tag``), unchanged on a
    single instance or when ``prefix`` carries a hash tag of its own."""
    if not is_cluster(client) or ("{" in prefix and "}" in prefix.split("{", 1)[1]):
        return prefix
    return f"{prefix}{{{tag}}}:"


def stop_retrying() -> None:
    """The process is stopping: calls still waiting for Redis give up (raise) instead of retrying."""
    _SHUTTING_DOWN.set()


class MonitoredRetry(Retry):
    """redis-py's Retry that reports failures and recoveries to a dependency monitor."""

    def __init__(
        self,
        backoff: Any,
        retries: int,
        supported_errors: tuple[type[Exception], ...] = RETRY_ON,
        health: DependencyMonitor | None = None,
    ) -> None:
        super().__init__(backoff, retries, supported_errors)
        self.health = health or monitor("redis")

    def __deepcopy__(self, memo: dict[int, Any]) -> MonitoredRetry:
        # redis-py deep-copies the retry into every connection: share the monitor, copy the rest.
        return MonitoredRetry(copy.deepcopy(self._backoff, memo), self._retries, self._supported_errors,
                              self.health)  # fmt: skip

    def call_with_retry(
        self,
        do: Callable[[], T],
        fail: Callable[..., Any],
        is_retryable: Callable[[Exception], bool] | None = None,
        with_failure_count: bool = False,
    ) -> T:
        failed = False

        def on_fail(error: Exception, count: int) -> Any:
            nonlocal failed
            failed = True
            if _SHUTTING_DOWN.is_set():
                raise error
            self.health.failure(error)
            return fail(error, count) if with_failure_count else fail(error)

        result = super().call_with_retry(do, on_fail, is_retryable, with_failure_count=True)
        if failed or not self.health.up:
            self.health.recovered()
        return result


def worker_retry() -> MonitoredRetry:
    return MonitoredRetry(ExponentialWithJitterBackoff(base=BACKOFF_BASE_S, cap=BACKOFF_CAP_S), UNLIMITED)


def _cluster_retry() -> Retry:
    return Retry(ExponentialWithJitterBackoff(base=BACKOFF_BASE_S, cap=BACKOFF_CAP_S), CLUSTER_RETRIES)


def redis_client(settings: Settings, url: str | None = None) -> redis.Redis:
    """A client for a worker: waits through Redis outages (see the module docstring). A cluster client for a
    ``redis+cluster://`` URL (typed as ``redis.Redis``: the commands the stores use are the same)."""
    target = url or settings.redis_url
    plain = cluster_url(target)
    if plain is not None:
        client: Any = redis.cluster.RedisCluster.from_url(
            plain, retry=_cluster_retry(), socket_timeout=WORKER_SOCKET_TIMEOUT_S,
            socket_connect_timeout=5.0, socket_keepalive=True,
        )  # fmt: skip
        return cast(redis.Redis, client)
    return redis.Redis.from_url(
        target,
        retry=worker_retry(),
        retry_on_error=list(RETRY_ON),
        socket_timeout=WORKER_SOCKET_TIMEOUT_S,
        socket_connect_timeout=5.0,
        socket_keepalive=True,
        health_check_interval=30,
    )


def quick_client(settings: Settings) -> redis.Redis:
    """A blocking client that gives up after two quick retries (HTTP API, one-shot commands)."""
    retry = MonitoredRetry(ExponentialWithJitterBackoff(base=0.05, cap=0.5), 2)
    plain = cluster_url(settings.redis_url)
    if plain is not None:
        client: Any = redis.cluster.RedisCluster.from_url(
            plain, retry=Retry(ExponentialWithJitterBackoff(base=0.05, cap=0.5), 2),
            socket_timeout=API_SOCKET_TIMEOUT_S, socket_connect_timeout=API_SOCKET_TIMEOUT_S,
        )  # fmt: skip
        return cast(redis.Redis, client)
    return redis.Redis.from_url(settings.redis_url, retry=retry, retry_on_error=list(RETRY_ON),
                                socket_timeout=API_SOCKET_TIMEOUT_S,
                                socket_connect_timeout=API_SOCKET_TIMEOUT_S)  # fmt: skip


def api_client(settings: Settings) -> aioredis.Redis:
    """An asyncio client for the HTTP API: two quick retries, then the error (answered as 503)."""
    retry = AsyncRetry(ExponentialWithJitterBackoff(base=0.05, cap=0.5), 2, RETRY_ON)  # type: ignore[arg-type]
    plain = cluster_url(settings.redis_url)
    if plain is not None:
        client: Any = aiocluster.RedisCluster.from_url(
            plain, retry=retry, socket_timeout=API_SOCKET_TIMEOUT_S,
            socket_connect_timeout=API_SOCKET_TIMEOUT_S,
        )  # fmt: skip
        return cast(aioredis.Redis, client)
    return aioredis.Redis.from_url(
        settings.redis_url,
        retry=retry,
        retry_on_error=list(RETRY_ON),
        socket_timeout=API_SOCKET_TIMEOUT_S,
        socket_connect_timeout=API_SOCKET_TIMEOUT_S,
    )


def ensure_retrying(client: redis.Redis) -> redis.Redis:
    """Make ``client`` wait through outages like ``redis_client`` (no-op when it already does, and for a
    cluster client, whose retries are its own)."""
    if is_cluster(client):
        return client
    if not isinstance(client.get_retry(), MonitoredRetry):
        client.set_retry(worker_retry())
    return client
