"""The diffusion stage's conditioning path can be learned: a regression test for the wiring
between the text tower, the timing tables, the context mask and the U-Net's cross-attention.

Two prompts are paired with two different latent patterns (and two durations with two more). A
tiny model trained for a few hundred steps on exactly the stage's forward (DiffusionTrainModule:
frozen CLAP, trainable projection, timing tables and U-Net, 10 % null-context dropout) must
generate, from the same noise, each prompt's own pattern. If any link carried no information
(context dropped, mask all False, timing ids constant) the two samples would be equal."""
import pytest
import torch

from fastaudio import build_model
from fastaudio.diffusion.schedule import VDenoiser
from fastaudio.models.unet_guidance import GuidedUNet, UNetConditioning
from fastaudio.diffusion.samplers import make_plan, run_plan
from fastaudio.diffusion.sigmas import polyexponential
from fastaudio.train.stage_diffusion import DiffusionTrainModule
from fastaudio.train.trainer import StepContext

PROMPTS = ["a bright piano melody", "deep rolling thunder"]
TOTALS = [2, 9]


def _patterns(channels: int, length: int):
    g = torch.Generator().manual_seed(1)
    return torch.randn(4, channels, 1, generator=g).expand(4, channels, length).contiguous()


@pytest.mark.slow
def test_prompt_and_duration_steer_the_samples():
    torch.manual_seed(0)
    model = build_model("tiny", seed=0)
    cfg = model.config
    length = 32
    pats = _patterns(cfg.vae.latent_dim, length)  # pattern k = 2·prompt + duration
    module = DiffusionTrainModule(model, cfg_dropout=0.1)
    opt = torch.optim.Adam([p for p in module.parameters() if p.requires_grad], lr=2e-3)
    for step in range(300):
        which = torch.randint(0, 4, (8,))
        batch = {"latents": pats[which], "prompt": [PROMPTS[int(k) // 2] for k in which],
                 "seconds_start": [0] * 8, "seconds_total": [TOTALS[int(k) % 2] for k in which]}
        ctx = StepContext(step=step, epoch=0, seed=3, indices=list(range(8 * step, 8 * step + 8)),
                          cache={}, micro=0)
        loss, _ = module(batch, ctx)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    sigmas = torch.tensor(polyexponential(20, 0.3, 80.0, 1.0))
    noise = torch.randn(1, cfg.vae.latent_dim, length, generator=torch.Generator().manual_seed(7))
    samples = []
    with torch.no_grad():
        for k in range(4):
            context, mask = model.conditioner([PROMPTS[k // 2]], 0, TOTALS[k % 2])
            den = VDenoiser(GuidedUNet(model.unet, UNetConditioning(context, mask), cfg_scale=3.0))
            samples.append(run_plan(den, noise * sigmas[0], make_plan("dpmpp-2m", sigmas)))
    for k in range(4):  # each condition lands nearest its own pattern
        dist = [float((samples[k] - pats[j]).pow(2).mean()) for j in range(4)]
        assert min(range(4), key=dist.__getitem__) == k, f"condition {k}: distances {dist}"
