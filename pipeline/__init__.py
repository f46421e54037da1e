"""The worker side of batch-user-processing, run by ``dramatiq pipeline``, and what the web shares with it.

Importing the package has no side effects, except under Dramatiq's command line (see below).  The worker
itself (the broker and the actors) is :mod:`pipeline.worker`; what the web and the worker agree on is
:mod:`pipeline.contract`.
"""

import sys

# ``dramatiq pipeline`` imports this package, then takes Dramatiq's global broker: the module it is given
# must set that broker and declare the actors.  Only then is the worker loaded; every other importer (the
# web, the command line, the tests) imports ``pipeline.contract`` and the like without building a broker.
if "dramatiq.cli" in sys.modules:
    from pipeline.worker import broker  # noqa: F401
