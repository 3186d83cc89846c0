"""Which way a metric's values are better, as the metric declares it: the benchmark's tables, curves
and run record, sessions and their report; and agreement, which is only reported between two methods."""

import json

import numpy as np
import pytest

from lvlm_studio.benchmark.report import best_methods, directions_of, summarise, write_report, write_tables
from lvlm_studio.benchmark.runner import RANDOM, BenchmarkSettings, metric_directions, run_benchmark
from lvlm_studio.core.errors import InputError
from lvlm_studio.core.io.files import write_record
from lvlm_studio.core.plugin.contracts import Metric, MetricResult
from lvlm_studio.core.plugin.jobs import run_job


class Declared(Metric):
    id = "declared"
    directions = {"error": "lower", "score": "higher", "odd": "sideways"}


class Undeclared(Metric):  # written before metrics declared directions
    id = "undeclared"


def test_a_metric_declares_directions_and_the_default_is_none():
    assert Declared().direction("error") == "lower" and Declared().direction("score") == "higher"
    assert Declared().direction("odd") is None and Declared().direction("missing") is None
    assert Undeclared().direction("anything") is None
    assert metric_directions({"declared": Declared(), "undeclared": Undeclared()}) == {
        "declared.error": "lower", "declared.score": "higher"}


def test_first_party_metrics_declare_their_directions(lvlm_registry):
    found = metric_directions(lvlm_registry.metrics())
    assert found["deletion_insertion.deletion_auc"] == "lower"
    assert found["deletion_insertion.insertion_auc"] == "higher"
    assert found["iou.obj_iou"] == found["pointing_game.pointing"] == "higher"
    assert found["model_randomisation.rho_all"] == found["input_independence.rho_input"] == "lower"
    assert not any(name.startswith("agreement.") for name in found)  # alike is not better


def records_of(values: dict[str, dict[str, float]], n: int = 3) -> list[dict]:
    return [{"sample": str(i), "index": i, "methods": {m: {"values": dict(v)} for m, v in values.items()}}
            for i in range(n)]


def test_the_tables_take_arrows_and_the_best_from_the_declared_directions(tmp_path):
    records = records_of({"a": {"declared.error": 0.2, "declared.score": 0.3, "undeclared.x": 5.0},
                          "b": {"declared.error": 0.4, "declared.score": 0.9, "undeclared.x": 1.0}})
    directions = {"declared.error": "lower", "declared.score": "higher"}
    text = write_tables(tmp_path, records, "t", directions)
    header = text.splitlines()[2]
    assert "error (\u2193 lower better)" in header and "score (\u2191 higher better)" in header
    assert "| x |" in header or header.rstrip().endswith("| x |")  # no direction: no arrow
    rows = {line.split("|")[1].strip(): line for line in text.splitlines() if line.startswith("| a ") or
            line.startswith("| b ")}
    assert "**0.200 " in rows["a"] and "**0.900 " in rows["b"]  # lower error wins, higher score wins
    assert "**" not in rows["a"].split("|")[4] and "**" not in rows["b"].split("|")[4]  # x is not ranked
    table = (tmp_path / "tables" / "a.md").read_text()
    assert "| declared.error | \u2193 lower |" in table and "| undeclared.x |  |" in table
    flipped = write_tables(tmp_path, records, "t", {"declared.error": "higher"})
    assert "**0.400 " in flipped  # the declaration, not a table in the report, decides
    assert best_methods(summarise(records[:1]), "declared.error", {}) == set()


def test_the_report_reads_the_directions_the_run_recorded(tmp_path):
    write_record(tmp_path, {"directions": {"declared.error": "lower", "bad": "up"}})
    assert directions_of(tmp_path) == {"declared.error": "lower"}
    records = records_of({"a": {"declared.error": 0.2}, "b": {"declared.error": 0.1}})
    assert "error (\u2193 lower better)" in write_report(tmp_path, records)
    assert directions_of(tmp_path / "nothing") == {}


def test_a_single_method_benchmark_reports_no_agreement_with_itself(demo_model, lvlm_registry, tmp_path):
    settings = BenchmarkSettings(methods=["raw_attention"], n=1, metrics=["agreement", "pointing_game"],
                                 examples=0)
    records = run_job(run_benchmark(demo_model, settings, tmp_path, lvlm_registry))
    own = records[0]["methods"]["raw_attention"]
    assert not any(name.startswith("agreement.") for name in own["values"])
    assert "agreement needs two methods" in own["errors"]["agreement"]
    assert "agreement.rank_correlation" in records[0]["methods"][RANDOM]["values"]  # two different methods
    run = json.loads((tmp_path / "run.json").read_text())
    assert run["directions"] == {"pointing_game.pointing": "higher"}
    text = write_report(tmp_path, records)
    row = next(line for line in text.splitlines() if line.startswith("| raw_attention |"))
    assert "1.000" not in row
    assert "raw_attention: agreement did not apply on 1 samples (agreement needs two methods" in text


def test_sessions_keep_the_directions_and_the_report_shows_them(tmp_path, demo_trace):
    from lvlm_studio.core.formats.report import write_report as write_pdf
    from lvlm_studio.core.formats.session import MetricRecord, Session, load_session, save_session
    from lvlm_studio.core.plugin.explanation import Explanation

    maps = {0: [np.ones(r.grid) for r in demo_trace.regions]}
    result = MetricResult({"error": 0.1, "other": 2.0})
    session = Session(prompt="p", trace=demo_trace, image=demo_trace.image,
                      explanations={"m": Explanation("m", maps)},
                      metrics=[MetricRecord("m", 0, "declared", result, {"error": "lower"})])
    again = load_session(save_session(session, tmp_path / "s.lvlm"))
    assert again.metrics[0].directions == {"error": "lower"}
    assert write_pdf(again, tmp_path / "r.pdf").stat().st_size > 0


def _set_in_manifest(path, change) -> None:
    import zipfile

    with zipfile.ZipFile(path) as archive:
        parts = {name: archive.read(name) for name in archive.namelist()}
    manifest = json.loads(parts["session.json"])
    change(manifest)
    parts["session.json"] = json.dumps(manifest).encode()
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in parts.items():
            archive.writestr(name, data)


@pytest.mark.parametrize(("where", "bad"), [("directions", {"error": 3}), ("directions", ["lower"]),
                                           ("params", ["tam"]), ("params", {"tam": "scale=joint"})])
def test_a_session_with_bad_directions_or_params_is_refused(tmp_path, demo_trace, where, bad):
    from lvlm_studio.core.formats.session import MetricRecord, Session, load_session, save_session

    session = Session(prompt="p", trace=demo_trace, image=demo_trace.image,
                      metrics=[MetricRecord("m", 0, "declared", MetricResult({"error": 0.1}))])
    path = save_session(session, tmp_path / "s.lvlm")
    if where == "directions":
        _set_in_manifest(path, lambda manifest: manifest["metrics"][0].update(directions=bad))
    else:
        _set_in_manifest(path, lambda manifest: manifest["view"].update(params=bad))
    with pytest.raises(InputError, match=where):
        load_session(path)


# -- a method's parameters in the benchmark -------------------------------------------------------
def test_the_benchmark_runs_methods_with_their_parameters_and_records_them(demo_model, lvlm_registry, tmp_path):
    settings = BenchmarkSettings(methods=["raw_attention"], n=1, metrics=["pointing_game"], examples=0,
                                 method_params={"raw_attention": {"reduce": "max", "layers": "0"}})
    records = run_job(run_benchmark(demo_model, settings, tmp_path, lvlm_registry))
    assert "pointing_game.pointing" in records[0]["methods"]["raw_attention"]["values"]
    run = json.loads((tmp_path / "run.json").read_text())
    assert run["methods"]["raw_attention"]["params"]["reduce"] == "max"
    assert run["methods"]["raw_attention"]["params"]["layers"] == [0]
    assert run["settings"]["method_params"] == {"raw_attention": {"reduce": "max", "layers": "0"}}
    assert "method_params" not in BenchmarkSettings(methods=["tam"]).key()  # older runs still resume
    wrong = BenchmarkSettings(methods=["raw_attention"], n=1, method_params={"tam": {"scale": "joint"}})
    with pytest.raises(InputError, match="does not explain with"):
        run_job(run_benchmark(demo_model, wrong, tmp_path / "w", lvlm_registry))


def test_the_benchmark_command_checks_method_parameters_before_loading(tmp_path, capsys):
    from lvlm_studio.cli import main

    assert main(["benchmark", "--methods", "raw_attention", "--param", "tam.scale=joint",
                 "--out", str(tmp_path / "a")]) == 2
    assert "does not name a method of this run" in capsys.readouterr().err
    assert main(["benchmark", "--methods", "raw_attention", "--param", "raw_attention.reduce=median",
                 "--out", str(tmp_path / "b")]) == 2
    assert "Choose one of: mean, max" in capsys.readouterr().err
