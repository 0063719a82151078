"""udaseg opens no network connection: a CLI command run with every resolve and connect
refused and recorded (tests/network_guard/sitecustomize.py) records none."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.helpers import CONFIGS, REPO


def test_a_cli_command_resolves_no_host_and_opens_no_connection(tmp_path):
    log = tmp_path / "network.log"
    environment = {key: value for key, value in os.environ.items()
                   if key != "NO_ALBUMENTATIONS_UPDATE"}
    environment.update(PYTHONPATH=os.pathsep.join([str(REPO / "tests" / "network_guard"),
                                                   str(REPO)]),
                       NETWORK_LOG=str(log))
    result = subprocess.run(
        [sys.executable, "-m", "udaseg.runtime.cli", "fit", "--config",
         str(CONFIGS / "synthetic" / "advent.yaml"), "--print_config"],
        cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "class_path: udaseg.methods.AdvEnt" in result.stdout, "the command really ran"
    assert not log.exists(), f"network access attempted:\n{log.read_text()}"
