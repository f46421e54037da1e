"""The worker side of batch-user-processing, run by ``dramatiq pipeline``.

Importing the package builds the configured Kafka broker (lazily: no connection is opened until the first
enqueue or consume), makes it Dramatiq's global broker and declares the actors.
"""

from pipeline import actors  # noqa: F401  (declares the actors on the broker)
from pipeline.broker import broker

__all__ = ["broker"]
