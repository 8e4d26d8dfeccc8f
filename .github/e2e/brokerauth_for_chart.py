#!/usr/bin/env python3
"""Prints the example BrokerAuth of k8s/examples/ wired to what the e2e run installed.

The example names its own Secrets and Kafka; here it gets the chart's (Kafka, Redis, Postgres, the generated JWT
key), the SMTP capture, the images the workflow built, and settings that make the run observable on kind: a plain-HTTP
cookie for curl through port-forward and a small lag target, so a modest backlog scales dbproc.
Usage: brokerauth_for_chart.py EXAMPLES_DIR RELEASE NAMESPACE
"""

import sys
from pathlib import Path

import yaml


def main() -> None:
    examples, release, namespace = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
    documents = [
        doc
        for path in sorted(examples.glob("*.y*ml"))
        for doc in yaml.safe_load_all(path.read_text())
        if doc
    ]
    brokerauths = [doc for doc in documents if doc.get("kind") == "BrokerAuth"]
    if len(brokerauths) != 1:
        sys.exit(f"expected one BrokerAuth in {examples}, found {len(brokerauths)}")
    brokerauth = brokerauths[0]
    brokerauth["metadata"]["namespace"] = namespace
    spec = brokerauth["spec"]
    spec["image"] = {
        "repository": "ghcr.io/cfdbroker/broker-auth",
        "tag": "e2e",
        "pullPolicy": "Never",
    }
    spec["kafka"] = {
        **spec.get("kafka", {}),
        "bootstrapServers": f"{release}-kafka.{namespace}.svc:9092",
        "topicPartitions": 8,
        "replicationFactor": 1,
    }
    spec["secrets"] = {
        "databaseUrl": {"name": f"{release}-postgres", "key": "DATABASE_URL"},
        "redisUrl": {"name": f"{release}-redis", "key": "REDIS_URL"},
        "jwtSecret": {"name": f"{release}-jwt", "key": "JWT_SECRET"},
        "mailSealKey": {"name": f"{release}-mail-seal", "key": "MAIL_SEAL_KEY"},
        "smtpUrl": {"name": "e2e-smtp", "key": "SMTP_URL"},
    }
    spec["api"] = {**spec.get("api", {}), "minReplicas": 1, "maxReplicas": 2, "cookieSecure": False, "bcryptCost": 4}
    spec["dbproc"] = {**spec.get("dbproc", {}), "minReplicas": 1, "maxReplicas": 4, "lagPerReplica": 5}
    spec["autoscaling"] = {**spec.get("autoscaling", {}), "provider": "Operator"}
    yaml.safe_dump(brokerauth, sys.stdout, sort_keys=False)


if __name__ == "__main__":
    main()
