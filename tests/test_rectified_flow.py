"""Rectified-flow sampling against stable-audio-tools 0.0.19 and against the analytic Gaussian case.

For data x0 ~ N(μ, s²) (per channel) and x_t = (1 − t)·x0 + t·ε, write a = 1 − t and
V = a²s² + t² (the variance of x_t). Then

    E[x0 | x_t] = μ + a·s²/V · (x_t − a·μ),   E[ε | x_t] = t/V · (x_t − a·μ),
    Var(x0 | x_t) = s²·t²/V,

and the exact velocity is v = E[ε − x0 | x_t]. The flow ODE carries N(0, I) at t = 1 exactly to
the data, so Euler with enough steps must end at mean μ and variance s². Ping-pong needs a
denoiser that *samples* p(x0 | x_t) (what a distilled model imitates) to end at the data
distribution; with the posterior mean instead it ends at mean μ but with a smaller variance,
which the recursion in :func:`pingpong_moments` predicts exactly.
"""
import math
import random

import pytest
import torch

import reference_impl as R
from fastaudio.diffusion.cuda_graph import StepRunner
from fastaudio.diffusion.rectified_flow import (DEFAULT_RF_SAMPLER, RF_PLANS, RFDenoiser,
                                                make_rf_plan, plan_pingpong, plan_rf_euler,
                                                rf_start, rf_timesteps, sample_pingpong,
                                                sample_rf_euler)
from fastaudio.diffusion.samplers import SamplerError

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


@pytest.fixture(autouse=True)
def one_thread():
    """These are small elementwise loops: a second intra-op thread gains nothing, and on shared
    cores its barrier waits made the many-step tests ten times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def rel_err(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


def _col(t, x):
    return t.reshape(-1, *([1] * (x.dim() - 1))).to(x.dtype)


class LinearVelocity:
    """A fixed random velocity field that depends on x and t: v = (1 + t)·W·x + t²·b."""

    def __init__(self, channels, dtype=torch.float32):
        self.w = torch.randn(channels, channels, dtype=dtype) / math.sqrt(channels)
        self.b = torch.randn(1, channels, 1, dtype=dtype)
        self.calls = []

    def __call__(self, x, t, **kwargs):
        self.calls.append(t.clone())
        tt = _col(t, x)
        return (1 + tt) * torch.einsum("oc,bcl->bol", self.w, x) + tt * tt * self.b


class Gaussian:
    """Closed-form rectified-flow quantities for per-channel N(μ, s²) data."""

    def __init__(self, mu, s):
        self.mu = torch.as_tensor(mu, dtype=torch.float64).reshape(1, -1, 1)
        self.s = torch.as_tensor(s, dtype=torch.float64).reshape(1, -1, 1)

    def _coefficients(self, x, t):
        """(t, a, V, G) per item and channel, G = a·s²/V the posterior mean's gain."""
        t = _col(t, x)
        a = 1 - t
        var = a * a * self.s ** 2 + t * t
        return t, a, var, a * self.s ** 2 / var

    def posterior_mean(self, x, t):
        _, a, _, gain = self._coefficients(x, t)
        return gain * x + self.mu * (1 - gain * a)

    def velocity(self, x, t):
        """E[ε | x] − E[x0 | x], folded into one affine map k·x + m (it is evaluated many
        times on many samples)."""
        t, a, var, gain = self._coefficients(x, t)
        k = t / var - gain
        m = -(t / var) * a * self.mu - self.mu * (1 - gain * a)
        return k * x + m

    def posterior_sampler(self, generator):
        """A denoiser that draws x0 ~ p(x0 | x_t) (its own random stream)."""
        def denoise(x, t):
            t_, a, var, _ = self._coefficients(x, t)
            sd = (self.s ** 2 * t_ * t_ / var).sqrt()
            return self.posterior_mean(x, t) + sd * torch.randn(x.shape, generator=generator,
                                                                  dtype=x.dtype)
        return denoise


# -- the schedule --------------------------------------------------------------------------------

@pytest.mark.reference
@pytest.mark.parametrize("steps,sigma_max", [(8, 1.0), (1, 1.0), (37, 1.0), (8, 0.5), (13, 0.93),
                                             (5, 1.7)])
def test_timesteps_are_what_sample_rf_hands_its_samplers(steps, sigma_max, monkeypatch):
    sat = R.sat()
    seen = []

    def record(model, x, sigmas=None, **kwargs):
        seen.append((sigmas.clone(), kwargs.get("dist_shift")))
        return x

    monkeypatch.setattr(sat.sampling, "sample_discrete_euler", record)
    monkeypatch.setattr(sat.sampling, "sample_flow_pingpong", record)
    noise = torch.randn(1, 2, 5)
    shift = sat.sampling.DistributionShift()  # handed over by generate_diffusion_cond...
    for sampler in ("euler", "pingpong"):
        sat.sampling.sample_rf(lambda x, t: x, noise, init_data=noise, steps=steps,
                               sampler_type=sampler, sigma_max=sigma_max, device="cpu",
                               dist_shift=shift)
    ours = rf_timesteps(steps, sigma_max)
    for sigmas, dist_shift in seen:
        assert dist_shift is shift
        assert sigmas.dtype == ours.dtype and torch.equal(sigmas, ours), (sigmas, ours)
    assert ours[0] == min(sigma_max, 1.0) and ours[-1] == 0 and len(ours) == steps + 1


@pytest.mark.reference
def test_the_distribution_shift_never_reaches_the_euler_sampler():
    """...but with explicit sigmas the sampler ignores it: no latent-length dependence."""
    sat = R.sat()
    model = LinearVelocity(3)
    x = torch.randn(2, 3, random.choice([7, 300, 5000]))
    ts = rf_timesteps(10)
    plain = sat.sampling.sample_discrete_euler(model, x, sigmas=ts, disable_tqdm=True)
    shifted = sat.sampling.sample_discrete_euler(model, x, sigmas=ts, disable_tqdm=True,
                                                 dist_shift=sat.sampling.DistributionShift())
    assert torch.equal(plain, shifted)


def test_timestep_arguments_are_checked():
    assert torch.equal(rf_timesteps(4, 3.0), rf_timesteps(4, 1.0))  # capped at 1, as the reference
    for steps in (0, -3, 2.5, True):
        with pytest.raises(SamplerError, match="steps"):
            rf_timesteps(steps)
    for sigma_max in (0.0, -1.0, float("nan"), 0.05):
        with pytest.raises(SamplerError, match="sigma_max"):
            rf_timesteps(8, sigma_max)
    for ts in ([1.0], [1.0, 0.5, 0.5, 0.0], [0.2, 0.5, 0.0], [1.5, 0.0], [1.0, -0.1],
               [1.0, float("nan"), 0.0]):
        with pytest.raises(SamplerError):
            plan_pingpong(ts)
        with pytest.raises(SamplerError):
            plan_rf_euler(ts)
    with pytest.raises(SamplerError, match="'heun'"):
        make_rf_plan("heun", rf_timesteps(4))
    assert set(RF_PLANS) == {"euler", "pingpong"} and DEFAULT_RF_SAMPLER["rf_denoiser"] == "pingpong"


def test_plans_have_the_expected_coefficients():
    ts = rf_timesteps(random.randint(2, 20)).tolist()
    for i, step in enumerate(plan_pingpong(ts)):
        assert (step.sigma, step.a, step.b, step.e) == (ts[i], 0.0, 1 - ts[i + 1], ts[i + 1])
    last = plan_pingpong(ts)[-1]
    assert (last.a, last.b, last.e) == (0.0, 1.0, 0.0)  # the last step returns D, draws nothing
    for i, step in enumerate(plan_rf_euler(ts)):
        assert step.sigma == ts[i] and step.e == 0
        assert math.isclose(step.a + step.b, 1.0)
    assert (plan_rf_euler(ts)[-1].a, plan_rf_euler(ts)[-1].b) == (0.0, 1.0)


# -- against the reference -----------------------------------------------------------------------

@pytest.mark.reference
@pytest.mark.parametrize("steps,sigma_max", [(8, 1.0), (50, 1.0), (11, 0.6)])
def test_euler_matches_the_reference(steps, sigma_max):
    sat = R.sat()
    channels, length = random.choice([(3, 17), (64, 5), (1, 33)])
    model = LinearVelocity(channels)
    noise = torch.randn(2, channels, length)
    init = torch.randn(2, channels, length) if sigma_max < 1 else None
    want = sat.sampling.sample_rf(model, noise, init_data=init, steps=steps, sampler_type="euler",
                                  sigma_max=sigma_max, device="cpu", disable_tqdm=True)
    want_ts = torch.cat([t[:1] for t in model.calls])
    model.calls.clear()
    x = rf_start(noise, init, sigma_max)
    got = sample_rf_euler(RFDenoiser(model), x, rf_timesteps(steps, sigma_max), disable=True)
    assert torch.equal(torch.cat([t[:1] for t in model.calls]), want_ts)  # same t at each call
    assert rel_err(got, want) <= 1e-5


@pytest.mark.reference
@pytest.mark.parametrize("steps", [8, 3, 20])
def test_pingpong_matches_the_reference_on_the_same_noise(steps, monkeypatch):
    sat = R.sat()
    channels, length = random.choice([(3, 17), (64, 6), (2, 129)])
    model = LinearVelocity(channels)
    noise = torch.randn(random.randint(1, 3), channels, length)
    seed = random.randint(0, 2**31)
    ref_gen = torch.Generator().manual_seed(seed)
    # the reference draws with torch.randn_like; feed it the stream our sampler draws from
    monkeypatch.setattr(sat.sampling.torch, "randn_like",
                        lambda x: torch.randn(x.shape, generator=ref_gen, dtype=x.dtype))
    want = sat.sampling.sample_rf(model, noise, steps=steps, sampler_type="pingpong", device="cpu")
    monkeypatch.undo()
    got = sample_pingpong(RFDenoiser(model), noise.clone(), rf_timesteps(steps), disable=True,
                          generator=torch.Generator().manual_seed(seed))
    assert rel_err(got, want) <= 1e-5
    # the CUDA-graph runner replays the same plan (eagerly here) to the same result
    runner = StepRunner(RFDenoiser(model), noise)
    replayed = runner.run(noise, plan_pingpong(rf_timesteps(steps)),
                          generator=torch.Generator().manual_seed(seed))
    assert rel_err(replayed, want) <= 1e-5


def test_pingpong_is_reproducible_per_seed():
    model = RFDenoiser(LinearVelocity(4))
    x = torch.randn(2, 4, 16)
    ts = rf_timesteps(8)
    run = lambda seed: sample_pingpong(model, x.clone(), ts, disable=True,  # noqa: E731
                                       generator=torch.Generator().manual_seed(seed))
    seed = random.randint(0, 2**31)
    assert torch.equal(run(seed), run(seed))
    assert (run(seed) - run(seed + 1)).abs().max() > 1e-3


# -- the analytic Gaussian case ------------------------------------------------------------------

def _gaussian():
    channels = 3
    mu = [random.uniform(-2, 2) for _ in range(channels)]
    s = [random.uniform(0.2, 2.0) for _ in range(channels)]
    return Gaussian(mu, s), mu, s


def _moments(out):
    return out.mean(dim=(0, 2)), out.var(dim=(0, 2))


def pingpong_moments(g: Gaussian, ts):
    """Mean and variance per channel after ping-pong with the posterior-mean denoiser."""
    mu, s2 = g.mu.reshape(-1), g.s.reshape(-1) ** 2
    mean, var = torch.zeros_like(mu), torch.ones_like(mu)
    for t, t_next in zip(ts[:-1], ts[1:]):
        a = 1 - t
        gain = a * s2 / (a * a * s2 + t * t)
        mean, var = mu + gain * (mean - a * mu), gain * gain * var  # the moments of D
        mean, var = (1 - t_next) * mean, (1 - t_next) ** 2 * var + t_next ** 2
    return mean, var  # t_next = 0 at the end: the moments of the last D


def test_rf_denoiser_is_the_posterior_mean():
    g, _, _ = _gaussian()
    x = torch.randn(4, 3, 9, dtype=torch.float64) * 3
    t = torch.tensor([1.0, 0.7, 0.2, 0.01], dtype=torch.float64)
    torch.testing.assert_close(RFDenoiser(g.velocity)(x, t), g.posterior_mean(x, t))


def euler_moments(g: Gaussian, ts):
    """Mean and variance per channel after Euler steps x ← x + (t' − t)·(k·x + m) from N(0, 1):
    the velocity is affine in x, so the moments follow in closed form, discretisation error
    included."""
    mean = torch.zeros(g.mu.shape[1], dtype=torch.float64)
    var = torch.ones_like(mean)
    probe = torch.tensor([0.0, 1.0], dtype=torch.float64).expand(1, mean.numel(), 2)
    for t, t_next in zip(ts[:-1], ts[1:]):
        v = g.velocity(probe, torch.tensor([t], dtype=torch.float64))[0]
        m, k = v[:, 0], v[:, 1] - v[:, 0]
        mean, var = mean + (t_next - t) * (k * mean + m), (1 + (t_next - t) * k) ** 2 * var
    return mean, var


def _check_moments(out, want_mean, want_var):
    n = out.shape[0] * out.shape[2]
    mean, var = _moments(out)
    for c in range(out.shape[1]):
        assert abs(mean[c] - want_mean[c]) < 5 * want_var[c].sqrt() / math.sqrt(n), (mean, want_mean)
        assert abs(var[c] / want_var[c] - 1) < 5 * math.sqrt(2 / n), (var, want_var)


def test_euler_carries_noise_to_the_gaussian():
    """On an even grid down to t = 0, Euler integrates the flow ODE to the data distribution,
    at first order: the samples match the moment recursion (discretisation error included),
    and that error halves when the steps double."""
    g, mu, s = _gaussian()
    ts = torch.linspace(1, 0, 101, dtype=torch.float64)
    x = torch.randn(8, 3, 4096, dtype=torch.float64)  # 32768 samples per channel
    out = sample_rf_euler(RFDenoiser(g.velocity), x, ts, disable=True)
    want_mean, want_var = euler_moments(g, ts.tolist())
    _check_moments(out, want_mean, want_var)
    data_var = torch.tensor(s, dtype=torch.float64) ** 2
    torch.testing.assert_close(want_mean, torch.tensor(mu, dtype=torch.float64), atol=1e-9, rtol=0)
    errors = [(euler_moments(g, torch.linspace(1, 0, n + 1, dtype=torch.float64).tolist())[1]
               / data_var - 1).abs() for n in (100, 200, 400, 800)]
    for coarse, fine in zip(errors, errors[1:]):
        assert ((coarse / fine - 2).abs() < 0.2).all(), errors
    assert (errors[-1] < 0.01).all(), errors


def test_euler_on_the_reference_schedule_ends_with_a_jump_from_logsnr_2():
    """sample_rf's grid is uniform in logSNR from −6 to 2 with its last point replaced by t = 0,
    so the last step jumps to 0 from t = sigmoid(−(2 − 8/steps)) > sigmoid(−2) = 0.119, whatever
    the step count: the output is the posterior mean there, mean μ and variance a²s⁴/V (below
    s²), up to the ODE's discretisation error before it."""
    g, mu, s = _gaussian()
    ts = rf_timesteps(200)
    t_last = float(ts[-2])  # the grid's last point (logSNR 2) is replaced by 0
    assert abs(t_last - 1 / (1 + math.exp(2 - 8 / 200))) < 1e-6
    x = torch.randn(8, 3, 4096, dtype=torch.float64)
    out = sample_rf_euler(RFDenoiser(g.velocity), x, ts, disable=True)
    want_mean, want_var = euler_moments(g, ts.double().tolist())
    _check_moments(out, want_mean, want_var)
    a = 1 - t_last
    for c in range(3):
        jump_var = a * a * s[c] ** 4 / (a * a * s[c] ** 2 + t_last ** 2)
        assert abs(want_var[c] / jump_var - 1) < 0.04 and jump_var < s[c] ** 2


def test_pingpong_with_posterior_samples_reaches_the_gaussian():
    g, mu, s = _gaussian()
    x = torch.randn(8, 3, 4096, dtype=torch.float64)
    denoise = g.posterior_sampler(torch.Generator().manual_seed(random.randint(0, 2**31)))
    out = sample_pingpong(denoise, x, rf_timesteps(8), disable=True,
                          generator=torch.Generator().manual_seed(random.randint(0, 2**31)))
    _check_moments(out, torch.tensor(mu, dtype=torch.float64),
                   torch.tensor(s, dtype=torch.float64) ** 2)


def test_pingpong_with_the_posterior_mean_matches_its_moments():
    g, mu, s = _gaussian()
    ts = rf_timesteps(random.choice([4, 8, 16]))
    x = torch.randn(8, 3, 4096, dtype=torch.float64)
    out = sample_pingpong(RFDenoiser(g.velocity), x, ts, disable=True,
                          generator=torch.Generator().manual_seed(random.randint(0, 2**31)))
    want_mean, want_var = pingpong_moments(g, ts.double().tolist())
    torch.testing.assert_close(want_mean, torch.tensor(mu, dtype=torch.float64))
    _check_moments(out, want_mean, want_var)
    # the mean denoiser under-disperses: that is why distilled models sample instead
    assert (want_var < torch.tensor(s, dtype=torch.float64) ** 2).all()
