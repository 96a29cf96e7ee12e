"""``atomic peers`` shows ``text`` for a model whose advert says it takes text."""

from __future__ import annotations

from atomic_p2p.cli.peers import _contract_text
from atomic_p2p.contract import single_input
from atomic_p2p.gossip.records import ModelAdvert


def test_the_contract_column_says_text_for_a_model_that_takes_text() -> None:
    digits = single_input("x", "float32", (64,))
    tensors = ModelAdvert.with_contract(digits, model_id="digits", capabilities=("c",))
    text = ModelAdvert.with_contract(digits, model_id="t", capabilities=("c",), takes_text=True)
    described = _contract_text(tensors)
    assert described is not None and not described.startswith("text")
    assert _contract_text(text) == f"text | {described}"
    assert _contract_text(ModelAdvert("bare", ("c",), takes_text=True)) == "text"
    assert _contract_text(ModelAdvert("silent", ("c",))) is None
