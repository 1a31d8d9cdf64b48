"""What every ``fastaudio`` subcommand shares: the one-line error, argument types, and loading a
pipeline from ``--model`` / ``--preset`` (the shipped model when neither is given)."""
from __future__ import annotations

import argparse
import os
import sys
from typing import List

from ..errors import FastAudioError


class CLIError(FastAudioError):
    """A command-line argument that cannot be used; printed as one line, exit status 2."""


class Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, not usage + message
        raise CLIError(message)


def positive_float(name):
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a number, got {text!r}") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"{name} must be > 0, got {text}")
        return value
    return parse


def positive_int(name):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be an integer, got {text!r}") from None
        if value < 1:
            raise argparse.ArgumentTypeError(f"{name} must be >= 1, got {text}")
        return value
    return parse


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="a model folder: fastaudio's, stable-audio-tools' "
                   "(model_config.json + model.safetensors/.ckpt) or diffusers' StableAudioPipeline "
                   "layout (default: the shipped model)")
    p.add_argument("--preset", help="random weights of a preset (benchmarking only)")
    p.add_argument("--text-encoder", metavar="DIR",
                   help="T5 folder for Stable Audio Open models (default: text_encoder/ beside "
                   "the checkpoint, then a t5-base snapshot in the Hugging Face cache)")
    p.add_argument("--clap-checkpoint", help="LAION-CLAP checkpoint for SA1.0-style "
                   "stable-audio-tools models")


def load_pipeline(args, device=None, dtype=None, execution="auto"):
    from ..assets import default_model_path
    from ..pipeline import StableAudio
    if args.model and args.preset:
        raise CLIError("give --model or --preset, not both")
    if args.preset:
        print(f"fastaudio: preset {args.preset!r} with RANDOM weights: the output is noise "
              "(use it to benchmark)", file=sys.stderr)
        return StableAudio.from_preset(args.preset, device, dtype, execution)
    path = args.model or default_model_path()
    if path is None:
        print("fastaudio: no trained default model ships with this build: using the 'small' "
              "preset with RANDOM weights (the output is noise); pass --model PATH",
              file=sys.stderr)
        return StableAudio.from_preset("small", device, dtype, execution)
    kwargs = {}
    if getattr(args, "clap_checkpoint", None):
        kwargs["clap_checkpoint"] = args.clap_checkpoint
    if getattr(args, "text_encoder", None):
        kwargs["text_encoder"] = args.text_encoder
    return StableAudio.from_pretrained(path, device, dtype, execution, **kwargs)


def numbered_outputs(path: str, batch: int) -> List[str]:
    """out.wav for one take; out-0.wav, out-1.wav, … for several."""
    if batch == 1:
        return [path]
    stem, ext = os.path.splitext(path)
    return [f"{stem}-{k}{ext}" for k in range(batch)]
