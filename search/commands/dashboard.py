"""`mergesearch dashboard RUN`: optuna-dashboard on a run's study, with contact sheets and notes."""

from __future__ import annotations

import argparse
import signal
import sys


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "dashboard",
        help="browse a run's trials, contact sheets and scores in optuna-dashboard",
        description=(
            "Serve optuna-dashboard on the run's storage and artifact store: every trial shows its "
            "contact sheet and a note with its per-category scores beside the parents'; the study page "
            "holds the best recipe's block weights as a heat map. Notes and figures follow a running search."
        ),
    )
    parser.add_argument("run", metavar="RUN", help="run folder (runs/<name>/) or its run.json")
    parser.add_argument("--study", metavar="NAME", help="which study of the run (after a --fork the run holds "
                    "several; default: the latest)")
    parser.add_argument("--port", type=int, default=8080, help="port to listen on (default 8080; 0 = any free port)")
    parser.add_argument(
        "--host", default="127.0.0.1",
        help="address to bind (default 127.0.0.1: this machine only; the dashboard can edit and delete "
             "trials and has no login, so bind elsewhere only behind an SSH tunnel or a trusted network)",
    )
    parser.add_argument("--refresh", type=float, default=60.0, metavar="SECONDS",
                        help="how often notes and figures catch up with new trials (default 60)")
    parser.set_defaults(handler=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from search.review.dashboard import LOCAL_HOSTS, DashboardServer
    from search.review.run import ReviewError, load_run

    try:
        folder = load_run(args.run, args.study)
        server = DashboardServer(folder, host=args.host, port=args.port, refresh_s=args.refresh)
    except ReviewError as exc:
        print(f"mergesearch dashboard: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # port taken, address not available
        print(f"mergesearch dashboard: cannot listen on {args.host}:{args.port} ({exc}); try --port 0",
              file=sys.stderr)
        return 2
    if args.host not in LOCAL_HOSTS:
        print(
            f"warning: the dashboard is bound to {args.host}, not localhost; it has no login and can "
            "delete trials, so anyone who can reach this port can change the study",
            file=sys.stderr,
        )
    print(f"dashboard for study {folder.study_name!r} at {server.url}  (Ctrl-C to stop)")
    # a service manager stops with SIGTERM: shut down as cleanly as on Ctrl-C
    signal.signal(signal.SIGTERM, lambda *_: server.request_stop())
    try:
        server.start()
        while not server.wait(3600):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0
