"""The learned initial guess (core/inverter.py): training, saving beside the model, use by invert."""
import pytest
import torch

import nrinv
from nrinv.core.adapters import adapter_for
from nrinv.core.inverter import InitialGuessNet, load_inverter, network_fingerprint
from nrinv.core.inverter import train_initial_guess as train_inverter

PROMPT = "a photo of a cat"


def test_untrained_network_is_the_last_warm_start():
    net = InitialGuessNet(channels=4, width=16, prompt_dim=8)
    y, m_prev, m_prev2 = torch.randn(3, 2, 4, 8, 8).unbind(0)
    ones, zeros = torch.ones(2), torch.zeros(2)
    out = net(y, m_prev, ones, m_prev2, ones, 500 * ones, 250 * ones, 6 * ones, torch.randn(2, 8))
    assert torch.equal(out, m_prev)  # zero-initialised output layer: exactly the "last" warm start
    assert torch.equal(net(y, m_prev, zeros, m_prev2, zeros, ones, zeros, ones, torch.randn(2, 8)), torch.zeros_like(y))


def test_train_save_load_and_fingerprint(tiny, tmp_path):
    pipe = tiny("lcm")
    guess = train_inverter(pipe, tmp_path / "inv", prompts=[PROMPT, "a dog"], max_updates=2, batch_trajectories=2,
                           batch_size=4, width=16, log=None)
    assert guess.info["training"]["updates"] == 2 and guess.info["training"]["trajectories"] == 2
    assert (tmp_path / "inv" / "inverter.safetensors").is_file()
    # the weights take the user's umask like the config beside them (not safetensors' own 0600)
    mode = lambda name: (tmp_path / "inv" / name).stat().st_mode & 0o777  # noqa: E731
    assert mode("inverter.safetensors") == mode("inverter.json") and mode("inverter.safetensors") & 0o044
    loaded = load_inverter(pipe, tmp_path / "inv")
    assert loaded is not None and loaded.info["fingerprint"] == network_fingerprint(adapter_for(pipe))
    for a, b in zip(loaded.net.parameters(), guess.net.parameters()):
        assert torch.equal(a, b)
    # a pipeline with other weights does not use it
    other = tiny("lcm", smooth=0.3)
    other.unet.conv_in.weight.data.mul_(1.01)
    try:
        assert load_inverter(other, tmp_path / "inv") is None
        with pytest.raises(ValueError, match="another network"):
            load_inverter(other, tmp_path / "inv", strict=True)
    finally:
        other.unet.conv_in.weight.data.div_(1.01)
    assert load_inverter(pipe, tmp_path / "missing") is None


def test_learned_start_keeps_the_answer(tiny, astronaut32, tmp_path, monkeypatch):
    """The guess moves only the start: solved to convergence the inversion is the same root."""
    pipe = tiny("sdxl")
    guess = train_inverter(pipe, tmp_path / "inv", prompts=[PROMPT], max_updates=1, batch_trajectories=2,
                           batch_size=4, width=16, guidance=[0.0], log=None)
    import nrinv.core.inverter as inverter

    monkeypatch.setattr(inverter, "inverter_dir", lambda pipe: tmp_path / "inv")
    kw = dict(num_inference_steps=4, guidance_scale=0.0, seed=3, method="anderson", max_iterations=30)
    learned = nrinv.invert(pipe, astronaut32, PROMPT, warm_start="learned", **kw)
    assert learned.settings["warm_start"] == "learned" and guess.path is not None
    plain = nrinv.invert(pipe, astronaut32, PROMPT, warm_start=False, **kw)
    assert learned.ok and plain.ok
    assert float((learned.scheduler_latents - plain.scheduler_latents).norm() / plain.scheduler_latents.norm()) < 1e-3


def test_learned_without_an_inverter_falls_back_to_linear(tiny, astronaut32):
    pipe = tiny("sdxl")
    kw = dict(num_inference_steps=4, guidance_scale=0.0, max_iterations=2)
    res = nrinv.invert(pipe, astronaut32, PROMPT, warm_start="learned", **kw)
    assert res.settings["warm_start"] == "linear"
    assert any("no learned inverter" in n for n in res.settings["notes"])
    # what ran is the linear warm start: its answer, not the "last" one's (2 iterations per step: the start shows)
    linear = nrinv.invert(pipe, astronaut32, PROMPT, warm_start="linear", **kw)
    last = nrinv.invert(pipe, astronaut32, PROMPT, warm_start="last", **kw)
    assert torch.equal(res.scheduler_latents, linear.scheduler_latents)
    assert float((last.scheduler_latents - linear.scheduler_latents).norm() / linear.scheduler_latents.norm()) > 1e-3


def test_the_shipped_inverter_is_found_beside_the_builtin_model():
    pipe = nrinv.load_pipeline("builtin:shapes-lcm", device="cpu")
    guess = load_inverter(pipe, strict=True)
    assert guess.info["model_kind"] == "shapes-lcm" and guess.info["steps"] == [4]
    assert (guess.path / "inverter.safetensors").stat().st_size < 5e6  # the size limit
    from nrinv.bench.images import load_image_set

    img = load_image_set("shapes", size=(64, 64), n=1, seed=7000)[0]
    res = nrinv.invert(pipe, img.image, img.prompt, warm_start="learned", max_iterations=2)
    assert res.settings["warm_start"] == "learned" and res.nfe == 8 and res.finite


def test_training_back_propagates_without_the_cudnn_attention_kernel(tiny):
    """The pass differentiated through the network keeps to gnri_grad's attention kernels (cuDNN's backward
    ended in an illegal memory access on an H100)."""
    pipe = tiny("lcm")
    seen = []
    hook = pipe.unet.register_forward_pre_hook(
        lambda module, args: seen.append((torch.is_grad_enabled(), torch.backends.cuda.cudnn_sdp_enabled())))
    try:
        train_inverter(pipe, None, prompts=[PROMPT], max_updates=1, batch_trajectories=2, batch_size=2, width=16,
                       log=None)
    finally:
        hook.remove()
    backward = [cudnn for grad, cudnn in seen if grad]
    assert backward and not any(backward)
    assert torch.backends.cuda.cudnn_sdp_enabled()  # restored after


def test_training_keeps_its_data_on_the_pipelines_device(tiny, monkeypatch):
    """Nothing of the training is moved to the CPU (on a GPU it trained there, one transfer per update)."""
    pipe = tiny("lcm")
    import sys

    moved = []
    real = torch.Tensor.cpu

    def cpu(self, *args, **kwargs):  # the training's own transfers (not the pipeline's or the scheduler's)
        if sys._getframe(1).f_code.co_filename.endswith("inverter.py"):
            moved.append(tuple(self.shape))
        return real(self, *args, **kwargs)
    monkeypatch.setattr(torch.Tensor, "cpu", cpu)
    seen = []
    monkeypatch.setattr(InitialGuessNet, "__call__", lambda self, *a: seen.append(
        {next(self.parameters()).device} | {v.device for v in a}) or torch.nn.Module.__call__(self, *a))
    guess = train_inverter(pipe, None, prompts=[PROMPT], max_updates=2, batch_trajectories=2, batch_size=2, width=16,
                           log=None)
    assert not moved, moved
    device = adapter_for(pipe).device
    assert seen and all(devices == {device} for devices in seen)
    assert next(guess.net.parameters()).device == device


@pytest.mark.parametrize("kind, shape", [("flux", "packed tokens"), ("wan", "video")])
def test_training_refuses_packed_and_video_latents_in_one_line(tiny, kind, shape):
    from nrinv.errors import InputError

    with pytest.raises(InputError, match=r"image latents \(B, C, H, W\)") as caught:
        train_inverter(tiny(kind), None, prompts=[PROMPT], max_updates=1, batch_trajectories=1, batch_size=1,
                       width=16, log=None)
    assert shape in str(caught.value) and "\n" not in str(caught.value)


def test_train_inverter_command_shows_progress_with_the_loss(model_dir, tmp_path, capsys):
    from nrinv.cli import main

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a photo of a cat\na photo of a dog\n")
    assert main(["train-inverter", "--model", str(model_dir), "-o", str(tmp_path / "inv"), "--prompts", str(prompts),
                 "--time-budget-min", "0.0001", "--batch-size", "2", "--width", "16", "--steps", "2"]) == 0
    err = capsys.readouterr().err
    assert "training:" in err and "updates, loss " in err  # the bar, with the current loss
    assert (tmp_path / "inv" / "inverter.safetensors").is_file()


def test_trainings_guided_output_is_denoise_at_each_samples_own_timestep(tiny):
    """The training's back-propagated model output (per-sample timesteps, both guidance branches in one call)
    is the adapter's guided output at each sample's timestep, computed one sample at a time."""
    from nrinv.core.inverter import _denoise_at
    from nrinv.core.inversion import prepare

    adapter = adapter_for(tiny("sd"))
    setup = prepare(adapter, PROMPT, size=(32, 32), num_inference_steps=4, guidance_scale=7.5)
    cond = setup.cond
    assert cond.cfg
    z = torch.randn(3, *adapter.latent_shape(32, 32)[1:], generator=torch.Generator().manual_seed(0))
    timesteps = torch.tensor([901.0, 501.0, 101.0])
    together = _denoise_at(adapter, z, timesteps, cond)
    for i in range(3):
        alone = adapter.denoise(z[i:i + 1], timesteps[i:i + 1], cond)
        assert torch.allclose(together[i:i + 1], alone, atol=1e-4), i
    assert not torch.allclose(together[0], together[2], atol=1e-3)  # the timesteps matter
