#!/usr/bin/env bash
# Assembles a CUDA 13.0 build toolkit from NVIDIA's PyPI wheels, for building
# `--features cuda` on a machine without the CUDA toolkit (and without a GPU):
#
#   scripts/cuda-toolkit.sh /opt/cuda-pypi      # downloads ~800 MB once
#   source /opt/cuda-pypi/env.sh
#   cargo build --release --features cuda
#
# What it does: pip-downloads nvcc, the crt headers, NVVM (cicc), the runtime, cuBLAS,
# cuRAND, NVRTC and CCCL wheels, unpacks them into DIR, adds the unversioned .so links the
# linker looks for, and — since the driver library (libcuda.so) ships with the GPU driver,
# not with the toolkit — writes a link-time stub libcuda.so (SONAME libcuda.so.1) defining
# every driver function cudarc declares. At run time the real driver's libcuda.so.1 and the
# CUDA 13 libraries (libcublas.so.13, …; PyTorch's cu13 wheels carry them) must be on the
# loader path. The binary targets the compute capability in CUDA_COMPUTE_CAP (default 90:
# H100/H200).
set -euo pipefail
dir=${1:?usage: scripts/cuda-toolkit.sh DIR}
mkdir -p "$dir/wheels"
dir=$(cd "$dir" && pwd)
py=${PYTHON:-python3}
"$py" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.11 \
    --platform manylinux_2_27_x86_64 --platform manylinux_2_28_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2010_x86_64 --platform manylinux_2_12_x86_64 -d "$dir/wheels" \
    nvidia-cuda-nvcc==13.0.88 nvidia-cuda-crt==13.0.88 nvidia-nvvm==13.0.88 \
    nvidia-cuda-runtime==13.0.96 nvidia-cuda-nvrtc==13.0.88 nvidia-cuda-cccl==13.0.85 \
    nvidia-cublas==13.0.2.14 nvidia-curand==10.4.5.25
for w in "$dir"/wheels/*.whl; do "$py" -m zipfile -e "$w" "$dir/unpacked"; done
root="$dir/unpacked/nvidia/cu13"
chmod +x "$root"/bin/* "$root"/nvvm/bin/* 2>/dev/null || true
(cd "$root/lib" && for l in cublas cublasLt cudart nvrtc; do ln -sf "lib$l.so.13" "lib$l.so"; done \
    && ln -sf libcurand.so.10 libcurand.so)
ln -sfn lib "$root/lib64"

# The driver API stub: every cu* function the cudarc bindings declare.
bindings=$(find "${CARGO_HOME:-$HOME/.cargo}/registry/src" -path '*cudarc-0.19*/src/driver/sys/mod.rs' | head -1)
if [[ -z "$bindings" ]]; then
    echo "cudarc 0.19 sources not found: run 'cargo fetch' first" >&2
    exit 1
fi
mkdir -p "$root/lib/stubs"
grep -o 'fn cu[A-Z][A-Za-z0-9_]*(' "$bindings" | sed 's/fn //; s/(//' | sort -u \
    | awk '{print "int " $1 "(void) { return 999; }"}' > "$dir/libcuda_stub.c"
cc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$root/lib/stubs/libcuda.so" "$dir/libcuda_stub.c"

cat > "$dir/env.sh" <<ENV
export CUDA_HOME="$root" CUDA_PATH="$root"
export PATH="$root/bin:\$PATH"
export LIBRARY_PATH="$root/lib:$root/lib/stubs\${LIBRARY_PATH:+:\$LIBRARY_PATH}"
export CUDA_COMPUTE_CAP=\${CUDA_COMPUTE_CAP:-90}
ENV
"$root/bin/nvcc" --version | tail -2
echo "toolkit ready: source $dir/env.sh"
