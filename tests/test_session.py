"""Sessions (one file, no pickle), the PDF report, the attention grid's numbers and map agreement."""

from __future__ import annotations

import json
import re
import zipfile

import numpy as np
import pytest

from lvlm_studio.core.errors import InputError
from lvlm_studio.core.formats.session import MetricRecord, Session, load_session, save_session
from lvlm_studio.core.plugin.contracts import MetricResult
from lvlm_studio.core.plugin.explanation import Explanation


def _explanation(trace, method: str, seed: int) -> Explanation:
    rng = np.random.default_rng(seed)
    maps = {t: [rng.random(r.grid) for r in trace.regions] for t in range(len(trace.answer_tokens))}
    return Explanation(method, maps, {"layers": [1, 2]}, {"method": method})


@pytest.fixture
def session(demo_trace, demo_scene):
    metric = MetricResult(values={"deletion_auc": 0.25}, curves={"deletion": (np.linspace(0, 1, 5), np.arange(5.0))},
                          details={"steps": np.int64(5), "order": np.arange(3)})
    return Session(
        prompt=demo_trace.prompt,
        image=demo_trace.image,
        image_name="scene.png",
        trace=demo_trace,
        explanations={"a": _explanation(demo_trace, "a", 0), "b": _explanation(demo_trace, "b", 1)},
        metrics=[MetricRecord("a", 1, "deletion", metric)],
        masks={"red": demo_scene.objects[0].mask, 3: demo_scene.objects[1].mask},
        view={"selected": 1, "method": "b", "opacity": 0.4},
    )


def test_a_session_round_trips_through_one_file(session, tmp_path):
    path = save_session(session, tmp_path / "analysis")
    assert path.name == "analysis.lvlm" and path.is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["analysis.lvlm"]  # no temporary left behind

    again = load_session(path)
    assert again.prompt == session.prompt and again.image_name == "scene.png"
    np.testing.assert_array_equal(np.asarray(again.image), np.asarray(session.image))
    assert again.trace.answer_tokens == session.trace.answer_tokens
    np.testing.assert_allclose(again.trace.logprobs, session.trace.logprobs)
    assert list(again.explanations) == ["a", "b"]
    for method in ("a", "b"):
        for t, maps in session.explanations[method].maps.items():
            for got, want in zip(again.explanations[method].maps[t], maps):
                np.testing.assert_array_equal(got, want)
    result = again.metric("a", 1, "deletion")
    assert result.values == {"deletion_auc": 0.25}
    np.testing.assert_array_equal(result.curves["deletion"][1], np.arange(5.0))
    assert result.details == {"steps": 5, "order": [0, 1, 2]}
    assert set(again.masks) == {"red", 3}
    np.testing.assert_array_equal(again.masks["red"], session.masks["red"])
    np.testing.assert_array_equal(again.masks[3], session.masks[3])
    assert again.view == {"selected": 1, "method": "b", "opacity": 0.4}
    assert again.record["model"]["family"] == session.trace.model_info["family"]
    assert "torch" in again.record["versions"]


def test_a_session_file_holds_no_pickle(session, tmp_path):
    path = save_session(session, tmp_path / "a.lvlm")
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        assert set(names) == {"session.json", "image.png", "trace.safetensors", "explanations/000.npz",
                              "explanations/001.npz", "metric_curves.npz", "masks.npz"}
        for name in names:
            if name.endswith(".npz"):
                with zipfile.ZipFile(archive.open(name)) as inner:  # npz is itself a zip of .npy files
                    for member in inner.namelist():
                        header = inner.read(member)[:128]
                        assert b"'O'" not in header and b"|O" not in header  # no object arrays
        json.loads(archive.read("session.json"))


def test_an_image_only_session_opens_without_a_trace(tmp_path, demo_scene):
    path = save_session(Session(prompt="what is red?", image=demo_scene.image, image_name="x.png"), tmp_path / "s")
    again = load_session(path)
    assert again.trace is None and again.explanations == {} and again.prompt == "what is red?"
    assert again.image.size == demo_scene.image.size


def test_bad_session_files_say_what_to_do(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        load_session(tmp_path / "missing.lvlm")
    text = tmp_path / "notes.lvlm"
    text.write_text("hello")
    with pytest.raises(InputError, match="not a readable LVLM Studio session") as caught:
        load_session(text)
    assert ".lvlm" in caught.value.hint
    other = tmp_path / "other.lvlm"
    with zipfile.ZipFile(other, "w") as archive:
        archive.writestr("session.json", json.dumps({"format": "something-else/9"}))
    with pytest.raises(InputError, match="something-else/9"):
        load_session(other)


def test_the_report_is_a_pdf_with_a_page_per_part(session, tmp_path):
    from lvlm_studio.core.formats.report import default_tokens, write_report

    assert 1 in default_tokens(session) and default_tokens(session) == sorted(default_tokens(session))
    path = write_report(session, tmp_path / "report.pdf")
    data = path.read_bytes()
    assert data.startswith(b"%PDF")
    pages = re.findall(rb"/Type\s*/Page(?![s\w])", data)
    assert len(pages) == 4  # summary, overlays, metrics, run record
    with pytest.raises(InputError, match="token 99"):
        write_report(session, tmp_path / "r.pdf", tokens=[99])
    with pytest.raises(InputError, match="no answer"):
        write_report(Session(prompt="x"), tmp_path / "r.pdf")


def test_head_attention_mass_is_the_image_share_of_each_head(demo_model, demo_trace):
    from lvlm_studio.core.models.capture import capture_attention
    from lvlm_studio.core.plugin.jobs import collect
    from lvlm_studio.core.tracing.head_attention import head_attention, head_method_id

    grid, progress = collect(head_attention(demo_trace, demo_model))
    assert progress[-1].done == progress[-1].total == 1
    layers, heads = grid.shape
    n = len(demo_trace.answer_tokens)
    assert grid.weights.shape[:3] == (layers, heads, n)
    # Against a full capture over every key: the mass is the image columns' share of each row.
    query = demo_trace.answer_position(1) - 1
    everything = capture_attention(demo_model, demo_trace.teacher_forced_inputs(demo_model, upto=query + 1),
                                   [query], range(query + 1))[:, :, 0]
    np.testing.assert_allclose(everything.sum(-1), 1.0, atol=1e-4)
    expected = everything[:, :, demo_trace.image_positions].sum(-1)
    np.testing.assert_allclose(grid.image_mass(1), expected, atol=1e-5)
    assert ((grid.image_mass(0) >= 0) & (grid.image_mass(0) <= 1 + 1e-5)).all()

    head = grid.head_explanation(demo_trace, layers - 1, 0)
    assert head.method == head_method_id(layers - 1, 0)
    np.testing.assert_allclose(head.maps[1][0].ravel(), grid.weights[layers - 1, 0, 1])
    with pytest.raises(InputError):
        grid.head_explanation(demo_trace, layers, 0)
    with pytest.raises(InputError):
        grid.image_mass(n)


def test_the_report_command_writes_a_pdf_from_a_saved_session(session, tmp_path, capsys):
    from lvlm_studio.cli import main

    path = save_session(session, tmp_path / "s.lvlm")
    assert main(["report", str(path), "--out", str(tmp_path / "r.pdf"), "--tokens", "0,2"]) == 0
    assert (tmp_path / "r.pdf").read_bytes().startswith(b"%PDF")
    assert main(["report", str(tmp_path / "missing.lvlm")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_first_party_panels_are_declared_without_qt():
    """The core registers lvlm_panels on machines without Qt: declaring panels must not import it."""
    import subprocess
    import sys

    script = (
        "import sys\n"
        "class NoQt:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.partition('.')[0] in ('PySide6', 'pyqtgraph', 'superqt', 'shiboken6'):\n"
        "            raise ImportError(name + ' is blocked')\n"
        "sys.meta_path.insert(0, NoQt())\n"
        "import lvlm_panels\n"
        "print(len(lvlm_panels.lvlm_studio_panels()))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    import lvlm_panels

    assert int(done.stdout.strip()) == len(lvlm_panels.lvlm_studio_panels()) >= 5
    from lvlm_studio.core.plugin.registry import create_registry

    panels = create_registry(load_third_party=False).panels()
    assert [p.id for p in panels.values()][:5] == ["overlay", "timeline", "heads", "compare", "metrics"]
    assert all(panels[p].factory.startswith("lvlm_panels.") for p in ("overlay", "timeline", "heads", "compare",
                                                                       "metrics"))
