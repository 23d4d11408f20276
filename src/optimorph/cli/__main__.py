"""``python -m optimorph.cli``: the ``optimorph`` command."""

from optimorph.cli import entry

entry()
