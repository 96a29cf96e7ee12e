"""Where a hosted model comes from: exactly one of factory, torchscript, huggingface; [models.contract]."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from atomic_p2p.contract import Dim, TaskKind, TensorContract
from atomic_p2p.errors import ConfigError
from atomic_p2p.peer.config import ModelConfig, load_config

HEAD = """
[peer]
name = "p"

[[models]]
model_id = "m"
capabilities = ["classify/x"]
price_per_example = 0.5
"""
CONTRACT = """
[models.contract]
kind = "classification"
[[models.contract.inputs]]
name = "x"
dtype = "float32"
dims = [8, [1, 4]]
[[models.contract.outputs]]
name = "logits"
dims = [3]
"""


def load(tmp_path: Path, body: str) -> ModelConfig:
    (tmp_path / "model.pt").write_bytes(b"")
    (tmp_path / "hf").mkdir(exist_ok=True)
    path = tmp_path / "peer.toml"
    path.write_text(HEAD + body)
    return load_config(path).models[0]


def test_a_torchscript_file_resolves_against_the_config_and_takes_the_contract(tmp_path: Path) -> None:
    model = load(tmp_path, 'torchscript = "model.pt"\n' + CONTRACT)
    assert model.torchscript == tmp_path / "model.pt" and model.factory == "" and model.huggingface is None
    assert model.contract is not None and model.contract.kind is TaskKind.CLASSIFICATION
    assert model.contract.inputs == (TensorContract("x", "float32", (Dim.fixed(8), Dim(1, 4))),)
    assert model.contract.outputs == (TensorContract("logits", "float32", (Dim.fixed(3),)),)


def test_a_huggingface_directory_needs_no_contract(tmp_path: Path) -> None:
    model = load(tmp_path, 'huggingface = "hf"\n')
    assert model.huggingface == tmp_path / "hf" and model.contract is None


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("", "model 'm' needs exactly one of factory, torchscript or huggingface, got none"),
        ('factory = "a.b:c"\nhuggingface = "hf"\n', "got factory, huggingface"),
        ('huggingface = "nowhere"\n', r"huggingface .*nowhere does not exist; name a Hugging Face directory"),
        ('torchscript = "gone.pt"\n' + CONTRACT, r"torchscript .*gone\.pt does not exist"),
        ('torchscript = "model.pt"\n', r"#1: model m: a torchscript model needs a \[models.contract\]"),
        ('huggingface = "hf"\noptions = { seed = 1 }\n', r"options are keyword arguments for a factory"),
        ('huggingface = "hf"\n[models.contract]\nkind = "poetry"\n', "kind must be one of classification"),
        ('huggingface = "hf"\n[models.contract]\nkind = "embedding"\n', "takes at least one input"),
        (
            'huggingface = "hf"\n[models.contract]\nkind = "embedding"\n'
            '[[models.contract.inputs]]\nname = "x"\ndims = [[4, 2]]\n',
            "0 <= min <= max",
        ),
        (
            'huggingface = "hf"\n[models.contract]\nkind = "embedding"\n'
            '[[models.contract.inputs]]\nname = "x"\ndims = "64"\n',
            r"dims must be a list of sizes or \[min, max\] pairs",
        ),
    ],
)
def test_source_mistakes_name_the_model_and_the_fix(tmp_path: Path, body: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load(tmp_path, body)


def test_the_base_install_never_imports_transformers() -> None:
    code = (
        "import sys, atomic_p2p, atomic_p2p.peer.node, atomic_p2p.requester, atomic_p2p.cli.peer\n"
        "assert 'transformers' not in sys.modules, 'transformers imported without a huggingface model'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
