"""Unit tests of outlier ejection (control_plane.gateway.outliers) with a fake
clock: the failure streak, the doubling back-off and its reset, the trial
call, TRANSIENT_FAILURE, that a deployment is never left with nothing, and
which worker errors count as no answer."""

from __future__ import annotations

import grpc
import pytest

from control_plane.gateway.outliers import Outliers
from control_plane.gateway.wire import transport_failure


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def o(clock: Clock) -> Outliers:
    return Outliers(threshold=3, base_s=1.0, max_s=30.0, clock=clock)


def fail(o: Outliers, address: str = "a", n: int = 1) -> None:
    for _ in range(n):
        o.failed(address, deployment="d", trial=o.begin(address), reason="deadline")


def test_three_failures_in_a_row_eject_and_an_answer_resets_the_streak(o: Outliers) -> None:
    fail(o, n=2)
    o.answered("a", trial=False)
    fail(o, n=2)
    assert o.available("a") and not o.out("a")
    fail(o)
    assert o.out("a") and not o.available("a")
    assert o.ejections == {"d": 1}


def test_backoff_doubles_up_to_the_cap_and_a_trial_call_probes_back(o: Outliers, clock: Clock) -> None:
    fail(o, n=3)
    waits = []
    for _ in range(7):
        start = clock.now
        while not o.available("a"):
            clock.now += 0.25
        waits.append(clock.now - start)
        assert o.begin("a")  # the trial call
        assert not o.available("a") and not o.begin("a")  # one trial at a time
        o.failed("a", deployment="d", trial=True, reason="deadline")
    assert waits == [1, 2, 4, 8, 16, 30, 30]
    while not o.available("a"):
        clock.now += 0.25
    trial = o.begin("a")
    o.answered("a", trial=trial)
    assert not o.out("a") and o.available("a")


def test_the_doubling_resets_after_a_quiet_period(o: Outliers, clock: Clock) -> None:
    fail(o, n=3)
    clock.now += 1
    o.answered("a", trial=o.begin("a"))
    fail(o, n=3)
    clock.now += 1.5
    assert not o.available("a")  # second ejection in a row: 2 s
    clock.now += 0.5
    o.answered("a", trial=o.begin("a"))
    clock.now += 30
    o.answered("a", trial=o.begin("a"))
    fail(o, n=3)
    clock.now += 1
    assert o.available("a")  # back to 1 s


def test_a_cancelled_trial_frees_the_slot_for_another(o: Outliers, clock: Clock) -> None:
    fail(o, n=3)
    clock.now += 1
    assert o.begin("a")
    o.abandoned("a", trial=True)
    assert o.available("a") and o.begin("a")


def test_a_late_answer_returns_the_worker(o: Outliers) -> None:
    fail(o, n=3)
    o.answered("a", trial=False)  # a call sent before the ejection came back after all
    assert not o.out("a")


def test_transient_failure_ejects_at_once_and_again_after_the_backoff(o: Outliers, clock: Clock) -> None:
    o.channel_failed("a", deployment="d")
    assert o.out("a") and not o.available("a")
    o.channel_failed("a", deployment="d")  # still out: no second ejection
    assert o.ejections == {"d": 1}
    clock.now += 1
    o.channel_failed("a", deployment="d")  # probed: still failing, out for longer
    assert o.ejections == {"d": 2}
    clock.now += 1.9
    assert not o.available("a")
    clock.now += 0.1
    assert o.available("a")


def test_routable_skips_ejected_workers_but_never_leaves_nothing(o: Outliers) -> None:
    fail(o, "a", n=3)
    assert o.routable(["a", "b"], str) == ["a", "b"][1:]
    fail(o, "b", n=3)
    assert o.routable(["a", "b"], str) == ["a", "b"]  # panic mode: all of them


def test_failures_while_out_do_not_extend_the_ejection(o: Outliers, clock: Clock) -> None:
    fail(o, n=3)
    for _ in range(5):
        o.failed("a", deployment="d", trial=False, reason="deadline")  # calls sent before the ejection
    assert o.ejections == {"d": 1}
    clock.now += 1
    assert o.available("a")


def test_forget_drops_workers_no_route_names(o: Outliers) -> None:
    fail(o, "a", n=3)
    fail(o, "b", n=3)
    o.forget(lambda address: address == "b")
    assert not o.out("a") and o.out("b")


def test_threshold_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        Outliers(threshold=0)


def test_a_broken_connection_ejects_at_once(o: Outliers) -> None:
    o.failed("a", deployment="d", trial=False, reason="UNAVAILABLE Socket closed", at_once=True)
    assert o.out("a") and o.ejections == {"d": 1}


def test_due_once_the_backoff_is_over_and_no_trial_is_in_flight(o: Outliers, clock: Clock) -> None:
    assert not o.due("a")
    fail(o, n=3)
    assert not o.due("a")
    clock.now += 1
    assert o.due("a")
    o.channel_failed("a", deployment="d", reason="probe: channel CONNECTING")  # not connected: out again, longer
    assert not o.due("a")
    clock.now += 2
    assert o.due("a") and o.begin("a")
    assert not o.due("a")  # its trial is in flight


def test_the_gauge_counts_out_workers_by_deployment(o: Outliers) -> None:
    fail(o, "a", n=3)
    o.failed("b", deployment="e", trial=False, reason="x", at_once=True)
    fail(o, "c", n=1)
    assert o.ejected() == {"d": 1, "e": 1}


@pytest.mark.parametrize(
    ("code", "details", "counts"),
    [
        (grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded", True),  # gRPC's timer: no answer in time
        (grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded before the call was queued", False),  # the worker's answer
        (grpc.StatusCode.UNAVAILABLE, "failed to connect to all addresses; last error: ...", True),
        (grpc.StatusCode.UNAVAILABLE, "Socket closed", True),
        (grpc.StatusCode.UNAVAILABLE, "worker is draining", False),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, "queue full", False),
        (grpc.StatusCode.INVALID_ARGUMENT, "bad", False),
    ],
)
def test_transport_failure_counts_only_calls_the_worker_never_answered(code: grpc.StatusCode, details: str, counts: bool) -> None:
    assert transport_failure(code, details) is counts
