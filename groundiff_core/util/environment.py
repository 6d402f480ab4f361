"""What produced a result: package versions, hardware and the git state of the checkout.

Written once for every report of the project: the evaluation summary, the book's reproducibility
record and page provenance, and ``groundiff doctor``. Each function only looks; none raises when a
package, a GPU or git is missing (the entry is then ``None`` or empty).
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any, Sequence

__all__ = ["PACKAGES", "package_versions", "versions", "hardware", "git_state"]

#: The packages whose versions a report lists by default (installed or not).
PACKAGES: tuple[str, ...] = (
    "groundiff_core", "numpy", "torch", "diffusers", "transformers", "scipy", "scikit-image",
    "scikit-learn", "captum",
)


def package_versions(packages: Sequence[str] = PACKAGES) -> dict[str, str | None]:
    """``{package: installed version or None}``, in the order given."""
    out: dict[str, str | None] = {}
    for name in packages:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def versions(packages: Sequence[str] = PACKAGES) -> dict[str, str | None]:
    """The Python version (``python``) followed by :func:`package_versions`."""
    return {"python": platform.python_version(), **package_versions(packages)}


def _cpu_name() -> str:
    """The CPU's model name (Linux: ``/proc/cpuinfo``), else what :mod:`platform` says."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def hardware(*, import_torch: bool = True) -> dict[str, Any]:
    """The machine: ``platform``, ``cpu`` (model name), ``cpu_count``, and from torch
    ``cpu_threads``, ``gpu`` (first CUDA device's name or None), ``cuda`` (torch's CUDA version),
    ``cuda_devices`` (``[{"name", "memory_gib"}]``) and ``mps`` (Apple GPU available).

    ``import_torch=False`` reports the torch entries only when torch is already imported (a cheap
    call for a process that never needed it); without torch they are ``None`` / empty.
    """
    hw: dict[str, Any] = {"platform": platform.platform(), "cpu": _cpu_name(),
                          "cpu_count": os.cpu_count(), "cpu_threads": None, "gpu": None,
                          "cuda": None, "cuda_devices": [], "mps": False}
    torch = sys.modules.get("torch")
    if torch is None and import_torch:
        try:
            import torch
        except ImportError:
            torch = None
    if torch is None:
        return hw
    hw["cpu_threads"] = torch.get_num_threads()
    if torch.cuda.is_available():
        hw["cuda_devices"] = [
            {"name": torch.cuda.get_device_name(i),
             "memory_gib": round(torch.cuda.get_device_properties(i).total_memory / 2**30, 1)}
            for i in range(torch.cuda.device_count())]
        hw["gpu"] = hw["cuda_devices"][0]["name"] if hw["cuda_devices"] else None
        hw["cuda"] = torch.version.cuda
    mps = getattr(torch.backends, "mps", None)
    hw["mps"] = bool(mps is not None and mps.is_available())
    return hw


def git_state(root: str | os.PathLike) -> dict[str, Any]:
    """``{"commit", "dirty"}`` of the git checkout containing ``root``; both None outside one
    (or without git). ``dirty``: whether the tree has uncommitted changes."""
    def git(*args: str) -> str | None:
        try:
            r = subprocess.run(["git", *args], cwd=Path(root), capture_output=True, text=True,
                               timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return r.stdout.strip() if r.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    dirty = git("status", "--porcelain")
    return {"commit": commit, "dirty": bool(dirty) if dirty is not None else None}
