"""The analyses in JupyterLab as `make lab` opens them, driven in Debian's Chromium by Playwright.

`make lab` runs for real, in a copy of the files it reads, with the Lab settings, workspaces and
config of the test (never the venv's or the user's), a token, and 127.0.0.1 only; every request the
page makes anywhere else is blocked and recorded.
"""
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import BIN, ROOT
from test_browser import CHROMIUM, CHROMIUM_ARGS, require_chromium, save_for_ci

TOKEN = "facebench-test"
MARKER = "A line added in JupyterLab."


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_lab(checkout: Path, home: Path, port: int) -> subprocess.Popen:
    """`make lab` in ``checkout``: the Makefile's recipe as it is, only its settings folder moved to ``home``."""
    stamp = home / "installed"
    stamp.touch()
    # Lab reads the overrides from its app settings folder: the one `make lab` writes, moved out of the venv.
    args = (f"--no-browser --ip=127.0.0.1 --port={port} --IdentityProvider.token={TOKEN} "
            f"--LabApp.app_settings_dir={home / 'settings'}")
    env = {**os.environ, "JUPYTERLAB_SETTINGS_DIR": str(home / "user-settings"),
           "JUPYTERLAB_WORKSPACES_DIR": str(home / "workspaces"), "JUPYTER_CONFIG_DIR": str(home / "config"),
           "JUPYTER_DATA_DIR": str(home / "data"), "JUPYTER_RUNTIME_DIR": str(home / "runtime")}
    return subprocess.Popen(
        ["make", "-f", str(ROOT / "Makefile"), "-C", str(checkout), "lab", f"BIN={BIN}", f"STAMP={stamp}",
         f"--old-file={stamp}", f"LAB_SETTINGS={home / 'settings'}", f"LAB_ARGS={args}"],
        env=env, stdout=(home / "lab.log").open("w"), stderr=subprocess.STDOUT, start_new_session=True)


def reap(lab: subprocess.Popen) -> None:
    try:
        lab.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(lab.pid, signal.SIGKILL)
        lab.wait()


def get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.load(response)


def wait_for_server(lab: subprocess.Popen, base: str, log: Path) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if lab.poll() is not None:
            pytest.fail(f"`make lab` exited with {lab.returncode}:\n{log.read_text()[-3000:]}")
        try:
            get(f"{base}/api/status?token={TOKEN}")
            return
        except OSError:
            time.sleep(0.2)
    pytest.fail(f"JupyterLab did not answer within 120 s:\n{log.read_text()[-3000:]}")


def test_an_analysis_runs_and_saves_from_jupyterlab_and_the_book_shows_the_edit(demo_project, tmp_path):
    """The journey of `make lab`: the file browser starts among the notebooks; one opens as a notebook
    (unmodified), runs with its table and figures and no error, takes an edit that Ctrl+S saves to its
    .md and nothing else, and the page rendered from that .md shows it. README.md opens as Markdown."""
    from playwright.sync_api import sync_playwright

    from facebench.grid import Renderer, load_grid, page_parameters

    require_chromium()
    project, _ = demo_project
    cell = next(c for c in load_grid(project / "grids" / "demo.yaml")["cells"] if c["name"] == "dlib__demo")
    params = page_parameters(cell)
    checkout, home = tmp_path / "checkout", tmp_path / "home"
    home.mkdir()
    shutil.copytree(ROOT / ".jupyter", checkout / ".jupyter")
    shutil.copytree(ROOT / "notebooks", checkout / "notebooks", ignore=shutil.ignore_patterns("*.ipynb"))
    for name in ("jupytext.toml", "README.md"):
        shutil.copy(ROOT / name, checkout / name)
    source = checkout / "notebooks" / "evaluate.md"
    # The page reads the demo study's stored run, as the grid's parameters for the cell say.
    original = source.read_text().replace("out = None\n", f"out = {params['out']!r}\n", 1)
    assert params["out"] in original, "evaluate.md no longer declares `out = None`"
    source.write_text(original)

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    lab = start_lab(checkout, home, port)
    try:
        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, timeout=60_000)
                try:
                    wait_for_server(lab, base, home / "lab.log")  # started first: both take seconds
                    viewers = get(f"{base}/lab/api/settings/@jupyterlab/docmanager-extension:plugin?token={TOKEN}")
                    installed = json.loads((checkout / ".jupyter" / "lab-overrides.json").read_text())
                    assert viewers["schema"]["properties"]["defaultViewers"]["default"] == \
                        installed["@jupyterlab/docmanager-extension:plugin"]["defaultViewers"], "overrides not read"
                    journey(browser, base, tmp_path / "lab.png")
                finally:
                    browser.close()
        finally:
            with contextlib.suppress(ProcessLookupError):  # make, Lab and its kernels: the group started for them
                os.killpg(lab.pid, signal.SIGTERM)

        saved = source.read_text()
        end = original.index("\n```{code-cell}")  # the first Markdown cell ends there
        churn = [word for word in ("jupytext_version", "editable", "deletable") if word in saved]
        assert not churn, f"the save wrote {churn} into {source.name}"
        assert saved == original[:end] + f"\n{MARKER}\n" + original[end:], "the save changed more than the edit"
        pair = json.loads((checkout / "_build" / "lab" / "evaluate.ipynb").read_text())
        assert any(c.get("outputs") for c in pair["cells"]), "the run's outputs are not in the paired .ipynb"

        # What `make book` does with the edited notebook (while Lab shuts down): render the cell's
        # page from it, from the stored run.
        page = tmp_path / "dlib__demo.ipynb"
        with Renderer(project, tmp_path) as renderer:
            renderer.render(source, page, params)
        rendered = json.loads(page.read_text())
        assert any(MARKER in "".join(c["source"]) for c in rendered["cells"] if c["cell_type"] == "markdown")
    finally:
        reap(lab)


def journey(browser, base: str, shot: Path) -> None:
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.set_default_timeout(60_000)
    outside = []
    page.route("**/*", lambda route: route.continue_() if route.request.url.startswith((base, "data:", "blob:"))
               else (outside.append(route.request.url), route.abort()))
    try:
        page.goto(f"{base}/?token={TOKEN}")  # where `make lab` sends the browser it opens
        listing = page.locator(".jp-DirListing-content")
        listing.get_by_text("evaluate.ipynb", exact=True).dblclick()
        panel = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden)")
        # The kernel's own status: the notebook's indicator says idle before there is a kernel.
        idle = page.locator(".jp-StatusBar-TextItem", has_text=re.compile(r"\(ipykernel\) \| Idle$"))
        idle.wait_for()
        tab = page.locator(".lm-DockPanel-tabBar .lm-TabBar-tab", has_text="evaluate.ipynb")
        assert "jp-mod-dirty" not in tab.get_attribute("class"), "opening the notebook marked it modified"

        page.locator(".lm-MenuBar-itemLabel", has_text=re.compile("^Run$")).click()
        page.locator(".lm-Menu-itemLabel", has_text=re.compile("^Run All Cells$")).click()
        page.wait_for_function("""() => {
            const prompts = document.querySelectorAll(
                '.jp-NotebookPanel:not(.lm-mod-hidden) .jp-CodeCell .jp-InputPrompt');
            return prompts.length && Array.from(prompts).every(p => /\\[\\d+\\]/.test(p.textContent));
        }""")
        idle.wait_for()
        errors = panel.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']")
        assert errors.count() == 0, f"error output: {errors.all_inner_texts()}"
        assert panel.locator(".jp-OutputArea-output table").count() >= 1, "no table"
        figures = panel.locator(".jp-OutputArea-output img, .jp-OutputArea-output svg")
        assert figures.count() >= 2 and figures.first.bounding_box()["width"] > 100, "no figure"
        page.screenshot(path=str(shot))
        save_for_ci(shot)

        panel.locator(".jp-MarkdownCell .jp-InputPrompt").first.click()  # select the first Markdown cell
        page.keyboard.press("Enter")  # and edit it
        panel.locator(".jp-Notebook.jp-mod-editMode").wait_for()
        page.keyboard.press("Control+End")
        page.keyboard.type(f"\n\n{MARKER}")
        page.keyboard.press("Control+Enter")
        page.keyboard.press("Control+s")
        page.wait_for_function("""() => !document.querySelector('.lm-DockPanel-tabBar .lm-TabBar-tab.jp-mod-dirty')""")

        page.locator(".jp-BreadCrumbs-home").click()
        listing.get_by_text("README.md", exact=True).dblclick()
        page.locator(".lm-DockPanel-tabBar .lm-TabBar-tab.lm-mod-current", has_text="README.md").wait_for()
        shown = page.locator(".jp-MainAreaWidget:not(.lm-mod-hidden)")
        assert shown.locator(".jp-FileEditor").count() == 1 and shown.locator(".jp-Notebook").count() == 0, \
            "README.md did not open as Markdown"
        assert not outside, f"JupyterLab requested outside resources: {outside}"
    except Exception:
        with contextlib.suppress(Exception):  # the failure, not a page that can no longer be shot, is the news
            page.screenshot(path=str(shot.with_name("lab-failed.png")))
            save_for_ci(shot.with_name("lab-failed.png"))
        raise
    finally:
        page.close()
