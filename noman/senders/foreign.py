"""Formats Noman does not take, recognised so the refusal can say what arrived.

Each is a row of the table like any sender, whose parser refuses (400
``invalid_payload``) with a message naming what the delivery looks like
and what to do instead; nothing is written. Like any unsigned delivery it
must first carry the service's ``auth_header`` when one is required, so a
caller without it learns nothing about formats. A body that is none of these
and no supported sender either gets the generic refusal in
``noman.senders``. Sources: GitLab's webhook docs (``X-Gitlab-Event``),
Bitbucket's (``X-Event-Key``), Gogs' (``X-Gogs-Event``), Sonatype Nexus'
(``X-Nexus-Webhook-Id``), Amazon SNS's (``x-amz-sns-message-type``,
``Type``/``TopicArn``) and EventBridge's (``source: aws.ecr``,
``detail-type``), Google Pub/Sub push subscriptions (``message``,
``subscription``), and CloudEvents 1.0 (``specversion``; ``ce-*`` headers
in binary mode).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NoReturn

from noman.errors import InvalidPayload
from noman.model import Service
from noman.release import quote
from noman.senders.common import JSON, Headers, Sender

TAKEN = (
    "Noman takes pushes from DockerHub, GitHub packages, Gitea/Forgejo packages, Harbor, Quay, "
    "Docker distribution (registry:2) and GitLab container registry notifications, Azure "
    'Container Registry and JFrog Artifactory, Standard Webhooks, or {"tag": "<tag>"}.'
)
# For the senders that are not registries: have the pipeline that pushed call the hook.
FROM_CI = 'Have the pipeline that pushes the image call this URL with {"tag": "<tag>"}.'


def refusal(what: Callable[[JSON, Headers], str], hint: str) -> Callable[..., NoReturn]:
    """A parser that refuses, naming what the delivery looks like."""

    def refuse(payload: JSON, service: Service | None, headers: Headers) -> NoReturn:
        raise InvalidPayload(
            f"This looks like {what(payload, headers)}; not a format Noman takes. {hint} {TAKEN}"
        )

    return refuse


def _header(name: str) -> Callable[[Headers], bool]:
    return lambda headers: name in headers


def _event(header: str) -> Callable[[JSON, Headers], str]:
    return lambda payload, headers: quote(headers.get(header, ""), 40)


FOREIGN_BY_HEADERS = (
    Sender(
        "gogs",
        refusal(
            lambda p, h: f"a Gogs webhook (event {_event('x-gogs-event')(p, h)})",
            f"Gogs has no container registry. {FROM_CI}",
        ),
        headers=_header("x-gogs-event"),
    ),
    Sender(
        "gitlab",
        refusal(
            lambda p, h: f"a GitLab webhook (event {_event('x-gitlab-event')(p, h)})",
            "GitLab's container registry announces pushes through its registry notifications "
            "(registry['notifications'] in gitlab.rb), which Noman takes; project webhooks "
            f"announce git events. {FROM_CI}",
        ),
        headers=_header("x-gitlab-event"),
    ),
    Sender(
        "bitbucket",
        refusal(
            lambda p, h: f"a Bitbucket webhook (event {_event('x-event-key')(p, h)})",
            f"Bitbucket has no container registry. {FROM_CI}",
        ),
        headers=_header("x-event-key"),
    ),
    Sender(
        "nexus",
        refusal(
            lambda p, h: "a Sonatype Nexus webhook",
            f"Nexus' webhooks do not name a pushed image tag Noman can read. {FROM_CI}",
        ),
        headers=_header("x-nexus-webhook-id"),
    ),
    Sender(
        "sns",
        refusal(
            lambda p, h: "an Amazon SNS message",
            f"Amazon ECR sends no webhooks of its own. {FROM_CI}",
        ),
        headers=_header("x-amz-sns-message-type"),
    ),
    Sender(
        "cloudevents-binary",
        refusal(
            lambda p, h: f"a CloudEvents event (binary mode, type {_event('ce-type')(p, h)})",
            "Of CloudEvents, Noman takes Harbor's (structured mode, type harbor.artifact.pushed).",
        ),
        headers=_header("ce-specversion"),
    ),
)


def _is_eventbridge(payload: JSON) -> bool:
    return "detail-type" in payload and "detail" in payload and "source" in payload


def _is_sns(payload: JSON) -> bool:
    return "TopicArn" in payload and "Type" in payload


def _is_pubsub(payload: JSON) -> bool:
    return isinstance(payload.get("message"), dict) and "subscription" in payload


def _is_cloudevent(payload: JSON) -> bool:
    return "specversion" in payload


def _eventbridge(payload: JSON, headers: Headers) -> str:
    source, kind = payload.get("source"), payload.get("detail-type")
    return (
        f"an Amazon EventBridge event (source {quote(str(source), 40)}, "
        f"detail-type {quote(str(kind), 40)})"
    )


FOREIGN_BY_SHAPE = (
    Sender(
        "eventbridge",
        refusal(
            _eventbridge,
            "Amazon ECR sends no webhooks of its own; forward its 'ECR Image Action' events "
            'as {"tag": "<tag>"} (an EventBridge API destination with an input transformer), '
            f"or {FROM_CI[0].lower()}{FROM_CI[1:]}",
        ),
        shape=_is_eventbridge,
    ),
    Sender(
        "sns",
        refusal(
            lambda p, h: "an Amazon SNS message",
            f"Amazon ECR sends no webhooks of its own. {FROM_CI}",
        ),
        shape=_is_sns,
    ),
    Sender(
        "pubsub",
        refusal(
            lambda p, h: "a Google Cloud Pub/Sub push message (e.g. Artifact Registry's)",
            f"Artifact Registry announces pushes through Pub/Sub only. {FROM_CI}",
        ),
        shape=_is_pubsub,
    ),
    Sender(
        "cloudevents",
        refusal(
            lambda p, h: f"a CloudEvents event of type {quote(str(p.get('type')), 60)}",
            "Of CloudEvents, Noman takes Harbor's (type harbor.artifact.pushed).",
        ),
        shape=_is_cloudevent,
    ),
)
