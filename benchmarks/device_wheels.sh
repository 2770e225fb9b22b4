#!/usr/bin/env bash
# Fill .whl/ (ignored by git) with what the GPU machine lacks for benchmarks/device_session.sh:
# Keras 3.15.1 with its two small dependencies (the machine has JAX, no TensorFlow), OpenCV with
# the contrib modules (selective search for the ladder's R-CNN, SPP-net and Fast R-CNN) and the
# ladder's photos (Debian opencv-doc's samples). Run here, in a checkout, before the device
# tool's `run` with carry [".whl"]. About 59 MB: the tool carries 64 MiB with the working tree.
set -euo pipefail
cd "$(dirname "$0")/.."
samples=/usr/share/doc/opencv-doc/examples/data
grep -qxF '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
rm -rf .whl && mkdir -p .whl/photos
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d .whl \
  keras==3.15.1 namex optree opencv-contrib-python-headless==4.10.0.84
for photo in messi5.jpg home.jpg fruits.jpg building.jpg; do
  cp "$samples/$photo" .whl/photos/ || { echo "install Debian's opencv-doc for $samples/$photo" >&2; exit 1; }
done
du -sh .whl
