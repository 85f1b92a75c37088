"""The minimal correct relay: the least a safe deploy webhook must do, for bench/compare.py.

``POST /hooks/<secret>`` with ``{"tag": ..., "repository": ...}``:

  1. find the service by secret (every digest compared, constant time),
  2. check the repository and the tag's grammar (a relay that writes any string a caller
     sends into Consul is not correct, so this much stays),
  3. read the key and its ModifyIndex with py-consul,
  4. write it with ``?cas=`` (a lost race is read and tried again, a few times).

Nothing else: no forward-only ordering, no history, no logs of its own, no metrics, no
signatures. It runs under Noman's gunicorn configuration so that the comparison measures
Noman's own work, not a different serving model:

    RELAY_CONFIG=relay.json gunicorn -c python:noman.server.config \\
        --pythonpath bench 'minimal_relay:create_app()'

``relay.json``: ``{"consul": "http://127.0.0.1:8500", "services": [{"secret_sha256": ...,
"repository": ..., "key": ...}, ...]}``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import consul
from flask import Flask, Response, request

#: Noman's default tag_pattern, so both accept exactly the same tags.
TAG = re.compile(r"release-(\d{14})", re.ASCII)
CAS_TRIES = 3


@dataclass(frozen=True)
class RelayService:
    """One service: the sha256 hex of its secret, its image repository and its Consul key."""

    secret_sha256: str
    repository: str
    key: str


def _answer(status: int, body: dict[str, Any]) -> Response:
    return Response(json.dumps(body), status=status, mimetype="application/json")


def _error(status: int, code: str, message: str) -> Response:
    return _answer(status, {"error": code, "message": message})


def find_service(services: list[RelayService], secret: str) -> RelayService | None:
    """The service whose secret this is; compares every digest so timing reveals nothing."""
    presented = hashlib.sha256(secret.encode()).hexdigest()
    found = None
    for service in services:
        if hmac.compare_digest(presented, service.secret_sha256) and found is None:
            found = service
    return found


def create_app(config: dict[str, Any] | None = None) -> Flask:
    """The relay app; ``config`` defaults to the JSON file named by $RELAY_CONFIG."""
    if config is None:
        with open(os.environ["RELAY_CONFIG"], encoding="utf-8") as file:
            config = json.load(file)
    services = [RelayService(**entry) for entry in config["services"]]
    url = urlsplit(config["consul"])
    client = consul.Consul(host=url.hostname, port=url.port or 8500, scheme=url.scheme)
    client.http.session.trust_env = False
    app = Flask(__name__)

    @app.post("/hooks/<secret>")
    def hook(secret: str) -> Response:
        service = find_service(services, secret)
        if service is None:
            return _error(401, "unauthorized", "unknown secret")
        body = request.get_json(silent=True)
        if not isinstance(body, dict):
            return _error(400, "invalid_payload", "the body must be a JSON object")
        tag, repository = body.get("tag"), body.get("repository")
        if repository is not None and repository != service.repository:
            return _error(403, "wrong_repository", "repository does not match")
        if not isinstance(tag, str) or TAG.fullmatch(tag) is None:
            return _error(400, "invalid_tag", "tag does not match the pattern")
        for _ in range(CAS_TRIES):
            _, entry = client.kv.get(service.key)
            index = int(entry["ModifyIndex"]) if entry else 0
            previous = entry["Value"].decode() if entry and entry["Value"] else None
            if previous == tag:
                return _answer(200, {"key": service.key, "tag": tag, "changed": False})
            if client.kv.put(service.key, tag, cas=index):
                return _answer(
                    200, {"key": service.key, "tag": tag, "previous": previous, "changed": True}
                )
        return _error(503, "write_conflict", "lost the check-and-set race too often")

    return app
