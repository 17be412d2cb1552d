"""The registry of model families: each family's SPEC (model_defs/<family>/spec.py), by name.

Nodes never branch on family names: they read a FamilySpec (model_defs/spec.py). Adding a family means
adding its package and one line here.
"""

from __future__ import annotations

from .hunyuan_image.spec import SPEC as HUNYUAN_IMAGE
from .qwen_image.spec import SPEC as QWEN_IMAGE
from .spec import FamilySpec

FAMILIES: dict[str, FamilySpec] = {spec.name: spec for spec in (QWEN_IMAGE, HUNYUAN_IMAGE)}


def family_spec(name: str) -> FamilySpec:
    try:
        return FAMILIES[name]
    except KeyError:
        raise ValueError(f"unknown model family {name!r}; known: {', '.join(FAMILIES)}") from None


def family_by_display_name(display_name: str) -> FamilySpec:
    for spec in FAMILIES.values():
        if spec.display_name == display_name:
            return spec
    raise ValueError(f"unknown model family {display_name!r}; known: "
                     f"{', '.join(s.display_name for s in FAMILIES.values())}")
