#!/usr/bin/env bash
# Creates (or brings up to date) the Pub/Sub resources and IAM bindings of the scheduled-query
# orchestrator in one Google Cloud project. Idempotent: safe to run again.
#
#   PROJECT_ID=my-gcp-project deploy/pubsub/create-resources.sh
#
# Environment:
#   PROJECT_ID        (required) the project of the topics, subscriptions and service accounts
#   NAMESPACE         Kubernetes namespace of the workloads (default sqo), for Workload Identity
#   CREATE_SERVICE_ACCOUNTS  true (default): create the Google service accounts sqo-controller
#                     and sqo-worker and bind them to the Kubernetes ServiceAccounts of the same
#                     names (roles/iam.workloadIdentityUser); false: they must exist already
#   METRICS_READER    optional member (e.g. serviceAccount:keda-operator@P.iam.gserviceaccount.com
#                     or principal://... for KEDA's or the metrics adapter's identity) given
#                     roles/monitoring.viewer, so the autoscaler can read the backlog metric
#
# Resources (names match the workers' and the controller's defaults):
#   topics        jobs, job-results, jobs-dead-letter
#   subscription  jobs-workers on jobs: ack deadline 60 s, retry backoff 10 s..600 s,
#                 dead-letter to jobs-dead-letter after 20 delivery attempts, never expires
#   subscription  jobs-dead-letter-keep on jobs-dead-letter, so dead letters are kept (7 days)
#   subscription  job-results-controller on job-results: the controller learns run durations
set -euo pipefail

: "${PROJECT_ID:?set PROJECT_ID to the Google Cloud project id}"
NAMESPACE=${NAMESPACE:-sqo}
CREATE_SERVICE_ACCOUNTS=${CREATE_SERVICE_ACCOUNTS:-true}
METRICS_READER=${METRICS_READER:-}

JOBS_TOPIC="jobs"
RESULTS_TOPIC=job-results
RESULTS_SUBSCRIPTION=job-results-controller
DEAD_LETTER_TOPIC=jobs-dead-letter
JOBS_SUBSCRIPTION=jobs-workers
DEAD_LETTER_SUBSCRIPTION=jobs-dead-letter-keep

CONTROLLER_GSA=sqo-controller@${PROJECT_ID}.iam.gserviceaccount.com
WORKER_GSA=sqo-worker@${PROJECT_ID}.iam.gserviceaccount.com

gc() { gcloud --project="$PROJECT_ID" --quiet "$@"; }
log() { echo "create-resources: $*" >&2; }

ensure_topic() {
  if gc pubsub topics describe "$1" >/dev/null 2>&1; then
    log "topic $1 exists"
  else
    log "creating topic $1"
    gc pubsub topics create "$1"
  fi
}

# The worker subscription's delivery policy; `update` brings an existing one in line.
jobs_subscription_flags=(
  --ack-deadline=60
  --min-retry-delay=10s
  --max-retry-delay=600s
  --dead-letter-topic="$DEAD_LETTER_TOPIC"
  --max-delivery-attempts=20
  --expiration-period=never
)

ensure_jobs_subscription() {
  if gc pubsub subscriptions describe "$JOBS_SUBSCRIPTION" >/dev/null 2>&1; then
    log "updating subscription $JOBS_SUBSCRIPTION"
    gc pubsub subscriptions update "$JOBS_SUBSCRIPTION" "${jobs_subscription_flags[@]}"
  else
    log "creating subscription $JOBS_SUBSCRIPTION on $JOBS_TOPIC"
    gc pubsub subscriptions create "$JOBS_SUBSCRIPTION" --topic="$JOBS_TOPIC" \
      "${jobs_subscription_flags[@]}"
  fi
}

ensure_dead_letter_subscription() {
  if gc pubsub subscriptions describe "$DEAD_LETTER_SUBSCRIPTION" >/dev/null 2>&1; then
    log "subscription $DEAD_LETTER_SUBSCRIPTION exists"
  else
    log "creating subscription $DEAD_LETTER_SUBSCRIPTION on $DEAD_LETTER_TOPIC"
    gc pubsub subscriptions create "$DEAD_LETTER_SUBSCRIPTION" --topic="$DEAD_LETTER_TOPIC" \
      --message-retention-duration=7d --expiration-period=never
  fi
}

ensure_service_account() { # name, display name
  if gc iam service-accounts describe "$1@${PROJECT_ID}.iam.gserviceaccount.com" >/dev/null 2>&1; then
    log "service account $1 exists"
  else
    log "creating service account $1"
    gc iam service-accounts create "$1" --display-name="$2"
  fi
  # Workload Identity: the Kubernetes ServiceAccount NAMESPACE/NAME acts as this account.
  gc iam service-accounts add-iam-policy-binding "$1@${PROJECT_ID}.iam.gserviceaccount.com" \
    --role=roles/iam.workloadIdentityUser \
    --member="serviceAccount:${PROJECT_ID}.svc.id.goog[${NAMESPACE}/$1]" >/dev/null
}

topic_binding() { # topic, member, role
  log "topic $1: $3 for $2"
  gc pubsub topics add-iam-policy-binding "$1" --member="$2" --role="$3" >/dev/null
}

subscription_binding() { # subscription, member, role
  log "subscription $1: $3 for $2"
  gc pubsub subscriptions add-iam-policy-binding "$1" --member="$2" --role="$3" >/dev/null
}

ensure_topic "$JOBS_TOPIC"
ensure_topic "$RESULTS_TOPIC"
ensure_topic "$DEAD_LETTER_TOPIC"
ensure_jobs_subscription
ensure_dead_letter_subscription
if gc pubsub subscriptions describe "$RESULTS_SUBSCRIPTION" >/dev/null 2>&1; then
  log "subscription $RESULTS_SUBSCRIPTION exists"
else
  log "creating subscription $RESULTS_SUBSCRIPTION on $RESULTS_TOPIC (the controller learns run durations)"
  gc pubsub subscriptions create "$RESULTS_SUBSCRIPTION" --topic="$RESULTS_TOPIC" --ack-deadline=60 \
    --expiration-period=never
fi

# Dead-lettering is done by the Pub/Sub service agent: it must publish to the dead-letter
# topic and acknowledge (subscribe to) the source subscription.
project_number=$(gcloud projects describe "$PROJECT_ID" --format='value(projectNumber)')
pubsub_agent="serviceAccount:service-${project_number}@gcp-sa-pubsub.iam.gserviceaccount.com"
topic_binding "$DEAD_LETTER_TOPIC" "$pubsub_agent" roles/pubsub.publisher
subscription_binding "$JOBS_SUBSCRIPTION" "$pubsub_agent" roles/pubsub.subscriber

if [ "$CREATE_SERVICE_ACCOUNTS" = true ]; then
  ensure_service_account sqo-controller "Scheduled-query orchestrator controller"
  ensure_service_account sqo-worker "Scheduled-query orchestrator worker"
fi

# Controller: publishes job messages; its readiness check reads the jobs topic (topics.get).
controller="serviceAccount:${CONTROLLER_GSA}"
topic_binding "$JOBS_TOPIC" "$controller" roles/pubsub.publisher
topic_binding "$JOBS_TOPIC" "$controller" roles/pubsub.viewer
subscription_binding "$RESULTS_SUBSCRIPTION" "$controller" roles/pubsub.subscriber

# Worker: pulls jobs-workers, publishes results and dead letters; its readiness check reads
# the results topic (topics.get).
worker="serviceAccount:${WORKER_GSA}"
subscription_binding "$JOBS_SUBSCRIPTION" "$worker" roles/pubsub.subscriber
subscription_binding "$JOBS_SUBSCRIPTION" "$worker" roles/pubsub.viewer
topic_binding "$RESULTS_TOPIC" "$worker" roles/pubsub.publisher
topic_binding "$DEAD_LETTER_TOPIC" "$worker" roles/pubsub.publisher
# The ledger's sweeper publishes again a run whose message was lost (see the README).
topic_binding "$JOBS_TOPIC" "$worker" roles/pubsub.publisher
topic_binding "$RESULTS_TOPIC" "$worker" roles/pubsub.viewer

if [ -n "$METRICS_READER" ]; then
  log "project: roles/monitoring.viewer for $METRICS_READER"
  gc projects add-iam-policy-binding "$PROJECT_ID" --member="$METRICS_READER" \
    --role=roles/monitoring.viewer --condition=None >/dev/null
fi

log "done: topics $JOBS_TOPIC, $RESULTS_TOPIC, $DEAD_LETTER_TOPIC; subscriptions $JOBS_SUBSCRIPTION, $DEAD_LETTER_SUBSCRIPTION, $RESULTS_SUBSCRIPTION"
