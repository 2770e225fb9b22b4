"""The prepare stage as a script: `python pipelines/prepare.py --config ... [--set k=v]`.

Same arguments and behaviour as `cnn-apps prepare`; see `cnn_apps/stages/prepare.py`.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from cnn_apps.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["prepare", *sys.argv[1:]]))
