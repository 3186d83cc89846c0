"""Hostile inputs to the Qt-free core through the command line: model folders, images, SAE files.

Every case must end with exit 2 and one line that says what went wrong and what to do
(``hostile_helpers.assert_refused``); none may load or answer with something silently wrong.
"""

from __future__ import annotations

import json
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from hostile_helpers import SAMPLE, assert_refused, run_cli
from PIL import Image
from safetensors.torch import load_file, save_file

from lvlm_studio.core.models.loading import DEMO_MODEL_DIR

ASK = ("ask", "--device", "cpu", "--max-new-tokens", "3", "--prompt", "describe the image.")
WEIGHTS = "model.safetensors"


def ask_with_model(capsys, folder: Path, *extra: str):
    return run_cli(capsys, *ASK, "--image", SAMPLE, "--model", folder, *extra)


@pytest.fixture
def model_copy(tmp_path) -> Path:
    folder = tmp_path / "model"
    shutil.copytree(DEMO_MODEL_DIR, folder)
    return folder


def edit_weights(folder: Path, edit) -> None:
    tensors = load_file(folder / WEIGHTS)
    edit(tensors)
    save_file(tensors, folder / WEIGHTS, metadata={"format": "pt"})


def edit_config(folder: Path, edit) -> None:
    config = json.loads((folder / "config.json").read_text())
    edit(config)
    (folder / "config.json").write_text(json.dumps(config))


# -- model folders ------------------------------------------------------------------------------
@pytest.mark.hostile("models")
def test_missing_weights_are_refused_by_name(capsys, model_copy):
    """The reported case: no lm_head and three layer tensors used to load as random weights."""

    def drop(tensors):
        layer = sorted(k for k in tensors if ".layers.0." in k and k.startswith("language_model"))[:3]
        for key in ["language_model.lm_head.weight", *layer]:
            del tensors[key]

    edit_weights(model_copy, drop)
    line = assert_refused(ask_with_model(capsys, model_copy), 2, "4 missing", "lm_head.weight", "and 1 more")
    assert "do not match its config.json" in line


@pytest.mark.hostile("models")
def test_unexpected_weights_are_refused_by_name(capsys, model_copy):
    edit_weights(model_copy, lambda t: t.update({"vision_tower.extra_head.weight": torch.zeros(3, 3)}))
    assert_refused(ask_with_model(capsys, model_copy), 2, "1 unexpected", "extra_head")


@pytest.mark.hostile("models")
def test_weights_of_another_shape_are_refused(capsys, model_copy):
    text = json.loads((model_copy / "config.json").read_text())["text_config"]
    edit_config(model_copy, lambda c: c["text_config"].update(intermediate_size=text["intermediate_size"] + 64))
    assert_refused(ask_with_model(capsys, model_copy), 2, "of the wrong shape", "mlp")


def test_tied_lm_head_may_be_absent(capsys, model_copy):
    """A head tied to the embeddings is not stored; that is not a missing weight."""
    edit_config(model_copy, lambda c: c.update(tie_word_embeddings=True) or c["text_config"].update(
        tie_word_embeddings=True))
    edit_weights(model_copy, lambda t: t.pop("language_model.lm_head.weight"))
    outcome = ask_with_model(capsys, model_copy)
    assert outcome.code == 0, outcome.err


def _truncate(folder: Path) -> None:
    data = (folder / WEIGHTS).read_bytes()
    (folder / WEIGHTS).write_bytes(data[: len(data) // 2])


def _garbage(folder: Path) -> None:
    (folder / WEIGHTS).write_bytes(np.random.default_rng(0).bytes(5000))


def _header_only(folder: Path) -> None:
    (folder / WEIGHTS).write_bytes((folder / WEIGHTS).read_bytes()[:5000])


def _config_garbage(folder: Path) -> None:
    (folder / "config.json").write_text("{not json")


def _config_binary(folder: Path) -> None:
    (folder / "config.json").write_bytes(np.random.default_rng(1).bytes(300))


def _config_list(folder: Path) -> None:
    (folder / "config.json").write_text("[1, 2, 3]")


def _config_unknown_type(folder: Path) -> None:
    edit_config(folder, lambda c: c.update(model_type="no_such_model"))


def _config_no_type(folder: Path) -> None:
    edit_config(folder, lambda c: c.pop("model_type"))


def _config_wrong_value_type(folder: Path) -> None:
    edit_config(folder, lambda c: c["text_config"].update(hidden_size="big"))


def _no_weights(folder: Path) -> None:
    (folder / WEIGHTS).unlink()


def _pickle_only(folder: Path) -> None:
    (folder / WEIGHTS).rename(folder / "pytorch_model.bin")


def _empty(folder: Path) -> None:
    shutil.rmtree(folder)
    folder.mkdir()


def _a_file(folder: Path) -> None:
    shutil.rmtree(folder)
    folder.write_text("not a model")


@pytest.mark.hostile("models")
@pytest.mark.parametrize(("damage", "words"), [
    (_truncate, ("could not load the weights",)),
    (_garbage, ("could not load the weights",)),
    (_header_only, ("could not load the weights",)),
    (_config_garbage, ("not valid JSON",)),
    (_config_binary, ("not valid JSON",)),
    (_config_list, ("not an object",)),
    (_config_unknown_type, ("no_such_model",)),
    (_config_no_type, ("model_type",)),
    (_config_wrong_value_type, ("hidden_size",)),
    (_no_weights, ("has no weights",)),
    (_pickle_only, ("pickle", "--allow-pickle")),
    (_empty, ("no config.json",)),
    (_a_file, ("is a file",)),
], ids=lambda v: v.__name__.strip("_") if callable(v) else None)
def test_damaged_model_folder_is_refused(capsys, model_copy, damage, words):
    damage(model_copy)
    assert_refused(ask_with_model(capsys, model_copy), 2, *words)


# -- images -------------------------------------------------------------------------------------
def ask_about(capsys, image: Path):
    return run_cli(capsys, *ASK, "--image", image)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _zero_size_png(path: Path) -> None:
    header = struct.pack(">IIBBBBB", 0, 0, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", zlib.compress(b""))
                     + _png_chunk(b"IEND", b""))


def _truncated_png(path: Path) -> None:
    data = SAMPLE.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _garbage_png(path: Path) -> None:
    path.write_bytes(np.random.default_rng(2).bytes(2000))


def _text_as_jpeg(path: Path) -> None:
    path.write_text("my thesis, chapter one\n" * 20)


def _empty_file(path: Path) -> None:
    path.write_bytes(b"")


def _tiny_image(path: Path) -> None:
    Image.new("RGB", (2, 2)).save(path, format="PNG")


def _folder(path: Path) -> None:
    path.mkdir()


@pytest.mark.hostile("images")
@pytest.mark.parametrize(("make", "words"), [
    (_truncated_png, ("could not be read as an image",)),
    (_garbage_png, ("could not be read as an image",)),
    (_text_as_jpeg, ("could not be read as an image",)),
    (_empty_file, ("could not be read as an image",)),
    (_zero_size_png, ("could not be read as an image",)),
    (_tiny_image, ("too small",)),
    (_folder, ("is a folder",)),
], ids=lambda v: v.__name__.strip("_") if callable(v) else None)
def test_bad_image_is_refused(capsys, tmp_path, make, words):
    path = tmp_path / ("image.jpg" if make is _text_as_jpeg else "image.png")
    make(path)
    assert_refused(ask_about(capsys, path), 2, *words)


@pytest.mark.hostile("images")
def test_decompression_bomb_is_refused_in_one_line(capsys, tmp_path, monkeypatch):
    path = tmp_path / "bomb.png"
    Image.new("L", (64, 64)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 4096 pixels: over twice the limit
    assert_refused(ask_about(capsys, path), 2, "too large to open safely", "Downscale")


@pytest.mark.hostile("images")
def test_16_bit_image_is_answered_like_its_8_bit_version(capsys, tmp_path):
    """The reported case: a 16-bit greyscale PNG was read as solid white and answered as such."""
    grey = np.asarray(Image.open(SAMPLE).convert("L"), dtype=np.uint16)
    deep, flat = tmp_path / "deep.png", tmp_path / "flat.png"
    Image.fromarray(grey * 257).save(deep)
    Image.fromarray(grey.astype(np.uint8)).save(flat)
    answers = [run_cli(capsys, *ASK, "--image", path) for path in (deep, flat)]
    assert [a.code for a in answers] == [0, 0], answers
    assert answers[0].out.splitlines()[0] == answers[1].out.splitlines()[0]


# -- SAE files ----------------------------------------------------------------------------------
SAE_CONFIG, SAE_WEIGHTS = "cfg.json", "sae_weights.safetensors"


@pytest.fixture
def sae_copy(tmp_path) -> Path:
    from lvlm_studio.sae.shipped import demo_sae_path

    folder = tmp_path / "sae"
    shutil.copytree(demo_sae_path(), folder)
    return folder


def edit_sae_config(folder: Path, edit) -> None:
    config = json.loads((folder / SAE_CONFIG).read_text())
    edit(config)
    (folder / SAE_CONFIG).write_text(json.dumps(config))


def as_saelens(edit):
    """An edit to a plain SAELens config (without the section LVLM Studio adds)."""
    def apply(config):
        del config["lvlm_studio"]
        edit(config)
    return apply


def _sae_truncated(folder: Path) -> None:
    data = (folder / SAE_WEIGHTS).read_bytes()
    (folder / SAE_WEIGHTS).write_bytes(data[: len(data) // 2])


def _sae_garbage(folder: Path) -> None:
    (folder / SAE_WEIGHTS).write_bytes(np.random.default_rng(3).bytes(3000))


def _sae_nan(folder: Path) -> None:
    tensors = load_file(folder / SAE_WEIGHTS)
    tensors["W_dec"][3, 3] = float("nan")
    save_file(tensors, folder / SAE_WEIGHTS)


SAE_DAMAGE = {
    "weights truncated": (_sae_truncated, ("not a safetensors file",)),
    "weights garbage": (_sae_garbage, ("not a safetensors file",)),
    "weights NaN": (_sae_nan, ("W_dec", "NaN")),
    "weights missing": (lambda f: (f / SAE_WEIGHTS).unlink(), ("no sae_weights.safetensors",)),
    "config garbage": (lambda f: (f / SAE_CONFIG).write_text("{{"), ("not readable JSON",)),
    "config list": (lambda f: (f / SAE_CONFIG).write_text("[]"), ("not a JSON object",)),
    "section lacks d_in": (lambda f: edit_sae_config(f, lambda c: c["lvlm_studio"].pop("d_in")), ("lacks d_in",)),
    "section d_in text": (lambda f: edit_sae_config(f, lambda c: c["lvlm_studio"].update(d_in="big")),
                          ("d_in", "whole number")),
    "section unknown field": (lambda f: edit_sae_config(f, lambda c: c["lvlm_studio"].update(colour=1)),
                              ("unknown fields: colour",)),
    "section not an object": (lambda f: edit_sae_config(f, lambda c: c.update(lvlm_studio=[1])), ("not an object",)),
    "hook name a number": (lambda f: edit_sae_config(f, lambda c: c["lvlm_studio"].update(hook_name=7)),
                           ("hook_name", "string")),
    "saelens d_in text": (lambda f: edit_sae_config(f, as_saelens(lambda c: c.update(d_in="big"))),
                          ("d_in", "whole number")),
    "saelens no sizes": (lambda f: edit_sae_config(f, as_saelens(lambda c: [c.pop(k) for k in ("d_in", "d_sae")])),
                         ("no d_in and d_sae",)),
    "saelens metadata text": (lambda f: edit_sae_config(f, as_saelens(lambda c: c.update(metadata="x"))),
                              ("metadata", "not an object")),
    "shapes do not match": (lambda f: edit_sae_config(f, lambda c: c["lvlm_studio"].update(d_sae=256)),
                            ("has shape (128, 512), expected (128, 256)",)),
    "huge d_sae": (lambda f: edit_sae_config(f, lambda c: c["lvlm_studio"].update(d_sae=10 ** 12)),
                   ("expected (128, 1000000000000)",)),
}


@pytest.mark.hostile("sae")
@pytest.mark.parametrize("case", list(SAE_DAMAGE))
def test_damaged_sae_is_refused_by_inspect(capsys, tmp_path, sae_copy, case):
    damage, words = SAE_DAMAGE[case]
    damage(sae_copy)
    outcome = run_cli(capsys, "sae", "inspect", "--sae", sae_copy, "--image", SAMPLE, "--device", "cpu",
                      "--out", tmp_path / "inspected")
    assert_refused(outcome, 2, *words)
    assert not (tmp_path / "inspected").exists()


@pytest.mark.hostile("sae")
@pytest.mark.parametrize("command", ["inspect", "eval"])
def test_sae_at_a_hook_the_model_lacks_is_refused(capsys, tmp_path, sae_copy, command):
    edit_sae_config(sae_copy, lambda c: c["lvlm_studio"].update(hook_name="blocks.9.hook_resid_post"))
    extra = ("--image", SAMPLE, "--out", tmp_path / "out") if command == "inspect" else ("--n", "2")
    outcome = run_cli(capsys, "sae", command, "--sae", sae_copy, "--device", "cpu", *extra)
    assert_refused(outcome, 2, "blocks.9.hook_resid_post")


@pytest.mark.hostile("sae")
def test_prisma_weights_that_are_not_a_torch_file_are_refused(capsys, tmp_path):
    folder = tmp_path / "prisma"
    folder.mkdir()
    config = {"d_in": 128, "d_sae": 512, "hook_point": "blocks.1.hook_resid_post"}
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "weights.pt").write_bytes(np.random.default_rng(4).bytes(2000))
    assert_refused(run_cli(capsys, "sae", "eval", "--sae", folder, "--n", "2", "--device", "cpu"), 2,
                   "not a torch file")
