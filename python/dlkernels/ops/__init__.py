"""The ops. Importing this package registers every kernel of every op."""

from . import conv, matmul  # noqa: F401
from . import lstm  # noqa: F401
from . import attention  # noqa: F401
from . import graph  # noqa: F401
