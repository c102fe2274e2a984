"""``modelscope-sdxl webui``: serve the web page (``webui_app.py``) on a model named by the same flags
as ``generate``; and the same app for a ModelScope Studio.

    modelscope-sdxl webui                       # the mini model on http://127.0.0.1:7860
    modelscope-sdxl webui --model OWNER/REPO --revision v1.0.0 --port 8080
    MODELSCOPE_SDXL_MODEL=OWNER/REPO python -m modelscope_sdxl.cli.webui    # what a Studio's app.py runs

Nothing here imports gradio until the app is built: the parser of every command line imports this module.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any, Optional

from .errors import CommandError
from .quiet import quiet_libraries, verbose
from .sources import DEFAULT_MODEL, ModelSource, add_model_arguments

DEFAULT_HOST = '127.0.0.1'
DEFAULT_PORT = 7860
DEFAULT_MAX_IMAGES = 4
#: Environment variables a Studio's app.py (``python -m modelscope_sdxl.cli.webui``) takes its model from.
ENV_MODEL, ENV_REVISION = 'MODELSCOPE_SDXL_MODEL', 'MODELSCOPE_SDXL_REVISION'
ENV_REFINER, ENV_REFINER_REVISION = 'MODELSCOPE_SDXL_REFINER', 'MODELSCOPE_SDXL_REFINER_REVISION'
ENV_MAX_IMAGES = 'MODELSCOPE_SDXL_MAX_IMAGES'


def add_webui_parser(subparsers: Any) -> argparse.ArgumentParser:
    """``webui``: the model flags of ``generate``, plus where to serve."""
    parser = subparsers.add_parser(
        'webui', help='serve a web page (Gradio) that makes images; needs the [webui] extra',
        description='Serve a web page that makes images with the model, one run at a time: the prompt, the '
        'common parameters and the rest under "Advanced", a gallery, each PNG with its parameters, progress '
        'per stage and a Stop button. The Gradio API endpoint /generate takes the same parameters.')
    parser.add_argument('--host', default=DEFAULT_HOST,
                        help=f'address to listen on (default: {DEFAULT_HOST}; 0.0.0.0 serves other machines)')
    parser.add_argument('--port', type=int, default=DEFAULT_PORT, help=f'port (default: {DEFAULT_PORT})')
    parser.add_argument('--max-images-per-call', type=int, default=DEFAULT_MAX_IMAGES,
                        help=f'most images one run may make (default: {DEFAULT_MAX_IMAGES})')
    parser.add_argument('--verbose', dest='sdxl_verbose', action='store_true',
                        help="keep the libraries' log lines and print a traceback on errors")
    add_model_arguments(parser)
    return parser


def load_app(source: Optional[ModelSource] = None, max_images_per_call: int = DEFAULT_MAX_IMAGES) -> Any:
    """Load the pipeline as ``generate`` does (the mini model by default) and build the app."""
    from .webui_app import build_app

    _check_gradio()
    source = (source or ModelSource()).check()
    pipe = source.build_pipeline(max_images_per_call=max_images_per_call)
    model = source.model
    title = f'SDXL base + refiner · {os.path.basename(model.rstrip("/")) if os.path.isabs(model) else model}'
    return build_app(pipe, source.record(), title=title)


def _check_gradio() -> None:
    try:
        import gradio  # noqa: F401
    except ImportError as exc:
        raise CommandError("the web page needs Gradio: pip install 'modelscope-sdxl[webui]'") from exc


def webui_command(args: argparse.Namespace) -> int:
    if not 0 < args.port < 65536:
        raise CommandError(f'--port must be between 1 and 65535, got {args.port}')
    if args.max_images_per_call < 1:
        raise CommandError(f'--max-images-per-call must be >= 1, got {args.max_images_per_call}')
    source = ModelSource.from_args(args)
    with quiet_libraries(enabled=not verbose(args)):
        demo = load_app(source, args.max_images_per_call)
    serve(demo, args.host, args.port)
    return 0


def serve(demo: Any, host: Optional[str] = None, port: Optional[int] = None, block: bool = True) -> None:
    """Launch the app (no share link, no telemetry); with `block`, until Ctrl-C, then close it."""
    os.environ.setdefault('GRADIO_ANALYTICS_ENABLED', 'False')
    demo.launch(server_name=host, server_port=port, prevent_thread_lock=True, show_error=False,
                footer_links=['api'], quiet=True, theme=theme())
    print(f'modelscope-sdxl webui: serving on {demo.local_url}', flush=True)
    if not block:
        return
    import signal

    # SIGTERM (a service manager, a Studio, a test) ends the server as Ctrl-C does: closed, files removed.
    previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        demo.close()
        demo.webui.outputs.remove()


def theme() -> Any:
    """Gradio's default look with the system's fonts: the page fetches nothing from other hosts for them."""
    import gradio as gr

    return gr.themes.Default(font=['ui-sans-serif', 'system-ui', 'sans-serif'],
                             font_mono=['ui-monospace', 'Consolas', 'monospace'])


def studio_app() -> Any:
    """The app a ModelScope Studio's app.py builds: the model named by $MODELSCOPE_SDXL_MODEL (default:
    the mini model), with $MODELSCOPE_SDXL_REVISION, $MODELSCOPE_SDXL_REFINER,
    $MODELSCOPE_SDXL_REFINER_REVISION and $MODELSCOPE_SDXL_MAX_IMAGES where set."""
    env = os.environ
    max_images = env.get(ENV_MAX_IMAGES) or str(DEFAULT_MAX_IMAGES)
    if not max_images.isdigit() or int(max_images) < 1:
        raise ValueError(f'{ENV_MAX_IMAGES} must be an integer >= 1, got {max_images!r}')
    source = ModelSource(env.get(ENV_MODEL) or DEFAULT_MODEL, env.get(ENV_REVISION) or None,
                         env.get(ENV_REFINER) or None, env.get(ENV_REFINER_REVISION) or None)
    return load_app(source, max_images_per_call=int(max_images))


def main() -> int:
    """``python -m modelscope_sdxl.cli.webui``: the Studio app, on $GRADIO_SERVER_NAME:$GRADIO_SERVER_PORT
    (Gradio's own variables; a Studio sets them, else 127.0.0.1:7860)."""
    serve(studio_app())
    return 0


if __name__ == '__main__':
    sys.exit(main())
