"""The chat page's pure state module (relay/static/js/store.js), tested with ``node --test``."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

SUITE = Path(__file__).with_name("chat_store.test.mjs")


@pytest.mark.skipif(shutil.which("node") is None, reason="needs node")
def test_store_module() -> None:
    node = shutil.which("node")
    assert node is not None
    done = subprocess.run(
        [node, "--test", str(SUITE)], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "# fail 0" in done.stdout
