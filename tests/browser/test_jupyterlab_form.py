"""Opening a committed notebook in JupyterLab does not mark it modified.

A real JupyterLab server is started on a free local port with two copies of
``notebooks/02_train.ipynb``: the committed one and one with the metadata a hand-written
notebook has (``display_name`` "Python 3", ``language_info`` without the kernel's fields).
Each is opened in headless Chromium; once its kernel is idle the document tab must not carry
JupyterLab's ``jp-mod-dirty`` class for the committed copy, and must carry it for the other
(so the test can tell the two apart).
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from dml_study.study.report.pagecheck import CHROMIUM_ARGS, find_chromium

if TYPE_CHECKING:
    from playwright.sync_api import Page

pytest.importorskip("playwright.sync_api", reason="pip install playwright (test extra)")

REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _dirty_after_kernel_idle(page: Page, url: str) -> bool:
    page.goto(url)
    page.wait_for_selector(".jp-Notebook", timeout=90_000)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        state = page.evaluate("""() => {
          const k = document.querySelector('[data-status]');
          return k ? k.getAttribute('data-status') : null; }""")
        if state == "idle":
            break
        time.sleep(0.5)
    else:
        pytest.fail(f"the kernel of {url} did not become idle")
    time.sleep(3)  # JupyterLab writes kernel metadata right after the kernel info reply
    tab = page.locator(".lm-TabBar-tab.jp-mod-current.jp-mod-active").first
    return "jp-mod-dirty" in (tab.get_attribute("class") or "")


@pytest.mark.slow
def test_committed_notebook_opens_unmodified_in_jupyterlab(tmp_path: Path):
    from playwright.sync_api import sync_playwright

    chromium = find_chromium()
    if chromium is None:
        pytest.skip("no chromium on this machine (Debian: apt-get install chromium)")
    committed = (REPO / "notebooks" / "02_train.ipynb").read_text(encoding="utf-8")
    (tmp_path / "committed.ipynb").write_text(committed, encoding="utf-8")
    hand = json.loads(committed)
    hand["metadata"] = {"kernelspec": {"display_name": "Python 3", "language": "python",
                                       "name": "python3"},
                        "language_info": {"name": "python"}}
    (tmp_path / "hand_written.ipynb").write_text(json.dumps(hand, indent=1) + "\n")
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", f"--port={port}",
         "--ServerApp.ip=127.0.0.1", "--IdentityProvider.token=", "--ServerApp.password=",
         f"--ServerApp.root_dir={tmp_path}", "--allow-root", "--LabApp.news_url=None",
         "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.5)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=chromium,
                                                 args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 900})
                base = f"http://127.0.0.1:{port}/lab/tree"
                assert _dirty_after_kernel_idle(page, f"{base}/hand_written.ipynb?reset")
                page = browser.new_page(viewport={"width": 1400, "height": 900})
                assert not _dirty_after_kernel_idle(page, f"{base}/committed.ipynb?reset")
            finally:
                browser.close()
    finally:
        server.terminate()
        server.wait(timeout=30)
