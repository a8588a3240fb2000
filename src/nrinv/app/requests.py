"""The app's request checks: an upload fitted to the model, a request priced and checked against the limits
before it runs (refused in one line), run under its deadline (``_Requests``, a part of ``EditorApp``), and
messages without server paths."""
from __future__ import annotations

import logging
from typing import Any, Callable, Optional

from ..errors import InputError, one_line
from ..io.images import load_image
from .limits import CallCost, estimate_seconds
from .models import _method_facts, _scrub

__all__ = ["fit_to_model"]

logger = logging.getLogger("nrinv.app")


def _display(image, minimum: int = 384):
    """Small images shown enlarged with nearest-neighbour (crisp pixels, as pixel-art viewers do)."""
    from PIL import Image

    if image is None:
        return None
    factor = max(1, minimum // max(image.size))
    return image if factor == 1 else image.resize((image.width * factor, image.height * factor), Image.NEAREST)


def fit_to_model(img, multiple: int, native: tuple[int, int], max_area_ratio: float = 2.0):
    """An upload at a size the model takes, its aspect ratio kept, and notes saying what was done.

    The command line's policy: refused, in its words, an image with a side under the model's size
    multiple (1x1: it cannot hold one latent pixel; ``size_error``); taken with its note an extreme
    aspect ratio (a side 4x the other or more; ``size_notes``).  Kept as it is: a size that is a
    multiple and within ``max_area_ratio`` of the native pixel count.  Otherwise scaled, aspect kept, to
    about the native pixel count, then centre-cropped by under ``multiple`` pixels per side to a
    multiple.  (The app used to squash every upload of a built-in model to 64x64.)"""
    from PIL import Image

    from ..core.adapters import size_error, size_notes

    h, w = img.height, img.width
    if min(h, w) < multiple:
        raise InputError(size_error(h, w, multiple, native) or f"image size {h}x{w} (HxW) is too small")
    notes = [n for n in size_notes(h, w, native) if "aspect" in n]
    area, native_area = h * w, native[0] * native[1]
    if not (1 / max_area_ratio <= area / native_area <= max_area_ratio):
        scale = (native_area / area) ** 0.5
        sh, sw = max(multiple, round(h * scale)), max(multiple, round(w * scale))
        img = img.resize((sw, sh), Image.LANCZOS)
        notes.append(f"scaled {h}x{w} to {sh}x{sw} (HxW; about the model's native {native[0]}x{native[1]} "
                     "pixels, aspect kept)")
        h, w = sh, sw
    ch, cw = h - h % multiple, w - w % multiple
    if (ch, cw) != (h, w):
        top, left = (h - ch) // 2, (w - cw) // 2
        img = img.crop((left, top, left + cw, top + ch))
        notes.append(f"cropped {h}x{w} to {ch}x{cw} (HxW), a multiple of {multiple}")
    return img, notes


class _Requests:
    """``EditorApp``'s request checks (its state is set by ``EditorApp.__init__``)."""

    def _image(self, path: Optional[str], size: Optional[tuple[int, int]] = None):
        if not path:
            raise InputError("upload an image (or pick an example) first")
        notes: list[str] = []
        img = load_image(path, max_pixels=self.limits.max_pixels, notes=notes, size=size)
        return img, notes

    @staticmethod
    def _fit(pipe, img):
        """The upload at a size the model takes, its aspect kept (see :func:`fit_to_model`)."""
        return fit_to_model(img, pipe.size_multiple, pipe.default_size())

    def _check_request(self, pipe, method: str, steps: Any, iterations: Any, seed: Any, frames: int = 0,
                       inversions: int = 1, cost: Optional[CallCost] = None, pixels: Optional[int] = None,
                       size: Optional[tuple[int, int]] = None, capture: bool = False,
                       remeasure: Optional[Callable[[], CallCost]] = None) -> tuple[Optional[int], Optional[int], int]:
        """Steps, iterations and seed checked against the limits; the request's network calls (at most, as
        ``nrinv.invert`` spends them on this model's sampler at ``size``, HxW) and its estimated time
        (with ``cost``, at ``pixels``, plus a graph capture when ``capture``: a size not captured yet)
        bounded.  A price above the limit is measured again (``remeasure()``) before it refuses; a
        request no heavier than the model's default (``_light``) is never refused by its price: the
        deadline bounds it."""
        from ..core.inversion import planned_calls, sampler_calls

        lim = self.limits
        try:
            steps_i, its_i, seed_i = int(steps or 0), int(iterations or 0), int(seed or 0)
        except (TypeError, ValueError, OverflowError):
            raise InputError("steps, iterations and seed must be whole numbers") from None
        if not 0 <= steps_i <= lim.max_steps:
            raise InputError(f"steps must be between 1 and {lim.max_steps} (0: the model's default)")
        if not 0 <= its_i <= lim.max_iterations:
            raise InputError(f"iterations per step must be between 1 and {lim.max_iterations}")
        if not 0 <= seed_i < 2 ** 32:
            raise InputError("the seed must be a whole number between 0 and 4294967295")
        n_steps = steps_i or pipe.defaults.num_inference_steps
        iterates, _, needs_grad = _method_facts(method)
        its = (its_i or None) if iterates else None  # None: the model's (or its scheduler family's), as invert
        # a multistep sampler's inversion sweeps the whole trajectory, a second-order one calls twice a step
        solve_calls = inversions * planned_calls(pipe, method, n_steps, its, size=size, seed=seed_i)
        plain_calls = (inversions + frames) * sampler_calls(pipe, n_steps, size=size, seed=seed_i)  # reconstruction
        nfe = solve_calls + plain_calls
        if nfe > lim.max_nfe:
            raise InputError(f"that request needs about {nfe} network calls, more than the {lim.max_nfe} allowed "
                             "here; use fewer steps or iterations")
        if cost is not None:
            seconds = estimate_seconds(cost, needs_grad, solve_calls, plain_calls, pixels, capture)
            if seconds > lim.max_seconds and self._light(pipe, nfe, pixels, size, frames, inversions):
                logger.info("priced at %.0f s, accepted: no heavier than the model's default", seconds)
                seconds = 0.0
            if seconds > lim.max_seconds and remeasure is not None:
                cost = remeasure()
                seconds = estimate_seconds(cost, needs_grad, solve_calls, plain_calls, pixels, capture)
            if seconds > lim.max_seconds:
                # half precision is 4-10x slower than float32 on a CPU (and faster on a GPU)
                on_cpu = getattr(getattr(pipe, "device", None), "type", "") == "cpu"
                half = str(getattr(pipe, "dtype", "")) in ("torch.float16", "torch.bfloat16")
                faster = " or float32" if on_cpu and half else ""
                raise InputError(f"that request would take about {seconds:.0f} s here, more than the "
                                 f"{lim.max_seconds:g} s one request may take; use fewer steps or iterations"
                                 f"{', another method' if needs_grad else ''}{faster}")
        return steps_i or None, (its_i or None) if iterates else None, seed_i

    @staticmethod
    def _light(pipe, nfe: int, pixels: Optional[int], size: Optional[tuple[int, int]], frames: int,
               inversions: int) -> bool:
        """Whether a request is no heavier than the model's default one (its default method, steps and
        iterations: at most as many network calls) at no more than twice its native pixels (what an
        upload is fitted to)."""
        from ..core.inversion import planned_calls, sampler_calls

        if frames or inversions != 1:
            return False
        height, width = pipe.default_size()
        if pixels is not None and pixels > 2 * height * width:
            return False
        defaults = pipe.defaults
        method = defaults.edit_method or defaults.method
        default = planned_calls(pipe, method, None, None, size=size) + sampler_calls(pipe, None, size=size)
        return nfe <= default

    # -- handlers (each returns UI values; errors become one friendly line) -----------------------
    def _guarded(self, name: str, fn: Callable) -> Callable:
        import functools

        import gradio as gr

        @functools.wraps(fn)
        def handler(*args):
            try:
                return fn(*args)
            except gr.Error:
                raise
            except (InputError, ValueError) as exc:
                message = _scrub(one_line(exc) or "invalid input")
                logger.info("%s: refused: %s", name, message)
                raise gr.Error(message, print_exception=False) from None
            except Exception as exc:  # noqa: BLE001 - the server stays up; the user gets no internals
                first = str(exc).splitlines()[0] if str(exc) else ""
                logger.error("%s: failed: %s: %s", name, type(exc).__name__, _scrub(first))
                raise gr.Error("the server could not do that; the error was logged", print_exception=False) from None
        return handler
