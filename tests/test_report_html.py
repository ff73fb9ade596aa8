"""The migration report's HTML in headless Chromium (Debian's `chromium`): no console errors, nothing fetched,
plots drawn, sections there; committed reports under examples/results/ too. Skipped LOUDLY without Chromium."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
from conftest import EXAMPLES, load_example
from migrate_world import PRICES, Migration, SimulatedWeights

COMMITTED = sorted((EXAMPLES / "results").glob("migrate*/report.html"))


checker = load_example("check_html")


@pytest.fixture(scope="module")
def chromium() -> str:
    binary = checker.find_chromium()
    if binary is None:
        message = ("NOT TESTED: the HTML report was not rendered: Chromium is missing; install Debian's package "
                   f"with `{checker.INSTALL}` (.ci/run does)")
        warnings.warn(message, stacklevel=2)
        pytest.skip(message)
    return binary


@pytest.fixture(scope="module")
def report_page(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("html")
    Migration(n_test=16).run(run_dir, prices=PRICES)
    return run_dir / "report.html"


def test_the_report_renders_without_errors_with_its_plots(chromium, report_page):
    check = checker.check_html(report_page, chromium)
    assert check.problems(("scores", "search", "rules"), checker.SECTIONS) == []
    assert set(check.plots) == {"scores", "search", "rules"}
    assert all(plot["marks"] > 20 and plot["width"] > 300 for plot in check.plots.values())
    assert check.details >= 4 and check.title.startswith("Migration: ")


def test_the_lever_report_renders_its_table_and_quality_cost_plot(chromium, tmp_path):
    run_dir = tmp_path / "levers"
    Migration(n_test=16).run(run_dir, prices=PRICES, levers="all", sft_backend=SimulatedWeights())
    page = run_dir / "report.html"
    assert checker.expected_plots(page)[-1] == "levers"
    check = checker.check_html(page, chromium)
    assert check.problems(checker.expected_plots(page), (*checker.SECTIONS, "levers")) == []
    assert check.plots["levers"]["marks"] > 5 and check.plots["levers"]["width"] > 300


def test_the_checker_sees_console_errors_failed_loads_and_missing_plots(chromium, tmp_path):
    page = tmp_path / "broken.html"
    page.write_text('<!DOCTYPE html><html><head><meta charset="utf-8"><title>x</title></head><body>'
                    '<h2 id="verdict">Verdict</h2><figure id="plot-scores"><svg width="10" height="10"></svg></figure>'
                    '<img src="missing.png"><script>console.error("boom"); undefinedFunction();</script>'
                    "</body></html>")
    problems = checker.check_html(page, chromium).problems(("scores", "rules"), ("verdict", "costs"))
    text = "\n".join(problems)
    assert "console: boom" in text and "undefinedFunction" in text and "ERR_FILE_NOT_FOUND" in text
    assert "plot 'scores' is empty" in text and "plot 'rules' is missing" in text
    assert "section 'costs' is missing" in text and "section 'verdict'" not in text


@pytest.mark.parametrize("page", COMMITTED, ids=[p.parent.name for p in COMMITTED])
def test_committed_migration_reports_render(chromium, page):
    check = checker.check_html(page, chromium)
    assert check.problems(("scores",), checker.SECTIONS) == []
