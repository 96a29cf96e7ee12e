"""The experiment scripts of ``scripts/experiments`` (not a package), imported for tests."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

EXPERIMENTS_DIR = Path(__file__).resolve().parents[2] / "scripts" / "experiments"


def load_experiment(name: str) -> ModuleType:
    """Import ``scripts/experiments/<name>.py`` under its own name, once, with its folder on
    ``sys.path``: the scripts import ``common`` and each other by name, and dataclasses look
    their module up in ``sys.modules``."""
    path = EXPERIMENTS_DIR / f"{name}.py"
    loaded = sys.modules.get(name)
    if loaded is not None and getattr(loaded, "__file__", None) == str(path):
        return loaded
    if str(EXPERIMENTS_DIR) not in sys.path:
        sys.path.insert(0, str(EXPERIMENTS_DIR))
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise FileNotFoundError(f"no experiment script {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
