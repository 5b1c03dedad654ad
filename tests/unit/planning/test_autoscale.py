"""Unit tests of control_plane.planning.autoscale: the decider, driven sample by sample on a fake clock."""

from __future__ import annotations

from dataclasses import dataclass, field

from control_plane.planning.autoscale import Decision, Sample, Settings, State, decide

SETTINGS = Settings(min_allocations=1, max_allocations=8, target=8.0, upscale_delay_s=10.0, downscale_delay_s=30.0)


@dataclass
class Driver:
    """Feeds one sample a second; the variant's allocations start at once (started = wanted)."""

    settings: Settings = SETTINGS
    wanted: int = 1
    capacity: int = 8
    now: float = 0.0
    state: State = field(default_factory=State)
    changes: list[str] = field(default_factory=list)

    def run(self, seconds: int, *, total: float | None = None, per: float | None = None, **extra: int) -> Decision:
        out = Decision(self.wanted, self.state)
        for _ in range(seconds):
            load = total if total is not None else (per or 0.0) * self.wanted
            out = decide(self.settings, wanted=self.wanted, sample=Sample(in_flight=load, started=self.wanted, **extra),
                         now=self.now, state=self.state, capacity=self.capacity)
            if out.reason:
                self.changes.append(out.reason)
            self.wanted, self.state = out.wanted, out.state
            self.now += 1.0
        return out


def test_a_steady_load_for_60_s_changes_nothing() -> None:
    for per in (4.0, 6.0, 8.0):  # inside the band [target/2, target]
        d = Driver(wanted=3)
        d.run(60, per=per)
        assert d.changes == [] and d.wanted == 3


def test_a_noisy_load_around_the_target_changes_nothing() -> None:
    d = Driver(wanted=2)
    for second in range(60):  # above the target for 9 s, then one sample below it, again and again
        d.run(1, per=6.5 if second % 10 == 9 else 9.5)
    assert d.changes == []


def test_a_load_above_the_target_scales_up_proportionally_after_the_delay() -> None:
    d = Driver(wanted=2)
    d.run(10, total=28.4)  # 14.2 per allocation, for 0..9 s: not yet
    assert d.changes == []
    d.run(1, total=28.4)
    assert d.changes == ["in-flight 14.2 per allocation > target 8 for 10 s: 2 → 4"]
    d.run(60, total=28.4)  # 7.1 per allocation now: steady
    assert len(d.changes) == 1 and d.wanted == 4


def test_up_is_clamped_to_max_and_to_capacity() -> None:
    d = Driver(wanted=1, capacity=3)
    d.run(11, total=100.0)
    assert d.wanted == 3 and d.changes[-1].endswith("1 → 3")
    d.run(30, total=100.0)
    assert d.wanted == 3 and len(d.changes) == 1  # no room: it stays
    d = Driver(settings=Settings(min_allocations=1, max_allocations=2, target=8.0, upscale_delay_s=0.0, downscale_delay_s=30.0))
    d.run(5, total=100.0)
    assert d.wanted == 2


def test_rejections_alone_scale_up() -> None:
    d = Driver(wanted=2)
    d.run(11, per=3.0, rejected=5)
    assert d.wanted == 3 and d.changes[-1].startswith("5 call(s) rejected (queue full), in-flight 3.0 per allocation for 10 s")


def test_no_second_step_up_while_the_first_is_still_starting() -> None:
    state, wanted = State(), 2
    for now in range(40):
        out = decide(SETTINGS, wanted=wanted, sample=Sample(in_flight=40.0, started=2), now=float(now), state=state, capacity=8)
        wanted, state = out.wanted, out.state
    assert wanted == 5  # once 2 → 5, then it waits for the 3 new ones to start


def test_a_low_load_scales_down_one_at_a_time_to_min() -> None:
    d = Driver(wanted=4)
    d.run(30, total=1.0)
    assert d.changes == []
    d.run(1, total=1.0)
    assert d.changes == ["in-flight 0.2 per allocation < 4 (half the target 8) for 30 s: 4 → 3"]
    d.run(200, total=1.0)
    assert d.wanted == 1 and len(d.changes) == 3  # min 1: it stays


def test_settings_changed_by_an_update_clamp_at_once() -> None:
    out = decide(SETTINGS, wanted=12, sample=Sample(in_flight=0, started=12), now=0.0, state=State(), capacity=20)
    assert out.wanted == 8 and "max_allocations 8: 12 → 8" in out.reason


def test_scale_to_zero_after_idle_and_back_on_a_held_call() -> None:
    s = Settings(min_allocations=0, max_allocations=4, target=8.0, upscale_delay_s=10.0, downscale_delay_s=30.0,
                 scale_to_zero_after_s=60.0)
    d = Driver(settings=s, wanted=1)
    d.run(30, total=0.0, answered=1)  # answering calls: not idle
    d.run(60, total=0.0)
    assert d.wanted == 1
    d.run(1, total=0.0)
    assert d.wanted == 0 and d.changes[-1] == "no call for 60 s (scale_to_zero_after 60 s): 1 → 0"
    d.run(5, total=0.0)
    assert d.wanted == 0
    out = decide(s, wanted=0, sample=Sample(in_flight=0, started=0, held=3), now=d.now, state=d.state, capacity=4)
    assert out.wanted == 1 and out.reason == "3 call(s) waiting with no allocation: 0 → 1"


def test_without_scale_to_zero_min_0_keeps_one() -> None:
    s = Settings(min_allocations=0, max_allocations=4, target=8.0, upscale_delay_s=10.0, downscale_delay_s=1.0)
    d = Driver(settings=s, wanted=2)
    d.run(600, total=0.0)
    assert d.wanted == 1
