"""The one Kafka writer of the engine (flows, alerts, simulator, benchmarks).

``send`` never raises because of one record or a broker outage, and ``flush`` returns only when every record
sent so far is delivered or dead-lettered:

* **Full local queue** → ``send`` serves delivery reports and waits for room (a WARNING after
  ``WAIT_LOG_S``), it never raises ``BufferError``.
* **Retriable delivery errors** → librdkafka retries by itself (``message.timeout.ms = 0``: no record
  times out, so a broker restart only delays). A retriable error that still comes back through the
  delivery callback (e.g. a timeout configured by the caller) is produced again: never dropped.
* **Permanent per-record errors** (too large, invalid record), raised by ``produce()`` or reported by the
  delivery callback → the record goes to the dead-letter topic with the reason (``too_large``,
  ``invalid_record``), the stage, the reference to the input record it was made from (``SourceRef`` or
  ``Record``: topic/partition/offset) and its bytes (truncated to fit, see connectors/letters.py); the
  writer carries on. A record sent without a source (or by a writer without a dead-letter topic) cannot be
  dead-lettered: it is logged at ERROR, counted (``enrich_produce_rejected_total``, ``rejected``) and
  skipped.
* **Errors no record can fix** (the idempotent producer's fatal errors, unknown topic, authorisation)
  raise ``KafkaWriterError`` from ``send``/``poll``/``flush``: bad configuration, exit non-zero.

Sources cost little: the writer remembers the source of each record in flight by the hash of its bytes
(one dict entry, no callback per record — a per-record callback would cost ~4 µs) and forgets them all
once the producer's queue is empty; a failed delivery report finds its source by the same hash (of two
in-flight records with identical bytes, the letter names the later one). Delivery reports come back only
for failures.

The producer sits behind ``ProducerPort`` so the error handling is unit-tested with a fake producer.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from confluent_kafka import KafkaError, KafkaException, Producer

from connectors import metrics
from connectors.health import monitor
from connectors.kafka_config import DEFAULT_MAX_MESSAGE_BYTES, letter_budget, producer_config
from connectors.letters import fit_letter
from enrich.deadletter import SourceRef, dead_letter
from enrich.errors import EnrichError
from enrich.records import Record
from enrich.settings import Settings

log = logging.getLogger(__name__)

Source = SourceRef | Record
Key = bytes | str | None
Outgoing = tuple[Key, bytes] | tuple[Key, bytes, Source | None]
DeliveryCallback = Callable[[Any, Any], None]

WAIT_LOG_S = 5.0
REMIND_S = 15.0

#: Errors that condemn one record, with the dead-letter reason.
RECORD_ERRORS: dict[int, str] = {
    KafkaError.MSG_SIZE_TOO_LARGE: "too_large",
    KafkaError.RECORD_LIST_TOO_LARGE: "too_large",
    KafkaError.INVALID_RECORD: "invalid_record",
    KafkaError.INVALID_MSG: "invalid_record",
    KafkaError.INVALID_TIMESTAMP: "invalid_record",
    KafkaError._BAD_MSG: "invalid_record",
    KafkaError._INVALID_ARG: "invalid_record",
}
#: Errors of configuration or of the producer itself: retrying or dead-lettering cannot help.
CONFIG_ERRORS = frozenset(
    {
        KafkaError._UNKNOWN_TOPIC,
        KafkaError._UNKNOWN_PARTITION,
        KafkaError.TOPIC_AUTHORIZATION_FAILED,
        KafkaError.CLUSTER_AUTHORIZATION_FAILED,
        KafkaError.SASL_AUTHENTICATION_FAILED,
        KafkaError._AUTHENTICATION,
        KafkaError._FATAL,
        KafkaError._INVALID_TYPE,
    }
)
#: Client-wide errors that mean the broker is out of reach.
UNREACHABLE = frozenset({KafkaError._ALL_BROKERS_DOWN, KafkaError._TRANSPORT, KafkaError._RESOLVE})


class KafkaWriterError(Exception):
    """A producer error that retrying or dead-lettering cannot fix (configuration, fatal producer state)."""


class ProducerPort(Protocol):
    """What the writer needs of a producer (confluent_kafka.Producer; a fake in unit tests)."""

    def produce(self, topic: str, value: bytes | None = None, key: Key = None, **kw: Any) -> None: ...

    def poll(self, timeout: float = ...) -> int: ...

    def flush(self, timeout: float = ...) -> int: ...

    def __len__(self) -> int: ...


def classify(err: Any) -> str:
    """``record`` (dead-letter it), ``config`` (raise) or ``retry`` for a KafkaError."""
    code = err.code()
    if code in RECORD_ERRORS:
        return "record"
    if code in CONFIG_ERRORS or err.fatal():
        return "config"
    return "retry"


class KafkaWriter:
    """A producer with a default topic and an optional dead-letter topic (see the module docstring)."""

    def __init__(
        self,
        bootstrap: str,
        topic: str = "",
        *,
        dlq_topic: str | None = None,
        stage: str = "produce",
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        config: dict[str, Any] | None = None,
        producer: ProducerPort | None = None,
    ) -> None:
        self.topic = topic
        self.dlq_topic = dlq_topic
        self.stage = stage
        self.budget = letter_budget(max_message_bytes)
        self.health = monitor("kafka")
        self.rejected = 0  # records refused for good and not dead-lettered
        self.dead_lettered = 0  # records this writer dead-lettered because they could not be produced
        self.retried = 0
        # Filled by delivery callbacks, emptied by ``_pump`` outside of them (no producing inside a callback).
        self._retry: deque[tuple[str, bytes | None, bytes | None, Source | None]] = deque()
        self._letters: deque[tuple[str, bytes | None, bytes]] = deque()  # (topic, key, letter) to (re)send
        self._condemned: deque[tuple[Any, str, bytes | None, bytes | None, Source | None]] = deque()
        self._fatal: KafkaWriterError | None = None
        self._sources: dict[int, Source] = {}  # hash(value) -> source, for records in flight
        self._on_letter_cb: DeliveryCallback = self._on_letter
        if producer is None:
            conf: dict[str, Any] = producer_config(bootstrap, max_message_bytes=max_message_bytes)
            conf.update(config or {})
            conf["on_delivery"] = self._on_delivery
            conf["error_cb"] = self._on_client_error
            self._producer: ProducerPort = Producer(conf)  # type: ignore[assignment]
        else:
            self._producer = producer

    @classmethod
    def from_settings(cls, settings: Settings, topic: str, *, stage: str, **config: Any) -> KafkaWriter:
        """A writer to ``topic`` that dead-letters what it cannot produce to the settings' DLQ topic."""
        return cls(settings.kafka_bootstrap, topic, dlq_topic=settings.topic_dlq, stage=stage,
                   max_message_bytes=settings.kafka_max_message_bytes, config=config)  # fmt: skip

    # -- sending ---------------------------------------------------------------------------------------
    def send(self, items: Iterable[Outgoing]) -> None:
        """Produce ``(key, value)`` or ``(key, value, source)`` records to the default topic."""
        topic = self.topic
        produce = self._producer.produce
        sources = self._sources
        for item in items:
            key, value = item[0], item[1]
            source = item[2] if len(item) == 3 else None
            if source is not None:
                sources[hash(value)] = source
            try:
                produce(topic, value, key)
            except (BufferError, KafkaException):
                self._send_slow(topic, key, value, source)  # waits for room or dead-letters
        self.poll()

    def send_to(
        self,
        topic: str,
        key: Key,
        value: bytes | None,
        source: Source | None = None,
        *,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> None:
        """Produce one record to ``topic`` (with Kafka ``headers``, if any); waits while the local queue is
        full. A record produced again after a retriable delivery error goes without its headers."""
        if source is not None:
            self._sources[hash(value)] = source
        try:
            if headers:
                self._producer.produce(topic, value, key, headers=headers)
            else:
                self._producer.produce(topic, value, key)
            return
        except (BufferError, KafkaException):
            pass
        self._send_slow(topic, key, value, source, headers)

    def _send_slow(
        self,
        topic: str,
        key: Key,
        value: bytes | None,
        source: Source | None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> None:
        waited_since: float | None = None
        last_log = 0.0
        extra: dict[str, Any] = {"headers": headers} if headers else {}
        while True:
            try:
                self._producer.produce(topic, value, key, **extra)
                break
            except BufferError:
                now = time.monotonic()
                if waited_since is None:
                    waited_since = now
                    metrics.PRODUCE_QUEUE_FULL.labels(topic).inc()
                elif now - waited_since >= WAIT_LOG_S and now - last_log >= REMIND_S:
                    last_log = now
                    log.warning("producer queue full for %.0fs (%d records waiting for %s); is Kafka "
                                "reachable?", now - waited_since, len(self._producer), topic)  # fmt: skip
                self._producer.poll(0.05)
            except KafkaException as exc:
                self._failed(exc.args[0], topic, self._bytes(key), value, source)
                break
        self._pump()
        self._raise_if_fatal()

    def send_letters(self, items: Iterable[tuple[bytes | None, bytes]], stage: str) -> None:
        """Send ready-made dead letters (``enrich.deadletter.dead_letter``) to the dead-letter topic,
        truncating any that would not fit; counted per ``stage``."""
        topic = self.dlq_topic or self.topic
        n = 0
        for key, letter in items:
            self._produce_letter(topic, key, fit_letter(letter, self.budget))
            n += 1
        if n:
            metrics.DEAD_LETTERS.labels(stage).inc(n)
        self._pump()

    def _produce_letter(self, topic: str, key: bytes | None, letter: bytes) -> bool:
        """Produce one letter; False (and queued again) while the local queue is full."""
        try:
            self._producer.produce(topic, letter, key, on_delivery=self._on_letter_cb)
        except BufferError:
            self._letters.append((topic, key, letter))
            return False
        except KafkaException as exc:
            self._letter_lost(exc.args[0], topic, letter)
        return True

    # -- delivery --------------------------------------------------------------------------------------
    def poll(self) -> None:
        """Serve delivery reports without waiting, produce again what must be retried."""
        self._producer.poll(0)
        if self._retry or self._letters or self._condemned:
            self._pump()
        self._forget_delivered()
        self._raise_if_fatal()

    def _forget_delivered(self) -> None:
        # An empty queue means every record was delivered or its failure report was served.
        if self._sources and len(self._producer) == 0 and not self._retry:
            self._sources.clear()

    def flush(self) -> None:
        """Block until every record sent so far is delivered or dead-lettered. Never raises because the
        broker is away (logs while it waits); raises ``KafkaWriterError`` only for configuration errors."""
        start = time.monotonic()
        last_log = start
        waited = False
        while True:
            self._pump()
            remaining = self._producer.flush(1.0)
            self._raise_if_fatal()
            if remaining == 0 and not (self._retry or self._letters or self._condemned):
                self._forget_delivered()
                if waited:
                    self.health.recovered()
                return
            waited = True
            now = time.monotonic()
            if now - start >= WAIT_LOG_S and now - last_log >= REMIND_S:
                last_log = now
                log.warning("waiting for %d records to reach Kafka (%s) for %.0fs; they are kept and "
                            "sent when the broker answers", remaining + len(self._retry), self.topic or "-",
                            now - start)  # fmt: skip

    def close(self) -> None:
        self.flush()

    def __len__(self) -> int:
        """Records not yet delivered (in the producer's queue or waiting for a retry)."""
        return len(self._producer) + len(self._retry) + len(self._letters) + len(self._condemned)

    def _pump(self) -> None:
        """Dead-letter condemned records, produce retries and queued letters (never inside a callback)."""
        while self._condemned:
            err, topic, key, value, source = self._condemned.popleft()
            self._reject(RECORD_ERRORS[err.code()], err, topic, key, value, source)
        while self._letters:
            topic, key, letter = self._letters.popleft()
            if not self._produce_letter(topic, key, letter):
                self._producer.poll(0.05)
                return
        while self._retry:
            topic, key, value, source = self._retry.popleft()
            if source is not None:
                self._sources[hash(value)] = source
            try:
                self._producer.produce(topic, value, key)
            except BufferError:
                self._retry.appendleft((topic, key, value, source))
                self._producer.poll(0.05)
                return
            except KafkaException as exc:
                self._failed(exc.args[0], topic, key, value, source)

    def _on_delivery(self, err: Any, msg: Any) -> None:
        if err is not None:
            value = msg.value()
            self._failed(err, msg.topic(), msg.key(), value, self._sources.pop(hash(value), None))

    def _on_letter(self, err: Any, msg: Any) -> None:
        if err is None:
            return
        kind = classify(err)
        if kind == "retry":
            self.retried += 1
            metrics.PRODUCE_RETRIED.labels(msg.topic()).inc()
            self._letters.append((msg.topic(), msg.key(), msg.value() or b""))
        elif kind == "config":
            self._fatal = KafkaWriterError(f"cannot write dead letters to {msg.topic()}: {err}")
        else:
            self._letter_lost(err, msg.topic(), msg.value() or b"")

    def _letter_lost(self, err: Any, topic: str, letter: bytes) -> None:
        self.rejected += 1
        metrics.PRODUCE_REJECTED.labels(topic).inc()
        log.error("a dead letter of %d bytes was refused by %s and is lost: %s; letter starts %r",
                  len(letter), topic, err, letter[:300])  # fmt: skip

    def _on_client_error(self, err: Any) -> None:
        if err.fatal():
            self._fatal = KafkaWriterError(f"fatal producer error: {err}")
        elif err.code() in UNREACHABLE:
            self.health.failure(err.str(), what="producer")
        else:
            log.warning("Kafka client error: %s", err)

    def _failed(
        self, err: Any, topic: str, key: bytes | None, value: bytes | None, source: Source | None
    ) -> None:
        kind = classify(err)
        if kind == "retry":
            self.retried += 1
            metrics.PRODUCE_RETRIED.labels(topic).inc()
            self._retry.append((topic, key, value, source))
        elif kind == "config":
            self._fatal = KafkaWriterError(f"cannot produce to {topic}: {err}")
        else:
            self._condemned.append((err, topic, key, value, source))

    def _reject(self, reason: str, err: Any, topic: str, key: bytes | None, value: bytes | None,
                source: Source | None) -> None:  # fmt: skip
        size = len(value) if value is not None else 0
        if source is None or self.dlq_topic is None:
            self.rejected += 1
            metrics.PRODUCE_REJECTED.labels(topic).inc()
            log.error("record of %d bytes refused by %s for good (%s) and not dead-lettered (no %s); key=%r",
                      size, topic, err, "source" if self.dlq_topic else "dead-letter topic", key)  # fmt: skip
            return
        ref = source.ref() if isinstance(source, Record) else source
        error = EnrichError(f"cannot produce {size} bytes to {topic}: {err.str()}", reason=reason)
        letter_key, letter = dead_letter(error, stage=self.stage, source=ref, value=value,
                                         now_ms=int(time.time() * 1000))  # fmt: skip
        log.warning("dead-lettering a record made from %s[%d]@%d: %s (%d bytes)", ref.topic, ref.partition,
                    ref.offset, reason, size)  # fmt: skip
        self.dead_lettered += 1
        self._produce_letter(self.dlq_topic, letter_key, fit_letter(letter, self.budget))
        metrics.DEAD_LETTERS.labels(self.stage).inc()

    @staticmethod
    def _bytes(key: Key) -> bytes | None:
        return key.encode() if isinstance(key, str) else key

    def _raise_if_fatal(self) -> None:
        if self._fatal is not None:
            raise self._fatal
