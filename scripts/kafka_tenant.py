"""Set up a tenant on the local Kafka secured as managed services run it (``LOCAL_KAFKA_SECURITY=managed``).

    .venv/bin/python scripts/kafka_tenant.py OPERATOR_ADDRESS CERT_DIR OUT_DIR --prefix P --ssl-port N
        --sasl-port N [--partitions N]

Done as an operator would, on the operator's PLAINTEXT listener (a super user), and safe to run again:

* a SCRAM-SHA-512 user ``app-sasl`` (password made once, kept in CERT_DIR/sasl.password);
* ACLs for the app's two principals (its certificate's ``User:CN=app``, and ``User:app-sasl``): READ, WRITE,
  DESCRIBE and DELETE on topics, READ and DESCRIBE on consumer groups, all under the prefix, and
  IDEMPOTENT_WRITE on the cluster; no right to create topics;
* the topics of the service's queue (``<prefix>users``, ``.DQ``, ``.XQ``), as ``heroku kafka:topics:create``
  makes them;
* OUT_DIR/heroku.env and OUT_DIR/sasl.env: the app's variables, exactly as the platform would set them (PEM
  text in the variables, not paths), for ``source``; OUT_DIR/tenant.json: the same, for tests.
"""

from __future__ import annotations

import argparse
import json
import secrets
import shlex
import sys
from pathlib import Path

from kafka import KafkaAdminClient
from kafka.admin import (
    ACL,
    ACLOperation,
    ACLPermissionType,
    ACLResourcePatternType,
    ResourcePattern,
    ResourceType,
    ScramMechanism,
    UserScramCredentialUpsertion,
)

#: The principals of the app: its client certificate's subject, and its SCRAM user.
CERT_PRINCIPAL = "User:CN=app"
SASL_USER = "app-sasl"
#: The service's queue (pipeline.contract.QUEUE) and its topics' suffixes.
QUEUE = "users"
SUFFIXES = ("", ".DQ", ".XQ")
#: Retention of the failed-message topic, as the app would create it (14 days).
FAILED_RETENTION_MS = 14 * 24 * 3600 * 1000


def tenant_acls(principal: str, prefix: str) -> list[ACL]:
    """What a managed service grants an app: its prefix's topics and groups, and no topic creation."""
    allow = ACLPermissionType.ALLOW

    def acl(operation: ACLOperation, kind: ResourceType, name: str, pattern: ACLResourcePatternType) -> ACL:
        return ACL(principal, "*", operation, allow, ResourcePattern(kind, name, pattern))

    prefixed = ACLResourcePatternType.PREFIXED
    topics = [
        acl(op, ResourceType.TOPIC, prefix, prefixed)
        for op in (ACLOperation.READ, ACLOperation.WRITE, ACLOperation.DESCRIBE, ACLOperation.DELETE)
    ]
    groups = [
        acl(op, ResourceType.GROUP, prefix, prefixed) for op in (ACLOperation.READ, ACLOperation.DESCRIBE)
    ]
    cluster = [
        acl(
            ACLOperation.IDEMPOTENT_WRITE,
            ResourceType.CLUSTER,
            "kafka-cluster",
            ACLResourcePatternType.LITERAL,
        )
    ]
    return topics + groups + cluster


def _password(cert_dir: Path) -> str:
    path = cert_dir / "sasl.password"
    if not path.exists():
        path.write_text(secrets.token_urlsafe(18))
        path.chmod(0o600)
    return path.read_text().strip()


def _write_env(path: Path, variables: dict[str, str], comment: str) -> None:
    lines = [f"# {comment}"] + [f"export {k}={shlex.quote(v)}" for k, v in variables.items()]
    tmp = path.with_suffix(".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.chmod(0o600)
    tmp.replace(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("operator")
    parser.add_argument("cert_dir", type=Path)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--ssl-port", type=int, required=True)
    parser.add_argument("--sasl-port", type=int, required=True)
    parser.add_argument("--partitions", type=int, default=6)
    args = parser.parse_args(argv)

    password = _password(args.cert_dir)
    admin = KafkaAdminClient(bootstrap_servers=args.operator.split(","), client_id="kafka_tenant.py")
    try:
        admin.alter_user_scram_credentials(
            [UserScramCredentialUpsertion(SASL_USER, ScramMechanism.SCRAM_SHA_512, password)]
        )
        acls = tenant_acls(CERT_PRINCIPAL, args.prefix) + tenant_acls(f"User:{SASL_USER}", args.prefix)
        result = admin.create_acls(acls)
        if result.get("failed"):
            print(f"kafka_tenant.py: ACLs refused: {result['failed']}", file=sys.stderr)
            return 1
        topics = {
            f"{args.prefix}{QUEUE}{suffix}": {
                "num_partitions": args.partitions,
                "replication_factor": 1,
                "configs": {"retention.ms": str(FAILED_RETENTION_MS)} if suffix == ".XQ" else {},
            }
            for suffix in SUFFIXES
        }
        created = admin.create_topics(topics, raise_errors=False)
        for topic in created["topics"]:
            if topic["error_code"] not in (0, 36):  # 36: exists already
                print(
                    f"kafka_tenant.py: cannot create {topic['name']}: {topic['error_code']}", file=sys.stderr
                )
                return 1
        admin.wait_for_topics(list(topics), timeout_ms=30_000)
    finally:
        admin.close()

    ca = (args.cert_dir / "ca.pem").read_text()
    heroku = {
        "KAFKA_URL": f"kafka+ssl://127.0.0.1:{args.ssl_port}",
        "KAFKA_TRUSTED_CERT": ca,
        "KAFKA_CLIENT_CERT": (args.cert_dir / "client.crt").read_text(),
        "KAFKA_CLIENT_CERT_KEY": (args.cert_dir / "client.key").read_text(),
        "KAFKA_PREFIX": args.prefix,
    }
    sasl = {
        "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{args.sasl_port}",
        "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "KAFKA_SASL_USERNAME": SASL_USER,
        "KAFKA_SASL_PASSWORD": password,
        "KAFKA_TRUSTED_CERT": ca,
        "KAFKA_TOPIC_PREFIX": args.prefix,
    }
    args.out_dir.mkdir(parents=True, exist_ok=True)
    _write_env(
        args.out_dir / "heroku.env", heroku, "Heroku Kafka's variables for the local Kafka's SSL listener"
    )
    _write_env(args.out_dir / "sasl.env", sasl, "A SASL_SSL/SCRAM-SHA-512 service's variables (local Kafka)")
    tenant = {"operator": args.operator, "prefix": args.prefix, "heroku": heroku, "sasl": sasl}
    (args.out_dir / "tenant.json").write_text(json.dumps(tenant, indent=2))
    (args.out_dir / "tenant.json").chmod(0o600)
    return 0


if __name__ == "__main__":
    sys.exit(main())
