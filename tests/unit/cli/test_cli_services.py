"""CLI tests of the real-time service flags (no server): `--variant`, the
update mask that `deployments update` sends, restart, and event lines."""

from __future__ import annotations

import pytest

from modelfleet.cli import cmd_deployments, specflags
from modelfleet.cli.main import build_parser, main
from modelfleet.v1 import common_pb2, deployments_pb2


@pytest.mark.parametrize(
    ("text", "expected"),
    [("resnet=100", ("resnet", 0, 100)), ("resnet:2=50", ("resnet", 2, 50)), ("my.model:v3=0", ("my.model", 3, 0))],
)
def test_parse_variant(text: str, expected: tuple[str, int, int]) -> None:
    v = specflags.parse_variant(text)
    assert (v.model_id, v.model_version, v.weight) == expected


@pytest.mark.parametrize("text", ["resnet", "resnet:2", "resnet=x", "resnet:a=1", ":1=2", "m=101"])
def test_parse_variant_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        specflags.parse_variant(text)


def test_start_with_variants_applies_the_per_variant_flags_to_each() -> None:
    args = build_parser().parse_args([
        "deployments", "start", "--variant", "m:1=60", "--variant", "m:2=40", "--instances", "2", "--cpus", "1",
        "--pool", "blue", "--env", "K=V", "--auto-stop", "2h", "--traffic-limit", "100", "--dry-run",
    ])
    req, given = specflags.build_spec(args)
    assert [(v.model_id, v.model_version, v.weight, v.instances, v.resources.pool, dict(v.env)) for v in req.variants] == [
        ("m", 1, 60, 2, "blue", {"K": "V"}), ("m", 2, 40, 2, "blue", {"K": "V"})]
    assert not req.model_id and not req.instances and not req.HasField("resources")
    assert req.auto_stop.seconds == 7200 and req.traffic_limit_qps == 100 and args.dry_run
    assert set(given) == {"variants", "auto_stop", "traffic_limit_qps"}


def test_update_sends_only_the_named_fields() -> None:
    args = build_parser().parse_args(["deployments", "update", "d", "--queue-capacity", "64", "--traffic-limit", "0",
                                      "--auto-stop", "0"])
    req, given = specflags.build_spec(args, update=True)
    assert given == ["queue_capacity", "traffic_limit_qps", "auto_stop"]
    assert req.queue_capacity == 64 and not req.HasField("auto_stop")  # auto stop 0: none
    args = build_parser().parse_args(["deployments", "update", "d", "--variant", "m:1=100", "--instances", "0"])
    req, given = specflags.build_spec(args, update=True)
    assert given == ["variants"] and req.variants[0].instances == -1  # 0 in a variant would mean "keep"


def test_start_needs_a_model_a_variant_or_a_deployment_to_restart(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--addr", "127.0.0.1:1", "deployments", "start"]) == 2
    assert "--deployment-id ID to restart" in capsys.readouterr().err
    assert main(["--addr", "127.0.0.1:1", "deployments", "start", "m", "--variant", "m:1=100"]) == 2
    assert "either MODEL or --variant" in capsys.readouterr().err
    assert main(["--addr", "127.0.0.1:1", "deployments", "start", "--deployment-id", "d", "--instances", "2"]) == 2
    assert "give only --deployment-id" in capsys.readouterr().err
    assert main(["--addr", "127.0.0.1:1", "deployments", "start", "--variant", "m:1=100", "--model-version", "1"]) == 2
    assert "--model-version cannot be used with --variant" in capsys.readouterr().err


def test_event_lines() -> None:
    e = deployments_pb2.DeploymentEvent(seq=7, kind=deployments_pb2.EVENT_KIND_ROUTING, node_id="n1", variant="m-v1",
                                        allocation_id="d-1", from_routing_state=common_pb2.ROUTING_STATE_STARTING,
                                        routing_state=common_pb2.ROUTING_STATE_STARTED)
    e.time.FromSeconds(0)
    assert cmd_deployments.event_line(e).endswith("route n1 [m-v1] d-1: starting -> started")
    e = deployments_pb2.DeploymentEvent(seq=8, kind=deployments_pb2.EVENT_KIND_STATUS, from_status=common_pb2.DEPLOYMENT_STATUS_RUNNING,
                                        status=common_pb2.DEPLOYMENT_STATUS_STOPPING, reason="stopping: 1 route not stopped yet")
    assert "status running -> stopping  (stopping: 1 route not stopped yet)" in cmd_deployments.event_line(e)
