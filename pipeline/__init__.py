"""The worker side of batch-user-processing, run by ``dramatiq pipeline``, and what the web shares with it.

Importing the package has no side effects, except when Dramatiq's command line was asked for it (see
below).  The worker itself (the broker and the actors) is :mod:`pipeline.worker`; what the web and the worker
agree on is :mod:`pipeline.contract`; the Kafka transport is a package of its own, ``dramatiq_kafka_broker``.
"""

import contextlib
import io
import sys


def _named_on_dramatiqs_command_line() -> bool:
    """Whether this process is ``dramatiq pipeline`` (or ``dramatiq pipeline.worker``, ``pipeline:broker``).

    Only the package named as the broker's module may declare actors: a foreign Dramatiq app that imports
    something of ours (``pipeline.contract``, to send to our actors by name) gets neither our broker nor our
    actors.  Dramatiq's worker processes inherit the command line (forked or spawned), so its own parser
    reads it.
    """
    cli = sys.modules.get("dramatiq.cli")
    if cli is None:
        return False
    # (another program that imported dramatiq.cli has other arguments: argparse then exits, quietly here)
    with contextlib.redirect_stderr(io.StringIO()), contextlib.suppress(SystemExit):
        arguments, _ = cli.make_argument_parser().parse_known_args(sys.argv[1:])
        return arguments.broker.partition(":")[0].split(".")[0] == __name__
    return False


# ``dramatiq pipeline`` imports this package, then takes Dramatiq's global broker: the module it is given
# must set that broker and declare the actors.  Every other importer (the web, the command line, the tests,
# another team's worker) imports ``pipeline.contract`` and the like without building a broker.
if _named_on_dramatiqs_command_line():
    from pipeline.worker import broker  # noqa: F401
