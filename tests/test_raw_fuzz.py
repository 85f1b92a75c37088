"""Hostile HTTP over raw sockets against the real server: never a 5xx, never HTML, no secret.

A fixed seed and a few thousand requests, so a failure replays exactly; the
categories are what a Flask test client cannot send (see the security
checklist's "raw edge").
"""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tests.conftest import SAMPLE_TAG
from tests.fakes.consul import FakeConsul
from tests.test_gunicorn_logs import Gunicorn, raw, write_config

SEED = 20261126
ROUNDS = 2500
JSON = "Content-Type: application/json\r\n"


def request(
    target: str, body: bytes = b"", headers: str = JSON, method: str = "POST", length: bool = True
) -> bytes:
    head = f"{method} {target} HTTP/1.1\r\nHost: noman\r\n{headers}"
    if length:
        head += f"Content-Length: {len(body)}\r\n"
    return head.encode() + b"\r\n" + body


def chunked(target: str, body: bytes) -> bytes:
    return request(target, body, JSON + "Transfer-Encoding: chunked\r\n", length=False)


def nested(rng: random.Random) -> bytes:
    depth = rng.choice([5, 31, 33, 200, 5000])
    opener, closer = rng.choice([("[", "]"), ('{"a":', "}")])
    return ('{"tag": ' + opener * depth + "1" + closer * depth + "}").encode()


def json_value(rng: random.Random, depth: int = 0) -> object:
    kind = rng.randrange(8 if depth < 3 else 5)
    if kind == 0:
        return None
    if kind == 1:
        return rng.choice([True, False])
    if kind == 2:
        return rng.choice([0, -1, 2**63, 10**30, 1.5, -0.0])
    if kind == 3:
        chars = (chr(rng.randrange(1, 0x2FFFF)) for _ in range(rng.randrange(12)))
        return "".join(c for c in chars if not 0xD800 <= ord(c) <= 0xDFFF)  # no lone surrogates
    if kind == 4:
        return rng.choice([SAMPLE_TAG, "latest", "../x", "a b", "release-" + "9" * 200])
    if kind == 5:
        return [json_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    keys = ["tag", "force", "repository", "push_data", "repo_name", "pushed_at", "\u00e9"]
    return {rng.choice(keys): json_value(rng, depth + 1) for _ in range(rng.randrange(4))}


def cases(secret: str) -> list[Callable[[random.Random], bytes]]:
    """One generator per category the issue lists."""
    hook = f"/hooks/{secret}"
    good = json.dumps({"tag": SAMPLE_TAG}).encode()
    paths = [
        hook,
        f"/hook/{secret}",
        f"/webhooks/{secret}",
        f"/hooks/%2e%2e/{secret}",
        f"/hooks/../{secret}",
        f"/%2568ooks/{secret}",
        f"/%68ooks/{secret}",
        f"//hooks/{secret}",
        f"/hooks/{secret}/",
        f"/hooks/{secret}%00",
        f"/hooks/{secret}/deployment",
        f"/healthz?token={secret}",
        f"/metrics?{secret}",
        f"/hooks?secret={secret}",
        f"{hook}?token={secret}",
        f"/hooks/{secret}#{secret}",
        f"http://noman{hook}",
        "*",
    ]
    numbers = [b"1e400", b"-1e400", b"1e309", b"9" * 5000, b"-" + b"9" * 400, b"1" + b"0" * 400]
    return [
        # random bytes, as the whole request and as a body
        lambda r: r.randbytes(r.randrange(1, 600)),
        lambda r: (r.choice([hook, "/"]) + " ").encode() + r.randbytes(r.randrange(300)),
        lambda r: request(hook, r.randbytes(r.randrange(2000))),
        # nested JSON, huge numbers, unicode, duplicate keys, wrong types
        lambda r: request(hook, nested(r)),
        lambda r: request(
            hook,
            r.choice(
                [
                    b'{"tag": "%s", "x": %s}',
                    b'{"push_data": {"tag": "%s", "pushed_at": %s},'
                    b' "repository": {"repo_name": "stut/stut.dev"}}',
                ]
            )
            % (SAMPLE_TAG.encode(), r.choice(numbers)),
        ),
        lambda r: request(hook, json.dumps(json_value(r), ensure_ascii=r.random() < 0.5).encode()),
        lambda r: request(hook, b'{"tag": "%s", "tag": "latest"}' % SAMPLE_TAG.encode()),
        lambda r: request(hook, json.dumps({"tag": json_value(r)}).encode()),
        # big bodies, with and without Content-Length
        lambda r: request(hook, b'{"tag": "' + b"x" * r.choice([65_000, 70_000, 200_000]) + b'"}'),
        lambda r: chunked(hook, b"%x\r\n%s\r\n0\r\n\r\n" % (100_000, b"x" * 100_000)),
        # chunked edge cases
        lambda r: chunked(
            hook,
            r.choice(
                [
                    b"zz\r\n{}\r\n0\r\n\r\n",
                    b"%x\r\n%s" % (len(good), good),
                    b"%x\r\n%s\r\n" % (len(good), good),
                    b"100\r\n" + good,
                    b"-5\r\n{}\r\n0\r\n\r\n",
                    b"ffffffffffffffffffff\r\n{}\r\n0\r\n\r\n",
                    b"2;ext=\x00\r\n{}\r\n0\r\n\r\n",
                    b"2\r\n{}0\r\n\r\n",
                    b"%x\r\n%s\r\n0\r\n\r\n" % (len(good), good),
                ]
            ),
        ),
        # a short body, conflicting lengths
        lambda r: request(hook, good, JSON + f"Content-Length: {len(good) + 20}\r\n", length=False),
        lambda r: request(hook, good, JSON + "Content-Length: 2\r\nContent-Length: 3\r\n"),
        lambda r: request(hook, good, JSON + "Transfer-Encoding: chunked\r\n"),
        # 100 KB of headers, invalid request lines
        lambda r: request(hook, good, JSON + f"X-Big: {'h' * 100_000}\r\n"),
        lambda r: request(hook, good, JSON + f"Referer: {hook}\r\nX-Token: {'t' * 9000}\r\n"),
        lambda r: r.choice(
            [
                f"POST  {hook}  HTTP/1.1\r\n\r\n",
                f"POST {hook} HTTP/1.1 junk\r\n\r\n",
                f"POST {hook} HTTP/9.9\r\n\r\n",
                f"POST {hook}\r\n\r\n",
                f"P\x00ST {hook} HTTP/1.1\r\n\r\n",
                f"{secret} {hook} HTTP/1.1\r\n\r\n",
                f"POST {hook}?{'q' * 5000} HTTP/1.1\r\n\r\n",
                f"POST {hook} HTTP/1.1\r\nBad Header: {secret}\r\n\r\n",
                f"POST {hook} HTTP/1.1\r\n {secret}\r\n\r\n",
                f"GET {hook} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: {secret}\r\n\r\n",
            ]
        ).encode(),
        # percent-encoded and traversal paths, secrets in query strings
        lambda r: request(r.choice(paths), good, method=r.choice(["POST", "GET", "PUT", "HEAD"])),
    ]


def check(answer: bytes, secret: str, sent: bytes) -> str:
    """'' if ``answer`` is acceptable, else what is wrong with it."""
    if secret.encode() in answer:
        return "secret in answer"
    if not answer:
        return ""  # the server closed a connection that never completed a request
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split()
    if len(parts) < 2 or not parts[1].isdigit():
        return f"no status line: {lines[0][:80]!r}"
    status = int(parts[1])
    if status >= 500 and status != 501:
        return f"status {status}"
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    if sent.startswith(b"HEAD ") or status in (204, 304):
        return ""
    if status == 200 and b"/metrics" in sent.split(b"\r\n", 1)[0]:
        return ""  # Prometheus text, by design
    if headers.get("content-type") != "application/json":
        return f"{status} with content-type {headers.get('content-type')!r}"
    length = int(headers.get("content-length", len(body)))
    try:
        payload = json.loads(body[:length])
    except ValueError:
        return f"{status} body is not JSON: {body[:80]!r}"
    if status >= 400 and set(payload) != {"error", "message"}:
        return f"{status} not the error shape: {payload!r}"
    return ""


def test_hostile_http_gets_json_4xx_and_leaks_nothing(tmp_path: Path, secret: str) -> None:
    rng = random.Random(SEED)
    generators = cases(secret)
    requests_ = [generators[rng.randrange(len(generators))](rng) for _ in range(ROUNDS)]
    with FakeConsul() as fake:
        server = Gunicorn(tmp_path, write_config(tmp_path, fake.url, secret), workers=2)
        try:
            with ThreadPoolExecutor(8) as pool:
                answers = list(pool.map(lambda data: raw(server.port, data), requests_))
        finally:
            assert server.stop() == 0
    problems = Counter(
        problem
        for sent, answer in zip(requests_, answers, strict=True)
        if (problem := check(answer, secret, sent))
    )
    assert not problems, problems.most_common(10)
    statuses = Counter(answer.split(b" ", 2)[1] for answer in answers if answer)
    # Most requests got an answer, and the set is varied (the fuzz reached the app).
    assert sum(statuses.values()) > ROUNDS * 0.8, statuses
    assert {b"200", b"400", b"404", b"413"} <= set(statuses), statuses
    logs = server.logs()
    assert secret not in logs
    assert logs.count("\n") > ROUNDS  # every request left a line: the check above means something
