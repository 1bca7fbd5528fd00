"""Scale out on Ray Serve: the engine as a deployment of N identical replicas (`start`), and `RemoteEngine`, which
stands in for the Engine in the Studio so that the chat, the APIs and MCP send every generation to them.

    engine = remote_engine(config, "builtin", replicas=2)       # a local Ray, or address="ray://head:10001"
    studio = Studio(engine, "builtin")                          # or ui.app.build(engine, "builtin")

Each replica is an `Engine(config)` with the same model and plugins, so a seed gives the same pixels on any of
them (and as in one process). Ray Serve routes each request to a free replica (one generation at a time each)
and replaces a replica that dies; the request it held is answered with a message to send it again. Progress
streams back step by step; a cancel stops the replica's engine within a step. Ray is optional: imported here only.

A local Ray (no address) listens on 127.0.0.1 only, without a dashboard, and Serve runs no HTTP proxy (the studio
calls the replicas by handle): nothing of it is reachable from another machine. A cluster's address is its
operator's to secure. Tested with Ray 2.60 (TESTED_RAY); other versions start with a warning.
"""

from __future__ import annotations

import asyncio
import collections
import ipaddress
import logging
import os
import threading

from engine.config import EngineConfig
from engine.request import Request, UserError
from engine.result import Cancelled

log = logging.getLogger(__name__)

DEPLOYMENT = "studio-engine"
TESTED_RAY = "2.60."  # the versions whose ports tests/test_threats.py checked (serving.EXTRAS pins them)
LOCAL_RAY_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}  # Ray's one-machine mode: its node address is 127.0.0.1


def init_options(address: str | None) -> tuple[dict, dict]:
    """(ray.init's keyword arguments, the environment Ray must see before it is imported) for `--ray [ADDRESS]`.
    No address: a new local Ray bound to loopback. Ray's one-machine mode (its default on macOS and Windows) makes
    the node's address 127.0.0.1, and GCS, raylet, workers and agents listen on that address; `_node_ip_address`
    can't do it (ray.init swaps 127.0.0.1 for the machine's address). An address: that cluster, as it is set up."""
    options = {"address": address or "local", "include_dashboard": False, "log_to_driver": False}
    return options, ({} if address else dict(LOCAL_RAY_ENV))


def connect(address: str | None = None) -> None:
    """Start the local Ray on loopback (`address` None) or join the cluster at `address`; a Ray this process
    started already (tests, benchmarks) is used as it is."""
    options, environ = init_options(address)
    os.environ.update(environ)  # read when ray is imported, and by the processes it starts
    import ray

    if ray.is_initialized():
        return
    if not ray.__version__.startswith(TESTED_RAY):
        log.warning("Ray %s is not the tested %sx: what it listens on was not checked (pip install "
                    "'ray[serve]>=2.60,<2.61')", ray.__version__, TESTED_RAY)
    ray.init(**options)
    node = ray.util.get_node_ip_address()
    if address is None and not ipaddress.ip_address(node).is_loopback:
        ray.shutdown()
        raise UserError(f"The local Ray started on {node}, where other machines can reach it, not on 127.0.0.1: "
                        "Ray was imported before --ray could ask for loopback. Start the app in a fresh process, "
                        "or start Ray yourself (`ray start --head`) and give its address to --ray.")
    log.info("Ray: %s", f"local, on {node} only, no dashboard" if address is None else f"cluster at {address}")


class EngineReplica:
    """One replica: an Engine with the model loaded, generating one request at a time."""

    def __init__(self, config: EngineConfig, model: str, threads: int):
        import torch

        from engine import malloc
        from engine.engine import Engine

        malloc.tune()  # a replica lives as long as the server: the same flat memory (engine/malloc.py)

        torch.set_num_threads(threads)
        self.engine = Engine(config)
        self.engine.allow_path(model)
        self.engine.warm(model)

    async def generate(self, request: Request):
        """("replica", its pid), ("step", (step, total)) as it samples, then ("result", Result). A cancel of the
        caller's stream reaches here as CancelledError and stops the engine at its next step."""
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()
        cancel = threading.Event()

        def progress(step: int, total: int, _latents) -> None:
            loop.call_soon_threadsafe(events.put_nowait, ("step", (step, total)))

        work = loop.run_in_executor(None, lambda: self.engine.generate(request, progress=progress, cancel=cancel))
        yield "replica", os.getpid()
        try:
            while not work.done() or not events.empty():
                getter = asyncio.ensure_future(events.get())
                done, _ = await asyncio.wait({getter, work}, return_when=asyncio.FIRST_COMPLETED)
                if getter in done:
                    yield getter.result()
                else:
                    getter.cancel()
            yield "result", work.result()
        except asyncio.CancelledError:
            cancel.set()
            raise


def start(config: EngineConfig, model: str, replicas: int = 2, gpus_per_replica: float = 0.0,
          address: str | None = None, threads: int = 1):
    """Deploy `replicas` engine replicas on Ray Serve (a local Ray when `address` is None, else that cluster) and
    return the deployment handle. No HTTP proxy: the studio's own server is the only door."""
    from ray import serve

    connect(address)
    serve.start(http_options={"location": "NoServer"})
    options = {"num_cpus": threads, "num_gpus": gpus_per_replica}
    deployment = serve.deployment(EngineReplica, name=DEPLOYMENT, num_replicas=replicas, max_ongoing_requests=1,
                                  ray_actor_options=options)
    handle = serve.run(deployment.bind(config, model, threads), name="studio", route_prefix=None)
    log.info("Ray Serve: %d replica(s) of %s ready", replicas, model)
    return handle


def remote_engine(config: EngineConfig, model: str, replicas: int = 2, gpus_per_replica: float | None = None,
                  address: str | None = None) -> RemoteEngine:
    """`python app.py --ray [ADDRESS] --replicas N`: the replicas started and the Engine that sends work to them.
    Each replica takes one GPU when the cluster has GPUs (and the config does not ask for the CPU), else none."""
    from engine.engine import Engine

    if replicas < 1:
        raise UserError(f"--replicas {replicas}: use 1 or more engine replicas.")
    connect(address or None)  # before `import ray`: a local Ray reads there that it is to stay on loopback
    import ray

    if gpus_per_replica is None:
        has_gpu = ray.cluster_resources().get("GPU", 0) >= 1 and config.device != "cpu"
        gpus_per_replica = 1.0 if has_gpu else 0.0
    handle = start(config, model, replicas, gpus_per_replica, address or None)
    return RemoteEngine(Engine(config), handle, replicas)


def stop() -> None:
    from ray import serve

    serve.shutdown()


class RemoteEngine:
    """The Engine as the UI and APIs use it, generating on the Ray Serve replicas behind `handle`. What needs no
    loaded model (resolving names, family defaults, the plugin list) is answered by `local`, which loads none."""

    def __init__(self, local, handle, replicas: int):
        self.local, self.handle, self.replicas = local, handle, replicas
        self.config = local.config
        self.served: collections.Counter = collections.Counter()  # replica pid -> generations it took

    def resolve(self, model: str | None):
        return self.local.resolve(model)

    def allow_path(self, model: str) -> None:
        self.local.allow_path(model)

    def defaults(self, model: str) -> dict:
        return self.local.defaults(model)

    def plugin_listing(self, model: str) -> list[dict]:
        return self.local.plugin_listing(model)

    def warm(self, model: str) -> None:
        """The replicas loaded the server's model when they started; other models load on first use there."""

    def preview(self, model: str, latents):
        return None  # the latents stay on the replica

    def generate(self, request: Request, progress=None, cancel: threading.Event | None = None):
        from ray.exceptions import RayActorError, RayTaskError

        stream = self.handle.options(stream=True).generate.remote(request)
        try:
            for kind, value in stream:
                if cancel is not None and cancel.is_set():
                    stream.cancel()
                    raise Cancelled()
                if kind == "result":
                    return value
                if kind == "replica":
                    self.served[value] += 1
                    continue
                if progress is not None:
                    progress(*value, None)
        except RayTaskError as e:
            if isinstance(e.cause, (UserError, Cancelled)):
                raise e.cause from None
            if isinstance(e.cause, RayActorError):
                raise _replica_lost(e.cause) from None
            raise
        except RayActorError as e:
            raise _replica_lost(e) from None
        raise UserError("The engine replica ended this generation without an image. Send it again.")


def _replica_lost(error: Exception) -> UserError:
    log.warning("an engine replica died mid-request: %s", error)
    return UserError("The engine replica making this image stopped (it is being replaced). Nothing was lost but "
                     "this image: send the message again.")
