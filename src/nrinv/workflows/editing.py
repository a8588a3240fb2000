"""Prompt editing from one inversion.

Editing at strength ``s`` re-runs the last ``round(s N)`` sampler steps from the inverted ``z_k``
(``k = N - round(s N)``) with the target prompt's conditioning.  The schedule, and so the recorded
ancestral/LCM noise, is shared with the inversion, so ``s -> 0`` gives back the encoded image and
target == source regenerates it to the inversion's accuracy.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import torch
from torch import Tensor

from .._version import __version__
from ..core.adapters import adapter_for
from ..core.inversion import (InversionOptions, InversionResult, Setup, StepCallback, check_guidance,
                              inversion_parameters, invert_tensor, sample, solver_options)
from ..core.trajectory import sample_trajectory
from ..errors import InputError
from ..io.clips import load_frames
from ..io.images import ImageLike, resolve_size
from ..io.outputs import check_output_type, format_images
from .common import (DEFAULT_ENCODE_ADJUST, Prompts, check_adjust, check_mask_threshold, check_prompt, check_steps,
                     check_strength, edit_defaults, encode_pixels, prompt_list)
from .encoding import adjust_encoding

__all__ = ["EditResult", "edit", "regenerate", "local_edit_mask", "changes_background", "object_pixels",
           "moved_mask", "off_object_alpha", "start_step", "mask_step", "unchanged_note", "UNCHANGED_CHANGE"]


def start_step(num_steps: int, strength: float) -> tuple[int, int]:
    """``(k, re-run steps)`` of an edit at ``strength``: ``k = N - round(strength N)``."""
    rerun = round(check_strength(strength) * num_steps)
    return num_steps - rerun, rerun


def mask_step(num_steps: int, start: int) -> int:
    """The step whose latent on the inverted trajectory the local edit's mask is read at: the first re-run
    step, but not before the middle of the schedule.

    DiffEdit reads its mask from the image noised to half strength; at a higher noise level the two
    predictions differ where the *model* would draw the object, not where the image has it (an image of
    another size or layout than the training images: a 96x64 drawing's star on the left, the 4-step
    model at strength 1, got a mask over the middle of the image and the edit missed the star).
    """
    return max(int(start), int(num_steps) // 2)


def _prediction(setup: Setup, step_index: int, z: Tensor, cond: Any, memo: Optional[dict]) -> Tensor:
    """The model's output at ``z`` on step ``step_index`` (``cond`` None: the source prompt's), kept in
    ``memo`` (keyed by step and conditioning) so that the masks of one edit share their network calls."""
    key = (step_index, "source" if cond is None else id(cond))  # the conditionings outlive their memo
    if memo is not None and key in memo:
        return memo[key]
    with torch.no_grad():
        out = setup.denoiser(setup.schedule.steps[step_index], cond)(z).float()
    if memo is not None:
        memo[key] = out
    return out


def _difference_floor(source: Tensor) -> Tensor:
    """(B, 1, 1, 1): 1e-4 of a prediction's own RMS size, below which two predictions differ only by float
    rounding (equal prompts)."""
    return 1e-4 * source.pow(2).mean(dim=(1, 2, 3), keepdim=True).sqrt()


def local_edit_mask(setup: Setup, z: Tensor, step_index: int, target_cond: Any, threshold: float,
                    memo: Optional[dict] = None) -> Tensor:
    """Where an edit may change the latent: the target and source predictions differ there.

    As in DiffEdit (Couairon et al. 2022, sec. 3.1), from ``|m(z, target) - m(z, source)|`` at step
    ``step_index`` (``mask_step``; ``z`` the trajectory's latent there), averaged over channels, smoothed
    (3x3), scaled to [0, 1] per image and thresholded; then dilated by one latent pixel.  Returns a
    (B, 1, h, w) 0/1 mask.  ``memo``: predictions already made at ``z`` for this target
    (``changes_background`` fills it).
    """
    if z.dim() != 4:
        raise InputError("local edits need image-shaped (B, C, H, W) latents; this pipeline's are not")
    source = _prediction(setup, step_index, z, None, memo)
    diff = _prediction(setup, step_index, z, target_cond, memo) - source
    d = torch.nn.functional.avg_pool2d(diff.abs().mean(1, keepdim=True), 3, 1, 1)
    # scale by the largest difference, but never below the floor: equal prompts (differences at float
    # rounding) give an empty mask, not amplified noise
    d = d / torch.maximum(d.amax(dim=(2, 3), keepdim=True), _difference_floor(source)).clamp_min(1e-12)
    return torch.nn.functional.max_pool2d((d > threshold).float(), 3, 1, 1)


def _otsu(values: Tensor) -> Tensor:
    """Per row of ``values`` (B, n), the threshold splitting it into two classes of largest
    between-class variance (Otsu 1979); a (B, 1) tensor."""
    v, _ = values.sort(dim=1)
    n = v.shape[1]
    k = torch.arange(1, n, device=v.device, dtype=v.dtype)          # size of the low class
    low = v.cumsum(1)[:, :-1]
    mean_low = low / k
    mean_high = (v.sum(1, keepdim=True) - low) / (n - k)
    between = k * (n - k) * (mean_low - mean_high) ** 2
    best = between.argmax(1, keepdim=True)
    return 0.5 * (v.gather(1, best) + v.gather(1, best + 1))


#: a background edit: more than this fraction of the image's border is where the prompts disagree
#: (measured on 72 edits per built-in model, benchmarks/own_images.py: colour and shape edits <= 0.06,
#: background edits >= 0.17 but one at 0.04)
BACKGROUND_BORDER = 0.1
#: a pixel belongs to the object when its colour is this far (RGB in [0, 1], Euclidean) from every
#: colour on the image's border, i.e. from the background's colours
OBJECT_COLOR_DISTANCE = 0.15


def _probe_steps(n: int, start: int, probes: int = 3) -> list[int]:
    """Up to ``probes`` re-run steps ``start .. n-1``, evenly spaced."""
    return sorted({start + round(i * (n - 1 - start) / max(probes - 1, 1)) for i in range(probes)})


def changes_background(setup: Setup, trajectory: Sequence[Tensor], start: int, target_cond: Any,
                       probes: int = 1, memo: Optional[dict] = None) -> bool:
    """Whether an edit toward ``target_cond`` changes the background: the target and source predictions
    differ along the image's border.

    ``|m(z_j, target) - m(z_j, source)|`` is measured on the inverted trajectory at up to ``probes``
    re-run steps (each normalised by its mean, then averaged), smoothed (3x3) and split in two classes by
    Otsu's threshold; an edit of the object changes an inner region, an edit of the background a region
    that reaches the border (``BACKGROUND_BORDER``).  One probe, at the first re-run step (whose predictions
    the local mask reads too), told all 66 edits of ``benchmarks/own_images.py`` (drawn at 64x64, 96x64 and
    256x256, and renders) apart on both built-in models, as three did, at two network calls instead of six.
    """
    if trajectory[start].dim() != 4:
        return False  # packed (Flux) latents: no image grid to read a border from
    picks = _probe_steps(len(setup.schedule), start, probes)
    total, differs = None, False
    for j in picks:
        z = trajectory[j].float()
        source = _prediction(setup, j, z, None, memo)
        d = (_prediction(setup, j, z, target_cond, memo) - source).abs().mean(1, True)
        differs = differs or bool((d.amax(dim=(2, 3), keepdim=True) > _difference_floor(source)).any())
        d = d / d.mean(dim=(2, 3), keepdim=True).clamp_min(1e-12)
        total = d if total is None else total + d
    if not differs:  # equal prompts: nothing changes, the background least of all (Otsu would split noise)
        return False
    d = torch.nn.functional.avg_pool2d(total / len(picks), 3, 1, 1, count_include_pad=False)
    high = (d > _otsu(d.flatten(1)).view(-1, 1, 1, 1)).float()[:, 0]
    border = torch.cat([high[:, 0], high[:, -1], high[:, :, 0], high[:, :, -1]], dim=1)
    return bool(border.mean() > BACKGROUND_BORDER)


def object_pixels(image: Tensor) -> Tensor:
    """(B, 1, H, W) 0/1: the pixels of ``image`` (B, 3, H, W) in [0, 1] whose colour is far from every
    colour on its border (the background touches the border, the object does not)."""
    b = image.shape[0]
    border = torch.cat([image[:, :, 0], image[:, :, -1], image[:, :, :, 0], image[:, :, :, -1]], dim=2)
    border = border[:, :, :: max(1, border.shape[2] // 512)].transpose(1, 2)        # (B, <=~512, 3)
    pixels = image.flatten(2).transpose(1, 2)                                       # (B, HW, 3)
    far = torch.cdist(pixels, border).amin(dim=2) > OBJECT_COLOR_DISTANCE
    mask = far.float().view(b, 1, *image.shape[-2:])
    # opening: drop isolated specks (noisy or striped backgrounds)
    return torch.nn.functional.max_pool2d(-torch.nn.functional.max_pool2d(-mask, 3, 1, 1), 3, 1, 1)


def _reconstruction(setup: Setup, trajectory: Sequence[Tensor], decoded: Optional[dict] = None) -> Tensor:
    """The inversion's reconstruction in pixels (its image latent ``trajectory[-1]`` decoded), decoded once
    per ``decoded`` (a dict shared by the targets of one edit)."""
    if decoded is not None and "reconstruction" in decoded:
        return decoded["reconstruction"]
    with torch.no_grad():
        recon = setup.adapter.decode(trajectory[-1].float(), setup.size).float()
    if decoded is not None:
        decoded["reconstruction"] = recon
    return recon


def _pixels_per_latent(recon: Tensor, latent: Tensor) -> Optional[tuple[int, int]]:
    """(fy, fx): image pixels per latent pixel down and across, None where the sizes are not whole multiples."""
    h, w = latent.shape[-2:]
    fy, fx = recon.shape[-2] // h, recon.shape[-1] // w
    if fy < 1 or fx < 1 or recon.shape[-2] != fy * h or recon.shape[-1] != fx * w:
        return None
    return fy, fx


def _keep_object(setup: Setup, trajectory: Sequence[Tensor],
                 decoded: Optional[dict] = None) -> Optional[tuple[Tensor, Tensor, Tensor]]:
    """For a background edit: (latent edit mask, pixel alpha of the object, the reconstruction), or None
    when no object stands out from the border's colours."""
    recon = _reconstruction(setup, trajectory, decoded)
    obj = object_pixels(recon)
    if not 0.002 < float(obj.mean()) < 0.5:
        return None
    h, w = trajectory[-1].shape[-2:]
    fy, fx = recon.shape[-2] // h, recon.shape[-1] // w
    inside = torch.nn.functional.avg_pool2d(obj, (fy, fx)) > 0.999                 # latent pixels all object
    alpha = torch.nn.functional.avg_pool2d(obj, 3, 1, 1, count_include_pad=False) * obj  # soft inner edge
    return 1.0 - inside.float(), alpha, recon


#: an edit "changes almost nothing" when its latent moved less than this fraction (RMS) of the source
#: latent's own size inside its mask (or the whole image without one).  Measured on builtin:shapes-lcm's
#: default edit of 6 drawings (3 scenes at 64x64 and 96x64): 18 colour, shape and background edits moved
#: it 0.26-1.12, the identity edit (target = source) 0.000
UNCHANGED_CHANGE = 0.08


def latent_change(edited: Tensor, source: Tensor, mask: Optional[Tensor] = None) -> float:
    """RMS of ``edited - source`` over RMS of ``source``, inside ``mask`` (0/1, broadcast) or everywhere;
    0 for an empty mask."""
    region = torch.ones_like(source[:, :1]) if mask is None else mask.to(source.dtype)
    weight = region.expand_as(source)
    if float(weight.sum()) == 0:
        return 0.0
    diff = ((edited.float() - source.float()) ** 2 * weight).sum()
    size = (source.float() ** 2 * weight).sum().clamp_min(1e-30)
    return float((diff / size).sqrt())


def unchanged_note(target: str, change: float, masked: bool) -> Optional[str]:
    """One line when an edit toward ``target`` changed (almost) nothing (``latent_change`` below
    ``UNCHANGED_CHANGE``), else None."""
    if change >= UNCHANGED_CHANGE:
        return None
    where = "inside its mask" if masked else "in the image"
    return (f"the edit toward {target!r} changed almost nothing {where} (latent change {change:.1%}); "
            "try a higher strength or edit guidance, or another method (e.g. method='anderson')")


def _outside_mask(setup: Setup, trajectory: Sequence[Tensor], mask: Tensor,
                  decoded: Optional[dict] = None) -> Optional[tuple[Tensor, Tensor, str]]:
    """For a local edit: (pixel alpha of what stays, the reconstruction, "mask"): outside the latent ``mask``,
    widened by one latent pixel and feathered over it, the pixels are the reconstruction's (the VAE's
    decoder mixes neighbouring latents, so kept latents alone come out tinted by the edit beside them)."""
    if trajectory[-1].dim() != 4:
        return None
    recon = _reconstruction(setup, trajectory, decoded)
    factor = _pixels_per_latent(recon, mask)
    if factor is None:
        return None
    fy, fx = factor
    wide = torch.nn.functional.max_pool2d(mask.float(), 3, 1, 1)
    edit = torch.nn.functional.interpolate(wide, scale_factor=(fy, fx), mode="nearest")
    edit = torch.nn.functional.avg_pool2d(edit, (2 * fy + 1, 2 * fx + 1), 1, (fy, fx), count_include_pad=False)
    edit = torch.maximum(edit, torch.nn.functional.interpolate(mask.float(), scale_factor=(fy, fx), mode="nearest"))
    return 1.0 - edit, recon, "mask"


def _at_model_defaults(adapter: Any, strength: float, guidance: float) -> bool:
    """Whether an edit runs at the model's default strength and edit guidance (what ``nrinv.edit`` and the
    app's sliders start at): the per-kind settings of the model's row apply only then."""
    d = adapter.defaults
    return abs(float(strength) - d.edit_strength) <= 1e-9 and abs(float(guidance) - d.edit_guidance) <= 1e-9


def _move_knobs(adapter: Any, strength: float, guidance: float,
                guide_from_source: bool) -> Optional[tuple[float, float, bool]]:
    """``(share, guidance, from source)`` of a move (``moved_mask``) for an edit at the model's default strength
    and guidance where its row has a ``move_threshold`` (guidance and contrast: the row's
    ``move_edit_guidance`` / ``move_guide_from_source``, else the edit's own), else None."""
    d = adapter.defaults
    if d.move_threshold is None or not _at_model_defaults(adapter, strength, guidance):
        return None
    g = guidance if d.move_edit_guidance is None else d.move_edit_guidance
    contrast = guide_from_source if d.move_guide_from_source is None else d.move_guide_from_source
    return float(d.move_threshold), float(g), bool(contrast)


def _background_knobs(adapter: Any, num_steps: int, strength: float, guidance: float,
                      keep_object: bool, guide_from_source: bool) -> Optional[tuple[int, float, bool]]:
    """``(start, guidance, from source)`` of an edit that changes the background, where the model's row gives
    its own (``background_edit_strength`` / ``background_edit_guidance`` / ``background_guide_from_source``)
    and the edit runs at the model's default strength and guidance (what ``nrinv.edit`` and the app's
    sliders start at); else None (every edit at ``strength`` / ``guidance`` / ``guide_from_source``)."""
    d = adapter.defaults
    if not keep_object or (d.background_edit_strength is None and d.background_edit_guidance is None
                           and d.background_guide_from_source is None):
        return None
    if not _at_model_defaults(adapter, strength, guidance):
        return None
    s = d.edit_strength if d.background_edit_strength is None else d.background_edit_strength
    g = d.edit_guidance if d.background_edit_guidance is None else d.background_edit_guidance
    contrast = guide_from_source if d.background_guide_from_source is None else d.background_guide_from_source
    return start_step(num_steps, s)[0], float(g), bool(contrast)


def moved_mask(setup: Setup, trajectory: Sequence[Tensor], target_cond: Any, threshold: float, share: float,
               memo: Optional[dict] = None, decoded: Optional[dict] = None) -> Optional[Tensor]:
    """For an edit that moves the object: the local mask read at the first step (``local_edit_mask`` at
    step 0, where the target prediction may put the object elsewhere), else None.  It moves the object
    when more than ``share`` of that mask lies outside the object (the reconstruction's pixels far from
    the border's colours, ``object_pixels``) widened by two latent pixels."""
    if trajectory[0].dim() != 4:
        return None
    recon = _reconstruction(setup, trajectory, decoded)
    obj = object_pixels(recon)
    if not 0.002 < float(obj.mean()) < 0.5:
        return None
    factor = _pixels_per_latent(recon, trajectory[0])
    if factor is None:
        return None
    fy, fx = factor
    near = (torch.nn.functional.avg_pool2d(obj, (fy, fx)) > 0.25).float()
    for _ in range(2):
        near = torch.nn.functional.max_pool2d(near, 3, 1, 1)
    early = local_edit_mask(setup, trajectory[0].float(), 0, target_cond, threshold, memo=memo)
    outside = float((early * (1 - near)).sum() / early.sum().clamp_min(1))
    return early if outside > share else None


def _mask_paste(adapter: Any, value: Optional[bool]) -> bool:
    return bool(adapter.defaults.mask_paste if value is None else value)


def _regenerate(inversion: InversionResult, targets: Sequence[str], start: int, guidance: float,
                negative_prompt: Optional[str], progress: bool, mask_threshold: Optional[float] = None,
                guide_from_source: bool = False, callback: Optional[StepCallback] = None,
                nfe: int = 0, keep_object: bool = False, pastes: Optional[list] = None,
                notes: Optional[list] = None, paste_outside: bool = False,
                background: Optional[tuple[int, float, bool]] = None,
                move: Optional[tuple[float, float, bool]] = None, ran: Optional[list] = None) -> list[Tensor]:
    """The final latent per target prompt, re-running steps ``start ..`` of the inversion's schedule;
    ``callback`` after each step (``StepCallback``, with ``"target"``: the target's index), counting
    network calls from ``nfe``.

    ``keep_object``: an edit that changes the background (``changes_background``) keeps the object:
    the latent pixels inside it stay on the inverted trajectory, and after decoding its pixels are
    taken from the reconstruction (the VAE's decoder mixes neighbouring latents, so a kept latent
    alone comes out tinted by the new background).  ``pastes`` (a list) receives, per target,
    ``(alpha, reconstruction, "object")``, or with ``paste_outside`` and a local mask ``(..., "mask")``
    (``_outside_mask``; for an edit of the object where the model's row has ``paste_objects``,
    ``(..., "mask", margin)``: ``off_object_alpha``), or None.  ``notes`` (a list) receives one line per
    target that changed (almost) nothing inside its mask (``unchanged_note``).  ``background``:
    ``(start, guidance, from source)`` of an edit that changes the background (``_background_knobs``), None:
    as every other edit.  ``move``: ``(share, guidance, from source)``: the share of a local edit's first-step
    mask outside the object above which the edit moves it (``moved_mask``), and the move's settings
    (``_move_knobs``); None: no edit moves the object.  ``ran`` (a list) receives per target what ran: its kind
    ("background", "move", "object"; "edit" without ``keep_object``), first re-run step, guidance, whether the
    guidance contrasted with the source prompt and whether a mask held the rest.
    """
    pastes = [] if pastes is None else pastes
    notes = [] if notes is None else notes
    ran = [] if ran is None else ran
    setup = inversion.setup
    traj = inversion.trajectory
    # a guidance "from the source" contrasts with the prompt the image was inverted with (an explicit
    # negative prompt takes precedence)
    source_negative = inversion.settings["prompt"] if negative_prompt is None else negative_prompt

    def conditioning(target: str, scale: float, from_source: bool) -> Any:
        return setup.adapter.conditioning(target, source_negative if from_source else negative_prompt, scale,
                                          setup.size)

    latents = []
    decoded: dict = {}  # the reconstruction in pixels, decoded once for every target's masks and pastes
    for index, target in enumerate(targets):
        cond = conditioning(target, guidance, guide_from_source)
        kind, scale, contrast = ("object" if keep_object else "edit"), guidance, guide_from_source
        # the background probe and the masks compare the target's prediction with the source's: made with a
        # background edit's own settings where the row has them (a mask is scale-free, ``local_edit_mask``)
        probe_cond = cond if background is None else conditioning(target, background[1], background[2])
        mask = paste = None
        memo: dict = {}  # the predictions the masks compare, one network call each
        begin = start
        object_edit = False  # known to leave the background (probed with keep_object)
        if keep_object:  # probed from the background edit's first step: its predictions serve the mask too
            probe = start if background is None else background[0]
            object_edit = not changes_background(setup, traj, probe, probe_cond, memo=memo)
            if not object_edit:  # the object stays as it is
                kept = _keep_object(setup, traj, decoded)
                if kept is not None:
                    mask, alpha, recon = kept
                    paste = (alpha, recon, "object")
                kind = "background"
                if background is not None:  # the model's own settings of a background edit
                    begin, cond, scale, contrast = background[0], probe_cond, background[1], background[2]
        if mask is None and mask_threshold is not None:
            at = mask_step(len(setup.schedule), begin)
            mask = local_edit_mask(setup, traj[at].float(), at, probe_cond, mask_threshold, memo=memo)
            if move is not None:  # at the model's defaults: an edit that moves the object re-runs
                moved = moved_mask(setup, traj, probe_cond, mask_threshold, move[0], memo=memo, decoded=decoded)
                if moved is not None:  # every step inside both masks, at the row's settings of a move
                    mask, begin = torch.maximum(mask, moved), 0
                    kind, scale, contrast = "move", move[1], move[2]
                    cond = conditioning(target, scale, contrast)
            if paste_outside:
                paste = _outside_mask(setup, traj, mask, decoded)
                margin = setup.adapter.defaults.paste_objects
                if paste is not None and object_edit and margin is not None:  # the background stays the
                    paste = paste + (int(margin),)  # reconstruction's away from both objects (``_images``)
        calls = len(memo)
        pastes.append(paste)
        ran.append({"kind": kind, "start_step": begin, "edit_guidance_scale": scale, "guide_from_source": contrast,
                    "masked": mask is not None})
        if inversion.corrections is not None:  # edit-friendly: the same solved noises, target prompt (reported
            from ..core.edit_friendly import edit_sample  # to the callback once, at the end)

            z = edit_sample(setup, traj, inversion.corrections, begin, cond,
                            float(inversion.settings.get("options", {}).get("pseudo_guidance", 1.0)), mask)
            latents.append(z)
            _note_unchanged(notes, target, z, traj[-1], mask)
            nfe += len(setup.schedule) - begin + calls
            if callback is not None:
                last = setup.schedule.steps[-1]
                callback({"phase": "sample", "i": len(setup.schedule) - 1, "t": last.t, "timestep": last.timestep,
                          "x": z, "residual": None, "nfe": nfe, "target": index})
            continue
        seen = [nfe + calls]

        def report(info: dict, index: int = index, seen: list = seen) -> None:
            seen[0] = info["nfe"]
            if callback is not None:
                callback(dict(info, target=index))

        if mask is None:
            z = sample(setup, traj[begin], start=begin, cond=cond, progress=progress,
                       corrections=inversion.corrections, callback=report, nfe=seen[0])
        else:  # outside the mask, every step lands back on the inverted trajectory
            z = _masked_sample(setup, traj, begin, cond, mask, inversion.corrections, report, seen)
        nfe = seen[0]
        latents.append(z)
        _note_unchanged(notes, target, z, traj[-1], mask)
    return latents


def _note_unchanged(notes: list, target: str, edited: Tensor, source: Tensor, mask: Optional[Tensor]) -> None:
    note = unchanged_note(target, latent_change(edited, source, mask), mask is not None)
    if note is not None and note not in notes:
        notes.append(note)


def _masked_sample(setup: Setup, traj: Sequence[Tensor], start: int, cond: Any, mask: Tensor,
                   corrections: Optional[Sequence[Optional[Tensor]]], report: StepCallback, seen: list) -> Tensor:
    """Steps ``start ..`` from ``traj[start]`` with ``cond``; after every step the latent outside ``mask``
    is put back on the inverted trajectory ``traj`` (``report`` after each step, counting from ``seen[0]``).

    A multistep / second-order sampler's step reads the latents and outputs of the steps before it.
    From ``start`` on those are this run's own (the blended latents and the outputs at them), so a
    mask of ones is exactly the unmasked edit; the inversion's history (``setup.history``) stands
    only for the steps before ``start``, as in ``sample``.  Outside the mask the step's result is
    replaced by the trajectory's, so the history needs no blending there.
    """
    schedule = setup.schedule
    z = traj[start].float()
    history = None
    if schedule.coupling is not None and (start == 0 or setup.history is not None):
        history = ([], []) if start == 0 else tuple(list(part[:start]) for part in setup.history)
    for j in range(start, len(schedule)):
        if schedule.coupling is None:
            z = sample(setup, z, start=j, stop=j + 1, cond=cond, corrections=corrections)
        else:
            outputs: list[Tensor] = []

            def model(k: int, x: Tensor, outputs: list = outputs) -> Tensor:
                outputs.append(setup.denoiser(schedule.steps[k], cond)(x))
                return outputs[-1]

            with torch.no_grad():  # raises, as ``sample`` does, where a run from the middle has no history
                out = sample_trajectory(schedule, z, model, start=j, stop=j + 1, history=history)
            history[0].append(z)
            history[1].append(outputs[0])
            z = out
        z = mask * z + (1 - mask) * traj[j + 1].float()
        step = schedule.steps[j]
        report({"phase": "sample", "i": j, "t": step.t, "timestep": step.timestep, "x": z, "residual": None,
                "nfe": seen[0] + 1})
    return z


def off_object_alpha(image: Tensor, recon: Tensor, margin: int) -> Optional[Tensor]:
    """(B, 1, H, W) in [0, 1]: 1 on the pixels more than ``margin`` pixels from the object of both ``image``
    and ``recon`` (``object_pixels``), 0 on them, feathered over the pixel ring around them; None where
    either has no object standing out from its border's colours.  An edit of the object leaves the
    background as the reconstruction has it: there, the edit's own pixels differ from it only by the
    re-run's error."""
    objects = []
    for picture in (image.float(), recon.float()):
        obj = object_pixels(picture)
        if not 0.002 < float(obj.mean()) < 0.5:
            return None
        objects.append(obj)
    near = torch.maximum(*objects)
    if margin > 0:
        near = torch.nn.functional.max_pool2d(near, 2 * int(margin) + 1, 1, int(margin))
    # feathered outward only: 1 on the objects, a ramp over the pixel ring around them
    near = torch.maximum(near, torch.nn.functional.avg_pool2d(near, 3, 1, 1, count_include_pad=False))
    return 1.0 - near.clamp(0, 1)


def _images(setup: Setup, latents: list[Tensor], output_type: str, pastes: Optional[list] = None) -> list[Any]:
    """Decoded latents; where ``pastes`` gives ``(alpha, reconstruction)``, the object's pixels are the
    reconstruction's (where a paste also gives a margin, an edit of the object's, also those away from the
    object in both the edit and the reconstruction: ``off_object_alpha``)."""
    pastes = list(pastes or [None] * len(latents))
    queue = iter(pastes)

    def decode(z: Tensor) -> Tensor:
        image = setup.adapter.decode(z, setup.size)
        paste = next(queue)
        if paste is None:
            return image
        alpha, recon = paste[:2]
        if len(paste) > 3:  # an edit of the object: away from both objects, the reconstruction's background
            off = off_object_alpha(image, recon, paste[3])
            if off is not None:
                alpha = torch.maximum(alpha, off)
        return alpha * recon + (1 - alpha) * image.float()

    with torch.no_grad():
        return format_images(latents, decode, output_type)


def regenerate(inversion: InversionResult, target_prompts: Prompts, *, strength: float, edit_guidance_scale: float,
               negative_prompt: Optional[str] = None, guide_from_source: bool = False,
               mask_threshold: Optional[float] = None, keep_object: bool = False, output_type: str = "pil",
               progress: bool = False, callback: Optional[StepCallback] = None,
               notes: Optional[list] = None, mask_paste: Optional[bool] = None) -> tuple[list[Tensor], list[Any]]:
    """The second half of ``edit``: re-run the last ``strength`` of ``inversion``'s schedule per target.

    Returns ``(latents, images)``, images as ``output_type`` asks.  Useful to sweep strength and
    guidance over one inversion.  ``guide_from_source``, ``mask_threshold`` and ``callback`` as in
    ``edit`` (the source prompt is the one ``inversion`` was made with).  ``notes`` (a list) receives a
    line per target that changed (almost) nothing inside its mask, as ``edit``'s ``settings["notes"]``.
    ``mask_paste`` as in ``edit`` (None: the model's).
    """
    if inversion.setup is None:
        raise InputError("this inversion result carries no setup; run nrinv.invert in this process")
    check_output_type(output_type)
    targets = prompt_list(target_prompts, "target prompt")
    start, _ = start_step(len(inversion.setup.schedule), strength)
    guidance = check_guidance(edit_guidance_scale, "edit_guidance_scale")
    pastes: list = []
    latents = _regenerate(inversion, targets, start, guidance,
                          negative_prompt, progress, check_mask_threshold(mask_threshold), guide_from_source, callback,
                          0, bool(keep_object), pastes, notes,
                          _mask_paste(inversion.setup.adapter, mask_paste),
                          _background_knobs(inversion.setup.adapter, len(inversion.setup.schedule), strength, guidance,
                                            bool(keep_object), bool(guide_from_source)),
                          _move_knobs(inversion.setup.adapter, strength, guidance, bool(guide_from_source)))
    return latents, _images(inversion.setup, latents, output_type, pastes)


@dataclass
class EditResult:
    """Edited images (one per target prompt) regenerated from one inversion."""

    images: list[Any]                   # one per target, as ``output_type`` asked (PIL by default)
    latents: list[Tensor]               # final latents z_N per target
    target_prompts: list[str]
    inversion: InversionResult
    settings: dict[str, Any]
    timings: dict[str, float]
    adjusted: Optional[Tensor] = field(default=None, repr=False)  # z_N after encode_adjust (None if off)

    def stats(self, index: Optional[int] = None) -> dict[str, Any]:
        """JSON-ready record: settings, timings, the inversion's per-step stats, the version."""
        out = {"version": __version__, "kind": "edit", "settings": dict(self.settings),
               "timings_s": {k: round(v, 4) for k, v in self.timings.items()},
               "inversion": self.inversion.stats()}
        if index is not None:
            out["target_prompt"] = self.target_prompts[index]
            out["target_index"] = index
        return out


@inversion_parameters
def edit(
    pipe: Any,
    image: ImageLike,
    source_prompt: str,
    target_prompts: Prompts,
    *,
    strength: Optional[float] = None,
    edit_guidance_scale: Optional[float] = None,
    guide_from_source: Optional[bool] = None,
    mask_threshold: Optional[float] = None,
    keep_object: Optional[bool] = None,
    mask_paste: Optional[bool] = None,
    encode_adjust: Optional[float] = DEFAULT_ENCODE_ADJUST,
    inversion: InversionOptions,
    height: Optional[int] = None,
    width: Optional[int] = None,
    max_pixels: Optional[int] = None,
    output_type: str = "pil",
    progress: bool = False,
    callback: Optional[StepCallback] = None,
) -> EditResult:
    """Edit ``image`` (described by ``source_prompt``) toward each of ``target_prompts``.

    Inverts once with the source prompt (the inversion's parameters, ``guidance_scale`` included:
    :class:`~nrinv.InversionOptions`), then for each target re-runs the last ``strength`` fraction of
    the schedule from the inverted trajectory with the target prompt at ``edit_guidance_scale``.
    ``None`` strength / edit guidance / ``guide_from_source`` / ``mask_threshold`` take
    ``edit_defaults(pipe)``.  ``encode_adjust`` (e.g. 0.05) first applies
    ``adjust_encoding``.  ``result.images`` holds one image per target, as ``output_type`` asks
    (``pil`` | ``np`` | ``pt`` | ``latent``).

    ``guide_from_source``: the regeneration's classifier-free guidance contrasts the target prompt
    with the source prompt instead of the empty one (``negative_prompt`` = source prompt, for the
    regeneration only): ``e = e(source) + w (e(target) - e(source))``.  Where the two prompts agree
    the update is the exact inversion's own, so unchanged content follows the reconstruction path.
    An explicit ``negative_prompt`` takes precedence.

    ``method``: the inversion (default: the model's ``edit_method``, else its inversion method);
    ``"edit_friendly"`` regenerates with the same solved noises (``nrinv.core.edit_friendly``).

    ``mask_threshold`` (e.g. 0.3): a local edit.  A mask of where the target and source predictions
    differ (``local_edit_mask``, as in DiffEdit) is taken at ``mask_step`` (the first re-run step, not
    before the middle of the schedule), and after every
    step the latent outside it is put back on the inverted trajectory, so unchanged content is the
    inversion's (exact with an exact inversion).

    ``mask_paste`` (default: the model's): with a mask, the pixels outside it (widened by one latent
    pixel, feathered) are the reconstruction's: the VAE's decoder mixes neighbouring latents, so the
    kept latents alone come out tinted by the edit beside them.  Where the model's row has
    ``paste_objects`` (both built-in models), an edit of the object also keeps the reconstruction's pixels
    inside the mask wherever neither the reconstruction nor the edit has the object (``off_object_alpha``).

    ``keep_object`` (default: the model's; on for the built-in models): when the edit changes the
    background (the target and source predictions differ along the image's border), the object is kept:
    its latent pixels stay on the inverted trajectory and its pixels (those whose colour is far from
    every border colour) are the reconstruction's; for such an edit this takes the place of
    ``mask_threshold``'s mask.  Object edits are unaffected.

    ``callback(info)``: after each step, of the inversion (``info["phase"] == "invert"``) and of each
    target's regeneration (``"sample"``, with ``info["target"]``); ``info["nfe"]`` counts the calls of
    both (:data:`nrinv.core.inversion.StepCallback`).

    At the model's default strength and edit guidance, an edit that changes the background runs at the
    model's ``background_edit_strength`` / ``background_edit_guidance`` / ``background_guide_from_source``
    where its row has them (``builtin:shapes``: object edits at 0.6 / 3 against the empty prompt, background
    edits at 0.5 / 2 against the source prompt; ``builtin:shapes-lcm``: 0.5 and 0.75 at guidance 8; measured per
    kind of edit); where the row has a ``move_threshold``, a local edit whose mask read at the first step lies
    outside the object (``moved_mask``: it moves the object) re-runs every step inside both masks, at the row's
    ``move_edit_guidance`` / ``move_guide_from_source`` (``builtin:shapes``: 1.5 against the source).
    """
    check_output_type(output_type)
    resized = resolve_size(height, width)
    check_prompt(source_prompt, "source prompt")
    targets = prompt_list(target_prompts, "target prompt")
    adapter = adapter_for(pipe)
    defaults = edit_defaults(adapter)
    strength = check_strength(defaults["strength"] if strength is None else strength)
    target_guidance = check_guidance(defaults["edit_guidance_scale"] if edit_guidance_scale is None
                                     else edit_guidance_scale, "edit_guidance_scale")
    guide_from_source = bool(defaults["guide_from_source"] if guide_from_source is None else guide_from_source)
    mask_threshold = check_mask_threshold(defaults["mask_threshold"] if mask_threshold is None else mask_threshold)
    keep_object = bool(defaults["keep_object"] if keep_object is None else keep_object)
    check_steps(inversion.num_inference_steps)
    encode_adjust = check_adjust(encode_adjust)
    from ..core.methods import SOLVER, get_method

    if inversion.method is None and adapter.defaults.edit_method is not None:  # the model's edit inversion
        inversion = inversion.replace(method=adapter.defaults.edit_method)
    if inversion.num_inference_steps is None and adapter.defaults.edit_steps is not None:  # the model's edit
        inversion = inversion.replace(num_inference_steps=adapter.defaults.edit_steps)  # inversion budget
    if inversion.max_iterations is None and inversion.method is None and adapter.defaults.edit_iterations is not None:
        inversion = inversion.replace(max_iterations=adapter.defaults.edit_iterations)
    mask_paste = _mask_paste(adapter, mask_paste)
    if get_method(inversion.method or adapter.defaults.method).kind == SOLVER:  # bad solver arguments fail
        solver_options(adapter, inversion)  # before any work (a trajectory method's options: by invert)
    negative_prompt = inversion.negative_prompt

    timings: dict[str, float] = {}
    t_total = time.perf_counter()
    notes: list[str] = []
    t0 = time.perf_counter()
    pixels = load_frames(image, video=bool(getattr(adapter, "video", False)), size=resized, max_pixels=max_pixels,
                         notes=notes)
    encoded, size = encode_pixels(adapter, pixels)
    timings["encode"] = time.perf_counter() - t0

    adjusted = None
    if encode_adjust is not None:
        t0 = time.perf_counter()
        adjusted = adjust_encoding(adapter, encoded, source_prompt, strength=encode_adjust, height=size[0],
                                   width=size[1], inversion=inversion, negative_prompt=negative_prompt)
        timings["encode_adjust"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    inverted = invert_tensor(adapter, None, source_prompt, image_latents=adjusted if adjusted is not None else encoded,
                      height=size[0], width=size[1], inversion=inversion, progress=progress, callback=callback,
                      notes=notes)
    timings["invert"] = time.perf_counter() - t0
    setup = inverted.setup
    start, rerun = start_step(len(setup.schedule), strength)
    t0 = time.perf_counter()
    pastes: list = []
    ran: list = []  # per target, the kind of edit and the settings it ran at
    background = _background_knobs(adapter, len(setup.schedule), strength, target_guidance, keep_object,
                                   guide_from_source)
    latents = _regenerate(inverted, targets, start, target_guidance, negative_prompt, progress, mask_threshold,
                          guide_from_source, callback, inverted.nfe, keep_object, pastes, notes, mask_paste, background,
                          _move_knobs(adapter, strength, target_guidance, guide_from_source), ran)
    timings["regenerate"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    images = _images(setup, latents, output_type, pastes)
    timings["decode"] = time.perf_counter() - t0
    timings["total"] = time.perf_counter() - t_total

    settings = {
        "method": inverted.settings["method"],
        "source_prompt": source_prompt,
        "target_prompts": targets,
        "negative_prompt": negative_prompt,
        "guide_from_source": guide_from_source,
        "mask_threshold": mask_threshold,
        "keep_object": keep_object,
        "mask_paste": mask_paste,
        "object_kept": [p is not None and p[2] == "object" for p in pastes],
        "strength": strength,
        # a background edit at the model's default strength and guidance runs at the model's own settings
        "background_edit": (None if background is None else
                            {"start_step": background[0], "edit_guidance_scale": background[1],
                             "guide_from_source": background[2]}),
        # per target: its kind ("object", "background", "move"; "edit" without keep_object), the first re-run
        # step, guidance and contrast it ran at, and whether a mask held the rest
        "edits": ran,
        "start_step": start,
        "rerun_steps": rerun,
        "edit_guidance_scale": target_guidance,
        "guidance_scale": setup.guidance_scale,
        "num_inference_steps": setup.num_inference_steps,
        "seed": inverted.settings["seed"],
        "encode_adjust": encode_adjust,
        "height": size[0],
        "width": size[1],
        "output_type": output_type,
        "notes": notes,
    }
    return EditResult(images, latents, targets, inverted, settings, timings, adjusted)
