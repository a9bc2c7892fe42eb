"""Ingest: signed webhooks from ERPs and shops, durably into the raw Kafka topic."""
