"""Reading study definitions: YAML/JSON documents, search-space presets, and their merge."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from hpo_service.definition import KNOBS, StudyDefinition
from hpo_service.errors import DefinitionError, NotFoundError

_PACKAGE_DIR = Path(__file__).resolve().parent


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
    if "/" in name or "\\" in name or not path.is_file():
        raise NotFoundError(f"unknown preset {name!r}; presets: {', '.join(list_presets())}")
    document = yaml.safe_load(path.read_text()) or {}
    if not isinstance(document, dict):
        raise DefinitionError("preset", f"preset {name!r} is not a mapping")
    return document


def parse_document(text: str, source: str = "definition") -> dict[str, Any]:
    """A YAML or JSON mapping (JSON is YAML); raises ``DefinitionError`` if it is neither."""
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise DefinitionError(source, f"not valid YAML or JSON{where}") from error
    if not isinstance(document, dict):
        raise DefinitionError(source, f"must be a mapping, but got {type(document).__name__}")
    return document


def read_definition_file(path: Path) -> dict[str, Any]:
    """The document in a YAML or JSON file, with relative dataset paths made absolute."""
    if not path.is_file():
        raise DefinitionError(str(path), "no such file")
    document = parse_document(path.read_text(), source=str(path))
    return with_paths_relative_to(document, path.parent)


def with_paths_relative_to(document: dict[str, Any], base: Path) -> dict[str, Any]:
    """A copy of the document whose relative ``dataset.train``/``eval`` are under ``base``."""
    dataset = document.get("dataset")
    if not isinstance(dataset, dict):
        return document
    dataset = dict(dataset)
    for key in ("train", "eval"):
        value = dataset.get(key)
        if isinstance(value, str) and not Path(value).expanduser().is_absolute():
            dataset[key] = str((base / value).resolve())
    return {**document, "dataset": dataset}


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
