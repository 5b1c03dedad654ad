"""max_unavailable is bounded by the allocations a variant has: a value no
update could use is refused naming the field and the limit."""

from __future__ import annotations

import pytest
from google.protobuf import field_mask_pb2

from control_plane import errors
from control_plane.deployments.specs import MAX_UNAVAILABLE_LIMIT, SpecRules
from modelfleet.v1 import deployments_pb2 as dpb
from modelfleet.v1 import models_pb2


def resolve(model_id: str, version: int) -> models_pb2.Model:
    return models_pb2.Model(model_id=model_id, version=version or 1)


RULES = SpecRules(resolve=resolve)


def refusal(req: dpb.StartDeploymentRequest) -> str:
    with pytest.raises(errors.InvalidArgument) as err:
        RULES.normalize(req)
    return err.value.message


def test_with_fixed_instances_the_limit_is_the_largest_variant() -> None:
    assert RULES.normalize(dpb.StartDeploymentRequest(model_id="m", instances=2, max_unavailable=2)).max_unavailable == 2
    message = refusal(dpb.StartDeploymentRequest(model_id="m", instances=2, max_unavailable=3))
    assert "max_unavailable must be 0..2" in message and "instances" in message and "got 3" in message
    two = [dpb.VariantSpec(model_id="m", weight=50, instances=1), dpb.VariantSpec(model_id="n", weight=50, instances=3)]
    assert RULES.normalize(dpb.StartDeploymentRequest(variants=two, max_unavailable=3)).max_unavailable == 3
    assert "0..3" in refusal(dpb.StartDeploymentRequest(variants=two, max_unavailable=4))


def test_on_every_node_the_fleet_wide_limit_applies() -> None:
    spec = RULES.normalize(dpb.StartDeploymentRequest(model_id="m", max_unavailable=MAX_UNAVAILABLE_LIMIT))
    assert spec.max_unavailable == MAX_UNAVAILABLE_LIMIT
    assert f"0..{MAX_UNAVAILABLE_LIMIT}" in refusal(dpb.StartDeploymentRequest(model_id="m", max_unavailable=-1))


def test_an_update_is_checked_against_the_merged_spec() -> None:
    current = RULES.normalize(dpb.StartDeploymentRequest(model_id="m", instances=1))
    req = dpb.UpdateDeploymentRequest(
        deployment_id="m",
        spec=dpb.StartDeploymentRequest(max_unavailable=2),
        update_mask=field_mask_pb2.FieldMask(paths=["max_unavailable"]),
    )
    with pytest.raises(errors.InvalidArgument, match=r"max_unavailable must be 0\.\.1 .*got 2"):
        RULES.merge_update(current, req)
    req.spec.instances, req.update_mask.paths[:] = 2, ["max_unavailable", "instances"]
    assert RULES.merge_update(current, req).max_unavailable == 2
