"""kafka-python's security options (TLS, SASL PLAIN/SCRAM) from settings, as Heroku and other managed Kafkas
hand them out: certificates as text in variables, written to private temporary files."""

from __future__ import annotations

import atexit
import os
import tempfile
from typing import Any

from pipeline import settings


def _pem_file(text: str, suffix: str) -> str:
    """kafka-python wants certificate *files*; Heroku hands out their text in variables."""
    handle = tempfile.NamedTemporaryFile("w", suffix=suffix, delete=False)  # noqa: SIM115
    with handle:
        handle.write(text)
    os.chmod(handle.name, 0o600)
    atexit.register(lambda: os.path.exists(handle.name) and os.unlink(handle.name))
    return handle.name


def client_options() -> dict[str, Any]:
    """kafka-python options for security (SSL, SASL PLAIN/SCRAM) and whatever ``KAFKA_OPTIONS`` adds."""
    options: dict[str, Any] = {"security_protocol": settings.KAFKA_SECURITY_PROTOCOL}
    if settings.KAFKA_SECURITY_PROTOCOL in {"SSL", "SASL_SSL"}:
        options["ssl_check_hostname"] = settings.KAFKA_SSL_CHECK_HOSTNAME
        if settings.KAFKA_TRUSTED_CERT:
            options["ssl_cafile"] = _pem_file(settings.KAFKA_TRUSTED_CERT, ".ca.pem")
        if settings.KAFKA_CLIENT_CERT:
            options["ssl_certfile"] = _pem_file(settings.KAFKA_CLIENT_CERT, ".cert.pem")
        if settings.KAFKA_CLIENT_CERT_KEY:
            options["ssl_keyfile"] = _pem_file(settings.KAFKA_CLIENT_CERT_KEY, ".key.pem")
    if settings.KAFKA_SECURITY_PROTOCOL.startswith("SASL_"):
        options["sasl_mechanism"] = settings.KAFKA_SASL_MECHANISM or "PLAIN"
        options["sasl_plain_username"] = settings.KAFKA_SASL_USERNAME
        options["sasl_plain_password"] = settings.KAFKA_SASL_PASSWORD
    options.update(settings.KAFKA_OPTIONS)
    return options
