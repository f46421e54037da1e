"""``scripts/kafka.sh`` refuses, before starting anything, what would leave a broken Kafka behind."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _kafka_sh(tmp_path: Path, action: str, **env: str) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if k != "KAFKA_BOOTSTRAP_SERVERS"}
    full.update({"LOCAL_KAFKA_DIR": str(tmp_path / "kafka"), "LOCAL_KAFKA_PORT": "1", **env})
    return subprocess.run(
        [str(ROOT / "scripts" / "kafka.sh"), action], env=full, capture_output=True, text=True, timeout=60
    )


def test_a_kafka_directory_formatted_for_one_node_is_not_started_as_three(tmp_path):
    # Given a Kafka directory formatted for a single node
    (tmp_path / "kafka" / "node-1" / "data").mkdir(parents=True)
    (tmp_path / "kafka" / "cluster").write_text("pKsCH-OcRLKaFTmyyeSHiA 1\n")
    # When it is started with LOCAL_KAFKA_NODES=3
    done = _kafka_sh(tmp_path, "up", LOCAL_KAFKA_NODES="3")
    # Then the script stops with a message that says what to do, and no node was started
    assert done.returncode == 1
    assert "holds a Kafka of 1 node(s), not LOCAL_KAFKA_NODES=3" in done.stderr
    assert not (tmp_path / "kafka" / "node-1" / "kafka.pid").exists()
    assert not (tmp_path / "kafka" / "node-1" / "server.properties").exists()


def test_a_number_of_nodes_that_is_not_one_to_nine_is_refused(tmp_path):
    for wrong in ("0", "10", "three"):
        done = _kafka_sh(tmp_path, "status", LOCAL_KAFKA_NODES=wrong)
        assert done.returncode == 1, wrong
        assert "LOCAL_KAFKA_NODES must be a number from 1 to 9" in done.stderr, done.stderr
