"""shelf: a self-hosted recommendation engine for online shops.

Nothing happens at import time: submodules are imported where they are used.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
