"""Reading a YAML config file: a non-empty mapping, or one line that says why not.

A config may be empty, binary, a directory, not YAML, nested without end, or
give a key twice in one mapping (plain PyYAML keeps the last silently); each is
a one-line :class:`~kdlens.errors.ConfigError` naming the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from kdlens.errors import ConfigError
from kdlens.messages import one_line, shown


def is_kind(path: Path, kind: str) -> bool:
    """Whether ``path`` is a file / directory; False for a name the system cannot even look up (too long...)."""
    try:
        return path.is_dir() if kind == "dir" else path.is_file()
    except (OSError, ValueError):
        return False


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping (plain
    PyYAML keeps the last one silently, so a second ``teacher:`` section would
    quietly replace the first)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base` may repeat keys on purpose
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                repeated = key in seen
            except TypeError:  # an unhashable key: the loader itself refuses it
                continue
            if repeated:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {shown(key)} appears twice in one mapping; expected each key once",
                    key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: str | Path) -> Any:
    """A config file's contents (a non-empty YAML document), or a one-line :class:`ConfigError`."""
    path = Path(path)
    name = repr(str(path))
    if is_kind(path, "dir"):
        raise ConfigError(one_line(f"config file {name} is a directory; expected a YAML file"))
    if not is_kind(path, "file"):
        raise ConfigError(one_line(f"config file {name} does not exist"))
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(one_line(f"config file {name} cannot be read: {exc.strerror or exc}")) from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(one_line(
            f"config file {name} is not UTF-8 text (byte {exc.start} is 0x{data[exc.start]:02x}); "
            "expected a YAML config")) from None
    try:
        raw = yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or exc
        if isinstance(exc, yaml.reader.ReaderError):  # a character YAML does not allow
            line = text.count("\n", 0, exc.position) + 1
            character = exc.character if isinstance(exc.character, int) else ord(exc.character)
            where, problem = f" at line {line}", f"{exc.reason} (U+{character:04X})"
        raise ConfigError(one_line(f"{path}: not valid YAML{where}: {problem}")) from None
    except RecursionError:
        raise ConfigError(one_line(f"{path}: nested too deeply to read")) from None
    if raw is None:
        raise ConfigError(one_line(f"config file {name} is empty; expected a mapping of config keys to values "
                                   "(e.g. seed: 0)"))
    return raw
