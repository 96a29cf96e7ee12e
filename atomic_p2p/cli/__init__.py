"""Command-line entry points: ``atomic`` (requester, cli.main) and ``atomic-peer`` (cli.peer).

gRPC's C core reads its log level once, when it loads, and prints its own lines (a failed bind,
say) straight to stderr before our clean message; both commands import grpc after this package,
so the default is set here, where a user's own ``GRPC_VERBOSITY`` still wins.
"""

import os

os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
