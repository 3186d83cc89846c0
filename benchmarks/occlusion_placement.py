"""Pointing game of occlusion's placements and coverage divisions on the demo model.

The pointing game of ``lvlm_studio.demo.pointing`` (the one behind ``lvlm-studio demo pointing``)
runs every method with its defaults; this runs occlusion once per variant named on the command
line, each as its own row over the same held-out scenes and the same trials:

    python benchmarks/occlusion_placement.py --n 200 fit/mean span/mean span/pixel

A variant is PLACEMENT/COVERAGE (the ``placement`` and ``coverage`` parameters of ``occlusion``).
"""

from __future__ import annotations

import argparse
import time

from lvlm_studio.api import create_registry, run_job
from lvlm_studio.demo.pointing import format_table, pointing_game


class Variants:
    """A stand-in registry holding one occlusion explainer per variant, each with its parameters fixed."""

    def __init__(self, variants: list[str]) -> None:
        occlusion = type(create_registry().explainer("occlusion"))
        self.made = {}
        for variant in variants:
            placement, coverage = variant.split("/")
            fixed = {"placement": placement, "coverage": coverage}

            class Fixed(occlusion):  # type: ignore[misc, valid-type]
                id = f"occlusion {variant}"

                def resolve_params(self, given=None, fixed=fixed):
                    return super().resolve_params({**fixed, **(given or {})})

            self.made[Fixed.id] = Fixed()

    def explainer(self, method: str):
        return self.made[method]

    def explainers(self):
        return dict(self.made)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("variants", nargs="+", help="PLACEMENT/COVERAGE, e.g. fit/mean span/mean span/pixel")
    parser.add_argument("--n", type=int, default=200, help="held-out scenes (default 200)")
    args = parser.parse_args()
    from lvlm_studio.core.models.loading import load_model

    loaded = load_model(None)
    registry = Variants(args.variants)
    started = time.perf_counter()
    result = run_job(pointing_game(loaded, args.n, list(registry.made), registry))
    print(format_table(result), end="")
    print(f"{time.perf_counter() - started:.0f} s; failed: {result.failed or 'none'}")


if __name__ == "__main__":
    main()
