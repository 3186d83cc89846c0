"""ViT-Prisma's hook naming and its trainer's checkpoints, built by hand the way its trainer writes
them (``torch.save({"cfg": <dataclass>, "state_dict": ...})``), and pickles that try to run code."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import sys
import types

import pytest
import torch

from lvlm_studio.core.errors import InputError
from lvlm_studio.sae.formats import load_coder

D_IN, D_SAE = 6, 12


def _weights(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"W_enc": torch.randn(D_IN, D_SAE, generator=g), "b_enc": torch.randn(D_SAE, generator=g),
            "W_dec": torch.randn(D_SAE, D_IN, generator=g), "b_dec": torch.randn(D_IN, generator=g)}


PRISMA = {"d_in": D_IN, "d_sae": D_SAE, "activation_fn_str": "relu", "architecture": "standard",
          "normalize_activations": "none"}


def _folder(tmp_path, config: dict, name: str = "p"):
    folder = tmp_path / name
    folder.mkdir()
    torch.save(_weights(), folder / "weights.pt")
    (folder / "config.json").write_text(json.dumps(config))
    return folder


# -- hooks -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("subtype", ["hook_resid_post", "hook_mlp_out", "hook_attn_out", "hook_resid_pre",
                                     "hook_resid_mid", "ln2.hook_normalized"])
def test_prisma_layer_and_subtype_name_our_hook_point(tmp_path, subtype):
    coder = load_coder(_folder(tmp_path, {**PRISMA, "hook_point_layer": 9, "layer_subtype": subtype}))
    assert coder.cfg.hook_name == f"blocks.9.{subtype}"


def test_prisma_hook_defaults_and_older_forms(tmp_path):
    # layer_subtype absent: Prisma's default, hook_resid_post; a one-layer list (older configs)
    assert load_coder(_folder(tmp_path, {**PRISMA, "hook_point_layer": 3}, "a")).cfg.hook_name == \
        "blocks.3.hook_resid_post"
    assert load_coder(_folder(tmp_path, {**PRISMA, "hook_point_layer": [2], "layer_subtype": "hook_mlp_out"},
                              "b")).cfg.hook_name == "blocks.2.hook_mlp_out"
    # hook_point agreeing with the pair is fine; a SAELens hook_name still wins over nothing
    folder = _folder(tmp_path, {**PRISMA, "hook_point": "blocks.4.hook_mlp_out", "hook_point_layer": 4,
                                "layer_subtype": "hook_mlp_out"}, "c")
    assert load_coder(folder).cfg.hook_name == "blocks.4.hook_mlp_out"


@pytest.mark.parametrize(("extra", "message"), [
    ({"hook_point_layer": 9, "layer_subtype": "mlp.hook_post"}, r"layer_subtype 'mlp.hook_post'.*no matching hook"),
    ({"hook_point_layer": 9, "layer_subtype": "attn.hook_z"}, r"blocks.9.attn.hook_z.*no matching hook"),
    ({"hook_point_layer": [3, 4]}, r"hook_point_layer in the config is \[3, 4\]"),
    ({"hook_point_layer": "9"}, r"hook_point_layer in the config is '9'"),
    ({"hook_point_layer": 9, "hook_point": "blocks.8.hook_resid_post"}, r"hook_point 'blocks.8.hook_resid_post' but"),
    ({"hook_point_layer": 9, "hook_point_head_index": 2}, r"hook_point_head_index is 2: .*one attention head"),
])
def test_prisma_hooks_without_a_hook_point_here_are_refused(tmp_path, extra, message):
    with pytest.raises(InputError, match=message):
        load_coder(_folder(tmp_path, {**PRISMA, **extra}))


def test_prisma_token_choices_become_the_coders_tokens(tmp_path):
    assert load_coder(_folder(tmp_path, PRISMA, "all")).cfg.tokens == "all"
    assert load_coder(_folder(tmp_path, {**PRISMA, "use_patches_only": True}, "patch")).cfg.tokens == "patch"
    assert load_coder(_folder(tmp_path, {**PRISMA, "cls_token_only": True}, "cls")).cfg.tokens == "cls"
    with pytest.raises(InputError, match="both cls_token_only and use_patches_only"):
        load_coder(_folder(tmp_path, {**PRISMA, "cls_token_only": True, "use_patches_only": True}, "both"))


# -- trainer checkpoints -----------------------------------------------------------------------------
@pytest.fixture
def prisma_classes(monkeypatch):
    """Stand-ins for ViT-Prisma's config dataclasses, importable under its module names while the
    test pickles them (as its trainer does) and removed before anything is loaded."""
    config = types.ModuleType("vit_prisma.sae.config")
    vit_config = types.ModuleType("vit_prisma.configs.HookedViTConfig")

    @dataclasses.dataclass
    class HookedViTConfig:
        n_layers: int = 12
        dtype: torch.dtype = torch.float32

    @dataclasses.dataclass
    class VisionModelSAERunnerConfig:
        d_in: int = D_IN
        d_sae: int = D_SAE
        expansion_factor: int = 2
        hook_point_layer: int = 9
        layer_subtype: str = "hook_mlp_out"
        activation_fn_str: str = "topk"
        activation_fn_kwargs: dict = dataclasses.field(default_factory=lambda: {"k": 3})
        architecture: str = "standard"
        normalize_activations: str = "none"
        use_patches_only: bool = True
        cls_token_only: bool = False
        hook_point_head_index: int | None = None
        model_name: str = "open-clip:laion/CLIP-ViT-B-32"
        dtype: torch.dtype = torch.float32
        device: torch.device = dataclasses.field(default_factory=lambda: torch.device("cpu"))
        vit_model_cfg: HookedViTConfig = dataclasses.field(default_factory=HookedViTConfig)
        attn_types: set = dataclasses.field(default_factory=lambda: {"global"})

        def __post_init__(self):  # Prisma keeps the built name as an attribute, not a field
            self.hook_point = f"blocks.{self.hook_point_layer}.{self.layer_subtype}"

    for module, cls in ((config, VisionModelSAERunnerConfig), (vit_config, HookedViTConfig)):
        cls.__module__, cls.__qualname__ = module.__name__, cls.__name__
        setattr(module, cls.__name__, cls)
    modules = {"vit_prisma": types.ModuleType("vit_prisma"), "vit_prisma.sae": types.ModuleType("vit_prisma.sae"),
               "vit_prisma.configs": types.ModuleType("vit_prisma.configs"), config.__name__: config,
               vit_config.__name__: vit_config}
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)
    yield VisionModelSAERunnerConfig
    for name in modules:
        monkeypatch.delitem(sys.modules, name, raising=False)


def _save_checkpoint(path, cfg, state) -> None:
    from collections import OrderedDict

    path.parent.mkdir(exist_ok=True)
    torch.save({"cfg": cfg, "state_dict": OrderedDict(state)}, path)  # what ViT-Prisma's save_model writes


def test_a_trainer_checkpoint_loads_through_the_restricted_unpickler(tmp_path, prisma_classes):
    w = _weights()
    path = tmp_path / "run" / "n_images_520028.pt"
    _save_checkpoint(path, prisma_classes(), w)
    torch.save(torch.zeros(D_SAE), tmp_path / "run" / "n_images_520028_log_feature_sparsity.pt")
    for name in [n for n in sys.modules if n.startswith("vit_prisma")]:
        del sys.modules[name]  # the loader must not need (or import) ViT-Prisma

    for given in (path, path.parent):  # the file, or its folder (the sparsity log is not a candidate)
        coder = load_coder(given)
        assert "vit_prisma" not in sys.modules
        assert coder.cfg.hook_name == "blocks.9.hook_mlp_out" and coder.cfg.tokens == "patch"
        assert coder.cfg.architecture == "topk" and coder.cfg.k == 3  # "standard" beside activation_fn_str topk
        assert coder.cfg.model_name == "open-clip:laion/CLIP-ViT-B-32"
        x = torch.randn(5, D_IN)
        pre = (x - w["b_dec"]) @ w["W_enc"] + w["b_enc"]
        top = pre.topk(3, dim=-1)
        f = torch.zeros_like(pre).scatter(-1, top.indices, top.values.relu())
        torch.testing.assert_close(coder.encode(x), f, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(coder(x), f @ w["W_dec"] + w["b_dec"], atol=1e-5, rtol=1e-5)

    with pytest.raises(InputError, match="log of feature sparsity, not an SAE"):
        load_coder(tmp_path / "run" / "n_images_520028_log_feature_sparsity.pt")


def test_a_trainer_checkpoint_with_a_run_time_normalisation_applies_it(tmp_path, prisma_classes):
    path = tmp_path / "run" / "n_images_1.pt"
    _save_checkpoint(path, prisma_classes(normalize_activations="layer_norm"), _weights())
    assert load_coder(path).cfg.normalize_activations == "layer_norm"


def test_several_checkpoints_in_a_folder_are_not_guessed_among(tmp_path, prisma_classes):
    for n in (1000, 2000):
        _save_checkpoint(tmp_path / "run" / f"n_images_{n}.pt", prisma_classes(), _weights())
    with pytest.raises(InputError, match=r"2 ViT-Prisma checkpoints \(n_images_1000.pt, n_images_2000.pt\)"):
        load_coder(tmp_path / "run")


class _Payload:
    """Unpickling this runs ``function(*args)``: what a hostile .pt file does."""

    def __init__(self, function, *args):
        self.function, self.args = function, args

    def __reduce__(self):
        return self.function, self.args


@pytest.mark.parametrize("where", ["beside", "in_cfg", "as_cfg"])
@pytest.mark.parametrize("function", [os.system, eval], ids=["os.system", "eval"])
def test_a_checkpoint_whose_pickle_names_any_other_global_is_refused_and_nothing_runs(
        tmp_path, prisma_classes, where, function):
    marker = tmp_path / "ran"
    command = f"touch {marker}" if function is os.system else f"open({str(marker)!r}, 'w')"
    payload = _Payload(function, command)
    cfg = prisma_classes()
    if where == "in_cfg":
        cfg.model_name = payload
    contents = {"cfg": payload if where == "as_cfg" else cfg, "state_dict": _weights()}
    if where == "beside":
        contents["extra"] = payload
    path = tmp_path / "evil" / "n_images_1.pt"
    path.parent.mkdir()
    torch.save(contents, path)
    name = "posix.system" if function is os.system else "builtins.eval"
    with pytest.raises(InputError, match=rf"pickled object that is not a tensor or a ViT-Prisma config \({name}\)"):
        load_coder(path)
    assert not marker.exists()


def test_a_prisma_class_called_with_arguments_is_refused(tmp_path, prisma_classes):
    """A name under vit_prisma is only a stand-in that keeps fields; calling it with arguments (what a
    crafted pickle would do to reach real code) is refused."""
    path = tmp_path / "evil" / "n_images_1.pt"
    path.parent.mkdir()
    torch.save({"cfg": _Payload(prisma_classes, 99), "state_dict": _weights()}, path)
    with pytest.raises(InputError, match="VisionModelSAERunnerConfig called with arguments"):
        load_coder(path)


def test_plain_pickles_and_bare_tensors_are_refused_with_a_reason(tmp_path):
    (tmp_path / "sae.pkl.gz").write_bytes(b"not read")
    with pytest.raises(InputError, match="plain pickle"):
        load_coder(tmp_path / "sae.pkl.gz")
    folder = tmp_path / "t"
    folder.mkdir()
    torch.save(torch.zeros(3), folder / "weights.pt")
    (folder / "config.json").write_text(json.dumps(PRISMA))
    with pytest.raises(InputError, match="holds one tensor, not an SAE's state dict"):
        load_coder(folder)


def test_a_checkpoint_with_weights_and_no_config_anywhere_says_so(tmp_path):
    folder = tmp_path / "w"
    folder.mkdir()
    torch.save(_weights(), folder / "n_images_5.pt")
    with pytest.raises(InputError, match="holds weights but no config"):
        load_coder(folder)


def _torch_zip(path, data_pkl: bytes) -> None:
    """A torch-style archive whose data.pkl is ``data_pkl``, written opcode by opcode below."""
    import zipfile

    path.parent.mkdir(exist_ok=True)
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", data_pkl)
        archive.writestr("archive/version", "3\n")


def _text(value: str) -> bytes:
    return b"X" + len(value).to_bytes(4, "little") + value.encode()


def test_hand_written_pickles_cannot_reach_code_or_change_the_stand_ins(tmp_path):
    from lvlm_studio.sae.prisma_checkpoint import RestrictedUnpickler

    # GLOBAL builtins.getattr: refused by name before anything is called
    _torch_zip(tmp_path / "a" / "n_images_1.pt", b"\x80\x02cbuiltins\ngetattr\n" + _text("x") + b"\x85R.")
    with pytest.raises(InputError, match=r"\(builtins.getattr\)"):
        load_coder(tmp_path / "a" / "n_images_1.pt")
    # BUILD with a slot state sets attributes on the torch.device stand-in: it is this file's own
    # stand-in, so the next file's is untouched (and the result is no checkpoint)
    build = b"\x80\x02ctorch\ndevice\nN}" + _text("__defaults__") + _text("evil") + b"\x85s\x86b."
    _torch_zip(tmp_path / "b" / "n_images_1.pt", build)
    with pytest.raises(InputError, match="not a ViT-Prisma trainer checkpoint"):
        load_coder(tmp_path / "b" / "n_images_1.pt")
    device = RestrictedUnpickler(io.BytesIO(b"")).find_class("torch", "device")
    assert device("cuda", 0) == "cuda:0" and device.__defaults__ is None
