"""Benchmark: what the web page adds to a direct pipeline call, on the mini model.

    python benchmarks/webui.py                 # 15 interleaved rounds, one torch thread
    python benchmarks/webui.py --rounds 30 --browser

One process loads the mini model once and serves `modelscope-sdxl webui`'s app on 127.0.0.1. Each
round times, in a shuffled order and after a short pause, with the same prompt and seed:

- direct: ``pipe({'text': ..., 'seed': ...})``, the call the page makes;
- handler: the page's handler in-process (the pipeline call, the PNG file with its parameters, the
  gallery and parameter outputs), without HTTP;
- api: ``gradio_client``'s ``predict`` on ``/generate`` through the server's queue (HTTP, the queue's
  event stream, the output files), files not downloaded.

It prints the medians and the ratios to the direct call in wall time, in the process's CPU time (all
its threads: the server's event loop and, for "api", the client's too) and in the calling thread's CPU
time (direct and handler run in the calling thread). On a machine shared with other work the CPU times
say more: wall times then measure the neighbours as much as the code. With --browser it also loads the page in
headless chromium (``/usr/bin/chromium``) from a fresh browser context each time and reports the
median time until the Generate button can be clicked.
"""
from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from typing import Any, Dict, List

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
PROMPT = 'a red circle on a blue background'


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _page_load_seconds(url: str, times: int) -> List[float]:
    from playwright.sync_api import sync_playwright

    seconds = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path='/usr/bin/chromium', args=['--no-sandbox'])
        try:
            for _ in range(times):
                context = browser.new_context()
                page = context.new_page()
                started = time.perf_counter()
                page.goto(url)
                page.wait_for_function("() => document.body.dataset.webuiReady === 'true'")
                page.wait_for_function("() => { const b = document.querySelector('#generate');"
                                       " return b && !b.disabled; }")
                seconds.append(time.perf_counter() - started)
                context.close()
        finally:
            browser.close()
    return seconds


def main(argv: Any = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--rounds', type=int, default=15, help='timed rounds (default: 15)')
    parser.add_argument('--threads', type=int, default=1, help='torch threads (default: 1)')
    parser.add_argument('--browser', action='store_true', help='also time the page load in chromium')
    args = parser.parse_args(argv)

    os.environ.setdefault('GRADIO_ANALYTICS_ENABLED', 'False')
    import torch

    torch.set_num_threads(args.threads)
    from gradio_client import Client

    from modelscope_sdxl.cli.quiet import quiet_libraries
    from modelscope_sdxl.cli.sources import ModelSource
    from modelscope_sdxl.cli.webui import load_app, serve
    from modelscope_sdxl.cli.webui_app import input_names

    with quiet_libraries():
        demo = load_app(ModelSource(device='cpu'))
    serve(demo, '127.0.0.1', _free_port(), block=False)
    ui = demo.webui
    try:
        client = Client(demo.local_url, verbose=False, download_files=False)
        values: Dict[str, Any] = {name: None for name in input_names()}
        values.update(text=PROMPT, seed=1)

        def direct() -> None:
            ui.pipe({'text': PROMPT, 'seed': 1})

        def handler() -> None:
            ui.generate(dict(values), 'benchmark', lambda *a, **k: None)

        def api() -> None:
            client.predict(PROMPT, seed=1, api_name='/generate')

        runs = {'direct': direct, 'handler': handler, 'api': api}
        for run in runs.values():  # warm-up: first calls build caches on every path
            run()
        clocks = {'wall': time.perf_counter, 'process CPU': time.process_time, 'thread CPU': time.thread_time}
        times: Dict[str, Dict[str, List[float]]] = {clock: {name: [] for name in runs} for clock in clocks}
        order = random.Random(0)
        for _ in range(args.rounds):
            # A shuffled order, and a pause before each call, so that the end of one call (the server
            # answering, the client closing its stream) does not fall into the next one's time.
            for name in order.sample(list(runs), len(runs)):
                run = runs[name]
                time.sleep(0.3)
                started = {clock: read() for clock, read in clocks.items()}
                run()
                for clock, read in clocks.items():
                    times[clock][name].append(read() - started[clock])
        print(f'mini model, 64x64, 30 steps (ensemble), torch threads: {args.threads}, rounds: {args.rounds}, '
              f'load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs')
        for clock in clocks:
            median = {name: statistics.median(values) for name, values in times[clock].items()}
            for name in runs:
                if clock == 'thread CPU' and name == 'api':
                    continue  # the work is done by the server's threads
                ratio = median[name] / median['direct']
                print(f'{clock:11s} {name:8s} median {median[name] * 1000:7.1f} ms  ({ratio:.3f} x direct, '
                      f'{(ratio - 1) * 100:+.1f}%)  min {min(times[clock][name]) * 1000:.1f} ms')
        if args.browser:
            seconds = _page_load_seconds(demo.local_url, 5)
            print(f'page interactive (fresh browser context, chromium): median {statistics.median(seconds):.2f} s, '
                  f'max {max(seconds):.2f} s over {len(seconds)} loads')
    finally:
        demo.close()
        ui.outputs.remove()
    return 0


if __name__ == '__main__':
    sys.exit(main())
