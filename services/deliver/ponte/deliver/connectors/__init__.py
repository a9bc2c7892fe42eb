"""CRM connectors: one module per kind of target (``hubspot``, ``ploomes``, ``rest``,
``webhook``), what they share (``base``), and the registry of kinds (``registry``)."""
