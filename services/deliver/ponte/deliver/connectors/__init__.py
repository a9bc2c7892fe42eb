"""Connectors: one per CRM API, all behind ``Connector``."""
