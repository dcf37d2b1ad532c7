"""The homeowner dashboard over real HTTP on 127.0.0.1, and in headless Chromium.

The browser is Debian's ``chromium`` (``apt-get install -y chromium``) driven by
Playwright with ``executable_path`` — never a downloaded browser. The screenshot
is written under ``$HEARTH_ARTIFACTS`` when set (CI keeps it), else the test's
tmp dir.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from p2pnode.node.dashboard import MAX_PRICE_PER_1K, NodeControl, serve_dashboard
from tests.p2pnode.node.fake_control import JOB_AMOUNTS, FakeNode

TOKEN = "s3cret-dashboard-token"
CHROMIUM = "/usr/bin/chromium"


async def _serve(nursery: trio.Nursery, node: NodeControl, token: str) -> str:
    port = await nursery.start(lambda task_status: serve_dashboard(
        node, token=token, port=0, task_status=task_status
    ))  # fmt: skip
    return f"http://127.0.0.1:{port}"


@pytest.fixture
async def dash(tmp_path: Path) -> AsyncIterator[tuple[FakeNode, httpx.AsyncClient]]:
    node = FakeNode(tmp_path)
    async with trio.open_nursery() as nursery:
        url = await _serve(nursery, node, TOKEN)
        async with httpx.AsyncClient(base_url=url, timeout=20) as client:
            yield node, client
        nursery.cancel_scope.cancel()


async def test_page_and_status(dash: tuple[FakeNode, httpx.AsyncClient]) -> None:
    _, client = dash
    page = await client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert '<script src="/app.js">' in page.text
    assert "http" not in page.text.replace("http-equiv", "")  # nothing fetched from elsewhere
    for asset in ("/app.js", "/app.css"):
        assert (await client.get(asset)).status_code == 200
    doc = (await client.get("/api/status")).json()
    assert doc["state"] == "serving" and doc["accepting"] is True
    assert doc["earnings"]["credited"] == sum(JOB_AMOUNTS)
    assert [v for _, v in doc["earnings"]["series"]][-1] == sum(JOB_AMOUNTS)
    assert len(doc["earnings"]["series"]) == len(JOB_AMOUNTS)
    assert doc["jobs"]["by_outcome"] == {"done": 4, "cancelled": 1, "running": 1}
    assert doc["jobs"]["recent"][0]["status"] == "running"  # newest first
    assert doc["power"]["state"] == "normal"
    assert [h["state"] for h in doc["power"]["history"]] == ["normal", "throttled", "normal"]
    assert doc["peers"]["count"] == 3
    assert doc["hardware"]["cpu"]["cores"] >= 1
    assert doc["currency"] == {"symbol": "USDC", "decimals": 6}


async def _post(client: httpx.AsyncClient, path: str, token: str | None, body: Any) -> Any:
    headers = {"Authorization": f"Bearer {token}".strip()} if token is not None else {}
    if isinstance(body, bytes):
        return await client.post(path, headers=headers, content=body)
    return await client.post(path, headers=headers, json=body)


async def test_controls_refused_without_the_token(
    dash: tuple[FakeNode, httpx.AsyncClient],
) -> None:
    node, client = dash
    for path, body in (
        ("/api/drain", {}),
        ("/api/resume", {}),
        ("/api/price", {"price_per_1k": 5}),
    ):
        for token in (None, "", "wrong", TOKEN + "x", TOKEN[:-1]):
            resp = await _post(client, path, token, body)
            assert resp.status_code == 401, (path, token)
            assert resp.headers["www-authenticate"] == "Bearer"
        resp = await client.post(path, headers={"Authorization": f"Basic {TOKEN}"}, json=body)
        assert resp.status_code == 401
        assert (await client.get(path)).status_code == 405  # controls are POST only
    assert node.calls == [] and node.service.accepting and node.price_floor == 1_200


async def test_bad_prices_refused(dash: tuple[FakeNode, httpx.AsyncClient]) -> None:
    node, client = dash
    for body in (
        {"price_per_1k": "100"},
        {"price_per_1k": 1.5},
        {"price_per_1k": -1},
        {"price_per_1k": True},
        {"price_per_1k": None},
        {"price_per_1k": MAX_PRICE_PER_1K + 1},
        {"price": 100},
        {"price_per_1k": 100, "extra": 1},
        [100],
        b"not json",
        b"",
        b'{"price_per_1k": ' + b"1" * 2000 + b"}",
    ):
        resp = await _post(client, "/api/price", TOKEN, body)
        assert resp.status_code == 400, body
        assert resp.json()["ok"] is False and resp.json()["error"]
    assert node.calls == [] and node.price_floor == 1_200


async def test_controls_with_the_token(dash: tuple[FakeNode, httpx.AsyncClient]) -> None:
    node, client = dash
    assert (await _post(client, "/api/drain", TOKEN, {})).json() == {"ok": True, "action": "drain"}
    assert (await client.get("/api/status")).json()["accepting"] is False
    assert (await _post(client, "/api/resume", TOKEN, {})).status_code == 200
    big = 10**21  # beyond a float's exact integers: must arrive intact
    resp = await _post(client, "/api/price", TOKEN, b'{"price_per_1k": %d}' % big)
    assert resp.status_code == 200 and resp.json()["price_per_1k"] == big
    assert node.calls == [("drain", None), ("resume", None), ("price", big)]
    assert (await client.get("/api/status")).json()["price_floor_per_1k"] == big


async def test_no_configured_token_means_controls_off(tmp_path: Path) -> None:
    node = FakeNode(tmp_path)
    async with trio.open_nursery() as nursery:
        url = await _serve(nursery, node, "")
        async with httpx.AsyncClient(base_url=url, timeout=20) as client:
            for token in (None, "", "anything"):
                resp = await _post(client, "/api/drain", token, {})
                assert resp.status_code == 403 and "dashboard.token" in resp.json()["error"]
            assert (await client.get("/api/status")).status_code == 200  # reading still works
        nursery.cancel_scope.cancel()
    assert node.calls == [] and node.service.accepting


async def test_foreign_host_header_refused(dash: tuple[FakeNode, httpx.AsyncClient]) -> None:
    node, client = dash  # a DNS-rebound page would send its own name as Host
    resp = await client.get("/api/status", headers={"Host": "evil.example:8090"})
    assert resp.status_code == 400
    resp = await client.post(
        "/api/drain",
        headers={"Host": "evil.example", "Authorization": f"Bearer {TOKEN}"},
    )
    assert resp.status_code == 400 and node.calls == []
    assert (await client.get("/", headers={"Host": "localhost:8090"})).status_code == 200


async def test_refuses_to_listen_beyond_loopback(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="loopback"):
        await serve_dashboard(FakeNode(tmp_path), token=TOKEN, host="0.0.0.0", port=0)


def _browse(url: str, shot: Path) -> dict[str, Any]:
    """Drive Debian's chromium through the page (runs in a worker thread)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--headless=new", "--disable-gpu", "--disable-dev-shm-usage"],
        )
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900}, locale="en-US")
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(url, timeout=30_000)
            page.wait_for_selector("#chart svg[data-points='5'] path.earnings-line", timeout=30_000)
            seen = {
                "earned": page.inner_text("#earned"),
                "power": page.inner_text("#power-state"),
                "state": page.inner_text("#node-state"),
                "jobs_rows": page.locator("#jobs-table tr").count(),
                "power_bands": page.locator("#power-timeline rect").count(),
                "peers": page.inner_text("#peer-count"),
            }
            # The controls, as the homeowner uses them: a wrong token is refused…
            page.fill("#token", "wrong")
            page.click("#drain")
            page.wait_for_selector("#control-result:has-text('refused (401)')", timeout=15_000)
            # …the right one drains, and the next poll shows it.
            page.fill("#token", TOKEN)
            page.click("#drain")
            page.wait_for_selector("#node-state:has-text('not bidding')", timeout=15_000)
            page.screenshot(path=str(shot), full_page=True)
            seen["errors"] = errors
            return seen
        finally:
            browser.close()


async def test_dashboard_in_headless_chromium(tmp_path: Path) -> None:
    if shutil.which(CHROMIUM) is None:
        pytest.fail(
            f"{CHROMIUM} not found: install Debian's browser with `apt-get install -y chromium` "
            "(the dashboard test drives it through Playwright; never `playwright install`)"
        )
    out = Path(os.environ.get("HEARTH_ARTIFACTS") or tmp_path)
    out.mkdir(parents=True, exist_ok=True)
    shot = out / "dashboard.png"
    node = FakeNode(tmp_path)
    async with trio.open_nursery() as nursery:
        url = await _serve(nursery, node, TOKEN)
        with trio.fail_after(120):
            seen = await trio.to_thread.run_sync(_browse, url + "/", shot)
        nursery.cancel_scope.cancel()
    assert seen["errors"] == []
    assert seen["earned"] == "7.5500 USDC"  # sum(JOB_AMOUNTS) at 6 decimals
    assert seen["power"] == "normal"
    assert seen["state"] == "serving"
    assert seen["jobs_rows"] == 6
    assert seen["power_bands"] == 3
    assert seen["peers"] == "(3)"
    assert node.calls == [("drain", None)]  # only the right token got through
    assert shot.stat().st_size > 10_000
