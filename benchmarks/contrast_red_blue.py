"""Red rather than blue: does a contrastive map point at the red object more than the plain map?

Held-out demo scenes (seeds from 10001 on) with exactly one red and one blue object, the red one's
shape unique; the demo model is asked "what color is the SHAPE?" about the red object, and the
answer token "red" is explained plainly and against "blue" (``contrast``). Per method and variant:
the red object's share of the map's positive mass on the two objects (red / (red + blue)), and how
often the map's peak lies in the red or the blue object.

    python benchmarks/contrast_red_blue.py --methods grad_x_input,gradcam,relevancy,occlusion --n 10
"""

from __future__ import annotations

import argparse

import numpy as np

from lvlm_studio.api import create_registry, generate_trace, run_job, to_pixels
from lvlm_studio.demo.scenes import make_scene


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default="grad_x_input,gradcam,relevancy,occlusion")
    parser.add_argument("--n", type=int, default=10, help="scenes (default 10)")
    args = parser.parse_args()
    from lvlm_studio.core.models.loading import LoadOptions, load_model

    loaded = load_model(None, LoadOptions(device="cpu"))
    registry = create_registry()
    methods = args.methods.split(",")
    blue_id = loaded.processor.tokenizer.convert_tokens_to_ids("blue")
    rows: dict[str, dict[str, list[tuple[float, bool, bool]]]] = {m: {"plain": [], "contrast": []} for m in methods}
    seed, found = 10_000, 0
    while found < args.n and seed < 20_000:
        seed += 1
        scene = make_scene(seed)
        reds = [o for o in scene.objects if o.colour == "red"]
        blues = [o for o in scene.objects if o.colour == "blue"]
        if len(reds) != 1 or len(blues) != 1 or [o.shape for o in scene.objects].count(reds[0].shape) != 1:
            continue
        red, blue = reds[0], blues[0]
        trace = generate_trace(loaded, scene.image, f"what color is the {red.shape}?")
        words = [t.strip() for t in trace.answer_tokens]
        if "red" not in words:
            continue
        token, found = words.index("red"), found + 1
        for method in methods:
            explainer = registry.explainer(method)
            for variant, extra in (("plain", {}), ("contrast", {"contrast": blue_id})):
                made = run_job(explainer.explain(trace, loaded, [token], explainer.resolve_params(extra)))
                pixels = np.nan_to_num(to_pixels(made.maps[token], trace.regions, trace.image.size))
                positive = np.clip(pixels, 0, None)
                on_red, on_blue = positive[red.mask].sum(), positive[blue.mask].sum()
                peak = np.unravel_index(np.argmax(pixels), pixels.shape)
                share = on_red / (on_red + on_blue) if on_red + on_blue > 0 else float("nan")
                rows[method][variant].append((share, bool(red.mask[peak]), bool(blue.mask[peak])))
    print(f"{found} scenes")
    print("| method | map | red share of positive mass | peak in red | peak in blue |")
    print("|---|---|---:|---:|---:|")
    for method in methods:
        for variant in ("plain", "contrast"):
            values = np.array(rows[method][variant], dtype=float)
            print(f"| {method} | {variant} | {np.nanmean(values[:, 0]):.3f} | {values[:, 1].mean():.2f} | "
                  f"{values[:, 2].mean():.2f} |")


if __name__ == "__main__":
    main()
