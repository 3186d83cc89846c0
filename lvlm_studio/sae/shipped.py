"""The sparse autoencoder shipped with the demo model, so inspection works out of the box."""

from __future__ import annotations

from pathlib import Path

from lvlm_studio.core.errors import InputError

DEMO_SAE_DIR = Path(__file__).resolve().parents[2] / "resources" / "demo-sae"
DEMO_VISION_SAE = "vision-blocks.1.hook_resid_post"


def demo_sae_path(name: str = DEMO_VISION_SAE) -> Path:
    """The folder of a shipped demo coder (SAELens format)."""
    path = DEMO_SAE_DIR / name
    if not (path / "cfg.json").exists():
        raise InputError(f"the demo SAE {name!r} is not in {DEMO_SAE_DIR}.",
                         "Train one: lvlm-studio sae train --hook blocks.1.hook_resid_post --out FOLDER, "
                         "and pass --sae FOLDER.")
    return path


def shipped_coders() -> list[Path]:
    """Every shipped demo coder folder, sorted by name."""
    if not DEMO_SAE_DIR.exists():
        return []
    return sorted(p for p in DEMO_SAE_DIR.iterdir() if (p / "cfg.json").exists())
