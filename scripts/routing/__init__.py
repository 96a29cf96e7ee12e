"""The routing-quality benchmark's parts (``scripts/bench_routing.py`` drives them).

- :mod:`.market`: the peers (real PeerNodes on loopback), the task stream, and the log of every
  bid and of every bid's executed outcome (the only part that does I/O).
- :mod:`.policies`: the utility, the routing policies and their online replay with bandit
  feedback. Pure: the log and a seed in, choices out.
- :mod:`.report`: metrics over the replays, the table, the JSON and the plots.
"""
