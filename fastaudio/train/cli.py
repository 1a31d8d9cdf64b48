"""``fastaudio train vae|clap|diffusion --data MANIFEST --out RUN_DIR [--config FILE]``.

The same command runs on one process or under ``torchrun --nproc_per_node N``. A run folder holds
``run.json`` (what the run is), ``log.jsonl``, ``checkpoints/`` and, at the end, ``export/`` – a
model folder ``fastaudio.load_model`` reads. ``--resume`` continues a run folder exactly where its
newest checkpoint left it.
"""
from __future__ import annotations

import argparse
import json
import os
from dataclasses import asdict

from ..atomic import atomic_write_text
from ..errors import FastAudioError
from .config import STAGES, TrainConfig, default_train_config, train_config_from_json


class TrainCLIError(FastAudioError):
    pass


def add_train_parser(sub) -> None:
    t = sub.add_parser("train", help="train the VAE, CLAP or diffusion model")
    t.add_argument("stage", choices=STAGES)
    t.add_argument("--data", help="manifest (JSONL/CSV) or folder of audio files")
    t.add_argument("--out", required=True, help="run folder")
    t.add_argument("--config", help="training config JSON (overrides the stage defaults)")
    t.add_argument("--init", help="model folder to start from (earlier stages' export)")
    t.add_argument("--preset", help="start from a preset's fresh weights (default: small)")
    t.add_argument("--add-pooled-context", action="store_true",
                   help="give the --init model's U-Net the pooled-context FiLM path "
                        "(unet.use_pooled_context), starting at zero")
    t.add_argument("--resume", action="store_true", help="continue the run folder's newest checkpoint")
    t.add_argument("--steps", type=int, help="total steps (overrides the config)")
    t.add_argument("--batch-size", type=int, help="global batch size (overrides the config)")
    t.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    t.add_argument("--no-progress", action="store_true")
    t.set_defaults(handler=run_train)

    c = sub.add_parser("latents", help="encode a dataset's crops once with a model's VAE (a latent "
                       "cache for diffusion training)")
    c.add_argument("--model", required=True, help="model folder whose VAE encodes")
    c.add_argument("--data", required=True, help="manifest (JSONL/CSV) or folder of audio files")
    c.add_argument("--out", required=True, help="cache folder (resumable)")
    c.add_argument("--crops", type=int, default=1, help="random full-window crops per item")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--batch-size", type=int, default=4)
    c.add_argument("--device")
    c.add_argument("--on-bad", choices=["skip", "fail"], default="skip")
    c.set_defaults(handler=run_latents)


def run_latents(args: argparse.Namespace) -> int:
    import torch

    from ..checkpoints import load_model
    from ..data.dataset import AudioDataset
    from ..data.latent_cache import build_latent_cache
    from .stage_common import audited_items
    model = load_model(args.model)
    cfg = model.config
    items = audited_items(args.data, cfg.sample_rate, 1024 / cfg.sample_rate, args.on_bad, True, True)
    ds = AudioDataset(items, cfg.sample_size, cfg.sample_rate, random_crop=True, seed=args.seed)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    vae = model.vae.to(device).eval()
    vae.fold_weight_norm()
    summary = build_latent_cache(ds, vae, args.out, crops_per_item=args.crops,
                                 batch_size=args.batch_size, device=device)
    print(f"latent cache: {summary}")
    return 0


def _run_spec(args) -> dict:
    run_json = os.path.join(args.out, "run.json")
    if args.resume:
        if not os.path.isfile(run_json):
            raise TrainCLIError(f"--resume: {args.out} is not a run folder (no run.json)")
        try:
            with open(run_json, encoding="utf-8") as f:
                spec = json.load(f)
            spec["stage"], spec["train_config"]
        except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
            raise TrainCLIError(f"--resume: {run_json} is unreadable or incomplete ({e})") from None
        if spec["stage"] != args.stage:
            raise TrainCLIError(f"--resume: {args.out} is a {spec['stage']} run, not {args.stage}")
        for key in ("data", "init", "preset", "config"):
            given = getattr(args, key)
            if given is not None and os.path.abspath(given) != spec.get(key) and given != spec.get(key):
                raise TrainCLIError(f"--resume: --{key} {given} differs from the run's {spec.get(key)}")
        if args.add_pooled_context and not spec.get("add_pooled_context", False):
            raise TrainCLIError("--resume: --add-pooled-context was not given when the run started")
        return spec
    if os.path.isdir(os.path.join(args.out, "checkpoints")) and os.listdir(os.path.join(args.out, "checkpoints")):
        raise TrainCLIError(f"{args.out} already holds checkpoints: pass --resume to continue it, "
                            "or choose another --out")
    if not args.data:
        raise TrainCLIError("--data is required (a manifest or a folder of audio)")
    if args.add_pooled_context and args.stage != "diffusion":
        raise TrainCLIError("--add-pooled-context adds a U-Net layer: only the diffusion stage trains it")
    if not os.path.exists(args.data):
        raise TrainCLIError(f"--data {args.data} does not exist")
    spec = {"stage": args.stage, "data": os.path.abspath(args.data),
            "init": os.path.abspath(args.init) if args.init else None, "preset": args.preset,
            "config": os.path.abspath(args.config) if args.config else None,
            "add_pooled_context": bool(args.add_pooled_context)}
    return spec


def _train_config(spec: dict, args, model_config) -> TrainConfig:
    if args.resume:
        # the run's own settings (command-line overrides included); only --steps may extend it
        from ..config import from_dict
        cfg = from_dict(TrainConfig, spec["train_config"])
        if args.batch_size is not None and args.batch_size != cfg.batch_size:
            raise TrainCLIError(f"--resume: --batch-size {args.batch_size} differs from the run's "
                                f"{cfg.batch_size}")
        if args.steps is not None:
            cfg.steps = args.steps
        return cfg.validate()
    cfg = default_train_config(spec["stage"], model_config)
    if spec.get("config"):
        try:
            with open(spec["config"], encoding="utf-8") as f:
                cfg = train_config_from_json(f.read(), cfg, spec["config"])
        except OSError as e:
            raise TrainCLIError(f"cannot read --config {spec['config']}: {e.strerror}") from None
    if cfg.stage != spec["stage"]:
        raise TrainCLIError(f"config stage {cfg.stage!r} differs from the command's {spec['stage']!r}")
    if args.steps is not None:
        cfg.steps = args.steps
    if args.batch_size is not None:
        cfg.batch_size = args.batch_size
    if cfg.diffusion.latent_cache:  # recorded absolute in run.json, so --resume works from anywhere
        cfg.diffusion.latent_cache = os.path.abspath(cfg.diffusion.latent_cache)
    return cfg.validate()


def _stage_class(stage: str):
    if stage == "vae":
        from .stage_vae import VAEStage
        return VAEStage
    if stage == "clap":
        from .stage_clap import CLAPStage
        return CLAPStage
    if stage == "diffusion":
        from .stage_diffusion import DiffusionStage
        return DiffusionStage
    raise TrainCLIError(f"unknown stage {stage!r}")


def run_train(args: argparse.Namespace) -> int:
    from . import distributed as D
    from .stage_common import model_from_args
    from .trainer import Trainer
    spec = _run_spec(args)
    dist = D.init_distributed(args.device)
    ok = False
    try:
        model = model_from_args(spec["init"], spec["preset"], seed=0,
                                add_pooled_context=spec.get("add_pooled_context", False))
        cfg = _train_config(spec, args, model.config)
        if dist.is_main:
            os.makedirs(args.out, exist_ok=True)
            spec["train_config"] = asdict(cfg)
            atomic_write_text(os.path.join(args.out, "run.json"), json.dumps(spec, indent=2) + "\n")
        D.barrier(dist)
        stage_cls = _stage_class(spec["stage"])
        trainer = Trainer(cfg, args.out, lambda t: stage_cls(t, model, spec["data"], spec["init"]),
                          dist, resume=args.resume, progress=not args.no_progress)
        trainer.fit()
        trainer.close()
        if dist.is_main:
            print(f"trained {spec['stage']} for {trainer.step} steps; model folder: "
                  f"{os.path.join(args.out, 'export')}")
        ok = True
    finally:
        D.shutdown(dist, ok)
    return 0
