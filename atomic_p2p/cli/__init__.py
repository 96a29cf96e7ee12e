"""Command-line entry points: ``atomic`` (requester, cli.main) and ``atomic-peer`` (cli.peer)."""
