"""`python app.py` (serve): the one place that puts the parts together. From one `ServeConfig` it starts the
engine (local, or Ray Serve replicas), the studio service, the page (ui/) and the APIs (apis/) on one server.

The doors never import each other; this composer is the only module that knows them all.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass, field

from engine.images.loading import MAX_BYTES
from engine.request import UserError
from server import front
from server.login import LoginThrottle
from studio.accounts import Accounts, from_flags
from studio.quota import Quota
from studio.throttle import Throttle
from studio.work import MAX_WORK

LOOPBACK = ("127.0.0.1", "localhost", "::1")
EXTRAS = {  # an optional feature -> (the module it needs, the command that installs it)
    "--mcp": ("mcp", "pip install 'mcp>=1.21,<2'"),
    "--ray": ("ray", "pip install 'ray[serve]>=2.60,<2.61'"),
}


@dataclass(frozen=True)
class ServeConfig:
    """Everything `python app.py` serves with, read once from the command line and the environment."""

    model: str = "builtin"
    host: str = "127.0.0.1"
    port: int = 7860
    share: bool = False
    auth: Accounts | tuple[str, str] | None = None  # who may sign in (studio/accounts.py); one pair works too
    max_queue: int = 16
    max_per_user: int = 0  # waiting generations one user may have (0: no cap); the line is round-robin by user
    batch: int = 1  # waiting requests of the same settings sampled in one pipeline call
    rate: int = 0  # generations a minute per user, through every door (0: no limit)
    quota: Quota = field(default_factory=Quota)  # kept images (or bytes) per user (--quota)
    admins: tuple = ()  # accounts that see the line and may stop anything
    mcp: bool = False
    api_token: str | None = None
    ray: str | None = None  # None: the local engine; "": a local Ray; else the cluster's address
    replicas: int = 2
    gpus_per_replica: float | None = None
    outputs: str | None = None  # the library folder; "none" keeps nothing
    max_work: float | None = MAX_WORK  # megapixel-steps one request may ask for (studio/work.py); 0/None: no cap
    trusted_proxies: tuple[str, ...] = ()  # addresses whose X-Forwarded-For is believed (a Space: its proxy)
    max_sessions: int | None = None  # tabs whose page state is kept in memory (None: ui/serve.py's MAX_SESSIONS)
    on_space: bool = False  # a Hugging Face Space (SPACE_ID): its host and port, no library by default
    hf_login: bool = False  # a Space with `hf_oauth: true` (OAUTH_CLIENT_ID): users sign in with Hugging Face

    @classmethod
    def from_args(cls, args, environ=os.environ) -> ServeConfig:
        on_space = bool(environ.get("SPACE_ID"))
        hf_login = on_space and bool(environ.get("OAUTH_CLIENT_ID"))
        return cls(model=args.model, host=environ.get("GRADIO_SERVER_NAME", "0.0.0.0") if on_space else args.host,
                   port=int(environ.get("GRADIO_SERVER_PORT", args.port)) if on_space else args.port,
                   share=args.share, auth=from_flags(args.auth, getattr(args, "auth_file", None)),
                   max_queue=args.max_queue, mcp=args.mcp,
                   api_token=args.api_token or None, ray=args.ray, replicas=args.replicas,
                   gpus_per_replica=args.gpus_per_replica, outputs=args.outputs, on_space=on_space,
                   max_work=MAX_WORK if args.max_work is None else args.max_work, hf_login=hf_login,
                   trusted_proxies=("*",) if on_space else tuple(args.trusted_proxy or ()),
                   max_sessions=args.max_sessions, max_per_user=max(0, getattr(args, "max_per_user", 0) or 0),
                   batch=max(1, getattr(args, "batch", 1) or 1), rate=max(0, getattr(args, "rate", 0) or 0),
                   admins=tuple(getattr(args, "admin", None) or ()), quota=Quota.parse(getattr(args, "quota", "")))

    @property
    def loopback(self) -> bool:
        """Served only to this machine: users may name files and folders on it as models."""
        return self.host in LOOPBACK and not self.share and not self.on_space


LIMITS = front.Limits(body=MAX_BYTES * 4 // 3 + 2**20,  # an image at the engine's limit, base64, and the rest
                      upload=3 * MAX_BYTES + 2**20,  # a message's few images
                      upload_window=20 * MAX_BYTES, window_s=600)  # one address's uploads in ten minutes


def check_extras(config: ServeConfig) -> None:
    """Refuse, before anything starts, a flag whose optional package is not installed, naming the install."""
    for flag, on in (("--mcp", config.mcp), ("--ray", config.ray is not None)):
        module, install = EXTRAS[flag]
        if on and importlib.util.find_spec(module) is None:
            raise UserError(f"{flag} needs the {module!r} package, which is not installed. Install it with "
                            f"`{install}`, then start the app again (or leave out {flag}).")


def make_engine(config: ServeConfig, engine_config):
    """The local Engine, or with --ray a front for Ray Serve replicas (studio/ray_serve.py)."""
    if config.ray is None:
        from engine.engine import Engine

        return Engine(engine_config)
    from studio.ray_serve import remote_engine

    return remote_engine(engine_config, config.model, config.replicas, config.gpus_per_replica,
                         address=config.ray or None)


def zero_gpu(engine):
    """On a Hugging Face ZeroGPU Space, run each generation inside `spaces.GPU` (no live preview there)."""
    import spaces

    @spaces.GPU(duration=120)
    def generate_on_gpu(request):
        return engine.generate(request)

    return generate_on_gpu


def open_server(config: ServeConfig, engine, *, status=None, gpu=None, library=None, **build_kwargs):
    """The page, the APIs and their front on config.host:config.port, started without blocking: the launched
    gradio Blocks (tests open the real server this way; `build_kwargs` go to ui.app.build)."""
    import apis
    from ui.app import build
    from ui.serve import launch

    demo = build(engine, config.model, gpu=gpu, status=status, max_queue=config.max_queue,
                 max_per_user=config.max_per_user, batch=config.batch, rate=config.rate,
                 admins=config.admins, quota=config.quota, library=library,
                 on_space=config.on_space, hf_login=config.hf_login, max_work=config.max_work, **build_kwargs)
    if config.mcp:
        apis.add_tools(demo, demo.studio)  # before launch: gradio's MCP server reads the page's endpoints there
    # generations wait in the studio's own line (bounded by --max-queue, with a "busy" reply); gradio's queue
    # holds only what is left, so its bound is a backstop that a full line of generations never reaches
    demo.queue(max_size=max(64, 4 * config.max_queue), default_concurrency_limit=1)
    sessions = {"max_sessions": config.max_sessions} if config.max_sessions else {}  # else launch's default
    accounts = Accounts.of(config.auth)
    launch(demo, config.host, config.port, share=config.share, auth=accounts.check if accounts else None,
           mcp=config.mcp,
           trusted_proxies=config.trusted_proxies, **sessions)
    apis.mount(demo, auth=accounts, api_token=config.api_token)  # A1111, OpenAI (and MCP's guard)
    if config.auth:  # gradio builds its app inside launch: wrap the built stack (add_middleware is too late)
        app = demo.server_app
        app.middleware_stack = LoginThrottle(app.middleware_stack or app.build_middleware_stack(), Throttle())
    # before every route; with --auth gradio's own routes need the login already, so the token guards them only
    # when there is none
    front.install(demo, limits=LIMITS, loopback=config.loopback, token=None if config.auth else config.api_token,
                  on_gone=demo.studio.stops.stop,  # a cancel or hang-up reaches the run itself
                  trusted_proxies=config.trusted_proxies)
    return demo


def serve(config: ServeConfig, engine_config, library=None) -> int:
    """The chat and the APIs on config.host:config.port (loopback by default), the model loading in the
    background once the page is up."""
    check_extras(config)
    has_spaces = importlib.util.find_spec("spaces") is not None
    if has_spaces:
        import spaces  # noqa: F401  (must come before torch touches CUDA on ZeroGPU)
    from ui.status import ModelStatus

    engine = make_engine(config, engine_config)
    status = ModelStatus(config.model)
    zero = has_spaces and config.on_space
    if zero:  # ZeroGPU: CUDA exists only inside spaces.GPU calls, so load on first use
        status.text, status.done = f"Model **{config.model}** loads with the first message.", True
    if config.share and config.auth is None:
        print("WARNING: --share makes a public link that anyone who has it can use (and spend your GPU on). "
              "Add --auth USER:PASSWORD.", flush=True)
    if config.host not in LOOPBACK and config.auth is None and not config.on_space:
        print(f"WARNING: listening on {config.host}: anyone on your network can use the app. Add --auth "
              "USER:PASSWORD.", flush=True)
    demo = open_server(config, engine, status=status, gpu=zero_gpu(engine) if zero else None, library=library)
    # the app's own words (gradio's would say "set share=True in launch()", which is not the app's flag)
    shown = "127.0.0.1" if config.host in ("0.0.0.0", "::") else config.host
    print(f"Open http://{shown}:{config.port} in a browser"
          + ("" if config.share or config.on_space else " (--share makes a public link; add --auth with it)")
          + ".", flush=True)
    if not status.done:
        status.start(engine)  # after the page is up, so loading never delays it
    if config.share:
        print(f"Public link: {demo.share_url}" if demo.share_url else "The share link could not be created.",
              flush=True)
    try:
        demo.block_thread()
    except KeyboardInterrupt:
        pass
    finally:
        demo.close()
    return 0
