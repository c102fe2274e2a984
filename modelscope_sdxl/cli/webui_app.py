"""``modelscope-sdxl webui``: a web page (Gradio) for people, and the same app for a ModelScope Studio.

    modelscope-sdxl webui                       # the mini model on http://127.0.0.1:7860
    modelscope-sdxl webui --model OWNER/REPO --revision v1.0.0 --port 8080
    MODELSCOPE_SDXL_MODEL=OWNER/REPO python -m modelscope_sdxl.webui    # what a Studio's app.py runs

The controls are generated from the parameter table (:data:`modelscope_sdxl.parameters.PARAMS`), the
same table the JSON Schema, the command-line flags and the validation come from, so the page never
offers a parameter the pipeline does not take. The common ones come first; the rest sit under
"Advanced". Values go to the pipeline as they are and its validation checks them: a bad value comes
back as that message on the page (or as the error of an API call), naming the field.

Each image is offered as the PNG file ``modelscope-sdxl generate`` would write (:func:`png.png_bytes`:
prompt and every parameter in its text chunks). Progress is reported per stage through the pipeline's
``callback``, which also stops a run when its page's Stop button is pressed. One queue serves all pages,
one run at a time. The Gradio API endpoint ``/generate`` takes the prompt first and every parameter by
name, with defaults.

Nothing here imports gradio until the app is built: the parser of every command line imports this module.
"""
from __future__ import annotations

import argparse
import inspect
import os
import re
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from ..parameters import PARAMS, PARAMS_BY_NAME, REFINER_MODES, Param, _allowed

API_NAME = 'generate'

#: Parameters shown above "Advanced", in this order; every other parameter of the table goes below it.
COMMON = ('negative_prompt', 'num_inference_steps', 'guidance_scale', 'scheduler', 'aspect_ratio', 'height',
          'width', 'seed', 'num_images_per_prompt', 'refiner_mode', 'high_noise_frac', 'strength')
LABELS = {'text': 'Prompt', 'negative_prompt': 'Negative prompt', 'num_inference_steps': 'Steps',
          'guidance_scale': 'Guidance scale', 'scheduler': 'Sampler', 'aspect_ratio': 'Aspect ratio',
          'height': 'Height', 'width': 'Width', 'seed': 'Seed', 'num_images_per_prompt': 'Images per call',
          'refiner_mode': 'Refiner mode', 'high_noise_frac': 'Refiner switch (high_noise_frac)',
          'strength': 'Refiner strength', 'image': 'Picture', 'mask_image': 'Mask (white: repaint)',
          'denoising_strength': 'Denoising strength'}
#: The picture a run may start from, in its own section of the page.
PICTURE_INPUTS = ('image', 'mask_image', 'denoising_strength')
#: A dropdown's entry for "leave it to the model" (a parameter whose default is derived).
DEFAULT_CHOICE = 'default'
ASPECT_RATIOS = ('1:1', '4:3', '3:4', '3:2', '2:3', '16:9', '9:16', '21:9')
# Slider ranges for parameters the table bounds on one side only.
_SLIDER_MAX = {'guidance_scale': 20.0}
# Least time between two progress reports of a run, in seconds.
_PROGRESS_EVERY_S = 0.1
# How long finished runs' PNG files stay on disk for the page to fetch.
_KEEP_OUTPUT_S = 3600


def input_names() -> List[str]:
    """The app's inputs in order, which is also the order of the ``/generate`` API's parameters:
    the prompt, the common parameters, then the rest of the table."""
    rest = [p.name for p in PARAMS if p.name != 'text' and p.name not in COMMON]
    return ['text', *COMMON, *rest]


# ------------------------------------------------------------------------------------------------
# From the page's values to the pipeline's input


def _size_value(p: Param, value: Any) -> Any:
    """A 'size' field typed as 'A, B' (or 'A x B', or a JSON list) -> [A, B]; anything else is passed
    on unchanged, for the table's check to name the field."""
    if isinstance(value, str):
        parts = [s for s in re.split(r'[\s,x×\[\]()]+', value.strip()) if s]
        try:
            return [int(s) for s in parts]
        except ValueError:
            return value
    return value


def _number_value(text: str) -> Any:
    """A number typed in a text field; text that is not a number is passed on for the table's check
    to name the field."""
    for kind in (int, float):
        try:
            return kind(text.strip())
        except ValueError:
            pass
    return text


def page_values_to_input(values: Dict[str, Any], has_refiner: bool) -> Dict[str, Any]:
    """The pipeline input for the page's (or the API's) values: empty fields and 'default' choices are
    left out so the pipeline fills them in; parameters of another refiner mode than the chosen one are
    left out, as the page hides them."""
    given: Dict[str, Any] = {}
    for name, value in values.items():
        p = PARAMS_BY_NAME[name]
        if value is None or (isinstance(value, str) and value.strip() == '' and name != 'text'):
            continue
        if p.nullable and p.choices or name == 'aspect_ratio':
            if value == DEFAULT_CHOICE:
                continue
        if p.type == 'size':
            value = _size_value(p, value)
        elif p.type in ('integer', 'number') and isinstance(value, str):
            value = _number_value(value)
        given[name] = value
    mode = given.get('refiner_mode') or ('ensemble' if has_refiner else 'none')
    for name in list(given):
        p = PARAMS_BY_NAME[name]
        if mode in REFINER_MODES and mode not in p.refiner_modes and p.default is not None \
                and given[name] == p.default:
            del given[name]  # the page's untouched control of another mode
    return given


# ------------------------------------------------------------------------------------------------
# The app


@dataclass
class _Sessions:
    """One Stop flag per page (Gradio session), so Stop on one page never stops another page's run."""
    flags: Dict[str, threading.Event] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def flag(self, session: str) -> threading.Event:
        with self.lock:
            return self.flags.setdefault(session, threading.Event())

    def forget(self, session: str) -> None:
        with self.lock:
            self.flags.pop(session, None)


class OutputFolder:
    """Where the PNG files of finished runs wait for the page to fetch them; runs older than `keep_s`
    are removed. By default a folder in Gradio's own cache, which Gradio serves without copying."""

    def __init__(self, root: Optional[str] = None, keep_s: float = _KEEP_OUTPUT_S) -> None:
        if root is None:
            from gradio.utils import get_upload_folder

            os.makedirs(get_upload_folder(), exist_ok=True)
            root = tempfile.mkdtemp(prefix='modelscope-sdxl-', dir=get_upload_folder())
        self.root = root
        self.keep_s = keep_s

    def new_run(self) -> str:
        now = time.time()
        for name in os.listdir(self.root):
            path = os.path.join(self.root, name)
            try:
                if now - os.path.getmtime(path) > self.keep_s:
                    shutil.rmtree(path, ignore_errors=True)
            except OSError:
                pass
        return tempfile.mkdtemp(dir=self.root)

    def write(self, output: Dict[str, Any], source: Dict[str, Any]) -> List[str]:
        """The run's images as PNG files, byte for byte what ``modelscope-sdxl generate`` writes
        (:func:`png.png_bytes`, each image with its own parameters); not synced to disk, since they
        only wait to be fetched."""
        from .png import image_parameters, png_bytes

        folder = self.new_run()
        paths = []
        for i, (image, own) in enumerate(zip(output['output_imgs'],
                                             image_parameters(output['parameters'], output['seeds']))):
            paths.append(os.path.join(folder, f"sdxl-{i + 1}-{own['seed']}.png"))
            with open(paths[-1], 'wb') as f:
                f.write(png_bytes(image, own, source))
        return paths

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def _one_line(exc: BaseException) -> str:
    return ' '.join(str(exc).split()) or type(exc).__name__


class WebUI:
    """The generation behind the page and the ``/generate`` endpoint, on one loaded pipeline."""

    def __init__(self, pipe: Any, source: Dict[str, Any], outputs: Optional[OutputFolder] = None) -> None:
        self.pipe = pipe
        self.source = source  # what each PNG records of its model (sources.ModelSource.record)
        self.limits = pipe.limits
        self.outputs = outputs or OutputFolder()
        self.sessions = _Sessions()

    def generate(self, values: Dict[str, Any], session: str, progress: Callable[..., Any]
                 ) -> Tuple[List[Tuple[str, str]], str, Dict[str, Any], List[str], str]:
        """One run: (gallery items, AUTOMATIC1111 text, parameters, PNG paths, status line).

        Raises ``gr.Error`` with the validation message for a bad value; a stopped run returns no image.
        """
        import gradio as gr

        from ..generation import GenerationCancelled
        from .png import a1111_text

        stop = self.sessions.flag(session)
        inputs = page_values_to_input(values, self.limits.has_refiner)
        if stop.is_set():  # Stop pressed while this run waited in the queue
            stop.clear()
            return [], '', {}, [], 'Stopped before the run started.'

        last_report = {'stage': '', 'at': 0.0}

        def on_step(stage: str, step: int, total: int) -> bool:
            if stop.is_set():
                return False
            # Each report is a message to the page: a few a second are enough to follow, and cost the
            # run nothing measurable.
            now = time.perf_counter()
            if stage != last_report['stage'] or step == total or now - last_report['at'] >= _PROGRESS_EVERY_S:
                last_report.update(stage=stage, at=now)
                progress((step, total), desc=f'{stage} stage', unit='steps')
            return True

        started = time.perf_counter()
        try:
            output = self.pipe(dict(inputs), callback=on_step)
        except GenerationCancelled as exc:
            stop.clear()
            return [], '', {}, [], f'Stopped: {_one_line(exc)}.'
        except (ValueError, TypeError, LookupError) as exc:  # the validation's message, naming the field
            raise gr.Error(_one_line(exc), print_exception=False) from None
        except Exception as exc:  # noqa: BLE001 - a message on the page, never a traceback
            raise gr.Error(f'{type(exc).__name__}: {_one_line(exc)}', print_exception=False) from None
        elapsed = time.perf_counter() - started
        paths = self.outputs.write(output, self.source)
        record = {**output['parameters'], **self.source}
        count = len(paths)
        gallery = [(path, f"seed {seed}" + (f' · image {i + 1} of {count}' if count > 1 else ''))
                   for i, (path, seed) in enumerate(zip(paths, output['seeds']))]
        status = f"Seed {output['seed']} · {count} image{'s' if count > 1 else ''} in {elapsed:.2f} s"
        return gallery, a1111_text(record), record, paths, status

    def stop(self, session: str) -> None:
        self.sessions.flag(session).set()

    def arm(self, session: str) -> None:
        """A new click of Generate: forget an earlier Stop of this page."""
        self.sessions.flag(session).clear()


def _slider(**kwargs: Any) -> Any:
    """A Gradio slider whose own bounds check is skipped, so that the table's validation, which names
    the field, reports a value out of range (sent through the API; the page's slider keeps in range).
    The instance's preprocess is replaced rather than subclassing: Gradio writes a .pyi file beside the
    module of every component subclass."""
    import gradio as gr

    slider = gr.Slider(**kwargs)
    slider.preprocess = lambda payload: payload  # type: ignore[method-assign]
    return slider


def _components(names: Sequence[str], limits: Any) -> Dict[str, Any]:
    """One Gradio component per parameter of `names`, built from its row of the table, created in
    the current Blocks context in that order."""
    import gradio as gr

    slider = _slider
    built: Dict[str, Any] = {}
    for name in names:
        p = PARAMS_BY_NAME[name]
        label = LABELS.get(name, name)
        info = p.description
        if name == 'text':
            built[name] = gr.Textbox(label=label, lines=2, placeholder='a red circle on a blue background',
                                     elem_id='prompt')
            continue
        if p.type in ('image', 'mask'):
            # An upload, handed to the pipeline as a PIL image: the page never sends a path on the
            # server's disk, so no page or API call can make the server read its own files.
            built[name] = gr.Image(type='pil', label=label, sources=['upload', 'clipboard'], height=220,
                                   image_mode='L' if p.type == 'mask' else 'RGB', elem_id=name)
            continue
        if name == 'num_images_per_prompt':
            built[name] = slider(minimum=1, maximum=limits.max_images_per_call, step=1, value=p.default,
                                 label=label, info=f'{info} At most {limits.max_images_per_call} here.',
                                 elem_id=name)
        elif name == 'aspect_ratio':
            built[name] = gr.Dropdown([DEFAULT_CHOICE, *ASPECT_RATIOS], value=DEFAULT_CHOICE, label=label,
                                      info=info, allow_custom_value=True, elem_id=name)
        elif name == 'refiner_mode':
            modes = list(p.choices) if limits.has_refiner else ['none']
            built[name] = gr.Dropdown(modes, value='ensemble' if limits.has_refiner else 'none', label=label,
                                      info=info, elem_id=name)
        elif p.choices:
            built[name] = gr.Dropdown([DEFAULT_CHOICE, *p.choices] if p.nullable else list(p.choices),
                                      value=DEFAULT_CHOICE if p.default is None else p.default, label=label,
                                      info=info, elem_id=name)
        elif p.type == 'boolean':
            built[name] = gr.Checkbox(value=p.default, label=label, info=info, elem_id=name)
        elif p.type == 'string':
            built[name] = gr.Textbox(value=p.default, label=label, info=info, elem_id=name)
        elif p.type == 'size':
            value = '' if p.default is None else ', '.join(str(v) for v in p.default)
            pair = 'top, left' if 'crops' in name else 'height, width'
            built[name] = gr.Textbox(value=value, label=label, info=f'{info} As "{pair}"; empty: default.',
                                     placeholder=pair, elem_id=name)
        elif _bounded(p) and p.default is not None:
            low = p.minimum if p.minimum is not None else p.exclusive_minimum
            high = _SLIDER_MAX.get(name, p.maximum if p.maximum is not None else p.exclusive_maximum)
            built[name] = slider(minimum=low, maximum=high, step=1 if p.type == 'integer' else 0.01,
                                 value=p.default, label=label, info=f'{info} ({_allowed(p)})', elem_id=name)
        else:
            # A number the model derives when it is left out (height, width, seed, clip_skip): a text
            # field, since Gradio's number field cannot be left empty. The value is read in
            # page_values_to_input and checked by the table.
            placeholder = {'seed': 'random', 'height': str(limits.default_size),
                           'width': str(limits.default_size)}.get(name, 'default')
            built[name] = gr.Textbox(value='' if p.default is None else str(p.default), label=label,
                                     info=f'{info} ({_allowed(p)}; empty: {placeholder})', placeholder=placeholder,
                                     elem_id=name, max_lines=1)
    return built


def _bounded(p: Param) -> bool:
    return ((p.minimum is not None or p.exclusive_minimum is not None)
            and (p.maximum is not None or p.exclusive_maximum is not None))


def _api_function(ui: WebUI) -> Callable[..., Any]:
    """The ``/generate`` handler, with one named parameter per input so Gradio's API (and gradio_client)
    shows the table's names: ``text`` first and required, every other one optional."""
    import gradio as gr

    names = input_names()
    params = [inspect.Parameter('text', inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=str)]
    params += [inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None) for n in names[1:]]
    params += [inspect.Parameter('request', inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None,
                                 annotation=gr.Request),
               inspect.Parameter('progress', inspect.Parameter.POSITIONAL_OR_KEYWORD, default=gr.Progress())]
    signature = inspect.Signature(params)

    def generate(*args: Any, **kwargs: Any) -> Any:
        bound = signature.bind(*args, **kwargs)
        values = {n: bound.arguments.get(n) for n in names}
        progress = bound.arguments.get('progress')  # a gr.Progress is falsy (it has a length)
        return ui.generate(values, _session(bound.arguments.get('request')),
                           (lambda *a, **k: None) if progress is None else progress)

    generate.__signature__ = signature  # type: ignore[attr-defined]
    generate.__annotations__ = {'text': str, 'request': gr.Request}
    return generate


def _session(request: Any) -> str:
    return getattr(request, 'session_hash', None) or 'no-session'


def build_app(pipe: Any, source: Dict[str, Any], title: str = 'SDXL base + refiner',
              outputs: Optional[OutputFolder] = None) -> Any:
    """The Gradio Blocks app on a loaded pipeline, its queue set to one run at a time.

    `source` is what each PNG records of the model (:func:`builtin_models.source_record`)."""
    import gradio as gr

    ui = WebUI(pipe, source, outputs)
    limits = ui.limits
    with gr.Blocks(title=title, analytics_enabled=False, delete_cache=(3600, _KEEP_OUTPUT_S)) as demo:
        gr.Markdown(f'## {title}\nThe base makes the image and the refiner finishes it. Every PNG carries its '
                    'prompt and parameters: `modelscope-sdxl generate --from-png FILE` makes it again.')
        with gr.Row():
            with gr.Column(scale=1):
                components = _components(['text', 'negative_prompt'], limits)
                with gr.Row():
                    generate_button = gr.Button('Generate', variant='primary', elem_id='generate', scale=2)
                    stop_button = gr.Button('Stop', variant='stop', elem_id='stop', scale=1)
                seed_at = COMMON.index('seed')
                components.update(_components([n for n in COMMON[:seed_at] if n not in components], limits))
                with gr.Row(equal_height=True):
                    components.update(_components(['seed'], limits))
                    with gr.Column(scale=0, min_width=120):
                        random_button = gr.Button('Random', size='sm', elem_id='random-seed')
                        reuse_button = gr.Button('Last seed', size='sm', elem_id='reuse-seed')
                components.update(_components(COMMON[seed_at + 1:], limits))
                with gr.Accordion('Start from your picture (img2img, inpainting, the refiner alone)', open=False,
                                  elem_id='picture'):
                    components.update(_components(PICTURE_INPUTS, limits))
                with gr.Accordion('Advanced', open=False, elem_id='advanced'):
                    components.update(_components([n for n in input_names() if n not in components], limits))
            with gr.Column(scale=1):
                status = gr.Markdown(label='status', elem_id='status')
                gallery = gr.Gallery(label='Images', columns=2, height='auto', object_fit='contain',
                                     elem_id='gallery', format='png')
                a1111 = gr.Textbox(label='Parameters (AUTOMATIC1111 text)', lines=3, interactive=False,
                                   elem_id='a1111')
                files = gr.File(label='PNG files with their parameters', file_count='multiple',
                                interactive=False, elem_id='files')
                with gr.Accordion('Parameters (JSON)', open=False):
                    record = gr.JSON(label='parameters', elem_id='parameters')
        inputs = [components[n] for n in input_names()]

        def arm(request: gr.Request) -> None:
            ui.arm(_session(request))

        def stop(request: gr.Request) -> None:
            # No output: the run's own answer ("Stopped: ...") may reach the page before this one would.
            ui.stop(_session(request))

        def forget(request: gr.Request) -> None:
            ui.sessions.forget(_session(request))

        for fn in (arm, stop, forget):  # Gradio finds the request by its annotation, which must resolve here
            fn.__annotations__['request'] = gr.Request

        handler = _api_function(ui)
        generate_button.click(arm, None, None, queue=False, api_visibility='private').then(
            handler, inputs, [gallery, a1111, record, files, status], api_name=API_NAME)
        stop_button.click(stop, None, None, queue=False, api_name='stop')
        # The seed's "random" choice empties the field; "Last seed" fills in the seed of the last images.
        random_button.click(lambda: '', None, components['seed'], queue=False, api_visibility='private')
        reuse_button.click(lambda r: '' if not r else str(r.get('seed', '')), record, components['seed'],
                           queue=False, api_visibility='private')
        demo.unload(forget)
        # Marks the page as ready once Gradio has set up every control (its load events run last):
        # typing into a field before that can be undone by that set-up.
        demo.load(None, None, None, js="() => { document.body.dataset.webuiReady = 'true'; }")
        _mode_visibility(components, limits)
    demo.queue(default_concurrency_limit=1)
    demo.webui = ui  # type: ignore[attr-defined]
    return demo


def _mode_visibility(components: Dict[str, Any], limits: Any) -> None:
    """Show only the controls that apply to the chosen refiner mode."""
    import gradio as gr

    mode_dependent = [n for n in input_names() if PARAMS_BY_NAME[n].refiner_modes != REFINER_MODES]

    def update(mode: str) -> List[Any]:
        return [gr.update(visible=mode in PARAMS_BY_NAME[n].refiner_modes) for n in mode_dependent]

    components['refiner_mode'].change(update, components['refiner_mode'], [components[n] for n in mode_dependent],
                                      queue=False, api_visibility='private')
    initial = 'ensemble' if limits.has_refiner else 'none'
    for n, visible in zip(mode_dependent, (initial in PARAMS_BY_NAME[n].refiner_modes for n in mode_dependent)):
        components[n].visible = visible
