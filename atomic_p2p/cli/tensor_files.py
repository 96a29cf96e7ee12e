"""Reading inputs from and writing outputs to tensor files: ``.pt`` (torch.save) and ``.npy``.

Loading never unpickles arbitrary objects: ``.pt`` files are read with ``weights_only=True`` and
``.npy`` files with ``allow_pickle=False``, so an input file from someone else cannot run code.
"""

from __future__ import annotations

import pickle
import sys
import warnings
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


# How to make an input file (docs/cli.md, "Input files", says the same).
RECIPE = (
    "make one with torch.save(torch.rand(4, 64), 'x.pt') or "
    "numpy.save('x.npy', numpy.random.rand(4, 64).astype('float32'))"
)


def _load_object(path: Path) -> object:
    try:
        if path.suffix == ".npy":
            return torch.from_numpy(np.load(path, allow_pickle=False))
        with warnings.catch_warnings():  # torch warns about pickle protocols it then reads anyway
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ConfigError(f"input file {path} does not exist; {RECIPE}") from None
    except IsADirectoryError:
        raise ConfigError(f"input file {path} is a directory; {RECIPE}") from None
    except PermissionError:
        raise ConfigError(f"cannot read {path}: permission denied (check its mode: chmod u+r)") from None
    except pickle.UnpicklingError:  # weights_only: an object other than tensors, dicts and numbers
        raise ConfigError(
            f"{path} holds objects other than tensors (only tensors and dicts of them are loaded, "
            f"never arbitrary pickles); save the tensors alone, {RECIPE.removeprefix('make one ')}"
        ) from None
    except Exception as error:  # a corrupt or foreign file: torch and numpy raise almost anything
        what = "a .npy array numpy.save wrote" if path.suffix == ".npy" else "a file torch.save wrote"
        raise ConfigError(
            f"{path} is not {what} (it may be truncated or another format: {type(error).__name__}); {RECIPE}"
        ) from None


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
        raise ConfigError(
            f"{path} must hold a tensor or a non-empty dict of name -> tensor, not a "
            f"{type(loaded).__name__}; {RECIPE}, or torch.save({{'x': tensor}}, 'x.pt')"
        )
    if dtype is not None:
        if dtype not in DTYPES:
            raise ConfigError(f"--dtype {dtype} cannot travel; use one of {', '.join(sorted(DTYPES))}")
        inputs = {name: tensor.to(DTYPES[dtype]) for name, tensor in inputs.items()}
    elif any(tensor.dtype == torch.float64 for tensor in inputs.values()):
        print(
            "note: the inputs are float64 (numpy's default); models usually take float32: "
            "add --dtype float32 if the peers decline them",
            file=sys.stderr,
        )
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
