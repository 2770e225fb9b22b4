"""The evaluate stage as a script.

Usage: `python pipelines/evaluate.py --config ... [--set k=v] [--from-run RUN_ID]`.
Same arguments and behaviour as `cnn-apps evaluate`; see `cnn_apps/stages/evaluate.py`.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from cnn_apps.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["evaluate", *sys.argv[1:]]))
