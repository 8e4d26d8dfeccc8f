#!/usr/bin/env bash
# Puts a backlog on dbproc's request topic and waits for the dbproc HPA to ask for more replicas.
# Usage: lag-scaling.sh NAMESPACE BROKERAUTH KAFKA_POD
set -euo pipefail
namespace=$1
name=$2
kafka_pod=$3

prefix=$(kubectl -n "$namespace" get brokerauth "$name" -o jsonpath='{.status.topicPrefix}')
topic="${prefix}user-existence-check"
echo "producing a backlog on $topic"
# Records that are not requests: dbproc dead-letters each one, so the backlog drains at worker speed, not at once.
# The tool runs in the Kafka pod beside the broker, with a heap of its own below the pod's memory limit.
kubectl -n "$namespace" exec "$kafka_pod" -- env KAFKA_HEAP_OPTS=-Xmx256m \
  /opt/kafka/bin/kafka-producer-perf-test.sh --topic "$topic" --num-records 300000 --record-size 200 \
  --throughput -1 --producer-props bootstrap.servers=localhost:9092 acks=1 linger.ms=5

hpa="$name-dbproc"
deadline=$((SECONDS + 300))
while true; do
  desired=$(kubectl -n "$namespace" get hpa "$hpa" -o jsonpath='{.status.desiredReplicas}')
  echo "desired dbproc replicas: ${desired:-?}; lag: $(kubectl -n "$namespace" get brokerauth "$name" -o jsonpath='{.status.lag}')"
  if [[ "${desired:-0}" -gt 1 ]]; then
    break
  fi
  if ((SECONDS > deadline)); then
    echo "::error::the dbproc HPA did not scale up within 300 s"
    kubectl -n "$namespace" describe hpa "$hpa"
    kubectl get --raw "/apis/external.metrics.k8s.io/v1beta1/namespaces/$namespace/brokerauth-dbproc-lag" || true
    exit 1
  fi
  sleep 5
done
kubectl -n "$namespace" describe hpa "$hpa"
kubectl get --raw "/apis/external.metrics.k8s.io/v1beta1/namespaces/$namespace/brokerauth-dbproc-lag" | jq .
echo "dbproc HPA scaled to $desired replicas"
