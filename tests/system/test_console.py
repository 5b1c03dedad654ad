"""The web console in a real browser: Playwright drives Debian's Chromium (/usr/bin/chromium, never a
downloaded one) against a real control plane (--http-listen) and agent.

Screenshots of each page go to the test's tmp dir (docs/console/*.png are two of them)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from cluster import Cluster, wait_until
from modelbuild import onnx_add

from modelfleet.v1 import deployments_pb2 as dpb

sync_api = pytest.importorskip("playwright.sync_api")
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]
pytestmark = pytest.mark.skipif(not os.access(CHROMIUM, os.X_OK), reason="needs Debian's chromium (scripts/test-deps.sh)")
UI_TIMEOUT_MS = 60_000  # a loaded 2-core CI box: workers may take a while to start


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Cluster, str]]:
    root = tmp_path_factory.mktemp("console")
    cluster = Cluster(root)
    try:
        cluster.start_control_plane(extra_args=["--http-listen", "127.0.0.1:0"])
        endpoint = cluster.rest_endpoint()
        cluster.start_agent("a1", cpus=4)
        cluster.wait_nodes(1, timeout=60)
        cluster.upload(onnx_add(root / "add1.onnx", [1.0, 1.0, 1.0, 1.0]), "adder")
        cluster.upload(onnx_add(root / "add2.onnx", [2.0, 2.0, 2.0, 2.0]), "adder")
        yield cluster, f"http://{endpoint}"
    finally:
        cluster.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[sync_api.Browser]:
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    out = tmp_path / "screenshots"
    out.mkdir()
    return out


def _sign_in(browser: sync_api.Browser, base: str, token: str, *, width: int = 1280) -> sync_api.Page:
    page = browser.new_page(viewport={"width": width, "height": 900})
    page.set_default_timeout(UI_TIMEOUT_MS)
    page.goto(f"{base}/")  # redirects to /console/
    assert page.url.endswith("/console/")
    page.get_by_label("API key").fill(token)
    page.get_by_role("button", name="Sign in").click()
    page.locator("#services").wait_for()
    return page


def _weights(cluster: Cluster, name: str) -> list[int]:
    return [v.weight for v in cluster.get(name).variants]


def test_deploy_two_versions_watch_running_move_weights_stop(fleet: tuple[Cluster, str], browser: sync_api.Browser,
                                                            shots: Path) -> None:
    cluster, base = fleet
    page = _sign_in(browser, base, cluster.token)
    expect = sync_api.expect
    page.get_by_role("link", name="Deploy").click()
    form = page.locator("#deploy-form")
    form.get_by_label("Name").fill("Bad Name!")
    page.get_by_role("button", name="Add a version").click()
    page.locator("#version-1").select_option("2")
    page.locator("#weight-0").fill("60")
    expect(page.locator("#weights-sum")).to_contain_text("sum to 60")  # checked as the user types
    expect(page.get_by_role("button", name="Deploy", exact=True)).to_be_disabled()
    page.locator("#weight-0").fill("100")
    expect(page.locator("#weights-sum")).to_contain_text("sum to 100")
    page.get_by_role("button", name="Preview").click()
    # the server's error appears beside the field it names
    expect(form.locator("[data-field=deployment_id]")).to_contain_text("deployment_id")
    form.get_by_label("Name").fill("web")
    page.get_by_role("button", name="Preview").click()
    expect(page.locator("#deploy-result")).to_contain_text("Plan (dry run")
    page.screenshot(path=str(shots / "deploy.png"), full_page=True)
    assert cluster.deployments.ListDeployments(dpb.ListDeploymentsRequest()).deployments == []

    page.get_by_role("button", name="Deploy", exact=True).click()
    page.wait_for_url("**#/services/web")
    page.evaluate("window.__noReload = true")
    expect(page.locator("#status")).to_have_attribute("data-status", "RUNNING", timeout=UI_TIMEOUT_MS)
    expect(page.locator("#routing [data-state=STARTED]")).to_have_count(2, timeout=UI_TIMEOUT_MS)
    assert page.evaluate("window.__noReload") is True  # live from the event stream, no reload
    assert _weights(cluster, "web") == [100, 0]
    for first, second in ((50, 50), (0, 100)):
        page.locator("#w-0").fill(str(first))
        page.locator("#w-1").fill(str(second))
        page.get_by_role("button", name="Change weights").click()
        wait_until(lambda f=first, s=second: _weights(cluster, "web") == [f, s], timeout=60, what=f"weights {first}/{second}")
        expect(page.locator("#w-1")).to_have_value(str(second))
    expect(page.locator("#events li").first).to_be_visible()
    page.screenshot(path=str(shots / "detail.png"), full_page=True)

    page.get_by_role("link", name="Real-time services").first.click()
    row = page.locator("#services tr[data-name=web]")
    expect(row.locator(".status")).to_have_attribute("data-status", "RUNNING")
    page.screenshot(path=str(shots / "services.png"), full_page=True)
    page.evaluate("window.__noReload = true")
    cluster.deployments.StopDeployment(dpb.StopDeploymentRequest(deployment_id="web"))
    expect(row.locator(".status")).to_have_attribute("data-status", "STOPPED", timeout=UI_TIMEOUT_MS)
    assert page.evaluate("window.__noReload") is True
    page.get_by_role("link", name="Nodes").click()
    expect(page.locator("#nodes tbody tr")).to_have_count(1)
    page.get_by_role("link", name="Models").click()
    expect(page.locator("#models tbody tr")).to_have_count(2)
    page.screenshot(path=str(shots / "models.png"), full_page=True)

    page.get_by_role("link", name="Real-time services").first.click()
    page.locator("#services a", has_text="web").click()
    page.get_by_role("button", name="Delete").click()
    page.wait_for_url("**#/services")
    wait_until(lambda: not cluster.deployments.ListDeployments(dpb.ListDeploymentsRequest()).deployments, timeout=30,
               what="the deployment deleted")
    _keep_for_docs(shots, "deploy.png", "detail.png")


def test_stop_from_the_detail_page(fleet: tuple[Cluster, str], browser: sync_api.Browser) -> None:
    cluster, base = fleet
    cluster.deployments.StartDeployment(dpb.StartDeploymentRequest(
        deployment_id="one", model_id="adder", model_version=1, wait_for=dpb.WAIT_FOR_STARTED), timeout=60)
    page = _sign_in(browser, base, cluster.token)
    page.goto(f"{base}/console/#/services/one")
    sync_api.expect(page.locator("#status")).to_have_attribute("data-status", "RUNNING")
    page.get_by_role("button", name="Stop").click()
    sync_api.expect(page.locator("#status")).to_have_attribute("data-status", "STOPPED", timeout=UI_TIMEOUT_MS)
    sync_api.expect(page.get_by_role("button", name="Delete")).to_be_visible()


def test_a_viewer_sees_no_mutating_actions(fleet: tuple[Cluster, str], browser: sync_api.Browser, shots: Path) -> None:
    cluster, base = fleet
    if not any(d.deployment_id == "seen" for d in cluster.deployments.ListDeployments(dpb.ListDeploymentsRequest()).deployments):
        cluster.deployments.StartDeployment(dpb.StartDeploymentRequest(deployment_id="seen", model_id="adder",
                                                                       wait_for=dpb.WAIT_FOR_STARTING), timeout=60)
    viewer = cluster.create_key("viewer", user="vera").token
    page = _sign_in(browser, base, viewer, width=390)
    expect = sync_api.expect
    expect(page.locator("#who")).to_contain_text("vera")
    expect(page.get_by_role("link", name="Deploy")).to_be_hidden()
    expect(page.locator("#services tr[data-name=seen] .status")).to_have_attribute("data-status", "RUNNING")
    page.screenshot(path=str(shots / "services-390.png"), full_page=True)
    page.get_by_label("Status").select_option("RUNNING")
    expect(page.locator("#services tbody .status:not([data-status=RUNNING])")).to_have_count(0)
    expect(page.locator("#services tr[data-name=seen]")).to_be_visible()
    page.get_by_label("Name").fill("no-such-service")
    expect(page.locator("#services tbody tr")).to_have_count(0)
    page.get_by_label("Name").fill("see")
    expect(page.locator("#services tbody tr")).to_have_count(1)
    page.locator("#services a", has_text="seen").click()
    expect(page.locator("#status")).to_be_visible()
    expect(page.locator("#events")).to_be_attached()
    assert page.locator("main button").count() == 0  # no stop, delete or weights
    page.goto(f"{base}/console/#/deploy")  # typed by hand: the services list, not a form
    page.locator("#services").wait_for()
    assert page.locator("#deploy-form").count() == 0
    page.get_by_role("link", name="Nodes").click()
    expect(page.locator("#nodes tbody tr")).to_have_count(1)
    assert page.locator("main button").count() == 0  # no drain / uncordon
    # keyboard: the sign-out control is reachable by Tab and works with Enter
    page.get_by_role("button", name="Sign out").focus()
    page.keyboard.press("Enter")
    expect(page.get_by_label("API key")).to_be_visible()
    assert page.evaluate("sessionStorage.length") == 0


def _keep_for_docs(shots: Path, *names: str) -> None:
    """MODELFLEET_CONSOLE_SHOTS=DIR copies the docs' screenshots there (docs/console/ when refreshing the docs)."""
    target = os.environ.get("MODELFLEET_CONSOLE_SHOTS")
    if target:
        for name in names:
            shutil.copy(shots / name, Path(target) / name)
