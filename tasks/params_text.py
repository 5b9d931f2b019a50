"""Overrides written into params.yaml as text: only the overridden values change.

DVC's `-S` writer and a YAML round trip both rewrite the file (nulls dropped, quotes and list
styles changed, long lines wrapped). Here each overridden value's span is found from the
parser's marks and replaced by the new value in flow style; a key the file lacks is added as
a line at the end of its section. Everything else stays byte for byte as the user wrote it.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node

from tasks.errors import ConfigError


def flow(value: Any, style: str | None = None) -> str:
    """A value as one line of YAML (flow style, no document end marker); `style` quotes a
    string the way the value it replaces was quoted."""
    text = yaml.safe_dump(value, default_flow_style=True, width=1 << 20, sort_keys=False,
                          default_style=style if isinstance(value, str) else None)
    return text.strip().removesuffix("...").strip()


def with_overrides(text: str, overrides: Mapping[str, Any]) -> str:
    """`text` (a YAML mapping) with each dotted key set to its value."""
    for dotted, value in overrides.items():
        text = _set(text, dotted, value)
    return text


def _set(text: str, dotted: str, value: Any) -> str:
    node: Node | None = yaml.compose(text)
    keys = dotted.split(".")
    if node is None:  # an empty file
        return text + _lines(keys, value, 0)
    for depth, key in enumerate(keys):
        if not isinstance(node, MappingNode):
            raise ConfigError(f"{dotted}: {'.'.join(keys[:depth])} is not a section")
        found = next((v for k, v in node.value if k.value == key), None)
        if found is None:
            return _insert(text, node, keys[depth:], value, dotted)
        parent, node = node, found
    return _replace(text, parent, keys[-1], node, value)


def _replace(text: str, parent: MappingNode, key: str, node: Node, value: Any) -> str:
    """Put `value` where `node` (the value of `key` in `parent`) stands."""
    start, end = node.start_mark.index, node.end_mark.index
    if isinstance(node.value, list) and not node.flow_style:  # a block section or list
        key_node = next(k for k, v in parent.value if v is node)
        start = text.index(":", key_node.end_mark.index) + 1
        end = node.end_mark.index - node.end_mark.column  # the line after the block
        return f"{text[:start]} {flow(value)}\n{text[end:]}"
    style = getattr(node, "style", None)
    new = flow(value, style if style in ("'", '"') else None)
    return text[:start] + new + _keep_comment_column(text[end:], (end - start) - len(new))


def _keep_comment_column(rest: str, shift: int) -> str:
    """The rest of the line after a replaced value, its comment kept in its column."""
    gap = len(rest) - len(rest.lstrip(" "))
    if not rest[gap:].startswith("#") or gap == 0:
        return rest
    return " " * max(1, gap + shift) + rest[gap:]


def _insert(text: str, section: MappingNode, keys: list[str], value: Any, dotted: str) -> str:
    """Add `keys` (the missing part of a dotted key) as lines at the end of `section`."""
    if section.flow_style:
        raise ConfigError(f"{dotted}: cannot add a key to an inline mapping in params.yaml")
    indent = section.value[0][0].start_mark.column if section.value else 0
    last = section.value[-1][1].end_mark.index if section.value else len(text)
    line_end = text.find("\n", last - 1 if text[last - 1:last] == "\n" else last)
    at = len(text) if line_end < 0 else line_end + 1
    prefix = "" if at == 0 or text[at - 1] == "\n" else "\n"
    return text[:at] + prefix + _lines(keys, value, indent) + text[at:]


def _lines(keys: list[str], value: Any, indent: int) -> str:
    """`a:\\n  b: value\\n` for keys [a, b] at `indent`."""
    out = []
    for depth, key in enumerate(keys[:-1]):
        out.append(f"{' ' * (indent + 2 * depth)}{key}:")
    out.append(f"{' ' * (indent + 2 * (len(keys) - 1))}{keys[-1]}: {flow(value)}")
    return "\n".join(out) + "\n"
