"""What every command shares: the model and question options, loading, the checks made before the
model loads (a mistake should fail in a second, not after a minute of work), token and parameter
parsing, the progress bar and the exit codes."""

from __future__ import annotations

import argparse
import math
import sys
import time

from lvlm_studio.core.errors import InputError
from lvlm_studio.core.io.images import open_image

EXIT_INPUT = 2
EXIT_BUG = 1
EXIT_CANCELLED = 130
MAX_SEED = 2**32 - 1


def seed(text: str) -> int:
    """The type of every --seed: a number each random generator involved accepts (torch, NumPy)."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"{text!r} is not a seed; give a whole number from 0 to {MAX_SEED}")
    return value


def add_model_options(parser: argparse.ArgumentParser, repeat_model: bool = False) -> None:
    """The model options; with ``repeat_model``, --model may be given once per model (a list)."""
    group = parser.add_argument_group("model")
    if repeat_model:
        group.add_argument("--model", action="append", help="local model folder; repeat it to compare models "
                                                            "(default: the embedded demo model)")
    else:
        group.add_argument("--model", help="local model folder (default: the embedded demo model)")
    group.add_argument("--device", default="auto", help="auto, cpu, cuda or mps (default: auto)")
    group.add_argument("--dtype", default="auto", help="auto, float32, float16 or bfloat16")
    group.add_argument("--placement", choices=["auto"], help="spread a large model over GPUs and CPU (accelerate)")
    group.add_argument("--max-memory", action="append", default=[], metavar="DEVICE=SIZE",
                       help="with --placement auto: cap a device, e.g. 0=20GiB or cpu=64GiB (repeatable)")
    group.add_argument("--offload-folder", help="with --placement auto: a folder for weights that fit on no device")
    group.add_argument("--quantize", choices=["4bit", "8bit"],
                       help="load the weights in 4 or 8 bits (bitsandbytes: pip install 'lvlm-studio[quant]'; CUDA)")
    group.add_argument("--allow-pickle", action="store_true",
                       help="allow pickle weights (.bin) from a source you trust")
    group.add_argument("--trust-remote-code", action="store_true", help="run the model folder's own Python code")


def add_question_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--image", required=True, help="image file (PNG, JPEG, ...)")
    parser.add_argument("--prompt", required=True, help="question or instruction about the image")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    parser.add_argument("--seed", type=seed, default=0, help="seed for sampling (default 0)")
    parser.add_argument("--temperature", type=float, default=1.0)


def load(args: argparse.Namespace):
    from lvlm_studio.core.models.loading import load_model

    options = load_options(args)
    status(f"loading {args.model or 'the demo model'} ...")
    started = time.perf_counter()
    loaded = load_model(args.model, options)
    status(f"loaded {loaded.family} on {loaded.device} in {time.perf_counter() - started:.1f} s")
    return loaded, time.perf_counter() - started


def load_options(args: argparse.Namespace):
    """The ``LoadOptions`` of the model options (``add_model_options``)."""
    from lvlm_studio.core.models.loading import LoadOptions

    max_memory = {}
    for item in args.max_memory:
        device, _, size = item.partition("=")
        if not size:
            raise InputError(f"--max-memory {item!r} is not DEVICE=SIZE.", "Example: --max-memory 0=20GiB.")
        max_memory[device] = size
    return LoadOptions(device=args.device, dtype=args.dtype, placement=args.placement,
                       max_memory=max_memory or None, offload_folder=args.offload_folder,
                       quantization=args.quantize, allow_pickle=args.allow_pickle,
                       trust_remote_code=args.trust_remote_code)


def add_ray_options(parser: argparse.ArgumentParser) -> None:
    """``--ray [ADDRESS]`` and ``--ray-replicas N``, for any command that runs a dataset's samples."""
    group = parser.add_argument_group("Ray cluster (pip install 'lvlm-studio[ray]'; docs/cluster.md)")
    group.add_argument("--ray", nargs="?", const=LOCAL_RAY, metavar="ADDRESS",
                       help="spread the samples over a Ray cluster, one model replica per GPU (else per CPU): "
                            "no ADDRESS starts a local Ray, 'auto' or HOST:PORT joins a running one; the model "
                            "folder (and --images/--coco) must be at the same path on every node")
    group.add_argument("--ray-replicas", type=int, metavar="N",
                       help="with --ray: this many replicas (default: one per GPU, or per CPU without GPUs)")


#: ``--ray`` given without an address: a new local Ray (ended with the run).
LOCAL_RAY = "local"


def check_ray_options(args: argparse.Namespace) -> bool:
    """Whether ``--ray`` was given (``--ray-replicas`` checked), before any model loads."""
    if args.ray is None and args.ray_replicas is not None:
        raise InputError("--ray-replicas goes with --ray.", "Add --ray, or drop --ray-replicas.")
    if args.ray_replicas is not None:
        check_at_least("--ray-replicas", args.ray_replicas)
    return args.ray is not None


def replica_pool(args: argparse.Namespace, folder: str | None):
    """The Ray replicas ``--ray`` asks for, each loading the model in ``folder`` (None: the demo
    model) itself; None without ``--ray``."""
    from lvlm_studio.core.models.replicas import ReplicaPool

    if not check_ray_options(args):
        return None
    options = load_options(args)
    address = None if args.ray == LOCAL_RAY else args.ray
    status(f"starting model replicas on {'a local Ray' if address is None else 'the Ray cluster ' + address} ...")
    pool = ReplicaPool(folder, options, address, args.ray_replicas)
    status(f"{len(pool)} {pool.slot} replicas of {folder or 'the demo model'}")
    return pool


def trace(args: argparse.Namespace, loaded, image):
    from lvlm_studio.core.tracing.trace import generate_trace

    status("generating ...")
    return generate_trace(loaded, image, args.prompt, max_new_tokens=args.max_new_tokens,
                          do_sample=args.sample, seed=args.seed, temperature=args.temperature)


def status(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def check_prompt(prompt: str) -> None:
    if not prompt.strip():
        raise InputError("the prompt is empty.", "Type a question or instruction about the image, e.g. "
                                                 "--prompt 'describe the image.'.")


def check_at_least(option: str, value: int, minimum: int = 1) -> None:
    if value < minimum:
        raise InputError(f"{option} is {value}; it must be at least {minimum}.",
                         f"Example: {option} {max(minimum, 1)}.")


def check_number(option: str, value: float | None, example: str, minimum: float | None = None,
                 maximum: float | None = None, above: bool = False) -> None:
    """A finite number within bounds (``above``: strictly greater than ``minimum``); None (not given) passes.
    argparse's float() takes "nan" and "inf", and NaN passes every comparison."""
    if value is None:
        return
    low = minimum is not None and (value <= minimum if above else value < minimum)
    if not math.isfinite(value) or low or (maximum is not None and value > maximum):
        bounds = [f"{'above' if above else 'at least'} {minimum:g}" if minimum is not None else "",
                  f"at most {maximum:g}" if maximum is not None else ""]
        wanted = " and ".join(b for b in bounds if b)
        raise InputError(f"{option} is {value}; it must be a finite number{' ' + wanted if wanted else ''}.",
                         f"Example: {option} {example}.")


def check_question(args: argparse.Namespace):
    """Prompt, generation options and image of ``ask`` and ``explain``; returns the opened image."""
    check_prompt(args.prompt)
    check_at_least("--max-new-tokens", args.max_new_tokens)
    check_number("--temperature", args.temperature, "0.7", minimum=0, above=True)
    return open_image(args.image)


def check_colormap(name: str) -> None:
    from matplotlib import colormaps

    if name not in colormaps:
        raise InputError(f"--colormap {name!r} is not a matplotlib colormap.",
                         "Try inferno, viridis, magma or turbo.")


def parse_params(items: list[str]) -> dict[str, str]:
    params = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise InputError(f"--param {item!r} is not NAME=VALUE.", "Example: --param layers=0,1.")
        params[name.strip()] = value.strip()
    return params


def token_numbers(text: str | None) -> list[int] | None:
    """The answer tokens ``--tokens`` names (None: all); its form is checked before any work."""
    if not text or text == "all":
        return None
    try:
        chosen = [int(t) for t in text.split(",")]
    except ValueError:
        chosen = []
    if not chosen or min(chosen) < 0:
        raise InputError(f"--tokens {text!r} is not a list of answer token numbers (0 is the first).",
                         "Example: --tokens 0,2.")
    return chosen


def parse_tokens(text: str | None, count: int) -> list[int]:
    if count == 0:
        raise InputError("the model gave an empty answer; there is no token to explain.",
                         "Try another prompt or more --max-new-tokens.")
    chosen = token_numbers(text)
    if chosen is None:
        return list(range(count))
    bad = [t for t in chosen if not 0 <= t < count]
    if bad:
        raise InputError(f"answer token {bad[0]} does not exist.", f"The answer has tokens 0 to {count - 1}.")
    return chosen


class progress_bar:
    """tqdm on stderr for a job's progress reports."""

    def __init__(self, title: str):
        self.title = title
        self.bar = None

    def __enter__(self):
        from tqdm import tqdm

        def update(progress) -> None:
            if self.bar is None:
                self.bar = tqdm(total=progress.total, desc=self.title, file=sys.stderr, leave=False)
            self.bar.total = progress.total
            self.bar.n = progress.done
            self.bar.set_postfix_str(progress.message, refresh=True)

        return update

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.close()
