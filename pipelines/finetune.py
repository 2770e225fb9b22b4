"""The finetune stage as a script.

Usage: `python pipelines/finetune.py --config ... [--set k=v] [--from-run RUN_ID]`.
Same arguments and behaviour as `cnn-apps finetune`; see `cnn_apps/stages/finetune.py`.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from cnn_apps.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["finetune", *sys.argv[1:]]))
