"""The benchmark and the studies on a Ray cluster (``--ray``): records identical to a single-process
run, resumable.

A local Ray with 2 CPU workers is started by the test itself; skipped where Ray is not installed
(``pip install 'lvlm-studio[ray]'``).
"""

import json

import pytest
from model_helpers import one_torch_thread

from lvlm_studio.benchmark.runner import RESULTS, BenchmarkSettings, read_results, run_benchmark
from lvlm_studio.cli import main
from lvlm_studio.core.errors import LVLMError
from lvlm_studio.core.models.loading import LoadOptions
from lvlm_studio.core.plugin.jobs import run_job

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'lvlm-studio[ray]')")

from lvlm_studio.core.models.replicas import ReplicaPool  # noqa: E402

SETTINGS = dict(methods=["tam"], n=3, metrics=["iou", "pointing_game", "deletion_insertion"],
                metric_params={"deletion_insertion": {"steps": 3}}, examples=1, max_new_tokens=12)
#: Fields that say how long something took: the only ones that differ between runs.
TIMING = ("seconds",)


def without_timing(record):
    """A record less its timing fields (the sample's and each method's ``seconds``)."""
    record = {k: v for k, v in record.items() if k not in TIMING}
    if "methods" in record:  # a benchmark record (a study's has rows)
        record["methods"] = {m: {k: v for k, v in r.items() if k not in TIMING} for m, r in record["methods"].items()}
    return record


@pytest.fixture(scope="module")
def one_thread():
    """This process computes with one thread, as each CPU replica does (Ray gives it OMP_NUM_THREADS=1):
    float32 sums taken in another order (other thread counts) differ in their last digits."""
    with one_torch_thread():
        yield


@pytest.fixture(scope="module")
def local_ray(one_thread):
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


def test_a_model_folder_missing_on_the_replicas_is_one_error(local_ray, tmp_path):
    """Runs before the module's pool holds both CPUs: a replica that cannot load says why, as itself."""
    with ReplicaPool(str(tmp_path / "nowhere"), LoadOptions(device="cpu"), replicas=1) as replicas:
        with pytest.raises(LVLMError, match="nowhere"):
            replicas.describe()
    with pytest.raises(LVLMError, match="3 replicas do not fit: the Ray cluster has 2 CPU slots"):
        ReplicaPool(None, LoadOptions(device="cpu"), replicas=3)  # they would wait for ever


def test_cli_with_ray(local_ray, tmp_path, capsys):
    """``--ray`` joins the Ray this process started (it is left running); the command's report is the usual one."""
    out = tmp_path / "run"
    command = ["benchmark", "--methods", "tam", "--n", "2", "--metrics", "iou,pointing_game", "--device", "cpu",
               "--out", str(out), "--ray"]
    assert main([*command, "--ray-replicas", "1"]) == 0
    assert "| tam |" in capsys.readouterr().out and ray.is_initialized()
    assert [r["index"] for r in sorted(read_results(out), key=lambda r: r["index"])] == [0, 1]
    assert main(["benchmark", "--methods", "tam", "--ray-replicas", "0", "--out", str(tmp_path / "x")]) == 2


def test_a_study_on_ray_gives_the_single_process_records(local_ray, tmp_path, capsys):
    from lvlm_studio.studies.runner import read_records

    command = ["study", "modality_influence", "--n", "2", "--device", "cpu", "--param", "max_new_tokens=6"]
    assert main([*command, "--out", str(tmp_path / "alone")]) == 0
    assert main([*command, "--out", str(tmp_path / "ray"), "--ray", "--ray-replicas", "2"]) == 0
    alone, spread = (sorted(read_records(tmp_path / run), key=lambda r: r["index"]) for run in ("alone", "ray"))
    assert [r["index"] for r in spread] == [0, 1] and all(r["rows"] and not r.get("error") for r in spread)
    assert [without_timing(r) for r in spread] == [without_timing(r) for r in alone]
    models = [json.loads((tmp_path / run / "run.json").read_text())["models"] for run in ("alone", "ray")]
    assert models[0]["demo-model"]["source"] == models[1]["demo-model"]["source"]


@pytest.fixture(scope="module")
def pool(local_ray):
    with ReplicaPool(None, LoadOptions(device="cpu")) as replicas:
        yield replicas


@pytest.fixture(scope="module")
def alone(one_thread, demo_model, lvlm_registry, tmp_path_factory):
    """The single-process run's folder and records."""
    out = tmp_path_factory.mktemp("alone")
    return out, run_job(run_benchmark(demo_model, BenchmarkSettings(**SETTINGS), out, lvlm_registry))


def test_records_on_ray_are_those_of_one_process(demo_model, lvlm_registry, pool, alone, tmp_path):
    settings = BenchmarkSettings(**SETTINGS)
    assert len(pool) == 2 and pool.slot == "CPU"  # one replica per CPU slot
    alone_out, alone = alone
    spread = run_job(run_benchmark(None, settings, tmp_path / "ray", lvlm_registry, replicas=pool))
    assert [without_timing(r) for r in spread] == [without_timing(r) for r in alone]
    on_disk = sorted(read_results(tmp_path / "ray"), key=lambda r: r["index"])
    assert [without_timing(r) for r in on_disk] == [without_timing(r) for r in alone]
    for name in ("0000_tam.png", "0000_tam.json", "0000_image.png", "0000_uniform_random.png"):
        drawn = [(folder / "examples" / name).read_bytes() for folder in (tmp_path / "ray", alone_out)]
        assert drawn[0] == drawn[1], name
    assert not (tmp_path / "ray" / "examples" / "0001_tam.png").exists()
    run = json.loads((tmp_path / "ray" / "run.json").read_text())
    assert run["samples_done"] == 3 and run["model"]["source"] == demo_model.describe()["source"]


def test_an_interrupted_ray_run_resumes(lvlm_registry, pool, alone, tmp_path):
    settings = BenchmarkSettings(**SETTINGS)

    def stop_after_first_sample(progress):
        if (tmp_path / RESULTS).exists() and (tmp_path / RESULTS).read_text():
            raise KeyboardInterrupt  # Ctrl-C on the driver while replicas work

    with pytest.raises(KeyboardInterrupt):
        run_job(run_benchmark(None, settings, tmp_path, lvlm_registry, replicas=pool), stop_after_first_sample)
    kept = read_results(tmp_path)
    assert 1 <= len(kept) < 3
    with (tmp_path / RESULTS).open("a") as handle:  # a line cut short by a crash is dropped
        handle.write('{"sample": "scene-')
    records = run_job(run_benchmark(None, settings, tmp_path, lvlm_registry, replicas=pool))
    assert [r["index"] for r in records] == [0, 1, 2]
    lines = (tmp_path / RESULTS).read_text().splitlines()
    assert len(lines) == 3 and sorted(json.loads(line)["index"] for line in lines) == [0, 1, 2]
    assert [without_timing(r) for r in records] == [without_timing(r) for r in alone[1]]
