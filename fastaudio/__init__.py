"""fastaudio: the fast engine for Stable Audio checkpoints (Stable Audio Open 1.0 and Small,
SA1.0-style models) on GPUs and CPUs.

    import fastaudio
    pipe = fastaudio.StableAudio.from_pretrained(fastaudio.default_model_path(), device="cpu")
    out = pipe.generate("a calm piano melody", seconds_total=5, steps=8, seed=0)
    print(out.audio.shape, out.sample_rate)   # torch.Size([1, 2, 220500]) 44100, float32 audio
    model = fastaudio.load_model(fastaudio.default_model_path())   # any supported folder layout
    fresh = fastaudio.build_model("tiny", seed=0)                  # random weights of a preset

``StableAudio.from_pretrained`` also reads Stable Audio Open folders (stable-audio-tools' or
diffusers' layout); see README.md.
"""
__version__ = "0.2.0"

from .assets import default_model_path  # noqa: E402
from .checkpoints import CheckpointError, load_model, save_model  # noqa: E402
from .config import ConfigError, ModelConfig, preset  # noqa: E402
from .config_files import load_config  # noqa: E402
from .models.stable_audio import StableAudioModel, build_model  # noqa: E402
from .pipeline import GenerationError, GenerationOutput, StableAudio  # noqa: E402

__all__ = ["StableAudio", "GenerationOutput", "GenerationError", "load_model", "save_model",
           "build_model", "default_model_path", "StableAudioModel", "ModelConfig", "preset",
           "load_config", "ConfigError", "CheckpointError"]
