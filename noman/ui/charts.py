"""Server-rendered SVG charts for the DORA panel: no script, no external asset, no inline style.

Shapes carry classes only (``bar-ok``, ``dot``, ``axis``...), coloured by ``ui.css``
from the page's own variables, so the charts follow the light and dark themes.
Every text is escaped; each chart has a ``<title>`` and ``<desc>`` for screen
readers, and each bar or dot a ``<title>`` of its own (a tooltip).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from markupsafe import Markup, escape

WIDTH = 640
HEIGHT = 190
LEFT = 44
RIGHT = 8
TOP = 26  # the legend sits above the plot
BOTTOM = 26


def _svg(name: str, title: str, description: str, body: list[str]) -> Markup:
    head = (
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" data-chart="{escape(name)}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'aria-labelledby="{escape(name)}-title {escape(name)}-desc">'
        f'<title id="{escape(name)}-title">{escape(title)}</title>'
        f'<desc id="{escape(name)}-desc">{escape(description)}</desc>'
    )
    return Markup(head + "".join(body) + "</svg>")  # noqa: S704 (every part is escaped)


def _axes(top_label: str, first: str, last: str) -> list[str]:
    bottom = HEIGHT - BOTTOM
    return [
        f'<line class="axis" x1="{LEFT}" y1="{bottom}" x2="{WIDTH - RIGHT}" y2="{bottom}"/>',
        f'<line class="axis" x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{bottom}"/>',
        f'<text class="label" x="{LEFT - 6}" y="{TOP + 4}" text-anchor="end">'
        f"{escape(top_label)}</text>",
        f'<text class="label" x="{LEFT - 6}" y="{bottom}" text-anchor="end">0</text>',
        f'<text class="label" x="{LEFT}" y="{HEIGHT - 8}">{escape(first)}</text>',
        f'<text class="label" x="{WIDTH - RIGHT}" y="{HEIGHT - 8}" text-anchor="end">'
        f"{escape(last)}</text>",
    ]


def deploys_per_day(name: str, days: Sequence[tuple[str, int, int, int]]) -> Markup:
    """Stacked bars, one per day: successful, failed, rolled back."""
    total = sum(ok + failed + back for _, ok, failed, back in days)
    title = "Deploys per day"
    description = (
        f"{total} deploys over {len(days)} days: successful, failed and rolled back, "
        "stacked per day."
    )
    if not days:
        return _svg(name, title, description, [])
    peak = max([ok + failed + back for _, ok, failed, back in days] + [1])
    plot_w = WIDTH - LEFT - RIGHT
    plot_h = HEIGHT - TOP - BOTTOM
    step = plot_w / len(days)
    bar = max(1.0, step * 0.7)
    body = _axes(str(peak), days[0][0], days[-1][0])
    for i, (day, ok, failed, back) in enumerate(days):
        x = LEFT + i * step + (step - bar) / 2
        y = float(HEIGHT - BOTTOM)
        tip = f"{day}: {ok} successful, {failed} failed, {back} rolled back"
        for count, kind in ((ok, "bar-ok"), (failed, "bar-failed"), (back, "bar-rolled")):
            if not count:
                continue
            height = plot_h * count / peak
            y -= height
            body.append(
                f'<rect class="{kind}" data-day="{escape(day)}" x="{x:.1f}" y="{y:.1f}" '
                f'width="{bar:.1f}" height="{height:.1f}"><title>{escape(tip)}</title></rect>'
            )
    body += _legend(
        (("bar-ok", "successful"), ("bar-failed", "failed"), ("bar-rolled", "rolled back"))
    )
    return _svg(name, title, description, body)


def lead_times(
    name: str, points: Sequence[tuple[float, float]], since: float, until: float
) -> Markup:
    """One dot per successful deploy: when it ended (x) and its lead time in hours (y)."""
    title = "Lead time for changes"
    description = f"{len(points)} successful deploys: lead time in hours against when each ended."
    first = datetime.fromtimestamp(since, UTC).date().isoformat()
    last = datetime.fromtimestamp(until, UTC).date().isoformat()
    if not points:
        body = _axes("—", first, last)
        body.append(
            f'<text class="label" x="{WIDTH / 2:.0f}" y="{HEIGHT / 2:.0f}" text-anchor="middle">'
            "No successful deploys in this period</text>"
        )
        return _svg(name, title, description, body)
    hours = [lead / 3600 for _, lead in points]
    peak = max(max(hours) * 1.1, 1.0)  # headroom: the highest dot stays inside the plot
    plot_w = WIDTH - LEFT - RIGHT
    plot_h = HEIGHT - TOP - BOTTOM
    span = max(until - since, 1.0)
    body = _axes(f"{peak:.3g} h", first, last)
    ordered = sorted(hours)
    middle = ordered[len(ordered) // 2]
    if len(ordered) % 2 == 0:
        middle = (ordered[len(ordered) // 2 - 1] + middle) / 2
    y_median = HEIGHT - BOTTOM - plot_h * middle / peak
    body.append(
        f'<line class="median" x1="{LEFT}" y1="{y_median:.1f}" x2="{WIDTH - RIGHT}" '
        f'y2="{y_median:.1f}"><title>median {middle:.2f} h</title></line>'
    )
    for (ended, _), value in zip(points, hours, strict=True):
        x = LEFT + plot_w * (ended - since) / span
        y = HEIGHT - BOTTOM - plot_h * value / peak
        when = datetime.fromtimestamp(ended, UTC).isoformat(timespec="minutes")
        body.append(
            f'<circle class="dot" cx="{x:.1f}" cy="{y:.1f}" r="3.5">'
            f"<title>{escape(when)}: {value:.2f} h</title></circle>"
        )
    body += _legend((("dot", "a deploy"), ("median", "median")))
    return _svg(name, title, description, body)


def _legend(items: Sequence[tuple[str, str]]) -> list[str]:
    parts = []
    x = WIDTH - RIGHT - 110 * len(items)
    for kind, label in items:
        parts.append(f'<rect class="{kind} swatch" x="{x}" y="2" width="10" height="10"/>')
        parts.append(f'<text class="label" x="{x + 14}" y="11">{escape(label)}</text>')
        x += 110
    return parts
