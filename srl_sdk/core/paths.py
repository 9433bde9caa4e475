"""Where the SDK keeps its files on this machine: one root, $SRL_HOME, else ~/.srl."""

from __future__ import annotations

import os
from pathlib import Path


def srl_home() -> Path:
    """$SRL_HOME, else ~/.srl: the trace store, the converted-model cache and the converter cache live here."""
    return Path(os.environ.get("SRL_HOME") or Path.home() / ".srl").expanduser()
