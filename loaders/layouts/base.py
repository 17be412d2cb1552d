"""Key layouts: how a file's tensors become the network's tensors, decided from names and shapes alone.

A file stores a model in some layout (ComfyUI's names, the official release's, diffusers'); the network
has one set of names. A `Layout` is a small table of rules, each written as two name templates in which
`{x}` stands for one dot-free name segment (a block number, `img`/`txt`, `weight`/`bias`):

* `rename(file, network)`: the same tensor under another name;
* `fuse(network, *files)`: the network tensor is the file tensors stacked along dim 0 (split q/k/v fused
  into one qkv); a copy, made when the tensor is read;
* `split(file, networks, shares)`: the reverse, each network tensor a row range of the file tensor (a view);
* `swap(file, network)`: the two halves of dim 0 exchanged (AdaLN (scale, shift) vs (shift, scale)).

The first rule whose file template matches a name applies; names no rule matches keep their name.
`Layout.plan(shapes)` turns the file's {name: shape} into a plan {network name: Source}. A Source says
how to read one network tensor (`Take`, `Rows`, `Concat`, `SwapHalves`, `Reshape`; `Empty` for a marker
that a diffusers config.json states as a flag, see `Layout.config_markers`) and what its shape will be,
without reading anything, so the loaders check every name and shape against the network before a byte
is read. `LayoutStateDict` then reads each tensor when asked for it (views where possible, copies
only for Concat / SwapHalves). Quantized tensors (FP8, GGUF) go through the same operations: see
tensor_ops.py for what stays quantized and why that is exact.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Callable

import torch

from ..errors import ModelFileError, summarize_keys
from ..quant.tensor import is_quantized
from . import tensor_ops

Shapes = dict  # {name: tuple of ints}
Reader = Callable[[str], torch.Tensor]  # file name -> tensor (a view of the file)


class LayoutProblem(ValueError):
    """Shapes that do not fit together (turned into a ModelFileError naming the file by the caller)."""


# --- sources: how one network tensor comes from the file --------------------------------------------------
@dataclass(frozen=True)
class Take:
    """A file tensor as it is (a rename)."""

    key: str

    def keys(self) -> tuple[str, ...]:
        return (self.key,)

    def shape(self, shapes: Shapes) -> tuple[int, ...]:
        return tuple(shapes[self.key])

    def read(self, tensor: Reader) -> torch.Tensor:
        return tensor(self.key)


@dataclass(frozen=True)
class Rows:
    """source[start:stop] along dim 0: a view of the file's memory map."""

    source: object
    start: int
    stop: int

    def keys(self):
        return self.source.keys()

    def shape(self, shapes):
        shape = self.source.shape(shapes)
        if not shape or not 0 <= self.start <= self.stop <= shape[0]:
            raise LayoutProblem(f"rows {self.start}:{self.stop} of {_describe(self.source)} with shape {list(shape)}")
        return (self.stop - self.start, *shape[1:])

    def read(self, tensor):
        return tensor_ops.rows(self.source.read(tensor), self.start, self.stop)


@dataclass(frozen=True)
class Concat:
    """The parts stacked along dim 0, in order: a copy, made when the tensor is read."""

    parts: tuple

    def keys(self):
        return tuple(k for part in self.parts for k in part.keys())

    def shape(self, shapes):
        shapes_ = [part.shape(shapes) for part in self.parts]
        if any(not s for s in shapes_) or len({s[1:] for s in shapes_}) != 1:
            found = ", ".join(f"{_describe(p)} {list(s)}" for p, s in zip(self.parts, shapes_))
            raise LayoutProblem(f"parts of different widths cannot be stacked: {found}")
        return (sum(s[0] for s in shapes_), *shapes_[0][1:])

    def read(self, tensor):
        return tensor_ops.cat_rows([part.read(tensor) for part in self.parts])


@dataclass(frozen=True)
class SwapHalves:
    """cat(source[n/2:], source[:n/2]) along dim 0: a copy."""

    source: object

    def keys(self):
        return self.source.keys()

    def shape(self, shapes):
        shape = self.source.shape(shapes)
        if not shape or shape[0] % 2:
            raise LayoutProblem(f"{_describe(self.source)} with shape {list(shape)} has no two equal halves")
        return shape

    def read(self, tensor):
        return tensor_ops.swap_halves(self.source.read(tensor))


@dataclass(frozen=True)
class Reshape:
    """The source's values in another shape of the same size (a 1x1 conv [C, C, 1, 1] as a linear [C, C])."""

    source: object
    to: tuple

    def keys(self):
        return self.source.keys()

    def shape(self, shapes):
        shape = self.source.shape(shapes)
        if math.prod(shape) != math.prod(self.to):
            raise LayoutProblem(f"{_describe(self.source)} with shape {list(shape)} cannot be read as {list(self.to)}")
        return tuple(self.to)

    def read(self, tensor):
        return tensor_ops.reshape(self.source.read(tensor), self.to)


@dataclass(frozen=True)
class Empty:
    """An empty tensor no file tensor backs: a marker the network registers as an empty buffer (ComfyUI's
    Qwen-Image-Edit-2511 `__index_timestep_zero__`), which a file may say in other words instead (a
    diffusers config.json flag; see Layout.config_markers). Shape (0,), float32 as ComfyUI stores it."""

    def keys(self) -> tuple[str, ...]:
        return ()

    def shape(self, shapes) -> tuple[int, ...]:
        return (0,)

    def read(self, tensor) -> torch.Tensor:
        return torch.empty(0, dtype=torch.float32)


def _describe(source) -> str:
    return "+".join(source.keys())


Plan = dict  # {network name: Source}


def plan_shapes(plan: Plan, shapes: Shapes, path=None, description: str = "model") -> dict[str, tuple[int, ...]]:
    """{network name: shape} of everything the plan produces, read from the file's shapes alone."""
    result, problems = {}, []
    for name, source in plan.items():
        try:
            result[name] = source.shape(shapes)
        except LayoutProblem as problem:
            problems.append(f"{name}: {problem}")
    if problems:
        more = f"; ... ({len(problems)} in all)" if len(problems) > 3 else ""
        raise ModelFileError(path, f"has tensors that do not fit together as a {description}",
                             found="; ".join(problems[:3]) + more,
                             hint="The file is damaged, or its parts come from different models.")
    return result


# --- rules: a layout as a small table of name templates --------------------------------------------------
_FIELD = re.compile(r"\{(\w+)\}")


def _compile(template: str) -> re.Pattern:
    """`double_blocks.{i}.img_attn_q.{p}` -> a regex where each {x} matches one dot-free segment."""
    pattern, seen, position = [], set(), 0
    for match in _FIELD.finditer(template):
        pattern.append(re.escape(template[position:match.start()]))
        name = match.group(1)
        pattern.append(f"(?P={name})" if name in seen else f"(?P<{name}>[^.]+)")
        seen.add(name)
        position = match.end()
    pattern.append(re.escape(template[position:]))
    return re.compile("".join(pattern))


@dataclass(frozen=True)
class Rule:
    """One file name template and what it becomes. `part`/`siblings`: this file tensor is rows part `part` of
    the network tensor, stacked with the tensors named by `siblings` (all the parts' file templates, in
    order). `split_into`/`shares`: the file tensor's rows divided among these network names in these
    proportions."""

    file: str
    network: str = ""
    part: int | None = None
    siblings: tuple[str, ...] = ()
    swap_halves: bool = False
    split_into: tuple[str, ...] = ()
    shares: tuple[int, ...] = ()
    pattern: re.Pattern = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "pattern", _compile(self.file))


def rename(file: str, network: str) -> tuple[Rule, ...]:
    return (Rule(file, network),)


def swap(file: str, network: str) -> tuple[Rule, ...]:
    return (Rule(file, network, swap_halves=True),)


def fuse(network: str, *files: str) -> tuple[Rule, ...]:
    """The network tensor is the file tensors `files` stacked along dim 0, in this order."""
    return tuple(Rule(file, network, part=i, siblings=files) for i, file in enumerate(files))


def split(file: str, networks: tuple[str, ...], shares: tuple[int, ...] | None = None) -> tuple[Rule, ...]:
    """The file tensor's rows divided among `networks` in proportions `shares` (equal by default)."""
    return (Rule(file, split_into=tuple(networks), shares=tuple(shares or (1,) * len(networks))),)


@dataclass(frozen=True)
class Layout:
    """A named table of rules (see the module doc). An empty table is the identity layout."""

    name: str
    rules: tuple[Rule, ...] = ()
    description: str = ""
    # {key of the diffusers config.json beside the weights: network tensor name}: a flag that, when true,
    # stands for an empty marker tensor the network has (loaders/layouts/__init__.py adds it as `Empty`),
    # so a diffusers folder and a single file that carries the marker give the same state dict.
    config_markers: Mapping[str, str] = field(default_factory=dict, hash=False)

    def match(self, key: str) -> tuple[Rule, dict] | None:
        for rule in self.rules:
            found = rule.pattern.fullmatch(key)
            if found:
                return rule, found.groupdict()
        return None

    def plan(self, shapes: Shapes, path=None) -> Plan:
        """{network name: Source} for a file with these {name: shape}; a ModelFileError naming the file for
        two tensors that would become one name, a split tensor with parts missing, or a split that does
        not divide its tensor."""
        plan: Plan = {}
        claims: dict[str, list[tuple[str, int | None]]] = {}  # network name -> (file name, part or None)
        groups: dict[str, tuple[Rule, dict, dict[int, str]]] = {}  # fused name -> (rule, fields, {part: key})
        for key in shapes:
            matched = self.match(key)
            if matched is None:
                plan[key] = Take(key)
                claims.setdefault(key, []).append((key, None))
                continue
            rule, fields = matched
            if rule.split_into:
                for name, source in _split_sources(rule, fields, key, shapes, path):
                    plan[name] = source
                    claims.setdefault(name, []).append((key, None))
            elif rule.part is not None:
                name = rule.network.format(**fields)
                groups.setdefault(name, (rule, fields, {}))[2][rule.part] = key
                claims.setdefault(name, []).append((key, rule.part))
            else:
                name = rule.network.format(**fields)
                plan[name] = SwapHalves(Take(key)) if rule.swap_halves else Take(key)
                claims.setdefault(name, []).append((key, None))
        _refuse_clashes(claims, path)

        incomplete = []
        for name, (rule, fields, parts) in groups.items():
            expected = [sibling.format(**fields) for sibling in rule.siblings]
            if len(parts) != len(expected):
                missing = [k for i, k in enumerate(expected) if i not in parts]
                incomplete.append((name, sorted(parts.values()), missing))
                continue
            plan[name] = Concat(tuple(Take(parts[i]) for i in range(len(expected))))
        if incomplete:
            found = "; ".join(f"{', '.join(present)} without {', '.join(missing)}"
                              for _, present, missing in incomplete[:3])
            raise ModelFileError(
                path, f"stores {len(incomplete)} tensors split into parts, with parts missing",
                found=found + (f" ({len(incomplete)} split tensors in all)" if len(incomplete) > 3 else ""),
                expected=f"every part of {summarize_keys([name for name, _, _ in incomplete], 3)}",
                hint="The file is incomplete or damaged; re-download it.",
            )
        return plan


def _refuse_clashes(claims: dict[str, list[tuple[str, int | None]]], path) -> None:
    """Two file tensors that would both be one network tensor (or the same part of it): a file that mixes
    layouts, which would otherwise load one of them silently."""
    clashes = {}
    for name, claimed in claims.items():
        wholes = [key for key, part in claimed if part is None]
        parts = [part for _, part in claimed if part is not None]
        if len(wholes) > 1 or (wholes and parts) or len(parts) != len(set(parts)):
            clashes[name] = sorted(key for key, _ in claimed)
    if clashes:
        name, keys = next(iter(clashes.items()))
        more = f" (and {len(clashes) - 1} more names like it)" if len(clashes) > 1 else ""
        raise ModelFileError(path, f"has tensors that map to the same name {name!r}",
                             found=", ".join(keys) + more,
                             hint="The file mixes two layouts of the same tensors; it is damaged or was "
                                  "written by a faulty converter.")


def _split_sources(rule: Rule, fields: dict, key: str, shapes: Shapes, path):
    shape, whole = tuple(shapes[key]), sum(rule.shares)
    total = shape[0] if shape else 0
    if total % whole:
        raise ModelFileError(path, f"has {key} with {total} rows, which do not divide into "
                             f"{'/'.join(map(str, rule.shares))} parts", hint="The file is damaged.")
    start = 0
    for network, share in zip(rule.split_into, rule.shares):
        stop = start + total // whole * share
        yield network.format(**fields), Rows(Take(key), start, stop)
        start = stop


# --- reading --------------------------------------------------------------------------------------------
class LayoutStateDict(Mapping):
    """The network's state dict over a file: names and shapes known up front (`shapes`), each tensor made
    from the file when it is asked for (views for renames and row ranges; Concat and SwapHalves copy, one
    tensor at a time). Nothing is cached: a tensor lives as long as whoever asked for it keeps it."""

    def __init__(self, plan: Plan, shapes: dict[str, tuple[int, ...]], tensor: Reader):
        self.plan = plan
        self.shapes = shapes  # {network name: shape}, from plan_shapes
        self._tensor = tensor

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.plan[name].read(self._tensor)

    def __iter__(self):
        return iter(self.plan)

    def __len__(self) -> int:
        return len(self.plan)

    def file_keys(self) -> list[str]:
        """Every file tensor the plan reads."""
        return [k for source in self.plan.values() for k in source.keys()]

    def holds_quantized(self) -> bool:
        """Whether any file tensor read is a QuantizedTensor (views only: no data is read)."""
        return any(is_quantized(self._tensor(k)) for k in self.file_keys())

    def copied_elements(self) -> int:
        """How many values loading copies out of the file (fused or swapped tensors) instead of mapping."""
        return sum(math.prod(self.shapes[name]) for name, source in self.plan.items()
                   if isinstance(source, (Concat, SwapHalves)))
