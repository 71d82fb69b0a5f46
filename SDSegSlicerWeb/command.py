"""`sdseg-slicer web [VOLUME] [--host H] [--port P] [--token T] [--timeout S]`: start the web app and print its
address."""

from __future__ import annotations

import errno
import os
import sys

from SDSegSlicerLib.remote_server import check_binding


def run(args, token: str | None) -> int:
    """Serve the app until Ctrl-C (or, with ``--timeout S``, until no page has been open for S seconds: trame's own
    idle stop, 300 s by default, is off otherwise). ValueError (one line) for a public address without a token, an
    input that cannot be read or a port in use."""
    check_binding(args.host, token)
    print("SDSegSlicer Web: starting (Slicer's libraries load in 10-30 s) ...", file=sys.stderr, flush=True)
    os.environ["TRAME_ARGS"] = ""  # trame parses no command line of its own: everything comes from ``args``
    from .app import SDSegWebApp

    app = SDSegWebApp(python_executable=args.python or "", worker_url=args.server or "",
                      worker_token=args.worker_token, access_token=token, max_upload_mb=args.max_upload_mb)
    if args.input and not app.load_volume(args.input):
        raise ValueError(app.state.sdseg_status)

    def announce(**_):
        address = f"http://{args.host}:{app.server.port}/" + ("?token=<the token>" if token else "")
        until = f"stops after {args.timeout} s without an open page" if args.timeout else "Ctrl-C to stop"
        print(f"SDSegSlicer Web on {address} ({until})", file=sys.stderr, flush=True)

    app.ctrl.on_server_ready.add(announce)
    try:
        app.server.start(host=args.host, port=args.port, open_browser=False, show_connection_info=False,
                         timeout=args.timeout or 0)
    except OSError as error:
        if error.errno != errno.EADDRINUSE:
            raise
        raise ValueError(f"port {args.port} on {args.host} is in use (another server?): choose another with "
                         "--port") from None
    print("SDSegSlicer Web stopped.", file=sys.stderr, flush=True)
    return 0
