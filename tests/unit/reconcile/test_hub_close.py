"""ChangeHub.close(): every waiter wakes at once and later waits do not
block, so watches and wait_for calls end at shutdown."""

from __future__ import annotations

import asyncio

from control_plane.reconcile.hub import ChangeHub


def test_close_wakes_every_waiter_and_later_waits_return_at_once() -> None:
    async def scenario() -> None:
        hub = ChangeHub()
        waiters = [asyncio.create_task(hub.wait_change(key, 0)) for key in ("a", "b", "*")]
        await asyncio.sleep(0)  # let them register
        assert not any(w.done() for w in waiters) and not hub.closed
        hub.close()
        assert await asyncio.wait_for(asyncio.gather(*waiters), timeout=5) == [0, 0, 0]
        assert hub.closed
        assert await asyncio.wait_for(hub.wait_change("c", 0), timeout=5) == 0

    asyncio.run(scenario())


def test_before_close_a_wait_still_times_out_unchanged() -> None:
    async def scenario() -> int:
        return await ChangeHub().wait_change("a", 0, timeout=0.01)

    assert asyncio.run(scenario()) == 0
