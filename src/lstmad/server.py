"""Run ``lstmad serve``: the scoring thread and a production WSGI server (cheroot).

SIGTERM and SIGINT stop the HTTP server and the scoring loop; a cycle in
progress is given ``shutdown_grace`` seconds to finish, then abandoned (the
loop writes no files, so nothing partial is left behind).
"""

from __future__ import annotations

import logging
import signal
import threading
from typing import Any

from cheroot import wsgi
from prometheus_client import CollectorRegistry

from lstmad.artifact import LoadedModel
from lstmad.config import Config, parse_listen
from lstmad.errors import ConfigError
from lstmad.service import Monitor, ScoringLoop, create_app
from lstmad.source import PromClient
from lstmad.writeback import VMWriter

__all__ = ["build_service", "run_server"]

log = logging.getLogger(__name__)
SHUTDOWN_GRACE = 10.0
# cheroot binds a thread to each open (keep-alive) connection: enough for a few scrapers
# and load balancers' health checks without queueing them behind each other.
HTTP_THREADS = 32


def build_service(cfg: Config, model: LoadedModel) -> tuple[ScoringLoop, CollectorRegistry, Any]:
    """Wire registry, monitor, source client, loop and Flask app together."""
    registry = CollectorRegistry(auto_describe=True)
    monitor = Monitor(registry)
    client = PromClient(cfg.victoriametrics, on_error=monitor.count_source_error)
    writer = None
    if cfg.serve.write_back:
        vm = cfg.victoriametrics
        writer = VMWriter(vm.write_url or vm.url, tenant=vm.tenant, client=client.http)
    loop = ScoringLoop(cfg, client, model, monitor, writer=writer)
    app = create_app(loop, registry, cfg)
    return loop, registry, app


def make_server(cfg: Config, app: Any) -> wsgi.Server:
    host, port = parse_listen(cfg.serve.listen)
    server = wsgi.Server((host, port), app, numthreads=HTTP_THREADS, server_name="lstmad", timeout=10)
    if cfg.serve.tls_cert_file and cfg.serve.tls_key_file:
        import ssl

        from cheroot.ssl.builtin import BuiltinSSLAdapter

        try:
            server.ssl_adapter = BuiltinSSLAdapter(cfg.serve.tls_cert_file, cfg.serve.tls_key_file)
        except (OSError, ssl.SSLError, ValueError) as err:
            reason = getattr(err, "strerror", None) or str(err) or type(err).__name__
            raise ConfigError(
                f"cannot load TLS certificate {cfg.serve.tls_cert_file} with key "
                f"{cfg.serve.tls_key_file}: {reason}",
                "serve.tls_cert_file",
            ) from err
    return server


def run_server(cfg: Config, model: LoadedModel) -> int:
    loop, _registry, app = build_service(cfg, model)
    if cfg.serve.retrain_every > 0:
        from lstmad.retrain import Retrainer

        retrainer: Retrainer | None = Retrainer(cfg, loop)
    else:
        retrainer = None
    stop = threading.Event()
    server = make_server(cfg, app)
    worker = threading.Thread(target=loop.run_forever, args=(stop,), name="scoring", daemon=True)

    def request_stop(signum: int, frame: Any) -> None:
        log.info("signal %d: shutting down", signum)
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    server.prepare()
    http = threading.Thread(target=server.serve, name="http", daemon=True)
    http.start()
    worker.start()
    if retrainer is not None:
        retrainer.start(stop)
    scheme = "https" if cfg.serve.tls_cert_file else "http"
    log.info("serving model %s on %s://%s/metrics", model.model_id, scheme, cfg.serve.listen)
    try:
        while not stop.wait(1.0):
            if not http.is_alive():
                log.error("HTTP server stopped unexpectedly")
                stop.set()
    finally:
        stop.set()
        server.stop()
        worker.join(SHUTDOWN_GRACE)
        if worker.is_alive():
            log.warning("scoring cycle did not finish within %.0fs; abandoned", SHUTDOWN_GRACE)
        loop.client.close()
    log.info("stopped")
    return 0
