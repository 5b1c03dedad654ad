"""Unit tests of control_plane.deployments.specs: start validation and update merging."""

from __future__ import annotations

import pytest
from google.protobuf import field_mask_pb2

from control_plane import errors
from control_plane.deployments.specs import SpecRules, check_code_loading_env, loads_code
from modelfleet.v1 import common_pb2, models_pb2
from modelfleet.v1 import deployments_pb2 as dpb

MODELS = {("m", 1), ("m", 2), ("n", 1)}


def resolve(model_id: str, version: int) -> models_pb2.Model:
    versions = sorted(v for mid, v in MODELS if mid == model_id)
    if not versions or (version and version not in versions):
        raise errors.NotFound(f"model '{model_id}' version {version} not found")
    return models_pb2.Model(model_id=model_id, version=version or versions[-1])


RULES = SpecRules(resolve=resolve)


def update(current: dpb.StartDeploymentRequest, paths: list[str], **spec: object) -> dpb.StartDeploymentRequest:
    req = dpb.UpdateDeploymentRequest(deployment_id="d", spec=dpb.StartDeploymentRequest(**spec), update_mask=field_mask_pb2.FieldMask(paths=paths))  # type: ignore[arg-type]
    return RULES.merge_update(current, req)


def test_a_single_model_request_becomes_one_variant_with_defaults() -> None:
    spec = RULES.normalize(dpb.StartDeploymentRequest(model_id="m", env={"A": "1"}, instances=2))
    (v,) = spec.variants
    assert (v.name, v.model_version, v.weight, v.instances, v.inference_threads, v.model_threads, v.queue_capacity) == ("m-v2", 2, 100, 2, 1, 1, 1024)
    assert dict(v.env) == {"A": "1"} and spec.deployment_id == "m" and not spec.model_id and not spec.env
    assert spec.wait_for == dpb.WAIT_FOR_STARTED and spec.timeout.seconds == 20 and not spec.HasField("auto_stop")


@pytest.mark.parametrize(
    ("req", "words"),
    [
        (dpb.StartDeploymentRequest(variants=[dpb.VariantSpec(model_id="m", weight=60), dpb.VariantSpec(model_id="n", weight=30)]), "sum to 90 (60 + 30)"),
        (dpb.StartDeploymentRequest(variants=[dpb.VariantSpec(model_id="m", weight=110), dpb.VariantSpec(model_id="n", weight=-10)]), ">= 0 and sum to 100"),
        (dpb.StartDeploymentRequest(model_id="m", variants=[dpb.VariantSpec(model_id="m", weight=100)]), "model_id must be empty"),
        (dpb.StartDeploymentRequest(variants=[dpb.VariantSpec(model_id="m", weight=50), dpb.VariantSpec(model_id="m", model_version=2, weight=50)]), "used twice"),
        (dpb.StartDeploymentRequest(model_id="m", env={"": "x"}), "empty name"),
        (dpb.StartDeploymentRequest(model_id="m", env={"A=B": "x"}), "no '='"),
        (dpb.StartDeploymentRequest(model_id="m", env={"CUDA_VISIBLE_DEVICES": "0"}), "set by modelfleet"),
        (dpb.StartDeploymentRequest(model_id="m", env={"A": "x" * 40000}), "at most 32768"),
        (dpb.StartDeploymentRequest(model_id="m", env={f"V{i}": "" for i in range(129)}), "at most 128"),
        (dpb.StartDeploymentRequest(model_id="m", traffic_limit_qps=-1), "traffic_limit_qps"),
        (dpb.StartDeploymentRequest(model_id="m", max_unavailable=-1), "max_unavailable must be 0..1000"),
        (dpb.StartDeploymentRequest(model_id="m", max_unavailable=1001), "got 1001"),
        (dpb.StartDeploymentRequest(model_id="m", resources=common_pb2.Resources(gpus=-1)), "resources.gpus -1"),
    ],
)
def test_invalid_requests_name_the_field_and_the_limit(req: dpb.StartDeploymentRequest, words: str) -> None:
    with pytest.raises(errors.InvalidArgument) as err:
        RULES.normalize(req)
    assert words in err.value.message


def test_env_values_never_appear_in_errors() -> None:
    with pytest.raises(errors.InvalidArgument) as err:
        RULES.normalize(dpb.StartDeploymentRequest(model_id="m", env={"TOKEN": "hunter2\0"}))
    assert "TOKEN" in err.value.message and "hunter2" not in err.value.message


@pytest.mark.parametrize("seconds", [1800, 3600 + 1, 25 * 3600, 0])
def test_auto_stop_is_whole_hours_from_1_to_24(seconds: int) -> None:
    req = dpb.StartDeploymentRequest(model_id="m")
    req.auto_stop.FromSeconds(seconds)
    with pytest.raises(errors.InvalidArgument, match="whole number of hours from 1 to 24"):
        RULES.normalize(req)


@pytest.mark.parametrize("hours", [1, 2, 4, 6, 13, 24])
def test_auto_stop_accepts_the_presets_and_custom_hours(hours: int) -> None:
    req = dpb.StartDeploymentRequest(model_id="m")
    req.auto_stop.FromSeconds(hours * 3600)
    assert RULES.normalize(req).auto_stop.seconds == hours * 3600


def test_server_default_auto_stop_applies_only_when_none_is_given() -> None:
    rules = SpecRules(resolve=resolve, default_auto_stop_s=4 * 3600)
    assert rules.normalize(dpb.StartDeploymentRequest(model_id="m")).auto_stop.seconds == 4 * 3600
    req = dpb.StartDeploymentRequest(model_id="m")
    req.auto_stop.FromSeconds(3600)
    assert rules.normalize(req).auto_stop.seconds == 3600


def _two_variants() -> dpb.StartDeploymentRequest:
    return RULES.normalize(dpb.StartDeploymentRequest(
        deployment_id="d",
        variants=[
            dpb.VariantSpec(model_id="m", model_version=1, weight=100, instances=2, model_threads=3, queue_capacity=7, env={"A": "1"},
                            resources=common_pb2.Resources(pool="blue")),
            dpb.VariantSpec(model_id="m", model_version=2, weight=0, instances=1),
        ],
    ))


def test_update_weights_only_keeps_every_other_setting() -> None:
    current = _two_variants()
    new = update(current, ["variants"], variants=[dpb.VariantSpec(model_id="m", model_version=1, weight=50),
                                                  dpb.VariantSpec(model_id="m", model_version=2, weight=50)])
    v1, v2 = new.variants
    assert (v1.weight, v1.instances, v1.model_threads, v1.queue_capacity, dict(v1.env), v1.resources.pool) == (50, 2, 3, 7, {"A": "1"}, "blue")
    assert (v2.weight, v2.instances) == (50, 1)


def test_update_adds_removes_and_resets_variants() -> None:
    current = _two_variants()
    new = update(current, ["variants"], variants=[dpb.VariantSpec(model_id="m", model_version=1, weight=40, instances=-1),
                                                  dpb.VariantSpec(model_id="n", weight=60)])
    assert [(v.name, v.weight, v.instances) for v in new.variants] == [("m-v1", 40, 0), ("n-v1", 60, 0)]
    assert new.variants[1].queue_capacity == 1024  # a new variant gets the defaults
    with pytest.raises(errors.InvalidArgument, match="sum to 90"):
        update(current, ["variants"], variants=[dpb.VariantSpec(model_id="m", model_version=1, weight=90)])


def test_single_model_paths_apply_to_every_variant() -> None:
    current = _two_variants()
    new = update(current, ["queue_capacity", "env", "traffic_limit_qps", "description"], queue_capacity=64, env={"B": "2"},
                 traffic_limit_qps=5, description="x")
    assert [v.queue_capacity for v in new.variants] == [64, 64]
    assert [dict(v.env) for v in new.variants] == [{"B": "2"}, {"B": "2"}]
    assert (new.traffic_limit_qps, new.description) == (5, "x")


def test_new_model_version_renames_a_default_named_variant() -> None:
    current = RULES.normalize(dpb.StartDeploymentRequest(model_id="m", model_version=1))
    new = update(current, ["model_version"], model_version=2)
    assert [(v.name, v.model_version) for v in new.variants] == [("m-v2", 2)]


def test_auto_stop_update_sets_or_clears_it() -> None:
    current = _two_variants()
    spec = dpb.StartDeploymentRequest()
    spec.auto_stop.FromSeconds(7200)
    req = dpb.UpdateDeploymentRequest(deployment_id="d", spec=spec, update_mask=field_mask_pb2.FieldMask(paths=["auto_stop"]))
    with_stop = RULES.merge_update(current, req)
    assert with_stop.auto_stop.seconds == 7200
    assert not update(with_stop, ["auto_stop"]).HasField("auto_stop")


@pytest.mark.parametrize(("paths", "words"), [([], "update_mask is empty"), (["deployment_id"], "cannot be updated"), (["variants"], "at least one variant")])
def test_bad_update_masks(paths: list[str], words: str) -> None:
    with pytest.raises(errors.InvalidArgument, match=words):
        update(_two_variants(), paths)


def test_code_loading_env_is_named_and_an_update_may_keep_what_an_admin_set() -> None:
    assert all(loads_code(n) for n in ("LD_PRELOAD", "LD_AUDIT", "DYLD_LIBRARY_PATH", "PYTHONPATH", "PYTHONHOME",
                                       "GCONV_PATH", "OPENSSL_MODULES"))
    assert not any(loads_code(n) for n in ("OMP_NUM_THREADS", "MY_LD_FLAG", "ld_preload", "CUDA_LAUNCH_BLOCKING"))
    admin_set = dpb.StartDeploymentRequest(variants=[dpb.VariantSpec(env={"LD_LIBRARY_PATH": "/opt/cuda", "A": "1"})])
    with pytest.raises(errors.InvalidArgument, match=r"variants\[0\]\.env LD_LIBRARY_PATH changes how worker processes"):
        check_code_loading_env(admin_set)
    kept = dpb.StartDeploymentRequest(variants=[dpb.VariantSpec(env={"LD_LIBRARY_PATH": "/opt/cuda", "A": "2"})])
    check_code_loading_env(kept, before=admin_set)  # a deployer's other change keeps the admin's value
    changed = dpb.StartDeploymentRequest(variants=[dpb.VariantSpec(env={"LD_LIBRARY_PATH": "/tmp/evil"})])
    with pytest.raises(errors.InvalidArgument, match="LD_LIBRARY_PATH"):
        check_code_loading_env(changed, before=admin_set)
