"""Prometheus metrics, one definition per measured thing, named ``ponte_<service>_...``.

Defined at module level (the prometheus-client idiom: collectors are process-wide).
Labels hold only bounded values: configured source ids, status codes, outcome names.
Requests for unknown sources are counted under ``source="unknown"`` so a scanner cannot
grow the label set.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)

INGEST_REQUESTS = Counter(
    "ponte_ingest_requests_total",
    "Webhook requests answered, by source, HTTP status and outcome.",
    ["source", "status", "outcome"],
)
INGEST_LATENCY = Histogram(
    "ponte_ingest_request_seconds",
    "Time from request received to response, by source.",
    ["source"],
    buckets=LATENCY_BUCKETS,
)
INGEST_BODY_BYTES = Histogram(
    "ponte_ingest_body_bytes",
    "Size of webhook bodies received.",
    ["source"],
    buckets=(256, 1024, 4096, 16384, 65536, 262144, 1048576, 5242880),
)
INGEST_DUPLICATES = Counter(
    "ponte_ingest_duplicates_total",
    "Re-deliveries recognised and answered without a second event.",
    ["source"],
)
INGEST_LAST_ACCEPTED = Gauge(
    "ponte_ingest_last_accepted_timestamp_seconds",
    "Unix time of the last event accepted from each source.",
    ["source"],
)
INGEST_EVENTS = Counter(
    "ponte_ingest_events_total",
    "Record events written to the raw topic, by source.",
    ["source"],
)
INGEST_DEDUP_UNAVAILABLE = Counter(
    "ponte_ingest_dedup_unavailable_total",
    "Deliveries accepted without the duplicate check because PostgreSQL did not answer "
    "(the transform still drops the duplicate by event id).",
)

KAFKA_PRODUCE_LATENCY = Histogram(
    "ponte_kafka_produce_seconds",
    "Time from handing a batch of record events to the producer to the broker's ack.",
    buckets=LATENCY_BUCKETS,
)
KAFKA_PRODUCE_ERRORS = Counter(
    "ponte_kafka_produce_errors_total",
    "Produce attempts that failed or timed out, by reason.",
    ["reason"],
)

HISTORY_QUEUE_DEPTH = Gauge(
    "ponte_history_queue_depth", "Request-history rows waiting to be written."
)
HISTORY_WRITTEN = Counter("ponte_history_rows_written_total", "Request-history rows written.")
HISTORY_DROPPED = Counter(
    "ponte_history_rows_dropped_total",
    "Request-history rows dropped because the queue was full (the events themselves are "
    "unaffected: they are already in Kafka).",
)
HISTORY_WRITE_ERRORS = Counter(
    "ponte_history_write_errors_total", "Failed attempts to write a batch of history rows."
)

TRANSFORM_EVENTS = Counter(
    "ponte_transform_events_total",
    "Raw events processed, by source and outcome (applied, stale, rejected, skipped: every "
    "record of the event left out by a skip rule).",
    ["source", "outcome"],
)
TRANSFORM_REJECTIONS = Counter(
    "ponte_transform_rejections_total",
    "Record events sent to the dead-letter topic, by source and reason code.",
    ["source", "code"],
)
TRANSFORM_UNMAPPED = Counter(
    "ponte_transform_unmapped_fields_total",
    "Fields (or whole tables, field '*') a source sent that its mapping does not place.",
    ["source"],
)
TRANSFORM_ROWS_SKIPPED = Counter(
    "ponte_transform_rows_skipped_total",
    "Rows a mapping's skip rule left out, by source, source table and rule (the rule as "
    "text, 'tipo in [I, X]': bounded by the mapping files).",
    ["source", "table", "rule"],
)
TRANSFORM_CHANGES = Counter(
    "ponte_transform_changes_total", "Change events written to the outbox, by entity.", ["entity"]
)
TRANSFORM_PARKED = Gauge(
    "ponte_transform_parked_references", "References waiting for their target row."
)
TRANSFORM_PARKED_EXPIRED = Counter(
    "ponte_transform_parked_expired_total",
    "Parked references that waited longer than parked_reference_expiry_s and were "
    "dead-lettered, by source.",
    ["source"],
)
TRANSFORM_BATCH_SECONDS = Histogram(
    "ponte_transform_batch_seconds",
    "Time to apply one batch of raw events (decode, database transaction, outbox).",
    buckets=LATENCY_BUCKETS,
)
TRANSFORM_LAST_APPLIED = Gauge(
    "ponte_transform_last_applied_timestamp_seconds",
    "Unix time of the last event from each source applied to the CRM model.",
    ["source"],
)
REPROCESS_EVENTS = Counter(
    "ponte_reprocess_events_total",
    "Raw-topic messages a reprocess (ponte reprocess) has read, by source reprocessed.",
    ["source"],
)
REPROCESS_PROGRESS = Gauge(
    "ponte_reprocess_progress_ratio",
    "How far a running reprocess has read the raw topic (0 to 1), by source. Scraped only "
    "where the reprocess runs inside a process serving /metrics; the CLI prints it.",
    ["source"],
)
TRANSFORM_OUTBOX_PUBLISHED = Counter(
    "ponte_transform_outbox_published_total", "Outbox messages published to Kafka."
)

DELIVER_OUTCOMES = Counter(
    "ponte_deliver_records_total",
    "Change records by target and outcome (delivered, dead_letter, skipped, waiting for a "
    "referenced record, unreadable).",
    ["target", "outcome"],
)
DELIVER_LATENCY = Histogram(
    "ponte_deliver_latency_seconds",
    "From a change event's publication (after its transaction committed) to the CRM's "
    "acknowledgement, per target.",
    ["target"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800),
)
TRANSFORM_OUTBOX_FAILED = Counter(
    "ponte_transform_outbox_refused_total",
    "Outbox messages the broker refused (kept in the outbox, retried, alerted on).",
)

# Per source, exported by the ops service (one query per refresh, whatever the traffic):
# what the "source without success for longer than its maximum" alert compares.
SOURCE_LAST_SUCCESS = Gauge(
    "ponte_source_last_success_timestamp_seconds",
    "Unix time of each source's last success: a webhook accepted or a pull run that "
    "ended ok (0: never).",
    ["source"],
)
SOURCE_MAX_SILENCE = Gauge(
    "ponte_source_max_silence_seconds",
    "Each source's maximum time without success (seed 001's 'Tempo máximo sem sucesso').",
    ["source"],
)
SOURCE_ACTIVE = Gauge(
    "ponte_source_active", "1 for an active source, 0 for an inactive one.", ["source"]
)
