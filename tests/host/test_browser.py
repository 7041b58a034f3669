"""Headless Chromium opens the host's page, loads every shipped UI workflow and finds no missing node types, no
widget errors and no console errors of the page itself; a screenshot of each is kept under artifacts/browser/.

Chromium is Debian's (/usr/bin/chromium, driven by the ``playwright`` package; ``playwright install`` is never
run). The machine has no network: failed requests to other hosts (api.comfy.org release/registry lookups) are
expected and ignored; anything else logged as an error after the workflow is loaded fails the test.
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tiny_models import write_all, write_test_video

pytestmark = [pytest.mark.host, pytest.mark.browser]

REPO = Path(__file__).resolve().parents[2]
SHOTS = REPO / "artifacts" / "browser"
CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
UI_WORKFLOWS = sorted((REPO / "workflows").glob("*.json"))

NODE_STATE = """() => window.app.graph._nodes.map(n => ({
    id: n.id, type: n.type,
    registered: !!LiteGraph.registered_node_types[n.type],
    has_errors: !!n.has_errors,
    widgets: (n.widgets || []).filter(w => w.type !== 'button').map(w => [w.name, w.value]),
}))"""


class Page:
    """One browser tab on the host with the console and failed requests recorded."""

    def __init__(self, page: Any, base_url: str) -> None:
        self.page = page
        self.base_url = base_url
        self.events: list[tuple[str, str]] = []
        page.on("console", lambda m: self.events.append((m.type, m.text)) if m.type == "error" else None)
        page.on("pageerror", lambda e: self.events.append(("pageerror", str(e))))
        page.on("requestfailed", lambda r: self.events.append(("requestfailed", r.url)))
        page.on("response", lambda r: self.events.append(("http", f"{r.status} {r.url}")) if r.status >= 400 else None)

    def load(self, workflow: dict) -> list[dict]:
        self.page.evaluate("async (wf) => { await window.app.loadGraphData(wf); }", workflow)
        self.page.wait_for_timeout(1500)
        return self.page.evaluate(NODE_STATE)

    def own_errors(self, since: int) -> list[tuple[str, str]]:
        """Errors after event ``since`` that are not the expected offline failures to other hosts."""
        offline = {
            url for kind, url in self.events[since:] if kind == "requestfailed" and not url.startswith(self.base_url)
        }
        errors = []
        for kind, text in self.events[since:]:
            if kind == "requestfailed" and text in offline:
                continue
            if kind == "error" and "net::ERR_NAME_NOT_RESOLVED" in text and offline:
                continue
            errors.append((kind, text))
        return errors

    def toasts(self) -> list[str]:
        """Visible warning / error notifications (e.g. "Invalid workflow against zod schema")."""
        return self.page.evaluate(
            "() => Array.from(document.querySelectorAll('.p-toast-message')).filter(t => t.offsetParent !== null)"
            ".map(t => t.innerText.slice(0, 300))"
        )

    def dismiss_toasts(self) -> None:
        self.page.evaluate("() => document.querySelectorAll('.p-toast-close-button').forEach(b => b.click())")

    def dialogs(self) -> list[str]:
        return self.page.evaluate(
            "() => Array.from(document.querySelectorAll('.p-dialog')).filter(d => d.offsetParent !== null).map(d => d.innerText.slice(0, 500))"
        )


def _mark_tutorial_done(base_url: str) -> None:
    """Tell the frontend this user has seen the tutorial, so it does not open the templates browser on start."""
    req = urllib.request.Request(
        base_url + "/api/settings/Comfy.TutorialCompleted",
        data=b"true",
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        assert resp.status == 200


@pytest.fixture(scope="module")
def browser_page(comfy_host) -> Iterator[Page]:
    playwright = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} not found: run `make test` (it installs Debian's chromium)")
    write_all(comfy_host.models_dir, readme=False)
    write_test_video(comfy_host.base_dir / "input" / "mochi_input.mp4")
    SHOTS.mkdir(parents=True, exist_ok=True)
    _mark_tutorial_done(comfy_host.client.base_url)
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            tab = browser.new_page(viewport={"width": 1800, "height": 1000})
            page = Page(tab, comfy_host.client.base_url)
            tab.goto(comfy_host.client.base_url + "/", wait_until="domcontentloaded")
            tab.wait_for_function(
                "() => window.app && window.app.graph && window.LiteGraph && LiteGraph.registered_node_types['MochiSampler']",
                timeout=120_000,
            )
            tab.wait_for_timeout(1000)
            assert page.dialogs() == [], "a dialog is open before any workflow was loaded"
            yield page
        finally:
            browser.close()


def test_every_pack_node_is_registered_in_the_page(browser_page: Page) -> None:
    from nodes import NODE_CLASS_MAPPINGS

    missing = browser_page.page.evaluate(
        "(ids) => ids.filter(t => !LiteGraph.registered_node_types[t])", list(NODE_CLASS_MAPPINGS)
    )
    assert missing == []


@pytest.mark.parametrize("path", UI_WORKFLOWS, ids=lambda p: p.stem)
def test_ui_workflow_loads_cleanly(browser_page: Page, path: Path) -> None:
    workflow = json.loads(path.read_text())
    since = len(browser_page.events)
    browser_page.dismiss_toasts()
    state = browser_page.load(workflow)
    shot = SHOTS / f"{path.stem}.png"
    browser_page.page.screenshot(path=str(shot))
    assert shot.stat().st_size > 10_000

    by_id = {n["id"]: n for n in state}
    assert sorted(by_id) == sorted(n["id"] for n in workflow["nodes"])
    for node in workflow["nodes"]:
        got = by_id[node["id"]]
        assert got["type"] == node["type"]
        assert got["registered"] and not got["has_errors"], f"missing node type {node['type']}"
        values = [v for _, v in got["widgets"]]
        if node["type"].startswith("Mochi"):
            assert values == node["widgets_values"], (node["type"], got["widgets"])
        else:  # core nodes may add display-only widgets after theirs (LoadVideo's video preview)
            assert values[: len(node["widgets_values"])] == node["widgets_values"], (node["type"], got["widgets"])
    assert browser_page.dialogs() == [], "a dialog (missing nodes / models) opened"
    assert browser_page.toasts() == [], "the frontend complained about the workflow"
    assert browser_page.own_errors(since) == []


def test_detector_sees_a_missing_node_type(browser_page: Page) -> None:
    """Negative control: the checks above do flag an unknown node type and a workflow the frontend's schema refuses."""
    workflow = json.loads(UI_WORKFLOWS[0].read_text())
    workflow["nodes"][0]["type"] = "MochiNodeThatDoesNotExist"
    workflow["id"] = "not-a-uuid"
    browser_page.dismiss_toasts()
    state = browser_page.load(workflow)
    assert any("schema" in t for t in browser_page.toasts()), browser_page.toasts()
    bad = [n for n in state if n["type"] == "MochiNodeThatDoesNotExist"]
    assert bad and not bad[0]["registered"] and bad[0]["has_errors"]
    assert any("MochiNodeThatDoesNotExist" in d for d in browser_page.dialogs())
    browser_page.page.keyboard.press("Escape")
    time.sleep(0.5)


def test_screenshots_are_kept(browser_page: Page) -> None:
    for path in UI_WORKFLOWS:  # the workflow tests take them; run alone, this test takes the missing ones
        shot = SHOTS / f"{path.stem}.png"
        if not shot.exists():
            browser_page.load(json.loads(path.read_text()))
            browser_page.page.screenshot(path=str(shot))
    assert {p.stem for p in SHOTS.glob("*.png")} >= {p.stem for p in UI_WORKFLOWS}
