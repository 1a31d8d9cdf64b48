"""Samplers against the analytic Gaussian case, schedules, and the v-objective identities.

For data x0 ~ N(μ, s²) (each dimension independent), the exact denoiser is
D(x, σ) = μ + s²/(s² + σ²)·(x − μ), and the probability-flow ODE keeps (x − μ)/√(s² + σ²)
constant, so its exact solution from σ_max to σ is known in closed form.
"""
import math

import pytest
import torch

from fastaudio.diffusion import sigmas as S
from fastaudio.diffusion.samplers import (SamplerError, make_plan, sample_dpmpp_2m,
                                          sample_dpmpp_2m_sde, sample_dpmpp_3m_sde, sample_euler)
from fastaudio.diffusion.schedule import (VDenoiser, scalings, sigma_to_t, t_to_alpha_sigma,
                                          t_to_sigma, v_diffusion_inputs)

MU, STD = 0.7, 0.4


def exact_denoiser(x, sigma):
    s2 = STD ** 2
    sig = sigma.reshape(-1, *([1] * (x.dim() - 1)))
    return MU + s2 / (s2 + sig ** 2) * (x - MU)


def exact_flow(x_start, sigma_start, sigma_end):
    return MU + (x_start - MU) * math.sqrt(STD ** 2 + sigma_end ** 2) / math.sqrt(STD ** 2 + sigma_start ** 2)


def _ode_error(sampler, steps):
    sig = S.log_linear(steps, 0.05, 20.0)[:-1]  # end at sigma_min: no final denoising step
    x0 = torch.randn(4, 3, 50, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 20.0
    x = sampler(exact_denoiser, x0.clone(), sig, disable=True)
    return (x - exact_flow(x0, sig[0], sig[-1])).abs().max().item()


def test_dpmpp_2m_converges_at_second_order():
    errors = [_ode_error(sample_dpmpp_2m, n) for n in (10, 20, 40, 80)]
    ratios = [a / b for a, b in zip(errors, errors[1:])]
    assert all(3.3 < r < 4.8 for r in ratios[1:]), (errors, ratios)
    assert errors[-1] < 1e-3


def test_euler_converges_at_first_order():
    errors = [_ode_error(sample_euler, n) for n in (20, 40, 80)]
    ratios = [a / b for a, b in zip(errors, errors[1:])]
    assert all(1.7 < r < 2.3 for r in ratios), (errors, ratios)


def test_final_step_returns_the_denoised_estimate():
    sig = S.log_linear(5, 0.03, 10.0)
    plan = make_plan("dpmpp-2m", sig)
    assert (plan[-1].a, plan[-1].b, plan[-1].c) == (0.0, 1.0, 0.0)
    seen = []
    x = torch.randn(2, 1, 8, dtype=torch.float64) * 10
    out = sample_dpmpp_2m(exact_denoiser, x, sig, callback=seen.append, disable=True)
    assert len(seen) == 5 and [s["i"] for s in seen] == list(range(5))
    torch.testing.assert_close(out, seen[-1]["denoised"])


@pytest.mark.parametrize("sampler", [sample_dpmpp_2m_sde, sample_dpmpp_3m_sde])
def test_sde_samplers_match_the_data_distribution(sampler):
    sig = S.log_linear(60, 0.01, 50.0)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 1, 40000, dtype=torch.float64, generator=g) * sig[0]
    out = sampler(exact_denoiser, x, sig, disable=True, generator=g)
    mean, std = out.mean().item(), out.std().item()
    # 40000 samples: the standard error of the mean is STD/200 = 0.002
    assert abs(mean - MU) < 0.01 and abs(std - STD) / STD < 0.02, (mean, std)


@pytest.mark.parametrize("sampler", [sample_dpmpp_2m_sde, sample_dpmpp_3m_sde])
def test_sde_samplers_are_reproducible_per_seed(sampler):
    sig = S.log_linear(10, 0.03, 20.0)
    x = torch.randn(2, 3, 16, dtype=torch.float64)
    run = lambda seed: sampler(exact_denoiser, x.clone(), sig, disable=True,
                               generator=torch.Generator().manual_seed(seed))
    torch.testing.assert_close(run(3), run(3), rtol=0, atol=0)
    assert (run(3) - run(4)).abs().max() > 1e-3


def test_eta_zero_sde_is_deterministic_and_matches_the_ode():
    sig = S.log_linear(40, 0.05, 20.0)[:-1]
    x0 = torch.randn(2, 2, 30, dtype=torch.float64) * 20
    for name in ("dpmpp-2m-sde", "dpmpp-3m-sde"):
        plan = make_plan(name, sig, eta=0.0)
        assert all(step.e == 0 for step in plan)
    x = sample_dpmpp_3m_sde(exact_denoiser, x0.clone(), sig, eta=0.0, disable=True)
    assert (x - exact_flow(x0, sig[0], sig[-1])).abs().max() < 1e-3


def test_sigma_schedules():
    s = S.polyexponential(5, 0.03, 500.0, 1.0)
    assert s[-1] == 0.0 and len(s) == 6
    assert math.isclose(s[0], 500.0) and math.isclose(s[-2], 0.03)
    logs = [math.log(v) for v in s[:-1]]
    assert all(math.isclose(logs[i] - logs[i + 1], logs[0] - logs[1]) for i in range(3))
    k = S.karras(10, 0.03, 80.0)
    assert math.isclose(k[0], 80.0) and math.isclose(k[-2], 0.03) and k[-1] == 0.0
    with pytest.raises(S.ScheduleError, match="positive integer"):
        S.polyexponential(0, 0.1, 1.0)
    with pytest.raises(S.ScheduleError, match="unknown sigma schedule"):
        S.get_sigmas("cosine?", 4, 0.1, 1.0)
    with pytest.raises(SamplerError, match="unknown sampler"):
        make_plan("dpmpp-9m", s)
    with pytest.raises(SamplerError, match="decreasing"):
        make_plan("euler", [1.0, 2.0, 0.0])


def test_v_objective_preconditioning_identities():
    t = torch.rand(64, dtype=torch.float64)
    sigma = t_to_sigma(t)
    torch.testing.assert_close(sigma_to_t(sigma), t)
    alpha, sig = t_to_alpha_sigma(t)
    c_skip, c_out, c_in = scalings(sigma)
    x0 = torch.randn(64, dtype=torch.float64)
    eps = torch.randn(64, dtype=torch.float64)
    x_t, v = v_diffusion_inputs(x0, t, eps)
    # the VE input scaled by c_in is the cosine-schedule x_t …
    torch.testing.assert_close(c_in * (x0 + sigma * eps), x_t)
    # … and a perfect v-prediction makes the VDenoiser return x0
    torch.testing.assert_close(c_skip * (x0 + sigma * eps) + c_out * v, x0)
    torch.testing.assert_close(alpha ** 2 + sig ** 2, torch.ones_like(t))
    perfect = VDenoiser(lambda x, tt: (alpha * eps - sig * x0))
    torch.testing.assert_close(perfect(x0 + sigma * eps, sigma), x0)


@pytest.mark.reference
@pytest.mark.parametrize("name", ["sample_euler", "sample_dpmpp_2m", "sample_dpmpp_2m_sde",
                                  "sample_dpmpp_3m_sde"])
def test_samplers_match_k_diffusion_step_for_step(name):
    """Same model, sigmas and (for the SDEs) the same noise: k-diffusion's own samplers."""
    import reference_impl as R
    from fastaudio.diffusion import samplers as ours
    K = R.kdiffusion()
    sig = torch.tensor(S.polyexponential(12, 0.03, 50.0), dtype=torch.float64)
    x = torch.randn(2, 3, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 50
    kw = {}
    if "sde" in name:
        noises = torch.randn(12, 2, 3, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
        it = iter(noises)
        kw = {"noise_sampler": lambda s, s_next: next(it)}
    want = getattr(K.sampling, name)(exact_denoiser, x.clone(), sig, disable=True, **kw)
    if "sde" in name:  # our update, fed the same noise sequence
        plan = make_plan(name.replace("sample_", "").replace("_", "-"), sig)
        noisy = iter(noises)
        got = x.clone()
        d1 = d2 = None
        s_in = got.new_ones(2)
        for step in plan:
            den = exact_denoiser(got, s_in * step.sigma)
            got = ours.apply_step(step, got, den, d1, d2, next(noisy) if step.e else None)
            d1, d2 = den, d1
    else:
        got = getattr(ours, name)(exact_denoiser, x.clone(), sig, disable=True)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
