"""What the published checkpoints are, where to get them, and where groundiff looks for them.

The facts live in ``groundiff_core/data/checksums.json`` (one place, read by the loader's error
messages and by ``groundiff doctor``). The paper's model is looked for in the folder given by the
caller, else ``$GROUNDIFF_PAPER_DIR``, else ``~/.cache/groundiff/paper`` (``$XDG_CACHE_HOME``
respected).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path

__all__ = ["checksums", "cache_root", "default_paper_dir", "PaperFiles", "find_paper_files", "missing_paper_message",
           "PAPER_DIR_ENV", "published_weights", "text_encoder_source"]

PAPER_DIR_ENV = "GROUNDIFF_PAPER_DIR"


@lru_cache(maxsize=1)
def checksums() -> dict:
    """The parsed ``checksums.json``."""
    return json.loads(resources.files("groundiff_core").joinpath("data/checksums.json").read_text())


def cache_root() -> Path:
    """``$XDG_CACHE_HOME/groundiff`` (default ``~/.cache/groundiff``)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "groundiff"


def default_paper_dir() -> Path:
    """``$GROUNDIFF_PAPER_DIR`` or ``~/.cache/groundiff/paper``."""
    env = os.environ.get(PAPER_DIR_ENV)
    return Path(env).expanduser() if env else cache_root() / "paper"


@dataclass(frozen=True)
class PaperFiles:
    """Where each part of the paper's model is (``None``: not found)."""

    root: Path | None
    autoencoder: Path | None
    diffusion_model: Path | None
    text_encoder: Path | None
    tokenizer: Path | None

    def missing(self) -> list[str]:
        return [name for name in ("autoencoder", "diffusion_model", "text_encoder", "tokenizer")
                if getattr(self, name) is None]


def _first(*candidates: Path | None, is_dir: bool = False) -> Path | None:
    for c in candidates:
        if c is not None and (c.is_dir() if is_dir else c.is_file()):
            return c
    return None


def _text_dirs(text_encoder: Path | None, root: Path | None) -> tuple[Path | None, Path | None]:
    """(text_encoder dir, tokenizer dir) from an SD root, a text_encoder folder, or the paper root."""
    cands_te: list[Path] = []
    cands_tok: list[Path] = []
    if text_encoder is not None:
        t = Path(text_encoder).expanduser()
        cands_te += [t / "text_encoder", t]
        cands_tok += [t / "tokenizer", t.parent / "tokenizer", t]
    if root is not None:
        for base in (root, root / "stable-diffusion-2-1-base"):
            cands_te.append(base / "text_encoder")
            cands_tok.append(base / "tokenizer")
    te = next((c for c in cands_te if (c / "config.json").is_file()), None)
    tok = next((c for c in cands_tok if (c / "vocab.json").is_file() or (c / "tokenizer.json").is_file()), None)
    return te, tok


def text_encoder_source(text_encoder: str | Path) -> Path:
    """A local folder for ``--text-encoder``: the path itself, or a Hub id's snapshot in the local HF cache.

    ``"stabilityai/stable-diffusion-2-1-base"`` (any ``owner/name`` that is not an existing path)
    is looked up in the Hugging Face cache without touching the network (:func:`.hub.cached_snapshot`).
    """
    from groundiff_core.models.loading.hub import cached_snapshot, looks_like_repo_id

    path = Path(text_encoder).expanduser()
    if path.exists() or not looks_like_repo_id(str(text_encoder)):
        return path
    return cached_snapshot(str(text_encoder))


def find_paper_files(root: str | Path | None = None, *, autoencoder: str | Path | None = None,
                     diffusion_model: str | Path | None = None, text_encoder: str | Path | None = None,
                     tokenizer: str | Path | None = None) -> PaperFiles:
    """Locate the paper's files: explicit paths first, then ``root`` and ``root/models`` (the bundle's layout).

    The text encoder may be given as the SD 2.1 base folder (holding ``text_encoder/`` and
    ``tokenizer/``) or as the ``text_encoder`` folder itself; by default it is looked for in
    ``root`` and ``root/stable-diffusion-2-1-base``.
    """
    r = Path(root).expanduser() if root is not None else None
    ae = _first(Path(autoencoder).expanduser() if autoencoder else None,
                *( (r / "autoencoder.pth", r / "models" / "autoencoder.pth") if r else ()))
    dm = _first(Path(diffusion_model).expanduser() if diffusion_model else None,
                *((r / "diffusion_model.pth", r / "models" / "diffusion_model.pth") if r else ()))
    te, tok = _text_dirs(text_encoder_source(text_encoder) if text_encoder else None, r)
    if tokenizer is not None:
        t = Path(tokenizer).expanduser()
        tok = t if ((t / "vocab.json").is_file() or (t / "tokenizer.json").is_file()) else None
    return PaperFiles(root=r, autoencoder=ae, diffusion_model=dm, text_encoder=te, tokenizer=tok)


def published_weights(part: str) -> str:
    """Where the published weights of ``part`` ("autoencoder" / "diffusion_model") are, as both bundles name them."""
    bundle = checksums()["paper"]["monai_bundle"]
    entry = bundle["files"][f"{part}.pth"]
    names = " or ".join(f"{b['files'][part]} ({key})" for key, b in bundle["bundles"].items())
    return (f"The published {part} weights: {entry['url']} (MD5 {entry['md5']}), saved as {names}; "
            f"{bundle['repository']}, {bundle['path']}, large_files.yml.")


def missing_paper_message(files: PaperFiles, where: Path | None) -> str:
    """A message listing the paper model's expected files, which are missing, where to get and put them."""
    c = checksums()["paper"]
    bundle = c["monai_bundle"]
    te = c["text_encoder"]
    place = where or files.root or default_paper_dir()
    status = {name: ("found  " if getattr(files, name) is not None else "MISSING")
              for name in ("autoencoder", "diffusion_model", "text_encoder", "tokenizer")}
    lines = [
        f"the paper's model is incomplete in {place} (missing: {', '.join(files.missing())}). Expected:",
        f"  [{status['autoencoder']}] autoencoder.pth      - MONAI model zoo bundle '{bundle['name']}': "
        f"{bundle['files']['autoencoder.pth']['url']} (MD5 {bundle['files']['autoencoder.pth']['md5']})",
        f"  [{status['diffusion_model']}] diffusion_model.pth  - same bundle: "
        f"{bundle['files']['diffusion_model.pth']['url']} (MD5 {bundle['files']['diffusion_model.pth']['md5']}); "
        f"{bundle['repository']}, {bundle['path']}, large_files.yml (the model-zoo port names them autoencoder.pt "
        "and model.pt)",
        f"  [{status['text_encoder']}] text_encoder/        - the 'text_encoder' folder of {te['repository']} "
        f"({te['url']})",
        f"  [{status['tokenizer']}] tokenizer/           - the 'tokenizer' folder of the same repository",
        f"Put them in {place} (the .pth files may also sit in its models/ subfolder, as in the bundle), or point "
        f"${PAPER_DIR_ENV} (CLI: --paper-dir) at the folder that holds them. Nothing is downloaded unless you pass "
        "allow_download=True (it fetches the text encoder and tokenizer from the Hugging Face Hub; the MONAI "
        "checkpoints must be fetched by hand). To evaluate as in the paper you also need MS-CXR "
        f"({checksums()['data']['ms_cxr']['url']}, credentialed) and MIMIC-CXR-JPG "
        f"({checksums()['data']['mimic_cxr_jpg']['url']}). `groundiff doctor` shows what is found.",
    ]
    return "\n".join(lines)
