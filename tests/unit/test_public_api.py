"""The public face stays small, sorted and honest."""

from __future__ import annotations

import subprocess
import sys

import atomic_p2p


def test_all_is_sorted_and_unique() -> None:
    assert atomic_p2p.__all__ == sorted(set(atomic_p2p.__all__))


def test_every_public_name_resolves() -> None:
    for name in atomic_p2p.__all__:
        assert getattr(atomic_p2p, name) is not None, name


def test_public_names_are_the_real_classes() -> None:
    from atomic_p2p.peer import PeerNode
    from atomic_p2p.requester import Requester

    assert atomic_p2p.Requester is Requester
    assert atomic_p2p.PeerNode is PeerNode


def test_unknown_name_is_an_attribute_error() -> None:
    try:
        atomic_p2p.DoesNotExist  # type: ignore[attr-defined]  # noqa: B018
    except AttributeError as exc:
        assert "DoesNotExist" in str(exc)
    else:
        raise AssertionError("expected AttributeError")


def test_importing_the_package_does_not_load_torch() -> None:
    code = "import sys, atomic_p2p; assert 'torch' not in sys.modules, 'torch loaded eagerly'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
