"""``groundiff ground``: heatmaps of one or more phrases on one image.

Example::

    groundiff ground --model phantom --image cxr.png --phrase "left pleural effusion" \\
        --phrase "cardiomegaly" --out maps.npy --overlay overlay.png

Writes ``maps.npy`` (float32 ``[K, H, W]`` on the original grid, NaN outside the model's crop) and
``maps.json`` beside it (phrases, settings, model identity), and optionally an overlay PNG.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from groundiff_core.commands import add_model_options, model_options, silence_progress_bars

__all__ = ["register", "run", "config_from_args"]


def register(subparsers) -> None:
    p = subparsers.add_parser("ground", help="ground phrases on an image (the paper's method)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="model source: phantom, tiny, paper, or a model folder "
                   "(diffusers layout, MONAI bundle, MONAI checkpoints)")
    add_model_options(p)
    p.add_argument("--image", required=True, help="image file (PNG/JPEG 8/16-bit, DICOM)")
    p.add_argument("--phrase", action="append", required=True, help="phrase to ground (repeat for several)")
    p.add_argument("--out", required=True, help="output .npy file: float32 [K, H, W], NaN outside the crop")
    p.add_argument("--overlay", help="also write an overlay PNG of the heatmaps on the image")
    p.add_argument("--preset", default="paper", choices=["paper", "fast"],
                   help="starting settings: paper (default) or fast (100 steps, the window scaled to keep the "
                   "paper's proportions, about 3x cheaper)")
    p.add_argument("--conventions", choices=("paper", "strict"), default="paper",
                   help="paper (default): resize and back-projection as the authors' evaluation; strict: "
                   "the exact inverse of the crop (see groundiff_core.conventions)")
    p.add_argument("--steps", type=int, help="inference steps (the window keeps its share of the steps)")
    p.add_argument("--layers", help="cross-attention layers in execution order, e.g. 3,4,6,7")
    p.add_argument("--middle-layers", type=int, metavar="L", help="read the L middle cross-attention layers")
    p.add_argument("--window", help="inversion steps read, start:stop (stop excluded), e.g. 120:180")
    p.add_argument("--window-percent", type=float, metavar="T", help="window of T%% of the steps around the middle")
    p.add_argument("--no-smooth", action="store_true", help="skip the Gaussian filter")
    p.add_argument("--no-otsu", action="store_true", help="skip the Otsu threshold")
    p.add_argument("--inversion-cache", type=Path, metavar="DIR", help="keep the image's inversion in DIR "
                   "(content-keyed): a later phrase or setting on the same image, model and steps skips it")
    p.add_argument("--device", default="auto", help="auto (CUDA, MPS, CPU), cpu, cuda, cuda:1, mps")
    p.add_argument("--dtype", default="auto",
                   help="auto (float16 on an accelerator, else as stored), float32, float16, bfloat16")
    bars = p.add_mutually_exclusive_group()
    bars.add_argument("--progress", action="store_true", help="show a progress bar over the inversion steps")
    bars.add_argument("--no-progress", action="store_true",
                      help="no progress bar at all, also none while a MONAI checkpoint is converted on its first load")
    p.set_defaults(func=run)


def check_outputs(out: str, overlay: str | None, image: str | None = None) -> tuple[Path, Path | None]:
    """The ``--out`` and ``--overlay`` paths, refused before any work if they cannot be written as named.

    ``--out`` must end in ``.npy`` (NumPy would otherwise append it, writing a file other than the one
    named); ``--overlay`` must have an image extension matplotlib can write. Neither, nor the JSON
    record written beside ``--out`` (``maps.json``), may be a folder, the input ``image``, or the other.
    """
    out_path = Path(out)
    if out_path.suffix.lower() != ".npy":
        raise ValueError(f"--out {out}: the maps are written as a NumPy array, so the name must end in .npy "
                         f"(e.g. {out_path.with_suffix('.npy').name})")
    paths = [("--out", out_path)]
    overlay_path = None
    if overlay:
        from matplotlib.backend_bases import FigureCanvasBase

        overlay_path = Path(overlay)
        kinds = FigureCanvasBase.get_supported_filetypes()
        if overlay_path.suffix.lower().lstrip(".") not in kinds:
            raise ValueError(f"--overlay {overlay}: unknown image extension {overlay_path.suffix or '(none)'!r}; "
                             f"use one of {', '.join('.' + k for k in sorted(kinds))}")
        paths.append(("--overlay", overlay_path))
    paths.append(("the maps' JSON record beside --out,", out_path.with_suffix(".json")))
    for flag, path in paths:
        if path.is_dir():
            raise ValueError(f"{flag} {path} is a folder; name the file to write")
        if image is not None and _same_file(path, Path(image)):
            raise ValueError(f"{flag} {path} is the input image (--image {image}); writing it would replace the "
                             "radiograph: name another file")
    if overlay_path is not None and _same_file(out_path, overlay_path):
        raise ValueError(f"--out and --overlay name the same file ({out}); name two files")
    return out_path, overlay_path


def _same_file(a: Path, b: Path) -> bool:
    """Whether two paths name one file (the same path, or two names of one existing file)."""
    if a.resolve() == b.resolve():
        return True
    try:
        return a.exists() and b.exists() and a.samefile(b)
    except OSError:
        return False


def config_from_args(args: argparse.Namespace):
    """The :class:`~groundiff_core.engine.config.GroundingConfig` the command line asks for."""
    from groundiff_core.engine.config import GroundingConfig, parse_layers

    window = None
    if args.window:
        parts = args.window.split(":")
        try:
            window = tuple(int(v) for v in parts)
        except ValueError:
            window = ()
        if len(window) != 2:
            raise ValueError(f"--window must be start:stop, e.g. 120:180; got {args.window!r}")
    if args.layers and args.middle_layers is not None:
        raise ValueError("give --layers or --middle-layers, not both")
    if args.window and args.window_percent is not None:
        raise ValueError("give --window or --window-percent, not both")
    try:
        layers = parse_layers(args.layers) if args.layers else None
    except ValueError as e:
        raise ValueError(f"--layers: {e}") from None
    return GroundingConfig.preset(getattr(args, "preset", "paper")).override(
        steps=args.steps, layers=layers,
        middle_layers=args.middle_layers, window=window, window_percent=args.window_percent,
        smooth=False if args.no_smooth else None, otsu=False if args.no_otsu else None,
        conventions=getattr(args, "conventions", None) or None)


def _device_and_dtype(device: str, dtype: str):
    import torch

    from groundiff_core.models.loading import resolve_device, resolve_dtype

    dev = resolve_device(device)
    if dtype == "auto":  # half precision on an accelerator; on the CPU keep the stored precision
        return dev, (torch.float16 if dev.type in ("cuda", "mps") else None)
    return dev, resolve_dtype(dtype)


def write_overlay(path: str | Path, image01, heatmaps) -> None:
    """PNG with one panel per phrase: the image in gray, the heatmap on top (NaN = transparent)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    k = len(heatmaps.phrases)
    h, w = image01.shape
    fig, axes = plt.subplots(1, k, figsize=(3.2 * k * w / max(h, w) + 0.2, 3.6), squeeze=False)
    for ax, phrase, m in zip(axes[0], heatmaps.phrases, heatmaps.heatmaps):
        ax.imshow(image01, cmap="gray", vmin=0, vmax=1)
        ax.imshow(np.ma.masked_where(~(m > 0), m), cmap="jet", alpha=0.45, vmin=0, vmax=1)
        ax.set_title(phrase, fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from groundiff_core.engine.grounder import Grounder
    from groundiff_core.io.images import load_image
    from groundiff_core.models.loading import load_model

    # every option is checked before any work: settings, output names, device, then the image
    cfg = config_from_args(args)
    out, overlay = check_outputs(args.out, args.overlay, args.image)
    device, dtype = _device_and_dtype(args.device, args.dtype)
    image = load_image(args.image)  # fail early on a bad image, before loading a model
    if args.no_progress:
        silence_progress_bars()
    model = load_model(args.model, **model_options(args))
    if model.device != device or (dtype is not None and model.dtype != dtype):
        model.to(device=device, dtype=dtype)
    cache = None
    if args.inversion_cache is not None:
        from groundiff_core.engine.kept import InversionCache

        cache = InversionCache(args.inversion_cache)
    result = Grounder(model, cfg, progress=args.progress and not args.no_progress,
                      inversion_cache=cache).ground(image, args.phrase)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "wb") as f:  # a file object: numpy writes exactly this name
        np.save(f, result.heatmaps)
    meta = {"image": str(args.image), "phrases": result.phrases, "shape": list(result.heatmaps.shape),
            "model": model.identity(), "device": str(model.device), "dtype": str(model.dtype).removeprefix("torch."),
            **{k: v for k, v in result.info.items() if k != "model"}}
    meta_path = out.with_suffix(".json")
    meta_path.write_text(json.dumps(meta, indent=2) + "\n")
    if overlay is not None:
        overlay.parent.mkdir(parents=True, exist_ok=True)
        write_overlay(overlay, image, result)
    print(f"wrote {out} ({len(result.phrases)} x {image.shape[0]} x {image.shape[1]}) and {meta_path}"
          + (f" and {overlay}" if overlay is not None else ""))
    return 0
