"""The ops. Importing this package registers every kernel of every op."""

from . import attention, conv, graph, lstm, matmul  # noqa: F401
