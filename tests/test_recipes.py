"""CONTRIBUTING.md's three recipes, each done once the way it is written: a solver (a function in the style of
core/solvers.py, its options, one METHODS entry), a scheduler (one SUPPORTED_SCHEDULERS row) and a model family
(an Adapter subclass listed in FAMILIES); the rest of nrinv must pick each up with nothing else touched."""
from dataclasses import dataclass

import diffusers
import pytest

import nrinv
from nrinv.core import adapters, methods
from nrinv.core.method_options import SolverOptions
from nrinv.core.methods import SOLVER, Method
from nrinv.core.schedulers import SUPPORTED_SCHEDULERS
from nrinv.core.solvers import SOLVERS, Status, _solver

PROMPT = "a photo of a cat"


# -- a solver --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RelaxedOptions(SolverOptions):
    """Under-relaxed fixed point: ``z <- z + relaxation (f(z) - z)``."""

    relaxation: float = 0.7


@_solver
def relaxed(problem, options, t):
    z = problem.z0
    for k in range(options.max_iterations):
        fz, r, rms = t.evaluate(z)
        t.offer(fz, rms)
        if t.due(k) and (status := t.check(rms, z)) is not None:
            return t.result(status)
        z = z - options.relaxation * r
    return t.result(Status.MAX_ITERATIONS)


@pytest.fixture
def relaxed_solver(monkeypatch):
    entry = Method("relaxed", SOLVER, "under-relaxed fixed point (a recipe's example)", f"{__name__}:relaxed",
                   f"{__name__}:RelaxedOptions")
    monkeypatch.setitem(methods.METHODS, "relaxed", entry)
    return entry


def test_a_solver_added_by_the_recipe_runs_everywhere(relaxed_solver, tiny, astronaut32, capsys):
    from nrinv.app import _method_facts, _methods
    from nrinv.bench.harness import parse_method
    from nrinv.cli import main
    from nrinv.core.planning import planned_calls

    pipe = tiny("sd")
    res = nrinv.invert(pipe, astronaut32, PROMPT, method="relaxed", num_inference_steps=4, max_iterations=30,
                       options={"relaxation": 0.8})
    assert res.settings["method"] == "relaxed" and res.status is Status.CONVERGED
    regenerated = pipe(PROMPT, num_inference_steps=4, guidance_scale=1.0, latents=res.latents, height=32, width=32,
                       output_type="latent").images
    assert float((regenerated - res.encoded).norm() / res.encoded.norm()) < 1e-3
    assert "relaxed" in SOLVERS and "relaxed" in _methods() and _method_facts("relaxed") == (True, 1, False)
    assert planned_calls(pipe, "relaxed", 4, 3, size=(32, 32)) == 12
    assert parse_method("relaxed[relaxation=0.5]") == ("relaxed", {"relaxation": 0.5})
    with pytest.raises(nrinv.InputError, match="relaxation"):
        nrinv.invert(pipe, astronaut32, PROMPT, method="relaxed", options={"relaxation_typo": 1})
    assert main(["methods"]) == 0
    assert "relaxed" in capsys.readouterr().out


# -- a scheduler -----------------------------------------------------------------------------------------------
class RecipeDDIMScheduler(diffusers.DDIMScheduler):
    """A scheduler nrinv has never seen (its step is DDIM's, under another name)."""


def test_a_scheduler_added_by_one_registry_row_inverts_and_regenerates(monkeypatch, tiny, astronaut32):
    pipe = tiny("sd")
    original = pipe.scheduler
    pipe.scheduler = RecipeDDIMScheduler.from_config(original.config)
    try:
        with pytest.raises(nrinv.InputError, match="RecipeDDIMScheduler is not supported"):
            nrinv.invert(pipe, astronaut32, PROMPT, num_inference_steps=4)
        monkeypatch.setitem(SUPPORTED_SCHEDULERS, "RecipeDDIMScheduler", "vp")  # the recipe: one row
        res = nrinv.invert(pipe, astronaut32, PROMPT, num_inference_steps=4, max_iterations=20)
        assert res.status is Status.CONVERGED
        regenerated = pipe(PROMPT, num_inference_steps=4, guidance_scale=1.0, latents=res.latents, height=32,
                           width=32, output_type="latent").images
        assert float((regenerated - res.encoded).norm() / res.encoded.norm()) < 1e-3
    finally:
        pipe.scheduler = original


# -- a model family --------------------------------------------------------------------------------------------
class RecipePipeline(diffusers.StableDiffusionPipeline):
    """A pipeline class nrinv has never seen."""


class RecipeAdapter(adapters.StableDiffusionAdapter):
    pipelines = ("RecipePipeline",)


def test_a_model_family_listed_in_families_is_taken(monkeypatch, tiny, astronaut32):
    base = tiny("sd")
    pipe = RecipePipeline(**base.components)
    assert type(adapters.adapter_for(pipe)) is adapters.StableDiffusionAdapter  # its base class's family
    monkeypatch.setattr(adapters, "FAMILIES", (RecipeAdapter,) + adapters.FAMILIES)  # the recipe: listed
    assert type(adapters.adapter_for(pipe)) is RecipeAdapter
    assert adapters.adapter_class("RecipePipeline") is RecipeAdapter
    res = nrinv.invert(pipe, astronaut32, PROMPT, num_inference_steps=4, max_iterations=20)
    assert type(res.setup.adapter) is RecipeAdapter
    regenerated = pipe(PROMPT, **res.pipeline_kwargs(), output_type="latent").images
    assert float((regenerated - res.encoded).norm() / res.encoded.norm()) < 1e-3
