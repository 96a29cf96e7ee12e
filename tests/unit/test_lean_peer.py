"""A peer that serves loads nothing serving does not need (docs/architecture.md section 11: an idle
peer hosting a small model holds at most 250 MB; scripts/bench_auction.py measures it)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TRAINING_AND_PLOTTING = ("sklearn", "scipy", "matplotlib", "transformers", "pandas", "torch._dynamo")

SERVING_PATH = """
import importlib.util, json, sys
import atomic_p2p.cli.peer, atomic_p2p.peer.node, atomic_p2p.peer.server
spec = importlib.util.spec_from_file_location("digits", "peers/digits.py")  # the small peer's factory
module = sys.modules["digits"] = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
print(json.dumps(sorted(sys.modules)))
"""


def test_importing_the_serving_path_loads_no_training_or_plotting_library() -> None:
    loaded = json.loads(
        subprocess.run(
            [sys.executable, "-c", SERVING_PATH], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout
    )
    assert "atomic_p2p.peer.node" in loaded and "torch" in loaded  # the check ran where it should
    heavy = [name for name in loaded if name.startswith(TRAINING_AND_PLOTTING)]
    assert heavy == [], f"the serving path imports {heavy[:5]}: import them where they are used"
