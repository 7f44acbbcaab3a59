"""cluster.yaml validates against the cluster-launcher schema that ships with Ray."""

import json
from pathlib import Path

import jsonschema
import ray
import yaml

REPO = Path(__file__).resolve().parents[2]


def test_cluster_yaml_matches_ray_launcher_schema():
    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    config = yaml.safe_load((REPO / "cluster.yaml").read_text())
    jsonschema.validate(config, schema)
    types = config["available_node_types"]
    assert config["head_node_type"] in types
    assert any("g5" in t["node_config"]["InstanceType"] for t in types.values())  # a GPU worker type


def test_cluster_keeps_ray_private_and_token_auth_on():
    config = yaml.safe_load((REPO / "cluster.yaml").read_text())
    head = " ".join(config["head_start_ray_commands"])
    assert "RAY_AUTH_MODE=token" in head and "--dashboard-host=127.0.0.1" in head
    assert "RAY_AUTH_MODE=token" in " ".join(config["worker_start_ray_commands"])
    assert "0.0.0.0" not in (REPO / "cluster.yaml").read_text()
