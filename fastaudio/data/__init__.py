"""The training data pipeline: manifests → audit → crops with timing and prompts → (latents).

    items = read_manifest("data/train.jsonl")                  # or scan_folder("data/")
    report = audit(items, sample_rate=44100, min_seconds=1.0, on_bad="skip")
    print(report)
    ds = AudioDataset(report.items, sample_size=model_cfg.sample_size, seed=0)
    sampler = ShardedSampler(len(ds), num_replicas=world, rank=rank, seed=0, yield_epoch=True)
    loader = DataLoader(ds, batch_size=b, sampler=sampler, collate_fn=collate)

For diffusion training the crops can be encoded once: ``build_latent_cache(ds, vae, "cache/")``
then ``LatentDataset("cache/")``.
"""
from .dataset import AudioDataset, collate
from .decode import AudioInfo, AuditEntry, AuditReport, audit, load_audio, load_crop, probe
from .errors import DataError
from .latent_cache import CacheSummary, LatentDataset, build_latent_cache
from .manifest import AUDIO_EXTENSIONS, AudioItem, read_manifest, scan_folder, write_manifest
from .prompts import STYLES, make_prompt, metadata_prompt
from .rng import sample_rng
from .sampler import ShardedSampler

__all__ = [
    "AudioDataset", "collate", "AudioInfo", "AuditEntry", "AuditReport", "audit", "load_audio",
    "load_crop", "probe", "DataError", "CacheSummary", "LatentDataset", "build_latent_cache",
    "AUDIO_EXTENSIONS", "AudioItem", "read_manifest", "scan_folder", "write_manifest", "STYLES",
    "make_prompt", "metadata_prompt", "sample_rng", "ShardedSampler",
]
