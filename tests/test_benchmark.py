"""The grounded benchmark: tables and figures, resuming after an interruption, COCO datasets, the CLI."""

import json
import math
import threading

import numpy as np
import pytest
from PIL import Image

from lvlm_studio.benchmark.report import dataset_f1, mean_interval, skipped, summarise, write_report
from lvlm_studio.benchmark.runner import RANDOM, RESULTS, BenchmarkSettings, read_results, run_benchmark
from lvlm_studio.cli import main
from lvlm_studio.core.errors import Cancelled, InputError
from lvlm_studio.core.plugin.jobs import run_job
from lvlm_studio.demo.evaluate import HELDOUT_SEED_BASE
from lvlm_studio.demo.scenes import make_scene

QUICK = {"metrics": ["deletion_insertion", "iou", "pointing_game"],
         "metric_params": {"deletion_insertion": {"steps": 4}}}


def settings(n=2, **changes):
    return BenchmarkSettings(**({"methods": ["tam"], "n": n} | QUICK | changes))


def test_mean_interval_and_dataset_f1_by_hand():
    mean, low, high, n = mean_interval([1.0, 2.0, 3.0, None, float("nan")])
    half = 4.302653 * 1.0 / math.sqrt(3)  # t(0.975, 2) x sd / sqrt(n)
    assert (mean, n) == (2.0, 3) and low == pytest.approx(2 - half) and high == pytest.approx(2 + half)
    single = mean_interval([0.5])
    assert single[0] == 0.5 and math.isnan(single[1]) and single[3] == 1  # no interval from one value
    assert mean_interval([])[3] == 0
    point, low, high, n = dataset_f1([0.2, 0.4, None], [1.0, 0.8, 0.9])
    assert n == 2 and point == pytest.approx(2 * 0.3 * 0.9 / 1.2)  # harmonic mean of the means
    assert low <= point <= high


def test_summary_from_records():
    records = [{"sample": str(i), "methods": {"m": {"values": {"x.a": float(i), "iou.obj_iou": 0.5,
                                                               "iou.func_iou": 1.0, "iou.f1_iou": 0.7},
                                                    "errors": {"y": "no masks"} if i == 0 else {}}}}
               for i in range(4)]
    summary = summarise(records)
    assert skipped(records) == [("m", "y", 1, "no masks")]
    assert summary["m"]["x.a"][0] == 1.5 and summary["m"]["x.a"][3] == 4
    assert summary["m"]["iou.f1_iou (dataset)"][0] == pytest.approx(2 / 3)
    assert "iou.f1_iou" not in summary["m"]  # the protocol's F1 is of dataset means, not a mean of F1s


@pytest.fixture(scope="module")
def finished(demo_model, lvlm_registry, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    records = run_job(run_benchmark(demo_model, settings(), out, lvlm_registry))
    return out, records


def test_a_run_writes_results_tables_and_figures(finished):
    out, records = finished
    assert [r["sample"] for r in records] == [f"scene-{HELDOUT_SEED_BASE}", f"scene-{HELDOUT_SEED_BASE + 1}"]
    for record in records:
        assert set(record["methods"]) == {"tam", RANDOM}
        values = record["methods"]["tam"]["values"]
        assert {"deletion_insertion.deletion_auc", "deletion_insertion.insertion_auc", "iou.obj_iou",
                "pointing_game.pointing"} <= set(values)
        x, y = record["methods"]["tam"]["curves"]["deletion_insertion.deletion"]
        assert len(x) == len(y) == 5
    text = write_report(out, records, "title")
    assert "| tam |" in text and f"| {RANDOM} |" in text and "deletion_auc" in text
    for name in ("summary.md", "summary.csv", "curves.png", "examples.png", "tables/tam.csv", "tables/tam.md",
                 "tables/uniform_random.csv", "run.json"):
        assert (out / name).exists(), name
    assert Image.open(out / "curves.png").size[0] > 500
    header = (out / "tables/tam.csv").read_text().splitlines()[0]
    assert header == "metric,mean,ci95_low,ci95_high,samples"
    run = json.loads((out / "run.json").read_text())
    assert run["settings"]["methods"] == ["tam"] and run["samples_done"] == 2
    assert {"torch", "transformers", "lvlm-studio"} <= set(run["versions"]) and run["model"]["source"]
    assert run["providers"]["methods"]["tam"]["plugin"] == "lvlm_explainers"
    assert {p["distribution"] for p in run["providers"]["metrics"].values()} == {"lvlm-studio"}


def test_interrupted_run_resumes_where_it_stopped(demo_model, lvlm_registry, tmp_path, finished):
    cancel = threading.Event()

    def stop_after_first_sample(progress):
        if (tmp_path / RESULTS).exists():
            cancel.set()

    with pytest.raises(Cancelled):
        run_job(run_benchmark(demo_model, settings(), tmp_path, lvlm_registry), stop_after_first_sample, cancel)
    first = (tmp_path / RESULTS).read_text()
    assert len(first.splitlines()) == 1
    # a line cut short by a crash is dropped, and appending continues on a clean line
    with (tmp_path / RESULTS).open("a") as handle:
        handle.write('{"sample": "scene-')
    answered = []
    records = run_job(run_benchmark(demo_model, settings(), tmp_path, lvlm_registry),
                      lambda p: answered.append(p.done) if p.message == "answering" else None)
    assert answered == [1]  # only the second sample was run
    assert (tmp_path / RESULTS).read_text().startswith(first)
    assert [r["sample"] for r in read_results(tmp_path)] == [r["sample"] for r in records]
    # the resumed run's numbers are the uninterrupted run's
    _, reference = finished
    for a, b in zip(records, reference):
        assert a["methods"]["tam"]["values"] == pytest.approx(b["methods"]["tam"]["values"], nan_ok=True)
        assert a["methods"][RANDOM]["values"] == pytest.approx(b["methods"][RANDOM]["values"], nan_ok=True)
    # the same folder with other settings is refused; a larger n extends the run
    with pytest.raises(InputError, match="other settings"):
        run_job(run_benchmark(demo_model, settings(methods=["raw_attention"]), tmp_path, lvlm_registry))


def coco_dataset(folder, n=2):
    """Demo scenes saved as PNGs with a COCO file of their objects (RLE masks, category = shape)."""
    from pycocotools import mask as coco_mask

    images, annotations = [], []
    shapes = ["circle", "square", "triangle"]
    for i in range(n):
        scene = make_scene(HELDOUT_SEED_BASE + i)
        scene.image.save(folder / f"img{i}.png")
        images.append({"id": i + 1, "file_name": f"img{i}.png", "width": 96, "height": 96})
        for obj in scene.objects:
            rle = coco_mask.encode(np.asfortranarray(obj.mask.astype(np.uint8)))
            rle["counts"] = rle["counts"].decode()
            annotations.append({"id": len(annotations) + 1, "image_id": i + 1, "iscrowd": 0, "segmentation": rle,
                                "category_id": shapes.index(obj.shape) + 1, "area": float(obj.mask.sum()),
                                "bbox": [0, 0, 96, 96]})
    path = folder / "annotations.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations,
                                "categories": [{"id": k + 1, "name": s} for k, s in enumerate(shapes)]}))
    return path


def test_coco_dataset(demo_model, lvlm_registry, tmp_path):
    annotations = coco_dataset(tmp_path)
    chosen = settings(images=str(tmp_path), coco=str(annotations), prompt="describe the image.",
                      metrics=["iou", "pointing_game"])
    records = run_job(run_benchmark(demo_model, chosen, tmp_path / "out", lvlm_registry))
    assert [r["sample"] for r in records] == ["img0.png", "img1.png"]
    pointing = [r["methods"]["tam"]["values"].get("pointing_game.pointing") for r in records]
    assert all(p is not None and 0 <= p <= 1 for p in pointing)  # shape words found their COCO masks
    with pytest.raises(InputError, match="none of the"):
        run_job(run_benchmark(demo_model, settings(images=str(tmp_path / "out"), coco=str(annotations)),
                              tmp_path / "out2", lvlm_registry))


def test_cli(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["benchmark", "--methods", "tam", "--n", "1", "--metrics", "iou,pointing_game", "--device", "cpu",
                 "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "| tam |" in printed and "obj_iou" in printed
    assert (out / "summary.md").read_text() == printed
    assert main(["benchmark", "--methods", "nonexistent", "--out", str(tmp_path / "x")]) == 2
    assert main(["benchmark", "--images", str(tmp_path), "--out", str(tmp_path / "y")]) == 2
    assert main(["benchmark", "--methods", "tam", "--metric-param", "steps=3", "--out", str(tmp_path / "z")]) == 2


def test_ctrl_c_leaves_a_resumable_run(tmp_path):
    """A real Ctrl-C (SIGINT) on the command: exit 130, the finished samples kept, and the same command
    finishes the run."""
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "run"
    # deletion/insertion takes a few seconds a sample: time enough to interrupt between samples
    command = ["benchmark", "--methods", "tam", "--n", "3", "--metrics", "deletion_insertion", "--device", "cpu",
               "--out", str(out)]
    process = subprocess.Popen([sys.executable, "-m", "lvlm_studio", *command], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (out / RESULTS).exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert "Run the same command again to resume" in stderr
    kept = len(read_results(out))
    assert 1 <= kept < 3
    assert main(command) == 0
    assert len(read_results(out)) == 3



def test_ray_without_ray_installed_says_how_to_install_it(tmp_path, capsys, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    code = main(["benchmark", "--methods", "tam", "--n", "1", "--ray", "--out", str(tmp_path / "run")])
    assert code == 2
    assert "pip install 'lvlm-studio[ray]'" in capsys.readouterr().err
