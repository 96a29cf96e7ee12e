"""Merkle trees over payloads, so one signature can cover a batch of them (docs/protocol.md section 3.1).

How this works
--------------
The tree is the one of RFC 9162 (Certificate Transparency v2) section 2.1, with SHA-256:

- leaf hash ``SHA-256(0x00 || payload)``, node hash ``SHA-256(0x01 || left || right)``; the two
  prefixes keep a leaf from ever being read as a node (second-preimage attacks);
- a tree of n > 1 leaves splits at k, the largest power of two below n: the left subtree holds
  the first k leaves, the right one the rest;
- the inclusion proof of leaf m is the list of sibling hashes from the leaf up to the root.

:func:`tree` returns the root and every leaf's proof at once (each node hashed once);
:func:`root_from_proof` rebuilds the root from one payload and its proof (the verification
algorithm of RFC 9162 section 2.1.3.2, which also rejects a proof of the wrong length), so a
verifier checks the signature over the root it computed and never trusts a root it was sent.
Pure hashing: no keys, no I/O.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from atomic_p2p.errors import SignatureError

HASH_BYTES = 32
_LEAF = b"\x00"
_NODE = b"\x01"


def leaf_hash(payload: bytes) -> bytes:
    return hashlib.sha256(_LEAF + payload).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(_NODE + left + right).digest()


def tree(payloads: Sequence[bytes]) -> tuple[bytes, list[tuple[bytes, ...]]]:
    """The root over ``payloads`` (at least one) and each payload's inclusion proof, in order.

    Built level by level: pairing nodes left to right and lifting a last unpaired node as it is
    makes the same tree as RFC 9162's split at the largest power of two below n (each subtree
    on the left is then complete), with each node hashed once. A leaf's proof is then read off
    the levels: at each one its node's sibling, if it has one (a lifted node has none)."""
    if not payloads:
        raise ValueError("a Merkle tree needs at least one leaf")
    level = [leaf_hash(payload) for payload in payloads]
    levels = [level]
    while len(level) > 1:
        above = [node_hash(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            above.append(level[-1])
        levels.append(above)
        level = above
    below = levels[:-1]
    paths = []
    for leaf in range(len(payloads)):
        path = []
        index = leaf
        for nodes in below:
            sibling = index ^ 1
            if sibling < len(nodes):
                path.append(nodes[sibling])
            index >>= 1
        paths.append(tuple(path))
    return level[0], paths


def root_from_proof(payload: bytes, index: int, count: int, path: Sequence[bytes]) -> bytes:
    """The root that ``path`` proves ``payload`` to be leaf ``index`` of ``count`` under; a
    proof that cannot be one (an index out of range, a wrong length, a hash not 32 bytes) raises
    :class:`~atomic_p2p.errors.SignatureError`."""
    if not 0 <= index < count:
        raise SignatureError(f"batch proof: leaf {index} of {count} is out of range")
    if len(path) > 64 or any(len(sibling) != HASH_BYTES for sibling in path):
        raise SignatureError("batch proof: a path holds at most 64 hashes of 32 bytes")
    position, last = index, count - 1
    root = leaf_hash(payload)
    for sibling in path:
        if last == 0:
            raise SignatureError("batch proof: the path is longer than the tree is deep")
        if position & 1 or position == last:
            root = node_hash(sibling, root)
            while not position & 1 and position:
                position, last = position >> 1, last >> 1
        else:
            root = node_hash(root, sibling)
        position, last = position >> 1, last >> 1
    if last != 0:
        raise SignatureError("batch proof: the path is shorter than the tree is deep")
    return root
