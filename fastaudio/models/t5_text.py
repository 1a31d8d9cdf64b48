"""The T5 text conditioner of Stable Audio Open, from local folders only.

Matches stable-audio-tools 0.0.19's ``T5Conditioner``:

* the tokenizer pads every prompt to ``max_length`` (128 for SAO 1.0, 64 for SAO Small) and
  truncates longer ones, keeping T5's closing ``</s>``;
* ``T5EncoderModel``'s ``last_hidden_state`` goes through ``proj_out`` – a Linear only when the
  T5 width differs from ``cond_dim`` or the config sets ``project_out``; for both SAO models it
  is the identity, T5-base being 768 wide like ``cond_dim`` – and is then multiplied by the
  attention mask, so padded positions are exact zeros;
* the mask comes back as bool (B, max_length).

The T5 weights are not part of a Stable Audio checkpoint (the reference keeps the model out of
its module tree unless it is fine-tuned), so the encoder is held outside this module's
parameters too: ``state_dict()`` holds only ``proj_out`` when there is one.

Precision. The reference casts T5 to float16 on every device (its ``autocast and
set_grad_enabled`` context is a Python ``and``, so only the second manager is entered: T5 runs
in plain fp16). Here ``dtype=None`` means float32 on the CPU (fp16 matmuls are slow there) and
float16 on CUDA, the reference's precision – the embeddings the DiT was trained on – at half the
memory. An explicit ``dtype`` is used as given: ``torch.float16`` on the CPU reproduces the
reference bit for bit (tests/test_open_conditioning.py checks it); float32 differs from it by
fp16 rounding (~1e-3 relative). The choice is logged once per (device, dtype).

Prompts longer than ``max_length`` tokens are truncated, as the reference does, but never
silently: each distinct prompt is logged once at WARNING with what was dropped, and
``FASTAUDIO_STRICT=1`` makes it an error (:class:`~fastaudio.models.tokenizer.TokenizerError`).

Nothing is downloaded: folders are opened with ``local_files_only=True``, and :func:`locate_t5`
finds them among the places a user is likely to have T5 already (an explicit folder, the
checkpoint's own ``text_encoder/`` + ``tokenizer/``, the Hugging Face cache).
"""
from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import threading
from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from ..errors import FastAudioError
from ..hub_cache import cache_snapshots, repo_cache_dir
from ..strict import strict
from .tokenizer import TokenizerError, _check_prompts

log = logging.getLogger("fastaudio.t5")

# The widths the reference assumes per model name (its T5Conditioner.T5_MODEL_DIMS);
# a local folder whose config disagrees is reported, since its proj_out would not fit.
KNOWN_T5_WIDTHS = {"t5-small": 512, "t5-base": 768, "t5-large": 1024, "t5-3b": 1024,
                   "t5-11b": 1024, "google/flan-t5-small": 512, "google/flan-t5-base": 768,
                   "google/flan-t5-large": 1024, "google/flan-t5-xl": 2048,
                   "google/flan-t5-xxl": 4096, "google/t5-v1_1-xl": 2048,
                   "google/t5-v1_1-xxl": 4096}

MAX_LOGGED_PROMPTS = 5           # distinct truncated prompts named in the log; the rest are counted
truncated_prompts = 0            # prompts that lost tokens, this process
_logged_prompts: set = set()
_logged_paths: set = set()
_lock = threading.Lock()


class T5LoadError(FastAudioError, OSError):
    """A T5 folder exists but its model or tokenizer cannot be loaded."""


def _log_once(key, message: str, level=logging.INFO) -> None:
    with _lock:
        if key in _logged_paths:
            return
        _logged_paths.add(key)
    log.log(level, message)


def _report_truncation(prompt: str, n_tokens: int, keep: int, dropped: str) -> None:
    """A cut prompt is reported, not silent; strict mode refuses it."""
    global truncated_prompts
    message = (f"prompt of {n_tokens} T5 tokens truncated to {keep} (max_length minus </s>), "
               f"dropping {dropped!r} (prompt: {prompt!r})")
    if strict():
        raise TokenizerError(f"FASTAUDIO_STRICT=1 forbids truncating a prompt: {message}")
    with _lock:
        truncated_prompts += 1
        if prompt in _logged_prompts or len(_logged_prompts) > MAX_LOGGED_PROMPTS:
            return
        _logged_prompts.add(prompt)
        if len(_logged_prompts) > MAX_LOGGED_PROMPTS:
            message = (f"more prompts are being truncated to {keep} T5 tokens; no longer logged "
                       "(count in fastaudio.models.t5_text.truncated_prompts)")
    log.warning(message)


def load_t5_encoder(encoder_dir: str):
    """``T5EncoderModel`` from a local folder, float32, eval mode, frozen. A folder holding a
    full T5 (encoder and decoder, as the t5-base repository does) is fine: the decoder weights
    are simply unused. Missing encoder weights are an error, not a random initialisation."""
    try:
        from transformers import T5EncoderModel
    except ImportError as e:  # pragma: no cover - transformers is an install requirement
        raise T5LoadError(f"the 'transformers' package is needed for the T5 text encoder ({e})") from None
    try:
        model, info = T5EncoderModel.from_pretrained(
            encoder_dir, local_files_only=True, dtype=torch.float32, output_loading_info=True)
    except Exception as e:
        raise T5LoadError(f"cannot load a T5 encoder from {encoder_dir}: {e}") from None
    missing = sorted(info.get("missing_keys") or ())
    if missing:
        raise T5LoadError(f"the T5 weights in {encoder_dir} lack {len(missing)} encoder tensors "
                          f"(first: {missing[:3]}); is this a T5 checkpoint?")
    return model.eval().requires_grad_(False)


def load_t5_tokenizer(tokenizer_dir: str):
    try:
        from transformers import AutoTokenizer
    except ImportError as e:  # pragma: no cover
        raise T5LoadError(f"the 'transformers' package is needed for the T5 tokenizer ({e})") from None
    try:
        return AutoTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)
    except Exception as e:
        raise T5LoadError(f"cannot load a T5 tokenizer from {tokenizer_dir}: {e}") from None


class T5Conditioner(nn.Module):
    """Prompts → (embeddings (B, max_length, output_dim) float32, mask (B, max_length) bool)."""

    def __init__(self, output_dim: int, encoder_dir: str, tokenizer_dir: Optional[str] = None,
                 max_length: int = 128, project_out: bool = False, t5_model_name: str = "t5-base",
                 dtype: Optional[torch.dtype] = None, name: str = "prompt"):
        super().__init__()
        if int(max_length) < 2:
            raise TokenizerError(f"{name}: max_length must leave room for a token and </s>, got {max_length}")
        self.max_length = int(max_length)
        self.output_dim = output_dim
        self.t5_model_name = t5_model_name
        self.name = name
        self.dtype_override = dtype
        tokenizer_dir = encoder_dir if tokenizer_dir is None else tokenizer_dir
        self.encoder_dir, self.tokenizer_dir = str(encoder_dir), str(tokenizer_dir)
        model = load_t5_encoder(self.encoder_dir)
        self.tokenizer = load_t5_tokenizer(self.tokenizer_dir)
        self.dim = int(model.config.d_model)
        known = KNOWN_T5_WIDTHS.get(t5_model_name)
        if known is not None and known != self.dim:
            log.warning("%s: the model config names %s (width %d) but the T5 in %s is %d wide; "
                        "the reference would size proj_out for %d", name, t5_model_name, known,
                        self.encoder_dir, self.dim, known)
        self.proj_out = (nn.Linear(self.dim, output_dim) if (self.dim != output_dim or project_out)
                         else nn.Identity())
        # Outside the module tree on purpose: T5 is not in the checkpoint, so it must not show up
        # in state_dict(), and .half()/.to() of the diffusion model must not recast it.
        self.__dict__["encoder"] = model

    # -- tokens ----------------------------------------------------------------------------------

    def tokenize(self, prompts: Sequence[str]) -> Tuple[Tensor, Tensor]:
        """(input_ids, attention_mask) as the reference's tokenizer call makes them; every prompt
        that does not fit is reported first (strict mode: refused)."""
        prompts = _check_prompts(prompts)
        if not prompts:
            raise TokenizerError(f"{self.name}: no prompts (the batch is empty)")
        keep = self.max_length - self.tokenizer.num_special_tokens_to_add(pair=False)
        bodies = self.tokenizer(prompts, add_special_tokens=False, truncation=False,
                                verbose=False)["input_ids"]
        for prompt, ids in zip(prompts, bodies):
            if len(ids) > keep:
                _report_truncation(prompt, len(ids), keep, self.tokenizer.decode(ids[keep:]))
        encoded = self.tokenizer(prompts, truncation=True, max_length=self.max_length,
                                 padding="max_length", return_tensors="pt")
        return encoded["input_ids"], encoded["attention_mask"]

    # -- encoder ---------------------------------------------------------------------------------

    def encoder_dtype(self, device: torch.device) -> torch.dtype:
        if self.dtype_override is not None:
            return self.dtype_override
        return torch.float16 if device.type == "cuda" else torch.float32

    def encoder_on(self, device) -> nn.Module:
        """The T5 encoder on ``device`` in the dtype chosen for it (moved and cast on first use,
        as the reference moves its model in every forward). Going back up in precision (fp16
        on CUDA, then fp32 on the CPU) reloads the weights: a cast cannot restore rounded bits."""
        device = torch.device(device)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        dtype = self.encoder_dtype(device)
        model = self.__dict__["encoder"]
        p = next(model.parameters())
        if p.dtype != dtype and p.dtype.itemsize < dtype.itemsize:
            model = self.__dict__["encoder"] = load_t5_encoder(self.encoder_dir)
            p = next(model.parameters())
        if p.device != device or p.dtype != dtype:
            model.to(device=device, dtype=dtype)
        _log_once(("t5", device.type, dtype),
                  f"T5 text encoder ({self.encoder_dir}) runs in {str(dtype).replace('torch.', '')} "
                  f"on {device.type}" + ("" if self.dtype_override is not None else
                                          " (default for this device)"))
        return model

    def forward(self, prompts: Sequence[str], device=None) -> Tuple[Tensor, Tensor]:
        if device is None:
            device = next(self.__dict__["encoder"].parameters()).device
        input_ids, attention_mask = self.tokenize(prompts)
        input_ids = input_ids.to(device)
        attention_mask = attention_mask.to(device).to(torch.bool)
        model = self.encoder_on(device)
        with torch.no_grad():  # T5 is frozen; proj_out below stays trainable like the reference's
            embeddings = model(input_ids=input_ids, attention_mask=attention_mask)["last_hidden_state"]
        if not isinstance(self.proj_out, nn.Identity):
            embeddings = embeddings.to(self.proj_out.weight.dtype)
        embeddings = self.proj_out(embeddings)
        # the float mask promotes fp16 T5 output to float32, exactly as the reference's does
        embeddings = embeddings * attention_mask.unsqueeze(-1).float()
        return embeddings, attention_mask

    def extra_repr(self) -> str:
        return (f"{self.name}: T5 from {self.encoder_dir} ({self.dim} wide), "
                f"max_length={self.max_length}")


# -- a stand-in T5 for benchmarks ----------------------------------------------------------------

T5_BASE_SHAPE = dict(vocab_size=32128, d_model=768, d_kv=64, d_ff=3072, num_layers=12,
                     num_heads=12, relative_attention_num_buckets=32, feed_forward_proj="relu",
                     pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)


def random_t5_folder(seed: int = 0, root: Optional[str] = None, **shape) -> str:
    """A folder holding a random T5 encoder of t5-base's shape (``shape`` overrides any
    T5Config field) and a byte-level ByT5 tokenizer (needs no files), for benchmarks and
    parameter counts where no real T5 is at hand: prompts mean nothing to it. Made once per
    (seed, shape) under ``root`` (default: the system temp folder) and reused; the global RNG
    is left untouched. The weights are stored in fp16 (random anyway; half the disk)."""
    try:
        from transformers import ByT5Tokenizer, T5Config, T5EncoderModel
    except ImportError as e:  # pragma: no cover
        raise T5LoadError(f"the 'transformers' package is needed for a stand-in T5 ({e})") from None
    config = {**T5_BASE_SHAPE, **shape}
    key = hashlib.sha1(repr((seed, sorted(config.items()))).encode()).hexdigest()[:12]
    root = tempfile.gettempdir() if root is None else str(root)
    folder = os.path.join(root, f"fastaudio-random-t5-{key}")
    if _encoder_problem(folder) is None:
        return folder
    os.makedirs(root, exist_ok=True)
    building = tempfile.mkdtemp(prefix=".fastaudio-random-t5-", dir=root)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = T5EncoderModel(T5Config(**config))
        model.half().save_pretrained(building)
        ByT5Tokenizer().save_pretrained(building)
        try:
            os.rename(building, folder)  # whole folders appear at once; a racing twin wins
        except OSError:
            if _encoder_problem(folder) is not None:
                raise
    finally:
        shutil.rmtree(building, ignore_errors=True)
    _log_once(("random-t5", folder), f"stand-in random T5 (seed {seed}) written to {folder}")
    return folder


# -- finding T5 on this machine -------------------------------------------------------------------

ENCODER_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                   "pytorch_model.bin.index.json")
TOKENIZER_FILES = ("tokenizer.json", "spiece.model")
HOW_TO_POINT = ("pass text_encoder=DIR (CLI: --text-encoder DIR) naming a folder with a T5 encoder "
                "(config.json + model.safetensors) and its tokenizer (tokenizer.json or "
                "spiece.model), or a text_encoder/ folder with tokenizer/ beside it, e.g. from "
                "stabilityai/stable-audio-open-1.0 or a google-t5/t5-base snapshot; fastaudio "
                "downloads nothing")


class TextEncoderNotFoundError(FastAudioError, FileNotFoundError):
    """No usable T5 encoder + tokenizer in any of the places looked at; the message lists them."""


def _encoder_problem(folder: str) -> Optional[str]:
    """None when ``folder`` holds a loadable-looking T5 encoder, else what is missing."""
    if not os.path.isdir(folder):
        return "no such folder"
    if not os.path.isfile(os.path.join(folder, "config.json")):
        return "no config.json"
    if not any(os.path.isfile(os.path.join(folder, f)) for f in ENCODER_WEIGHTS):
        return f"no weights ({' / '.join(ENCODER_WEIGHTS[::2])})"
    return None


def _tokenizer_problem(folder: str) -> Optional[str]:
    if not os.path.isdir(folder):
        return "no such folder"
    if not any(os.path.isfile(os.path.join(folder, f)) for f in TOKENIZER_FILES):
        return f"no tokenizer ({' / '.join(TOKENIZER_FILES)})"
    return None


def _hub_repo_ids(model_name: str) -> List[str]:
    """``t5-base`` lives on the hub as ``google-t5/t5-base`` today; the cache may hold either."""
    ids = [model_name]
    if "/" not in model_name:
        ids.append(f"google-t5/{model_name}")
    elif model_name.startswith("google-t5/"):
        ids.append(model_name.split("/", 1)[1])
    return ids


def _pair_problem(encoder_dir: str, tokenizer_dir: str) -> Optional[str]:
    enc, tok = _encoder_problem(encoder_dir), _tokenizer_problem(tokenizer_dir)
    if enc is None and tok is None:
        return None
    if encoder_dir == tokenizer_dir:
        return "; ".join(p for p in (enc, tok) if p)
    return "; ".join(f"{what}: {p}" for what, p in (("encoder", enc), ("tokenizer", tok)) if p)


def locate_t5(checkpoint_dir: Optional[str], text_encoder: Optional[str] = None,
              model_name: str = "t5-base") -> Tuple[str, str]:
    """(encoder_dir, tokenizer_dir) of a T5 already on this machine. Looks, in order, at

    1. ``text_encoder`` when given: a folder with both encoder and tokenizer, or a
       ``text_encoder/`` folder with ``tokenizer/`` beside it. An explicit folder that is not
       usable is an error at once – it is never passed over for another T5;
    2. ``text_encoder/`` + ``tokenizer/`` beside the checkpoint (``checkpoint_dir`` may be the
       checkpoint file), the layout of the Stable Audio Open 1.0 repository and of diffusers'
       StableAudioPipeline;
    3. a snapshot of ``model_name`` (also as ``google-t5/<name>``) in the Hugging Face cache,
       the one ``refs/main`` names first.

    The place used is logged once; if the checkpoint's own folders are there but incomplete and
    the cache is used instead, that is a warning (an error under ``FASTAUDIO_STRICT=1``).
    Nothing is downloaded. Raises :class:`TextEncoderNotFoundError` naming every place looked at.
    """
    if text_encoder is not None:
        folder = os.path.abspath(os.path.expanduser(str(text_encoder)))
        if _encoder_problem(folder) is None and _tokenizer_problem(folder) is None:
            return _found(folder, folder, "the text_encoder folder given")
        sibling = os.path.join(os.path.dirname(folder), "tokenizer")
        if _encoder_problem(folder) is None and _tokenizer_problem(sibling) is None:
            return _found(folder, sibling, "the text_encoder folder given")
        raise TextEncoderNotFoundError(
            f"the text encoder folder given ({folder}) is not usable: "
            f"{_pair_problem(folder, folder)}; nor is there a tokenizer beside it ({sibling}: "
            f"{_tokenizer_problem(sibling)}). {HOW_TO_POINT}")

    looked: List[str] = []
    incomplete_beside = None
    if checkpoint_dir is not None:
        base = os.path.abspath(os.path.expanduser(str(checkpoint_dir)))
        if os.path.isfile(base):
            base = os.path.dirname(base)
        enc, tok = os.path.join(base, "text_encoder"), os.path.join(base, "tokenizer")
        problem = _pair_problem(enc, tok)
        if problem is None:
            return _found(enc, tok, "the checkpoint's folder")
        looked.append(f"{enc} + {tok} (beside the checkpoint: {problem})")
        if os.path.isdir(enc) or os.path.isdir(tok):
            incomplete_beside = looked[-1]

    for repo_id in _hub_repo_ids(model_name):
        snapshots = cache_snapshots(repo_id)
        if not snapshots:
            looked.append(f"{repo_cache_dir(repo_id)} (Hugging Face cache: no snapshot)")
        for snap in snapshots:
            problem = _pair_problem(snap, snap)
            if problem is None:
                if incomplete_beside is not None:
                    message = (f"the checkpoint's T5 folders are incomplete – {incomplete_beside} – "
                               f"so the Hugging Face cache's {snap} is used instead")
                    if strict():
                        raise TextEncoderNotFoundError(f"FASTAUDIO_STRICT=1 forbids this fallback: {message}")
                    log.warning(message)
                return _found(snap, snap, f"the Hugging Face cache ({repo_id})")
            looked.append(f"{snap} (Hugging Face cache: {problem})")
    raise TextEncoderNotFoundError(
        f"no T5 text encoder ({model_name}) found; looked at: " + "; ".join(looked)
        + f". {HOW_TO_POINT}")


def _found(encoder_dir: str, tokenizer_dir: str, where: str) -> Tuple[str, str]:
    _log_once(("locate", encoder_dir, tokenizer_dir),
              f"T5 text encoder from {where}: {encoder_dir}"
              + ("" if tokenizer_dir == encoder_dir else f" (tokenizer: {tokenizer_dir})"))
    return encoder_dir, tokenizer_dir
