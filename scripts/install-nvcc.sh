#!/usr/bin/env bash
# Installs a pinned CUDA 13.0 nvcc from PyPI into .venv-nvcc/ (idempotent) and prints nvcc's path
# on stdout — the only thing this script prints there, so that
#     export NVCC=$(scripts/install-nvcc.sh)
# works; progress goes to stderr.
#
# Why these pins: PyPI's CUDA 12 wheels contain no nvcc; the CUDA 13.0 set does and works with
# Debian's gcc 12 without extra flags. All five must be pinned: unpinned companions pull 13.5,
# whose PTX (ISA 9.5) the GPU machines' driver (580, CUDA 13.0) cannot JIT; 13.0 emits ISA 9.0.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${ICET_NVCC_VENV:-$root/.venv-nvcc}"
pins=(
  nvidia-cuda-nvcc==13.0.88
  nvidia-nvvm==13.0.88
  nvidia-cuda-crt==13.0.88
  nvidia-cuda-runtime==13.0.96
  nvidia-cuda-cccl==13.0.85
)
stamp="$venv/.icet-nvcc-pins"

find_nvcc() {
  "$venv/bin/python" - <<'PY'
import os, sysconfig
print(os.path.join(sysconfig.get_paths()["purelib"], "nvidia", "cu13", "bin", "nvcc"))
PY
}

if [[ -x "$venv/bin/python" && -f "$stamp" && "$(cat "$stamp")" == "${pins[*]}" ]]; then
  nvcc="$(find_nvcc)"
  if [[ -x "$nvcc" ]]; then
    echo "$nvcc"
    exit 0
  fi
fi

echo "install-nvcc: installing ${pins[*]} into $venv" >&2
python3 -m venv "$venv" >&2
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check "${pins[@]}" >&2
nvcc="$(find_nvcc)"
if [[ ! -x "$nvcc" ]]; then
  echo "install-nvcc: nvcc not found at $nvcc after installation" >&2
  exit 1
fi
echo "${pins[*]}" >"$stamp"
"$nvcc" --version >&2
echo "$nvcc"
