"""cluster.yaml is a valid Ray cluster-launcher config, checked offline with Ray's own schema."""

from __future__ import annotations

from pathlib import Path

import jsonschema
import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

CLUSTER_YAML = Path(__file__).resolve().parents[1] / "cluster.yaml"


def load() -> dict:
    return yaml.safe_load(CLUSTER_YAML.read_text())


def test_cluster_yaml_validates_against_rays_schema() -> None:
    validate_config(prepare_config(load()))


def test_cluster_has_a_head_and_autoscaled_gpu_workers_and_installs_moe_orch() -> None:
    cfg = load()
    types = cfg["available_node_types"]
    workers = [t for name, t in types.items() if name != cfg["head_node_type"]]
    assert any(t["resources"].get("GPU", 0) >= 1 and t["max_workers"] > t["min_workers"] for t in workers)
    setup = " ".join(cfg["setup_commands"])
    assert "-r ~/moe-orch-lock.txt" in setup and "-e ~/moe-orch" in setup  # the locked set, then moe-orch
    # the dashboard binds to loopback on the head, reached through `ray dashboard` (SSH)
    assert "--dashboard-host=127.0.0.1" in " ".join(cfg["head_start_ray_commands"])


def test_a_broken_cluster_yaml_is_rejected_by_the_same_check() -> None:
    cfg = load()
    cfg["available_node_types"]["gpu_worker"]["max_workers"] = "many"
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(cfg))


def test_tracking_is_one_server_on_the_heads_private_address() -> None:
    """No node logs to a SQLite file of its own: every node's Ray and shell point at the head's MLflow server,
    which listens on the head's private address (never 0.0.0.0) with proxied artifacts."""
    cfg = load()
    head = " ".join(cfg["head_start_ray_commands"])
    assert "mlflow server --host $(hostname -I | cut -d\" \" -f1) --port 5000" in head and "--serve-artifacts" in head
    assert "0.0.0.0" not in yaml.safe_dump(cfg)
    assert "MLFLOW_TRACKING_URI=http://$(hostname -I" in head
    assert "MLFLOW_TRACKING_URI=http://$RAY_HEAD_IP:5000" in " ".join(cfg["worker_start_ray_commands"])
    assert "sqlite" not in " ".join(cfg["setup_commands"] + cfg["worker_start_ray_commands"])


def test_every_node_gets_the_datasets_and_reads_its_own_copy() -> None:
    cfg = load()
    assert cfg["file_mounts"]["~/moe-orch-data"] == "../shared/data"
    for commands in (cfg["head_start_ray_commands"], cfg["worker_start_ray_commands"]):
        assert "MOE_ORCH_DATA=$HOME/moe-orch-data" in " ".join(commands)


def test_every_node_keeps_checkpoints_in_one_object_store_prefix() -> None:
    """Storage is set once (an s3:// prefix) and given to every node's Ray and shell; no credentials in the file."""
    cfg = load()
    setup = " ".join(cfg["setup_commands"])
    assert "echo 's3://" in setup and "export MOE_ORCH_STORAGE=$(cat ~/moe-orch-storage)" in setup
    for commands in (cfg["head_start_ray_commands"], cfg["worker_start_ray_commands"]):
        assert "MOE_ORCH_STORAGE=$(cat ~/moe-orch-storage)" in " ".join(commands)
    text = CLUSTER_YAML.read_text()
    assert "AWS_SECRET_ACCESS_KEY" not in text and "secret_key" not in text
