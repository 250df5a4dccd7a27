#!/usr/bin/env bash
# Run HERE (where pip reaches PyPI), before the device call: downloads the wheels the GPU machine's image lacks,
# for its CPython 3.12 on manylinux x86_64, into benchmarks/gpu/wheels/ (git-ignored), and checks that they and the
# working tree fit the 64 MiB a device call carries. Then, in ONE device call:
#   run(command="bash benchmarks/gpu/run.sh", carry=["benchmarks/gpu/wheels"], timeout_s=600)
#
# The image holds torch, transformers, peft, accelerate, safetensors, tokenizers, pyarrow, pandas, xxhash, fsspec,
# huggingface-hub, numpy, psutil, ninja, einops, msgpack, py-cpuinfo, triton; not the packages below.
# Required: trl, datasets (+ dill, multiprocess), bitsandbytes (trimmed to its CPU and CUDA 13 libraries: the image's
# torch is built for CUDA 13.0; the full wheel's libraries for CUDA 11.8-12.8, ROCm and XPU weigh 160 MB).
# Optional, dropped (with a note) when they do not fit: deepspeed (a source distribution on PyPI, built here into a
# pure-Python wheel; its ops compile on first use) with hjson and pydantic, and liger-kernel.
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
LIMIT=$((64 * 1024 * 1024))
DEST=wheels
REQUIRED=(trl==1.16.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 bitsandbytes==0.50.2)
DEEPSPEED_DEPS=(hjson==3.1.0 pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5)
DEEPSPEED=deepspeed==0.19.8
LIGER=liger-kernel==0.8.5
TARGET=(--only-binary=:all: --python-version 3.12 --implementation cp --abi cp312 --platform manylinux2014_x86_64
        --platform manylinux_2_17_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_28_x86_64
        --platform any)

download() { "$PYTHON" -m pip download -q --no-deps "${TARGET[@]}" -d "$DEST" "$@"; }
size() { du -cb "$@" 2>/dev/null | tail -1 | cut -f1; }

rm -rf "$DEST" && mkdir -p "$DEST"
download "${REQUIRED[@]}"
# bitsandbytes: keep the CPU and CUDA 13 libraries (and drop them from RECORD), the rest is for other toolkits
"$PYTHON" - "$DEST"/bitsandbytes-*.whl <<'PY'
import re, sys, zipfile
from pathlib import Path
path = Path(sys.argv[1]); trimmed = path.with_suffix(".tmp")
unused = re.compile(r"libbitsandbytes_(cuda1[12]\d|rocm\w*|xpu\w*)\.(so|dll|dylib)")
with zipfile.ZipFile(path) as source, zipfile.ZipFile(trimmed, "w", zipfile.ZIP_DEFLATED) as target:
    for item in source.infolist():
        if unused.search(item.filename):
            continue
        data = source.read(item)
        if item.filename.endswith(".dist-info/RECORD"):
            data = "".join(l for l in data.decode().splitlines(True) if not unused.search(l)).encode()
        target.writestr(item, data)
trimmed.replace(path)
PY

tree=$(cd ../.. && git ls-files -z --cached --others --exclude-standard | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1)
required=$(size "$DEST"/*.whl)
echo "prepare.sh: working tree $((tree / 1024)) KiB, required wheels $((required / 1024)) KiB"
if (( tree + required > LIMIT )); then
  echo "prepare.sh: the required wheels do not fit one call's 64 MiB: split the run into two calls, each carrying" \
       "a part (e.g. bitsandbytes alone with run.sh --checks nf4 scale-nf4, the rest with the other checks)" >&2
  exit 1
fi

optional() {  # $1: what it is; the rest: commands that put its wheels into $DEST/optional
  local name=$1; shift
  rm -rf "$DEST/optional" && mkdir -p "$DEST/optional"
  if ! "$@"; then
    echo "prepare.sh: $name: could not be fetched; its check will be skipped" >&2
    return
  fi
  local extra; extra=$(size "$DEST"/optional/*.whl)
  if (( tree + $(size "$DEST"/*.whl) + extra > LIMIT )); then
    echo "prepare.sh: $name ($((extra / 1024)) KiB) does not fit the 64 MiB; its check will be skipped" >&2
  else
    mv "$DEST"/optional/*.whl "$DEST"/
  fi
  rm -rf "$DEST/optional"
}
fetch_deepspeed() {
  "$PYTHON" -m pip download -q --no-deps "${TARGET[@]}" -d "$DEST/optional" "${DEEPSPEED_DEPS[@]}" &&
    "$PYTHON" -m pip wheel -q --no-deps --no-build-isolation -w "$DEST/optional" "$DEEPSPEED"
}
fetch_liger() { "$PYTHON" -m pip download -q --no-deps "${TARGET[@]}" -d "$DEST/optional" "$LIGER"; }
optional "$DEEPSPEED (needs torch here to build)" fetch_deepspeed
optional "$LIGER" fetch_liger

total=$(size "$DEST"/*.whl)
ls -1 "$DEST"
echo "prepare.sh: $(ls "$DEST" | wc -l) wheels, $((total / 1024)) KiB; with the working tree" \
     "$(((tree + total) / 1024)) KiB of the 65536 KiB a call carries"
