"""``enrich alerts run``: outliers topic → routing/grouping/inhibition/silences → durable outbox → receivers.

One consumer thread feeds the dispatcher and turns due notifications into outbox jobs; one delivery thread
per receiver works its own queue, so a slow or dead receiver never stalls the others or the consumer. On
start the consumer re-reads the last ``lookback`` of outliers to rebuild its groups; the notification log
and the outbox (both in Redis) make that replay send nothing twice.

High availability (``alerts.lease``): run two (or more) workers; the one holding the lease in Redis is
active — it consumes, dispatches and delivers — the others stand by, polling the lease. When the active
worker dies its lease expires (``ENRICH_ALERTS_LEASE_MS``) and a standby takes it and starts exactly as a
restarted worker does: it replays ``lookback``, and the notification log and the outbox, written only
under the lease's fencing token, make it send what the dead one had not, and nothing it had. A worker that
loses the lease (paused, cut off) drops its groups and stands by again. On SIGTERM the active worker
releases the lease so a standby takes over at once.

Outages: every Redis call waits through a Redis restart (stores/redis_client.py: unlimited retries with
backoff), so the consumer thread pauses on its next Redis call and the delivery threads on theirs; all
resume where they stopped. A Kafka outage only pauses consumption (the consumer keeps its position);
start-up waits for the broker (log lines) instead of failing. Jobs are enqueued before the notification is
recorded as sent, and job ids are deterministic, so a crash anywhere sends nothing twice and loses nothing.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

import orjson
import redis
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from alerts.config import AlertsConfig, ReceiverSpec
from alerts.delivery import Attempt, SmtpSettings, email_recipients, send_email, send_webhook
from alerts.dispatch import Dispatcher, Notification, Silence
from alerts.lease import Lease, NotLeaderError
from alerts.matchers import parse_all
from alerts.outbox import Job, Outbox, RedisNotificationLog, alerts_keyspace, work
from alerts.render import customer_email_of, email_content, message_id, selected, webhook_body
from connectors.health import monitor
from connectors.kafka_config import consumer_config
from connectors.kafka_writer import UNREACHABLE
from connectors.progress import ConsumerLag
from enrich.rules.model import parse_duration
from enrich.settings import Settings
from stores.redis_client import redis_client, stop_retrying

START_BACKOFF_MAX_S = 30.0

log = logging.getLogger(__name__)


class SilenceStore:
    """Silences in Redis (hash ``alerts:silences``), created from the CLI or the API."""

    def __init__(self, client: redis.Redis, prefix: str = "alerts:") -> None:
        self.client = client
        self.key = f"{alerts_keyspace(prefix, client)}silences"

    def add(self, matchers: list[str], duration_ms: int, *, created_by: str = "", comment: str = "",
            now_ms: int | None = None) -> str:  # fmt: skip
        parse_all(matchers)  # validate
        start = int(time.time() * 1000) if now_ms is None else now_ms
        sid = uuid.uuid4().hex[:12]
        doc = {"matchers": matchers, "starts_at": start, "ends_at": start + duration_ms,
               "created_by": created_by, "comment": comment}  # fmt: skip
        self.client.hset(self.key, sid, orjson.dumps(doc))
        return sid

    def expire(self, sid: str, now_ms: int | None = None) -> bool:
        raw: Any = self.client.hget(self.key, sid)
        if raw is None:
            return False
        doc = orjson.loads(raw)
        doc["ends_at"] = int(time.time() * 1000) if now_ms is None else now_ms
        self.client.hset(self.key, sid, orjson.dumps(doc))
        return True

    def all(self) -> list[Silence]:
        raw: Any = self.client.hgetall(self.key)
        out = []
        for sid, value in raw.items():
            d = orjson.loads(value)
            out.append(Silence(sid.decode(), parse_all(d["matchers"]), d["starts_at"], d["ends_at"],
                               d.get("created_by", ""), d.get("comment", "")))  # fmt: skip
        return out


@dataclass(frozen=True, slots=True)
class WorkerOptions:
    lookback_ms: int = 4 * 3_600_000
    tick_s: float = 0.2
    lease_ms: int = 5_000  # how long a dead active worker holds the lease (the failover time)


def jobs_for(n: Notification, spec: ReceiverSpec) -> list[Job]:
    """The deliveries one notification makes for one receiver: per integration, the alerts it is told
    about (``alerts.render.selected``); none when that is nothing."""
    out = []
    mid = message_id(n)
    if spec.webhook is not None:
        alerts = selected(n, spec.webhook)
        if alerts:
            body = webhook_body(n, alerts).decode()
            out.append(Job(mid, spec.name, "webhook", {"body": body}, [a.incident_id for a in alerts]))
    if spec.email is not None:
        alerts = selected(n, spec.email)
        if alerts:
            to = email_recipients(spec.email, customer_email_of(n, spec.email.customer_email))
            subject, text, html = email_content(n, alerts)
            payload = {"to": to, "subject": subject, "text": text, "html": html}
            out.append(Job(mid + ".mail", spec.name, "email", payload, [a.incident_id for a in alerts]))
    return out


class AlertsWorker:
    def __init__(
        self, settings: Settings, config: AlertsConfig, options: WorkerOptions | None = None
    ) -> None:
        self.settings = settings
        self.config = config
        self.options = options or WorkerOptions(lease_ms=settings.alerts_lease_ms)
        self.client = redis_client(settings)
        self.outbox = Outbox(self.client, settings.alerts_prefix)
        self.silences = SilenceStore(self.client, settings.alerts_prefix)
        self.nlog = RedisNotificationLog(self.client, settings.alerts_prefix)
        self.dispatcher = Dispatcher(config, self.nlog)
        self.lease = Lease(self.client, self.outbox.p, self.options.lease_ms)
        self.lost = threading.Event()  # the lease is gone: leave the active session
        self.smtp = SmtpSettings(
            settings.smtp_host,
            settings.smtp_port,
            settings.smtp_from,
            starttls=settings.smtp_starttls,
            username=settings.smtp_username,
            password=settings.smtp_password,
        )
        self.stop = threading.Event()
        self.lag = ConsumerLag(None, [])

    # -- consuming and dispatching ---------------------------------------------------------------------
    def _on_client_error(self, err: KafkaError) -> None:
        if err.code() in UNREACHABLE:
            monitor("kafka").failure(err.str(), what="alerts consumer")
        else:
            log.warning("Kafka client error: %s", err)

    def _consumer(self) -> Consumer | None:
        """The outliers consumer, positioned ``lookback`` ago; waits (with log lines) while the broker is
        away. None when asked to stop meanwhile."""
        conf: dict[str, Any] = {
            "bootstrap.servers": self.settings.kafka_bootstrap, "group.id": "enrich-alerts",
            "enable.auto.commit": False, "enable.partition.eof": False, "auto.offset.reset": "earliest",
            "error_cb": self._on_client_error, **consumer_config(self.settings.kafka_max_message_bytes),
        }  # fmt: skip
        consumer = Consumer(conf)
        topic = self.settings.topic_outliers
        health = monitor("kafka")
        delay = 1.0
        while not self.stop.is_set():
            try:
                md = consumer.list_topics(topic, timeout=3)
                meta = md.topics.get(topic)
                if meta is None or meta.error is not None or not meta.partitions:
                    raise KafkaException(meta.error if meta is not None and meta.error else "no partitions")
                since = int(time.time() * 1000) - self.options.lookback_ms
                wanted = [TopicPartition(topic, p, since) for p in meta.partitions]
                starts = consumer.offsets_for_times(wanted, timeout=10)
                consumer.assign(starts)
                self.lag = ConsumerLag(consumer, starts)  # input lag for `enrich status` and metrics
                health.recovered()
                return consumer
            except KafkaException as exc:
                health.failure(exc.args[0], what=f"alerts worker: positioning on {topic}")
                self.stop.wait(delay)
                delay = min(START_BACKOFF_MAX_S, delay * 2)
        consumer.close()
        return None

    def tick(self, now_ms: int) -> int:
        """Turn due notifications into outbox jobs. Returns the number of jobs queued."""
        self.dispatcher.silences = self.silences.all()
        queued = 0

        def deliver(n: Notification) -> None:
            nonlocal queued
            for job in jobs_for(n, self.config.receivers[n.receiver]):
                queued += self.outbox.enqueue(job)

        self.dispatcher.due(now_ms, deliver)
        return queued

    def consume_loop(self, lost: threading.Event | None = None) -> None:
        lost = lost or threading.Event()
        consumer = self._consumer()
        if consumer is None:
            return
        health = monitor("kafka")
        try:
            while not self.stop.is_set() and not lost.is_set():
                messages = consumer.consume(500, self.options.tick_s)
                self.lag.observe(messages)
                for msg in messages:
                    err = msg.error()
                    if err is not None:
                        if err.code() in UNREACHABLE:
                            health.failure(err.str(), what="alerts consumer")
                        elif err.code() != KafkaError._PARTITION_EOF:
                            log.warning("consume error on %s[%s]: %s", msg.topic(), msg.partition(), err)
                        continue
                    health.recovered()
                    try:
                        self.dispatcher.add(orjson.loads(msg.value() or b"{}"), int(time.time() * 1000))
                    except (KeyError, TypeError, orjson.JSONDecodeError) as exc:
                        log.warning(
                            "bad outlier at %s[%s]@%s: %s", msg.topic(), msg.partition(), msg.offset(), exc
                        )
                self.tick(int(time.time() * 1000))
        finally:
            consumer.close()

    # -- delivering ------------------------------------------------------------------------------------
    def send(self, job: Job) -> Attempt:
        spec = self.config.receivers[job.receiver]
        if job.kind == "webhook" and spec.webhook is not None:
            return send_webhook(spec.webhook, job.id, job.payload["body"].encode(),
                                allowed=self.config.allow_private_targets)  # fmt: skip
        if job.kind == "email" and spec.email is not None:
            p = job.payload
            return send_email(self.smtp, p["to"], p["subject"], p["text"], p["html"],
                              message_id=f"<{job.id}@fleet-enrich>")  # fmt: skip
        return Attempt(False, error=f"receiver {job.receiver} has no {job.kind} integration", retry=False)

    def delivery_loop(self, receiver: str, lost: threading.Event | None = None) -> None:
        lost = lost or threading.Event()
        spec = self.config.receivers[receiver]
        hook = spec.webhook
        max_attempts = hook.max_attempts if hook else 8
        first = parse_duration(hook.backoff) / 1000 if hook else 1.0
        cap = parse_duration(hook.max_backoff) / 1000 if hook else 300.0
        while not self.stop.is_set() and not lost.is_set():
            try:
                if not work(
                    self.outbox, receiver, self.send, max_attempts=max_attempts, first_s=first, cap_s=cap
                ):
                    self.stop.wait(self.options.tick_s)
            except NotLeaderError:
                lost.set()
            except redis.RedisError as exc:
                if not self.stop.is_set():
                    log.warning("delivery loop of %s: %s", receiver, exc)
                self.stop.wait(1.0)

    def request_stop(self) -> None:
        """Stop (signal handlers): the loops end, and calls waiting for Redis give up instead of retrying,
        so a worker standing by for an unreachable Redis stops at once too."""
        self.stop.set()
        stop_retrying()

    def run(self) -> None:
        """Stand by until this worker holds the lease, work while it does, stand by again if it is lost;
        until stopped."""
        try:
            while not self.stop.is_set():
                if self._acquire():
                    self.active()
        finally:
            self.stop.set()
            stop_retrying()  # threads waiting for Redis give up instead of holding the exit

    def _acquire(self) -> bool:
        """One try at the lease; waits a third of the lease time after a miss."""
        try:
            if self.lease.acquire():
                return True
        except redis.RedisError as exc:
            log.warning("alerts worker: taking the lease: %s", exc)
        self.stop.wait(self.options.lease_ms / 3000)
        return False

    def active(self) -> None:
        """One term as the active worker: fresh groups (rebuilt by the replay), fenced writes, a renewal
        thread, the delivery threads and the consumer, until stopped or the lease is lost."""
        token = self.lease.token
        log.info("alerts worker %s is active (lease %s)", self.lease.name, token)
        self.lost = lost = threading.Event()  # this term's own: a thread of an old term never sees it cleared
        self.outbox.token = self.nlog.token = token
        self.dispatcher = Dispatcher(self.config, self.nlog)
        done = threading.Event()
        threads = [threading.Thread(target=self.lease.keep, args=(lost, done), daemon=True, name="lease")]
        threads += [threading.Thread(target=self.delivery_loop, args=(r, lost), daemon=True,
                                     name=f"deliver-{r}") for r in self.config.receivers]  # fmt: skip
        for t in threads:
            t.start()
        try:
            self.consume_loop(lost)
        except NotLeaderError:
            lost.set()
        except redis.RedisError as exc:  # a cluster client gives up after its retries: a new term later
            log.warning("alerts worker %s: Redis failed (%s); leaving the term", self.lease.name, exc)
            self.stop.wait(1.0)
        finally:
            lost.set()  # ends the delivery loops
            done.set()
            if self.stop.is_set():
                stop_retrying()  # stopping: calls waiting for Redis give up instead of holding the exit
            deadline = time.monotonic() + 10
            for t in threads:
                t.join(timeout=max(0.1, deadline - time.monotonic()))
            self._release()  # compare-and-delete: a no-op when the lease is someone else's already
            if not self.stop.is_set():
                log.warning("alerts worker %s left its term (lease %s); standing by", self.lease.name, token)

    def _release(self) -> None:
        try:
            self.lease.release()
        except redis.RedisError as exc:  # it expires by itself
            log.warning("alerts worker: releasing the lease: %s", exc)
