"""``sorter station`` (the web application, ``add-user``) and ``sorter labels export``.

:func:`add_commands` is called by :mod:`sorter.cli`, which owns logging set-up and turns
:class:`~sorter.errors.SorterError` into exit status 2.
"""

from __future__ import annotations

import argparse
import ipaddress
import sys
from pathlib import Path
from typing import Any

from sorter.errors import ConfigError, SorterError

__all__ = ["add_commands", "settings_from_config"]

DEFAULT_PORT = 8470


def add_commands(sub: Any) -> None:
    """Add ``station`` and ``labels`` to the ``sorter`` sub-command parser."""
    _add_station(sub)
    _add_labels(sub)


def _common(p: argparse.ArgumentParser, dest_prefix: str = "") -> None:
    p.add_argument(
        "--config",
        metavar="FILE",
        default=None,
        dest=f"{dest_prefix}config",
        help="the line's TOML configuration (line.toml): audit log, log directory, model",
    )
    p.add_argument(
        "--set",
        metavar="SECTION.KEY=VALUE",
        action="append",
        default=[],
        dest=f"{dest_prefix}overrides",
        help="override one line setting, as for `sorter run` (repeatable)",
    )
    p.add_argument(
        "--store",
        metavar="FILE",
        default=None,
        dest=f"{dest_prefix}store",
        help="the station's own database of users and verdicts (default: station.sqlite beside the audit log)",
    )


def _add_station(sub: Any) -> None:
    p = sub.add_parser(
        "station",
        help="the operator station: a web page for the line, the manual lane's verdicts and models",
        description=(
            "Serve the operator station: line status, the review queue of the manual lane (verdicts by keyboard "
            "or touch), model cards and promotion. A separate process from `sorter run`: it reads the audit log "
            "read-only. Loopback only by default; see docs/station.md to serve it on the plant network."
        ),
    )
    _common(p)
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1; another address needs --tls-cert and --tls-key)",
    )
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"TCP port (default {DEFAULT_PORT})")
    p.add_argument("--tls-cert", default=None, help="TLS certificate (PEM) to serve HTTPS")
    p.add_argument("--tls-key", default=None, help="TLS private key (PEM)")
    p.add_argument(
        "--behind-proxy",
        action="store_true",
        help="a reverse proxy on this machine terminates TLS: cookies are marked Secure and the "
        "client address is taken from the proxy's X-Forwarded-For",
    )
    p.add_argument(
        "--spot-check",
        type=float,
        default=0.02,
        help="share of items of the other lanes also put in the review queue (default 0.02)",
    )
    p.add_argument(
        "--candidates",
        metavar="DIR",
        default=None,
        help="directory of candidate model directories shown on the models page",
    )
    p.add_argument(
        "--controller-pidfile",
        metavar="FILE",
        default=None,
        help="pid file of `sorter run`: a promotion sends it SIGHUP to reload the model",
    )
    p.add_argument(
        "--reload-command",
        metavar="CMD",
        default=None,
        help="command that makes the controller reload its model, e.g. 'systemctl reload sorter-line'",
    )
    p.set_defaults(func=_cmd_station)
    users = p.add_subparsers(dest="station_command", metavar="SUBCOMMAND")
    a = users.add_parser(
        "add-user",
        help="add a user or change a user's role and password",
        description=(
            "Add a station user, or replace the role and password of an existing one. The password is read from "
            "the terminal (twice), or from the first line of standard input with --password-stdin."
        ),
    )
    _common(a, "sub_")
    a.add_argument("name", help="user name (letters, digits, '.', '_', '-')")
    a.add_argument(
        "--role",
        choices=["operator", "engineer"],
        default="operator",
        help="operator: verdicts; engineer: verdicts and model promotion (default operator)",
    )
    a.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    a.set_defaults(func=_cmd_add_user)
    s = users.add_parser(
        "sample",
        help="write a simulated line (log + audit log + line.toml) to try the station",
        description=(
            "Simulate items, score them with the shipped model and write what a running line leaves behind: the "
            "sensor log, the controller's audit log and a line.toml pointing at both, so the station can be tried "
            "without a line."
        ),
    )
    s.add_argument("--out", required=True, help="directory to create (new or empty)")
    s.add_argument("--items", type=int, default=600, help="items on the belt (default 600)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument(
        "--line",
        default="b",
        choices=["a", "b"],
        help="simulator sensor preset (default b: other sensors than the "
        "shipped model was trained on, so more items go to manual)",
    )
    s.set_defaults(func=_cmd_sample)


def _add_labels(sub: Any) -> None:
    p = sub.add_parser(
        "labels",
        help="operator labels: export them for training",
        description=("Work with the labels the operators recorded at the station."),
    )
    lab = p.add_subparsers(dest="labels_command", metavar="SUBCOMMAND")
    e = lab.add_parser(
        "export",
        help="write the verdicts as a labelled sorter-log/1 log",
        description=(
            "Write every item's current verdict (the latest of its history) as a labelled sorter-log/1 log that "
            "`sorter train` reads as is: the item's record with label and damaged from the operator, its images "
            "copied (or hard-linked with --link)."
        ),
    )
    _common(e)
    e.add_argument("--out", required=True, help="the log directory to write (new or empty)")
    e.add_argument(
        "--since",
        default=None,
        help="only verdicts given since: an ISO time (UTC unless a zone is given), epoch seconds, "
        "or an age such as 24h or 7d",
    )
    e.add_argument("--link", action="store_true", help="hard-link the images instead of copying them")
    e.set_defaults(func=_cmd_export)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def settings_from_config(config: str | None, overrides: list[str], store: str | None, **kw: Any) -> Any:
    """:class:`~sorter.station.app.StationSettings` from line.toml and the station's options."""
    from sorter.line.config import load_config

    from .settings import StationSettings

    cfg = load_config(config, overrides=overrides)
    audit = Path(cfg.audit.path)
    if not audit.parent.is_dir():
        raise ConfigError(
            f"audit.path {audit}: the directory {audit.parent} does not exist; fix audit.path in "
            f"{config or 'the configuration'}"
        )
    metrics_url = None
    if cfg.metrics.enabled:
        host = cfg.metrics.address
        if host in ("0.0.0.0", "::", ""):
            host = "127.0.0.1"
        metrics_url = f"http://{host}:{cfg.metrics.port}/metrics"
    return StationSettings(
        audit_path=str(audit),
        log_dir=cfg.line.log_dir if cfg.line.source == "log" and cfg.line.log_dir else None,
        store_path=str(Path(store) if store else audit.parent / "station.sqlite"),
        line_name=cfg.line.name,
        line_model=cfg.line.model,
        metrics_url=metrics_url,
        **kw,
    )


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _cmd_station(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from .app import create_app
    except ImportError as err:
        raise ConfigError(
            f"the station needs its web stack ({err.name} is missing): pip install the station extra, e.g. pip install '.[station]' in a checkout"
        ) from err

    if not 0 < args.port < 65536:
        raise ConfigError(f"--port {args.port} is not a TCP port (1-65535)")
    if not 0.0 <= args.spot_check <= 1.0:
        raise ConfigError(f"--spot-check {args.spot_check} must be between 0 and 1 (e.g. 0.02 for 2 %)")
    tls = bool(args.tls_cert or args.tls_key)
    if tls and not (args.tls_cert and args.tls_key):
        raise ConfigError("give both --tls-cert and --tls-key to serve HTTPS")
    if not _is_loopback(args.host) and not tls:
        raise ConfigError(
            f"--host {args.host} is not a loopback address: passwords and session cookies would cross the plant "
            "network unencrypted. Serve HTTPS with --tls-cert and --tls-key, or keep --host 127.0.0.1 and put a "
            "TLS reverse proxy in front (--behind-proxy); see docs/station.md"
        )
    if args.behind_proxy and not _is_loopback(args.host):
        raise ConfigError("--behind-proxy expects the proxy on this machine: keep --host 127.0.0.1")
    settings = settings_from_config(
        args.config,
        args.overrides,
        args.store,
        spot_check=args.spot_check,
        candidates_dir=args.candidates,
        controller_pidfile=args.controller_pidfile,
        reload_command=args.reload_command,
        secure_cookies=tls or args.behind_proxy,
    )
    app = create_app(settings)
    store = app.state.station.store
    if store.user_count() == 0:
        print(
            "sorter station: no users yet; add one with `sorter station add-user NAME --role engineer "
            f"--store {settings.store_path}`",
            file=sys.stderr,
        )
    scheme = "https" if tls else "http"
    print(
        f"sorter station on {scheme}://{args.host}:{args.port}/ (store {settings.store_path}); Ctrl-C stops",
        file=sys.stderr,
    )
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        log_level="warning",
        ssl_certfile=args.tls_cert,
        ssl_keyfile=args.tls_key,
        proxy_headers=args.behind_proxy,
        forwarded_allow_ips="127.0.0.1",
        server_header=False,
    )
    return 0


def _read_password(from_stdin: bool) -> str:
    if from_stdin:
        line = sys.stdin.readline()
        return line.rstrip("\r\n")
    import getpass

    if not sys.stdin.isatty():
        raise ConfigError("no terminal to ask for the password: pass --password-stdin and write it to stdin")
    first = getpass.getpass("password: ")
    if getpass.getpass("again: ") != first:
        raise SorterError("the two passwords differ; nothing changed")
    return first


def _cmd_add_user(args: argparse.Namespace) -> int:
    from .auth import hash_password
    from .store import StationStore

    config = args.sub_config or args.config
    overrides = list(args.overrides) + list(args.sub_overrides)
    store_path = args.sub_store or args.store
    if store_path is None:
        from sorter.line.config import load_config

        store_path = str(Path(load_config(config, overrides=overrides).audit.path).parent / "station.sqlite")
    pw_hash = hash_password(_read_password(args.password_stdin))
    store = StationStore(store_path)
    new = store.set_user(args.name, args.role, pw_hash)
    print(f"{'added' if new else 'updated'} {args.role} {args.name} in {store_path}")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from .export import export_labels, parse_since
    from .linedata import LineLog
    from .store import StationStore

    settings = settings_from_config(args.config, args.overrides, args.store)
    if not Path(settings.store_path).is_file():
        raise ConfigError(
            f"no station store at {settings.store_path}; pass --store or the line.toml the station runs with"
        )
    store = StationStore(settings.store_path)
    summary = export_labels(
        store, LineLog(settings.log_dir, store), args.out, since=parse_since(args.since), link=args.link
    )
    print(summary.format())
    return 0


def _cmd_sample(args: argparse.Namespace) -> int:
    from .sample import make_sample_line

    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"{out} exists and is not empty; choose a new --out directory")
    if not 1 <= args.items <= 100_000:
        raise ConfigError(f"--items {args.items}: give 1 to 100000 items")
    line = make_sample_line(
        out,
        items=args.items,
        base_items=min(args.items, 300),
        seed=args.seed,
        line=args.line,
        rate_hz=max(args.items / 3000.0, 0.05),
    )
    print(
        f"wrote a sample line to {out}: {line.items} items over the last hour\n"
        f"  sorter station add-user eng --role engineer --config {line.config}\n"
        f"  sorter station --config {line.config} --spot-check 0.1"
    )
    return 0
