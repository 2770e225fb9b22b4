"""Parameter counts of every registered detector and segmenter at its paper size, as
``cnn-apps models`` lists them (detectors with 20 classes, segmenters with 21 at 224 px), written
to ``benchmarks/results/model_sizes.json`` for the results page (``benchmarks/tables.py``).
The backbones' sizes and multiply-adds come from ``benchmarks/backbones.py``.

    python benchmarks/model_sizes.py
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=None, help="JSON path (default benchmarks/results/model_sizes.json)")
    args = parser.parse_args(argv)

    from provenance import write_result

    import cnn_apps.builtins  # noqa: F401  (registers the built-in models)
    from cnn_apps.detection.factory import detector_table
    from cnn_apps.segmentation.factory import segmenter_table

    payload = {"detectors": detector_table(), "segmenters": segmenter_table()}
    path = write_result("model_sizes", payload, args.out)
    print(f"wrote {path}")
    return payload


if __name__ == "__main__":
    main()
