"""Scheduled pulls: Ponte asks an ERP's REST API for changes, for systems that cannot send
webhooks (issue #6). ``config`` reads the definitions, ``rest_poller`` fetches the pages and
turns records into raw events, ``scheduler`` decides when and makes sure only one run of a
source happens at a time, and ``runs`` is the record of every run."""
