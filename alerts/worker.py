"""``enrich alerts run``: outliers topic → routing/grouping/inhibition/silences → durable outbox → receivers.

One consumer thread feeds the dispatcher and turns due notifications into outbox jobs; one delivery thread
per receiver works its own queue, so a slow or dead receiver never stalls the others or the consumer. On
start the consumer re-reads the last ``lookback`` of outliers to rebuild its groups; the notification log
and the outbox (both in Redis) make that replay send nothing twice.
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
from confluent_kafka import Consumer, KafkaError, TopicPartition

from alerts.config import AlertsConfig, ReceiverSpec
from alerts.delivery import Attempt, SmtpSettings, email_recipients, send_email, send_webhook
from alerts.dispatch import Dispatcher, Notification, Silence
from alerts.matchers import parse_all
from alerts.outbox import Job, Outbox, RedisNotificationLog, work
from alerts.render import customer_email_of, email_content, message_id, webhook_body
from enrich.rules.model import parse_duration
from enrich.settings import Settings

log = logging.getLogger(__name__)


class SilenceStore:
    """Silences in Redis (hash ``alerts:silences``), created from the CLI or the API."""

    def __init__(self, client: redis.Redis, prefix: str = "alerts:") -> None:
        self.client = client
        self.key = f"{prefix}silences"

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


def jobs_for(n: Notification, spec: ReceiverSpec) -> list[Job]:
    """The deliveries one notification makes for one receiver."""
    incidents = [a.incident_id for a in (*n.firing, *n.resolved)]
    out = []
    mid = message_id(n)
    if spec.webhook is not None and (n.firing or spec.webhook.send_resolved):
        out.append(Job(mid, spec.name, "webhook", {"body": webhook_body(n).decode()}, incidents))
    if spec.email is not None and (n.firing or spec.email.send_resolved):
        to = email_recipients(spec.email, customer_email_of(n))
        subject, text, html = email_content(n)
        payload = {"to": to, "subject": subject, "text": text, "html": html}
        out.append(Job(mid + ".mail", spec.name, "email", payload, incidents))
    return out


class AlertsWorker:
    def __init__(
        self, settings: Settings, config: AlertsConfig, options: WorkerOptions | None = None
    ) -> None:
        self.settings = settings
        self.config = config
        self.options = options or WorkerOptions()
        self.client = redis.Redis.from_url(settings.redis_url)
        self.outbox = Outbox(self.client, settings.alerts_prefix)
        self.silences = SilenceStore(self.client, settings.alerts_prefix)
        self.dispatcher = Dispatcher(config, RedisNotificationLog(self.client, settings.alerts_prefix))
        self.smtp = SmtpSettings(
            settings.smtp_host,
            settings.smtp_port,
            settings.smtp_from,
            starttls=settings.smtp_starttls,
            username=settings.smtp_username,
            password=settings.smtp_password,
        )
        self.stop = threading.Event()

    # -- consuming and dispatching ---------------------------------------------------------------------
    def _consumer(self) -> Consumer:
        consumer = Consumer({"bootstrap.servers": self.settings.kafka_bootstrap, "group.id": "enrich-alerts",
                             "enable.auto.commit": False, "enable.partition.eof": False})  # fmt: skip
        topic = self.settings.topic_outliers
        md = consumer.list_topics(topic, timeout=30)
        since = int(time.time() * 1000) - self.options.lookback_ms
        wanted = [TopicPartition(topic, p, since) for p in md.topics[topic].partitions]
        consumer.assign(consumer.offsets_for_times(wanted, timeout=30))
        return consumer

    def tick(self, now_ms: int) -> int:
        """Turn due notifications into outbox jobs. Returns the number of jobs queued."""
        self.dispatcher.silences = self.silences.all()
        queued = 0
        for n in self.dispatcher.due(now_ms):
            spec = self.config.receivers[n.receiver]
            for job in jobs_for(n, spec):
                queued += self.outbox.enqueue(job)
        return queued

    def consume_loop(self) -> None:
        consumer = self._consumer()
        try:
            while not self.stop.is_set():
                for msg in consumer.consume(500, self.options.tick_s):
                    err = msg.error()
                    if err is not None:
                        if err.code() != KafkaError._PARTITION_EOF:
                            log.warning("consume error on %s[%s]: %s", msg.topic(), msg.partition(), err)
                        continue
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
            return send_email(self.smtp, p["to"], p["subject"], p["text"], p["html"])
        return Attempt(False, error=f"receiver {job.receiver} has no {job.kind} integration", retry=False)

    def delivery_loop(self, receiver: str) -> None:
        spec = self.config.receivers[receiver]
        hook = spec.webhook
        max_attempts = hook.max_attempts if hook else 8
        first = parse_duration(hook.backoff) / 1000 if hook else 1.0
        cap = parse_duration(hook.max_backoff) / 1000 if hook else 300.0
        while not self.stop.is_set():
            try:
                if not work(
                    self.outbox, receiver, self.send, max_attempts=max_attempts, first_s=first, cap_s=cap
                ):
                    self.stop.wait(self.options.tick_s)
            except redis.RedisError as exc:
                log.warning("delivery loop of %s: %s", receiver, exc)
                self.stop.wait(1.0)

    def run(self) -> None:
        threads = [threading.Thread(target=self.delivery_loop, args=(r,), daemon=True, name=f"deliver-{r}")
                   for r in self.config.receivers]  # fmt: skip
        for t in threads:
            t.start()
        try:
            self.consume_loop()
        finally:
            self.stop.set()
            for t in threads:
                t.join(timeout=10)
