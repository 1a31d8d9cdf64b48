"""fastaudio: the fastest complete implementation of Stable Audio 1.0.

    import fastaudio
    model = fastaudio.build_model("stable-audio-1.0")          # fresh weights
    model = fastaudio.load_model("path/to/model_folder")       # ours or stable-audio-tools'
    pipe = fastaudio.StableAudio.from_pretrained("path/to/model_folder")
    audio = pipe.generate("a calm piano melody", seconds_total=10)   # (B, 2, N) at 44.1 kHz
"""
__version__ = "0.1.0"

from .checkpoints import CheckpointError, load_model, save_model  # noqa: E402
from .config import ConfigError, ModelConfig, preset  # noqa: E402
from .config_files import load_config  # noqa: E402
from .models.stable_audio import StableAudioModel, build_model  # noqa: E402

__all__ = ["build_model", "load_model", "save_model", "StableAudioModel", "ModelConfig",
           "preset", "load_config", "ConfigError", "CheckpointError"]
