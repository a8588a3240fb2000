"""`nrinv demo` (see nrinv.demo)."""
from ..demo import register  # noqa: F401
