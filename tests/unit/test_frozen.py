"""quick_init: the same construction as a frozen dataclass's own __init__, through the slots."""

from __future__ import annotations

import dataclasses
import inspect
import pickle
from dataclasses import InitVar, dataclass, field

import pytest

from atomic_p2p.frozen import quick_init
from atomic_p2p.identity import BatchProof, Envelope
from atomic_p2p.requester.bidmanager import Offers, Wanted
from atomic_p2p.requester.broker import Prepared, Terms
from atomic_p2p.requester.evaluator import Ask, MarketView
from atomic_p2p.requester.ranking import Scored
from atomic_p2p.requester.types import BidInfo


def _twin(quick: bool) -> type:
    made: list[str] = []

    @dataclass(frozen=True, slots=True)
    class Sample:
        name: str
        count: int = 3
        tags: list[str] = field(default_factory=list)
        size: int = field(init=False, default=7)
        notes: dict[str, int] = field(init=False, default_factory=dict)
        seen: tuple[str, ...] = field(init=False, repr=False, compare=False)

        def __post_init__(self) -> None:
            if self.count < 0:
                raise ValueError("count must not be negative")
            object.__setattr__(self, "seen", (*made, self.name))
            made.append(self.name)

    return quick_init(Sample) if quick else Sample


def test_a_quick_init_builds_what_the_generated_one_builds() -> None:
    plain, quick = _twin(False), _twin(True)
    assert str(inspect.signature(quick)) == str(inspect.signature(plain))
    for args, kwargs in [
        (("a",), {}),
        (("b", 5), {}),
        ((), {"name": "c", "tags": ["x"]}),
        (("d", 1, ["y"]), {}),
    ]:
        one, other = plain(*args, **kwargs), quick(*args, **kwargs)
        assert dataclasses.astuple(one) == dataclasses.astuple(other)
        assert repr(one).replace(plain.__qualname__, "") == repr(other).replace(quick.__qualname__, "")
    first, second = quick("e"), quick("f")
    assert first.tags == [] and first.tags is not second.tags  # a fresh default per instance
    assert first.notes == {} and first.notes is not second.notes
    assert (first.size, first.seen[-1], second.seen[-2:]) == (7, "e", ("e", "f"))  # post-init ran, in order
    with pytest.raises(ValueError, match="must not be negative"):
        quick("g", -1)
    with pytest.raises(TypeError):
        quick()
    with pytest.raises(TypeError):
        quick("h", 1, [], 4)  # size is not a parameter


def test_the_class_stays_a_frozen_value() -> None:
    quick = _twin(True)
    value = quick("a", 2, ["t"])
    with pytest.raises(dataclasses.FrozenInstanceError):
        value.count = 4  # type: ignore[misc]
    assert value == quick("a", 2, ["t"]) and value != quick("a", 3, ["t"])
    assert dataclasses.replace(value, count=9).count == 9
    envelope = Envelope(b"k" * 32, "t", b"p", b"s" * 64, BatchProof(2, 1, (b"h" * 32,)))
    assert pickle.loads(pickle.dumps(envelope)) == envelope
    assert hash(envelope) == hash(Envelope(b"k" * 32, "t", b"p", b"s" * 64, BatchProof(2, 1, (b"h" * 32,))))


@pytest.mark.parametrize(
    "cls", [BatchProof, Envelope, BidInfo, Scored, Ask, MarketView, Terms, Prepared, Wanted, Offers]
)
def test_the_hot_types_keep_their_dataclass_signature(cls: type) -> None:
    parameters = list(inspect.signature(cls).parameters.values())
    fields = [f for f in dataclasses.fields(cls) if f.init]
    assert [p.name for p in parameters] == [f.name for f in fields]
    for parameter, f in zip(parameters, fields, strict=True):
        if f.default is not dataclasses.MISSING:
            assert parameter.default == f.default
        elif f.default_factory is dataclasses.MISSING:
            assert parameter.default is inspect.Parameter.empty


def test_what_it_cannot_mirror_is_refused() -> None:
    @dataclass(frozen=True)
    class NoSlots:
        a: int

    @dataclass(slots=True)
    class Mutable:
        a: int

    @dataclass(frozen=True, slots=True)
    class KeywordOnly:
        a: int = field(kw_only=True)

    @dataclass(frozen=True, slots=True)
    class WithInitVar:
        a: int
        b: InitVar[int]

        def __post_init__(self, b: int) -> None:
            pass

    for cls in (NoSlots, Mutable, KeywordOnly, WithInitVar):
        with pytest.raises(TypeError, match="quick_init"):
            quick_init(cls)
