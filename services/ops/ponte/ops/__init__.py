"""Ponte ops: the operations API and page (seed 001's "Dados ERP" screens)."""
