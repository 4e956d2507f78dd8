"""Reading study definitions: YAML/JSON documents, search-space presets, and their merge."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml

from hpo_service.core.definition import KNOBS, StudyDefinition
from hpo_service.core.errors import DefinitionError, NotFoundError

_PACKAGE_DIR = Path(__file__).resolve().parents[1]  # hpo_service/
MAX_DEPTH = 32  # mappings and lists inside each other; a definition needs about 5
MAX_VALUES = 100_000  # values in a document once YAML aliases are expanded


def presets_dir() -> Path:
    """``search_spaces/``: inside the installed wheel, or beside the package in a checkout."""
    for candidate in (_PACKAGE_DIR / "search_spaces", _PACKAGE_DIR.parent / "search_spaces"):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError("search_spaces/ is missing from this installation")


def list_presets() -> dict[str, str]:
    """Preset name -> the first comment line of its file (where it comes from)."""
    presets = {}
    for path in sorted(presets_dir().glob("*.yaml")):
        first = path.read_text().splitlines()[0] if path.stat().st_size else ""
        presets[path.stem] = first.lstrip("# ").strip()
    return presets


def load_preset(name: str) -> dict[str, Any]:
    """The preset's document; raises ``NotFoundError`` naming the presets that exist."""
    path = presets_dir() / f"{name}.yaml"
    if path not in set(presets_dir().glob("*.yaml")):  # a listing: no lookup of what was sent
        raise NotFoundError(f"unknown preset {name!r}; presets: {', '.join(list_presets())}")
    document = yaml.safe_load(path.read_text()) or {}
    if not isinstance(document, dict):
        raise DefinitionError("preset", f"preset {name!r} is not a mapping")
    return document


class _RepeatedKey(ValueError):
    def __init__(self, key: Any, line: int | None) -> None:
        super().__init__(f"repeated key {key!r}")
        self.key, self.line = key, line


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key repeated in one mapping, where PyYAML would keep
    the last value and silently drop the others."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base`, keys it may override
                continue
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, list | dict):  # unhashable: SafeLoader refuses it below
                continue
            if key in seen:
                raise _RepeatedKey(key, key_node.start_mark.line + 1)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object, refusing a repeated key (``json`` keeps the last)."""
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            raise _RepeatedKey(key, None)
        seen.add(key)
    return dict(pairs)


def parse_document(
    text: str, source: str = "definition", syntax: Literal["yaml", "json"] = "yaml"
) -> dict[str, Any]:
    """A YAML (or JSON, which is YAML) mapping, or strictly JSON with ``syntax="json"``.

    Raises ``DefinitionError`` if it is not one, repeats a key within a mapping, is nested
    deeper than ``MAX_DEPTH``, holds more than ``MAX_VALUES`` values, or holds a value that
    JSON text cannot store (binary data, a lone surrogate).
    """
    too_deep = DefinitionError(source, f"is nested deeper than {MAX_DEPTH} levels")
    try:
        if syntax == "json":
            document = json.loads(text, object_pairs_hook=_unique_pairs)
        else:
            document = yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader
    except RecursionError as error:  # the parsers recurse once per level of nesting
        raise too_deep from error
    except _RepeatedKey as error:
        where = f" at line {error.line}" if error.line else ""
        raise DefinitionError(
            source, f"repeats the key {error.key!r}{where}; each key may appear once"
        ) from error
    except json.JSONDecodeError as error:
        raise DefinitionError(
            source, f"not valid JSON: {error.msg} at line {error.lineno}"
        ) from error
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(error, "problem", None)
        raise DefinitionError(
            source, f"not valid YAML or JSON{where}" + (f": {problem}" if problem else "")
        ) from error
    except (ValueError, OverflowError) as error:  # a date like 2024-13-45, a 5000-digit number
        raise DefinitionError(source, f"holds a value that cannot be read: {error}") from error
    if not isinstance(document, dict):
        kind = "an object" if syntax == "json" else "a mapping"
        raise DefinitionError(source, f"must be {kind}, but got {type(document).__name__}")
    _check_values(document, too_deep, source)
    return document


def _check_values(document: Any, too_deep: DefinitionError, source: str) -> None:
    """Refuse deep nesting (or a YAML alias that contains itself), alias bombs, and values that
    cannot be stored as JSON text: YAML's binary data, and text holding a lone surrogate (what a
    JSON escape such as ``"\\ud800"`` gives); without recursing."""
    stack: list[tuple[Any, tuple[Any, ...]]] = [(document, ())]
    seen = 0
    while stack:
        node, path = stack.pop()
        seen += 1
        if seen > MAX_VALUES:
            raise DefinitionError(source, f"holds more than {MAX_VALUES} values")
        if isinstance(node, dict | list):
            if len(path) >= MAX_DEPTH:
                raise too_deep
            items = node.items() if isinstance(node, dict) else enumerate(node)
            for key, child in items:
                if isinstance(key, str) and not _is_unicode(key):
                    raise DefinitionError(_field(path, source), "has a key that is " + _NOT_UNICODE)
                stack.append((child, (*path, key)))
        elif isinstance(node, bytes):
            raise DefinitionError(_field(path, source), "is binary data (YAML !!binary); give text")
        elif isinstance(node, str) and not _is_unicode(node):
            raise DefinitionError(_field(path, source), "is " + _NOT_UNICODE)


_NOT_UNICODE = "not valid Unicode text (it holds a lone surrogate such as \\ud800)"


def _is_unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _field(path: tuple[Any, ...], source: str) -> str:
    """The dotted path of a value in the document, as errors name fields."""
    return ".".join(str(key) for key in path) or source


def read_document_file(
    path: Path, source: str, syntax: Literal["yaml", "json"] = "yaml"
) -> dict[str, Any]:
    """The mapping in a file, as ``parse_document`` reads it; a ``DefinitionError`` naming
    ``source`` if the file cannot be read (a pipe such as ``<(curl ...)`` can)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as error:
        raise DefinitionError(source, "no such file") from error
    except IsADirectoryError as error:
        raise DefinitionError(source, "is a directory, not a file") from error
    except UnicodeDecodeError as error:
        raise DefinitionError(source, "is not UTF-8 text") from error
    except OSError as error:  # permissions, a special file
        raise DefinitionError(source, f"cannot be read: {error.strerror}") from error
    return parse_document(text, source=source, syntax=syntax)


def read_definition_file(path: Path) -> dict[str, Any]:
    """The document in a YAML or JSON file, with relative dataset paths made absolute."""
    document = read_document_file(path, source=str(path))
    return with_paths_relative_to(document, path.parent)


def with_paths_relative_to(document: dict[str, Any], base: Path) -> dict[str, Any]:
    """A copy of the document whose relative ``dataset.train``/``eval`` are under ``base``."""
    dataset = document.get("dataset")
    if not isinstance(dataset, dict):
        return document
    dataset = dict(dataset)
    for key in ("train", "eval"):
        value = dataset.get(key)
        if isinstance(value, str) and not _absolute(value):
            dataset[key] = str((base / value).resolve())
    return {**document, "dataset": dataset}


def _absolute(value: str) -> bool:
    """Whether a path is absolute once ``~`` is expanded; a path the definition's validation
    refuses by name (a NUL byte, an unknown ``~user``) counts as absolute, and stays as given."""
    try:
        return "\x00" in value or Path(value).expanduser().is_absolute()
    except RuntimeError:  # "~nosuchuser/..."
        return True


def merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """``override`` on top of ``base``; nested mappings merge, anything else replaces."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            # A parameter given inline replaces the preset's whole distribution.
            merged[key] = dict(value) if key in _REPLACED_WHOLE else merge(merged[key], value)
        else:
            merged[key] = value
    return merged


# Sections whose values are tagged unions: merging a preset's {type: grid} into {type: tpe,
# seed: 1} field by field would mix two kinds, so an inline value replaces them whole.
_REPLACED_WHOLE = {"sampler", "early_stopping", *KNOBS}


def resolve_definition(document: Mapping[str, Any]) -> StudyDefinition:
    """The validated definition: the preset (if any) with the document's keys on top.

    Raises ``pydantic.ValidationError`` for a bad definition and ``NotFoundError`` for an
    unknown preset.
    """
    preset = document.get("preset")
    merged = dict(document)
    if isinstance(preset, str):
        merged = merge(load_preset(preset), document)
    return StudyDefinition.model_validate(merged)


def definition_json_schema() -> str:
    return json.dumps(StudyDefinition.model_json_schema(), indent=2)
