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


RAY_PORTS = {
    6379: "GCS",
    8265: "dashboard",
    10001: "Ray client",
    8000: "Serve HTTP",
    8076: "object manager",
    52365: "dashboard agent",
}


def _open_to(rule: dict) -> list[str]:
    return [r["CidrIp"] for r in rule.get("IpRanges", [])] + [
        r["CidrIpv6"] for r in rule.get("Ipv6Ranges", [])
    ]


def _covers(rule: dict, port: int) -> bool:
    if rule.get("IpProtocol") == "-1" or rule.get("FromPort", -1) == -1:
        return True
    return rule["FromPort"] <= port <= rule["ToPort"]


def _launcher_inbound_rules():
    """`_create_default_inbound_rules` of the installed Ray's AWS launcher, taken from its source file
    (importing the module needs boto3, which the rule functions themselves do not use)."""
    import ast
    import itertools

    path = Path(ray.__file__).parent / "autoscaler" / "_private" / "aws" / "config.py"
    tree = ast.parse(path.read_text())
    wanted = {
        "_create_default_inbound_rules",
        "_create_default_intracluster_inbound_rules",
        "_create_default_ssh_inbound_rules",
    }
    module = ast.Module(
        body=[n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name in wanted], type_ignores=[]
    )
    assert len(module.body) == len(wanted), "Ray's launcher no longer defines its ingress rules this way"
    namespace = {"itertools": itertools}
    exec(compile(module, str(path), "exec"), namespace)
    return namespace["_create_default_inbound_rules"]


def test_security_group_keeps_ray_ports_inside_the_cluster():
    """The ingress Ray's own AWS launcher would create from cluster.yaml (its code, not a copy of it):
    only SSH is open to addresses; every Ray port is reachable only from the cluster's own group."""
    config = yaml.safe_load((REPO / "cluster.yaml").read_text())
    extra = config["provider"]["security_group"].get("IpPermissions", [])
    assert config["provider"]["security_group"]["GroupName"]
    for node_type in config["available_node_types"].values():  # no node bypasses the group
        assert "SecurityGroupIds" not in node_type["node_config"]
    rules = _launcher_inbound_rules()({"sg-tunestack"}, extra)
    assert rules
    for rule in rules:
        if _open_to(rule):  # reachable from addresses: SSH and nothing else
            assert (rule["IpProtocol"], rule["FromPort"], rule["ToPort"]) == ("tcp", 22, 22), rule
        else:
            assert [g["GroupId"] for g in rule["UserIdGroupPairs"]] == ["sg-tunestack"], rule
    for port, what in RAY_PORTS.items():
        exposed = [r for r in rules if _open_to(r) and _covers(r, port)]
        assert not exposed, f"{what} port {port} is open to {exposed}"
    for rule in extra:  # whatever is added by hand never opens a Ray port to the world
        assert not (_open_to(rule) and any(_covers(rule, p) for p in RAY_PORTS)), rule


def test_serve_binds_loopback_by_default():
    from serve.cli import DEFAULT_CONFIG, serve_config_dict

    raw = yaml.safe_load(DEFAULT_CONFIG.read_text())
    assert raw["http_options"]["host"] == "127.0.0.1"
    assert serve_config_dict(str(DEFAULT_CONFIG))["http_options"]["host"] == "127.0.0.1"
    assert (
        serve_config_dict(str(DEFAULT_CONFIG), host="0.0.0.0")["http_options"]["host"] == "0.0.0.0"
    )  # only if asked
