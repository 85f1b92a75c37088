"""Secret redaction and the one constant-time comparison."""

from __future__ import annotations

import hmac
import io
import json
import logging
from collections.abc import Iterator

import pytest

from noman import auth, logs
from noman.config import hash_secret
from noman.logs import JsonFormatter, RedactingFilter, redact
from noman.model import Service

CASES = [
    ('"POST /hooks/abc123 HTTP/1.1" 200', '"POST /hooks/<redacted> HTTP/1.1" 200'),
    # Everything after the secret goes too ('/hooks/../<secret>' puts it second).
    ("GET /hooks/abc/deployment", "GET /hooks/<redacted>"),
    ("GET /hooks/<secret>/deployment", "GET /hooks/<secret>/deployment"),
    ("POST /hooks/abc?token=abc HTTP/1.1", "POST /hooks/<redacted>?<redacted> HTTP/1.1"),
    ("POST /hooks?x=abc HTTP/1.1", "POST /hooks?<redacted> HTTP/1.1"),
    ("POST /%68ooks/abc HTTP/1.1", "POST /hooks/<redacted> HTTP/1.1"),
    (
        "Invalid request line 'POST /hooks/abc junk'",
        "Invalid request line 'POST /hooks/<redacted> junk'",
    ),
    ("Authorization: Bearer abc.def", "Authorization: Bearer <redacted>"),
    ("GET /healthz 200", "GET /healthz 200"),
    # Each pattern alone, with nothing the others look for.
    ("token AbCdEfGhIjKlMnOpQrSt12 end", "token <redacted> end"),
    ("GET /srv/abcdefghijklmnopqrstuv/x", "GET /srv/<redacted>/x"),
    ("GET /status?key=v", "GET /status?<redacted>"),
    ("BEARER%20abc", "BEARER <redacted>"),
    ("/HOOKS/abc", "/HOOKS/<redacted>"),
    ("web", "web"),
]


@pytest.mark.parametrize(("text", "expected"), CASES)
def test_redact(text: str, expected: str) -> None:
    assert redact(text) == expected
    assert redact(text) == expected  # the second time from the set of clean texts, if clean


def test_only_short_texts_with_nothing_to_redact_are_remembered(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clean: set[str] = set()
    monkeypatch.setattr(logs, "_CLEAN", clean)
    line = "GET /healthz 200 " + "x" * 60
    for text in [*(text for text, _ in CASES), line]:
        redact(text)
    unchanged = {text for text, expected in CASES if text == expected}
    assert unchanged == {"GET /hooks/<secret>/deployment", "GET /healthz 200", "web"}
    assert clean == unchanged  # not the long line, though it holds nothing to redact


def test_a_flood_of_distinct_clean_words_stays_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    clean: set[str] = set()
    monkeypatch.setattr(logs, "_CLEAN", clean)
    for number in range(2 * logs._CLEAN_MAX + 10):
        assert redact(f"word{number}") == f"word{number}"
        assert len(clean) <= logs._CLEAN_MAX
    assert redact("token AbCdEfGhIjKlMnOpQrSt12 end") == "token <redacted> end"


def test_filter_redacts_arguments_and_tracebacks() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RedactingFilter())
    logger = logging.getLogger("test.redaction")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        raise RuntimeError("failed on /hooks/topsecret")
    except RuntimeError:
        logger.exception("Error handling request %s", "/hooks/topsecret")
    line = json.loads(stream.getvalue())
    assert "topsecret" not in stream.getvalue()
    assert line["msg"] == "Error handling request /hooks/<redacted>"
    assert "RuntimeError" in line["exc"]


def service(name: str, *secrets: str) -> Service:
    return Service(name, "a/b", f"{name}/k", tuple(hash_secret(s) for s in secrets))


def test_find_service_matches_any_configured_hash() -> None:
    services = [service("a", "secret-a"), service("b", "old-b", "new-b")]
    assert auth.find_service(services, "secret-a") is services[0]
    assert auth.find_service(services, "new-b") is services[1]
    assert auth.find_service(services, "old-b") is services[1]
    assert auth.find_service(services, "secret-") is None
    assert auth.find_service(services, "") is None


def test_every_comparison_goes_through_compare_digest(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", spy)
    services = [service("a", "s1"), service("b", "s2", "s3")]
    assert auth.find_service(services, "s1") is services[0]
    # All three digests compared, even though the first matched.
    assert len(calls) == 3


def test_new_secret_is_long_and_its_hash_matches() -> None:
    secret, digest = auth.new_secret()
    assert len(secret) >= 43
    assert hash_secret(secret).hex() == digest
    assert auth.new_secret()[0] != secret


@pytest.fixture
def noman_logger() -> Iterator[logging.Logger]:
    """The ``noman`` logger, its handlers, level and propagation restored afterwards."""
    logger = logging.getLogger("noman")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    logger.handlers = []
    try:
        yield logger
    finally:
        logger.handlers, logger.level, logger.propagate = saved[0], saved[1], saved[2]


def test_commands_write_redacted_prefixed_warnings_to_stderr(
    noman_logger: logging.Logger, capsys: pytest.CaptureFixture[str]
) -> None:
    noman_logger.setLevel(logging.DEBUG)  # as an app built earlier in the process may leave it
    logs.configure_cli()
    logs.configure_cli()  # once: a second call adds nothing
    logging.getLogger("noman.store").warning("read failed on /hooks/%s", "topsecret")
    logging.getLogger("noman.store").info("not shown: commands say warnings and errors")
    assert capsys.readouterr().err == "noman: warning: read failed on /hooks/<redacted>\n"


def test_serving_after_a_command_writes_json_lines_only(
    noman_logger: logging.Logger, capsys: pytest.CaptureFixture[str]
) -> None:
    logs.configure_cli()
    logs.configure("info")
    logging.getLogger("noman.store").warning("read failed")
    (line,) = capsys.readouterr().err.splitlines()
    assert json.loads(line)["msg"] == "read failed"
