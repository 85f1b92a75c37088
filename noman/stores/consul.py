"""Tags in Consul KV, through py-consul, with every failure mapped to a NomanError.

Network trouble and 5xx answers become ``ConsulUnavailable`` (503, retry);
a refused token becomes ``ConsulForbidden`` (502, the operator must act).
Nothing here ever retries a write blindly: a timed-out PUT is reported and
the caller's retry goes through check-and-set again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit

import consul
import requests
from consul.exceptions import (
    ACLDisabled,
    ACLPermissionDenied,
    BadRequest,
    ClientError,
    ConsulException,
    NotFound,
)

from noman import transport
from noman.config import ConsulSettings
from noman.errors import ConsulError, ConsulForbidden, ConsulUnavailable
from noman.stores import Entry

log = logging.getLogger(__name__)
T = TypeVar("T")


class ConsulStore:
    """A Store backed by Consul's KV API."""

    def __init__(self, settings: ConsulSettings) -> None:
        self.settings = settings
        url = urlsplit(settings.address)
        default_port = 443 if url.scheme == "https" else 80
        self.client = consul.Consul(
            host=url.hostname,
            port=url.port or default_port,
            scheme=url.scheme,
            token=settings.token,
            dc=settings.datacenter,
            verify=settings.verify,
            cert=settings.cert,
            connections_timeout=settings.timeout,
        )
        # Consul is reached directly: no HTTP(S)_PROXY, and no per-call scan of
        # the environment for one (about a millisecond per request).
        transport.configure(self.client.http.session, settings.tls_server_name)
        if settings.token:
            # py-consul leaves the token off some calls (txn); a session-wide
            # header makes every request carry it.
            self.client.http.session.headers["X-Consul-Token"] = settings.token

    def read(self, key: str) -> Entry:
        """The key's value and ModifyIndex (None and 0 when missing)."""
        _, data = self._call(
            "read", key, lambda: self.client.kv.get(key, dc=self.settings.datacenter)
        )
        if data is None:
            return Entry(None, 0)
        raw = data.get("Value")
        value = raw.decode("utf-8", errors="replace") if raw is not None else ""
        return Entry(value, int(data["ModifyIndex"]))

    def write(self, key: str, value: str, index: int) -> bool:
        """PUT with ``?cas=index``; False when someone else wrote first."""
        return bool(
            self._call(
                "write",
                key,
                lambda: self.client.kv.put(key, value, cas=index, dc=self.settings.datacenter),
            )
        )

    def delete(self, key: str, index: int) -> bool:
        """DELETE with ``?cas=index``."""
        return bool(
            self._call(
                "delete",
                key,
                lambda: self.client.kv.delete(key, cas=index, dc=self.settings.datacenter),
            )
        )

    def check_ready(self) -> str:
        """Ready when Consul answers with a known leader."""
        leader = self._call("status", "leader", self.client.status.leader)
        if not leader:
            raise ConsulUnavailable("Consul has no leader.")
        return f"consul {self.settings.address} (leader {leader})"

    def _call(self, action: str, key: str, call: Callable[[], T]) -> T:
        where = self.settings.address
        try:
            return call()
        except requests.Timeout:
            log.warning("consul %s %s: no answer within %ss", action, key, self.settings.timeout)
            raise ConsulUnavailable(
                f"Consul did not answer within {self.settings.timeout:g}s; nothing was written."
            ) from None
        except requests.RequestException as exc:
            log.warning("consul %s %s: %s unreachable: %s", action, key, where, type(exc).__name__)
            raise ConsulUnavailable() from None
        except (ACLPermissionDenied, ACLDisabled) as exc:
            if not self.settings.token:
                # Not the same fix as a refused token: there is none to fix.
                log.error("consul %s %s: no token configured: %s", action, key, _first_line(exc))
                raise ConsulForbidden(
                    "Consul refused the request and Noman has no token configured "
                    "(CONSUL_HTTP_TOKEN, CONSUL_HTTP_TOKEN_FILE or consul.token); "
                    "nothing was written."
                ) from None
            log.error("consul %s %s: token refused: %s", action, key, _first_line(exc))
            raise ConsulForbidden() from None
        except (BadRequest, ClientError, NotFound) as exc:
            log.error("consul %s %s: rejected: %s", action, key, _first_line(exc))
            raise ConsulError() from None
        except ConsulException as exc:
            # 5xx, or a body that is not Consul's JSON: both pass with time.
            log.warning("consul %s %s: server error: %s", action, key, _first_line(exc))
            raise ConsulUnavailable() from None


def _first_line(exc: Any) -> str:
    return str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
