"""Reading inputs from and writing outputs to tensor files: ``.pt`` (torch.save) and ``.npy``.

Loading never unpickles arbitrary objects: ``.pt`` files are read with ``weights_only=True`` and
``.npy`` files with ``allow_pickle=False``, so an input file from someone else cannot run code.
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from atomic_p2p.errors import ConfigError
from atomic_p2p.tensors import DTYPES

SUFFIXES = (".pt", ".npy")


def check_suffix(path: Path, what: str) -> None:
    if path.suffix not in SUFFIXES:
        raise ConfigError(f"{what} {path} must end in one of {', '.join(SUFFIXES)}")


def _load_object(path: Path) -> object:
    try:
        if path.suffix == ".npy":
            return torch.from_numpy(np.load(path, allow_pickle=False))
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ConfigError(f"input file {path} does not exist") from None
    except (OSError, ValueError, RuntimeError, pickle.UnpicklingError, EOFError) as error:
        raise ConfigError(f"cannot read {path}: {error}") from error


def load_inputs(path: Path, default_name: str, dtype: str | None = None) -> dict[str, torch.Tensor]:
    """A tensor becomes ``{default_name: tensor}``; a dict of name -> tensor is taken as is."""
    check_suffix(path, "input file")
    loaded = _load_object(path)
    if isinstance(loaded, torch.Tensor):
        inputs = {default_name: loaded}
    elif (
        isinstance(loaded, Mapping)
        and loaded
        and all(isinstance(name, str) and isinstance(value, torch.Tensor) for name, value in loaded.items())
    ):
        inputs = dict(loaded)
    else:
        raise ConfigError(f"{path} must hold a tensor or a non-empty dict of name -> tensor")
    if dtype is not None:
        if dtype not in DTYPES:
            raise ConfigError(f"--dtype {dtype} cannot travel; use one of {', '.join(sorted(DTYPES))}")
        inputs = {name: tensor.to(DTYPES[dtype]) for name, tensor in inputs.items()}
    return inputs


def save_outputs(outputs: Mapping[str, torch.Tensor], path: Path) -> None:
    """``.pt``: the dict of outputs; ``.npy``: the single output as an array."""
    check_suffix(path, "output file")
    try:
        if path.suffix == ".pt":
            torch.save(dict(outputs), path)
            return
        if len(outputs) != 1:
            raise ConfigError(f"{len(outputs)} outputs cannot go into one .npy file; use a .pt file")
        (tensor,) = outputs.values()
        if tensor.dtype == torch.bfloat16:  # numpy has no bfloat16; float32 holds it exactly
            tensor = tensor.float()
        np.save(path, tensor.numpy())
    except OSError as error:
        raise ConfigError(f"cannot write {path}: {error.strerror or error}") from error
