"""docs/protocol.md section 11 holds the bytes the code produces, and they check out on their own."""

from __future__ import annotations

import hashlib
import runpy
from pathlib import Path

from nacl.bindings import crypto_sign_open

from atomic_p2p import merkle
from atomic_p2p.identity import batch_signing_input, signing_input

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = runpy.run_path(str(ROOT / "scripts" / "protocol_vectors.py"))


def _documented() -> dict[str, str]:
    doc = (ROOT / "docs" / "protocol.md").read_text()
    block = doc[doc.index(SCRIPT["BEGIN"]) : doc.index(SCRIPT["END"])]
    rows = [line.split(" | ") for line in block.splitlines() if line.startswith("| ") and "`" in line]
    return {row[0].removeprefix("| "): row[-1].strip("` |") for row in rows}


def test_the_documented_vectors_are_what_the_code_produces() -> None:
    doc = (ROOT / "docs" / "protocol.md").read_text()
    assert SCRIPT["block"]() in doc, (
        "docs/protocol.md is stale: run python scripts/protocol_vectors.py --write"
    )


def test_every_documented_signature_verifies_over_its_documented_payload() -> None:
    vectors = _documented()
    keys = {
        "alice": bytes.fromhex(vectors["alice public key"]),
        "bob": bytes.fromhex(vectors["bob public key"]),
    }
    assert hashlib.sha256(keys["alice"]).hexdigest() == vectors["alice peer id"]
    signers = {
        "BidRequest": "alice",
        "Bid": "bob",
        "ExecuteOrder": "alice",
        "ExecuteResult": "bob",
        "FeedbackNotice": "alice",
        "BidGradientUpdate": "alice",
        "PeerRecord": "bob",
        "Heartbeat": "bob",
        "Leave": "bob",
    }
    for kind, signer in signers.items():
        payload = bytes.fromhex(vectors[f"{kind} payload"])
        signature = bytes.fromhex(vectors[f"{kind} signature"])
        crypto_sign_open(signature + signing_input(f"atomic.v1.{kind}", payload), keys[signer])
    bid = bytes.fromhex(vectors["Bid payload"])
    assert hashlib.sha256(bid).hexdigest() == vectors["bid digest"]
    task = bytes.fromhex(vectors["TaskSpec"])
    assert hashlib.sha256(task).hexdigest() == vectors["task digest"]


def test_the_detached_request_signs_the_task_digest_and_carries_the_task_beside() -> None:
    """Section 3.2: the detached BidRequest verifies, its field 8 holds the task digest and no
    task, and the RequestBidsRequest holds its envelope (field 1) and the TaskSpec (field 2)."""
    vectors = _documented()
    payload = bytes.fromhex(vectors["detached BidRequest payload"])
    signature = bytes.fromhex(vectors["detached BidRequest signature"])
    alice = bytes.fromhex(vectors["alice public key"])
    crypto_sign_open(signature + signing_input("atomic.v1.BidRequest", payload), alice)
    digest, task = bytes.fromhex(vectors["task digest"]), bytes.fromhex(vectors["TaskSpec"])
    assert bytes([8 << 3 | 2, 32]) + digest in payload  # field 8, length-delimited, 32 bytes
    assert task not in payload
    call = bytes.fromhex(vectors["detached RequestBidsRequest"])
    assert call.endswith(bytes([2 << 3 | 2, len(task)]) + task) and payload in call and signature in call


def test_every_documented_batch_proof_leads_to_the_signed_root() -> None:
    vectors = _documented()
    payloads = [
        bytes.fromhex(vectors[name]) for name in ("Bid payload", "batch Bid 1 payload", "batch Bid 2 payload")
    ]
    root = bytes.fromhex(vectors["batch root"])
    assert merkle.leaf_hash(payloads[0]).hex() == vectors["batch leaf 0"]
    for index, payload in enumerate(payloads):
        path = [bytes.fromhex(sibling) for sibling in vectors[f"batch proof {index}"].split()]
        assert merkle.root_from_proof(payload, index, 3, path) == root
    message = batch_signing_input("atomic.v1.Bid", 3, root)
    assert message.hex() == vectors["batch signing input"]
    crypto_sign_open(
        bytes.fromhex(vectors["batch signature"]) + message, bytes.fromhex(vectors["bob public key"])
    )
