"""`ffx runs` and the trial table: searches and trials read back from a real MLflow store."""
import csv
import html
import re

import pytest
from conftest import run_ffx, write_params

from components.errors import FFXError
from components.reports.runs import Trial, find_search, format_table, search_trials, top_trials, write_trial_table
from components.tracking import setup_mlflow
from components.ui_links import compare_link, experiment_link


def test_ffx_runs_prints_the_search_and_its_trials_best_first(tiny_run):
    result = run_ffx(tiny_run.root, "runs", "--top", "2")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    searches, trials = out.split("\nTop ")
    trials, _ = trials.split("\n\nCompare them in the MLflow UI: ")  # the link: see the next test
    assert tiny_run.search.parent_run_id[:12] in searches and "FINISHED" in searches
    assert f"2 of 3 trials of search {tiny_run.search.parent_run_id}" in trials
    header, _, *rows = trials.splitlines()[1:]
    assert header.split()[:5] == ["rank", "trial_id", "dropout", "extra_units", "units"]
    scores = [float(row.split()[5]) for row in rows]
    assert len(rows) == 2 and scores == sorted(scores, reverse=True)
    assert scores[0] == pytest.approx(tiny_run.search.score, abs=1e-4)


def test_ffx_runs_prints_the_experiment_link_and_a_compare_link_of_the_best_trials(tiny_run):
    out = run_ffx(tiny_run.root, "runs", "--top", "2").stdout
    client, experiment_id = setup_mlflow(tiny_run.config, create=False)
    best = top_trials(search_trials(client, experiment_id, tiny_run.search.parent_run_id), "val_accuracy", 2)
    assert f"experiment 'ffx', {experiment_link(tiny_run.config, experiment_id)}" in out.splitlines()[0]
    assert out.splitlines()[-1] == ("Compare them in the MLflow UI: "
                                    + compare_link(tiny_run.config, experiment_id, [t.run_id for t in best]))


def test_ffx_runs_picks_a_search_by_run_id_prefix_and_names_an_unknown_one(tiny_run):
    chosen = run_ffx(tiny_run.root, "runs", "--search", tiny_run.search.parent_run_id[:8])
    assert chosen.returncode == 0 and "3 of 3 trials" in chosen.stdout
    unknown = run_ffx(tiny_run.root, "runs", "--search", "zzzz")
    assert unknown.returncode == 2
    assert unknown.stderr.strip() == "error: --search zzzz: no search runs match; `ffx runs` lists them"


def test_ffx_runs_without_a_store_says_to_tune_first(tmp_path):
    write_params(tmp_path)
    result = run_ffx(tmp_path, "runs")
    assert result.returncode == 2
    assert "no MLflow store here yet" in result.stderr and "ffx tune" in result.stderr
    assert not (tmp_path / "mlruns").exists()  # reading made nothing


def test_trials_are_read_in_the_order_they_ran_with_the_same_param_names(tiny_run):
    client, experiment_id = setup_mlflow(tiny_run.config, create=False)
    trials = search_trials(client, experiment_id, tiny_run.search.parent_run_id)
    assert [t.trial_id for t in trials] == ["0", "1", "2"]
    assert all(set(t.params) == {"units", "dropout", "extra_units"} for t in trials)
    assert all(t.status == "COMPLETED" and t.score is not None and t.seconds > 0 for t in trials)
    with pytest.raises(FFXError, match="no search runs match"):
        find_search(client, experiment_id, "not-a-run")


def test_trial_table_csv_has_one_row_per_trial_and_the_html_page_one_row_each(tiny_run):
    folder = tiny_run.config.reports.dir / "search"
    rows = list(csv.DictReader((folder / "trials.csv").open()))
    assert [r["trial_id"] for r in rows] == ["0", "1", "2"]
    assert {"units", "dropout", "extra_units", "score", "seconds", "run_id"} <= set(rows[0])
    assert max(float(r["score"]) for r in rows) == pytest.approx(tiny_run.search.score, abs=1e-4)
    page = (folder / "trials.html").read_text()
    assert page.count("<tr") == 1 + len(rows) and all(r["run_id"] in page for r in rows)


def test_trial_table_html_escapes_markup_in_titles_params_and_statuses(tmp_path):
    script = "<script>alert('x')</script>"
    status = 'FAILED "quoted" & <b>bold</b>'
    trials = [Trial("run-1", "0", status, {"units": script, "note": "a & b < c"}, 0.5, 1.0, 0),
              Trial("run-2", "1", "COMPLETED", {"units": "8", "note": "&amp; stays text"}, None, None, 1)]
    write_trial_table(tmp_path / "trials.csv", tmp_path / "trials.html", trials, f"search {script} & co")
    page = (tmp_path / "trials.html").read_text()
    assert "<script" not in page and "<b>" not in page  # no markup from the data reached the page
    heading = "search &lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; co"
    assert f"<title>{heading}</title>" in page and f"<h1>{heading}</h1>" in page
    cells = re.findall(r"<td>(.*?)</td>", page, flags=re.S)
    assert not any(re.search(r"[<>]|&(?!(amp|lt|gt|quot|#x27);)", cell) for cell in cells), cells
    # each cell reads back as the value it shows, in the table's column order
    assert [html.unescape(cell) for cell in cells[:6]] == ["1", "0", status, "a & b < c", script, "0.5000"]
    assert html.unescape(cells[8 + 3]) == "&amp; stays text"  # escaped once, not taken as an entity
    rows = list(csv.DictReader((tmp_path / "trials.csv").open()))  # the CSV keeps the values as they are
    assert rows[0]["units"] == script and rows[0]["status"] == status


def test_terminal_table_pads_columns_to_the_widest_cell():
    table = format_table(["a", "long_header"], [["wide cell", "1"], ["x", "22"]]).splitlines()
    assert table == ["a          long_header", "---------  -----------", "wide cell  1", "x          22"]
