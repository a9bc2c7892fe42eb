"""Every kind of target Ponte delivers to, by the ``kind:`` of its YAML entry.

A new kind is one module (its settings model, a subclass of ``Target``, and its connector)
and one line here.
"""

from ponte.deliver.connectors.base import Connector, TargetKind
from ponte.deliver.connectors.hubspot import HubSpotConnector, HubSpotTarget
from ponte.deliver.connectors.ploomes import PloomesConnector, PloomesTarget
from ponte.deliver.connectors.rest import RestConnector, RestTarget
from ponte.deliver.connectors.webhook import WebhookConnector, WebhookTarget

TARGET_KINDS: dict[str, TargetKind] = {
    "hubspot": TargetKind(HubSpotTarget, HubSpotConnector.for_target),
    "ploomes": TargetKind(PloomesTarget, PloomesConnector.for_target),
    "rest": TargetKind(RestTarget, RestConnector.for_target),
    "webhook": TargetKind(WebhookTarget, WebhookConnector.for_target),
}

__all__ = ["TARGET_KINDS", "Connector", "TargetKind"]
