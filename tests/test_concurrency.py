"""Two webhooks for one service racing: the newer tag always wins."""

from __future__ import annotations

import random
import threading
from typing import Any

from noman import create_app
from noman.config import Settings
from noman.wiring import components
from tests.conftest import ConsulHandle, post_hook

OLDER = "release-20240101000000"
NEWER = "release-20240102000000"
ROUNDS = 100


def test_newer_tag_always_wins(settings: Settings, consul: ConsulHandle, secret: str) -> None:
    app = create_app(settings)
    key = consul.key("IMAGE_TAG")
    rng = random.Random(20230103)
    statuses: list[tuple[int, ...]] = []
    for round_no in range(ROUNDS):
        consul.put(key, f"release-2023{round_no:010d}")
        tags = [OLDER, NEWER]
        rng.shuffle(tags)
        barrier = threading.Barrier(2)
        results: dict[str, int] = {}

        def fire(
            tag: str, results: dict[str, int] = results, barrier: threading.Barrier = barrier
        ) -> None:
            client: Any = app.test_client()
            barrier.wait()
            results[tag] = post_hook(client, secret, tag).status_code

        threads = [threading.Thread(target=fire, args=(tag,)) for tag in tags]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
        assert consul.get(key)[0] == NEWER, f"round {round_no}: {results}"
        assert results[NEWER] == 200
        # The older one either landed first (200) or saw the newer (409).
        assert results[OLDER] in (200, 409)
        statuses.append((results[OLDER], results[NEWER]))
    components(app).reporter.wait(5)
    assert len(statuses) == ROUNDS
