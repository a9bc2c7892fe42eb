"""Replay: every stage's dead letters back where they came from, after a fix.

Three stages write dead letters, and each goes back to the topic its stage reads:

- **transform** (``transform_dead_letter_topic``): the original raw event, onto the raw
  topic, keyed ``source/resource/record-key`` as ingest keys it, so one record's events
  keep their partition and order. The transform applies a record only if its version
  (time, sequence, event id: ``ponte.shared.versions``) is newer than the stored one. A
  source that names its own sequence keeps it in the event, so a second replay is stale;
  without one the sequence is the raw topic offset, and a replayed event (a new, larger
  offset) wins against a stored version of the *same* time: replay a dead letter before
  newer events of that record in the same minute, or give the source a sequence field.
- **deliver** (``deliver_dead_letter_topic``): the change, onto the changes topic, keyed
  ``entity/source/key``. The deliver engine skips a version a target already has.
- **status** (``status_dead_letter_topic``): the CRM's event, onto the status topic, keyed
  ``target/objectId`` as the webhook route keys it, marked ``REPLAYED_FROM``. Status back
  drops an event it has a row for, except a replayed one whose row says ``failed``; once
  applied, a second replay is a duplicate again.

A dead letter that cannot go back (its value was never a readable event, only the
pointer to its bytes) is listed with the reason, never silently left out.

The modules, one concept each (this ``__init__`` imports none of them): ``letters``
(reading dead-letter topics until they stay quiet), ``items`` (what a dead letter is to
the operator and what goes back out), ``transform``, ``deliver``, ``status`` (each
stage's dead letters read), ``stages`` (which topic and reader per stage),
``selection`` (the filters), ``sending`` (producing what goes back) and ``run`` (the one
entry point, ``replay``, for ``ponte replay`` and ``POST /ops/replay``).
"""
