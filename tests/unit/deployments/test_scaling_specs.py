"""Unit tests of control_plane.deployments.scaling: autoscaling settings, their defaults and their limits."""

from __future__ import annotations

import pytest
from google.protobuf import duration_pb2, field_mask_pb2

from control_plane import errors
from control_plane.deployments import scaling
from control_plane.deployments.specs import SpecRules
from control_plane.planning import scheduler
from modelfleet.v1 import common_pb2, models_pb2
from modelfleet.v1 import deployments_pb2 as dpb


def resolve(model_id: str, version: int) -> models_pb2.Model:
    return models_pb2.Model(model_id=model_id, version=version or 1)


RULES = SpecRules(resolve=resolve)


def secs(s: float) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromNanoseconds(int(s * 1e9))
    return d


def auto(**kw: object) -> dpb.Autoscaling:
    kw.setdefault("enabled", True)
    return dpb.Autoscaling(**kw)  # type: ignore[arg-type]


def test_defaults_are_applied_and_a_disabled_setting_is_cleared() -> None:
    spec = RULES.normalize(dpb.StartDeploymentRequest(model_id="m", model_threads=2, autoscaling=auto(min_allocations=1, max_allocations=4)))
    (v,) = spec.variants
    a = v.autoscaling
    assert (a.min_allocations, a.max_allocations, a.target_in_flight_per_allocation) == (1, 4, 2.0)
    assert (a.upscale_delay.seconds, a.downscale_delay.seconds) == (10, 60) and not a.HasField("scale_to_zero_after")
    assert not spec.HasField("autoscaling")  # moved into the variant
    off = RULES.normalize(dpb.StartDeploymentRequest(model_id="m", autoscaling=dpb.Autoscaling(max_allocations=4)))
    assert not off.variants[0].HasField("autoscaling")


def test_a_zero_delay_is_kept() -> None:
    spec = RULES.normalize(dpb.StartDeploymentRequest(model_id="m", autoscaling=auto(max_allocations=2, upscale_delay=secs(0))))
    assert spec.variants[0].autoscaling.HasField("upscale_delay") and spec.variants[0].autoscaling.upscale_delay.ToNanoseconds() == 0


@pytest.mark.parametrize(
    ("req", "words"),
    [
        (dpb.StartDeploymentRequest(model_id="m", autoscaling=auto(min_allocations=3, max_allocations=2)),
         "autoscaling.min_allocations 3 is greater than max_allocations 2"),
        (dpb.StartDeploymentRequest(model_id="m", autoscaling=auto(max_allocations=0)), "autoscaling.max_allocations 0 is out of range: 1 to 1000"),
        (dpb.StartDeploymentRequest(model_id="m", autoscaling=auto(min_allocations=-1, max_allocations=2)), "min_allocations -1 must be >= 0"),
        (dpb.StartDeploymentRequest(model_id="m", instances=2, autoscaling=auto(max_allocations=2)),
         "instances 2 and autoscaling are mutually exclusive"),
        (dpb.StartDeploymentRequest(model_id="m", autoscaling=auto(max_allocations=2, target_in_flight_per_allocation=-1)),
         "autoscaling.target_in_flight_per_allocation -1 is out of range"),
        (dpb.StartDeploymentRequest(model_id="m", autoscaling=auto(max_allocations=2, target_in_flight_per_allocation=float("nan"))),
         "target_in_flight_per_allocation nan"),
        (dpb.StartDeploymentRequest(model_id="m", autoscaling=auto(max_allocations=2, downscale_delay=secs(7200))),
         "autoscaling.downscale_delay 7200s is out of range: 0 to 3600s"),
        (dpb.StartDeploymentRequest(model_id="m", autoscaling=auto(min_allocations=0, max_allocations=2, scale_to_zero_after=secs(60))),
         "autoscaling.scale_to_zero_after is not supported yet"),
        (dpb.StartDeploymentRequest(variants=[dpb.VariantSpec(model_id="m", weight=50), dpb.VariantSpec(
            model_id="n", weight=50, instances=1, autoscaling=auto(max_allocations=2))]),
         "variants[1].instances 1 and variants[1].autoscaling are mutually exclusive"),
    ],
)
def test_bad_settings_name_the_field_and_the_limit(req: dpb.StartDeploymentRequest, words: str) -> None:
    with pytest.raises(errors.InvalidArgument) as err:
        RULES.normalize(req)
    assert words in err.value.message


def test_max_beyond_the_nodes_that_could_hold_it_is_refused() -> None:
    spec = RULES.normalize(dpb.StartDeploymentRequest(
        model_id="m", resources=common_pb2.Resources(pool="gpu"), autoscaling=auto(max_allocations=3)))
    nodes = [
        scheduler.NodeView(node_id="a", cpus=4, memory_bytes=1 << 30, gpus=0, labels={"pool": "gpu"}),
        scheduler.NodeView(node_id="b", cpus=4, memory_bytes=1 << 30, gpus=0, labels={"pool": "gpu"}, ready=False),
        scheduler.NodeView(node_id="c", cpus=4, memory_bytes=1 << 30, gpus=0),  # another pool
    ]
    with pytest.raises(errors.InvalidArgument) as err:
        scaling.check_fleet(spec, nodes=nodes, model_bytes=[1000])
    assert "autoscaling.max_allocations 3 is beyond the fleet's capacity: 2 node(s)" in err.value.message
    spec.variants[0].autoscaling.max_allocations = 2
    scaling.check_fleet(spec, nodes=nodes, model_bytes=[1000])


def _update(current: dpb.StartDeploymentRequest, paths: list[str], **spec: object) -> dpb.StartDeploymentRequest:
    req = dpb.UpdateDeploymentRequest(deployment_id="d", spec=dpb.StartDeploymentRequest(**spec), update_mask=field_mask_pb2.FieldMask(paths=paths))  # type: ignore[arg-type]
    return RULES.merge_update(current, req)


def test_updates_switch_between_a_fixed_count_and_autoscaling() -> None:
    fixed = RULES.normalize(dpb.StartDeploymentRequest(model_id="m", instances=2))
    scaled = _update(fixed, ["autoscaling"], autoscaling=auto(min_allocations=1, max_allocations=3))
    assert scaled.variants[0].instances == 0 and scaled.variants[0].autoscaling.max_allocations == 3
    back = _update(scaled, ["instances"], instances=2)
    assert back.variants[0].instances == 2 and not back.variants[0].HasField("autoscaling")
    # a variants update that leaves autoscaling out keeps it
    kept = _update(scaled, ["variants"], variants=[dpb.VariantSpec(name="m-v1", weight=100, queue_capacity=7)])
    assert kept.variants[0].autoscaling.max_allocations == 3 and kept.variants[0].queue_capacity == 7
    off = _update(scaled, ["autoscaling"], autoscaling=dpb.Autoscaling(enabled=False))
    assert not off.variants[0].HasField("autoscaling") and off.variants[0].instances == 0
