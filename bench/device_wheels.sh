#!/usr/bin/env bash
# Wheels the GPU machine lacks for bench/gpu_check.sh (its image has torch, pybind11,
# scikit-build-core, cmake, ninja, numpy, pandas and absl-py, but no OR-Tools), downloaded here
# into .whl/ (ignored by git) for Python 3.12 on x86-64 Linux. Carry .whl with the check:
#
#     bash bench/device_wheels.sh        # here, once per session (about 31 MB)
#     bash bench/gpu_check.sh            # there, with .whl carried
set -euo pipefail
cd "$(dirname "$0")/.."
ortools=$(python3 -c "import importlib.metadata as m; print(m.version('ortools'))" 2>/dev/null || echo 9.15.6755)
rm -rf .whl && mkdir -p .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d .whl "ortools==$ortools" immutabledict "protobuf>=6.33.1,<6.34"
ls -l .whl
