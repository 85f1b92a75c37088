"""Kept for older imports: Harbor and Quay now have a module each, ``pick_tag`` is common."""

from noman.senders.common import pick_tag
from noman.senders.harbor import (
    HARBOR_1_TYPES,
    HARBOR_CLOUDEVENTS_PUSH,
    HARBOR_PUSH,
    is_harbor,
    is_harbor_cloudevent,
    parse_harbor,
    parse_harbor_cloudevent,
)
from noman.senders.quay import QUAY_TEST_TAGS, is_quay, parse_quay

__all__ = [
    "HARBOR_1_TYPES",
    "HARBOR_CLOUDEVENTS_PUSH",
    "HARBOR_PUSH",
    "QUAY_TEST_TAGS",
    "is_harbor",
    "is_harbor_cloudevent",
    "is_quay",
    "parse_harbor",
    "parse_harbor_cloudevent",
    "parse_quay",
    "pick_tag",
]
