"""The machinery of the Hugging Face transformers key maps: prefix renaming rules and MLPs.

The HF layouts (`SamModel`, `Sam2Model`, `Sam2VideoModel`) hold the same tensors as Meta's
checkpoints, in the same torch layouts, under other names. A key map therefore names, for
every torch key of a sam_jax model (`keymap.torch_key` of its Flax path), the HF key that
holds its tensor; hf_keymap.py (SAM) and hf_sam2_keymap.py (SAM 2) hold the rules.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

# A rule renames the prefix of a Meta key (a regex matched at the start and ending at a
# component boundary) to an HF prefix: a template with \1-style groups, or a function of the
# match. The rest of the key is kept.
Template = str | Callable[[re.Match[str]], str]
Rule = tuple[str, Template]

# An MLP layer in Meta's layout: `<mlp>.layers.<j>.weight|bias`. No other module of SAM or
# SAM 2 puts a weight directly under `layers.<j>`, which is why one pattern finds them all.
_MLP_LAYER = re.compile(r"(?P<mlp>.+)\.layers\.(?P<j>\d+)\.(?P<leaf>weight|bias)")


@dataclass(frozen=True)
class HFName:
    """Where a Meta tensor lives in an HF checkpoint: `key`, or row `row` of it when HF
    stacks several Meta tensors into one (SAM 2's four point embeddings)."""

    key: str
    row: int | None = None


def compile_rules(rules: Sequence[Rule]) -> list[tuple[re.Pattern[str], Template]]:
    """Rules with their prefixes compiled to match whole key components only."""
    return [(re.compile(prefix + r"(?=\.|$)"), template) for prefix, template in rules]


def apply_rules(key: str, rules: Sequence[tuple[re.Pattern[str], Template]]) -> str | None:
    """The key renamed by the first rule whose prefix matches it, or None."""
    for pattern, template in rules:
        m = pattern.match(key)
        if m:
            head = template(m) if callable(template) else m.expand(template)
            return head + key[m.end() :]
    return None


def mlp_depths(keys: Iterable[str]) -> dict[str, int]:
    """Number of linear layers of each MLP among Meta keys (its prefix -> depth)."""
    depth: dict[str, int] = {}
    for key in keys:
        m = _MLP_LAYER.fullmatch(key)
        if m:
            depth[m["mlp"]] = max(depth.get(m["mlp"], 0), int(m["j"]) + 1)
    return depth


def rename_mlp_layer(key: str, depths: Mapping[str, int]) -> str:
    """Meta's `<mlp>.layers.<j>` -> HF's `<mlp>.proj_in` (first), `<mlp>.proj_out` (last),
    `<mlp>.layers.<j-1>` (hidden); other keys unchanged."""
    m = _MLP_LAYER.fullmatch(key)
    if m is None:
        return key
    j, last = int(m["j"]), depths[m["mlp"]] - 1
    name = "proj_in" if j == 0 else "proj_out" if j == last else f"layers.{j - 1}"
    return f"{m['mlp']}.{name}.{m['leaf']}"


def hf_names(
    meta_keys: Iterable[str],
    rules: Sequence[tuple[re.Pattern[str], Template]],
    special: Callable[[str], HFName | None] = lambda key: None,
) -> dict[str, HFName]:
    """Meta key -> HFName for every key; `special` names keys the prefix rules cannot.

    Raises ValueError listing the keys that have no place in the HF layout.
    """
    keys = list(meta_keys)
    depths = mlp_depths(keys)
    out: dict[str, HFName] = {}
    unplaced = []
    for key in keys:
        name = special(key)
        if name is None:
            renamed = apply_rules(rename_mlp_layer(key, depths), rules)
            name = None if renamed is None else HFName(renamed)
        if name is None:
            unplaced.append(key)
        else:
            out[key] = name
    if unplaced:
        shown = ", ".join(unplaced[:5]) + (", ..." if len(unplaced) > 5 else "")
        raise ValueError(
            f"{len(unplaced)} variable(s) have no place in the transformers layout: {shown}"
        )
    return out
