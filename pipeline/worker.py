"""The worker: the service's Kafka broker, made Dramatiq's global broker, with every actor declared on it.

``dramatiq pipeline`` loads this module (through ``pipeline/__init__.py``); so do the commands that send
to the actors (``python -m pipeline dlq``) and the tests that run them.  Nothing else imports it: the web
builds a broker of its own with :func:`pipeline.broker.build_broker` and sends by actor name
(:mod:`pipeline.contract`).  The broker opens no connection until the first enqueue or consume.
"""

from __future__ import annotations

import dramatiq

from pipeline.broker import build_broker

broker = build_broker()
# Before the actors are imported: ``@dramatiq.actor`` declares each one on the global broker.
dramatiq.set_broker(broker)

from pipeline import actors  # noqa: E402  (needs the global broker set just above)

__all__ = ["actors", "broker"]
