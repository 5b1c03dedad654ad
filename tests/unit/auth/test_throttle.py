"""control_plane.auth.throttle: failures slow down per client and key, with a fake clock."""

from __future__ import annotations

import pytest

from control_plane.auth.throttle import FailureThrottle, client_host, reason_of


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_first_failures_are_free_then_each_waits_twice_as_long_up_to_the_cap() -> None:
    clock = Clock()
    t = FailureThrottle(free=3, base_delay_s=0.1, max_delay_s=0.5, clock=clock)
    delays = [t.failed(client="10.0.0.1")[0] for _ in range(7)]
    assert delays == [0.0, 0.0, 0.0, 0.1, 0.2, 0.4, 0.5]
    assert t.throttled == 4 and t.failures["invalid"] == 7
    assert t.failed(client="10.0.0.2")[0] == 0.0  # another client is not slowed


def test_the_window_forgets_old_failures() -> None:
    clock = Clock()
    t = FailureThrottle(free=1, window_s=10, clock=clock)
    assert [t.failed(client="c")[0] > 0 for _ in range(2)] == [False, True]
    clock.now += 11
    assert t.failed(client="c")[0] == 0.0


def test_one_key_guessed_from_many_clients_is_slowed_by_its_key_id() -> None:
    t = FailureThrottle(free=2, base_delay_s=0.1, clock=Clock())
    delays = [t.failed(client=f"10.0.0.{i}", key_id="k1")[0] for i in range(4)]
    assert delays == [0.0, 0.0, 0.1, 0.2]


def test_a_client_is_warned_about_once_per_window_and_reasons_are_counted() -> None:
    clock = Clock()
    t = FailureThrottle(window_s=60, clock=clock)
    warns = [t.failed(client="c", reason=r)[1] for r in ("missing", "revoked", "expired", "nonsense")]
    assert warns == [True, False, False, False]
    clock.now += 61
    assert t.failed(client="c")[1] is True
    assert dict(t.failures) == {"missing": 1, "revoked": 1, "expired": 1, "invalid": 2}


def test_memory_is_bounded() -> None:
    t = FailureThrottle(max_tracked=50, clock=Clock())
    for i in range(1000):
        t.failed(client=f"c{i}", key_id=f"k{i}")
    assert len(t._windows) == 50


@pytest.mark.parametrize(
    ("peer", "host"),
    [("ipv4:127.0.0.1:5123", "127.0.0.1"), ("ipv6:[::1]:5123", "::1"), ("unix:/tmp/s", "unix:/tmp/s")],
)
def test_client_host_drops_the_port(peer: str, host: str) -> None:
    assert client_host(peer) == host


def test_reasons_come_from_the_messages() -> None:
    assert reason_of("/x needs credentials: send ...") == "missing"
    assert reason_of("malformed API key: expected mfk_") == "malformed"
    assert reason_of("API key abc was revoked at ...") == "revoked"
    assert reason_of("API key abc expired at ...") == "expired"
    assert reason_of("invalid API key") == "invalid"
