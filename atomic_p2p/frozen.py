"""A faster ``__init__`` for the frozen, slotted dataclasses built once per bid.

A frozen dataclass's generated ``__init__`` sets every field through ``object.__setattr__``
(its own ``__setattr__`` refuses), about 110 ns a field here: a bid's BidInfo (19 fields) costs
2 us to build. Each slot's own descriptor sets it in half that. :func:`quick_init` gives a class
an ``__init__`` that does so, and nothing else changes: the same parameters in the same order,
the same defaults and default factories (a fresh value per instance), fields with
``init=False`` set from their default as dataclasses does, then ``__post_init__`` if there is
one. The class stays frozen: assigning to a field afterwards still raises
``FrozenInstanceError``. Keyword-only fields and ``InitVar`` pseudo-fields are not supported
(``quick_init`` refuses such a class with TypeError rather than build something different).
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

C = TypeVar("C", bound=type)

# The default of a parameter whose field has a default factory: dataclasses' own marker, so
# the signature reads as the generated one does ("<factory>").
_HAS_FACTORY = getattr(dataclasses, "_HAS_DEFAULT_FACTORY", object())


def quick_init(cls: C) -> C:
    """Replace ``cls.__init__`` (a frozen dataclass with slots) by one that sets each slot
    through its descriptor; see the module docstring."""
    params = getattr(cls, "__dataclass_params__", None)
    if params is None or not params.frozen or "__slots__" not in cls.__dict__:
        raise TypeError(f"quick_init takes a frozen dataclass with slots, not {cls.__name__}")
    every = cls.__dict__["__dataclass_fields__"].values()
    if any(f._field_type is dataclasses._FIELD_INITVAR for f in every):  # type: ignore[attr-defined]
        raise TypeError(f"quick_init does not support InitVar fields ({cls.__name__})")
    namespace: dict[str, Any] = {"_HAS_FACTORY": _HAS_FACTORY}
    arguments: list[str] = []
    body: list[str] = []
    for f in dataclasses.fields(cls):
        if f.kw_only:
            raise TypeError(f"quick_init does not support keyword-only fields ({cls.__name__}.{f.name})")
        setter = f"_set_{f.name}"
        namespace[setter] = cls.__dict__[f.name].__set__
        has_default = f.default is not dataclasses.MISSING
        has_factory = f.default_factory is not dataclasses.MISSING
        namespace[f"_default_{f.name}"] = f.default
        namespace[f"_factory_{f.name}"] = f.default_factory
        if not f.init:
            if has_default:
                body.append(f"{setter}(self, _default_{f.name})")
            elif has_factory:
                body.append(f"{setter}(self, _factory_{f.name}())")
            continue
        value = f.name
        if has_default:
            arguments.append(f"{f.name}=_default_{f.name}")
        elif has_factory:
            arguments.append(f"{f.name}=_HAS_FACTORY")
            value = f"_factory_{f.name}() if {f.name} is _HAS_FACTORY else {f.name}"
        else:
            arguments.append(f.name)
        body.append(f"{setter}(self, {value})")
    if hasattr(cls, "__post_init__"):
        body.append("self.__post_init__()")
    source = f"def __init__(self, {', '.join(arguments)}):\n" + "".join(
        f"    {line}\n" for line in body or ["pass"]
    )
    exec(source, namespace)
    init = namespace["__init__"]
    original = cls.__dict__["__init__"]
    init.__qualname__ = original.__qualname__
    init.__module__ = original.__module__
    init.__annotations__ = original.__annotations__
    init.__doc__ = original.__doc__
    cls.__init__ = init  # type: ignore[misc]
    return cls
