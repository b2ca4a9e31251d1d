"""Start the app: loopback by default, a login for any other address, and a guard on file URLs."""

from __future__ import annotations

import ipaddress
import os
import shutil
import socket
import tempfile
from pathlib import Path

from ..console import HistosynthError, info

USER_ENV, PASSWORD_ENV = "HISTOSYNTH_APP_USER", "HISTOSYNTH_APP_PASSWORD"
# Set before gradio is imported: no telemetry or version check, nothing fetched at start.
GRADIO_ENV = {"GRADIO_ANALYTICS_ENABLED": "False", "GRADIO_SHARE": "False", "GRADIO_SSR_MODE": "False",
              "HF_HUB_DISABLE_TELEMETRY": "1", "GRADIO_MCP_SERVER": "False"}


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def login(host: str) -> tuple[str, str] | None:
    """None on a loopback address; else the credentials from the environment, or a one-line refusal."""
    if is_loopback(host):
        return None
    user, password = os.environ.get(USER_ENV, ""), os.environ.get(PASSWORD_ENV, "")
    if not user or not password:
        raise HistosynthError(f"--host {host}: not a loopback address, so the app needs a login (the Browse "
                              f"tab shows report text): set {USER_ENV} and {PASSWORD_ENV}")
    return user, password


def check_port(host: str, port: int) -> None:
    if not 1 <= port <= 65535:
        error = HistosynthError(f"--port {port}: choose a port in 1..65535")
        error.exit_code = 2   # an invalid option value, as for every command
        raise error
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise HistosynthError(f"--host {host} --port {port}: cannot listen there ({exc.strerror})") from None


def guard(protected: list[Path]):
    """ASGI middleware refusing /file= URLs into the run or workspace, private names, links and remote URLs."""
    from urllib.parse import unquote

    from starlette.responses import PlainTextResponse

    from .records import Refusal

    refusal = Refusal(protected)

    async def middleware(request, call_next):
        path = unquote(request.scope.get("path", ""))
        if "/file=" in path:
            why = refusal.reason(path.split("/file=", 1)[1])
            if why:
                return PlainTextResponse(f"refused: {why}", status_code=403)
        return await call_next(request)

    return middleware


def serve(run_dir: Path, workspace: Path | None, host: str, port: int) -> None:
    auth = login(host)                          # refuse before loading anything
    if not 1 <= port <= 65535:
        check_port(host, port)
    from ..runfolder import RunFolder
    from ..workspace import Workspace

    run_dir = run_dir.absolute()
    folder = RunFolder(run_dir)
    if not folder.model_index_path.exists() and not folder.unet_dir.is_dir():
        raise HistosynthError(f"--run {run_dir}: not a run folder (no {folder.model_index_path.name} or unet/)")
    if workspace is not None:
        workspace = workspace.absolute()
        Workspace(workspace).require(Workspace(workspace).tile_index_path, "tile")
    check_port(host, port)
    scratch = Path(tempfile.mkdtemp(prefix="histosynth-serve-"))
    for key, value in {**GRADIO_ENV, "GRADIO_TEMP_DIR": str(scratch / "gradio"),
                       "GRADIO_EXAMPLES_CACHE": str(scratch / "examples")}.items():
        os.environ[key] = value
    try:
        _run(run_dir, workspace, host, port, auth, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _run(run_dir: Path, workspace: Path | None, host: str, port: int, auth, scratch: Path) -> None:
    import gradio as gr
    import uvicorn
    from fastapi import FastAPI

    from .app import CSS, AppState, build_blocks, theme

    out = scratch / "images"
    out.mkdir()
    info(f"serve: loading {run_dir}")
    state = AppState(run_dir, workspace, out)
    blocks = build_blocks(state)
    blocks.queue(default_concurrency_limit=1, max_size=32)   # one generation at a time; others wait
    protected = [run_dir] + ([workspace] if workspace else [])
    app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)
    app.middleware("http")(guard(protected))
    app = gr.mount_gradio_app(app, blocks, path="", auth=auth, auth_message="histosynth: sign in",
                              allowed_paths=[], blocked_paths=[str(p) for p in protected], ssr_mode=False,
                              theme=theme(), css=CSS, pwa=False, mcp_server=False, footer_links=[],
                              server_name=host, server_port=port, show_error=True)
    print(f"histosynth serve: http://{host}:{port}/ (Ctrl+C stops)", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")
