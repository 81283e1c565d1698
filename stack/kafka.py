"""A real Apache Kafka broker (single node, KRaft combined mode) from the official Maven Central jars.

The jars are resolved by Maven from ``stack/pom.xml`` into ``<state>/kafka/lib`` (once; again when the pom
changes). Storage is formatted with a fresh cluster id on first start. The broker logs to
``<state>/kafka/logs/server.log`` through log4j2.
"""

from __future__ import annotations

import base64
import hashlib
import shutil
import subprocess
import uuid
from importlib import resources
from pathlib import Path

from connectors.kafka_config import DEFAULT_MAX_MESSAGE_BYTES
from stack.errors import StackError
from stack.procs import Managed

POM_NAME = "pom.xml"


class KafkaBroker:
    """Install, format, start and stop one broker whose files live under ``root``."""

    def __init__(
        self,
        root: Path,
        *,
        port: int,
        controller_port: int,
        heap: str = "1g",
        lib: Path | None = None,
        host: str = "127.0.0.1",
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    ) -> None:
        self.root = root.resolve()
        self.host = host  # listeners bind to and advertise this address (loopback for the local stack)
        self.max_message_bytes = max_message_bytes
        self.port = port
        self.controller_port = controller_port
        self.heap = heap
        self.lib = (lib or self.root / "lib").resolve()
        self.data = self.root / "data"
        self.logs = self.root / "logs"
        self.config = self.root / "server.properties"
        self.log_config = self.root / "log4j2.properties"
        self.process = Managed("kafka", self.root / "kafka.pid", str(self.root))

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    # -- install ---------------------------------------------------------------------------------------
    def pom_text(self) -> str:
        return resources.files("stack").joinpath(POM_NAME).read_text()

    def installed(self) -> bool:
        marker = self.lib / ".resolved"
        return marker.exists() and marker.read_text().strip() == self._pom_digest()

    def install(self) -> None:
        """Resolve the broker jars with Maven (skipped when already resolved from the same pom)."""
        if self.installed():
            return
        mvn = shutil.which("mvn")
        if mvn is None:
            raise StackError("Maven (mvn) is not on PATH: install it (apt-get install maven) to fetch Kafka")
        if shutil.which("java") is None:
            raise StackError("java is not on PATH: Kafka needs Java 17 or newer")
        self.root.mkdir(parents=True, exist_ok=True)
        self.lib.parent.mkdir(parents=True, exist_ok=True)
        pom = self.lib.parent / "pom.xml"
        pom.write_text(self.pom_text())
        if self.lib.exists():
            shutil.rmtree(self.lib)
        cmd = [
            mvn,
            "-q",
            "-B",
            "-f",
            str(pom),
            "dependency:copy-dependencies",
            f"-DoutputDirectory={self.lib}",
        ]
        result = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if result.returncode != 0 or not any(self.lib.glob("kafka_2.13-*.jar")):
            tail = (result.stdout + result.stderr)[-3000:]
            raise StackError(
                "Maven could not resolve the Apache Kafka jars from Maven Central "
                f"(exit {result.returncode}); is the registry reachable?\n{tail}"
            )
        (self.lib / ".resolved").write_text(self._pom_digest())

    def _pom_digest(self) -> str:
        return hashlib.sha256(self.pom_text().encode()).hexdigest()

    # -- configure -------------------------------------------------------------------------------------
    def write_config(self) -> None:
        self.data.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(parents=True, exist_ok=True)
        props = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@{self.host}:{self.controller_port}",
            "listeners": f"PLAINTEXT://{self.host}:{self.port},CONTROLLER://{self.host}:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://{self.host}:{self.port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": str(self.data),
            "num.partitions": "1",
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "10",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
            "auto.create.topics.enable": "false",
            "log.cleaner.enable": "true",
            "log.retention.hours": "24",
            "log.segment.bytes": str(256 * 1024 * 1024),
            # The same limit as the clients' and the topics' (ENRICH_KAFKA_MAX_MESSAGE_BYTES).
            "message.max.bytes": str(self.max_message_bytes),
        }
        self.config.write_text("".join(f"{k}={v}\n" for k, v in props.items()))
        self.log_config.write_text(
            "status = warn\n"
            "appender.file.type = RollingFile\n"
            "appender.file.name = FILE\n"
            f"appender.file.fileName = {self.logs / 'server.log'}\n"
            f"appender.file.filePattern = {self.logs / 'server.log.%i'}\n"
            "appender.file.layout.type = PatternLayout\n"
            "appender.file.layout.pattern = [%d] %p %m (%c)%n\n"
            "appender.file.policies.type = Policies\n"
            "appender.file.policies.size.type = SizeBasedTriggeringPolicy\n"
            "appender.file.policies.size.size = 50MB\n"
            "appender.file.strategy.type = DefaultRolloverStrategy\n"
            "appender.file.strategy.max = 3\n"
            "rootLogger.level = INFO\n"
            "rootLogger.appenderRef.file.ref = FILE\n"
            "logger.kafka.name = kafka\nlogger.kafka.level = INFO\n"
            "logger.state.name = state.change.logger\nlogger.state.level = WARN\n"
        )

    def formatted(self) -> bool:
        return (self.data / "meta.properties").exists()

    def format(self) -> str:
        """Format the storage with a new cluster id (only if never formatted). Returns the cluster id."""
        id_file = self.root / "cluster.id"
        if self.formatted():
            return id_file.read_text().strip() if id_file.exists() else ""
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        cmd = [*self._java(), "kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(self.config)]
        result = subprocess.run(cmd, capture_output=True, text=True, cwd=self.root, check=False)
        if result.returncode != 0:
            raise StackError(f"formatting Kafka storage failed:\n{(result.stdout + result.stderr)[-3000:]}")
        id_file.write_text(cluster_id + "\n")
        return cluster_id

    # -- run -------------------------------------------------------------------------------------------
    def _java(self) -> list[str]:
        java = shutil.which("java")
        if java is None:
            raise StackError("java is not on PATH: Kafka needs Java 17 or newer")
        return [
            java,
            "-Xms256m",
            f"-Xmx{self.heap}",
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.log_config}",
            f"-Dkafka.logs.dir={self.logs}",
            "-cp",
            f"{self.lib}/*",
        ]

    def start(self) -> bool:
        """Start the broker unless it already runs. True when it was started now."""
        if self.process.pid() is not None:
            return False
        self.write_config()
        self.format()
        self.process.start(
            [*self._java(), "kafka.Kafka", str(self.config)], log_file=self.logs / "stdout.log", cwd=self.root
        )
        return True

    def log_tail(self, lines: int = 40) -> str:
        out = []
        for name in ("stdout.log", "server.log"):
            path = self.logs / name
            if path.exists():
                out.append(
                    f"--- {path} ---\n" + "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
                )
        return "\n".join(out)
