"""Deployment specs: validation, defaults and update merging (transport-free).

This module owns what a StartDeploymentRequest may say and what an
UpdateDeploymentRequest does to a stored spec. A *normalized* spec (what
the store keeps) always has `variants` filled (a single-model request
becomes one variant of weight 100), every default applied, model versions
resolved to numbers (0 = the newest NORMAL version at that moment) and the
single-model fields cleared. Errors name the field, the value (never an env
value: those may be secrets) and the limit.

Update rules (UpdateDeploymentRequest.update_mask):
- `variants`: the new list. A variant matches an existing one by name, or
  when it has no name by model_id and resolved version (its default name
  "<model_id>-v<version>"); a matching variant keeps the existing settings
  for every field left 0/empty (so `--variant m:1=50` changes only the
  weight). instances -1 means "every eligible node" (0 would keep the old
  value). Variants absent from the list are removed (make-before-break: they
  keep serving until the rest have started).
- the single-model fields (`model_version`, `inference_threads`,
  `model_threads`, `queue_capacity`, `instances`, `resources`, `env`) apply
  to every variant; a new model_version renames a variant that had its
  default name, so it starts as a new variant.
- `description`, `traffic_limit_qps`, `auto_stop` (unset = none; counted from
  the start, not from the update).
"""

from __future__ import annotations

import re
from collections.abc import Callable

from google.protobuf import duration_pb2

from control_plane import errors
from control_plane.deployments import scaling
from control_plane.ids import check_id
from modelfleet.v1 import deployments_pb2, models_pb2

DEFAULT_TIMEOUT_S = 20.0
MAX_TIMEOUT_S = 3600.0
DEFAULT_QUEUE_CAPACITY = 1024
MAX_QUEUE_CAPACITY = 1_000_000
MAX_THREADS = 256
AUTO_STOP_HOURS = range(1, 25)
MAX_ENV_VARS = 128
MAX_ENV_NAME = 256
MAX_ENV_VALUE = 32 * 1024
# set by modelfleet itself from resources.gpus; a user value would fight the scheduler
RESERVED_ENV = frozenset({"CUDA_VISIBLE_DEVICES"})
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

SINGLE_MODEL_FIELDS = (
    "model_id",
    "model_version",
    "inference_threads",
    "model_threads",
    "queue_capacity",
    "instances",
    "resources",
    "env",
    "autoscaling",
)
PER_VARIANT_PATHS = (
    "model_version", "inference_threads", "model_threads", "queue_capacity", "instances", "resources", "env", "autoscaling",
)
UPDATABLE_PATHS = frozenset(
    {"variants", "description", "traffic_limit_qps", "auto_stop", "max_unavailable", *PER_VARIANT_PATHS}
)
MAX_UNAVAILABLE_LIMIT = 1000

Resolver = Callable[[str, int], models_pb2.Model]


def seconds(d: duration_pb2.Duration) -> float:
    return d.seconds + d.nanos / 1e9


def check_auto_stop(d: duration_pb2.Duration, *, field: str = "auto_stop") -> None:
    """1 to 24 whole hours, else InvalidArgument."""
    hours, rest = divmod(d.seconds, 3600)
    if rest or d.nanos or hours not in AUTO_STOP_HOURS:
        raise errors.InvalidArgument(
            f"{field} {seconds(d):g}s is invalid: use a whole number of hours from 1 to 24 (e.g. 1h, 2h, 4h, 6h)"
        )


# Variables that change which code a worker process loads (the dynamic
# loader, Python's import and startup machinery, glibc and OpenSSL modules):
# only an admin may set them (docs/security.md).
CODE_LOADING_ENV_PREFIXES = ("LD_", "DYLD_", "PYTHON")
CODE_LOADING_ENV = frozenset({"GCONV_PATH", "OPENSSL_CONF", "OPENSSL_ENGINES", "OPENSSL_MODULES"})


def loads_code(name: str) -> bool:
    """Whether env variable `name` changes how a worker process loads code."""
    return name in CODE_LOADING_ENV or name.startswith(CODE_LOADING_ENV_PREFIXES)


def check_code_loading_env(
    spec: deployments_pb2.StartDeploymentRequest, *, before: deployments_pb2.StartDeploymentRequest | None = None
) -> None:
    """Refuse code-loading variables the normalized `spec` sets that `before` (the
    current spec of an update) did not already set to the same value; for callers
    that are not admins."""
    kept = {(k, v) for variant in (before.variants if before is not None else ()) for k, v in variant.env.items()}
    for i, variant in enumerate(spec.variants):
        for key, value in sorted(variant.env.items()):
            if loads_code(key) and (key, value) not in kept:
                raise errors.InvalidArgument(
                    f"variants[{i}].env {key} changes how worker processes load code; only an admin may set it "
                    "(refused for non-admins: LD_*, DYLD_*, PYTHON*, GCONV_PATH, OPENSSL_CONF, OPENSSL_ENGINES, "
                    "OPENSSL_MODULES)"
                )


def check_env(env: dict[str, str] | object, *, prefix: str = "") -> None:
    """Names are letters, digits and '_' (no '=', not empty); values have no NUL; limits."""
    items: dict[str, str] = dict(env)  # type: ignore[arg-type]
    if len(items) > MAX_ENV_VARS:
        raise errors.InvalidArgument(f"{prefix}env has {len(items)} variables; at most {MAX_ENV_VARS} are allowed")
    for key, value in items.items():
        if not key:
            raise errors.InvalidArgument(f"{prefix}env has a variable with an empty name")
        if len(key) > MAX_ENV_NAME:
            raise errors.InvalidArgument(f"{prefix}env name is {len(key)} characters long; at most {MAX_ENV_NAME} are allowed")
        if not _ENV_NAME.match(key):
            raise errors.InvalidArgument(
                f"{prefix}env name {key!r} is invalid: use letters, digits and '_' (no '='), not starting with a digit"
            )
        if key in RESERVED_ENV:
            raise errors.InvalidArgument(f"{prefix}env {key} is set by modelfleet from resources.gpus; it cannot be given")
        if "\0" in value:
            raise errors.InvalidArgument(f"{prefix}env {key}: the value contains a NUL byte")
        if len(value) > MAX_ENV_VALUE:
            raise errors.InvalidArgument(
                f"{prefix}env {key}: the value is {len(value)} characters long; at most {MAX_ENV_VALUE} are allowed"
            )


def check_max_unavailable(spec: deployments_pb2.StartDeploymentRequest) -> None:
    """max_unavailable is 0..the most allocations a variant has.

    A variant with a fixed `instances` has that many allocations; one on every
    eligible node (instances 0) has as many as the fleet has nodes, which the
    spec does not know, so MAX_UNAVAILABLE_LIMIT bounds it.
    """
    fixed = [v.instances for v in spec.variants]
    if fixed and all(n > 0 for n in fixed):
        limit, why = max(fixed), "the most allocations a variant has (its instances)"
    else:
        limit, why = MAX_UNAVAILABLE_LIMIT, "a variant runs on every eligible node"
    if not 0 <= spec.max_unavailable <= limit:
        raise errors.InvalidArgument(
            f"max_unavailable must be 0..{limit} ({why}; 0 = never stop an old allocation before its "
            f"replacement started), got {spec.max_unavailable}"
        )


class SpecRules:
    """Normalizes start requests and merges updates (rules in the module docstring).

    Args:
        resolve: (model_id, version) -> the deployable Model (0 = newest NORMAL);
            raises NotFound / FailedPrecondition.
        default_auto_stop_s: the server's auto stop for new deployments (0 = none).
    """

    def __init__(self, *, resolve: Resolver, default_auto_stop_s: int = 0) -> None:
        self._resolve = resolve
        self.default_auto_stop_s = default_auto_stop_s

    # ---- start ------------------------------------------------------------------
    def normalize(
        self, req: deployments_pb2.StartDeploymentRequest, *, apply_default_auto_stop: bool = True
    ) -> deployments_pb2.StartDeploymentRequest:
        """The request with defaults applied and model versions resolved."""
        spec = deployments_pb2.StartDeploymentRequest()
        spec.CopyFrom(req)
        spec.request_id = ""
        spec.dry_run = False
        if spec.variants:
            set_fields = [f for f in SINGLE_MODEL_FIELDS if _is_set(spec, f)]
            if set_fields:
                raise errors.InvalidArgument(f"when variants is set, {', '.join(set_fields)} must be empty (set them per variant)")
            total = sum(v.weight for v in spec.variants)
            if any(v.weight < 0 for v in spec.variants) or total != 100:
                weights = " + ".join(str(v.weight) for v in spec.variants)
                raise errors.InvalidArgument(f"variants weights sum to {total} ({weights}); they must be >= 0 and sum to 100")
        else:
            if not spec.model_id:
                raise errors.InvalidArgument("model_id (or variants) is required")
            spec.variants.add(
                model_id=spec.model_id,
                model_version=spec.model_version,
                weight=100,
                inference_threads=spec.inference_threads,
                model_threads=spec.model_threads,
                queue_capacity=spec.queue_capacity,
                instances=spec.instances,
                resources=spec.resources,
                env=dict(spec.env),
                autoscaling=spec.autoscaling if spec.HasField("autoscaling") else None,
            )
            for name in SINGLE_MODEL_FIELDS:
                spec.ClearField(name)
        spec.deployment_id = check_id("deployment_id", spec.deployment_id or spec.variants[0].model_id)
        names: set[str] = set()
        several = len(spec.variants) > 1
        for i, variant in enumerate(spec.variants):
            self._normalize_variant(variant, field=f"variants[{i}]" if several else "")
            if variant.name in names:
                raise errors.InvalidArgument(f"variant name {variant.name!r} is used twice")
            names.add(variant.name)
        timeout = seconds(spec.timeout) if spec.HasField("timeout") else DEFAULT_TIMEOUT_S
        if not 0 <= timeout <= MAX_TIMEOUT_S:
            raise errors.InvalidArgument(f"timeout {timeout:g}s is out of range: 0 to {MAX_TIMEOUT_S:g}s")
        spec.timeout.FromNanoseconds(int(timeout * 1e9))
        if spec.wait_for == deployments_pb2.WAIT_FOR_UNSPECIFIED:
            spec.wait_for = deployments_pb2.WAIT_FOR_STARTED
        if spec.HasField("auto_stop"):
            check_auto_stop(spec.auto_stop)
        elif apply_default_auto_stop and self.default_auto_stop_s:
            spec.auto_stop.FromSeconds(self.default_auto_stop_s)
        check_max_unavailable(spec)
        if spec.traffic_limit_qps < 0 or spec.traffic_limit_qps != spec.traffic_limit_qps:
            raise errors.InvalidArgument(f"traffic_limit_qps {spec.traffic_limit_qps:g} must be >= 0 (0 = no limit)")
        return spec

    def _normalize_variant(self, variant: deployments_pb2.VariantSpec, *, field: str) -> None:
        prefix = f"{field}." if field else ""
        check_id(f"{prefix}model_id", variant.model_id)
        for name, default, limit in (
            ("inference_threads", 1, MAX_THREADS),
            ("model_threads", 1, MAX_THREADS),
            ("queue_capacity", DEFAULT_QUEUE_CAPACITY, MAX_QUEUE_CAPACITY),
        ):
            value = getattr(variant, name) or default
            if not 1 <= value <= limit:
                raise errors.InvalidArgument(f"{prefix}{name} {value} is out of range: 1 to {limit}")
            setattr(variant, name, value)
        for name in ("model_version", "instances", "max_batch_size", "max_queue_delay_us"):
            if getattr(variant, name) < 0:
                raise errors.InvalidArgument(f"{prefix}{name} {getattr(variant, name)} must be >= 0")
        res = variant.resources
        for name in ("cpus", "memory_bytes", "gpus"):
            if getattr(res, name) < 0:
                raise errors.InvalidArgument(f"{prefix}resources.{name} {getattr(res, name):g} must be >= 0")
        if res.pool:
            check_id(f"{prefix}resources.pool", res.pool)
        check_env(variant.env, prefix=prefix)
        scaling.normalize(variant, prefix=prefix)
        model = self._resolve(variant.model_id, variant.model_version)
        variant.model_version = model.version
        if not variant.name:
            variant.name = default_name(model.model_id, model.version)
        else:
            check_id(f"{prefix}name", variant.name)

    # ---- update -----------------------------------------------------------------
    def merge_update(
        self, current: deployments_pb2.StartDeploymentRequest, req: deployments_pb2.UpdateDeploymentRequest
    ) -> deployments_pb2.StartDeploymentRequest:
        """The normalized spec that results from applying req to current."""
        paths = list(dict.fromkeys(req.update_mask.paths))
        if not paths:
            raise errors.InvalidArgument("update_mask is empty: name the fields to update")
        unknown = [p for p in paths if p not in UPDATABLE_PATHS]
        if unknown:
            raise errors.InvalidArgument(
                f"update_mask path(s) {', '.join(unknown)} cannot be updated; supported: {', '.join(sorted(UPDATABLE_PATHS))}"
            )
        spec = deployments_pb2.StartDeploymentRequest()
        spec.CopyFrom(current)
        given = req.spec
        if "variants" in paths:
            if not given.variants:
                raise errors.InvalidArgument("update_mask names variants but spec.variants is empty; a deployment needs at least one variant")
            existing = {v.name: v for v in current.variants}
            merged = [self._merge_variant(v, existing, field=f"variants[{i}]") for i, v in enumerate(given.variants)]
            del spec.variants[:]
            spec.variants.extend(merged)
        for path in PER_VARIANT_PATHS:
            if path not in paths:
                continue
            for variant in spec.variants:
                if path == "resources":
                    variant.resources.CopyFrom(given.resources)
                elif path == "env":
                    variant.env.clear()
                    variant.env.update(dict(given.env))
                elif path == "model_version":
                    if variant.name == default_name(variant.model_id, variant.model_version):
                        variant.name = ""  # a new version is a new variant
                    variant.model_version = given.model_version
                elif path == "instances":
                    variant.instances = 0 if given.instances == -1 else given.instances
                    if given.instances != 0 and "autoscaling" not in paths:
                        variant.ClearField("autoscaling")  # a fixed count replaces autoscaling
                elif path == "autoscaling":
                    variant.autoscaling.CopyFrom(given.autoscaling)
                    if given.autoscaling.enabled and "instances" not in paths:
                        variant.instances = 0  # autoscaling replaces a fixed count
                else:
                    setattr(variant, path, getattr(given, path))
        if "description" in paths:
            spec.description = given.description
        if "traffic_limit_qps" in paths:
            spec.traffic_limit_qps = given.traffic_limit_qps
        if "max_unavailable" in paths:
            spec.max_unavailable = given.max_unavailable
        if "auto_stop" in paths:
            if given.HasField("auto_stop"):
                spec.auto_stop.CopyFrom(given.auto_stop)
            else:
                spec.ClearField("auto_stop")
        return self.normalize(spec, apply_default_auto_stop=False)

    def _merge_variant(
        self, given: deployments_pb2.VariantSpec, existing: dict[str, deployments_pb2.VariantSpec], *, field: str
    ) -> deployments_pb2.VariantSpec:
        out = deployments_pb2.VariantSpec()
        out.CopyFrom(given)
        if not out.name:
            check_id(f"{field}.model_id", out.model_id)
            model = self._resolve(out.model_id, out.model_version)
            out.model_version = model.version
            out.name = default_name(model.model_id, model.version)
        base = existing.get(out.name)
        fixed_given = out.instances != 0
        if out.instances == -1:
            out.instances = 0
        elif base is not None and out.instances == 0 and not out.HasField("autoscaling"):
            out.instances = base.instances
        if base is None:
            return out
        if not out.model_id:
            out.model_id = base.model_id
        if out.model_id == base.model_id and out.model_version == 0:
            out.model_version = base.model_version
        for name in ("inference_threads", "model_threads", "queue_capacity", "max_batch_size", "max_queue_delay_us"):
            if not getattr(out, name):
                setattr(out, name, getattr(base, name))
        if not out.HasField("resources"):
            out.resources.CopyFrom(base.resources)
        if not out.env:
            out.env.update(dict(base.env))
        if not out.HasField("autoscaling") and not fixed_given and base.HasField("autoscaling"):
            out.autoscaling.CopyFrom(base.autoscaling)
        return out


def default_name(model_id: str, version: int) -> str:
    return f"{model_id}-v{version}"


def _is_set(msg: deployments_pb2.StartDeploymentRequest, name: str) -> bool:
    value = getattr(msg, name)
    if name in ("resources", "autoscaling"):
        return msg.HasField(name)
    if name == "env":
        return bool(len(value))
    return bool(value)
