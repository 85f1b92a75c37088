"""The ``noman`` command: serve, check, secret, deploy, rollback, freeze, promote, abort, status,
healthcheck, and the operators' approve, reject, deploy-now and report."""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import os
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from noman import __version__, auth
from noman.config import MIN_SECRET_CHARS, Settings, config_path, load
from noman.errors import ConfigError, NomanError, UnknownService, UpstreamError

if TYPE_CHECKING:  # the commands import these lazily: `noman --help` stays fast
    from noman.model import Service
    from noman.state import RolloutState
    from noman.wiring import Components

DEV_SERVICE = "demo"
DEFAULT_BIND = "127.0.0.1:8000"
GUNICORN_CONFIG = "python:noman.server.config"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``noman`` console script."""
    args = _parser().parse_args(argv)
    try:
        result: int = args.run(args)
        return result
    except BrokenPipeError:
        # `noman check | head -2`: the reader has gone; say nothing more, as `yes` does.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141
    except UnknownService as exc:
        print(f"noman: usage error: {exc}", file=sys.stderr)
        return 2
    except ConfigError as exc:
        print(f"noman: configuration error: {exc}", file=sys.stderr)
        return 2
    except NomanError as exc:
        print(f"noman: {_explain(exc)}", file=sys.stderr)
        return 1


def _explain(exc: NomanError) -> str:
    """``code: message``, naming the Consul or Nomad address that failed when known."""
    return f"{exc.code}: {_message(exc)}"


def _message(exc: NomanError) -> str:
    address = exc.address if isinstance(exc, UpstreamError) else None
    return f"{exc.message} (at {address})" if address else exc.message


DESCRIPTION = "Noman: deploy pushed container images through Consul keys and Nomad jobs."
EPILOG = """\
configuration:
  read from --config FILE, else $NOMAN_CONFIG_TOML (the TOML text itself),
  else $NOMAN_CONFIG (a path), else ./noman.toml. CONSUL_HTTP_ADDR,
  CONSUL_HTTP_TOKEN, NOMAD_ADDR, NOMAD_TOKEN and the other variables listed
  in README.md override the file.

exit codes: 0 success, 1 an error (its code is printed), 2 a configuration error.
"""


CONFIG_HELP = "TOML file (default: $NOMAN_CONFIG_TOML, else $NOMAN_CONFIG, else ./noman.toml)"


def _parser() -> argparse.ArgumentParser:
    """The ``noman`` command line: the top-level options, then each group of subcommands."""
    parser = argparse.ArgumentParser(
        prog="noman",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"noman {__version__}")
    parser.add_argument("--config", help=CONFIG_HELP)
    # --config is accepted after the command too (`noman deploy web TAG --config x`);
    # SUPPRESS keeps a value given before the command.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", default=argparse.SUPPRESS, help=CONFIG_HELP)
    commands = parser.add_subparsers(required=True, metavar="COMMAND")
    _server_commands(commands, common)
    _secret_commands(commands)
    _deploy_commands(commands, common)
    _service_commands(commands, common)
    _operator_commands(commands, common)
    _healthcheck_command(commands)
    return parser


def _server_commands(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    common: argparse.ArgumentParser,
) -> None:
    """serve and check: run the server, and see that its configuration works."""
    serve = commands.add_parser("serve", help="run the server under gunicorn", parents=[common])
    serve.add_argument("--dev", action="store_true", help="embedded store and a demo service")
    serve.add_argument(
        "--bind", help=f"address to listen on (default: $NOMAN_BIND, else {DEFAULT_BIND})"
    )
    serve.add_argument("--data-dir", default=".noman-dev", help="where --dev keeps its files")
    serve.add_argument(
        "--new-secret", action="store_true", help="--dev: replace the demo secret kept in DATA_DIR"
    )
    serve.set_defaults(run=_serve)

    check = commands.add_parser(
        "check", help="validate the config and reach Consul/Nomad", parents=[common]
    )
    check.set_defaults(run=_check)


def _healthcheck_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """healthcheck: the image's HEALTHCHECK, with no configuration needed."""
    health = commands.add_parser("healthcheck", help="exit 0 if the local server is alive")
    health.add_argument("--url", help="default: /healthz on $NOMAN_BIND's port")
    health.set_defaults(run=_healthcheck)


def _secret_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """secret new: a hook secret, the status page's admin token or an operator's token."""
    secret = commands.add_parser("secret", help="manage hook secrets")
    secret_commands = secret.add_subparsers(required=True, metavar="ACTION")
    new = secret_commands.add_parser("new", help="print a fresh secret and its config line")
    new.add_argument("service", nargs="?", help="the service the hook secret is for")
    new.add_argument("--ui", action="store_true", help="an admin token for the status page")
    new.add_argument("--operator", metavar="NAME", help="a named operator's token")
    new.set_defaults(run=_secret_new)


def _deploy_commands(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    common: argparse.ArgumentParser,
) -> None:
    """deploy and rollback: write a tag through the hook's policy."""
    deploy = commands.add_parser(
        "deploy", help="deploy a tag, with the hook's policy", parents=[common]
    )
    deploy.add_argument("service")
    deploy.add_argument("tag")
    deploy.add_argument("--force", action="store_true", help="allow an older tag (rollback)")
    deploy.add_argument(
        "--wait",
        action="store_true",
        help="follow the rollout to its end (progress on stderr; exit 1 unless successful)",
    )
    deploy.add_argument(
        "--timeout",
        type=_seconds,
        metavar="SECONDS",
        help="with --wait: stop following after this long (default: nomad.watch_timeout + 60)",
    )
    deploy.set_defaults(run=_deploy)

    rollback = commands.add_parser(
        "rollback", help="deploy an earlier tag (default: the last good one)", parents=[common]
    )
    rollback.add_argument("service")
    rollback.add_argument("--to", dest="tag", help="the tag to go back to")
    rollback.set_defaults(run=_rollback)


def _service_commands(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    common: argparse.ArgumentParser,
) -> None:
    """freeze, unfreeze, promote, abort and status: act on a service, or look at it."""
    for name, frozen in (("freeze", True), ("unfreeze", False)):
        action = "refuse" if frozen else "accept"
        cmd = commands.add_parser(name, help=f"{action} deploys of a service", parents=[common])
        cmd.add_argument("service")
        cmd.set_defaults(run=_set_frozen, frozen=frozen)

    for name, text in (
        ("promote", "promote the canaries of a rollout awaiting promotion"),
        ("abort", "fail the rollout in progress (its jobs and key go back)"),
    ):
        cmd = commands.add_parser(name, help=text, parents=[common])
        cmd.add_argument("service")
        cmd.set_defaults(run=_gate, action=name)

    status = commands.add_parser(
        "status",
        help="each service's desired and running tag, rollout and history",
        parents=[common],
    )
    status.add_argument("service", nargs="?", help="only this service")
    status.set_defaults(run=_status)


def _print_json(answer: Any) -> None:
    """One JSON answer on one line of stdout: every command prints alike, ready for jq."""
    print(json.dumps(answer))


def _seconds(text: str) -> float:
    """A positive number of seconds (argparse turns the error into a usage line, exit 2)."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of seconds")
    return value


def _settings(args: argparse.Namespace) -> Settings:
    """The command's settings; from here on its warnings are ``noman: warning:`` lines."""
    # Here, not in main: `noman --help`, `secret new` and the image's healthcheck
    # never log, and the logging module's imports would slow each of them by 20 ms.
    from noman import logs

    logs.configure_cli()
    return load(args.config)


def _serve(args: argparse.Namespace) -> int:
    from noman.server.master import DEV_BANNER_ENV, unavailable

    if args.new_secret and not args.dev:
        print("noman: --new-secret replaces the demo secret of --dev; add --dev", file=sys.stderr)
        return 2
    env = dict(os.environ)
    env.pop(DEV_BANNER_ENV, None)
    if args.bind:
        env["NOMAN_BIND"] = args.bind
    env.setdefault("NOMAN_BIND", DEFAULT_BIND)
    metrics_bind = None
    if args.dev:
        _prepare_dev(Path(args.data_dir), env, new_secret=args.new_secret)
    else:
        # Fail here, readably, not inside a gunicorn worker.
        metrics_bind = load(args.config).metrics_bind
        if args.config:
            env.pop("NOMAN_CONFIG_TOML", None)  # --config wins, in the workers too
        if args.config or not env.get("NOMAN_CONFIG_TOML"):
            env["NOMAN_CONFIG"] = str(config_path(args.config))
    # A busy port is one line naming the way out, not gunicorn's five retries.
    for address, remedy in ((env["NOMAN_BIND"], "--bind HOST:PORT"), (metrics_bind, None)):
        problem = unavailable(address) if address else None
        if problem:
            remedy = remedy or "server.metrics_bind in the config"
            print(
                f"noman: cannot listen on {address}: {problem}; choose another with {remedy}",
                file=sys.stderr,
            )
            return 1
    command = [sys.executable, "-m", "gunicorn", "-c", GUNICORN_CONFIG]
    if args.dev:
        command += ["--workers", "1"]
    command.append("noman:create_app()")
    sys.stdout.flush()
    os.execve(sys.executable, command, env)  # noqa: S606 (replace ourselves with gunicorn)
    return 0  # pragma: no cover


def _dev_secret(data_dir: Path, new: bool) -> tuple[str, str]:
    """The demo secret kept in ``data_dir`` (so saved curl commands keep working)."""
    path = data_dir / "secret"
    secret = "" if new or not path.exists() else path.read_text(encoding="utf-8").strip()
    if len(secret) < MIN_SECRET_CHARS:
        secret, _ = auth.new_secret()
        path.touch(mode=0o600)
        path.write_text(secret + "\n", encoding="utf-8")
    return secret, hashlib.sha256(secret.encode("utf-8")).hexdigest()


def _prepare_dev(data_dir: Path, env: dict[str, str], new_secret: bool = False) -> None:
    """Write the demo config and the banner that the server prints once it listens."""
    from noman.server.master import DEV_BANNER_ENV

    data_dir.mkdir(parents=True, exist_ok=True)
    store = (data_dir / "store.json").resolve()
    config = data_dir / "noman.toml"
    secret, digest = _dev_secret(data_dir, new_secret)
    config.write_text(
        "# Written by `noman serve --dev` at every start; the secret stays in `secret`\n"
        "# next to this file (`noman serve --dev --new-secret` replaces it).\n"
        "[store]\n"
        'backend = "file"\n'
        f"path = {json.dumps(str(store))}\n\n"
        "# Demo payloads carry real callback URLs: log reports, never send them.\n"
        "[notify]\n"
        "dry_run = true\n\n"
        f"[services.{DEV_SERVICE}]\n"
        'repository = "stut/stut.dev"\n'
        'key = "configs/stut.dev/IMAGE_TAG"\n'
        f'secret_sha256 = "{digest}"\n',
        encoding="utf-8",
    )
    env["NOMAN_CONFIG"] = str(config)
    env.pop("NOMAN_CONFIG_TOML", None)
    bind = env["NOMAN_BIND"]
    base = f"http://{bind.replace('0.0.0.0', '127.0.0.1')}"  # noqa: S104 (display only)
    installed = Path(sys.executable).parent / "noman"
    command = str(installed) if installed.exists() else "noman"
    banner = data_dir / "banner.txt"
    banner.touch(mode=0o600)  # it holds the secret
    banner.write_text(
        f"Noman dev server on {base}: service {DEV_SERVICE!r} (repository stut/stut.dev), "
        f"tags kept in {store}\n"
        "Outcome reports (DockerHub callbacks, notifications) are logged, not sent.\n\n"
        "Deploy a tag:\n"
        f"  curl -sS -X POST {base}/hooks/{secret} \\\n"
        "    -H 'Content-Type: application/json' -d '{\"tag\": \"release-20230103082900\"}'\n\n"
        "Or the same with the secret in a header (stays out of access logs):\n"
        f"  curl -sS -X POST {base}/hooks -H 'Authorization: Bearer {secret}' \\\n"
        "    -H 'Content-Type: application/json' -d '{\"tag\": \"release-20230103082900\"}'\n\n"
        f"Status: {command} --config {config} status\n",
        encoding="utf-8",
    )
    env[DEV_BANNER_ENV] = str(banner.resolve())


def _check(args: argparse.Namespace) -> int:
    settings = _settings(args)
    from noman.wiring import build

    print(f"config: {settings.source}: {len(settings.services)} service(s)")
    parts = build(settings)
    try:
        print(f"store: {parts.store.check_ready()}")
    except NomanError as exc:
        print(f"store: FAILED: {_explain(exc)}")
        return 1
    problems = 0
    prefix = settings.consul.state_prefix
    try:
        entries = parts.store.list(prefix).entries
        holder = entries.get(f"{prefix}.leader")
        leader = holder.value if holder is not None and holder.value else "none yet"
        print(f"records: {prefix} ({len(entries)} key(s)); reconciler lock: {leader}")
    except NomanError as exc:
        problems += 1
        print(f"records: {prefix}: FAILED: {_explain(exc)}")
    for service in settings.services:
        try:
            problems += _check_service(parts, service)
        except NomanError as exc:
            problems += 1
            print(f"{service.name}: FAILED: {_explain(exc)}")
    return 1 if problems else 0


def _check_service(parts: Components, service: Service) -> int:
    """Print what ``check`` finds for one service; the number of problems (raises on others)."""
    from noman.stores.consul import ConsulStore

    name = service.name
    view = parts.deployer.view(service)
    key = view.key
    print(f"{name}: {service.key} = {key.value or '(not set)'} [{service.strategy}]")
    if parts.nomad is not None and service.nomad is not None and service.strategy == "rolling":
        job = parts.nomad.read(service)
        print(f"{name}: job {service.nomad.job} runs {job.tag or '(no tag Noman can read)'}")
        if key.value is not None and job.tag != key.value:
            # Normal while a rollout runs; otherwise the reconciler (or an operator) must act.
            rollout = view.rollout
            state = (
                f"rollout of {rollout.tag}: {rollout.state}"
                if rollout is not None
                else "no rollout recorded"
            )
            print(
                f"{name}: warning: key and job disagree: the key says {key.value}, "
                f"job {service.nomad.job} runs {job.tag or '(none)'} ({state})"
            )
        elif key.value is None and job.tag:
            # A template that reads the key waits for it: new allocations would not start.
            print(
                f"{name}: warning: {service.key} is not set, but job {service.nomad.job} runs "
                f"{job.tag}: a template that reads the key holds new allocations until it is "
                f"set; write the running tag with `noman deploy {name} {job.tag}`"
            )
        for warning in parts.nomad.check(service):
            print(f"{name}: warning: {warning}")
    if isinstance(parts.store, ConsulStore):
        keys = [service.key, parts.deployer.keys.desired(service.name)]
        refused = parts.store.probe_writes(keys)
        for where, what in refused.items():
            print(
                f"{name}: FAILED: consul_forbidden: the token may not write {where} "
                f"(at {parts.store.settings.address}): {what}"
            )
        if refused:
            return 1
        print(f"{name}: the token may write {' and '.join(keys)} (a probe that writes nothing)")
    return 0


def _secret_new(args: argparse.Namespace) -> int:
    if [bool(args.service), args.ui, bool(args.operator)].count(True) != 1:
        print(
            "noman secret new: give a service name, --ui or --operator NAME (one of them)",
            file=sys.stderr,
        )
        return 2
    secret, digest = auth.new_secret()
    if args.operator:
        print(
            f"token: {secret}\n\n"
            f"Give it to {args.operator}: it logs into /ui and authorises the operator API "
            "(Authorization: Bearer <token>). Put this in noman.toml (the token itself stays "
            f'out of the file):\n[[operators]]\nname = "{args.operator}"\n'
            f'token_sha256 = "{digest}"'
        )
        return 0
    if args.ui:
        print(
            f"token: {secret}\n\n"
            "Log in at /ui with it. Put this in noman.toml (the token itself stays out of "
            f'the file):\n[ui]\ntoken_sha256 = "{digest}"'
        )
        return 0
    print(
        f"secret:    {secret}\n"
        f"hook path: /hooks/{secret}\n"
        f"or header: Authorization: Bearer {secret}\n\n"
        f"Put this in noman.toml (the secret itself stays out of the file):\n"
        f"[services.{args.service}]\n"
        f'secret_sha256 = "{digest}"'
    )
    return 0


def _deploy(args: argparse.Namespace) -> int:
    from noman.release import Release
    from noman.wiring import build

    parts = build(_settings(args))
    service = parts.settings.service(args.service)
    release = Release(tag=args.tag, sender="cli", force=args.force)
    with _quiet_logs() if args.wait else contextlib.nullcontext():
        outcome = parts.deployer.deploy(service, release)  # its retry reason is shown below
    if args.wait and outcome.waiting is not None:
        # Approvals or a deploy window hold it (noman.gates): nothing rolls out yet.
        _print_json(outcome.as_dict())
        state = str(outcome.waiting["state"]).replace("_", " ")
        print(
            f"noman: {service.name} {outcome.tag}: {state}; nothing rolls out until then "
            f"(see `noman status {service.name}`)",
            file=sys.stderr,
        )
        return 1
    return _answer(parts, service, outcome.as_dict(), args.wait, args.timeout)


def _rollback(args: argparse.Namespace) -> int:
    from noman.wiring import build

    parts = build(_settings(args))
    service = parts.settings.service(args.service)
    outcome = parts.deployer.rollback(service, args.tag, sender="cli")
    return _answer(parts, service, outcome.as_dict(), wait=False)


def _answer(
    parts: Components,
    service: Service,
    result: dict[str, Any],
    wait: bool,
    timeout: float | None = None,
) -> int:
    """Print the result; with ``wait``, follow the rollout to its end first."""
    if not wait:
        _print_json(result)
        return 0
    if timeout is None:
        timeout = parts.settings.nomad.watch_timeout + 60
    try:
        with _quiet_logs():
            rollout = _follow(parts, service, str(result["tag"]), timeout)
    except KeyboardInterrupt:
        print(f"noman: stopped following; see `noman status {service.name}`", file=sys.stderr)
        return 130
    finally:
        parts.reconciler.stop()  # gives the leader lock back, if this command held it
    if service.strategy != "rolling":
        _print_json(result)
        return 0
    result["rollout"] = rollout.public() if rollout is not None else None
    _print_json(result)
    if rollout is not None and rollout.state == "successful":
        return 0
    what = f"{service.name} {result['tag']}"
    if rollout is None:
        desired = parts.deployer.view(service).key.value
        print(
            f"noman: {what}: no rollout of this tag is recorded (the desired tag is {desired})",
            file=sys.stderr,
        )
    elif rollout.terminal:
        reason = rollout.description or rollout.reason or "no reason given"
        print(f"noman: {what} {rollout.state}: {reason}", file=sys.stderr)
    else:
        reason = f" ({rollout.reason})" if rollout.reason else ""
        print(
            f"noman: {what} still {rollout.state}{reason} after {timeout:g}s; it goes on, "
            f"see `noman status {service.name}`",
            file=sys.stderr,
        )
    return 1


#: Longest single wait of ``--wait`` on Nomad or on the record, so it re-checks the
#: leader lock (and takes the rollout over if the leader died) at least this often.
FOLLOW_WAIT = 5.0


def _follow(parts: Components, service: Service, tag: str, timeout: float) -> RolloutState | None:
    """Follow the rollout of ``tag`` until it ends or ``timeout``; its last RolloutState.

    The rollout is carried by whichever process holds the leader lock. When no Noman
    instance leads (none running, as in a setup without a server), this command takes
    the lock and runs the reconciler's passes itself, for every service as any leader
    does, and gives the lock back when done; otherwise it watches the record the leader
    writes (and takes over if the leader dies). One stderr line per change of state,
    counts or reason.
    """
    from noman.state import first_rollout

    reconciler = parts.reconciler
    deadline = time.monotonic() + timeout
    leading = reconciler.lock.hold()
    print(f"noman: {_driver(parts, leading)}", file=sys.stderr)
    if service.strategy != "rolling":
        reconciler.run_once()  # sends the report waiting in the record, if this command leads
        return None
    shown, index = "", 0
    while True:
        left = max(0.0, deadline - time.monotonic())
        view = parts.deployer.view(service)
        attempt = view.desired.attempt
        if attempt is None or attempt.tag != tag:
            return None  # superseded by a newer deploy
        rollout = view.rollout
        if rollout is None or rollout.seq != attempt.seq:
            rollout = first_rollout(attempt, attempt.time)  # not taken up yet
        line = _progress(service, rollout)
        if line != shown:
            print(line, file=sys.stderr)
            shown = line
        if rollout.terminal:
            if reconciler.leader:
                reconciler.run_once()  # send the final report now, not at the next leader's
            return rollout
        if left <= 0:
            return rollout
        busy = reconciler.run_once(wait=min(FOLLOW_WAIT, left))
        if reconciler.leader != leading:
            leading = reconciler.leader
            print(f"noman: {_driver(parts, leading)}", file=sys.stderr)
        if not busy:
            # Wait for the record to change: the leader's progress, or (leading) a retry
            # coming due, which a short wait catches.
            wait = min(0.25 if leading else FOLLOW_WAIT, max(0.0, deadline - time.monotonic()))
            rollout_key = parts.deployer.keys.rollout(service.name)
            index = parts.store.list(rollout_key, index, wait).watch_index


@contextlib.contextmanager
def _quiet_logs() -> Iterator[None]:
    """No warnings that repeat what the command prints, no report line; errors still show.

    While following, the reconciler's warnings (each failed attempt) and the "deploy
    finished" log of the report are what the progress lines and the final reason line
    already say; ``status`` prints each service's error as its line. Errors (a report
    that could not be sent, a refused token) still show.
    """
    logger = logging.getLogger("noman")
    # A logger's filters see only its own records, not its children's: this one is on the
    # logger of the report line.
    reports = logging.getLogger("noman.notify")

    def keep(record: logging.LogRecord) -> bool:
        return record.getMessage() != "deploy finished"

    level = logger.level
    reports.addFilter(keep)
    if logger.getEffectiveLevel() < logging.ERROR:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        reports.removeFilter(keep)
        logger.setLevel(level)


def _driver(parts: Components, leading: bool) -> str:
    if leading:
        return "no Noman instance leads: this command carries the rollout until it ends"
    lock = f"{parts.settings.consul.state_prefix}.leader"
    holder = parts.store.read(lock).value or "another process"
    return f"the rollout is carried by the Noman leader ({holder}); following it"


def _progress(service: Service, rollout: RolloutState) -> str:
    """One line describing where ``rollout`` stands."""
    text = f"{service.name} {rollout.tag}: {rollout.state}"
    if rollout.stage and not rollout.terminal:
        text += f" ({rollout.stage})"
    counts = [
        f"{name} {getattr(rollout, name)}/{rollout.desired}"
        for name in ("placed", "healthy")
        if rollout.desired is not None and getattr(rollout, name) is not None
    ]
    if rollout.version is not None:
        counts.insert(0, f"job version {rollout.version}")
    if counts:
        text += ", " + ", ".join(counts)
    if rollout.reason and not rollout.terminal:
        text += f" ({rollout.reason}, attempt {rollout.attempts})"
    return text


def _set_frozen(args: argparse.Namespace) -> int:
    from noman.wiring import build

    parts = build(_settings(args))
    service = parts.settings.service(args.service)
    _print_json(parts.deployer.set_frozen(service, args.frozen, sender="cli"))
    return 0


def _gate(args: argparse.Namespace) -> int:
    from noman import promotion
    from noman.wiring import build

    parts = build(_settings(args))
    service = parts.settings.service(args.service)
    _print_json(promotion.request(parts.deployer, service, args.action, by="cli"))
    return 0


def _status(args: argparse.Namespace) -> int:
    from noman.wiring import build

    parts = build(_settings(args))
    services = parts.settings.services
    if args.service:
        services = (parts.settings.service(args.service),)
    failed = 0
    for service in services:
        # One service failing must not hide the others: it gets its error line instead.
        try:
            with _quiet_logs():
                line = parts.deployer.status(service)
        except NomanError as exc:
            failed += 1
            line = {"service": service.name, "error": exc.code, "message": _message(exc)}
        _print_json(line)
    return 1 if failed else 0


def _operator_commands(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    common: argparse.ArgumentParser,
) -> None:
    """approve, reject, deploy-now (as a named operator) and report."""
    for name, what in (
        ("approve", "approve the deploy that waits for approvals"),
        ("reject", "reject the deploy that waits: its tag is never written"),
        ("deploy-now", "let the deploy that waits land outside its deploy windows"),
    ):
        cmd = commands.add_parser(name, help=what, parents=[common])
        cmd.add_argument("service")
        cmd.add_argument(
            "--as",
            dest="operator",
            required=True,
            metavar="OPERATOR",
            help="your [[operators]] name",
        )
        cmd.add_argument("--tag", help="the tag you reviewed (refused if another one waits)")
        if name == "reject":
            cmd.add_argument("--reason", help="recorded in the history and the report")
        cmd.set_defaults(run=_operate, action=name)
    report = commands.add_parser(
        "report", help="the four DORA keys of each service, from its history", parents=[common]
    )
    report.add_argument("--days", type=_days, default=30, help="the period (default 30 days)")
    report.add_argument("--service", help="only this service")
    report.add_argument("--json", action="store_true", help="the JSON of GET /api/metrics/dora")
    report.set_defaults(run=_report)


def _days(text: str) -> int:
    from noman.dora import MAX_DAYS

    if not text.isdigit() or not 1 <= int(text) <= MAX_DAYS:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of days from 1 to {MAX_DAYS}")
    return int(text)


def _operate(args: argparse.Namespace) -> int:
    """approve / reject / deploy-now, speaking to Consul with this machine's Consul rights."""
    from noman.operators import operator_named
    from noman.wiring import build

    settings = _settings(args)
    operator = operator_named(settings.operators, args.operator)
    if operator is None:
        known = ", ".join(o.name for o in settings.operators) or "none"
        raise ConfigError(
            f"{settings.source}: no operator named {args.operator!r} in [[operators]] "
            f"(configured: {known})"
        )
    parts = build(settings)
    service = settings.service(args.service)
    gates = parts.gates
    if args.action == "approve":
        action = gates.approve(service, operator.name, args.tag, sender="cli")
    elif args.action == "reject":
        action = gates.reject(service, operator.name, args.tag, args.reason, sender="cli")
    else:
        action = gates.deploy_now(service, operator.name, args.tag, sender="cli")
    parts.courier.wait(parts.settings.notify.timeout * parts.settings.notify.retries + 5)
    _print_json(action.body)
    return 0


def _report(args: argparse.Namespace) -> int:
    from noman import dora
    from noman.wiring import build

    parts = build(_settings(args))
    services = list(parts.settings.services)
    if args.service:
        services = [parts.settings.service(args.service)]
    measured = dora.measure(
        dora.collect(parts.deployer, services),
        now=time.time(),
        days=args.days,
        history_size=parts.settings.rollout.history_size,
    )
    data = measured.as_dict()
    if args.json:
        _print_json(data)
        return 0
    print(dora.table(data))
    return 0


def _healthcheck(args: argparse.Namespace) -> int:
    url = args.url
    context = None
    if not url:
        port = os.environ.get("NOMAN_BIND", "127.0.0.1:8000").rsplit(":", 1)[-1]
        scheme = "https" if _serves_tls() else "http"
        url = f"{scheme}://127.0.0.1:{port}/healthz"
    if url.startswith("https://127.0.0.1:"):
        import ssl

        # Liveness of the local process: its certificate names the public host, not 127.0.0.1.
        context = ssl._create_unverified_context()  # noqa: S323
    try:
        with urllib.request.urlopen(url, timeout=3, context=context) as answer:  # noqa: S310
            return 0 if answer.status == 200 else 1
    except (urllib.error.URLError, OSError) as exc:
        print(f"noman healthcheck: {url}: {exc}", file=sys.stderr)
        return 1


def _serves_tls() -> bool:
    """True when the configuration (if readable here) sets server.tls_cert."""
    try:
        return load().tls_cert is not None
    except (ConfigError, OSError):
        return False


if __name__ == "__main__":
    sys.exit(main())
