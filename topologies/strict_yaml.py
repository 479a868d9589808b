"""YAML files read strictly: UTF-8 text only, safe constructors only, duplicate keys refused.

PyYAML silently keeps the last of two equal keys, so a config or topology file that says
`steps: 10` twice, with different values, would run with whichever came last. A binary or
UTF-16 file would surface as a decoding traceback. Both are one-line errors here. Configs and
topology files share this reader (dvae_q imports it from here, the lowest layer).
"""

from __future__ import annotations

from pathlib import Path

import yaml


class YAMLFileError(ValueError):
    """A file that is not strict YAML text; the message is one line naming the file."""


class _StrictLoader(yaml.SafeLoader):
    pass


def _mapping(loader: _StrictLoader, node, deep=False):
    loader.flatten_mapping(node)
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        seen.add(key)
    return yaml.SafeLoader.construct_mapping(loader, node, deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)


def loads(text: str, where: str):
    """Parse YAML `text`; YAMLFileError naming `where` and the line on any problem."""
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" (line {mark.line + 1})" if mark is not None else ""
        problem = getattr(exc, "problem", None) or ""
        detail = f": {problem}" if problem.startswith("duplicate key") else ""
        raise YAMLFileError(f"{where}: not valid YAML{line}{detail}") from None


def load_file(path: Path, where: str | None = None):
    """Read and parse the YAML file `path` (UTF-8 text, no NUL bytes)."""
    path = Path(path)
    where = where or str(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise YAMLFileError(f"{where}: cannot read ({exc.strerror or type(exc).__name__})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise YAMLFileError(f"{where}: not UTF-8 text (a binary or UTF-16 file?)") from None
    if "\x00" in text:
        raise YAMLFileError(f"{where}: not a text file (it contains NUL bytes)")
    return loads(text, where)
