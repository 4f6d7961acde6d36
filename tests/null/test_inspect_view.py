"""`graphir view`: the self-contained HTML page of a compiled graph, and the page in headless
Chromium (Debian's, driven by Playwright): search a node, click it, read the panel.

The browser test skips, with the reason, where Chromium or the `playwright` package is missing
(tools/test.sh installs both when run as root). Its screenshot is kept as a test artifact in
$GRAPHIR_TEST_ARTIFACTS (default build/test-artifacts/).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest

from graphir import report
from graphir.tools import view
from graphir.tools.cli import main
from graphir.tools.subject import Setup, Spec, Subject

CHROMIUM = os.environ.get("GRAPHIR_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
ARTIFACTS = Path(
    os.environ.get("GRAPHIR_TEST_ARTIFACTS", Path(__file__).resolve().parents[2] / "build" / "test-artifacts")
)

needs_dot = pytest.mark.skipif(
    shutil.which("dot") is None, reason="Graphviz `dot` is not installed (apt-get install graphviz)"
)


def _data(html: str) -> dict:
    m = re.search(r'<script type="application/json" id="graph-data">(.*?)</script>', html, re.S)
    return json.loads(m.group(1).replace("<\\/", "</"))


@needs_dot
def test_page_is_self_contained(tmp_path, capsys):
    out = tmp_path / "g.html"
    assert main(["view", "--example", "-b", "ref", "-o", str(out)]) == 0
    html = out.read_text()
    assert html.startswith("<!doctype html>") and "<svg" in html and "wrote" in capsys.readouterr().err
    # nothing is fetched: no external scripts, styles, images or links
    assert not re.search(r"<(link|img|iframe)\b", html)
    assert not re.search(r"""\b(src|href)\s*=\s*["']?(https?:|//)""", html)
    assert "@import" not in html and "url(" not in html
    data = _data(html)
    subject = Subject.build(Spec(example=True), Setup(("ref",)))
    assert len(data["rows"]) == len(subject.graph.leafs) + len(subject.graph.nodes)
    for r in data["rows"]:  # every tensor is drawn, addressable by its id
        assert f'id="t{r["id"]}"' in html


@needs_dot
def test_layer_filter_and_overlay_from_a_saved_compare(tmp_path, capsys):
    saved = tmp_path / "cmp.json"
    assert main(["compare", "--example", "-b", "ref", "--against", "ref", "--json"]) == 0
    saved.write_text(capsys.readouterr().out)
    out = tmp_path / "g.html"
    assert main(["view", "--example", "-b", "ref", "--overlay", str(saved), "-o", str(out)]) == 0
    data = _data(out.read_text())
    assert data["color_by"] == "compare"
    assert all("compare" in r for r in data["rows"] if r["kind"] == "node" and r["view_src"] is None)
    assert main(["view", "--example", "-b", "ref", "--layer", "1", "-o", str(out)]) == 0
    rows = _data(out.read_text())["rows"]
    assert {r["layer"] for r in rows if not r.get("context")} == {1}
    assert any(r.get("context") for r in rows)  # the sources feeding layer 1 are drawn, dashed


@needs_dot
def test_overlay_from_another_graph_is_refused(tmp_path, capsys):
    saved = tmp_path / "prof.json"
    assert main(["profile", "-b", "ref", "--runs", "1", "--json"]) == 0  # the shipped model
    saved.write_text(capsys.readouterr().out)
    assert main(["view", "--example", "-b", "ref", "--overlay", str(saved), "-o", str(tmp_path / "g.html")]) == 2
    assert "is from another graph" in capsys.readouterr().err


def test_missing_dot_is_a_clear_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(view.shutil, "which", lambda name: None)
    assert main(["view", "--example", "-b", "ref", "-o", str(tmp_path / "g.html")]) == 2
    err = capsys.readouterr().err
    assert "Graphviz `dot` was not found" in err and "apt-get install graphviz" in err


def _playwright():
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (Debian: apt-get install chromium; tools/test.sh does it as root)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("the `playwright` package is not installed (pip install playwright; tools/test.sh does it)")
    return sync_playwright


@needs_dot
def test_page_in_headless_chromium(tmp_path):
    sync_playwright = _playwright()
    subject = Subject.build(Spec(), Setup(("cpu",)))
    plan = subject.plan
    rows = report.rows(subject.graph, plan)
    path = tmp_path / "graph.html"
    path.write_text(view.page(rows, "the shipped model", {"plan": plan.stats.summary()}))
    name = "ffn_up-1"
    t = subject.graph.find(name)
    tid = next(r["id"] for r in rows if r["name"] == name)
    errors: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(path.as_uri())
            page.fill("#search", name)
            page.click(f'#results li[data-id="{tid}"]')
            field = lambda key: page.inner_text(f'#panel dd[data-field="{key}"]')  # noqa: E731
            assert page.inner_text("#panel-title") == name
            assert json.loads(field("ne")) == list(t.ne)
            assert json.loads(field("nb")) == list(t.nb)
            assert field("backend") == plan.backend_of(t).name
            assert field("offset") == str(plan.offset_of(t))
            assert field("op") == "mul_mat"
            # click another node in the drawing: its source, the up projection's weight
            weight = next(s for s in t.src if s.is_param)
            wid = next(r["id"] for r in rows if r["name"] == weight.name)
            page.click(f"#t{wid}")
            assert page.inner_text("#panel-title") == weight.name
            assert field("offset") == "-" and plan.offset_of(weight) is None
            assert page.eval_on_selector(f"#t{wid}", "g => g.classList.contains('selected')")
            # Enter steps to the match and back to the node
            page.fill("#search", name)
            page.press("#search", "Enter")
            assert page.inner_text("#panel-title") == name
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "graphir-view.png"))
        finally:
            browser.close()
    assert not errors, errors
    assert (ARTIFACTS / "graphir-view.png").stat().st_size > 10_000
