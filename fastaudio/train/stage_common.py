"""What the three stages share: the model they train, the audited dataset, export."""
from __future__ import annotations

import copy
import json
import logging
import os
import shutil
import time
from dataclasses import asdict
from typing import List, Optional

import torch

from ..checkpoints import load_model, save_model
from ..models.stable_audio import StableAudioModel, build_model
from .trainer import Stage, TrainingError

log = logging.getLogger("fastaudio.train")


def model_from_args(init: Optional[str], preset: Optional[str], seed: int,
                    add_pooled_context: bool = False) -> StableAudioModel:
    """The model a run starts from: a model folder (``--init``) or a preset's fresh weights;
    ``add_pooled_context`` gives an ``--init`` model the U-Net's pooled-context path."""
    if init and preset:
        raise TrainingError("give --init MODEL or --preset NAME, not both")
    if add_pooled_context and not init:
        raise TrainingError("--add-pooled-context needs --init MODEL (a preset chooses its own "
                            "unet.use_pooled_context)")
    if init:
        model = load_model(init)
        return with_pooled_context(model) if add_pooled_context else model
    return build_model(preset or "small", seed=seed)


def with_pooled_context(model: StableAudioModel) -> StableAudioModel:
    """The same model with ``unet.use_pooled_context`` switched on; the new layer starts at zero,
    so outputs are unchanged until training teaches it (fine-tuning a model trained without it)."""
    if model.config.unet.use_pooled_context:
        raise TrainingError("--add-pooled-context: the --init model already has a pooled context")
    cfg = copy.deepcopy(model.config)
    cfg.unet.use_pooled_context = True
    new = StableAudioModel(cfg.validate())
    new.conditioner.clap.tokenizer = model.conditioner.clap.tokenizer
    new.conditioner.text_encoder_missing = model.conditioner.text_encoder_missing
    missing, unexpected = new.load_state_dict(model.state_dict(), strict=False)
    if unexpected or any(not k.startswith("unet.to_features.") for k in missing):
        raise TrainingError(f"--add-pooled-context: unexpected weights {unexpected} / missing {missing}")
    new.unet.zero_pooled_context()
    return new.to(next(model.parameters()).dtype).eval()


def audited_items(data: str, sample_rate: int, min_seconds: float, on_bad: str, convert: bool,
                  is_main: bool):
    """Manifest (or folder) → items whose audio can be used; bad files reported by name before
    training starts, and either skipped or fatal (``on_bad``)."""
    from ..data.decode import audit
    from ..data.manifest import read_manifest, scan_folder
    items = scan_folder(data) if os.path.isdir(data) else read_manifest(data)
    report = audit(items, sample_rate=sample_rate, min_seconds=min_seconds, convert=convert)
    if is_main:
        log.warning("%s", report.summary())
    return report.usable(on_bad)


class ModelStage(Stage):
    """A stage that trains part of a :class:`StableAudioModel` and exports the whole model."""

    def __init__(self, trainer, model: StableAudioModel, data: str, init: Optional[str]):
        super().__init__(trainer)
        self.model = model.to(trainer.device)
        self.data_path = data
        self.init = init
        self.started = time.time()

    def audio_items(self, min_seconds: float):
        t = self.trainer
        return audited_items(self.data_path, self.model.config.sample_rate, min_seconds,
                             t.cfg.data.on_bad, t.cfg.data.convert, t.dist.is_main)

    def export(self, folder: str, gathered=None) -> None:
        """The whole model with the EMA weights; ``gathered`` (under FSDP) holds the full tensors
        of the sharded parameters, keyed by parameter id."""
        t = self.trainer
        with t.ema_weights():
            os.makedirs(folder, exist_ok=True)
            sd = None
            if gathered:
                ids = {name: id(p) for name, p in self.model.named_parameters()}
                sd = {k: (gathered[ids[k]] if ids.get(k) in gathered else v)
                      for k, v in self.model.state_dict().items()}
            save_model(self.model, folder, state_dict=sd)
        records: List[dict] = []
        if self.init:  # keep the records of earlier stages beside the weights
            for name in sorted(os.listdir(self.init)):
                if name.startswith("training-") and name.endswith(".json"):
                    shutil.copyfile(os.path.join(self.init, name), os.path.join(folder, name))
        from .run_log import read_log
        final = [r for r in read_log(t.log.path) if r.get("kind") == "train"][-1:]
        record = {
            "stage": self.name, "steps": t.step, "data": os.path.abspath(self.data_path),
            "init": self.init, "wall_time_s": round(time.time() - self.started, 1),
            "processes": t.dist.world, "device": str(t.device),
            "final_log": final[0] if final else None, "train_config": asdict(t.cfg),
            "torch": torch.__version__,
        }
        records.append(record)
        from ..atomic import atomic_write_text
        atomic_write_text(os.path.join(folder, self.record_name()), json.dumps(record, indent=2) + "\n")

    def record_name(self) -> str:
        """``training-<stage>.json``, or for a continuation of a stage already recorded in the
        init folder ``training-<stage>-2.json``, ``-3`` …: the earlier runs' records are kept.
        Decided by the init folder alone, so exporting one run twice writes one record."""
        earlier = os.listdir(self.init) if self.init else []
        name, k = f"training-{self.name}.json", 1
        while name in earlier:
            k += 1
            name = f"training-{self.name}-{k}.json"
        return name
