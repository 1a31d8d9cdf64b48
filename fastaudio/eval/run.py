"""The evaluation of a model on a held-out, labelled corpus split (the paper's metrics plus
prompt-following measures independent of the generator).

``evaluate(pipe, heldout, references, ...)`` renders one clip per held-out prompt, then reports:
Fréchet distances (CLAP and log-mel embeddings) of generated vs real held-out audio, the CLAP
score, KL between the family classifier's outputs on real and generated audio, how often the
generated audio has the prompt's tempo, key and instrument family (with chance levels and the same
measures on the real audio as the ceiling), the timing accuracy (requested vs detected end), and
the VAE's reconstruction figures on the real clips.

Two measures separate the diffusion model from the decoder: the same measures on the real clips
passed through the VAE (for the CLAP score and the prompt-following rates, what any diffusion model
over this VAE could at best show; the FDs there are paired, each clip against its own
reconstruction, so they read lower than any independent sample could), and the instrument family
read off the generated latents before decoding, by a classifier fitted on the training clips'
latents in the same VAE's space.
"""
from __future__ import annotations

import logging
import math
import os
import random
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from ..audio import write_audio
from ..data.manifest import AudioItem
from ..errors import FastAudioError
from .attributes import (FamilyClassifier, KeyTemplates, chroma, chroma_agreement, estimate_tempo,
                         family_label, latent_features, parse_key, tempo_class, tempo_correct,
                         timbre_features)
from .embedders import CLAPEmbedder, MelEmbedder
from .metrics import detect_end, frechet_distance, mean_kl, mrstft_distance, si_sdr, timing_table

log = logging.getLogger("fastaudio.eval")


def load_clip(item: AudioItem, sample_rate: int, seconds: Optional[float] = None) -> torch.Tensor:
    from ..data.decode import load_audio
    audio, _ = load_audio(item.path, sample_rate, 2)
    if seconds is not None:
        audio = audio[:, : int(seconds * sample_rate)]
    return audio


@dataclass
class References:
    """What the measures are fitted on: the corpus's training split (never the diffusion model).

    With a ``vae``, also a family classifier on the training clips' latents in that VAE's space:
    it reads the family off generated latents before decoding, so prompt following by the
    diffusion model is seen apart from what the decoder loses (only for models with that VAE)."""
    family: FamilyClassifier
    keys: KeyTemplates
    clap: object                      # the CLAP whose towers embed audio and text for every model
    latent_family: Optional[FamilyClassifier] = None
    latent_vae: Optional[object] = None   # the VAE whose latent space latent_family was fitted in

    @classmethod
    def fit(cls, train_items: Sequence[AudioItem], clap, sample_rate: int, limit: int = 600,
            seed: int = 0, vae=None, window: Optional[float] = None, latent_limit: int = 200
            ) -> "References":
        if vae is not None and window is None:
            raise EvalError("References.fit: a vae needs the window (seconds) its clips are padded to")
        items = [it for it in train_items if it.labels]
        random.Random(seed).shuffle(items)
        items = items[:limit]
        feats, fams, chromas, keys, lfeats, lfams = [], [], [], [], [], []
        for it in items:
            audio = load_clip(it, sample_rate)
            fam = family_label(it.labels)
            if fam is not None:
                feats.append(timbre_features(audio, sample_rate))
                fams.append(fam)
                if vae is not None and len(lfeats) < latent_limit:
                    lfeats.append(encoded_features(vae, audio, sample_rate, window))
                    lfams.append(fam)
            if it.labels.get("kind") == "music" and it.labels.get("key"):
                chromas.append(chroma(audio, sample_rate))
                keys.append(it.labels["key"])
        latent = FamilyClassifier.fit(np.stack(lfeats), lfams) if len(set(lfams)) > 1 else None
        return cls(FamilyClassifier.fit(np.stack(feats), fams), KeyTemplates.fit(chromas, keys), clap,
                   latent, vae if latent is not None else None)


def _frames(samples: int, vae) -> int:
    return -(-samples // vae.config.downsampling_ratio)


def encode_window(vae, audio: torch.Tensor, sample_rate: int, window: float) -> torch.Tensor:
    """The clip's first ``window`` seconds, padded with silence to the window as training pads
    them, encoded: (1, latent_dim, frames) on the VAE's device."""
    n_window = int(window * sample_rate)
    clip = torch.nn.functional.pad(audio[:, :n_window], (0, max(0, n_window - audio.shape[-1])))
    p = next(vae.parameters())
    with torch.no_grad():
        return vae.encode(clip[None].to(p.device, p.dtype))


def encoded_features(vae, audio: torch.Tensor, sample_rate: int, window: float) -> np.ndarray:
    n = min(audio.shape[-1], int(window * sample_rate))
    return latent_features(encode_window(vae, audio, sample_rate, window)[0], _frames(n, vae))


def attribute_scores(audio: torch.Tensor, item: AudioItem, refs: References, sample_rate: int) -> Dict:
    """Per clip: predictions and whether each matches the item's labels."""
    lab = item.labels
    out: Dict[str, object] = {}
    fam = family_label(lab)
    probs = refs.family.probabilities(timbre_features(audio, sample_rate))[0]
    out["family_probs"] = probs
    if fam is not None:
        out["family_ok"] = refs.family.classes[int(probs.argmax())] == fam
    if lab.get("kind") == "music":
        bpm = estimate_tempo(audio, sample_rate)
        out["tempo_ok"] = tempo_correct(bpm, lab["bpm"], 0.08)
        out["tempo_ok_octave"] = tempo_correct(bpm, lab["bpm"], 0.08, octaves=True)
        out["tempo_class_ok"] = tempo_class(bpm) == lab.get("tempo_class")
        pred = refs.keys.predict(chroma(audio, sample_rate))
        out["key_ok"] = parse_key(pred) == parse_key(lab["key"])
        out["mode_ok"] = parse_key(pred)[1] == parse_key(lab["key"])[1]
    return out


def _rate(rows: List[Dict], key: str) -> Optional[float]:
    vals = [r[key] for r in rows if key in r]
    return float(np.mean(vals)) if vals else None


def context_sensitivity(model, prompts: Sequence[str], seconds: Sequence[float], seed: int = 0,
                        t: float = 0.5) -> Dict[str, float]:
    """How much the U-Net's output depends on its conditioning: for one noisy latent at time ``t``,
    the mean relative change of v, ||v(a) - v(b)|| / ||v(a)||, over pairs of different prompts (same
    duration) and of different durations (same prompt). Near 0: the model ignores its context and
    cannot follow prompts or durations, whatever the sampler does."""
    cfg = model.config
    device = next(model.unet.parameters()).device
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, cfg.vae.latent_dim, cfg.latent_length, generator=g).to(device)
    tt = torch.full((1,), t, device=device)

    def v(prompt, total):
        ctx, mask = model.conditioner([prompt], 0, total)
        return model.unet(x, tt, ctx.float(), mask).float()

    def rel(a, b):
        return float((a - b).norm() / a.norm().clamp_min(1e-12))
    with torch.no_grad():
        base = [v(p, seconds[0]) for p in prompts]
        by_prompt = [rel(base[i], base[j]) for i in range(len(prompts)) for j in range(i + 1, len(prompts))]
        by_total = [rel(base[0], v(prompts[0], s)) for s in seconds[1:]]
    return {"prompt": float(np.mean(by_prompt)) if by_prompt else float("nan"),
            "duration": float(np.mean(by_total)) if by_total else float("nan")}


def summarise(rows: List[Dict]) -> Dict[str, Optional[float]]:
    return {k: _rate(rows, k) for k in ("family_ok", "family_latent_ok", "tempo_ok", "tempo_ok_octave",
                                         "tempo_class_ok", "key_ok", "mode_ok")}


def latent_family_ok(refs: References, latents: torch.Tensor, samples: int, item: AudioItem,
                     vae) -> Optional[bool]:
    """Whether the latent-space classifier reads the item's family off ``latents`` (None when it
    does not apply: no classifier, another VAE's latent space, or no family label)."""
    fam = family_label(item.labels)
    if refs.latent_family is None or refs.latent_vae is not vae or fam is None:
        return None
    feats = latent_features(latents[0], _frames(samples, vae))
    return refs.latent_family.predict(feats[None])[0] == fam


class EvalError(FastAudioError, ValueError):
    """Evaluation settings that cannot be honoured; the message says which."""


def check_timing_seconds(seconds: Sequence[float], window: float) -> None:
    """A duration past the window cannot be rendered in one pass: refuse it rather than print a
    shorter timing table."""
    too_long = [s for s in seconds if s > window]
    if too_long:
        raise EvalError(f"timing durations {too_long} exceed the model's {window:.2f} s window")


def vae_bounds(vae, clips: Sequence[torch.Tensor], sample_rate: int, window: float,
               device=None, dtype=None) -> Dict[str, Optional[float]]:
    """The VAE's bounds on real clips (each (2, n) and at most the window long): reconstruction
    (SI-SDR, MR-STFT over the clip), and, for clips that end at least 1 s before the window's end,
    padded with silence as training pads them, how far the detected end moves in the round trip -
    the timing table cannot be better than this; and how much pitch content survives
    (:func:`chroma_agreement` of each reconstruction with its clip, beside the same figure for
    each clip against the next one - what unrelated music scores)."""
    sdr, dist, end_err, pitch, pitch_chance = [], [], [], [], []
    n_window = int(window * sample_rate)
    with torch.no_grad():
        for ref in clips:
            padded = torch.nn.functional.pad(ref, (0, n_window - ref.shape[-1]))
            rec = vae.decode(vae.encode(padded[None].to(device, dtype)))[0, :, :n_window].float().cpu()
            sdr.append(float(si_sdr(rec[:, : ref.shape[-1]], ref)))
            dist.append(mrstft_distance(rec[:, : ref.shape[-1]], ref))
            pitch.append(chroma_agreement(rec[:, : ref.shape[-1]], ref, sample_rate))
            if ref.shape[-1] <= n_window - sample_rate:
                end_err.append(abs(detect_end(rec, sample_rate) - detect_end(padded, sample_rate)))
    if len(clips) > 1:
        pitch_chance = [chroma_agreement(other, ref, sample_rate)
                        for ref, other in zip(clips, list(clips[1:]) + [clips[0]])]

    def mean(xs):
        xs = [x for x in xs if x is not None]
        return float(np.mean(xs)) if xs else None
    return {"vae_si_sdr_db": mean(sdr), "vae_mrstft": mean(dist), "vae_end_error_s": mean(end_err),
            "vae_end_within_1s": mean([e <= 1.0 for e in end_err]),
            "vae_chroma_agreement": mean(pitch), "vae_chroma_agreement_unrelated": mean(pitch_chance)}


def evaluate(pipe, heldout: Sequence[AudioItem], refs: References, out_dir: Optional[str] = None,
             steps: Optional[int] = None, cfg_scale: Optional[float] = None, items: int = 100,
             timing_seconds: Sequence[float] = (3.0, 5.0, 8.0, 11.0), timing_prompts: int = 8,
             seed: int = 0, vae_items: int = 20, extra_embedders: Sequence = (),
             round_trips: bool = True) -> Dict:
    sr = pipe.sample_rate
    window = pipe.config.window_seconds
    check_timing_seconds(timing_seconds, window)
    chosen = [it for it in heldout if it.labels][:items]
    if out_dir:
        os.makedirs(os.path.join(out_dir, "audio"), exist_ok=True)
    gen, real, trips, rows_gen, rows_real, rows_vae, prompts = [], [], [], [], [], [], []
    for k, it in enumerate(chosen):
        seconds = min(float(it.labels.get("duration", window)), window)
        prompt = it.caption or ""
        out = pipe.generate(prompt, seconds_total=seconds, steps=steps, cfg_scale=cfg_scale,
                            seed=seed + k)
        audio, gen_latents = out.audio[0].cpu(), out.latents
        ref = load_clip(it, sr, window)[:, : audio.shape[-1]]
        if out_dir:
            write_audio(os.path.join(out_dir, "audio", f"{k:04d}.wav"), audio, sr, overwrite=True)
        gen.append(audio)
        real.append(ref)
        prompts.append(prompt)
        rows_gen.append(attribute_scores(audio, it, refs, sr))
        rows_real.append(attribute_scores(ref, it, refs, sr))
        found = [(rows_gen, gen_latents)]
        if round_trips:  # the real clip through the VAE: the best any diffusion model could show
            ref_latents = encode_window(pipe.model.vae, ref, sr, window)
            with torch.no_grad():
                rt = pipe.model.vae.decode(ref_latents)[0, :, : ref.shape[-1]].float().cpu()
            trips.append(rt)
            rows_vae.append(attribute_scores(rt, it, refs, sr))
            found.append((rows_vae, ref_latents))
        for rows, z in found:
            ok = latent_family_ok(refs, z, ref.shape[-1], it, pipe.model.vae)
            if ok is not None:
                rows[-1]["family_latent_ok"] = ok
        log.info("eval %d/%d: %s", k + 1, len(chosen), prompt)
    results: Dict = {"items": len(chosen), "model": pipe.config.name}
    probe_seconds = list(timing_seconds) or [window]
    results["context_sensitivity"] = context_sensitivity(pipe.model, prompts[:4] or [""], probe_seconds, seed)
    clap_emb, mel_emb = CLAPEmbedder(refs.clap), MelEmbedder(sr)
    pad = lambda xs: torch.stack([torch.nn.functional.pad(x, (0, int(window * sr) - x.shape[-1]))
                                  for x in xs])
    g_clap = np.concatenate([clap_emb(pad([x])) for x in gen])
    r_clap = np.concatenate([clap_emb(pad([x])) for x in real])
    results["fd_clap"] = frechet_distance(r_clap, g_clap)
    results["fd_mel"] = frechet_distance(mel_emb(real), mel_emb(gen))
    if round_trips:  # the real clips through the VAE; FD paired (each clip vs its reconstruction)
        v_clap = np.concatenate([clap_emb(pad([x])) for x in trips])
        results["fd_clap_vae"] = frechet_distance(r_clap, v_clap)
        results["fd_mel_vae"] = frechet_distance(mel_emb(real), mel_emb(trips))
    for emb in extra_embedders:
        results[f"fd_{emb.name}"] = frechet_distance(np.concatenate([emb(pad([x])) for x in real]),
                                                     np.concatenate([emb(pad([x])) for x in gen]))
    with torch.no_grad():
        text = refs.clap.text_embedding(prompts).double().cpu().numpy()
    results["clap_score"] = float(np.mean((text * g_clap).sum(1)))
    results["clap_score_real"] = float(np.mean((text * r_clap).sum(1)))
    if round_trips:
        results["clap_score_vae"] = float(np.mean((text * v_clap).sum(1)))
    results["kl_family"] = mean_kl(np.stack([r["family_probs"] for r in rows_real]),
                                   np.stack([r["family_probs"] for r in rows_gen]))
    results["follow"] = summarise(rows_gen)
    results["follow_real"] = summarise(rows_real)
    if round_trips:
        results["follow_vae"] = summarise(rows_vae)
    results["chance"] = {"family_ok": 1 / len(refs.family.classes), "tempo_class_ok": 1 / 3,
                         "key_ok": 1 / 24, "mode_ok": 0.5}
    if refs.latent_family is not None:
        results["chance"]["family_latent_ok"] = 1 / len(refs.latent_family.classes)
    # timing accuracy: render the whole window, detect where the sound ends
    requested, detected = [], []
    music = [it for it in chosen if it.labels.get("kind") == "music"][:timing_prompts]
    for s in timing_seconds:
        for k, it in enumerate(music):
            audio = pipe.generate(it.caption or "", seconds_total=s, steps=steps, cfg_scale=cfg_scale,
                                  seed=seed + 1000 + k, trim=False).audio[0].cpu()
            requested.append(s)
            detected.append(detect_end(audio, sr))
    results["timing"] = timing_table(requested, detected)
    results.update(vae_bounds(pipe.model.vae, [load_clip(it, sr, window) for it in chosen[:vae_items]],
                              sr, window, pipe.device, pipe.dtype))
    return results


def format_markdown(named: Dict[str, Dict]) -> str:
    """One table comparing models (and the real audio's ceiling)."""
    def f(x, pct=False):
        if x is None or (isinstance(x, float) and not math.isfinite(x)):
            return "–"
        return f"{100 * x:.0f} %" if pct else f"{x:.3g}"
    names = list(named)
    # "real audio through the VAE": the held-out clips encoded and decoded by the first model's VAE
    lines = ["| measure | " + " | ".join(names) + " | real audio | real audio through the VAE | chance |",
             "|---" * (len(names) + 4) + "|"]
    first = named[names[0]]
    rows = [("FD (CLAP embeddings) ↓", "fd_clap", None, "fd_clap_vae"),
            ("FD (log-mel statistics) ↓", "fd_mel", None, "fd_mel_vae"),
            ("CLAP score ↑", "clap_score", "clap_score_real", "clap_score_vae"),
            ("KL (family classifier) ↓", "kl_family", None, None)]
    for title, key, real_key, vae_key in rows:
        real = f(first.get(real_key)) if real_key else "–"
        via = f(first.get(vae_key)) if vae_key else "–"
        lines.append(f"| {title} | " + " | ".join(f(named[n].get(key)) for n in names)
                     + f" | {real} | {via} | – |")
    for key, title in (("family_ok", "instrument family correct"),
                       ("family_latent_ok", "instrument family read off the latents"),
                       ("tempo_ok", "tempo within 8 %"),
                       ("tempo_ok_octave", "tempo within 8 % (×2, ×½ allowed)"),
                       ("tempo_class_ok", "tempo class (slow/medium/fast)"), ("key_ok", "key correct"),
                       ("mode_ok", "mode (major/minor) correct")):
        chance = first["chance"].get(key)
        lines.append(f"| {title} ↑ | " + " | ".join(f(named[n]["follow"].get(key), True) for n in names)
                     + f" | {f(first['follow_real'].get(key), True)}"
                     + f" | {f(first.get('follow_vae', {}).get(key), True)} | {f(chance, True)} |")
    for key, title in (("prompt", "U-Net output change between prompts ↑"),
                       ("duration", "U-Net output change between durations ↑")):
        # two significant digits: these changes are fractions of a percent
        cells = [named[n].get("context_sensitivity", {}).get(key) for n in names]
        lines.append(f"| {title} | " + " | ".join("–" if c is None else f"{100 * c:.2g} %" for c in cells)
                     + " | – | – | – |")
    for key, title in (("vae_si_sdr_db", "VAE reconstruction SI-SDR (dB) ↑"), ("vae_mrstft", "VAE reconstruction MR-STFT ↓"),
                       ("vae_end_error_s", "VAE round trip: error of the detected end (s) ↓")):
        lines.append(f"| {title} | " + " | ".join(f(named[n].get(key)) for n in names) + " | – | – | – |")
    # pitch kept frame by frame; "chance" is what two unrelated real clips score
    lines.append("| VAE round trip: pitch kept (chroma agreement, 1 = all) ↑ | " + " | ".join(
        f(named[n].get("vae_chroma_agreement")) for n in names)
        + f" | – | – | {f(first.get('vae_chroma_agreement_unrelated'))} |")
    lines.append("| VAE round trip: end found within 1 s ↑ | " + " | ".join(
        f(named[n].get("vae_end_within_1s"), True) for n in names) + " | – | – | – |")
    return "\n".join(lines) + "\n"


def format_timing(named: Dict[str, Dict]) -> str:
    lines = ["| requested (s) | " + " | ".join(f"{n}: detected end (s) / within 1 s" for n in named) + " |",
             "|---" * (len(named) + 1) + "|"]
    first = list(named.values())[0]["timing"]
    for i, row in enumerate(first):
        cells = []
        for res in named.values():
            r = res["timing"][i]
            cells.append(f"{r['detected_mean_s']:.2f} ± {r['detected_std_s']:.2f} / {100 * r['within_1s']:.0f} %")
        lines.append(f"| {row['requested_s']:g} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


__all__ = ["EvalError", "References", "check_timing_seconds", "evaluate", "vae_bounds", "format_markdown", "format_timing"]
