"""Status back to the origin: a CRM's stage change goes back to the shop or ERP the order
came from (seed 004: "actualización de información en origen").

Two halves, joined by a Kafka topic so that durability never depends on the shop:

1. ``POST /crm-webhooks/hubspot/{target_id}`` (``route``) takes HubSpot's webhook batch,
   checks its v3 signature (``signature``), and answers 200 only once every event is in
   ``status_topic`` (``acks=all``, ``intake``); 503 + Retry-After when the broker does not
   acknowledge in time, so HubSpot re-sends (it retries 5xx and timeouts). Events are keyed
   ``target/objectId``: one deal's events stay in one partition, in order.
2. ``StatusBack.run`` (``service``) reads that topic with manual commits. Per event
   (``processor``): drop a HubSpot re-send (``eventId`` already recorded), keep only
   deal-stage changes (``events``), find the record Ponte delivered as that deal
   (``deals``: target + CRM id -> entity, source, source key), map the stage with the
   origin's ``stages`` (``ponte.deliver.origin``), refuse to go back in time (an event older
   than the newest one applied to that origin record is ``stale``), and call the origin
   (``origin_call``): 429/5xx/timeouts retried with backoff, never sooner than Retry-After;
   a refusal (other 4xx) or exhausted retries go to ``status_dead_letter_topic`` with the
   deliver engine's headers (``dead_letters``). Every event's fate is a row in
   ``status_updates`` (``outcomes``). Offsets are committed only after that.

Delivery is at least once towards the origin: a crash between the origin's answer and the
row being written repeats that one call on restart. The calls are idempotent (close a
closed order, set a status it already has), so the repeat changes nothing.

The modules, one concept each (this package's ``__init__`` imports none of them, so each
can be imported alone): ``config`` (the ``crm_webhooks:`` entries), ``signature``
(HubSpot's v3 signature), ``events`` (HubSpot's events, as received and as read back),
``intake`` (the webhook's batch into the status topic), ``route`` (the HTTP route),
``deals`` (which Ponte record a CRM deal is), ``origin_call`` (setting the status, with
retries), ``outcomes`` (what became of an event: its ``status_updates`` row),
``dead_letters`` (the failed ones' topic), ``processor`` (one batch of events, deal by
deal), ``service`` (the component the deliver app starts) and ``metrics`` (the counter).
"""
