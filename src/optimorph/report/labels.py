"""Text for matplotlib: an optimizer spec drawn as the plain text it is.

matplotlib reads text between two '$' as TeX math; a spec such as ``pkg.mod:f(a='$x$')`` is not.

>>> plain_text("adam(lr=1e-3)"), plain_text("a$b$")
('adam(lr=1e-3)', 'a\\\\$b\\\\$')
"""

from __future__ import annotations

__all__ = ["plain_text"]


def plain_text(label: object) -> str:
    """``label`` as a string with every '$' escaped."""
    return str(label).replace("$", r"\$")
