"""The tests, as a package: pytest imports every file here under one name, its path's (``tests.conftest``,
``tests.livestack``, ``tests.faults.load``), with the repository's root on ``sys.path`` and not ``tests/``
itself.  So ``from livestack import ...`` fails instead of loading a second copy; ``tests/test_imports.py``
keeps it so."""
