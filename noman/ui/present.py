"""Turning ``Deployer.status`` answers into what the page shows (no Flask, no I/O).

One row per service, used by the overview template and by the JSON the
page polls, so a refreshed row reads exactly like a freshly rendered one.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from noman.model import Service

# Rollout states that Noman is still carrying to an end.
ACTIVE_STATES = frozenset({"pending", "registered", "running"})
# Outcomes that are not worth going back to.
BAD_OUTCOMES = frozenset({"failed", "cancelled", "timed_out"})
NONE = "—"


def parse_time(value: Any) -> datetime | None:
    """An ISO 8601 time from a record, or None when absent or unreadable."""
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def ago(value: Any, now: datetime) -> str:
    """How long ago ``value`` (ISO 8601) was, the way a person says it: "2 min ago"."""
    when = parse_time(value)
    if when is None:
        return ""
    seconds = int((now - when).total_seconds())
    if seconds < 10:
        return "just now"
    if seconds < 60:
        return f"{seconds} s ago"
    if seconds < 3600:
        return f"{seconds // 60} min ago"
    if seconds < 86400:
        return f"{seconds // 3600} h ago"
    days = seconds // 86400
    return f"{days} day{'s' if days != 1 else ''} ago"


#: How each stage of a staged rollout reads on the page.
STAGE_TEXTS = {
    "release_phase": "release phase",
    "canary": "canary",
    "analysis": "analysis",
    "awaiting_promotion": "awaiting promotion",
    "rolling": "rolling",
    "reverting": "reverting",
}


def stage_text(rollout: dict[str, Any]) -> str:
    """A staged rollout's stage, with what it waits for: "analysis: 3 rounds, 30/60 s"."""
    stage = str(rollout.get("stage"))
    text = STAGE_TEXTS.get(stage, stage)
    jobs = rollout.get("jobs") or []
    moving = next((j for j in jobs if j.get("state") != "successful"), None)
    if len(jobs) > 1 and moving is not None and stage != "release_phase":
        text += f" ({moving.get('job')}, job {jobs.index(moving) + 1} of {len(jobs)})"
    analysis = rollout.get("analysis") or {}
    if stage == "analysis" and analysis:
        text += f": {analysis.get('rounds') or 0} round(s) of checks passed"
    elif stage in ("canary", "rolling") and moving and moving.get("desired") is not None:
        text += f": {moving.get('healthy') or 0}/{moving['desired']} healthy"
    elif stage == "release_phase":
        child = (rollout.get("release") or {}).get("child")
        text += f": {child}" if child else ": dispatching"
    return text


def rollout_text(rollout: dict[str, Any] | None) -> str:
    """The rollout state, with Nomad's counts while a deployment runs."""
    if not rollout:
        return NONE
    state = str(rollout.get("state") or "unknown")
    if rollout.get("stage") and state not in BAD_OUTCOMES | {"successful"}:
        return stage_text(rollout)
    if state == "running" and rollout.get("desired") is not None:
        return (
            f"running: {rollout.get('healthy') or 0}/{rollout['desired']} healthy, "
            f"{rollout.get('placed') or 0} placed"
        )
    if state == "pending" and rollout.get("reason"):
        return f"pending ({rollout['reason']})"
    return state


def waiting_text(gate: dict[str, Any]) -> str:
    """What waits, in a few words: "awaiting approval (1/2): release-…", "held until …"."""
    tag = gate.get("tag")
    if gate.get("state") == "awaiting_approval":
        approvals = gate.get("approvals") or {}
        done = len(approvals.get("by") or [])
        return f"awaiting approval ({done}/{approvals.get('needed')}): {tag}"
    until = gate.get("until")
    return f"held until {until}: {tag}" if until else f"held: {tag}"


def is_active(status: dict[str, Any]) -> bool:
    """True while a rollout of this service is in progress."""
    rollout = status.get("rollout") or {}
    return rollout.get("state") in ACTIVE_STATES


def overview_row(
    service: Service, status: dict[str, Any] | None, now: datetime, error: str | None = None
) -> dict[str, Any]:
    """One overview row: display texts under ``fields``, state words under ``states``."""
    row: dict[str, Any] = {
        "name": service.name,
        "active": False,
        "frozen": False,
        "fields": {
            "strategy": service.strategy,
            "desired": NONE,
            "running": NONE if service.strategy == "rolling" else "",
            "rollout": NONE,
            "last": NONE,
            "age": "",
            "frozen": "",
        },
        "states": {"rollout": "", "last": "", "frozen": "", "running": "", "stage": ""},
    }
    if status is None:
        row["fields"]["rollout"] = f"unavailable ({error})" if error else NONE
        row["states"]["rollout"] = "error"
        return row
    fields, states = row["fields"], row["states"]
    fields["desired"] = status.get("tag") or NONE
    if service.strategy == "rolling":
        fields["running"] = status.get("running") or NONE
        if status.get("running") and status.get("running") != status.get("tag"):
            states["running"] = "lagging"
    rollout = status.get("rollout")
    fields["rollout"] = rollout_text(rollout)
    states["rollout"] = str((rollout or {}).get("state") or "")
    gate = status.get("gate")
    if gate:  # a deploy waits for approvals or a window (noman.gates)
        fields["rollout"] = waiting_text(gate)
        states["rollout"] = str(gate.get("state") or "")
    states["stage"] = str((rollout or {}).get("stage") or "")
    history = status.get("history") or []
    if history:
        last = history[0]
        fields["last"] = f"{last.get('kind') or 'deploy'} {last.get('tag')}: {last.get('outcome')}"
        fields["age"] = ago(last.get("time"), now)
        states["last"] = str(last.get("outcome") or "")
    row["frozen"] = bool(status.get("frozen"))
    fields["frozen"] = "frozen" if row["frozen"] else ""
    states["frozen"] = "frozen" if row["frozen"] else ""
    row["active"] = is_active(status)
    return row


def history_rows(status: dict[str, Any], now: datetime) -> list[dict[str, Any]]:
    """The history, newest first, with ages and whether each tag can be gone back to."""
    current = status.get("tag")
    rows = []
    for entry in status.get("history") or []:
        tag = entry.get("tag")
        rows.append(
            {
                **entry,
                "age": ago(entry.get("time"), now),
                "can_roll_back": bool(tag)
                and tag != current
                and entry.get("outcome") not in BAD_OUTCOMES,
            }
        )
    return rows


def rollback_candidates(status: dict[str, Any]) -> list[str]:
    """Distinct tags of the history that a rollback could go to, newest first."""
    seen: list[str] = []
    for row in history_rows(status, datetime.now(UTC)):
        if row["can_roll_back"] and row["tag"] not in seen:
            seen.append(row["tag"])
    return seen
