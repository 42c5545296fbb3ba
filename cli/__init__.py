"""The program's front door: the ``cme-ser`` command (``main.py``: its options, each command run
by a ``*_command.py`` of the package that does the work). It may import every other package and
none imports it. ``python -m cli`` is ``cme-ser``."""
