"""``groundiff doctor``: what is installed, which models are on this machine, and whether the paper's
reproduction can run here. It only looks: nothing is downloaded, converted or written.

The paper's folder is ``--paper-dir``, else ``$GROUNDIFF_PAPER_DIR``, else ``~/.cache/groundiff/paper``.
A MONAI bundle folder (``--model DIR``, or the paper's folder when it holds a bundle config) is shown
as the loader reads it: the definitions found by ``_target_``, the architecture, schedule and scale
factor with where each came from, and whether each checkpoint fits its definition (checked on
shapes only).
Checkpoints are opened memory-mapped (tensors only) to count their tensors and parameters against the
published architecture recorded in ``groundiff_core/data/checksums.json``; ``--hash`` also computes
their SHA-256 (slow for GB-sized files).
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

__all__ = ["register", "run", "report"]

PACKAGES = ("groundiff_core", "torch", "numpy", "diffusers", "transformers", "safetensors", "huggingface_hub",
            "monai", "einops", "captum", "pydicom", "scikit-image", "scipy", "papermill", "jupyter-book")
OPTIONAL = {"monai": "only to test the MONAI conversion", "einops": "needed by MONAI's attention blocks",
            "captum": "Captum comparisons", "pydicom": "DICOM input", "papermill": "building the book",
            "jupyter-book": "building the book"}


def register(subparsers) -> None:
    p = subparsers.add_parser("doctor", help="report versions, devices, locally available models and whether "
                                             "the paper's reproduction can run")
    p.add_argument("--paper-dir", default=None,
                   help="folder with the paper's model (default: $GROUNDIFF_PAPER_DIR or ~/.cache/groundiff/paper)")
    p.add_argument("--model", metavar="DIR", default=None,
                   help="a MONAI bundle folder to inspect (definitions, architecture, checkpoints)")
    p.add_argument("--text-encoder", metavar="DIR", default=None,
                   help="with --model: the Stable Diffusion 2.1 base folder, if the text encoder is not in the bundle")
    p.add_argument("--hash", action="store_true", help="also compute the SHA-256 of each checkpoint (slow)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=run)


def _versions() -> dict[str, str | None]:
    from groundiff_core.util.environment import versions

    return versions(PACKAGES)


def _devices() -> dict:
    from groundiff_core.util.environment import hardware

    hw = hardware()
    return {"cpu_threads": hw["cpu_threads"], "cuda": hw["cuda_devices"], "mps": hw["mps"]}


def _phantom() -> dict:
    try:
        from groundiff_core.phantom.model import WEIGHTS_DIR
    except ImportError as e:
        return {"found": False, "problem": f"phantom package not importable: {e}"}
    found = (WEIGHTS_DIR / "model_index.json").is_file()  # what load_phantom reads first
    return {"found": found, "path": str(WEIGHTS_DIR),
            **({} if found else {"problem": "weights not shipped; train them with python -m groundiff_core.phantom.train"})}


def _inspect_checkpoint(path: Path, expected: dict) -> dict:
    """Tensor and parameter counts of a checkpoint against the published ones.

    Read with the loader's own :func:`~groundiff_core.models.loading.checkpoints.read_state_dict` (memory-mapped
    where the format allows), so the doctor calls a file unreadable exactly when the loader cannot read it.
    """
    from groundiff_core.models.loading.checkpoints import read_state_dict

    info: dict = {}
    try:
        state = read_state_dict(path, mmap=True)
    except (ValueError, OSError) as e:  # unsafe, corrupt or not a state dict: report, do not fail
        return {"readable": False, "problem": f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"}
    tensors = list(state.values())
    info.update(readable=True, tensors=len(tensors), parameters=int(sum(t.numel() for t in tensors)))
    variants = expected.get("variants") or {"published": expected}
    match = next((name for name, v in variants.items()
                  if v.get("tensors") == info["tensors"] and v.get("parameters") == info["parameters"]), None)
    info["matches_published"] = match
    return info


def _paper(paper_dir: str | None, hash_files: bool) -> dict:
    from groundiff_core.models.loading.catalog import PAPER_DIR_ENV, checksums, default_paper_dir, find_paper_files
    from groundiff_core.util.fingerprint import file_sha256

    if paper_dir:
        root, origin = Path(paper_dir).expanduser(), "--paper-dir"
    else:
        root, origin = default_paper_dir(), (f"${PAPER_DIR_ENV}" if os.environ.get(PAPER_DIR_ENV) else "default")
    files = find_paper_files(root)
    facts = checksums()["paper"]
    out: dict = {"dir": str(root), "dir_from": origin, "files": {}, "problems": []}
    for name, fname in (("autoencoder", "autoencoder.pth"), ("diffusion_model", "diffusion_model.pth")):
        path = getattr(files, name)
        entry: dict = {"path": None if path is None else str(path)}
        if path is None:
            out["problems"].append(f"{fname} not found")
        else:
            expected = facts["monai_bundle"]["files"][fname]
            entry["size"] = path.stat().st_size
            entry.update(_inspect_checkpoint(path, expected))
            if hash_files:
                entry["sha256"], entry["md5"] = file_sha256(path), file_sha256(path, "md5")
                if expected.get("sha256"):
                    entry["sha256_matches"] = entry["sha256"] == expected["sha256"]
                if expected.get("md5"):  # the published bundles give MD5 only
                    entry["md5_matches"] = entry["md5"] == expected["md5"]
            if not entry.get("readable"):
                out["problems"].append(f"{fname} unreadable: {entry.get('problem')}")
            elif entry.get("matches_published") is None:
                out["problems"].append(f"{fname} has {entry['tensors']} tensors / {entry['parameters']} parameters, "
                                       "not the published architecture's (load it with unet_config=/autoencoder_config=)")
        out["files"][fname] = entry
    hidden = None
    for name in ("text_encoder", "tokenizer"):
        path = getattr(files, name)
        out["files"][name] = {"path": None if path is None else str(path)}
        if path is None:
            out["problems"].append(f"{name}/ not found")
    if files.text_encoder is not None:
        try:
            hidden = json.loads((files.text_encoder / "config.json").read_text()).get("hidden_size")
        except (OSError, ValueError):
            hidden = None
        want = facts["text_encoder"]["folders"]["text_encoder"]["hidden_size"]
        out["files"]["text_encoder"]["hidden_size"] = hidden
        if hidden != want:
            out["problems"].append(f"text encoder hidden size {hidden}, the paper's is {want} (SD 2.1 base)")
    from groundiff_core.models.loading.paper import cached_conversion

    folder = cached_conversion(files)
    cache = None if folder is None else {"path": str(folder), "current": True}
    out["converted_cache"] = cache
    out["ready"] = not out["problems"]
    return out


_LAYOUTS = {"generative": "old GenerativeModels", "monai": "MONAI core"}


def _layout(part: str, state: dict, load_old: bool | None) -> str:
    """The key layout read from the tensors, and whether it agrees with the bundle's ``load_old``."""
    from groundiff_core.models.loading import monai_autoencoder, monai_unet

    module = monai_unet if part == "diffusion_model" else monai_autoencoder
    try:
        found = module.detect_layout(state)
    except ValueError as e:
        return str(e)
    text = f"{_LAYOUTS[found]} layout"
    if load_old is not None:
        declared = "generative" if load_old else "monai"
        text += (" (as load_old says)" if declared == found else
                 f" (load_old says {_LAYOUTS[declared]}; groundiff converts what the tensors are)")
    return text


def _fits(part: str, path: Path, spec) -> tuple[bool, str | None, str | None]:
    """Whether a checkpoint fits the bundle's definition: the converter's own key and shape check.

    The UNet is checked on meta tensors (shapes only); the autoencoder on the memory-mapped file
    (its conversion builds a few small tensors from the real ones).
    """
    import torch

    from groundiff_core.models.loading.monai_autoencoder import autoencoder_state_for_diffusers
    from groundiff_core.models.loading.monai_unet import unet_state_for_diffusers

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # noqa: BLE001 - a corrupt file is a finding of the doctor, not a crash
        return False, f"not a readable PyTorch checkpoint ({type(e).__name__}: {e})"[:300], None
    state = obj.get("state_dict", obj) if isinstance(obj, dict) else {}
    layout = _layout(part, state, spec.load_old)
    latent = spec.input_size // 2 ** (len(spec.autoencoder_config.channels) - 1)
    try:
        if part == "diffusion_model":
            meta = {k: torch.empty(v.shape, dtype=v.dtype, device="meta") for k, v in state.items()}
            unet_state_for_diffusers(meta, spec.unet_config, latent)
        else:
            autoencoder_state_for_diffusers(state, spec.autoencoder_config, spec.input_size, spec.scale_factor)
    except ValueError as e:  # first sentence: which tensor does not fit (the rest is a hint for the paper loader)
        return False, re.split(r"\. (?=[A-Z])", str(e).splitlines()[0])[0], layout
    return True, None, layout


def _bundle(folder: str, text_encoder: str | None, hash_files: bool) -> dict:
    """What the loader finds in a MONAI bundle folder, without converting or writing anything."""
    from groundiff_core.models.loading.bundle import find_bundle_config, read_bundle
    from groundiff_core.models.loading.catalog import find_paper_files
    from groundiff_core.util.fingerprint import file_sha256

    root = Path(folder).expanduser()
    out: dict = {"dir": str(root), "config": None, "problems": []}
    config = find_bundle_config(root)
    if config is None:
        out["problems"].append("no configs/inference.json or .yaml (not a MONAI bundle)")
        out["ready"] = False
        return out
    out["config"] = str(config)
    try:
        spec = read_bundle(root)
    except (ValueError, OSError) as e:
        out["problems"].append(str(e))
        out["ready"] = False
        return out
    out.update({k: v for k, v in spec.summary().items() if k != "checkpoints"})
    out["checkpoints"] = {}
    for part, definition in (("autoencoder", spec.autoencoder), ("diffusion_model", spec.unet)):
        path = spec.checkpoints[part]
        entry: dict = {"path": None if path is None else str(path), "definition": definition.key}
        if path is None:
            from groundiff_core.models.loading.catalog import published_weights

            entry["published"] = published_weights(part)
            out["problems"].append(f"no {part} checkpoint (see the files considered)")
        else:
            entry["size"] = path.stat().st_size
            entry.update(_inspect_checkpoint(path, {}))
            entry.pop("matches_published", None)
            if entry.get("readable"):
                entry["fits"], problem, entry["layout"] = _fits(part, path, spec)
                if problem:
                    entry["problem"] = problem
                    out["problems"].append(f"{path.name} does not fit {definition.key}: {problem}")
            else:
                out["problems"].append(f"{path.name} unreadable: {entry.get('problem')}")
            if hash_files:
                from groundiff_core.models.loading.catalog import checksums

                entry["sha256"], entry["md5"] = file_sha256(path), file_sha256(path, "md5")
                entry["md5_matches"] = entry["md5"] == checksums()["paper"]["monai_bundle"]["files"][f"{part}.pth"]["md5"]
        out["checkpoints"][part] = entry
    files = find_paper_files(None if text_encoder else root, text_encoder=text_encoder)
    te: dict = {"path": None if files.text_encoder is None else str(files.text_encoder),
                "tokenizer": None if files.tokenizer is None else str(files.tokenizer)}
    if files.text_encoder is None or files.tokenizer is None:
        out["problems"].append("no text_encoder/ + tokenizer/ in the bundle folder (pass --text-encoder DIR)")
    else:
        try:
            te["hidden_size"] = json.loads((files.text_encoder / "config.json").read_text()).get("hidden_size")
        except (OSError, ValueError):
            te["hidden_size"] = None
        if te["hidden_size"] != spec.unet_config.cross_attention_dim:
            out["problems"].append(f"text encoder hidden size {te['hidden_size']}, the UNet attends to "
                                   f"{spec.unet_config.cross_attention_dim}")
    out["text_encoder"] = te
    out["ready"] = not out["problems"]
    return out


def report(paper_dir: str | None = None, hash_files: bool = False, model: str | None = None,
           text_encoder: str | None = None) -> dict:
    """The doctor's findings as a JSON-able dict (``model``: a MONAI bundle folder to inspect)."""
    from groundiff_core.models.loading.bundle import find_bundle_config
    from groundiff_core.models.loading.catalog import checksums
    from groundiff_core.models.loading.hub import hub_offline

    devices = _devices()
    paper = _paper(paper_dir, hash_files)
    reasons = list(paper["problems"])
    models = {"tiny": {"found": True}, "phantom": _phantom(), "paper": paper}
    if model is None and find_bundle_config(paper["dir"]) is not None:
        model = paper["dir"]
    if model is not None:
        models["bundle"] = _bundle(model, text_encoder, hash_files)
    return {
        "versions": _versions(),
        "devices": devices,
        "offline": {"HF_HUB_OFFLINE": hub_offline()},
        "models": models,
        "paper_reproduction": {
            "can_run": not reasons,
            "reasons": reasons,
            "accelerator": bool(devices["cuda"] or devices["mps"]),
            "data": {k: v["url"] for k, v in checksums()["data"].items()},
        },
    }


def _fmt_size(n: int | None) -> str:
    return "" if n is None else f"{n / 1e6:.1f} MB"


def _print(rep: dict) -> None:
    v = rep["versions"]
    core = ", ".join(f"{k} {v[k]}" for k in ("python", "groundiff_core", "torch", "diffusers", "transformers", "numpy"))
    optional = ", ".join(f"{k} {v[k] or 'not installed'}" for k in PACKAGES
                         if k not in ("groundiff_core", "torch", "numpy", "diffusers", "transformers"))
    d = rep["devices"]
    cuda = "; ".join(f"{g['name']} ({g['memory_gib']} GiB)" for g in d["cuda"]) or "not available"
    lines = ["groundiff doctor", f"  versions  {core}", f"            {optional}",
             f"  devices   CPU ({d['cpu_threads']} threads); CUDA: {cuda}; MPS: {'yes' if d['mps'] else 'no'}",
             f"  offline   HF_HUB_OFFLINE={'1' if rep['offline']['HF_HUB_OFFLINE'] else 'unset'} "
             "(groundiff never downloads unless asked)",
             "  models", "    tiny      available (random weights, for tests and examples)"]
    ph = rep["models"]["phantom"]
    lines.append(f"    phantom   {'found: ' + ph['path'] if ph['found'] else 'NOT FOUND: ' + ph.get('problem', '')}")
    p = rep["models"]["paper"]
    lines.append(f"    paper     folder {p['dir']} (from {p['dir_from']})")
    for name, entry in p["files"].items():
        mark = "found  " if entry.get("path") else "MISSING"
        extra = ""
        if entry.get("path") and name.endswith(".pth"):
            if entry.get("readable"):
                match = entry.get("matches_published")
                verdict = f"published architecture ({match})" if match else "NOT the published architecture"
                extra = (f"  {_fmt_size(entry.get('size'))}, {entry['tensors']} tensors, {entry['parameters']:,} "
                         f"parameters: {verdict}")
            else:
                extra = f"  unreadable: {entry.get('problem')}"
            if "sha256" in entry:
                extra += f", sha256 {entry['sha256']}, md5 {entry['md5']}"
                if "md5_matches" in entry:
                    extra += " (the published file)" if entry["md5_matches"] else " (NOT the published file's MD5)"
        if name == "text_encoder" and entry.get("path"):
            extra = f"  hidden size {entry.get('hidden_size')}"
        lines.append(f"              [{mark}] {name:<20}{entry.get('path') or ''}{extra}")
    cache = p["converted_cache"]
    lines.append("              converted cache: " + (
        f"{cache['path']} (made from these files)" if cache
        else "none yet (made on first load, in the user cache, never beside the checkpoints)"))
    if "bundle" in rep["models"]:
        lines.extend(_bundle_lines(rep["models"]["bundle"]))
    r = rep["paper_reproduction"]
    if r["can_run"]:
        lines.append("  paper reproduction: READY" + ("" if r["accelerator"] else
                     " (no GPU found: the 512x512 model runs on CPU, but slowly)"))
    else:
        lines.append("  paper reproduction: NOT READY - " + "; ".join(r["reasons"]))
        lines.append("    load_model('paper') (or `groundiff ground --model paper`) says where to get each missing file")
    lines.append(f"  data      MS-CXR {r['data']['ms_cxr']} and MIMIC-CXR-JPG {r['data']['mimic_cxr_jpg']} "
                 "(credentialed, not checked here)")
    print("\n".join(lines))


def _bundle_lines(b: dict) -> list[str]:
    lines = [f"    bundle    folder {b['dir']}"]
    if b.get("config"):
        lines.append(f"              config {b['config']}")
    if "definitions" in b:
        d, a, sc = b["definitions"], b["architecture"], b["schedule"]
        lines.append(f"              autoencoder     {d['autoencoder']['key']} = {d['autoencoder']['target']}: "
                     f"channels {a['autoencoder_channels']}, latent channels {a['latent_channels']}, "
                     f"image channels {a['image_channels']}")
        lines.append(f"              diffusion UNet  {d['unet']['key']} = {d['unet']['target']}: channels "
                     f"{a['unet_channels']}, attention {a['attention_levels']}, heads {a['heads']}, "
                     f"cross-attention dim {a['cross_attention_dim']}")
        sched = d["scheduler"]
        lines.append(f"              scheduler       {sched['key'] + ' = ' + sched['target'] if sched else 'none'}: "
                     f"{sc['beta_schedule']} betas {sc['beta_start']}..{sc['beta_end']} over "
                     f"{sc['num_train_timesteps']} steps, {sc['prediction_type']} ({b['sources']['schedule']})")
        lines.append(f"              scale factor {b['scale_factor']} ({b['sources']['scale_factor']}); input "
                     f"{b['input_size']} px ({b['sources']['input_size']})")
        for part, entry in b["checkpoints"].items():
            mark = "found  " if entry.get("path") else "MISSING"
            extra = ""
            if entry.get("readable"):
                verdict = (f"fits {entry['definition']}" if entry.get("fits")
                           else f"does NOT fit {entry['definition']}: {entry.get('problem')}")
                extra = (f"  {_fmt_size(entry.get('size'))}, {entry['tensors']} tensors, {entry['parameters']:,} "
                         f"parameters: {verdict}")
            elif entry.get("path"):
                extra = f"  unreadable: {entry.get('problem')}"
            elif entry.get("published"):
                extra = entry["published"]
            if entry.get("layout"):
                extra += f", {entry['layout']}"
            lines.append(f"              [{mark}] {part:<20}{entry.get('path') or ''}{extra}")
        lines.append("              files considered:" if b.get("considered") else
                     "              files considered: none (no weight file named by the config or in the folder)")
        for c in b.get("considered", []):
            lines.append(f"                {'taken' if c['taken'] else 'left '}  {c['path']}: {c['why']}")
        te = b["text_encoder"]
        mark = "found  " if te.get("path") and te.get("tokenizer") else "MISSING"
        extra = f"  hidden size {te.get('hidden_size')}" if te.get("path") else ""
        lines.append(f"              [{mark}] {'text_encoder':<20}{te.get('path') or ''}{extra}")
    lines.append("              bundle: " + ("READY" if b["ready"] else "NOT READY - " + "; ".join(b["problems"])))
    return lines


def run(args) -> int:
    rep = report(args.paper_dir, args.hash, model=getattr(args, "model", None),
                 text_encoder=getattr(args, "text_encoder", None))
    if args.json:
        json.dump(rep, sys.stdout, indent=2)
        print()
    else:
        _print(rep)
    return 0
