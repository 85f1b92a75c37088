"""HTTP sessions for Consul and Nomad, set up as their own CLIs would be.

Both are reached directly: ``HTTP(S)_PROXY`` from the environment is ignored
(a proxy meant for the internet must not see ACL tokens, and scanning the
environment costs about a millisecond per request). ``*_TLS_SERVER_NAME``
names the certificate to expect when the address is an IP or a load balancer.
"""

from __future__ import annotations

from typing import Any

import requests
from requests.adapters import HTTPAdapter


class ServerNameAdapter(HTTPAdapter):
    """HTTPS with SNI and hostname verification against a fixed name."""

    def __init__(self, server_name: str) -> None:
        self.server_name = server_name
        super().__init__()

    def init_poolmanager(self, *args: Any, **pool_kwargs: Any) -> None:
        """urllib3 pools that send and verify ``server_name`` instead of the URL's host."""
        pool_kwargs["server_hostname"] = self.server_name
        pool_kwargs["assert_hostname"] = self.server_name
        super().init_poolmanager(*args, **pool_kwargs)


def configure(session: requests.Session, tls_server_name: str | None = None) -> requests.Session:
    """``session`` without environment proxies, verifying ``tls_server_name`` if given."""
    session.trust_env = False
    if tls_server_name:
        session.mount("https://", ServerNameAdapter(tls_server_name))
    return session
