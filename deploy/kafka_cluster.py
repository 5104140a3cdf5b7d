"""A local multi-broker KRaft cluster (each node broker + controller) for failure tests.

Each node is the local single broker of deploy/local.py (same jars, same start-up) in a state
folder of its own, with its node id, a shared voter list, and replication settings that keep
every acknowledged write on two nodes: topics at replication factor 3 with min.insync.replicas 2,
so one node can die without losing an acked fact or stopping producers (acks=all).
"""

from __future__ import annotations

import os
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from deploy import local
from drawdown.settings import Settings

REPLICATED = {
    "offsets.topic.replication.factor": "3",
    "transaction.state.log.replication.factor": "3",
    "transaction.state.log.min.isr": "2",
    "share.coordinator.state.topic.replication.factor": "3",
    "share.coordinator.state.topic.min.isr": "2",
    "default.replication.factor": "3",
    "min.insync.replicas": "2",
}


def with_overrides(properties: str, overrides: dict[str, str]) -> str:
    """server.properties text with `overrides` replacing (or adding) keys."""
    lines = [line for line in properties.splitlines() if line.split("=", 1)[0] not in overrides]
    return "\n".join(lines + [f"{key}={value}" for key, value in overrides.items()]) + "\n"


@dataclass
class KafkaCluster:
    """Nodes 1..n on free ports under `base_dir`; start, kill and restart single nodes."""

    base_dir: Path
    jars: Settings  # whose state folder caches the broker's jars (resolved once from Maven Central)
    replicated: bool = True  # REPLICATED settings (a one-node cluster keeps the single broker's)
    nodes: list[Settings] = field(default_factory=list)
    pids: dict[int, int] = field(default_factory=dict)

    @property
    def bootstrap(self) -> str:
        return ",".join(f"127.0.0.1:{node.kafka_port}" for node in self.nodes)

    def voters(self) -> str:
        return ",".join(f"{index}@127.0.0.1:{node.kafka_controller_port}" for index, node in enumerate(self.nodes, 1))

    def properties_of(self, index: int) -> Path:
        node = self.nodes[index - 1]
        home = local.kafka_dir(node)
        (home / "data").mkdir(parents=True, exist_ok=True)
        text = with_overrides(local.kafka_server_properties(node),
                              {"node.id": str(index), "controller.quorum.voters": self.voters(),
                               **(REPLICATED if self.replicated else {})})
        path = home / "server.properties"
        path.write_text(text)
        (home / "log4j2.properties").write_text(local.kafka_log4j_properties(node))
        return path

    def start(self) -> str:
        """Format (once, one cluster id) and start every node; the bootstrap list once all answer."""
        libs = local.ensure_kafka_jars(self.jars)
        java = local.require_tool("java", "install Java 17 or newer")
        cluster_id = local.base64_uuid()
        for index in range(1, len(self.nodes) + 1):
            properties = self.properties_of(index)
            home = properties.parent
            if not (home / "data" / "meta.properties").exists():
                result = subprocess.run([java, "-cp", f"{libs}/*", f"-Dlog4j2.configurationFile={home}/log4j2.properties",
                                         "kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(properties)],
                                        capture_output=True, text=True)
                if result.returncode != 0:
                    raise local.LocalStackError(f"formatting node {index} failed:\n{result.stdout}{result.stderr}")
        for index in range(1, len(self.nodes) + 1):
            self.start_node(index, wait=False)
        for index in range(1, len(self.nodes) + 1):
            self.wait_node(index)
        return self.bootstrap

    def start_node(self, index: int, wait: bool = True) -> None:
        node = self.nodes[index - 1]
        libs = local.kafka_libs_dir(self.jars)
        home = local.kafka_dir(node)
        java = local.require_tool("java", "install Java 17 or newer")
        self.pids[index] = local.spawn(node, "kafka", [
            java, "-Xms128m", f"-Xmx{node.kafka_heap_mb}m", "-XX:+UseG1GC", "-XX:TieredStopAtLevel=1",
            "-cp", f"{libs}/*", f"-Dlog4j2.configurationFile={home}/log4j2.properties", "kafka.Kafka",
            str(home / "server.properties")])
        if wait:
            self.wait_node(index)

    def wait_node(self, index: int) -> None:
        node = self.nodes[index - 1]
        local.wait_until(lambda: local.kafka_ready(node, f"127.0.0.1:{node.kafka_port}"), local.KAFKA_READY_TIMEOUT_S,
                         lambda: local.pid_alive(self.pids[index]), f"Kafka node {index}", local.log_file(node, "kafka"))

    def kill_node(self, index: int) -> None:
        """SIGKILL one node (no clean shutdown: its leaderships move when the controllers notice)."""
        os.killpg(self.pids[index], signal.SIGKILL)
        local.wait_until(lambda: not local.pid_alive(self.pids[index]), 10, lambda: True, f"node {index} kill",
                         local.log_file(self.nodes[index - 1], "kafka"))

    def stop(self) -> None:
        for index, pid in self.pids.items():
            if local.pid_alive(pid):
                local.stop_pid(pid, f"kafka node {index}", timeout_s=10)


def cluster(jars: Settings, base_dir: Path, ports: list[tuple[int, int]], heap_mb: int = 384,
            replicated: bool = True) -> KafkaCluster:
    """A cluster with one node per (client port, controller port), each in base_dir/node-<n>."""
    nodes = [Settings(state_dir=base_dir / f"node-{index}", kafka_port=port, kafka_controller_port=controller,
                      kafka_heap_mb=heap_mb)
             for index, (port, controller) in enumerate(ports, 1)]
    return KafkaCluster(base_dir=base_dir, jars=jars, nodes=nodes, replicated=replicated)
