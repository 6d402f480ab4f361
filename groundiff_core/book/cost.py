"""The book's cost page: what the engine costs, read from the benchmark result files.

    python -m groundiff_core.book.cost book/_generated/cost.md [--results benchmarks/results]

Writes a Markdown fragment that ``book/cost.md`` includes: one section per file of
``benchmarks/results/`` (``engine_cpu*.json`` from ``benchmarks/bench_engine.py``, ``engine_gpu*.json``
from ``benchmarks/bench_gpu.py``), each naming the file, the machine the file records and the date
the file was committed (its modification time outside git). Nothing is measured here: every number
is copied from the JSON, rounded for display.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

__all__ = ["cost_markdown", "cpu_section", "gpu_section", "file_date", "main"]

MIB = 1024 ** 2
CPU_METHODS = {"engine": "engine, paper preset", "engine_no_early_exit": "engine, paper preset, no early exit",
               "engine_fast": "engine, fast preset", "naive": "naive Algorithm 1 (paper preset)"}


def file_date(path: Path) -> str:
    """The date of the last commit of ``path`` (UTC), else its modification time, labelled."""
    try:
        out = subprocess.run(["git", "log", "-1", "--format=%cI", "--", path.name], cwd=path.parent,
                             capture_output=True, text=True, timeout=20).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        out = ""
    if out:
        when = dt.datetime.fromisoformat(out).astimezone(dt.timezone.utc)
        return f"committed {when:%Y-%m-%d %H:%M} UTC"
    when = dt.datetime.fromtimestamp(path.stat().st_mtime, dt.timezone.utc)
    return f"file modified {when:%Y-%m-%d %H:%M} UTC"


def _f(x: Any, digits: int = 2) -> str:
    return "n/a" if x is None else f"{float(x):.{digits}f}"


def _mib(x: Any) -> str:
    return "n/a" if x is None else f"{float(x) / MIB:.1f}"


def _size(x: Any) -> str:
    """Bytes as KiB below 1 MiB, else MiB."""
    if x is None:
        return "n/a"
    return f"{float(x) / 1024:.0f} KiB" if float(x) < MIB else f"{float(x) / MIB:.1f} MiB"


def cpu_section(data: dict, name: str, date: str) -> str:
    """Markdown for one ``bench_engine.py`` result file."""
    m = data.get("model", {})
    lines = [f"### `{name}`", "",
             f"Machine: {data.get('device', '?')}, {data.get('cpu', '?')}, {data.get('cpu_count', '?')} cores, "
             f"torch {data.get('torch', '?')} with {data.get('torch_threads', '?')} thread(s); {date}. "
             f"Model: the benchmark model ({m.get('weights', '?')} weights, {m.get('input_size', '?')} px, "
             f"UNet channels {m.get('unet_channels', '?')}, {m.get('cross_attention_layers', '?')} cross-attention "
             f"layers). Images per measurement: {data.get('images_per_measurement', 1)}, "
             f"{data.get('batch_images', 1)} per engine UNet call (the naive method takes one at a time). "
             f"Times: {data.get('cpu_time', '')}.", ""]
    if data.get("note"):
        lines += [f"*{data['note']}*", ""]
    lines += ["| K phrases | method | UNet samples / image (truncated) | CPU s / image | wall s / image "
              "| recording memory | peak RSS (MiB) | CPU time, naive / this |",
              "|---|---|---|---|---|---|---|---|"]
    for res in data.get("results", []):
        naive_cpu = (res.get("naive") or {}).get("cpu_s_per_image")
        for key, label in CPU_METHODS.items():
            r = res.get(key)
            if not r:
                continue
            ratio = naive_cpu / r["cpu_s_per_image"] if naive_cpu and r.get("cpu_s_per_image") else None
            lines.append(f"| {res['k']} | {label} | {r.get('unet_samples_per_image', 0):.0f} "
                         f"({r.get('unet_samples_truncated_per_image', 0):.0f}) | {_f(r.get('cpu_s_per_image'))} "
                         f"| {_f(r.get('wall_s_per_image'))} | {_size(r.get('recording_bytes'))} "
                         f"| {_mib(r.get('peak_rss_bytes'))} | {_f(ratio)} |")
    lines.append("")
    unet = data.get("paper_unet_512")
    if unet:
        lines += [f"The paper-size UNet ({unet.get('model', '?')}, {unet.get('parameters', 0):,} parameters, "
                  f"{unet.get('input_px', '?')} px input, latent {unet.get('latent', '?')}): one full pass "
                  f"**{_f(unet.get('full_pass_cpu_s'))} CPU s**, one conditional pass truncated after the last "
                  f"recorded layer **{_f(unet.get('truncated_pass_cpu_s'))} CPU s** "
                  f"({_f(unet.get('truncated_over_full'))} of a full pass); peak RSS "
                  f"{_mib(unet.get('peak_rss_bytes'))} MiB. Projected CPU seconds per image-phrase pair "
                  "from these passes:", "",
                  "| K phrases | naive | engine, paper preset | engine, no early exit | engine, fast preset |",
                  "|---|---|---|---|---|"]
        for k, proj in (unet.get("projection") or {}).items():
            c = proj.get("cpu_s_per_pair", {})
            lines.append(f"| {k.lstrip('k')} | {_f(c.get('naive'), 0)} | {_f(c.get('engine'), 0)} "
                         f"| {_f(c.get('engine-noexit'), 0)} | {_f(c.get('engine-fast'), 0)} |")
        lines.append("")
    return "\n".join(lines)


def gpu_section(data: dict, name: str, date: str) -> str:
    """Markdown for one ``bench_gpu.py`` result file (a ``--dry-run`` file is labelled as such)."""
    dry = bool(data.get("dry_run"))
    lines = [f"### `{name}`", "",
             f"Machine: {data.get('device', '?')}{', ' + data['gpu'] if data.get('gpu') else ''}, torch "
             f"{data.get('torch', '?')}; {date}. Model: {data.get('model', '?')} "
             f"({data.get('unet_parameters', 0):,} UNet parameters, {data.get('input_px', '?')} px).", ""]
    if dry:
        lines += ["```{warning}", "A **dry run** on the CPU with a scaled-down model and a few steps: it checks the "
                  "script, and its times say nothing about a GPU.", "```", ""]
    lines += ["| dtype | method | images per inversion | s / pair | pairs / s | peak GPU memory (MiB) |",
              "|---|---|---|---|---|---|"]
    for run in data.get("runs", []):
        for key, label in (("engine", "engine, paper preset"), ("engine_fast", "engine, fast preset")):
            for batch, r in (run.get(key) or {}).items():
                lines.append(f"| {run.get('dtype')} | {label} | {batch} | {_f(r.get('s_per_pair'), 3)} "
                             f"| {_f(r.get('pairs_per_s'))} | {_mib(r.get('peak_gpu_bytes'))} |")
        a = run.get("authors")
        if a:
            lines.append(f"| {run.get('dtype')} | authors-style run | 1 | {_f(a.get('s_per_pair'), 3)} "
                         f"| {_f(a.get('pairs_per_s'))} | {_mib(a.get('peak_gpu_bytes'))} |")
    lines.append("")
    return "\n".join(lines)


def _shown(path: Path) -> str:
    """``path`` relative to the working directory when under it (``benchmarks/results/x.json``)."""
    try:
        return path.resolve().relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return path.as_posix()


def cost_markdown(results_dir: str | Path) -> str:
    """The cost page's generated part for every benchmark file in ``results_dir``."""
    results_dir = Path(results_dir)
    cpu = sorted(results_dir.glob("engine_cpu*.json"))
    gpu = sorted(results_dir.glob("engine_gpu*.json"))
    if not cpu and not gpu:
        raise FileNotFoundError(f"no engine_cpu*.json or engine_gpu*.json in {results_dir} "
                                "(run benchmarks/bench_engine.py)")
    parts = ["## CPU: the engine against the naive Algorithm 1", ""] if cpu else []
    for path in cpu:
        parts.append(cpu_section(json.loads(path.read_text()), _shown(path), file_date(path)))
    if gpu:
        parts += ["## GPU script", ""]
        if all(json.loads(p.read_text()).get("dry_run") for p in gpu):
            parts += ["No result of the GPU benchmark on a GPU is in the repository yet; only its dry run.", ""]
    for path in gpu:
        parts.append(gpu_section(json.loads(path.read_text()), _shown(path), file_date(path)))
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Write the book's cost page fragment from the benchmark results.")
    p.add_argument("out", type=Path, help="the Markdown file to write (book/_generated/cost.md)")
    p.add_argument("--results", type=Path, default=Path("benchmarks/results"), help="benchmark result folder")
    args = p.parse_args(argv)
    text = cost_markdown(args.results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(f"[cost] wrote {args.out} from {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
