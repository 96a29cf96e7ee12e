"""Peer configs: the examples load, mistakes say what to fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from atomic_p2p.errors import ConfigError
from atomic_p2p.peer.config import DEFAULT_MAX_MESSAGE_BYTES, PeerConfig, load_config, load_configs
from atomic_p2p.terms import ModelConstraints, Resources
from peers.examples import EXAMPLE_PEERS, PEERS_DIR

MINIMAL = """
[peer]
name = "p"

[[models]]
model_id = "m"
capabilities = ["classify/digits"]
factory = "pkg.module:build"
price_per_example = 0.5
"""


def write(tmp_path: Path, text: str, name: str = "peer.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize("name", EXAMPLE_PEERS)
def test_every_example_peer_config_loads(name: str) -> None:
    config = load_config(PEERS_DIR / f"{name}.toml")
    assert config.name == name
    assert config.models and all(m.capabilities for m in config.models)
    factory_file = Path(config.models[0].factory.rpartition(":")[0])
    assert factory_file in {
        PEERS_DIR / "digits.py",
        PEERS_DIR / "text.py",
    }  # resolved against the config file


def test_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, MINIMAL))
    assert (config.host, config.port, config.replay_window_s, config.bid_validity_s) == (
        "127.0.0.1",
        0,
        30.0,
        10.0,
    )
    assert config.max_message_bytes == DEFAULT_MAX_MESSAGE_BYTES
    assert config.data_dir == Path.home() / ".atomic-p2p" / "p"
    assert config.weights_dir == config.data_dir / "models"
    model = config.models[0]
    assert (model.strategy, model.extra_latency_ms, model.constraints.max_batch) == ("confidence", 0.0, 256)
    # The config's own defaults, on the shared types where 0 means "not declared".
    assert model.constraints == ModelConstraints(max_batch=256)
    assert model.resources == Resources(cpu_cores=1.0)


def test_relative_paths_are_relative_to_the_config_file(tmp_path: Path) -> None:
    (tmp_path / "zoo.py").write_text("def build(cache_dir):\n    raise RuntimeError\n")
    text = MINIMAL.replace('name = "p"', 'name = "p"\ndata_dir = "state"\ncache_dir = "../weights"')
    text = text.replace("pkg.module:build", "zoo.py:build")
    config = load_config(write(tmp_path, text))
    assert config.data_dir == tmp_path / "state"
    assert config.weights_dir == tmp_path.parent / "weights"
    assert config.models[0].factory == f"{tmp_path / 'zoo.py'}:build"


def test_several_configs_make_one_node_with_all_their_models() -> None:
    config = load_configs([PEERS_DIR / "small.toml", PEERS_DIR / "slow.toml"])
    assert config.name == "small"  # node settings come from the first file
    assert [m.model_id for m in config.models] == ["digits-small", "digits-small-slow"]


def test_overrides_ignore_unset_values(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, MINIMAL))
    changed = config.with_overrides(port=5000, host=None, data_dir=tmp_path)
    assert (changed.port, changed.host, changed.data_dir) == (5000, "127.0.0.1", tmp_path)
    assert PeerConfig.from_toml(write(tmp_path, MINIMAL)) == config


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (('name = "p"', 'name = "p"\ncolour = "red"'), "unknown key.*colour"),
        (('name = "p"', 'name = "p"\nport = 70000'), r"port must be an integer in 0\.\.65535"),
        (('name = "p"', 'name = "p"\nport = "80"'), "port must be an integer"),
        (('name = "p"', 'name = "p"\nmax_concurrency = 0'), "max_concurrency must be an integer >= 1"),
        (('name = "p"', 'name = "p"\nreplay_window_s = -1'), "replay_window_s must be a number"),
        (('name = "p"', ""), "name is required"),
        (('["classify/digits"]', "[]"), "capabilities must be a non-empty list"),
        (("pkg.module:build", "no-colon"), "factory 'no-colon' must be"),
        (("pkg.module:build", "missing.py:build"), r"factory file .*missing\.py does not exist"),
        (("price_per_example = 0.5", "price_per_example = -1"), "price_per_example must be a number >= 0"),
        (("price_per_example = 0.5", ""), "price_per_example is required"),
        (("price_per_example = 0.5", 'price_per_example = 0.5\nstrategy = "psychic"'), "strategy 'psychic'"),
        (
            ("price_per_example = 0.5", 'price_per_example = 0.5\nstrategy = "fixed"'),
            "strategy_options.confidence",
        ),
        (
            ("price_per_example = 0.5", "price_per_example = 0.5\n[models.constraints]\nmax_batch = 0"),
            "max_batch",
        ),
        (
            ("price_per_example = 0.5", "price_per_example = 0.5\n[models.resources]\ngpus = 1"),
            "unknown key.*gpus",
        ),
    ],
)
def test_mistakes_name_the_key_and_the_fix(tmp_path: Path, edit: tuple[str, str], message: str) -> None:
    old, new = edit
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, MINIMAL.replace(old, new, 1)))


def test_a_config_without_models_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"add at least one \[\[models\]\]"):
        load_config(write(tmp_path, '[peer]\nname = "p"\n'))


def test_duplicate_model_ids_are_refused(tmp_path: Path) -> None:
    model = MINIMAL.split("[[models]]")[1]
    with pytest.raises(ConfigError, match="model_id 'm' appears in more than one"):
        load_config(write(tmp_path, MINIMAL + "\n[[models]]" + model))
    with pytest.raises(ConfigError, match="model_id 'm' appears in more than one"):
        load_configs([write(tmp_path, MINIMAL, "a.toml"), write(tmp_path, MINIMAL, "b.toml")])


def test_unreadable_files_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "absent.toml")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(write(tmp_path, "[peer\n"))
    with pytest.raises(ConfigError, match="no config file given"):
        load_configs([])
