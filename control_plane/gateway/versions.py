"""What a KServe V2 `model_version` means at the gateway.

Triton clients (tritonclient, perf_analyzer) send the model's version
number ("2"); modelfleet's own name for a version is the variant name
("scorer-v2"). Both select: a variant name selects that variant; otherwise
a decimal number selects every variant serving that version of its model
(several: chosen by weight, like an unversioned call); "" selects all.
A variant name wins over a number, so a variant named "2" stays reachable.
`ModelMetadata.versions` and ModelStatistics speak the numbers.
"""

from __future__ import annotations

from control_plane import errors
from modelfleet.store.v1 import records_pb2
from modelfleet.v1 import deployments_pb2


def number(variant: deployments_pb2.VariantSpec) -> str:
    """The Triton version of a variant: its model version, as a decimal string."""
    return str(variant.model_version)


def numbers(rec: records_pb2.DeploymentRecord) -> list[str]:
    """The model versions the deployment's variants serve, ascending, each once."""
    return [str(n) for n in sorted({v.model_version for v in rec.spec.variants})]


def select(rec: records_pb2.DeploymentRecord, version: str) -> list[deployments_pb2.VariantSpec]:
    """The variants `version` selects (see the module docstring); NOT_FOUND naming both kinds of names."""
    variants = list(rec.spec.variants)
    if not version:
        return variants
    named = [v for v in variants if v.name == version]
    if named:
        return named
    if version.isascii() and version.isdigit():
        numbered = [v for v in variants if v.model_version == int(version)]
        if numbered:
            return numbered
    names = ", ".join(sorted(v.name for v in variants))
    raise errors.NotFound(
        f"deployment '{rec.deployment_id}' has no variant '{version}' and serves no model version '{version}'"
        f" (variants: {names}; versions: {', '.join(numbers(rec))})"
    )
