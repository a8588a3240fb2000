"""Input size limits shared by the library, the command line and the web app (torch-free: the command line
reads them while it builds its parser, before anything heavy is imported)."""
from __future__ import annotations

__all__ = ["DEFAULT_MAX_PIXELS", "DECODE_MAX_PIXELS"]

#: the most pixels an image may have unless the caller (``--max-pixels``, ``max_pixels=``) allows more: SDXL's
#: and Flux's native 1024x1024; the web app's upload limit too (a 4096x4096 input sat minutes at its first step)
DEFAULT_MAX_PIXELS = 1024 * 1024
#: the most pixels of a file that is resized on loading (``size=``, ``--resize``): the pixel limit holds the
#: resized image; this bounds only the decoding (a 12-megapixel photo resized to 1024x768 is fine)
DECODE_MAX_PIXELS = 8192 * 8192
