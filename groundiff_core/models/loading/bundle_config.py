"""Reading a MONAI bundle config: the file, its ``@key`` references and its ``_target_`` definitions.

This module knows MONAI's config syntax and nothing about networks: :func:`parse_config` reads the
JSON or YAML file, :class:`Resolver` resolves ``"@key"`` references (``#`` separates nested keys,
as in MONAI) and :func:`find_definitions` finds, by their ``_target_`` class and never by key name,

- the autoencoder: ``AutoencoderKL`` of ``generative.networks.nets`` (MONAI GenerativeModels) or
  ``monai.networks.nets`` (MONAI core >= 1.4),
- the diffusion UNet: ``DiffusionModelUNet`` of the same packages,
- when present, the training noise scheduler (``DDPMScheduler``, ``DDIMScheduler``,
  ``PNDMScheduler`` of ``generative.networks.schedulers`` or ``monai.networks.schedulers``) and a
  ``LatentDiffusionInferer`` (``generative.inferers`` / ``monai.inferers``) for the latent scale factor.

Python expressions (``"$..."``) and macros (``"%..."``) are not run: an argument that needs one is
a :class:`BundleError` naming the file and the key. The one kind of expression that is read is a
sum of references and quoted strings (``"$@model_dir + '/model.pt'"``), by :meth:`Resolver.text`,
which parses it and never evaluates it: the same files hold expressions that download models.
:func:`declared_weights` lists the weight files a config names and, from the references between
its entries, which definition each one is loaded into. What the definitions mean (architecture,
schedule, scale factor) is read in :mod:`.bundle`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

__all__ = ["BundleError", "Definition", "Definitions", "CONFIG_NAMES", "find_bundle_config", "parse_config",
           "Resolver", "find_definitions", "Declared", "declared_weights", "WEIGHT_SUFFIXES"]

CONFIG_NAMES = ("configs/inference.json", "configs/inference.yaml", "configs/inference.yml",
                "inference.json", "inference.yaml", "inference.yml")

_NETS = ("generative.networks.nets", "monai.networks.nets")
_SCHEDULERS = ("generative.networks.schedulers", "monai.networks.schedulers")
_INFERERS = ("generative.inferers", "monai.inferers")
_MONAI_PACKAGES = ("generative.", "monai.")
# role -> (packages, accepted class names, what the error calls it)
_ROLES: dict[str, tuple[tuple[str, ...], tuple[str, ...], str]] = {
    "autoencoder": (_NETS, ("AutoencoderKL",), "autoencoder"),
    "unet": (_NETS, ("DiffusionModelUNet",), "diffusion UNet"),
    "scheduler": (_SCHEDULERS, ("DDPMScheduler", "DDIMScheduler", "PNDMScheduler"), "noise scheduler"),
    "inferer": (_INFERERS, ("LatentDiffusionInferer",), "latent diffusion inferer"),
}
# bundle syntax inside a definition that is not a constructor argument
_BUNDLE_KEYS = ("_target_", "_requires_", "_disabled_", "_desc_", "_mode_")
_REFERENCE = re.compile(r"\$?@([A-Za-z0-9_]+(?:(?:#|::)[A-Za-z0-9_]+)*)")  # "@key", "@a#b", "$@key"
_ID = r"([A-Za-z0-9_]+(?:(?:#|::)[A-Za-z0-9_]+)*)"
_ANY_REFERENCE = re.compile("@" + _ID)
# one term of a "$a + b" string sum: a reference, or a quoted string without escapes
_TERM = re.compile(r"\s*(?:@" + _ID + r"|'([^'\\]*)'|\"([^\"\\]*)\")\s*")
WEIGHT_SUFFIXES = (".pt", ".pth", ".ckpt", ".safetensors", ".bin")


class BundleError(ValueError):
    """A bundle config that cannot be read; the message names the file and the key."""


@dataclass(frozen=True)
class Definition:
    """One ``_target_`` definition of a bundle: where it is, its class, its resolved arguments."""

    key: str  # MONAI id, nested keys joined by '#', e.g. "diffusion_def" or "inferer#scheduler"
    target: str
    args: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Definitions:
    """The definitions of one config that groundiff uses (scheduler and inferer are optional)."""

    autoencoder: Definition
    unet: Definition
    scheduler: Definition | None
    inferer: Definition | None  # only its ``scale_factor`` argument is kept


def find_bundle_config(folder: str | Path) -> Path | None:
    """The bundle's inference config in ``folder`` (``configs/`` first, then the top), or ``None``."""
    root = Path(folder).expanduser()
    return next((root / name for name in CONFIG_NAMES if (root / name).is_file()), None)


def parse_config(path: Path) -> dict:
    """The config file as a mapping (JSON, or YAML through PyYAML); :class:`BundleError` if unreadable."""
    try:
        text = path.read_text()
    except OSError as e:
        raise BundleError(f"{path}: cannot read the bundle config ({e.strerror or e})") from None
    try:
        if path.suffix == ".json":
            data = json.loads(text)
        else:
            try:
                import yaml
            except ImportError:
                raise BundleError(f"{path}: reading a YAML bundle config needs PyYAML (pip install pyyaml)") from None
            data = yaml.safe_load(text)
    except BundleError:
        raise
    except Exception as e:  # json.JSONDecodeError, yaml.YAMLError: the parser's message says where
        raise BundleError(f"{path}: not valid {path.suffix.lstrip('.').upper()}: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise BundleError(f"{path}: the bundle config must be a mapping of keys, got {type(data).__name__}")
    return data


class Resolver:
    """Resolves ``"@id"`` (and the plain-reference expression ``"$@id"``) within one config."""

    def __init__(self, data: dict, path: Path):
        self.data, self.path = data, path

    def lookup(self, ref: str, where: str) -> Any:
        """The entry that ``@ref`` names; ``where`` (the referring key) goes into the error."""
        node: Any = self.data
        for part in ref.replace("::", "#").split("#"):
            if isinstance(node, dict) and part in node:
                node = node[part]
            elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            else:
                raise BundleError(f"{self.path}: {where}: the reference '@{ref}' names no entry of the config")
        return node

    def resolve(self, value: Any, where: str, seen: tuple[str, ...] = ()) -> Any:
        """``value`` with every reference replaced by what it names (recursively, cycles refused)."""
        if isinstance(value, dict):
            return {k: self.resolve(v, f"{where}#{k}", seen) for k, v in value.items()}
        if isinstance(value, list):
            return [self.resolve(v, f"{where}#{i}", seen) for i, v in enumerate(value)]
        if not isinstance(value, str):
            return value
        m = _REFERENCE.fullmatch(value)
        if m is not None:
            ref = m.group(1)
            if ref in seen:
                raise BundleError(f"{self.path}: {where}: circular reference '@{ref}'")
            return self.resolve(self.lookup(ref, where), where, (*seen, ref))
        if value.startswith(("$", "%", "@")):
            raise BundleError(
                f"{self.path}: {where}: cannot resolve {value!r} (groundiff reads plain values and '@key' "
                "references, and runs no '$' expressions or '%' macros); write the value itself there")
        return value

    def text(self, value: Any, where: str, seen: tuple[str, ...] = ()) -> str | None:
        """A string value as text: plain, ``"@key"``, or ``"$"`` followed by a sum of ``@key`` references
        and quoted strings (``"$@model_dir + '/model.pt'"``), parsed, never evaluated. ``None`` for
        anything else (another expression, a number, a missing or circular reference)."""
        if not isinstance(value, str):
            return None
        if value.startswith(("%", "@")) and _REFERENCE.fullmatch(value) is None:
            return None
        body = value[1:] if value.startswith("$") else value
        if not value.startswith(("$", "@")):
            return value
        parts, pos = [], 0
        while True:
            m = _TERM.match(body, pos)
            if m is None:
                return None
            ref, single, double = m.groups()
            if ref is not None:
                if ref in seen:
                    return None
                try:
                    target = self.lookup(ref, where)
                except BundleError:
                    return None
                piece = self.text(target, where, (*seen, ref))
                if piece is None:
                    return None
                parts.append(piece)
            else:
                parts.append(single if single is not None else double)
            pos = m.end()
            if pos == len(body):
                return "".join(parts)
            if body[pos] != "+":
                return None
            pos += 1

    def number(self, key: str, value: Any, kind=float):
        """``value`` resolved and converted by ``kind``; :class:`BundleError` naming ``key`` if not a number."""
        value = self.resolve(value, key)
        try:
            return kind(value)
        except (TypeError, ValueError):
            raise BundleError(f"{self.path}: {key}: expected a number, got {value!r}") from None


def _walk(node: Any, key: str = "") -> Iterator[tuple[str, dict]]:
    """Every dict with a string ``_target_`` (not disabled), with its MONAI id."""
    if isinstance(node, dict):
        if isinstance(node.get("_target_"), str) and node.get("_disabled_") not in (True, "true", "True", 1):
            yield key, node
        for k, v in node.items():
            yield from _walk(v, f"{key}#{k}" if key else str(k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _walk(v, f"{key}#{i}")


def _role_of(target: str) -> str | None:
    module, _, cls = target.rpartition(".")
    for role, (packages, classes, _) in _ROLES.items():
        if cls in classes and any(module == p or module.startswith(p + ".") for p in packages):
            return role
    return None


def _definition(resolver: Resolver, key: str, node: dict) -> Definition:
    args = {k: resolver.resolve(v, f"{key}#{k}") for k, v in node.items() if k not in _BUNDLE_KEYS}
    return Definition(key=key, target=node["_target_"], args=args)


def _find(found: dict[str, list[tuple[str, dict]]], role: str, path: Path, others: list[tuple[str, str]],
          required: bool) -> tuple[str, dict] | None:
    hits = found.get(role, [])
    if len(hits) > 1:
        keys = ", ".join(f"{k} ({n['_target_']})" for k, n in hits)
        raise BundleError(f"{path}: more than one {_ROLES[role][2]} definition: {keys}; keep one")
    if hits:
        return hits[0]
    if not required:
        return None
    packages, classes, what = _ROLES[role]
    wanted = " or ".join(f"{p}.{c}" for p in packages for c in classes)
    seen = "; ".join(f"{k}: {t}" for k, t in others) or "none"
    raise BundleError(f"{path}: no {what} definition (a '_target_' of {wanted}); MONAI definitions found: {seen}")


def find_definitions(resolver: Resolver) -> Definitions:
    """The autoencoder, UNet (both required, one each), scheduler and inferer of the resolver's config."""
    found: dict[str, list[tuple[str, dict]]] = {}
    others: list[tuple[str, str]] = []
    for key, node in _walk(resolver.data):
        role = _role_of(node["_target_"])
        if role is not None:
            found.setdefault(role, []).append((key, node))
        elif node["_target_"].startswith(_MONAI_PACKAGES):
            others.append((key, node["_target_"]))
    path = resolver.path
    ae = _definition(resolver, *_find(found, "autoencoder", path, others, True))
    unet = _definition(resolver, *_find(found, "unet", path, others, True))
    hit = _find(found, "scheduler", path, others, False)
    scheduler = None if hit is None else _definition(resolver, *hit)
    hit = _find(found, "inferer", path, others, False)
    inferer = None
    if hit is not None:  # only its scale factor matters; its scheduler is found on its own above
        key, node = hit
        inferer = Definition(key, node["_target_"], {k: v for k, v in node.items() if k == "scale_factor"})
    return Definitions(autoencoder=ae, unet=unet, scheduler=scheduler, inferer=inferer)


@dataclass(frozen=True)
class Declared:
    """A weight file that a config names: the entry, the path as written, and what it is loaded into."""

    key: str
    path: str
    role: str | None  # "autoencoder", "unet" or None (the references do not say)
    via: str  # how the role was read, for ``groundiff doctor``


def _references(value: Any) -> set[str]:
    """The top-level ids of every ``@id`` in a (nested) value."""
    if isinstance(value, str):
        return {m.group(1).replace("::", "#").split("#")[0] for m in _ANY_REFERENCE.finditer(value)}
    if isinstance(value, dict):
        return set().union(*(_references(v) for v in value.values())) if value else set()
    if isinstance(value, list):
        return set().union(*(_references(v) for v in value)) if value else set()
    return set()


def _reaches(data: dict, start: str, stop: set[str]) -> set[str]:
    """The ids of ``stop`` that the string entry ``start`` reaches through references between string entries."""
    found, todo, seen = set(), [start], set()
    while todo:
        key = todo.pop()
        if key in seen:
            continue
        seen.add(key)
        if key in stop:
            found.add(key)
            continue
        value = data.get(key)
        if isinstance(value, str):
            todo.extend(_references(value))
    return found


def declared_weights(resolver: Resolver, definitions: Definitions) -> list[Declared]:
    """The weight files the config's top-level entries name (a string ending in a weight suffix), in order.

    The role of each comes from the entries that use it: ``"load_autoencoder": "$@autoencoder_def.
    load_state_dict(torch.load(@load_autoencoder_path))"`` (or through an entry between them, as the
    model zoo's ``load_autoencoder_func``) loads ``load_autoencoder_path`` into the autoencoder. An
    entry whose users reach both definitions, or neither, has no role here; the caller reads the
    file's tensor names instead.
    """
    data = resolver.data
    defs = {definitions.autoencoder.key.split("#")[0]: "autoencoder", definitions.unet.key.split("#")[0]: "unet"}
    # entries that only alias a definition ("network_def": "@diffusion_def") stand for it
    for key, value in data.items():
        m = _REFERENCE.fullmatch(value) if isinstance(value, str) else None
        if m is not None and m.group(1).split("#")[0] in defs and key not in defs:
            defs[key] = defs[m.group(1).split("#")[0]]
    out: list[Declared] = []
    for key, value in data.items():
        path = resolver.text(value, key) if isinstance(value, str) else None
        if path is None or not path.lower().endswith(WEIGHT_SUFFIXES):
            continue
        users = [k for k, v in data.items() if isinstance(v, str) and k != key and key in _references(v)]
        roles: dict[str, str] = {}
        for user in users:
            for hit in _reaches(data, user, set(defs)):
                roles.setdefault(defs[hit], f"{user} loads it into @{hit}")
        if len(roles) == 1:
            (role, via), = roles.items()
        else:
            role, via = None, ("its users reach both networks" if roles else "no entry loads it into a network")
        out.append(Declared(key=key, path=path, role=role, via=via))
    return out
