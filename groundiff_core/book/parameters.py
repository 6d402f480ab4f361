"""Notebook parameters: what a notebook declares, what a profile sets, what ``-p key value`` overrides.

A notebook declares its parameters in the cell tagged ``parameters``; papermill's own
``inspect_notebook`` reads that cell (name, default as source text, type from an annotation or a
``# type:`` comment, the trailing comment as help), so the runner injects exactly what papermill
would. :func:`injected_parameters` then picks, per notebook, the profile's values and the overrides
that the notebook declares; an override that no selected notebook declares is refused
(:func:`refuse_undeclared`), so a typo never runs the whole book on its defaults.
"""

from __future__ import annotations

import ast
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

__all__ = [
    "PROFILES",
    "Parameter",
    "declared_parameters",
    "injected_parameters",
    "parse_value",
    "profile_parameters",
    "refuse_undeclared",
    "check_value",
    "RUN_FIRST",
]

# Parameters per profile: "*" applies to every notebook that declares the parameter, a notebook's
# own entry overrides it. The notebooks' defaults are the full book (``make book``); ``quick`` is
# the CI profile (``make book-quick``), sized to build the whole book in minutes on 2 CPU cores.
# Notebook 2 keeps the paper's preset in both profiles: only the number of pairs shrinks. The full
# profile reads the shipped runs (notebooks 2, 3, 4); the quick one reads them where it costs little.
PROFILES: dict[str, dict[str, dict[str, Any]]] = {
    "full": {},
    "quick": {
        "*": {"n_pairs": 8, "phantom_images": 60},
        "01_method": {"num_inference_steps": 100},
        "02_main_table": {"n_pairs": 8, "qualitative_classes": 3, "recheck_pairs": 4},  # always the paper's preset
        "03_ablation": {"n_pairs": 4, "num_inference_steps": 50, "fast_recheck_pairs": 2},
        # live on 8 pairs: reading the 428-pair shipped run draws a dozen of its pairs at 300 steps (minutes)
        "04_failure_cases": {"n_pairs": 8, "prompt_pairs": 1, "shipped_run": ""},
        # live on 2 pairs with lighter settings: the shipped runs are made with the page's own settings
        "05_captum": {"n_pairs": 2, "shown_pairs": 2, "token_pairs": 1, "ig_steps": 8, "n_samples": 4,
                      "objective_draws": 2, "shipped_run": ""},
    },
}

# The longest notebooks of the full profile (their runtimes in book/_generated/reproducibility.json),
# started first when the runner executes notebooks in parallel (--jobs), so that they do not end last.
RUN_FIRST = ("05_captum", "03_ablation", "04_failure_cases")


@dataclass(frozen=True)
class Parameter:
    """One declared parameter, as papermill's ``inspect_notebook`` reads it.

    ``default`` is the source text of the default (``"phantom"`` with its quotes); ``type_name`` the
    annotation, else the type of a literal default (``"int"``, ``"NoneType"``), else None;
    ``help`` the comment at the end of its line.
    """

    name: str
    default: str
    type_name: str | None = None
    help: str = ""

    @property
    def value(self) -> Any:
        """The default as a Python value when it is a literal, else its source text."""
        try:
            return ast.literal_eval(self.default)
        except (ValueError, SyntaxError):
            return self.default


def declared_parameters(notebook) -> dict[str, Parameter]:
    """The parameters of the cell tagged ``parameters``, in order: ``{name: Parameter}``.

    ``notebook``: an ``nbformat`` notebook (e.g. from :func:`groundiff_core.book.sources.read_source`)
    or the path of a jupytext ``.py`` source or an ``.ipynb``. Empty if no cell is tagged
    ``parameters``. papermill reads one assignment per line (a value may continue over the next
    lines); a line with two ``=`` is not a parameter for it, hence not for the runner either.
    """
    import nbformat
    import papermill

    if isinstance(notebook, (str, Path)):
        path = Path(notebook)
        if not path.is_file():
            raise FileNotFoundError(f"notebook {path} does not exist")
        if path.suffix != ".ipynb":
            from groundiff_core.book.sources import read_source

            notebook = read_source(path)
        else:
            return _from_inspection(papermill.inspect_notebook(str(path)))
    with tempfile.TemporaryDirectory(prefix="groundiff-params-") as tmp:
        path = Path(tmp) / "notebook.ipynb"
        nbformat.write(notebook, str(path))
        return _from_inspection(papermill.inspect_notebook(str(path)))


def _from_inspection(found: Mapping[str, Mapping[str, Any]]) -> dict[str, Parameter]:
    """papermill's ``{name: {name, inferred_type_name, default, help}}`` as :class:`Parameter` s."""
    out = {}
    for name, p in found.items():
        default, annotated = str(p.get("default", "")), p.get("inferred_type_name")
        if annotated and annotated != "None":  # papermill's word for "no annotation"
            type_name = annotated
        else:
            try:
                type_name = type(ast.literal_eval(default)).__name__
            except (ValueError, SyntaxError):
                type_name = None
        out[name] = Parameter(name, default, type_name, str(p.get("help") or ""))
    return out


def parse_value(text: str) -> Any:
    """A ``-p key value`` value: a Python literal (int, float, list, ``None``, ``True``), the
    words true/false/none in any case, or else the string itself."""
    low = text.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def profile_parameters(profile: str, name: str) -> dict[str, Any]:
    """The values ``profile`` sets for notebook ``name`` (its own entry over the ``"*"`` entry)."""
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; choose one of {sorted(PROFILES)}")
    table = PROFILES[profile]
    return {**table.get("*", {}), **table.get(name, {})}


def injected_parameters(
    name: str,
    declared: Mapping[str, Parameter],
    *,
    profile: str = "full",
    overrides: Mapping[str, Any] | None = None,
    output_dir: str | None = None,
) -> dict[str, Any]:
    """What papermill injects into notebook ``name``: the profile's values, then ``overrides``, each
    only if the notebook declares it, and ``output_dir`` if given and declared. A declared boolean
    takes a strict yes/no/true/false, so that ``-p flag no`` can never mean true."""
    inject = {k: v for k, v in profile_parameters(profile, name).items() if k in declared}
    for k, v in (overrides or {}).items():
        if k in declared:
            if declared[k].type_name != "bool":
                check_value(k, v, declared[k], name)
            inject[k] = v
    for k in inject:
        if declared[k].type_name == "bool":
            from groundiff_core.engine.config import parse_bool

            inject[k] = parse_bool(inject[k], f"notebook parameter {k!r} of {name}")
    if output_dir is not None and "output_dir" in declared:
        inject["output_dir"] = output_dir
    return inject


# counts: a parameter named like these must be a non-negative integer (0 often means "all")
_COUNT_PREFIXES = ("n_",)
_COUNT_SUFFIXES = ("_pairs", "_images", "_steps", "_draws", "_classes", "_samples")


def check_value(name: str, value: Any, param: Parameter, notebook: str) -> None:
    """A ``ValueError`` naming ``-p name value`` when the value does not fit the notebook's declared
    parameter: its type (that of the annotation or the literal default; ``None`` admits anything)
    and, for counts (``n_*``, ``*_pairs``, ``*_steps``, ...), a non-negative integer."""
    kind = param.type_name
    where = f"-p {name} {value!r}: notebook {notebook} declares {name} = {param.default}"
    is_int = isinstance(value, int) and not isinstance(value, bool)
    if kind == "int" and not is_int:
        raise ValueError(f"{where}, an integer; got {type(value).__name__}")
    if kind == "float" and not (is_int or isinstance(value, float)):
        raise ValueError(f"{where}, a number; got {type(value).__name__}")
    if kind == "str" and not isinstance(value, str):
        raise ValueError(f"{where}, a string; got {type(value).__name__}")
    if kind == "list" and not isinstance(value, (list, tuple)):
        raise ValueError(f"{where}, a list such as [1, 2]; got {type(value).__name__}")
    count = name.startswith(_COUNT_PREFIXES) or name.endswith(_COUNT_SUFFIXES)
    if count and kind in ("int", "NoneType") and value is not None and (not is_int or value < 0):
        raise ValueError(f"{where}, a count: give a non-negative integer")


def refuse_undeclared(overrides: Iterable[str], declared: Iterable[str]) -> None:
    """ValueError naming the overrides that none of the selected notebooks declares."""
    declared = set(declared)
    unknown = sorted(set(overrides) - declared)
    if unknown:
        raise ValueError(
            f"parameter(s) {unknown} are declared by none of the selected notebooks; "
            f"declared: {sorted(declared)}"
        )
