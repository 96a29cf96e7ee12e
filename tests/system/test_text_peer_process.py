"""The text example peers as processes: a docstring sentence bought as text, a generation streamed."""

from __future__ import annotations

from pathlib import Path

import pytest

from atomic_p2p.requester import Requester
from atomic_p2p.testing import peer_processes
from peers import text
from peers.examples import example_table

pytestmark = pytest.mark.system


async def test_a_text_peer_process_classifies_held_out_docstring_sentences(tmp_path: Path) -> None:
    _, _, sentences, labels = text.dataset()
    async with peer_processes([example_table("text-small")], tmp_path) as (peer,):
        assert peer.models == ["docstrings-char"]
        async with Requester([peer.address]) as requester:
            result = await requester.run("classify/docstrings", text=sentences[:16], language="en")
    assert result.winner.model_id == "docstrings-char"
    predicted = result.outputs["logits"].argmax(dim=-1).tolist()
    assert len(predicted) == 16
    assert sum(p == y for p, y in zip(predicted, labels[:16], strict=True)) >= 4  # better than chance
