"""Unit tests of control_plane.planning.lifecycle: every row of every derivation table."""

from __future__ import annotations

import itertools

import pytest

from control_plane.planning.lifecycle import (
    ALLOWED_ROUTE_TRANSITIONS,
    STATUS_TRANSITIONS,
    AllocationState,
    DeploymentStatus,
    DesiredState,
    IllegalTransition,
    RouteTransitionError,
    RoutingState,
    VariantView,
    allocation_state,
    check_route_transition,
    deployment_status,
    route_transition,
    status_transition,
    variant_view,
)
from modelfleet.store.v1 import records_pb2
from modelfleet.v1 import common_pb2

UNSPEC = common_pb2.ROUTING_STATE_UNSPECIFIED
STARTING = common_pb2.ROUTING_STATE_STARTING
STARTED = common_pb2.ROUTING_STATE_STARTED
STOPPING = common_pb2.ROUTING_STATE_STOPPING
STOPPED = common_pb2.ROUTING_STATE_STOPPED
FAILED = common_pb2.ROUTING_STATE_FAILED
ALL_ROUTE_STATES = [UNSPEC, STARTING, STARTED, STOPPING, STOPPED, FAILED]

RUN = records_pb2.DESIRED_STATE_RUNNING
STOP = records_pb2.DESIRED_STATE_STOPPED

DEPLOYING = common_pb2.DEPLOYMENT_STATUS_DEPLOYING
RUNNING = common_pb2.DEPLOYMENT_STATUS_RUNNING
CONCERNING = common_pb2.DEPLOYMENT_STATUS_CONCERNING
ABNORMAL = common_pb2.DEPLOYMENT_STATUS_ABNORMAL
FAILED_STATUS = common_pb2.DEPLOYMENT_STATUS_FAILED
STOPPING_STATUS = common_pb2.DEPLOYMENT_STATUS_STOPPING
STOPPED_STATUS = common_pb2.DEPLOYMENT_STATUS_STOPPED


# ---- allocation_state ------------------------------------------------------------
@pytest.mark.parametrize(
    ("routes", "target_count", "stopping", "expected"),
    [
        ([STARTED, STARTED], 2, True, common_pb2.ALLOCATION_STATE_STOPPING),
        ([STARTED, STOPPED], 2, True, common_pb2.ALLOCATION_STATE_STOPPING),
        ([STOPPING, FAILED], 0, True, common_pb2.ALLOCATION_STATE_STOPPING),
        ([STOPPED, FAILED], 0, True, common_pb2.ALLOCATION_STATE_STOPPED),  # the final state
        ([], 0, True, common_pb2.ALLOCATION_STATE_STOPPED),
        ([], 0, False, common_pb2.ALLOCATION_STATE_STARTING),
        ([STARTING, FAILED, STOPPING], 3, False, common_pb2.ALLOCATION_STATE_STARTING),
        ([STARTED, STARTING], 2, False, common_pb2.ALLOCATION_STATE_STARTED),
        ([STARTED, FAILED], 2, False, common_pb2.ALLOCATION_STATE_STARTED),
        ([STARTED, STARTED], 2, False, common_pb2.ALLOCATION_STATE_FULLY_ALLOCATED),
        ([STARTED, STARTED, STOPPING], 1, False, common_pb2.ALLOCATION_STATE_FULLY_ALLOCATED),  # scale-down
        ([STARTED], 0, False, common_pb2.ALLOCATION_STATE_STARTED),  # no target: never fully allocated
    ],
)
def test_allocation_state(
    routes: list[RoutingState], target_count: int, stopping: bool, expected: AllocationState
) -> None:
    assert allocation_state(routes, target_count=target_count, stopping=stopping) == expected


# ---- variant_view ----------------------------------------------------------------
def test_variant_view_counts_routes() -> None:
    routes = [STARTED, STARTED, STARTING, FAILED, STOPPING, STOPPED, UNSPEC]
    assert variant_view(routes, target_count=4, instances=5, name="a") == VariantView(
        target_count=4, wanted=5, started=2, starting=1, failed=1, stopping=1, name="a"
    )


def test_variant_view_instances_zero_wants_every_target() -> None:
    assert variant_view([STARTED], target_count=3, instances=0).wanted == 3


# ---- deployment_status -------------------------------------------------------------
def v(
    target: int,
    wanted: int | None = None,
    *,
    up: int = 0,
    starting: int = 0,
    failed: int = 0,
    stopping: int = 0,
    name: str = "",
) -> VariantView:
    return VariantView(
        target_count=target,
        wanted=target if wanted is None else wanted,
        started=up,
        starting=starting,
        failed=failed,
        stopping=stopping,
        name=name,
    )


@pytest.mark.parametrize(
    ("desired", "variants", "ever_served", "expected"),
    [
        # desired STOPPED
        (STOP, [v(2, up=1, starting=1)], True, (STOPPING_STATUS, "stopping: 2 routes not stopped yet")),
        (STOP, [v(2, stopping=1)], True, (STOPPING_STATUS, "stopping: 1 route not stopped yet")),
        (STOP, [v(2, failed=2)], True, (STOPPED_STATUS, "")),  # failed routes count as stopped
        (STOP, [v(2)], False, (STOPPED_STATUS, "")),
        (STOP, [], False, (STOPPED_STATUS, "")),
        # serving, fully allocated
        (RUN, [v(2, up=2)], True, (RUNNING, "")),
        (RUN, [v(2, up=2), v(1, up=1)], True, (RUNNING, "")),
        (RUN, [v(1, up=2, stopping=1)], True, (RUNNING, "")),  # surplus route draining after scale-down
        # serving, but concerning
        (RUN, [v(2, up=1, failed=1)], True, (CONCERNING, "serving, but 1 of 2 targets failed")),
        (
            RUN,
            [v(3, up=1, starting=1, failed=1, name="a")],
            True,
            (CONCERNING, "serving, but variant 'a': 1 of 3 targets failed"),
        ),
        (
            RUN,
            [v(2, up=2, name="a"), v(1, name="b")],
            True,
            (CONCERNING, "serving, but variant 'b': started on no node"),
        ),
        (
            RUN,
            [v(2, up=2, name="a"), v(0, 2, name="b")],
            True,
            (CONCERNING, "serving, but variant 'b': started on no node, placed on 0 of 2 wanted nodes"),
        ),
        (RUN, [v(2, 3, up=2, name="a")], True, (CONCERNING, "serving, but variant 'a': placed on 2 of 3 wanted nodes")),
        (
            RUN,
            [v(2, 3, up=2, name="a"), v(1, failed=1, name="b")],
            True,
            (
                CONCERNING,
                (
                    "serving, but variant 'a': placed on 2 of 3 wanted nodes; "
                    "variant 'b': started on no node, 1 of 1 target failed"
                ),
            ),
        ),
        # serving, still deploying (something is starting, nothing failed)
        (RUN, [v(2, up=1, starting=1)], False, (DEPLOYING, "1 of 2 targets started")),
        (RUN, [v(2, up=2), v(1, starting=1)], True, (DEPLOYING, "2 of 3 targets started")),
        (RUN, [v(1, 3, up=1, starting=1)], False, (DEPLOYING, "1 of 1 target started")),  # missing, but starting
        # not serving
        (
            RUN,
            [v(2, failed=1, starting=1)],
            True,
            (ABNORMAL, "was serving, now no route is started (1 failed, 1 starting)"),
        ),
        (RUN, [v(2, failed=2)], True, (ABNORMAL, "was serving, now no route is started (2 failed, 0 starting)")),
        (RUN, [v(2, failed=2)], False, (FAILED_STATUS, "could not start on any node: 2 of 2 targets failed")),
        (RUN, [v(1, failed=1), v(0, 0)], False, (FAILED_STATUS, "could not start on any node: 1 of 1 target failed")),
        (RUN, [v(2, failed=1, starting=1)], False, (DEPLOYING, "0 of 2 targets started")),
        (RUN, [v(2, failed=1)], False, (DEPLOYING, "0 of 2 targets started")),  # one target not reported yet
        (RUN, [v(2, starting=2)], False, (DEPLOYING, "0 of 2 targets started")),
        (RUN, [v(0, 2)], False, (DEPLOYING, "waiting for a node to place it on")),
        (RUN, [], False, (DEPLOYING, "waiting for a node to place it on")),
    ],
)
def test_deployment_status(
    desired: DesiredState, variants: list[VariantView], ever_served: bool, expected: tuple[DeploymentStatus, str]
) -> None:
    assert deployment_status(desired=desired, variants=variants, ever_served=ever_served) == expected


@pytest.mark.parametrize(
    "variants",
    [[v(0, 2)], [v(2, starting=2)], [v(2, up=1, starting=1)]],
    ids=["no-targets", "starting", "serving-some"],
)
def test_waiting_reason_is_shown_while_deploying(variants: list[VariantView]) -> None:
    status, reason = deployment_status(
        desired=RUN, variants=variants, ever_served=False, waiting_reason="waiting for capacity: needs 4 cpus"
    )
    assert (status, reason) == (DEPLOYING, "waiting for capacity: needs 4 cpus")


def test_waiting_reason_does_not_hide_other_statuses() -> None:
    status, _ = deployment_status(desired=RUN, variants=[v(1, up=1)], ever_served=True, waiting_reason="x")
    assert status == RUNNING
    status, _ = deployment_status(desired=RUN, variants=[v(1, failed=1)], ever_served=False, waiting_reason="x")
    assert status == FAILED_STATUS


def test_failed_reason_lists_distinct_route_reasons() -> None:
    status, reason = deployment_status(
        desired=RUN,
        variants=[v(3, failed=3)],
        ever_served=False,
        failure_reasons=["load error: bad model", "", "load error: bad model", "exit code 9"],
    )
    assert status == FAILED_STATUS
    assert reason == "could not start on any node: 3 of 3 targets failed (load error: bad model; exit code 9)"


def test_unspecified_desired_state_is_a_caller_bug() -> None:
    with pytest.raises(ValueError):
        deployment_status(desired=records_pb2.DESIRED_STATE_UNSPECIFIED, variants=[], ever_served=False)


# ---- route transitions ---------------------------------------------------------------
EXPECTED_ALLOWED = {
    (UNSPEC, STARTING),
    (STARTING, STARTED),
    (STARTING, FAILED),
    (STARTING, STOPPING),
    (STARTING, STOPPED),
    (STARTED, STOPPING),
    (STARTED, FAILED),
    (STARTED, STARTING),
    (STARTED, STOPPED),
    (STOPPING, STOPPED),
    (STOPPING, FAILED),
    (FAILED, STARTING),
    (FAILED, STARTED),
    (FAILED, STOPPING),
    (FAILED, STOPPED),
    (STOPPED, STARTING),
    (STOPPING, STARTING),
    (STOPPING, STARTED),
    (STOPPED, STARTED),
    (STOPPED, FAILED),
    (STOPPED, STOPPING),
}
SAME_STATE_NO_OPS = {(s, s) for s in ALL_ROUTE_STATES if s != UNSPEC}


@pytest.mark.parametrize(("old", "new"), list(itertools.product(ALL_ROUTE_STATES, repeat=2)))
def test_route_transition_table(old: RoutingState, new: RoutingState) -> None:
    allowed = (old, new) in EXPECTED_ALLOWED | SAME_STATE_NO_OPS
    assert check_route_transition(old, new) is allowed
    if allowed:
        assert route_transition(old, new) == new
    else:
        with pytest.raises(RouteTransitionError, match=common_pb2.RoutingState.Name(old)):
            route_transition(old, new)


def test_route_transition_table_is_the_documented_one() -> None:
    assert ALLOWED_ROUTE_TRANSITIONS == EXPECTED_ALLOWED


def test_a_rolling_update_is_deploying_until_its_old_allocations_are_gone() -> None:
    done = [VariantView(target_count=1, wanted=1, started=1)]
    assert deployment_status(desired=RUN, variants=done, ever_served=True)[0] == RUNNING
    status, reason = deployment_status(desired=RUN, variants=done, ever_served=True, rolling=True, waiting_reason="rolling update: x")
    assert (status, reason) == (DEPLOYING, "rolling update: x")
    # new ones still starting while the old ones serve: not a problem, deploying
    replacing = [VariantView(target_count=1, wanted=1, starting=1, replacing=1)]
    assert deployment_status(desired=RUN, variants=replacing, ever_served=True, also_serving=1, rolling=True)[0] == DEPLOYING
    no_room = [VariantView(target_count=0, wanted=0, replacing=2)]
    assert deployment_status(desired=RUN, variants=no_room, ever_served=True, also_serving=2, rolling=True)[0] == DEPLOYING
    # a new allocation that failed while the old ones serve is a concern
    failed = [VariantView(target_count=1, wanted=1, failed=1, replacing=1)]
    assert deployment_status(desired=RUN, variants=failed, ever_served=True, also_serving=1, rolling=True)[0] == CONCERNING


# ---- status transitions -----------------------------------------------------------------
ALL_STATUSES = [common_pb2.DEPLOYMENT_STATUS_UNSPECIFIED, DEPLOYING, RUNNING, CONCERNING, ABNORMAL, FAILED_STATUS,
                STOPPING_STATUS, STOPPED_STATUS]


@pytest.mark.parametrize(("old", "new"), list(itertools.product(ALL_STATUSES, repeat=2)))
def test_status_transition_table(old: DeploymentStatus, new: DeploymentStatus) -> None:
    if old == new or (old, new) in STATUS_TRANSITIONS:
        assert status_transition(old, new) == new
    else:
        with pytest.raises(IllegalTransition, match=common_pb2.DeploymentStatus.Name(new)):
            status_transition(old, new)


def test_a_writer_refuses_an_illegal_route_move_and_leaves_the_record_unchanged() -> None:
    from control_plane.reconcile.records import set_route

    alloc = records_pb2.AllocationRecord(allocation_id="a", routing_state=STARTED, reason="serving")
    with pytest.raises(IllegalTransition):
        set_route(alloc, UNSPEC, "bogus")
    assert (alloc.routing_state, alloc.reason) == (STARTED, "serving")
