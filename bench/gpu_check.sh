#!/usr/bin/env bash
# The GPU check of issue 5, for a machine with an NVIDIA GPU and the CUDA toolkit: build the
# project with its CUDA kernels, run the GPU tests and the GPU benchmarks, print a short table.
# Wheels that the machine lacks (OR-Tools, ...) go in .whl/ beforehand (bench/device_wheels.sh);
# they are installed into /tmp/site. Meant to finish well inside 8 minutes. Where $OUT is set (the
# device tool's folder that comes back), the test log and the table are also written there.
#
#     bash bench/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 OMP_WAIT_POLICY=PASSIVE
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
start=$(date +%s)
python3 -m pip install -q --no-build-isolation --no-deps --target /tmp/ompq -C cmake.define.OMPQ_CUDA=ON . 2>&1 | tail -5
export PYTHONPATH=/tmp/ompq${PYTHONPATH:+:$PYTHONPATH}
echo "build: $(( $(date +%s) - start )) s"
python3 -c "from ompq_ext import _core; assert _core.cuda_built and _core.cuda_device_available(), 'CUDA kernels not usable'; print('ompq_ext CUDA kernels: built and a device is visible')"
out=${OUT:-/tmp/gpu_check}
mkdir -p "$out"
# The tests import the installed package, not the source tree.
(cd /tmp && python3 -m pytest -q -p no:cacheprovider "$OLDPWD/tests/test_cuda.py" -rs 2>&1 | tee "$out/tests.log"; exit "${PIPESTATUS[0]}") || status=$?
echo "tests: $(( $(date +%s) - start )) s"
python3 bench/report_gpu.py --repeats 20 | tee "$out/report_gpu.md"
# The C++ API on the device (an H100/H200: sm_90): install the core, build
# cpp/examples/find_package against it, run it.
(cmake -S . -B /tmp/ompq_cpp -G Ninja -DOMPQ_BUILD_PYTHON=OFF -DOMPQ_BUILD_EXAMPLES=OFF -DOMPQ_CUDA=ON \
   -DCMAKE_CUDA_ARCHITECTURES=90 -DCMAKE_INSTALL_PREFIX=/tmp/ompq_prefix > /dev/null \
 && cmake --build /tmp/ompq_cpp > /dev/null && cmake --install /tmp/ompq_cpp > /dev/null \
 && cmake -S cpp/examples/find_package -B /tmp/ompq_consumer -G Ninja -DCMAKE_PREFIX_PATH=/tmp/ompq_prefix > /dev/null \
 && cmake --build /tmp/ompq_consumer > /dev/null && /tmp/ompq_consumer/ompq_consumer) 2>&1 | tail -5 \
 || status=${status:-1}
echo "total: $(( $(date +%s) - start )) s"
exit ${status:-0}
