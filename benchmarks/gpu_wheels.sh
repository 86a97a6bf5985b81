#!/usr/bin/env bash
# Fill .whl/ with the wheels benchmarks/run_gpu.sh installs on a GPU machine that has torch, triton,
# transformers, peft's and datasets' common needs (numpy, pyarrow, pandas, fsspec, xxhash, ...) but no
# network and none of the packages below. Run it from the repository root, in the sdft virtualenv (the
# versions are the ones installed there: what CI tests), on a machine that reaches PyPI:
#
#   bash benchmarks/gpu_wheels.sh              # wheels for CPython 3.12 (the GPU image's Python)
#   SDFT_WHEEL_PYTHON=3.11 bash benchmarks/gpu_wheels.sh .whl-311    # for a check on this machine
#
# DeepSpeed publishes a source archive only: its wheel is built here (pure Python; its ops compile on
# first use). .whl/ is ignored by git; the device tool carries it (64 MiB with the repository: the
# script prints the total, bitsandbytes being 43 MB of it).
set -euo pipefail
dir=${1:-.whl}
py=${SDFT_WHEEL_PYTHON:-3.12}
# sdft's own needs the image lacks, their needs it lacks too, and liger-kernel (the benchmarks' baseline)
packages=(deepspeed hjson pydantic pydantic-core annotated-types typing-inspection typing-extensions
          datasets dill multiprocess peft bitsandbytes gguf liger-kernel)
pins=()
for name in "${packages[@]}"; do
  version=$(python -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$name" 2>/dev/null || true)
  if [ -z "$version" ] && [ "$name" = liger-kernel ]; then
    version=0.8.5   # not a dependency of sdft: the version of benchmarks/RESULTS.md's GPU figures
  fi
  [ -n "$version" ] || { echo "gpu_wheels: $name is not installed in this environment" >&2; exit 2; }
  pins+=("$name==$version")
done
rm -rf "$dir"; mkdir -p "$dir"
binary=()
for pin in "${pins[@]}"; do [[ $pin == deepspeed==* ]] || binary+=("$pin"); done
tag=${py/./}
python -m pip download -q --no-deps --only-binary=:all: --python-version "$py" --implementation cp \
  --abi "cp$tag" --abi abi3 --abi none \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any -d "$dir" "${binary[@]}"
DS_BUILD_OPS=0 python -m pip wheel -q --no-deps --no-build-isolation -w "$dir" "${pins[0]}"
ls -1 "$dir"
tree=$(git ls-files -z | du -cb --files0-from=- | tail -n1 | cut -f1)
wheels=$(du -cb "$dir"/*.whl | tail -n1 | cut -f1)
echo "gpu_wheels: ${#pins[@]} wheels, $((wheels / 1048576)) MiB; with the tracked files $(((wheels + tree) / 1048576)) MiB (the device tool carries 64 MiB)"
