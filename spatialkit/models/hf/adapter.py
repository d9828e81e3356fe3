"""Real Hugging Face VLMs (Qwen2-VL, Qwen2.5-VL, Qwen3-VL, LLaVA-1.5) behind the ``spatialkit.models.vlm.VLM`` interface.

    vlm = load("Qwen/Qwen2-VL-2B-Instruct")            # or a local folder; never downloads
    batch = vlm.prepare(images, prompts)
    with vlm.visual_hook(shuffle), vlm.attention_hook(probe):
        logits = vlm.logits(batch)

How the two hook points are wired (transformers 5.x):

* visual hook: a forward hook on the module whose output the LM receives, i.e. the Qwen vision tower
  ``model.model.visual`` (its ``pooler_output`` is the merger output of all images concatenated; Qwen3-VL
  also returns the DeepStack levels, handed to ``fn`` as ``VisualTokens.extras``) or LLaVA's
  ``multi_modal_projector``. Nothing else sits between these outputs and the LM.
* attention hook: an attention function registered under the name ``"spatialkit"`` in transformers'
  ``AttentionInterface`` (plus the SDPA mask builder under the same name in ``AttentionMaskInterface``,
  without which the model builds no causal/padding mask at all). Entering the hook switches only the
  LM's config to that implementation (the vision tower keeps its own) and restores it on exit. The
  function receives q/k after rotary (Qwen3-VL: after q_norm/k_norm) and the cache-extended k/v.

Token kinds: PAD where the attention mask is 0, IMAGE at image placeholder tokens, SYSTEM before the
first image token (template scaffolding and system prompt, ``<|vision_start|>`` included), TEXT after it
(the user's prompt, the closing scaffolding and assistant prefix, and generated tokens).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from pathlib import Path
from typing import ClassVar, Iterator, Sequence

import numpy as np
import torch
from PIL import Image
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from spatialkit.models.vlm import (VLM, AttnCall, AttentionFn, Batch, Generation, PositionIds, Prefill, SlotIndexFn,
                                    TokenKind, VisualFn, VisualTokens)
import dataclasses
import importlib.util

FAMILY_OF_MODEL_TYPE = {"qwen2_vl": "qwen2_vl", "qwen2_5_vl": "qwen2_5_vl", "qwen3_vl": "qwen3_vl", "llava": "llava"}
ATTN_NAME = "spatialkit"
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


class WeightsNotFoundError(FileNotFoundError):
    """The requested model's weights are not on this machine (nothing is ever downloaded by ``load``)."""


class UnsupportedModelError(ValueError):
    """The checkpoint is not one of the supported VLM families."""


# -- classes per family ----------------------------------------------------------------------------
def model_class(family: str):
    import transformers as t  # optional heavy dependency: only HF-model paths load transformers

    classes = {
        "qwen2_vl": t.Qwen2VLForConditionalGeneration,
        "qwen2_5_vl": t.Qwen2_5_VLForConditionalGeneration,
        "qwen3_vl": t.Qwen3VLForConditionalGeneration,
        "llava": t.LlavaForConditionalGeneration,
    }
    if family not in classes:
        raise UnsupportedModelError(f"family must be one of {sorted(classes)}, got {family!r}")
    return classes[family]


def _image_only(base):
    """A Qwen processor without the video processor (the stock one needs torchvision, never installed here)."""

    class ImageOnly(base):
        def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
            super().__init__(image_processor, tokenizer, None, chat_template=chat_template)

    ImageOnly.__name__ = ImageOnly.__qualname__ = "ImageOnly" + base.__name__
    return ImageOnly


_PROCESSORS: dict[str, type] = {}


def processor_class(family: str):
    if family not in _PROCESSORS:
        import transformers as t  # optional heavy dependency: only HF-model paths load transformers

        bases = {"qwen2_vl": t.Qwen2VLProcessor, "qwen2_5_vl": t.Qwen2_5_VLProcessor, "qwen3_vl": t.Qwen3VLProcessor}
        if family == "llava":
            _PROCESSORS[family] = t.LlavaProcessor
        elif family in bases:
            _PROCESSORS[family] = _image_only(bases[family])
        else:
            raise UnsupportedModelError(f"family must be one of {sorted(FAMILY_OF_MODEL_TYPE)}, got {family!r}")
    return _PROCESSORS[family]


# -- loading ---------------------------------------------------------------------------------------
def _how_to_provide(path_or_id: str) -> str:
    return (
        "Download it on a connected machine with `hf download <id>` (or `huggingface-cli download <id>`) and copy "
        "the HF cache (~/.cache/huggingface/hub, or $HF_HOME) here, or pass the path of a local folder holding "
        "config.json, the processor files and *.safetensors."
    ).replace("<id>", path_or_id)


def resolve_weights(path_or_id: str | os.PathLike) -> Path:
    """The local folder holding the checkpoint, or WeightsNotFoundError. Only looks locally (fast offline)."""
    text = str(path_or_id)
    path = Path(text).expanduser()
    looks_like_path = path.exists() or text.startswith((".", "/", "~")) or text.count("/") != 1
    if looks_like_path:
        if not path.is_dir():
            raise WeightsNotFoundError(f"Model folder {str(path)!r} does not exist. {_how_to_provide(text)}")
        folder = path
    else:
        from huggingface_hub import snapshot_download  # optional: only for hub ids

        try:
            folder = Path(snapshot_download(text, local_files_only=True))
        except Exception as err:  # LocalEntryNotFoundError, HFValidationError, ...
            raise WeightsNotFoundError(
                f"Model {text!r} is not in the local Hugging Face cache "
                f"({os.environ.get('HF_HUB_CACHE') or os.environ.get('HF_HOME') or '~/.cache/huggingface'}) "
                f"and is not a local folder. {_how_to_provide(text)}"
            ) from err
    if not (folder / "config.json").is_file() or not any((folder / f).is_file() for f in WEIGHT_FILES):
        raise WeightsNotFoundError(
            f"{str(folder)!r} (for {text!r}) has no config.json or no weights ({', '.join(WEIGHT_FILES)}). "
            f"{_how_to_provide(text)}"
        )
    return folder


def family_of(config) -> str:
    family = FAMILY_OF_MODEL_TYPE.get(getattr(config, "model_type", None))
    if family is None:
        raise UnsupportedModelError(
            f"Unsupported architecture: model_type {getattr(config, 'model_type', None)!r} "
            f"({getattr(config, 'architectures', None)}); spatialkit.models.hf supports {sorted(FAMILY_OF_MODEL_TYPE)}."
        )
    return family


def _chat_template(folder: Path, tokenizer) -> str | None:
    if (folder / "chat_template.jinja").is_file():
        return (folder / "chat_template.jinja").read_text()
    if (folder / "chat_template.json").is_file():
        return json.loads((folder / "chat_template.json").read_text())["chat_template"]
    return tokenizer.chat_template


def load_processor(folder: str | os.PathLike, family: str, *, min_pixels: int | None = None,
                   max_pixels: int | None = None):
    """The processor, built from explicit classes (AutoProcessor would silently give only the tokenizer).

    ``min_pixels``/``max_pixels``: a Qwen image processor's pixel bounds (None: the folder's own); ignored for
    LLaVA, whose processor resizes every image to its fixed square."""
    from transformers import AutoTokenizer  # optional heavy dependency: only HF-model paths load transformers

    folder = Path(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    template = _chat_template(folder, tokenizer)
    if family == "llava":
        from transformers import CLIPImageProcessorPil  # optional heavy dependency: only HF-model paths load transformers

        extra = {}
        if (folder / "processor_config.json").is_file():
            saved = json.loads((folder / "processor_config.json").read_text())
            extra = {k: saved[k] for k in ("patch_size", "vision_feature_select_strategy", "num_additional_image_tokens") if k in saved}
        image = CLIPImageProcessorPil.from_pretrained(folder)
        return processor_class(family)(image_processor=image, tokenizer=tokenizer, chat_template=template, **extra)
    from transformers import Qwen2VLImageProcessorPil  # optional heavy dependency: only HF-model paths load transformers

    image = Qwen2VLImageProcessorPil.from_pretrained(folder)
    set_pixel_bounds(image, min_pixels, max_pixels)
    return processor_class(family)(image_processor=image, tokenizer=tokenizer, chat_template=template)


def set_pixel_bounds(image_processor, min_pixels: int | None = None, max_pixels: int | None = None) -> None:
    """Set a Qwen image processor's pixel bounds in place (None leaves a bound as it is)."""
    check_pixels(min_pixels, max_pixels)
    size = image_processor.size
    low = min_pixels if min_pixels is not None else size["shortest_edge"]
    high = max_pixels if max_pixels is not None else size["longest_edge"]
    if low > high:
        raise ValueError(f"parameter 'min_pixels' = {low} is invalid; allowed: at most max_pixels = {high}")
    if isinstance(size, dict):
        image_processor.size = {**size, "shortest_edge": low, "longest_edge": high}
    else:  # transformers' SizeDict (a dataclass)

        image_processor.size = dataclasses.replace(size, shortest_edge=low, longest_edge=high)


ATTN_IMPLEMENTATIONS = ("sdpa", "eager", "flash_attention_2")
# The notebooks' default pixel bound for Qwen processors: Qwen's own recommended max (1280 visual tokens of 28 px
# for Qwen2/2.5-VL), instead of the hub preprocessor_config's 12.8 MP (16384 tokens per image).
DEFAULT_MAX_PIXELS = 1280 * 28 * 28


def load(path_or_id: str | os.PathLike, device: str | torch.device = "cpu", dtype: torch.dtype | str | None = None,
         attn_implementation: str = "sdpa", min_pixels: int | None = None, max_pixels: int | None = None) -> "HFVLM":
    """Load a supported VLM from a local folder or the HF cache (never downloads).

    ``dtype``: None = float32 on the CPU, the checkpoint's own dtype ("auto") elsewhere; or "auto", "bfloat16",
    "float16", "float32" (or the torch dtype). ``attn_implementation``: the LM's and vision tower's attention
    ("sdpa", "eager", or "flash_attention_2", which needs the ``flash_attn`` package and a CUDA device);
    ``attention_hook`` swaps in its own function for the LM and restores this one on exit.
    ``min_pixels``/``max_pixels``: pixel bounds of a Qwen processor (images are resized so that
    h*w lies within them, in steps of the patch*merge size); None keeps the checkpoint's own (the hub's Qwen2-VL
    preprocessor allows up to 12.8 MP per image; the notebooks pass :data:`DEFAULT_MAX_PIXELS`). LLaVA-1.5's
    processor always resizes to its fixed square, so both are ignored there.
    """
    from transformers import AutoConfig  # optional heavy dependency: only HF-model paths load transformers

    dtype = _check_dtype(dtype, device)  # bad arguments fail before any file is read
    attn_implementation = check_attn_implementation(attn_implementation, device)
    check_pixels(min_pixels, max_pixels)
    folder = resolve_weights(path_or_id)
    family = family_of(AutoConfig.from_pretrained(folder))
    model = model_class(family).from_pretrained(folder, dtype=dtype, attn_implementation=attn_implementation)
    model.to(device).eval()
    vlm = HFVLM(model, load_processor(folder, family, min_pixels=min_pixels, max_pixels=max_pixels), family)
    vlm.source = str(path_or_id)
    return vlm


def load_for(params, **overrides) -> "HFVLM":
    """:func:`load` with a notebook's validated parameters (``P`` from ``spatialkit.suite.notebook.setup``):
    ``model``, ``device``, ``dtype`` ("auto" = None: float32 on the CPU, the checkpoint's own on CUDA),
    ``attn_implementation``, ``min_pixels``, ``max_pixels``. Those the notebook does not declare take the
    defaults of ``spatialkit.suite.catalog.HF_MODEL_PARAMS`` (max_pixels :data:`DEFAULT_MAX_PIXELS`);
    ``overrides`` win over both. Checks min_pixels <= max_pixels."""
    get = lambda name, default: overrides.get(name, getattr(params, name, default))  # noqa: E731
    dtype = get("dtype", "auto")
    return load(get("model", None), device=get("device", "cpu"), dtype=None if dtype == "auto" else dtype,
                attn_implementation=get("attn_implementation", "sdpa"), min_pixels=get("min_pixels", None),
                max_pixels=get("max_pixels", DEFAULT_MAX_PIXELS))


DTYPES = ("auto", "float32", "float16", "bfloat16")


def _check_dtype(dtype, device):
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"device must be a torch device such as 'cpu' or 'cuda:0', got {device!r}") from err
    if dtype is None:
        return torch.float32 if device.type == "cpu" else "auto"
    if isinstance(dtype, torch.dtype):
        dtype = str(dtype).removeprefix("torch.")
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be None or one of {DTYPES} (or the torch dtype), got {dtype!r}")
    return dtype if dtype == "auto" else getattr(torch, dtype)


def check_attn_implementation(attn_implementation: str, device: str | torch.device = "cpu") -> str:
    """``attn_implementation`` if it can run here, else a ValueError saying why (flash_attention_2 needs the
    ``flash_attn`` package and a CUDA device)."""

    if attn_implementation not in ATTN_IMPLEMENTATIONS:
        raise ValueError(f"parameter 'attn_implementation' = {attn_implementation!r} is invalid; allowed: one of "
                         f"{list(ATTN_IMPLEMENTATIONS)}")
    if attn_implementation == "flash_attention_2":
        if importlib.util.find_spec("flash_attn") is None:
            raise ValueError("parameter 'attn_implementation' = 'flash_attention_2' needs the flash_attn package, "
                             "which is not installed here (pip install flash-attn on a CUDA machine); use 'sdpa'")
        if torch.device(device).type != "cuda":
            raise ValueError(f"parameter 'attn_implementation' = 'flash_attention_2' runs on CUDA only, "
                             f"not on device {str(device)!r}; use 'sdpa'")
    return attn_implementation


def check_pixels(min_pixels: int | None, max_pixels: int | None) -> None:
    """ValueError unless the Qwen pixel bounds are None or positive ints with min_pixels <= max_pixels."""
    for name, value in (("min_pixels", min_pixels), ("max_pixels", max_pixels)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"parameter '{name}' = {value!r} is invalid; allowed: None or an int >= 1")
    if min_pixels is not None and max_pixels is not None and min_pixels > max_pixels:
        raise ValueError(f"parameter 'min_pixels' = {min_pixels} is invalid; allowed: at most max_pixels = {max_pixels}")


# -- the attention function ------------------------------------------------------------------------
def _spatialkit_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None, **kwargs):
    """transformers attention function: hand the call to the active hook's fn, else stock SDPA."""
    state = getattr(module, "_spatialkit_hook", None)
    if state is None:  # not inside an attention_hook (e.g. another model sharing the config)
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, is_causal=is_causal, **kwargs)
    fn, vlm = state
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    call = AttnCall(
        layer=module.layer_idx,
        query=query,
        key=key,
        value=value,
        mask=attention_mask,
        scale=scaling if scaling is not None else query.shape[-1] ** -0.5,
        is_causal=bool(causal and attention_mask is None),
        token_kind=vlm._kinds_for(key.shape[-2]),
    )
    out = fn(call)  # (B, H, Lq, D)
    return out.transpose(1, 2).contiguous(), None


AttentionInterface.register(ATTN_NAME, _spatialkit_attention)
AttentionMaskInterface.register(ATTN_NAME, sdpa_mask)  # same masks as stock SDPA


def _to_pil(image) -> Image.Image:
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().numpy()
    array = np.asarray(image)
    if array.ndim != 3 or array.shape[-1] != 3:
        raise ValueError(f"images must be PIL images or HxWx3 arrays, got shape {array.shape}")
    if array.dtype != np.uint8:
        array = (np.clip(array, 0, 1) * 255).round().astype(np.uint8) if array.max() <= 1.0 else array.astype(np.uint8)
    return Image.fromarray(array)


def token_logprobs(logits: torch.Tensor, rows: torch.Tensor, targets: torch.Tensor, chunk: int = 64) -> torch.Tensor:
    """log softmax(logits[rows])[targets], (R,) float32, without a log-softmax over every row: the target's
    logit minus the row's log-sum-exp, in float32, ``chunk`` rows at a time (memory: chunk x vocabulary)."""
    out = []
    for start in range(0, len(rows), chunk):
        r, t = rows[start:start + chunk], targets[start:start + chunk]
        picked = logits[r].float()  # (chunk, V)
        out.append(picked.gather(1, t[:, None])[:, 0] - picked.logsumexp(-1))
    return torch.cat(out) if out else torch.zeros(0)


# -- the adapter -----------------------------------------------------------------------------------
# the prompt string AdaptVis' official evaluation renders for LLaVA-1.5 (Chen et al., ICML 2025, their code)
ADAPTVIS_LLAVA_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'user' %}"
    "{% if message['content'] is string %}<image>\nUSER: {{ message['content'] }}\n"
    "{% else %}{% for content in message['content'] %}{% if content['type'] == 'image' %}<image>\n{% endif %}"
    "{% endfor %}USER: {% for content in message['content'] %}{% if content['type'] == 'text' %}"
    "{{ content['text'] }}{% endif %}{% endfor %}{{ '\\n' }}{% endif %}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)
OFFICIAL_TEMPLATES = {"llava": ADAPTVIS_LLAVA_TEMPLATE}
# PIN's location bins 0-15 spelled in hexadecimal, one character (= one token) each (HFVLM.location_token_ids)
LOCATION_SPELLINGS = "0123456789abcdef"


class HFVLM(VLM):
    """A transformers VLM of one of the supported families, as a :class:`spatialkit.models.vlm.VLM`."""

    def __init__(self, model: torch.nn.Module, processor, family: str):
        self.family = family
        self.model = model.eval()
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.tokenizer.padding_side = "left"  # the last position is the one that predicts the answer
        first = next(model.parameters())
        self.device, self.dtype = first.device, first.dtype
        self.image_token_id = model.config.image_token_id
        self._running_kinds: torch.Tensor | None = None

    @property
    def name(self) -> str:
        """The checkpoint's name for messages: the folder or hub id's last part ("Qwen2-VL-7B-Instruct")."""
        source = getattr(self, "source", None) or getattr(self.model.config, "_name_or_path", "") or ""
        source = str(source).rstrip("/")
        if "/snapshots/" in source:  # an HF cache folder: models--org--name/snapshots/<hash>
            source = source.split("/snapshots/")[0].rsplit("--", 1)[-1]
        return Path(source).name or self.family

    # -- model parts ---------------------------------------------------------------------------
    @property
    def lm_config(self):
        return self.model.config.text_config

    @property
    def lm_layers(self) -> torch.nn.ModuleList:
        return self.model.model.language_model.layers

    @property
    def num_layers(self) -> int:
        return len(self.lm_layers)

    @contextlib.contextmanager
    def prompt_format(self, fmt: str):
        """LLaVA-1.5's official AdaptVis prompt is ``<image>\nUSER: {question}\nASSISTANT:`` (not llava-hf's
        ``USER: <image>\n...``): swap the processor's chat template while inside; Qwen's own template is the
        official one."""
        template = OFFICIAL_TEMPLATES.get(self.family) if fmt == "official" else None
        if template is None:
            yield
            return
        old = self.processor.chat_template
        self.processor.chat_template = template
        try:
            yield
        finally:
            self.processor.chat_template = old

    @property
    def _visual_module(self) -> torch.nn.Module:
        return self.model.model.multi_modal_projector if self.family == "llava" else self.model.model.visual

    # -- inputs --------------------------------------------------------------------------------
    def _messages(self, prompt: str, system_prompt: str | None) -> list[dict]:
        messages = []
        if system_prompt is not None:
            messages.append({"role": "system", "content": [{"type": "text", "text": system_prompt}]})
        messages.append({"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]})
        return messages

    def prompt_texts(self, prompts: Sequence[str], system_prompt: str | None = None) -> list[str]:
        """The chat-templated prompt strings (one image placeholder each, assistant prefix at the end)."""
        return [
            self.processor.apply_chat_template(self._messages(p, system_prompt), tokenize=False, add_generation_prompt=True)
            for p in prompts
        ]

    def prepare(self, images: Sequence, prompts: Sequence[str], *, system_prompt: str | None = None) -> Batch:
        if len(images) != len(prompts):
            raise ValueError(f"images and prompts must have the same length, got {len(images)} and {len(prompts)}")
        if len(prompts) == 0:
            raise ValueError("prompts must hold at least one prompt")
        texts = self.prompt_texts(prompts, system_prompt)
        enc = self.processor(images=[_to_pil(im) for im in images], text=texts, return_tensors="pt", padding=True)
        inputs = {
            k: (v.to(self.device, self.dtype) if v.is_floating_point() else v.to(self.device))
            for k, v in enc.items()
            if isinstance(v, torch.Tensor)
        }
        return Batch(inputs=inputs, token_kind=self._token_kinds(inputs), grids=self._grids(inputs), prompts=list(prompts))

    def _token_kinds(self, inputs: dict) -> torch.Tensor:
        ids, attend = inputs["input_ids"], inputs["attention_mask"].bool()
        is_image = ids == self.image_token_id
        after_image = is_image.long().cumsum(dim=1) > 0
        kinds = torch.full_like(ids, int(TokenKind.SYSTEM))
        kinds[after_image] = int(TokenKind.TEXT)
        kinds[is_image] = int(TokenKind.IMAGE)
        kinds[~attend] = int(TokenKind.PAD)
        return kinds

    def _grids(self, inputs: dict) -> list[tuple[int, int]]:
        if self.family == "llava":
            vision = self.model.config.vision_config
            side = vision.image_size // vision.patch_size
            return [(side, side)] * inputs["pixel_values"].shape[0]
        merge = self.model.config.vision_config.spatial_merge_size
        return [(int(t) * int(h) // merge, int(w) // merge) for t, h, w in inputs["image_grid_thw"].tolist()]

    # -- running state for the attention hook --------------------------------------------------
    @contextlib.contextmanager
    def _running(self, kinds: torch.Tensor) -> Iterator[None]:
        previous, self._running_kinds = self._running_kinds, kinds
        try:
            yield
        finally:
            self._running_kinds = previous

    def _kinds_for(self, num_keys: int) -> torch.Tensor | None:
        """Token kinds of the keys; positions beyond the prompt are generated tokens (TEXT)."""
        kinds = self._running_kinds
        if kinds is None:
            return None
        if num_keys > kinds.shape[1]:
            extra = torch.full((kinds.shape[0], num_keys - kinds.shape[1]), int(TokenKind.TEXT), dtype=kinds.dtype, device=kinds.device)
            kinds = torch.cat([kinds, extra], dim=1)
        return kinds[:, :num_keys]

    # -- running -------------------------------------------------------------------------------
    @torch.no_grad()
    def logits(self, batch: Batch) -> torch.Tensor:
        with self._running(batch.token_kind):
            return self.model(**batch.inputs, use_cache=False).logits

    def _with_suffix(self, batch: Batch, suffixes: list[list[int]]) -> Batch:
        """The batch with token ids appended to each row's prompt (re-left-padded)."""
        rows = []
        keep = batch.attention_mask
        for i, suffix in enumerate(suffixes):
            rows.append(batch.inputs["input_ids"][i][keep[i]].tolist() + list(suffix))
        length = max(map(len, rows))
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
        attend = torch.zeros((len(rows), length), dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, length - len(row) :] = torch.tensor(row)
            attend[i, length - len(row) :] = 1
        inputs = dict(batch.inputs, input_ids=ids.to(self.device), attention_mask=attend.to(self.device))
        if "mm_token_type_ids" in inputs:  # 1 at image tokens, 0 elsewhere
            inputs["mm_token_type_ids"] = (inputs["input_ids"] == self.image_token_id).to(batch.inputs["mm_token_type_ids"].dtype)
        return Batch(inputs=inputs, token_kind=self._token_kinds(inputs), grids=batch.grids, prompts=batch.prompts)

    def option_ids(self, prompt_text: str, option: str) -> list[int]:
        """Token ids of an answer option as it follows the assistant prefix ("ASSISTANT:" → " left").

        The option's own leading whitespace is dropped ("left" and " left" are the same answer); one space
        joins it to a prefix that does not end in whitespace. The ids are those the tokenizer gives the option
        *inside* the whole text (prompt + option) after the prompt's own ids, so a SentencePiece tokenizer's
        word-start "▁" is handled as in the real sequence (never a lone "▁" token); only when the option's
        first token merges with the prompt's last one are they the option's own ids.
        """
        option = option.lstrip()
        if not option:
            return []
        text = option if (not prompt_text or prompt_text[-1].isspace()) else " " + option
        base = self.tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
        full = self.tokenizer(prompt_text + text, add_special_tokens=False)["input_ids"]
        if len(full) > len(base) and full[: len(base)] == base:
            return full[len(base):]
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _option_suffixes(self, prompts, options, system_prompt):
        if len(options) != len(prompts) or any(len(o) == 0 for o in options):
            raise ValueError("options must hold one non-empty list of options per prompt")
        texts = self.prompt_texts(prompts, system_prompt)
        suffixes = [[self.option_ids(texts[b], o) for o in opts] for b, opts in enumerate(options)]
        if any(len(s) == 0 for row in suffixes for s in row):
            raise ValueError("every option must be a non-empty string")
        return suffixes

    @torch.no_grad()
    def score_options(self, images: Sequence, prompts: Sequence[str], options: Sequence[Sequence[str]], *,
                      system_prompt: str | None = None) -> torch.Tensor:
        """(B, K) summed log-likelihood of each option's tokens; -inf pads prompts with fewer than K options.

        Each image goes through the vision tower once and each prompt through the LM once (with a KV cache
        when some option has more than one token): an option's first token is read from the prompt's last
        position (the LM head runs there only), its further tokens from one cached step per option slot, run
        for every prompt at once and cropped off the cache again. Log-probabilities are taken only at the
        option tokens (a log-sum-exp over the vocabulary per scored position, in float32, in row chunks).
        Active hooks apply to every forward; an attention hook that changes the last row changes the row that
        predicts the option's first token.
        """
        suffixes = self._option_suffixes(prompts, options, system_prompt)
        k_max = max(len(row) for row in suffixes)
        batch = self.prepare(images, prompts, system_prompt=system_prompt)
        multi = any(len(s) > 1 for row in suffixes for s in row)
        previous_deltas = vars(self.model.model).get("rope_deltas")
        scores = torch.full((len(prompts), k_max), float("-inf"))
        try:
            with self._running(batch.token_kind):
                out = self.model(**batch.inputs, use_cache=multi, logits_to_keep=1)
            last = out.logits[:, -1]  # (B, V)
            firsts = [(b, o, s[0]) for b, row in enumerate(suffixes) for o, s in enumerate(row)]
            rows = torch.tensor([b for b, _, _ in firsts], device=last.device)
            targets = torch.tensor([t for _, _, t in firsts], device=last.device)
            first_lp = token_logprobs(last, rows, targets).cpu()
            for (b, o, _), lp in zip(firsts, first_lp.tolist()):
                scores[b, o] = lp
            if multi:
                self._score_continuations(batch, out.cache, suffixes, scores)
        finally:
            if "rope_deltas" in vars(self.model.model):
                self.model.model.rope_deltas = previous_deltas
        return scores

    def _score_continuations(self, batch: Batch, cache, suffixes: list[list[list[int]]], scores: torch.Tensor) -> None:
        """Add the log-probabilities of every option's tokens after its first (one cached step per slot)."""
        n, length = batch.inputs["input_ids"].shape
        attend = batch.inputs["attention_mask"]
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        deltas = vars(self.model.model).get("rope_deltas")  # Qwen: M-RoPE offset of each prompt, set by the prefill
        for o in range(max(len(row) for row in suffixes)):
            todo = [b for b, row in enumerate(suffixes) if o < len(row) and len(row[o]) > 1]
            if not todo:
                continue
            m = max(len(suffixes[b][o]) for b in todo) - 1
            ids = torch.full((n, m), pad_id, dtype=torch.long)
            for b in todo:
                tail = suffixes[b][o][:-1]  # the tokens that predict the option's 2nd..last token
                ids[b, : len(tail)] = torch.tensor(tail)
            ids = ids.to(self.device)
            mask = torch.cat([attend, torch.ones((n, m), dtype=attend.dtype, device=attend.device)], 1)
            steps = torch.arange(m, device=self.device)
            if deltas is not None:  # Qwen: text after the prompt continues at (last M-RoPE position + 1), all 3 axes
                start = attend.long().sum(1, keepdim=True) + deltas.to(self.device)  # valid length + delta
                position_ids = (start + steps).unsqueeze(0).expand(3, -1, -1)
            else:  # LLaVA: positions continue the padded prompt's, as the prefill counted them
                position_ids = (length + steps).unsqueeze(0).expand(n, -1)
            kinds = torch.cat([batch.token_kind, torch.full((n, m), int(TokenKind.TEXT), dtype=batch.token_kind.dtype,
                                                           device=batch.token_kind.device)], 1)
            with self._running(kinds):
                logits = self.model(input_ids=ids, attention_mask=mask, position_ids=position_ids,
                                    cache=cache, use_cache=True).logits  # (n, m, V)
            cache.crop(-m)
            rows, cols, targets, owners = [], [], [], []
            for b in todo:
                for j, t in enumerate(suffixes[b][o][1:]):
                    rows.append(b * m + j)
                    targets.append(t)
                    owners.append(b)
            flat = logits.reshape(n * m, -1)
            lp = token_logprobs(flat, torch.tensor(rows, device=flat.device), torch.tensor(targets, device=flat.device))
            for b, value in zip(owners, lp.cpu().tolist()):
                scores[b, o] += value

    @torch.no_grad()
    def score_options_reference(self, images: Sequence, prompts: Sequence[str], options: Sequence[Sequence[str]], *,
                                system_prompt: str | None = None) -> torch.Tensor:
        """The plain reference :meth:`score_options` checks against: one (image, prompt + option) row per option
        through the whole model, log-softmax over every position. Memory grows with options x vocabulary x
        sequence: for tests and small checks only."""
        suffixes = self._option_suffixes(prompts, options, system_prompt)
        owner = [(b, o) for b in range(len(prompts)) for o in range(len(options[b]))]
        batch = self._with_suffix(self.prepare([images[b] for b, _ in owner], [prompts[b] for b, _ in owner],
                                               system_prompt=system_prompt),
                                  [suffixes[b][o] for b, o in owner])
        logprobs = self.logits(batch).float().log_softmax(dim=-1)
        length = batch.inputs["input_ids"].shape[1]
        scores = torch.full((len(prompts), max(len(o) for o in options)), float("-inf"))
        for row, (b, o) in enumerate(owner):
            suffix = suffixes[b][o]
            positions = torch.arange(length - len(suffix), length, device=logprobs.device)
            scores[b, o] = logprobs[row, positions - 1, torch.tensor(suffix, device=logprobs.device)].sum()
        return scores

    def _generation(self, new_ids: list[int], first_prob: float) -> Generation:
        """A Generation from the generated ids, cut after the first end-of-sequence token."""
        eos = self.model.generation_config.eos_token_id
        eos = set(eos if isinstance(eos, (list, tuple)) else [eos]) - {None}
        for j, t in enumerate(new_ids):
            if t in eos:
                new_ids = new_ids[: j + 1]
                break
        return Generation(text=self.tokenizer.decode(new_ids, skip_special_tokens=True), token_ids=new_ids,
                          first_token_prob=first_prob)

    def _greedy(self, inputs: dict, max_new_tokens: int, **kwargs):
        return self.model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                                   return_dict_in_generate=True, output_logits=True,
                                   pad_token_id=self.tokenizer.pad_token_id, **kwargs)

    @torch.no_grad()
    def generate(self, images: Sequence, prompts: Sequence[str], max_new_tokens: int = 8) -> list[Generation]:
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        batch = self.prepare(images, prompts)
        with self._running(batch.token_kind):
            out = self._greedy(batch.inputs, max_new_tokens)
        prompt_len = batch.inputs["input_ids"].shape[1]
        first_probs = out.logits[0].float().softmax(dim=-1).max(dim=-1).values
        return [self._generation(out.sequences[i, prompt_len:].tolist(), float(first_probs[i]))
                for i in range(len(prompts))]

    @torch.no_grad()
    def prefill(self, images: Sequence, prompts: Sequence[str]) -> Prefill:
        """``generate`` for one new token: it runs the prompt once (with the position ids generate itself
        derives: left padding shifts them, Qwen's M-RoPE adds rope deltas) and stops before running that token,
        so its cache holds exactly the prompt."""
        batch = self.prepare(images, prompts)
        with self._running(batch.token_kind):
            out = self._greedy(batch.inputs, 1)
        # Qwen keeps the M-RoPE offset of the last prompt it prefilled on the model and reuses it for cached
        # steps; keep this prompt's, so another prefill in between cannot shift this one's decode positions
        state = {"cache": out.cache, "rope_deltas": getattr(self.model.model, "rope_deltas", None)}
        return Prefill(first_logits=out.logits[0], batch=batch, state=state)

    @torch.no_grad()
    def decode(self, prefill: Prefill, max_new_tokens: int = 8, *, attention_fn_for=None,
               rerun_last: bool = False) -> list[Generation]:
        """One group: the whole batch (left padding lets every row decode together)."""
        prefill.start_decode(max_new_tokens)
        batch, cache = prefill.batch, prefill.state["cache"]
        # the image is already in the cache: no pixels (the vision tower would look for image tokens in the new ones)
        inputs = {k: v for k, v in batch.inputs.items() if k != "pixel_values"}
        first: list[int] = []
        if rerun_last:
            cache.crop(-1)  # generate runs the uncached last prompt position first, alone, under attention_fn
            budget = max_new_tokens
        else:  # the first token is the prefill's; generate continues from it
            chosen = prefill.first_logits.argmax(-1)
            first = chosen.tolist()
            first_probs = prefill.first_logits.float().softmax(-1).max(-1).values.tolist()
            if max_new_tokens == 1:
                return [self._generation([t], p) for t, p in zip(first, first_probs)]
            inputs = self._append_columns(inputs, chosen[:, None])
            budget = max_new_tokens - 1
        if "rope_deltas" in vars(self.model.model):
            self.model.model.rope_deltas = prefill.state["rope_deltas"]
        rows = list(range(len(prefill.first_logits)))
        hook = self.attention_hook(attention_fn_for(rows)) if attention_fn_for is not None else contextlib.nullcontext()
        with self._running(batch.token_kind), hook:
            out = self._greedy(inputs, budget, cache=cache)
        if rerun_last:
            first_probs = out.logits[0].float().softmax(-1).max(-1).values.tolist()
        return [self._generation(first[i:i + 1] + out.sequences[i, inputs["input_ids"].shape[1]:].tolist(), first_probs[i])
                for i in range(len(first_probs))]

    def _append_columns(self, inputs: dict, ids: torch.Tensor) -> dict:
        """Inputs with (B, k) token ids appended to every row (rows are left-padded: all end at the last column)."""
        out = dict(inputs, input_ids=torch.cat([inputs["input_ids"], ids.to(inputs["input_ids"])], 1),
                   attention_mask=torch.cat([inputs["attention_mask"], torch.ones_like(ids).to(inputs["attention_mask"])], 1))
        if "mm_token_type_ids" in inputs:  # 1 at image tokens, 0 elsewhere
            extra = torch.zeros_like(ids).to(inputs["mm_token_type_ids"])
            out["mm_token_type_ids"] = torch.cat([inputs["mm_token_type_ids"], extra], 1)
        return out

    # -- positions -----------------------------------------------------------------------------
    # how each family's vision tower encodes a patch's place (from the model code of transformers 5.x)
    VISION_POSITION_CODES = {
        "qwen2_vl": "2D RoPE over the patch grid (row, column); no absolute table",
        "qwen2_5_vl": "2D RoPE over the patch grid (row, column), windowed attention; no absolute table",
        "qwen3_vl": "learned absolute table, bilinearly interpolated to the patch grid, plus 2D RoPE",
        "llava": "learned absolute table (CLIP): one row per patch of its fixed grid, row 0 = the CLS token",
    }

    @torch.no_grad()
    def position_ids(self, images: Sequence, prompts: Sequence[str], *,
                     system_prompt: str | None = None) -> PositionIds:
        """The position ids the LM gives each token, from the model's own code (see :class:`PositionIds`).

        Qwen2-VL / Qwen2.5-VL / Qwen3-VL: the model's ``get_rope_index(input_ids, mm_token_type_ids,
        image_grid_thw=..., attention_mask=...)`` on the processor's inputs, the function its forward calls for
        the M-RoPE (t, h, w) ids. LLaVA: nothing public returns its ids (its Llama LM numbers the sequence
        itself), so they are read where the LM uses them: the input of the LM's rotary embedding in a forward of
        the batch, which stops there (no decoder layer runs); CLIP's ``position_embedding`` input in the same
        forward gives the table row each patch reads. Rotary facts (``rope``) come from the text config's
        ``rope_parameters`` and from the model's own rotary embedding, called at the ids and at unit steps of
        each axis (which axis drives each frequency).
        """
        batch = self.prepare(images, prompts, system_prompt=system_prompt)
        vision_config = self.model.config.vision_config
        vision = {"encoding": self.VISION_POSITION_CODES[self.family], "patch_size": int(vision_config.patch_size)}
        if self.family == "llava":
            lm_ids, ape_ids = self._llava_forward_positions(batch)
            ids, axes = lm_ids[None], ("position",)
            side = vision_config.image_size // vision_config.patch_size
            n_images = batch.inputs["pixel_values"].shape[0]
            patches = ape_ids[-side * side:].reshape(side, side)  # the rows before the patches' are CLS
            table = self._clip_embeddings().position_embedding.weight
            vision.update(patch_grids=[(side, side)] * n_images, spatial_merge_size=1, ape_ids=[patches] * n_images,
                          ape_table=table.detach().float().cpu())
            source = (f"{type(self.model.model.language_model).__name__}'s rotary-embedding input in a forward, "
                      "CLIP's position_embedding input")
        else:
            inputs = batch.inputs
            ids, _ = self.model.model.get_rope_index(inputs["input_ids"], inputs["mm_token_type_ids"],
                                                     image_grid_thw=inputs["image_grid_thw"],
                                                     attention_mask=inputs["attention_mask"])
            axes = ("t", "h", "w")
            grid_thw = inputs["image_grid_thw"].cpu()
            vision.update(patch_grids=[(int(t) * int(h), int(w)) for t, h, w in grid_thw.tolist()],
                          spatial_merge_size=int(vision_config.spatial_merge_size), image_grid_thw=grid_thw)
            source = f"{type(self.model.model).__name__}.get_rope_index"
        return PositionIds(ids=ids.cpu(), axes=axes, token_kind=batch.token_kind.cpu(), grids=list(batch.grids),
                           source=source, rope=self._rope_facts(ids, len(axes)), vision=vision)

    def _clip_embeddings(self) -> torch.nn.Module:
        tower = self.model.model.vision_tower
        return tower.embeddings if hasattr(tower, "embeddings") else tower.vision_model.embeddings

    def _llava_forward_positions(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, L) ids the LM's rotary embedding receives and (rows,) ids CLIP's position table is read at, in
        one forward of ``batch`` stopped at the LM's rotary embedding."""

        class Reached(Exception):
            pass

        seen: dict[str, torch.Tensor] = {}

        def on_table(module, args, output):
            seen.setdefault("ape", args[0].detach().reshape(-1).cpu())

        def on_rotary(module, args, kwargs):
            seen["lm"] = (kwargs["position_ids"] if "position_ids" in kwargs else args[1]).detach().cpu()
            raise Reached

        handles = [self._clip_embeddings().position_embedding.register_forward_hook(on_table),
                   self.model.model.language_model.rotary_emb.register_forward_pre_hook(on_rotary, with_kwargs=True)]
        try:
            self.model(**batch.inputs, use_cache=False)
        except Reached:
            pass
        finally:
            for handle in handles:
                handle.remove()
        if "lm" not in seen or "ape" not in seen:
            raise RuntimeError(f"{self.name}: the forward never reached the LM's rotary embedding / CLIP's table")
        return seen["lm"].expand(batch.token_kind.shape).clone(), seen["ape"]

    def _rope_facts(self, ids: torch.Tensor, n_axes: int) -> dict:
        """The LM's rotary construction: config facts, the rotary embedding's cos/sin at ``ids`` and the axis
        that drives each frequency (the embedding called at a unit step of each axis alone)."""
        config = self.lm_config
        params = dict(getattr(config, "rope_parameters", None) or {})
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        rotary = self.model.model.language_model.rotary_emb
        x = torch.zeros(1, dtype=torch.float32, device=self.device)  # only its dtype and device are read
        lm_ids = ids.to(self.device) if n_axes == 3 else ids[0].to(self.device)
        cos, sin = rotary(x, lm_ids)
        probe = torch.eye(n_axes, dtype=torch.long, device=self.device)[:, None, :]  # token j: axis j = 1, others 0
        _, probe_sin = rotary(x, probe if n_axes == 3 else probe[0])
        axis = probe_sin[0, :, : head_dim // 2].abs().argmax(dim=0).cpu()
        section = params.get("mrope_section") if n_axes == 3 else None
        return {"rope_type": params.get("rope_type", "default"),
                "theta": float(params.get("rope_theta", getattr(config, "rope_theta", 10000.0))),
                "head_dim": int(head_dim), "section": tuple(section) if section is not None else None,
                "interleaved": self.family == "qwen3_vl",  # Qwen3-VL's rotary interleaves t/h/w always
                "axis_of_frequency": axis, "cos": cos.float().cpu(), "sin": sin.float().cpu()}

    # -- hooks ---------------------------------------------------------------------------------
    def _visual_tokens_of(self, args, kwargs, output) -> VisualTokens:
        if self.family == "llava":  # (n_images, N, d)
            n_images, n, d = output.shape
            side = math.isqrt(n)
            if side * side != n:
                raise ValueError(f"LLaVA projector gave {n} tokens per image, not a square grid")
            return VisualTokens(tokens=output.reshape(n_images * n, d), grids=[(side, side)] * n_images)
        grid_thw = kwargs.get("grid_thw", args[1] if len(args) > 1 else None)
        merge = self.model.config.vision_config.spatial_merge_size
        grids = [(int(t) * int(h) // merge, int(w) // merge) for t, h, w in grid_thw.tolist()]
        extras = list(getattr(output, "deepstack_features", None) or [])
        return VisualTokens(tokens=output.pooler_output, grids=grids, extras=extras)

    def _write_visual_tokens(self, output, new: VisualTokens, old: VisualTokens):
        if new.tokens.shape != old.tokens.shape or [e.shape for e in new.extras] != [e.shape for e in old.extras]:
            raise ValueError(
                f"a visual hook must keep the shapes of tokens {tuple(old.tokens.shape)} and extras "
                f"{[tuple(e.shape) for e in old.extras]}, got {tuple(new.tokens.shape)} and {[tuple(e.shape) for e in new.extras]}"
            )
        if self.family == "llava":
            return new.tokens.reshape(output.shape)
        output.pooler_output = new.tokens
        if old.extras:
            output.deepstack_features = list(new.extras)
        return output

    @contextlib.contextmanager
    def visual_hook(self, fn: VisualFn) -> Iterator[None]:
        def hook(module, args, kwargs, output):
            old = self._visual_tokens_of(args, kwargs, output)
            return self._write_visual_tokens(output, fn(old), old)

        handle = self._visual_module.register_forward_hook(hook, with_kwargs=True)
        try:
            yield
        finally:
            handle.remove()

    # what vision_position_hook moves, per family (the tower's own position signal, from transformers 5.x)
    VISION_POSITION_SIGNALS: ClassVar[dict[str, str]] = {
        "qwen2_vl": "the 2D rotary (row, column) ids of every vision block",
        "qwen2_5_vl": "the 2D rotary (row, column) ids of every vision block (the attention windows stay with the "
                      "patches' true places)",
        "qwen3_vl": "the interpolated learned position-table rows added to the patches and the 2D rotary ids of "
                    "every vision block",
        "llava": "CLIP's learned position-embedding rows added to the patches (the CLS token keeps row 0)",
    }

    @property
    def vision_position_signal(self) -> str:
        return self.VISION_POSITION_SIGNALS[self.family]

    @contextlib.contextmanager
    def vision_position_hook(self, fn: SlotIndexFn) -> Iterator[None]:
        """Move only the vision tower's own position signal (see :meth:`VLM.vision_position_hook`).

        Qwen2-VL / Qwen2.5-VL / Qwen3-VL: a forward pre-hook on the tower ``model.model.visual`` hands it
        precomputed per-patch position tensors with their rows permuted, through the keyword arguments that
        transformers' vision towers accept instead of computing them (``transformers.vision_utils``):
        ``position_ids`` (the (row, column) ids of the 2D rotary embedding of every block) and, for Qwen3-VL,
        ``interp_indices``/``interp_weights`` (which rows of the learned ``pos_embed`` table, with which bilinear
        weights, are added to each patch). Level of the permutation: the merge window. The tower orders its
        patches window by window (the m x m patches that the merger turns into one LM token are contiguous), so
        LM slot s owns patches m²s ... m²s+m²-1, and the patch at place k of window s gets the position of place
        k of window ``index[s]``: whole windows move, the geometry inside a window stays intact (the merger
        concatenates the same sub-positions in the same order), and the permutation is exactly the LM-level
        slot permutation. Qwen2.5-VL's windowed attention (which patches may attend to which in its windowed
        blocks) is also a layout signal; it stays with the patches' true places (only the rotary ids move).

        LLaVA-1.5 (CLIP): a forward pre-hook on CLIP's embeddings notes the batch size and a forward hook on
        its ``position_embedding`` returns, per image, the table rows permuted ((B, 1+N, d), row 0 = CLS kept,
        patch s reads row 1+``index[s]``), which the embeddings add to the patch embeddings exactly as the
        unpermuted (1, 1+N, d) would be. CLIP has no merge: LM slot s is patch s.

        No parameter and no class is changed; the hooks are removed on exit, also on error."""
        handles: list = []
        try:
            if self.family == "llava":
                batch_size: list[int] = []
                embeddings = self._clip_embeddings()

                def on_embeddings(module, args, kwargs):
                    if kwargs.get("interpolate_pos_encoding"):
                        raise ValueError(f"{self.name}: vision_position_hook does not support interpolate_pos_encoding")
                    pixels = kwargs.get("pixel_values", args[0] if args else None)
                    batch_size.append(int(pixels.shape[0]))

                def on_table(module, args, output):  # output (1, 1+N, d): CLS row, then one row per patch
                    n_images = batch_size.pop()
                    n = output.shape[1] - 1
                    side = math.isqrt(n)
                    index, identity = self._slot_index(fn, [(side, side)] * n_images)
                    if identity:
                        return None
                    local = index.view(n_images, n) - torch.arange(n_images)[:, None] * n  # per image, 0..N-1
                    rows = torch.cat([torch.zeros(n_images, 1, dtype=torch.long), 1 + local], 1).to(output.device)
                    return output[0][rows]  # (B, 1+N, d)

                handles.append(embeddings.register_forward_pre_hook(on_embeddings, with_kwargs=True))
                handles.append(embeddings.position_embedding.register_forward_hook(on_table))
            else:
                handles.append(self.model.model.visual.register_forward_pre_hook(self._qwen_position_pre_hook(fn),
                                                                                 with_kwargs=True))
            yield
        finally:
            for handle in handles:
                handle.remove()

    def _qwen_position_pre_hook(self, fn: SlotIndexFn):
        from transformers.vision_utils import (  # optional heavy dependency: only HF-model paths load transformers
            get_vision_interpolation_indices_and_weights,
            get_vision_position_ids,
        )

        def hook(module, args, kwargs):
            grid_thw = kwargs.get("grid_thw", args[1] if len(args) > 1 else None)
            merge = int(module.spatial_merge_size)
            grids = [(int(t) * int(h) // merge, int(w) // merge) for t, h, w in grid_thw.tolist()]
            index, identity = self._slot_index(fn, grids)
            if identity:
                return None
            units = merge * merge  # patches per LM token, contiguous in the tower's order
            patch = (index[:, None] * units + torch.arange(units)).reshape(-1).to(grid_thw.device)
            kwargs = dict(kwargs)
            ids = kwargs.get("position_ids")
            if ids is None:
                ids = get_vision_position_ids(grid_thw, module.spatial_merge_size)
            kwargs["position_ids"] = ids[patch]
            if self.family == "qwen3_vl":
                rows, weights = kwargs.get("interp_indices"), kwargs.get("interp_weights")
                if rows is None or weights is None:
                    rows, weights = get_vision_interpolation_indices_and_weights(
                        grid_thw, num_grid_per_side=module.num_grid_per_side, mode=module.interpolation_mode,
                        align_corners=module.interpolation_align_corners,
                        spatial_merge_size=module.config.spatial_merge_size)
                kwargs["interp_indices"], kwargs["interp_weights"] = rows[patch], weights[patch]
            return args, kwargs

        return hook

    @torch.no_grad()
    def visual_tokens(self, batch: Batch) -> VisualTokens:
        seen: list[VisualTokens] = []

        def capture(module, args, kwargs, output):  # registered last, so it sees active hooks' results
            seen.append(self._visual_tokens_of(args, kwargs, output))

        handle = self._visual_module.register_forward_hook(capture, with_kwargs=True)
        try:
            if self.family == "llava":
                self.model.model.get_image_features(pixel_values=batch.inputs["pixel_values"])
            else:
                self.model.model.get_image_features(batch.inputs["pixel_values"], batch.inputs["image_grid_thw"])
        finally:
            handle.remove()
        return seen[-1]

    @contextlib.contextmanager
    def attention_hook(self, fn: AttentionFn) -> Iterator[None]:
        attention_modules = [layer.self_attn for layer in self.lm_layers]
        previous_impl = self.lm_config._attn_implementation
        previous_state = [getattr(m, "_spatialkit_hook", None) for m in attention_modules]
        try:
            for m in attention_modules:
                m._spatialkit_hook = (fn, self)
            self.lm_config._attn_implementation = ATTN_NAME
            yield
        finally:
            self.lm_config._attn_implementation = previous_impl
            for m, state in zip(attention_modules, previous_state):
                if state is None:
                    m.__dict__.pop("_spatialkit_hook", None)
                else:
                    m._spatialkit_hook = state

    @torch.no_grad()
    def text_embeddings(self, batch: Batch) -> torch.Tensor:
        embeds = self.model.get_input_embeddings()(batch.inputs["input_ids"])
        return embeds[batch.text_mask]

    def input_embeddings(self) -> torch.nn.Embedding:
        return self.model.get_input_embeddings()

    def output_embeddings(self) -> torch.nn.Module:
        return self.model.get_output_embeddings()

    def location_token_ids(self) -> torch.Tensor:
        """PIN's 16 location bins (the paper's 16x16 grid) as tokens the vocabulary already has: bin k is the
        tokenizer's single-token spelling of k in hexadecimal, "0"..."9", "a"..."f" (:data:`LOCATION_SPELLINGS`).

        Why hexadecimal: decimal 10-15 take two tokens in both tokenizer kinds (Qwen's byte-level BPE splits every
        digit, Llama's SentencePiece was trained with split digits), so decimal bins would cap the grid at 10. One
        character is one token in both: a byte-level BPE holds every byte, a SentencePiece model every character
        of its alphabet or, by byte fallback, the character's byte. A word-start marker "▁" that SentencePiece
        writes alone before the character is dropped (the answer's tokens are appended as ids, never re-tokenized).
        Nothing is added to the vocabulary or the embedding: the model stays exactly as loaded. ValueError if a
        spelling is not one token or two bins share one."""
        if getattr(self, "_location_ids", None) is None:
            ids = []
            for spelling in LOCATION_SPELLINGS:
                found = [t for t in self.tokenizer(spelling, add_special_tokens=False)["input_ids"]
                         if self.tokenizer.decode([t]).strip()]  # a lone word-start marker decodes to nothing
                if len(found) != 1 or self.tokenizer.decode(found).strip() != spelling:
                    raise ValueError(f"{self.name}: the tokenizer spells location bin {spelling!r} as {found} "
                                     "(not one token), so it has no single-token location grid")
                ids.append(found[0])
            if len(set(ids)) != len(ids):
                raise ValueError(f"{self.name}: location bins share tokens: {dict(zip(LOCATION_SPELLINGS, ids))}")
            self._location_ids = torch.tensor(ids, dtype=torch.long)
        return self._location_ids.to(self.device)

    def append_tokens(self, batch: Batch, suffixes) -> Batch:
        return self._with_suffix(batch, [list(s) for s in suffixes])

    def lm_hidden(self, batch: Batch, visual: torch.Tensor | None = None) -> torch.Tensor:
        """The LM's final normed hidden states; ``visual`` is swapped in at the visual hook point."""

        def replace_tokens(vt: VisualTokens) -> VisualTokens:
            return vt if visual is None else vt.replace(tokens=visual.to(vt.tokens.dtype))

        with self.visual_hook(replace_tokens), self._running(batch.token_kind):
            return self.model.model(**batch.inputs, use_cache=False).last_hidden_state
