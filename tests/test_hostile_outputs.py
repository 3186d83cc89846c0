"""Hostile cases for everything that writes: --out/--overwrite, file-system faults, benchmark resume.

Faults are injected (root ignores permissions, and a full or read-only disk cannot be had on every
machine): the library call that writes a file fails part-way with the OSError a real disk gives.
"""

from __future__ import annotations

import errno
import json
import os
import stat
from pathlib import Path

import pytest
from hostile_helpers import SAMPLE, assert_refused, assert_untouched, run_cli, snapshot

EXPLAIN = ("explain", "--method", "raw_attention", "--image", SAMPLE, "--prompt", "describe the image.",
           "--device", "cpu", "--tokens", "0")
BENCHMARK = ("benchmark", "--methods", "raw_attention", "--metrics", "pointing_game", "--device", "cpu")
FAULTS = [(errno.ENOSPC, "no space"), (errno.EROFS, "read-only"), (errno.EACCES, "permission denied")]


def _fault(code: int) -> OSError:
    return OSError(code, os.strerror(code))


def _leftovers(folder: Path) -> list[str]:
    """Temporary files or folders a failed write left behind (ours are hidden siblings)."""
    return sorted(p.name for p in folder.rglob(".*"))


def _partial_then(code: int, safetensors: bool = False):
    """A stand-in for a library writer: it writes a few bytes to the target, then the disk fails
    (safetensors reports that as a SafetensorError with the OS error's number in its text)."""
    def write(*args, **kwargs):
        target = next(a for a in (*args, *kwargs.values()) if isinstance(a, (str, Path)))
        Path(target).write_bytes(b"partial")
        if safetensors:
            from safetensors import SafetensorError

            raise SafetensorError(f"Error while serializing: I/O error: {os.strerror(code)} (os error {code})")
        raise _fault(code)
    return write


# -- --out and --overwrite -------------------------------------------------------------------------
@pytest.mark.hostile("outputs")
def test_overwrite_leaves_a_folder_of_the_users_alone(capsys, tmp_path):
    folder = tmp_path / "thesis"
    folder.mkdir()
    (folder / "thesis.txt").write_text("three years of work")
    before = snapshot(folder)
    outcome = run_cli(capsys, *EXPLAIN, "--out", folder, "--overwrite")
    assert_refused(outcome, 2, "not written by LVLM Studio", "new folder")
    assert_untouched(folder, before)


@pytest.mark.hostile("outputs")
@pytest.mark.parametrize("where", [".", "..", "home", "/"])
def test_overwrite_refuses_the_working_folder_its_parents_home_and_root(capsys, tmp_path, monkeypatch, where):
    home = tmp_path / "home"
    work = home / "project"
    work.mkdir(parents=True)
    (work / "notes.txt").write_text("mine")
    (home / "letter.txt").write_text("mine too")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(work)
    before = snapshot(tmp_path)
    out = {"home": str(home), "/": "/"}.get(where, where)
    outcome = run_cli(capsys, *EXPLAIN, "--out", out, "--overwrite")
    assert_refused(outcome, 2, "will not write")
    assert_untouched(tmp_path, before)


@pytest.mark.hostile("outputs")
def test_overwrite_replaces_our_own_output(capsys, tmp_path):
    out = tmp_path / "run"
    assert run_cli(capsys, *EXPLAIN, "--out", out).code == 0
    (out / "stale.png").write_bytes(b"from the first run")
    assert_refused(run_cli(capsys, *EXPLAIN, "--out", out), 2, "--overwrite")
    outcome = run_cli(capsys, *EXPLAIN, "--out", out, "--overwrite")
    assert outcome.code == 0, outcome.err
    assert not (out / "stale.png").exists() and (out / "run.json").exists()
    assert _leftovers(tmp_path) == []


@pytest.mark.hostile("outputs")
@pytest.mark.parametrize("fault", [_fault(errno.ENOSPC), KeyboardInterrupt()], ids=["disk-full", "ctrl-c"])
def test_a_failed_overwrite_leaves_the_previous_output(capsys, tmp_path, monkeypatch, fault):
    from lvlm_studio.core.tracing.trace import Trace

    out = tmp_path / "run"
    assert run_cli(capsys, *EXPLAIN, "--out", out).code == 0
    before = snapshot(out)

    def fail(self, path):
        Path(path).write_bytes(b"partial")
        raise fault

    monkeypatch.setattr(Trace, "save", fail)
    outcome = run_cli(capsys, *EXPLAIN, "--out", out, "--overwrite")
    if isinstance(fault, KeyboardInterrupt):
        assert outcome.code == 130
    else:
        assert_refused(outcome, 2, str(out), "no space")
    assert_untouched(out, before)
    assert _leftovers(tmp_path) == []


@pytest.mark.hostile("outputs")
@pytest.mark.parametrize("command", ["explain", "benchmark", "sae inspect"])
def test_out_naming_a_file_is_refused_before_loading(capsys, tmp_path, monkeypatch, command):
    import lvlm_studio.cli.common as common

    monkeypatch.setattr(common, "load", _no_model_load)
    target = tmp_path / "results"
    target.write_text("a file of the user's")
    argv = {"explain": EXPLAIN, "benchmark": BENCHMARK,
            "sae inspect": ("sae", "inspect", "--image", SAMPLE, "--device", "cpu")}[command]
    assert_refused(run_cli(capsys, *argv, "--out", target), 2, "is a file")
    assert target.read_text() == "a file of the user's"


def _no_model_load(args):
    raise AssertionError("the model was loaded before the output location was checked")


@pytest.mark.hostile("outputs")
@pytest.mark.parametrize("command", ["explain", "benchmark", "sae train", "sae eval", "sae inspect", "report",
                                     "ask --save-trace"])
def test_an_unwritable_location_is_refused_before_the_model_loads(capsys, tmp_path, monkeypatch, command):
    import tempfile

    import lvlm_studio.cli.common as common

    def refuse(*args, **kwargs):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))

    monkeypatch.setattr(common, "load", _no_model_load)
    monkeypatch.setattr(tempfile, "TemporaryFile", refuse)
    target = tmp_path / "locked" / "out"
    argv = {"explain": (*EXPLAIN, "--out", target), "benchmark": (*BENCHMARK, "--out", target),
            "sae train": ("sae", "train", "--hook", "blocks.1.hook_resid_post", "--out", target),
            "sae eval": ("sae", "eval", "--out", target),
            "sae inspect": ("sae", "inspect", "--image", SAMPLE, "--out", target),
            "report": ("report", tmp_path / "missing.lvlm", "--out", target),
            "ask --save-trace": ("ask", "--image", SAMPLE, "--prompt", "hi", "--save-trace", target)}[command]
    assert_refused(run_cli(capsys, *argv), 2, "permission denied", str(target))


@pytest.mark.hostile("outputs")
@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_output_folders_follow_the_umask(capsys, tmp_path, umask):
    previous = os.umask(umask)
    try:
        outcome = run_cli(capsys, *EXPLAIN, "--out", tmp_path / "run")
    finally:
        os.umask(previous)
    assert outcome.code == 0, outcome.err
    assert stat.S_IMODE((tmp_path / "run").stat().st_mode) == 0o777 & ~umask
    assert stat.S_IMODE((tmp_path / "run" / "run.json").stat().st_mode) == 0o666 & ~umask


# -- file-system faults, writer by writer --------------------------------------------------------
@pytest.fixture(scope="module")
def saved_session(tmp_path_factory):
    from lvlm_studio.core.formats.session import Session, save_session
    from lvlm_studio.core.models.loading import load_model
    from lvlm_studio.core.tracing.trace import generate_trace

    trace = generate_trace(load_model(None), str(SAMPLE), "describe the image.", max_new_tokens=4)
    session = Session(prompt=trace.prompt, image=trace.image, image_name="shapes.png", trace=trace)
    return session, save_session(session, tmp_path_factory.mktemp("sessions") / "s.lvlm")


@pytest.mark.hostile("filesystem")
@pytest.mark.parametrize("code,words", FAULTS)
def test_the_pdf_report_survives_a_failing_disk(capsys, tmp_path, monkeypatch, saved_session, code, words):
    from matplotlib.backends.backend_pdf import PdfPages

    _, session_file = saved_session
    report = tmp_path / "report.pdf"
    assert run_cli(capsys, "report", session_file, "--out", report).code == 0
    before = snapshot(tmp_path)
    real = PdfPages.savefig

    def fail_after_a_page(self, *args, **kwargs):
        real(self, *args, **kwargs)
        raise _fault(code)

    monkeypatch.setattr(PdfPages, "savefig", fail_after_a_page)
    assert_refused(run_cli(capsys, "report", session_file, "--out", report), 2, words, str(report))
    assert_untouched(tmp_path, before)
    assert _leftovers(tmp_path) == []


@pytest.mark.hostile("filesystem")
@pytest.mark.parametrize("code,words", FAULTS)
def test_a_saved_trace_survives_a_failing_disk(tmp_path, monkeypatch, saved_session, code, words):
    import safetensors.numpy

    from lvlm_studio.core.errors import InputError

    session, _ = saved_session
    path = session.trace.save(tmp_path / "t.safetensors")
    before = snapshot(tmp_path)
    monkeypatch.setattr(safetensors.numpy, "save_file", _partial_then(code, safetensors=True))
    with pytest.raises(InputError, match=words) as refused:
        session.trace.save(path)
    assert str(path) in str(refused.value)
    assert_untouched(tmp_path, before)
    assert _leftovers(tmp_path) == []


@pytest.mark.hostile("filesystem")
@pytest.mark.parametrize("code,words", FAULTS)
def test_a_saved_session_survives_a_failing_disk(tmp_path, monkeypatch, saved_session, code, words):
    import zipfile

    from lvlm_studio.core.errors import InputError
    from lvlm_studio.core.formats.session import save_session

    session, _ = saved_session
    path = save_session(session, tmp_path / "analysis.lvlm")
    before = snapshot(tmp_path)
    real = zipfile.ZipFile.writestr

    def fail_on_the_manifest(self, name, *args, **kwargs):
        if str(getattr(name, "filename", name)) == "session.json":
            raise _fault(code)
        return real(self, name, *args, **kwargs)

    monkeypatch.setattr(zipfile.ZipFile, "writestr", fail_on_the_manifest)
    with pytest.raises(InputError, match=words) as refused:
        save_session(session, path)
    assert str(path) in str(refused.value)
    assert_untouched(tmp_path, before)
    assert _leftovers(tmp_path) == []


@pytest.mark.hostile("sae")
@pytest.mark.parametrize("code,words", FAULTS)
def test_a_saved_sae_survives_a_failing_disk(tmp_path, monkeypatch, code, words):
    import safetensors.torch

    from lvlm_studio.core.errors import InputError
    from lvlm_studio.sae.coders import CoderConfig, build_coder
    from lvlm_studio.sae.formats import save_saelens

    coder = build_coder(CoderConfig(d_in=8, d_sae=16, hook_name="blocks.1.hook_resid_post"))
    folder = save_saelens(coder, tmp_path / "sae")
    before = snapshot(tmp_path)
    monkeypatch.setattr(safetensors.torch, "save_file", _partial_then(code, safetensors=True))
    with pytest.raises(InputError, match=words):
        save_saelens(coder, folder)
    assert_untouched(tmp_path, before)
    assert _leftovers(tmp_path) == []


@pytest.mark.hostile("benchmark")
@pytest.mark.parametrize("code,words", FAULTS)
def test_benchmark_tables_on_a_failing_disk_keep_the_results(capsys, tmp_path, monkeypatch, code, words):
    from matplotlib.figure import Figure

    out = tmp_path / "bench"
    monkeypatch.setattr(Figure, "savefig", _partial_then(code))
    assert_refused(run_cli(capsys, *BENCHMARK, "--n", "1", "--out", out), 2, words, str(out))
    assert len((out / "results.jsonl").read_text().splitlines()) == 1  # the finished sample is kept
    assert not (out / "examples.png").exists() and not (out / "curves.png").exists()
    assert _leftovers(tmp_path) == []


# -- benchmark resume ---------------------------------------------------------------------------------
@pytest.mark.hostile("benchmark")
def test_resume_skips_a_damaged_line_and_keeps_the_samples_after_it(capsys, caplog, tmp_path):
    out = tmp_path / "bench"
    assert run_cli(capsys, *BENCHMARK, "--n", "3", "--out", out).code == 0
    lines = (out / "results.jsonl").read_text().splitlines()
    damaged = [lines[0], '{"sample": "scene-garbled', lines[2]]
    (out / "results.jsonl").write_text("\n".join(damaged) + "\n")
    outcome = run_cli(capsys, *BENCHMARK, "--n", "3", "--out", out)
    assert outcome.code == 0, outcome.err
    assert "1 damaged line skipped" in caplog.text  # the CLI prints warnings on stderr
    from lvlm_studio.benchmark.runner import read_results

    kept = read_results(out)
    assert sorted(r["sample"] for r in kept) == sorted(json.loads(line)["sample"] for line in lines)
    assert [json.loads(line) for line in damaged[::2]] == [r for r in kept if r["sample"] != kept[-1]["sample"]]


@pytest.mark.hostile("benchmark")
def test_a_rerun_removes_the_reports_of_the_earlier_run(capsys, tmp_path, monkeypatch):
    import lvlm_studio.benchmark.runner as benchmark

    out = tmp_path / "bench"
    assert run_cli(capsys, *BENCHMARK, "--n", "1", "--out", out).code == 0
    assert (out / "summary.md").exists() and (out / "tables").is_dir()

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(benchmark, "append_line", interrupt)
    assert run_cli(capsys, *BENCHMARK, "--n", "2", "--out", out).code == 130
    for stale in ("summary.md", "summary.csv", "tables", "curves.png", "examples.png"):
        assert not (out / stale).exists(), stale
    assert "finished" not in json.loads((out / "run.json").read_text())


@pytest.mark.hostile("benchmark")
@pytest.mark.parametrize("content", ['{"settings": ', "", "\x00\x01garbage"], ids=["cut", "empty", "binary"])
def test_a_damaged_benchmark_run_json_is_one_line(capsys, tmp_path, monkeypatch, content):
    import lvlm_studio.cli.common as common

    monkeypatch.setattr(common, "load", _no_model_load)
    out = tmp_path / "bench"
    out.mkdir()
    (out / "run.json").write_text(content)
    (out / "results.jsonl").write_text("")
    before = snapshot(out)
    assert_refused(run_cli(capsys, *BENCHMARK, "--out", out), 2, "run.json", "damaged")
    assert_untouched(out, before)


@pytest.mark.hostile("benchmark")
def test_a_benchmark_into_a_folder_of_the_users_is_refused(capsys, tmp_path, monkeypatch):
    import lvlm_studio.cli.common as common

    monkeypatch.setattr(common, "load", _no_model_load)
    (tmp_path / "summary.md").write_text("my own summary")
    before = snapshot(tmp_path)
    assert_refused(run_cli(capsys, *BENCHMARK, "--out", tmp_path), 2, "not written by LVLM Studio")
    assert_untouched(tmp_path, before)


@pytest.mark.hostile("filesystem")
@pytest.mark.parametrize("case", ["report into a folder", "out below a file", "trace below a file"])
def test_a_file_where_a_folder_belongs_and_back(capsys, tmp_path, monkeypatch, saved_session, case):
    import lvlm_studio.cli.common as common

    monkeypatch.setattr(common, "load", _no_model_load)
    (tmp_path / "folder").mkdir()
    (tmp_path / "notes.txt").write_text("mine")
    before = snapshot(tmp_path)
    argv, words = {
        "report into a folder": (("report", saved_session[1], "--out", tmp_path / "folder"), "is a folder"),
        "out below a file": ((*EXPLAIN, "--out", tmp_path / "notes.txt" / "run"), "is a file"),
        "trace below a file": (("ask", "--image", SAMPLE, "--prompt", "hi", "--save-trace",
                                tmp_path / "notes.txt" / "t.safetensors"), "is a file"),
    }[case]
    assert_refused(run_cli(capsys, *argv), 2, words)
    assert_untouched(tmp_path, before)


@pytest.fixture
def small_disk(tmp_path):
    """A real 2 MB tmpfs (Linux, as root); skipped where one cannot be mounted."""
    import subprocess

    folder = tmp_path / "disk"
    folder.mkdir()
    if os.name != "posix" or os.geteuid() != 0 or subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(folder)], capture_output=True).returncode:
        pytest.skip("needs root and mount to make a small tmpfs")
    yield folder
    subprocess.run(["umount", str(folder)], check=True)


@pytest.mark.hostile("filesystem")
def test_a_real_full_disk_and_a_read_only_one(capsys, small_disk):
    import subprocess

    out = small_disk / "run"
    assert run_cli(capsys, *EXPLAIN, "--out", out).code == 0
    before = snapshot(out)
    free = os.statvfs(small_disk).f_bavail * os.statvfs(small_disk).f_frsize
    (small_disk / "filler").write_bytes(b"\0" * (free - 100_000))
    explain_all = [a for a in EXPLAIN if a not in ("--tokens", "0")]  # eleven overlays: more than is left
    assert_refused(run_cli(capsys, *explain_all, "--out", out, "--overwrite"), 2, "no space", str(out))
    assert_untouched(out, before)
    assert _leftovers(small_disk) == []
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    assert_refused(run_cli(capsys, "report", "missing.lvlm", "--out", small_disk / "r.pdf"), 2, "read-only")
