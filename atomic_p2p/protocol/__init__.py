"""The market protocol: RequestBids, Execute, Feedback and BidGradient as domain values
(:mod:`.messages`) and their one mapping to and from bytes (:mod:`.codec`).

docs/architecture.md shows where this sits: below the seller core (:mod:`atomic_p2p.peer.seller`)
and the requester, above the transports that move the bytes.
"""
