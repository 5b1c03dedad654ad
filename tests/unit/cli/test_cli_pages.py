"""modelfleet.cli.pages: the CLI follows next_page_token and stops at --limit."""

from __future__ import annotations

from typing import Any

from modelfleet.cli import pages
from modelfleet.v1 import deployments_pb2 as dpb


class Server:
    """A List RPC over n deployments whose page tokens are offsets."""

    def __init__(self, n: int) -> None:
        self.ids = [f"d{i:04d}" for i in range(n)]
        self.sizes: list[int] = []

    def __call__(self, req: dpb.ListDeploymentsRequest, **_: Any) -> dpb.ListDeploymentsResponse:
        self.sizes.append(req.page.page_size)
        start = int(req.page.page_token or 0)
        end = start + min(req.page.page_size, 1000)
        out = dpb.ListDeploymentsResponse(next_page_token=str(end) if end < len(self.ids) else "")
        out.deployments.extend(dpb.Deployment(deployment_id=i) for i in self.ids[start:end])
        return out


def test_every_page_is_fetched_and_merged() -> None:
    server = Server(2500)
    got = pages.collect(server, dpb.ListDeploymentsRequest(), "deployments")
    assert [d.deployment_id for d in got.deployments] == server.ids and not got.next_page_token
    assert server.sizes == [1000, 1000, 1000]


def test_a_limit_asks_only_for_what_it_shows() -> None:
    server = Server(2500)
    got = pages.collect(server, dpb.ListDeploymentsRequest(), "deployments", limit=1200)
    assert len(got.deployments) == 1200 and server.sizes == [1000, 200]
    small = Server(5)
    assert len(pages.collect(small, dpb.ListDeploymentsRequest(), "deployments", limit=7).deployments) == 5
