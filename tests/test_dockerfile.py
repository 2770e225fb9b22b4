"""The GPU training image, checked as far as a machine without a Docker engine allows: its
base image carries the TensorFlow version the package pins, the files it copies exist, and
the command it runs is one the package installs."""

import configparser
import json
import re
import shlex
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _instructions() -> list[tuple[str, str]]:
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [tuple(line.split(None, 1)) for line in lines]


def test_base_image_has_the_pinned_tensorflow():
    setup = configparser.ConfigParser()
    setup.read(ROOT / "setup.cfg")
    pinned = re.search(r"^tensorflow==([\d.]+)$", setup["options"]["install_requires"], re.M).group(1)
    base = next(arg for op, arg in _instructions() if op == "FROM")
    assert base == f"tensorflow/tensorflow:{pinned}-gpu"


def test_copied_files_exist_and_the_command_is_installed():
    for op, arg in _instructions():
        if op == "COPY":
            *sources, _ = shlex.split(arg)
            for source in sources:
                assert (ROOT / source).exists(), f"Dockerfile copies {source}, which is not in the repository"
    setup = configparser.ConfigParser()
    setup.read(ROOT / "setup.cfg")
    scripts = [
        line.split("=")[0].strip()
        for line in setup["options.entry_points"]["console_scripts"].splitlines()
        if line.strip()
    ]
    cmd = next(arg for op, arg in _instructions() if op == "CMD")
    assert json.loads(cmd)[0] in scripts  # exec form: ["cnn-apps", ...]
