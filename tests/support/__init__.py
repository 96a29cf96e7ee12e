"""Helpers only this project's own tests need (a hand-signing wire client, the experiment scripts,
waiting on conditions); what users can test with lives in :mod:`atomic_p2p.testing`."""
