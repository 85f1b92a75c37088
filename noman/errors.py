"""Every way a Noman request can fail, each with its HTTP status and stable code.

One tree, one shape, one converter: views raise, ``web.py`` turns any
``NomanError`` into ``{"error": code, "message": text}`` with ``status``.
Codes are an API: callers branch on them, so they never change meaning.

    NomanError                          500 internal_error
    ├── NotFound                        404 not_found
    ├── MethodNotAllowed                405 method_not_allowed
    ├── Unauthorized                    401 unauthorized
    ├── InvalidSignature                401 invalid_signature
    ├── BadRequest                      400 bad_request  (malformed HTTP, e.g. a cut-off body)
    ├── InvalidJSON                     400 invalid_json
    ├── InvalidPayload                  400 invalid_payload
    ├── RequestTimeout                  408 request_timeout  (the body came too slowly)
    ├── UnsupportedMediaType            415 unsupported_media_type
    ├── PayloadTooLarge                 413 payload_too_large
    ├── RepositoryMismatch              403 repository_mismatch
    ├── CsrfFailed                      403 csrf_failed  (a status page form without its token)
    ├── Forbidden                       403 forbidden  (a hook secret on an operator endpoint)
    ├── InvalidTag                      422 invalid_tag
    ├── AmbiguousTags                   422 ambiguous_tags
    ├── StaleTag                        409 stale_tag
    ├── NothingToRollBack               409 nothing_to_roll_back
    ├── NotCurrent                      409 not_current  (no such proposal or held deploy)
    ├── NothingToPromote                409 nothing_to_promote
    ├── NothingToAbort                  409 nothing_to_abort
    ├── Frozen                          423 frozen
    ├── TooManyFailures                 429 too_many_failures   (retryable, later)
    ├── StateUnreadable                 503 state_unreadable    (the operator must repair a key)
    └── UpstreamError                   (never raised itself: Consul, Nomad or a registry failed)
        ├── WriteConflict               503 write_conflict      (retryable)
        ├── ConsulUnavailable           503 consul_unavailable  (retryable)
        ├── ConsulForbidden             502 consul_forbidden
        ├── ConsulError                 502 consul_error
        ├── ConsulWrongAddress          502 consul_wrong_address  (what answers is not Consul)
        ├── NomadUnavailable            503 nomad_unavailable   (retryable)
        ├── NomadForbidden              502 nomad_forbidden
        ├── NomadJobNotFound            502 nomad_job_not_found
        ├── NomadError                  502 nomad_error
        ├── NomadWrongAddress           502 nomad_wrong_address   (what answers is not Nomad)
        └── RegistryError               502 registry_error      (an answer Noman does not expect)
            ├── RegistryUnavailable     503 registry_unavailable     (retryable)
            ├── RegistryRateLimited     503 registry_rate_limited    (retryable after retry_after)
            ├── RegistryUnauthorized    502 registry_unauthorized
            ├── RegistryNotFound        502 registry_not_found
            └── RegistryInvalidAnswer   502 registry_invalid_answer

An ``UpstreamError`` from Consul means nothing was written, except a write whose
answer timed out and could not be re-read (the message says it may have landed).
Nomad's codes reach a hook caller only as the ``reason`` of a 202: by then the
deploy is durable and the reconciler retries.

Each client maps its library's failures in one table and one context manager
(``ConsulStore._mapped``, ``NomadRollouts._mapped``, ``RegistryClient._mapped``), attaches
the address once, and words a read's failure apart from a write's when it builds the
error. The ``*WrongAddress`` errors say what answers instead (Nomad at Consul's address, a
web page, HTTPS where the address says http://): retrying cannot help until it is fixed.

The ``Registry*`` errors come from polling a container registry (``noman.registries``):
the leader's poller records their code per service; no hook request ever ends with one.
``temporary`` on the class says whether the same call may succeed later with nobody
changing anything (the "(retryable)" marks above): callers back off and retry those, and
wait for an operator's fix (or a long interval) on the others.

``ConfigError`` is not an HTTP error: it stops start-up and names the file,
line, service and field that are wrong.
"""

from __future__ import annotations

from typing import ClassVar

RETRY_AFTER_SECONDS = 5


class NomanError(Exception):
    """Base of every error a request can end with."""

    status: ClassVar[int] = 500
    code: ClassVar[str] = "internal_error"
    retry_after: ClassVar[int | None] = None
    #: True when the same call may succeed later without anyone changing anything.
    temporary: ClassVar[bool] = False
    #: True when retrying cannot help until an operator acts (a refused token, a job
    #: that does not exist): the reconciler retries slowly and reports it once.
    permanent: ClassVar[bool] = False
    default_message: ClassVar[str] = "Internal error; the operator's log has the details."

    def __init__(self, message: str | None = None) -> None:
        self.message = message or self.default_message
        super().__init__(self.message)

    def body(self) -> dict[str, str]:
        """The JSON body sent to the caller."""
        return error_body(self.code, self.message)


class NotFound(NomanError):
    """Unknown route, unknown secret and wrong secret all look exactly alike."""

    status = 404
    code = "not_found"
    default_message = "Not found."


class MethodNotAllowed(NomanError):
    """The route exists but not for this HTTP method."""

    status = 405
    code = "method_not_allowed"
    default_message = "Method not allowed."


class Unauthorized(NomanError):
    """``POST /hooks`` without a usable ``Authorization: Bearer`` header."""

    status = 401
    code = "unauthorized"
    default_message = "Send the service secret as 'Authorization: Bearer <secret>'."


class InvalidSignature(NomanError):
    """A sender's proof is missing, malformed or wrong: a signature, or the service's auth_header.

    Also a signature outside its time window (Standard Webhooks).
    """

    status = 401
    code = "invalid_signature"


class BadRequest(NomanError):
    """The HTTP request itself is malformed (for example a body cut off mid-way)."""

    status = 400
    code = "bad_request"
    default_message = "The HTTP request is malformed."


class InvalidJSON(NomanError):
    """The body is not strict JSON (bad UTF-8, duplicate keys, NaN, too deep...)."""

    status = 400
    code = "invalid_json"


class InvalidPayload(NomanError):
    """Valid JSON, but not a shape any supported sender produces."""

    status = 400
    code = "invalid_payload"


class RequestTimeout(NomanError):
    """The client did not send its body within the read deadline."""

    status = 408
    code = "request_timeout"
    default_message = "The request was not sent in time."


class UnsupportedMediaType(NomanError):
    """Only JSON bodies are accepted."""

    status = 415
    code = "unsupported_media_type"
    default_message = "Send the body as JSON with 'Content-Type: application/json'."


class PayloadTooLarge(NomanError):
    """The body is over the configured cap (with or without Content-Length)."""

    status = 413
    code = "payload_too_large"


class RepositoryMismatch(NomanError):
    """The payload names a repository other than the one this service accepts."""

    status = 403
    code = "repository_mismatch"


class CsrfFailed(NomanError):
    """A status page form came back without this session's CSRF token."""

    status = 403
    code = "csrf_failed"
    default_message = "The form's CSRF token is missing or wrong; reload the page and retry."


class Forbidden(NomanError):
    """A credential that is not an operator's (a hook secret, the admin token) on an
    operator endpoint: the CI that pushes a release never approves it."""

    status = 403
    code = "forbidden"
    default_message = (
        "This is not an operator token; approvals, rejections, overrides and reports need "
        "one (noman secret new --operator <name>)."
    )


class InvalidTag(NomanError):
    """The tag breaks the OCI tag grammar or the service's tag pattern."""

    status = 422
    code = "invalid_tag"


class AmbiguousTags(NomanError):
    """One push carries several accepted tags and the service's tag_pattern does not order them."""

    status = 422
    code = "ambiguous_tags"


class StaleTag(NomanError):
    """The tag orders before the deployed one; only an explicit force rolls back."""

    status = 409
    code = "stale_tag"


class NothingToRollBack(NomanError):
    """A rollback without a tag, but history has no earlier successful deploy."""

    status = 409
    code = "nothing_to_roll_back"
    default_message = "History has no successfully deployed tag before the current one."


class NotCurrent(NomanError):
    """An approval, rejection or override for a proposal that is not (or no longer) waiting."""

    status = 409
    code = "not_current"
    default_message = "Nothing is waiting for approval or a deploy window for this service."


class NothingToPromote(NomanError):
    """A promote, but no rollout of the service waits in stage ``awaiting_promotion``."""

    status = 409
    code = "nothing_to_promote"
    default_message = "No rollout of this service waits for promotion."


class NothingToAbort(NomanError):
    """An abort, but no rollout of the service is in progress."""

    status = 409
    code = "nothing_to_abort"
    default_message = "No rollout of this service is in progress."


class Frozen(NomanError):
    """The service is frozen: deploys are refused (rollbacks still work)."""

    status = 423
    code = "frozen"
    default_message = "This service is frozen; deploys are refused until it is unfrozen."


class TooManyFailures(NomanError):
    """This address sent too many wrong secrets this minute."""

    temporary = True
    status = 429
    code = "too_many_failures"
    default_message = "Too many failed attempts from this address; retry later."

    def __init__(self, retry_after: int) -> None:
        super().__init__()
        self.retry_after = retry_after  # type: ignore[misc]


class StateUnreadable(NomanError):
    """A value under Noman's prefix does not decode: shown and refused, never reset."""

    status = 503
    code = "state_unreadable"
    default_message = "Noman's state in Consul is unreadable; nothing was written."

    def __init__(self, key: str = "", detail: str = "") -> None:
        super().__init__(
            f"Noman's state at {key} is unreadable ({detail}); nothing was written. "
            "The operator must repair or delete that key (README: Repairing state)."
        )
        self.key = key


class UpstreamError(NomanError):
    """Consul or Nomad failed; the request changed nothing and may be retried."""

    status = 502
    code = "upstream_error"
    #: The Consul or Nomad address that failed, for the operator's tools (the CLI prints
    #: it); never put in HTTP answers, which go to callers outside the cluster.
    address: str | None = None


class WriteConflict(UpstreamError):
    """Check-and-set lost the race more times than allowed; retry later."""

    temporary = True
    status = 503
    code = "write_conflict"
    retry_after = RETRY_AFTER_SECONDS
    default_message = "The key kept changing under us; nothing was written. Retry later."


class ConsulUnavailable(UpstreamError):
    """Consul is unreachable, timing out or answering 5xx."""

    temporary = True
    status = 503
    code = "consul_unavailable"
    retry_after = RETRY_AFTER_SECONDS
    default_message = "Consul is unavailable; nothing was written. Retry later."


class ConsulForbidden(UpstreamError):
    """Consul refused Noman's ACL token; the operator must fix the token's policy."""

    status = 502
    code = "consul_forbidden"
    default_message = "Consul refused Noman's token; nothing was written. The operator must fix it."


class ConsulError(UpstreamError):
    """Consul answered with an error Noman does not expect."""

    status = 502
    code = "consul_error"
    default_message = "Consul rejected the request; nothing was written."


class ConsulWrongAddress(UpstreamError):
    """What answers at Consul's address is not Consul's HTTP API; the message says what it is."""

    status = 502
    code = "consul_wrong_address"
    permanent = True
    default_message = "What answers at the Consul address is not Consul's HTTP API."


class NomadUnavailable(UpstreamError):
    """Nomad is unreachable, timing out or answering 5xx."""

    temporary = True
    status = 503
    code = "nomad_unavailable"
    retry_after = RETRY_AFTER_SECONDS
    default_message = "Nomad is unavailable; the deploy was not started. Retry later."


class NomadForbidden(UpstreamError):
    """Nomad refused Noman's ACL token."""

    status = 502
    code = "nomad_forbidden"
    permanent = True
    default_message = "Nomad refused Noman's token; the deploy was not started."


class NomadJobNotFound(UpstreamError):
    """The configured Nomad job does not exist (in that namespace and region)."""

    status = 502
    code = "nomad_job_not_found"
    permanent = True


class NomadError(UpstreamError):
    """Nomad answered with an error Noman does not expect."""

    status = 502
    code = "nomad_error"
    default_message = "Nomad rejected the new job version; the deploy was not started."


class NomadWrongAddress(UpstreamError):
    """What answers at Nomad's address is not Nomad's HTTP API; the message says what it is."""

    status = 502
    code = "nomad_wrong_address"
    permanent = True
    default_message = "What answers at the Nomad address is not Nomad's HTTP API."


class RegistryError(UpstreamError):
    """A container registry answered in a way Noman does not expect (an unexpected status)."""

    status = 502
    code = "registry_error"
    default_message = "The registry answered in a way Noman does not expect."


class RegistryUnavailable(RegistryError):
    """The registry is unreachable, timing out or answering 5xx."""

    status = 503
    code = "registry_unavailable"
    retry_after = RETRY_AFTER_SECONDS
    temporary = True
    default_message = "The registry is unavailable."


class RegistryRateLimited(RegistryError):
    """The registry answered 429: no request to that registry before ``retry_after`` seconds.

    ``retry_after`` is what the registry's ``Retry-After`` said, or None when it said nothing
    (then the caller backs off on its own).
    """

    status = 503
    code = "registry_rate_limited"
    temporary = True
    default_message = "The registry's rate limit is reached."

    def __init__(self, message: str | None = None, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after  # type: ignore[misc]


class RegistryUnauthorized(RegistryError):
    """The registry refused the credentials, or wants some and Noman has none for it."""

    status = 502
    code = "registry_unauthorized"
    default_message = "The registry refused access to the repository."


class RegistryNotFound(RegistryError):
    """The registry has no such repository (``NAME_UNKNOWN``)."""

    status = 502
    code = "registry_not_found"
    default_message = "The registry has no such repository."


class RegistryInvalidAnswer(RegistryError):
    """The registry answered 200 with something that is not a tag list (or pages forever)."""

    status = 502
    code = "registry_invalid_answer"
    default_message = "The registry answered with something that is not a tag list."


class ConfigError(Exception):
    """The configuration is wrong; the message says where."""


class UnknownService(ConfigError):
    """A command named a service the configuration does not have: the caller's typo."""


def error_body(code: str, message: str) -> dict[str, str]:
    """The one error shape every non-2xx answer uses."""
    return {"error": code, "message": message}
