"""A non-editable install carries the shipped configs and the NIH metadata."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).parents[1]


@pytest.mark.slow
def test_wheel_install_resolves_bare_config_names_and_reads_metadata(tmp_path):
    # Build from a copy, so the build leaves nothing behind in the working tree.
    source = tmp_path / "source"
    skip_top = {".venv", ".git", "runs", "data", "build", "wandb", ".pytest_cache"}
    shutil.copytree(REPO, source, ignore=lambda folder, names: [n for n in names if (Path(folder) == REPO and n in skip_top)
                                                                or n == "__pycache__" or n.endswith(".egg-info")])  # fmt: skip
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "wheel"), str(source)],
                   check=True, cwd=tmp_path)  # fmt: skip
    wheel = next((tmp_path / "wheel").glob("cxr_lightning-*.whl"))
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)], check=True)
    probe = (
        "import cxr_lightning, sys\n"
        "from cxr_lightning.cli.configs import resolve_config_args\n"
        "from cxr_lightning.data.metadata import read_metadata\n"
        "assert cxr_lightning.__file__.startswith(sys.argv[1]), cxr_lightning.__file__\n"
        "print(resolve_config_args(['fit', '--config', 'resnet_log.yaml'])[2])\n"
        "print(len(read_metadata()))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe, str(target)], check=True, cwd=tmp_path, capture_output=True, text=True,
                         env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"}).stdout.split()  # fmt: skip
    assert out[0] == str(target / "cxr_lightning" / "configs" / "resnet_log.yaml") and out[1] == "112120"
