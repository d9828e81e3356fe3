"""Will it fit? Memory estimates of the notebook steps from a model's config, and checks of notebook
parameters against the loaded model.

    est = estimate_memory(config, batch_size=64, image_size=224, step="score_options", dtype="bfloat16")
    print(est)                      # weights + KV cache + activations + logits, in GiB
    check_against(vlm, layer=P.layer, batch_size=P.batch_size, image_size=P.image_size)

How an estimate is computed (inference, ``torch.no_grad``; every term in bytes of ``dtype`` unless noted;
B = batch size, S = LM sequence = image tokens + ``text_tokens``, d/I/V/L/H/Hkv/hd = the LM's hidden size,
MLP width, vocabulary, layers, heads, KV heads, head size):

* weights: the exact parameter count (the model built on the ``meta`` device: no memory, no download).
* vision tower (runs first, freed before the LM's peak): B images x P patches (Qwen: image tokens x merge²;
  LLaVA: (image/patch)² + 1) x (5 dv + 2 Iv) per block at once, plus LLaVA's kept hidden states of every CLIP
  layer (it reads layer -2), plus the pixel values in float32.
* LM activations (one decoder layer alive at a time): B x S x (4 d + (H + 2 Hkv) hd + 3 I), plus with
  ``attn_implementation="eager"`` the B x H x S² scores and probabilities (float32), plus the boolean mask
  B x S² that the spatialkit attention hook and SDPA with padding build.
* KV cache (steps that keep one): 2 x L x B x S x Hkv x hd.
* ``pin_train`` (one PIN optimizer step, notebook 06: weights frozen, gradients flow back through every LM layer
  to the insert): the LM activations autograd keeps for the backward pass, for all L layers at once,
  B x S x L x (8 d + 3 (H + Hkv) hd + 4 I) (norm inputs and outputs, pre- and post-rotary q/k, v, attention
  output, the MLP's gate, up, activation and product), S including the four coordinate tokens; no weight
  gradients, no optimizer state for the model (PIN's own are a few MB); the logits of the 4 B coordinate
  positions (their float32 copy and gradient too); plus the cached frozen visual tokens of the
  ``cached_images`` training images (image tokens x d each), held for the whole run.
* logits: ``forward`` (``vlm.logits``: the attention probe, the shuffle and normalize hooks) returns
  B x S x V; ``score_options`` computes only the last position's B x V plus float32 chunks of 64 x V;
  ``generate`` keeps float32 B x V per new token; ``score_options_reference`` (the plain per-option
  implementation) B·K x S x V plus two float32 copies.

The total is weights + max(vision tower, LM activations + KV cache + logits) times ``overhead`` (default 1.15:
allocator rounding and fragmentation; the CUDA context, ~0.5 GiB, is outside torch's allocator and not
counted). ``benchmarks/bench_memory.py`` compares it with measured peaks.

Notebook 05's where-probe on an HF model's own visual tokens (host memory: the stored tokens and the probe's fit)
has its own estimate, :func:`estimate_where_probe`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch

from spatialkit.common.params import ParameterError
from spatialkit.models.hf.adapter import family_of
from spatialkit.models.hf.adapter import model_class
from spatialkit.models.hf.adapter import DEFAULT_MAX_PIXELS
import os

GiB = 1024**3
STEPS = ("forward", "score_options", "generate", "score_options_reference", "pin_train")
DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}
OVERHEAD = 1.15


@dataclass
class MemoryEstimate:
    """Bytes per component of one step's peak (see the module docstring for the formulas)."""

    step: str
    batch_size: int
    seq_len: int
    image_tokens: int
    weights: int
    vision: int
    lm_activations: int
    kv_cache: int
    logits: int
    overhead: float = OVERHEAD
    cached: int = 0  # held for the whole run (pin_train: the frozen visual tokens of the training images)

    @property
    def running(self) -> int:
        """Bytes on top of the weights at the step's peak (overhead included)."""
        return int((max(self.vision, self.lm_activations + self.kv_cache + self.logits) + self.cached) * self.overhead)

    @property
    def total(self) -> int:
        return self.weights + self.running

    def as_row(self) -> dict:
        g = lambda b: round(b / GiB, 2)  # noqa: E731
        return {"step": self.step, "batch_size": self.batch_size, "seq_len": self.seq_len, "weights_GiB": g(self.weights),
                "vision_GiB": g(self.vision), "lm_act_GiB": g(self.lm_activations), "kv_GiB": g(self.kv_cache),
                "logits_GiB": g(self.logits), "cached_GiB": g(self.cached), "total_GiB": g(self.total)}

    def __str__(self) -> str:
        r = self.as_row()
        return (f"{self.step} at batch_size {self.batch_size} (S = {self.seq_len} tokens, {self.image_tokens} image): "
                f"{r['total_GiB']} GiB = weights {r['weights_GiB']} + max(vision {r['vision_GiB']}, LM activations "
                f"{r['lm_act_GiB']} + KV cache {r['kv_GiB']} + logits {r['logits_GiB']}"
                + (f" + cached {r['cached_GiB']}" if self.cached else "") + f") x {self.overhead}")


# -- config facts ----------------------------------------------------------------------------------
def _family(config) -> str:

    return family_of(config)


def parameter_count(config) -> int:
    """Exact parameter count of the model a config describes (built on the meta device: no memory)."""

    with torch.device("meta"):
        model = model_class(_family(config))._from_config(config)
    seen, total = set(), 0
    for p in model.parameters():  # tied weights once
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    return total


def _smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """Qwen's processor resize rule: sides multiples of ``factor``, h*w within [min_pixels, max_pixels]."""
    h_bar = max(factor, round(height / factor) * factor)
    w_bar = max(factor, round(width / factor) * factor)
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def image_tokens(config, image_size: int | tuple[int, int] = 224, *, min_pixels: int | None = None,
                 max_pixels: int | None = None) -> tuple[int, int]:
    """(LM image tokens, vision-tower patches) of one square (or (h, w)) image.

    Qwen: the processor's resize (``min_pixels`` default 56², ``max_pixels`` default
    :data:`spatialkit.models.hf.adapter.DEFAULT_MAX_PIXELS`), one token per (patch x merge)² pixels. LLaVA: the
    config's fixed square, whatever ``image_size`` is (plus the CLS patch in the tower).
    """

    h, w = (image_size, image_size) if isinstance(image_size, int) else image_size
    vision = config.vision_config
    if _family(config) == "llava":
        side = vision.image_size // vision.patch_size
        return side * side, side * side + 1
    merge = vision.spatial_merge_size
    factor = vision.patch_size * merge
    h_bar, w_bar = _smart_resize(h, w, factor, min_pixels or 56 * 56, max_pixels or DEFAULT_MAX_PIXELS)
    tokens = (h_bar // factor) * (w_bar // factor)
    return tokens, tokens * merge * merge


def _lm_shape(config) -> dict:
    text = config.text_config
    heads = text.num_attention_heads
    hd = getattr(text, "head_dim", None) or text.hidden_size // heads
    return dict(d=text.hidden_size, I=text.intermediate_size, V=text.vocab_size, L=text.num_hidden_layers, H=heads,
                Hkv=getattr(text, "num_key_value_heads", None) or heads, hd=hd)


def _vision_shape(config) -> dict:
    v = config.vision_config
    if _family(config) == "qwen2_vl":
        dv = v.embed_dim
        return dict(dv=dv, Iv=int(dv * v.mlp_ratio), depth=v.depth, keeps_all=False)
    if _family(config) == "llava":
        return dict(dv=v.hidden_size, Iv=v.intermediate_size, depth=v.num_hidden_layers, keeps_all=True)
    return dict(dv=v.hidden_size, Iv=v.intermediate_size, depth=v.depth, keeps_all=False)


def _dtype_bytes(dtype) -> int:
    if isinstance(dtype, torch.dtype):
        dtype = str(dtype).removeprefix("torch.")
    if dtype not in DTYPE_BYTES:
        raise ValueError(f"dtype must be one of {sorted(DTYPE_BYTES)} (or the torch dtype), got {dtype!r}")
    return DTYPE_BYTES[dtype]


# -- the estimate ----------------------------------------------------------------------------------
def estimate_memory(model_config, batch_size: int, *, image_size: int | tuple[int, int] = 224,
                    image_tokens_per_image: int | None = None, text_tokens: int = 64, step: str = "score_options",
                    dtype="bfloat16", options: int = 4, option_tokens: int = 1, max_new_tokens: int = 8,
                    attn_implementation: str = "sdpa", min_pixels: int | None = None, max_pixels: int | None = None,
                    params: int | None = None, overhead: float = OVERHEAD, cached_images: int = 0) -> MemoryEstimate:
    """Peak memory of one notebook step at ``batch_size`` prompts (one image each), from the config alone.

    ``model_config``: a transformers config of a supported family (or a loaded model / HFVLM: its config and
    parameter count). ``image_tokens_per_image`` overrides the token count derived from ``image_size`` and the
    pixel bounds. ``options``/``option_tokens``: per prompt, for ``score_options`` (a KV cache is kept only when
    an option has more than one token) and the reference. ``step``: one of :data:`STEPS`. ``cached_images``
    (``pin_train``): training images whose frozen visual tokens stay on the device.
    """
    if step not in STEPS:
        raise ValueError(f"step must be one of {STEPS}, got {step!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    config = model_config
    if hasattr(config, "model") and hasattr(config.model, "config"):  # an HFVLM
        params = params if params is not None else sum(p.numel() for p in config.model.parameters())
        config = config.model.config
    elif isinstance(config, torch.nn.Module):
        params = params if params is not None else sum(p.numel() for p in config.parameters())
        config = config.config
    nbytes = _dtype_bytes(dtype)
    params = parameter_count(config) if params is None else params
    tokens, patches = image_tokens(config, image_size, min_pixels=min_pixels, max_pixels=max_pixels)
    if image_tokens_per_image is not None:
        merge = 1 if _family(config) == "llava" else config.vision_config.spatial_merge_size ** 2
        tokens, patches = image_tokens_per_image, image_tokens_per_image * merge + (1 if merge == 1 else 0)
    lm, vis = _lm_shape(config), _vision_shape(config)
    B = batch_size
    rows = B * options if step == "score_options_reference" else B
    S = tokens + text_tokens + (option_tokens if step == "score_options_reference" else 0)
    if step == "generate":
        S += max_new_tokens
    if step == "pin_train":
        S += 4  # the four coordinate tokens of the answer

    # vision tower: one block's transients, LLaVA's kept hidden states, float32 pixels (Qwen: 3*2*14*14 per patch)
    pixel_floats = patches * (3 * 2 * 14 * 14 if _family(config) != "llava" else 3 * 14 * 14)
    vision = rows * patches * (5 * vis["dv"] + 2 * vis["Iv"]) * nbytes + rows * pixel_floats * 4
    if vis["keeps_all"]:
        vision += rows * patches * vis["dv"] * (vis["depth"] + 1) * nbytes

    if step == "pin_train":  # every layer's saved activations at once (backward to the insert)
        per_layer = 8 * lm["d"] + 3 * (lm["H"] + lm["Hkv"]) * lm["hd"] + 4 * lm["I"]
        act = lm["L"] * rows * S * per_layer * nbytes
        if attn_implementation == "eager":
            act += lm["L"] * rows * lm["H"] * S * S * nbytes * 2
    else:
        act = rows * S * (4 * lm["d"] + (lm["H"] + 2 * lm["Hkv"]) * lm["hd"] + 3 * lm["I"]) * nbytes
        if attn_implementation == "eager":
            act += rows * lm["H"] * S * S * 4 * 2
    act += rows * S * S  # boolean mask

    keeps_cache = step == "generate" or (step == "score_options" and option_tokens > 1)
    kv = 2 * lm["L"] * rows * S * lm["Hkv"] * lm["hd"] * nbytes if keeps_cache else 0

    V = lm["V"]
    if step == "forward":
        logits = rows * S * V * nbytes
    elif step == "score_options":
        logits = B * V * nbytes + 64 * V * 4 + (B * option_tokens * V * nbytes if option_tokens > 1 else 0)
    elif step == "generate":
        logits = B * V * 4 * (max_new_tokens + 1)
    elif step == "pin_train":  # the 4 coordinate positions: logits, float32 copy, gradient
        logits = 4 * B * V * (nbytes + 8)
    else:  # the reference: full logits, their float32 copy and its log-softmax
        logits = rows * S * V * (nbytes + 8)
    cached = cached_images * tokens * lm["d"] * nbytes if step == "pin_train" else 0
    return MemoryEstimate(step=step, batch_size=B, seq_len=S, image_tokens=tokens, weights=params * nbytes,
                          vision=int(vision), lm_activations=int(act), kv_cache=int(kv), logits=int(logits),
                          overhead=overhead, cached=int(cached))


def estimate_pin_cost(model_config, *, steps: int, batch_size: int, n_train_images: int, n_test_examples: int,
                      image_size: int | tuple[int, int] = 224, text_tokens: int = 40, dtype="bfloat16",
                      variants: int = 2, tflops: float = 400.0, min_pixels: int | None = None,
                      max_pixels: int | None = None, params: int | None = None) -> dict:
    """Memory and time of PIN (notebook 06) on an HF model, from its config alone: a back-of-envelope estimate.

    Memory: the ``pin_train`` step (:func:`estimate_memory`), the training images' visual tokens cached.
    Time: matmul FLOPs only (attention's S² terms, the optimizer and data preparation left out), at an assumed
    ``tflops`` TFLOP/s (400 ≈ 40 % of an H100/H200's dense bfloat16 peak; an assumption, not a measurement).
    One training step: the LM forward (2 N_lm per token) and the backward to its input only (2 N_lm: weights are
    frozen, so no weight gradients), plus the vision tower's forward (2 N_vision per patch; it runs again every
    step, its output replaced by the cached tokens + insert); encoding the training images once; decoding a
    test example: four LM forwards of its prompt (the coordinates chosen so far appended; no cache) and one
    vision pass. ``variants``: PIN trainings (and box decodings) the notebook runs on the model, plus one decoding
    of the frozen model. Returns {"memory": MemoryEstimate, "train_step_s", "train_s", "encode_s", "decode_s",
    "total_s", "n_lm", "n_vision", "tokens_per_example", "patches_per_image"}.
    """
    config = model_config.model.config if hasattr(model_config, "model") else model_config
    memory = estimate_memory(config, batch_size, image_size=image_size, text_tokens=text_tokens, step="pin_train",
                             dtype=dtype, min_pixels=min_pixels, max_pixels=max_pixels, params=params,
                             cached_images=n_train_images)
    lm, vis = _lm_shape(config), _vision_shape(config)
    n_lm = lm["L"] * (2 * lm["d"] * lm["H"] * lm["hd"] + 2 * lm["d"] * lm["Hkv"] * lm["hd"] + 3 * lm["d"] * lm["I"])
    n_vision = vis["depth"] * (4 * vis["dv"] ** 2 + 2 * vis["dv"] * vis["Iv"])
    tokens, patches = image_tokens(config, image_size, min_pixels=min_pixels, max_pixels=max_pixels)
    seq = tokens + text_tokens + 4
    rate = tflops * 1e12
    step_s = (4 * n_lm * batch_size * seq + 2 * n_vision * batch_size * patches) / rate
    encode_s = 2 * n_vision * n_train_images * patches / rate
    decode_s = n_test_examples * (4 * 2 * n_lm * seq + 2 * n_vision * patches) / rate
    total = variants * (steps * step_s + encode_s) + (variants + 1) * decode_s
    return {"memory": memory, "train_step_s": step_s, "train_s": variants * steps * step_s, "encode_s": encode_s,
            "decode_s": (variants + 1) * decode_s, "total_s": total, "n_lm": n_lm, "n_vision": n_vision,
            "tokens_per_example": seq, "patches_per_image": patches}


def estimate_where_probe(model_config, n_scenes: int, n_train: int, *, dims: int | None = 1024,
                         image_size: int | tuple[int, int] = 224, batch_size: int = 8, dtype="bfloat16",
                         min_pixels: int | None = None, max_pixels: int | None = None, params: int | None = None,
                         overhead: float = OVERHEAD) -> dict:
    """Memory of notebook 05's where-probe on an HF model's own visual tokens, from its config alone (bytes).

    ``spatialkit.analysis.where_probe.visual_patch_features(..., dims=dims)`` stores each of ``n_scenes``
    images' P image tokens reduced to k = min(``dims``, d) principal components (``dims=None``: the full LM
    width d), float32 on the host; the probe (``probe_where``) fits on the ``n_train`` scenes' rows and predicts
    every scene. Returns {"image_tokens": P, "width": d, "dims": k, "device": weights + the vision tower at
    ``batch_size`` images + one batch of tokens in float64 and the PCA's d x d sums (eigh workspace included),
    "features": n_scenes P k x 4, "fit": the probe's peak beyond the features, "host": features + fit}:

    * fit: the training rows' float32 copy, their float64 copy, the standardised float64 copy and one float64
      temporary (28 bytes per train element);
    * predict (scene by index set: the train rows, then the test rows): float64 copy, centred, standardised
      (24 bytes per element); the fit's term is the larger one unless the test set is much larger.

    The host terms and the PCA's are multiplied by ``overhead``. LLaVA-1.5-7B, 2,000 scenes (1,000 training):
    ``dims=None`` needs ~91 GiB of host memory, ``dims=1024`` ~23 GiB (the device ~15 GiB either way).
    """
    if isinstance(n_scenes, bool) or n_scenes < 1 or not 0 < n_train < n_scenes:
        raise ValueError(f"need n_scenes >= 1 and 0 < n_train < n_scenes, got {n_scenes}, {n_train}")
    if dims is not None and (isinstance(dims, bool) or not isinstance(dims, int) or dims < 1):
        raise ValueError(f"dims must be None or an int >= 1, got {dims!r}")
    vision = estimate_memory(model_config, batch_size, image_size=image_size, step="forward", dtype=dtype,
                             min_pixels=min_pixels, max_pixels=max_pixels, params=params, overhead=overhead)
    config = model_config
    if hasattr(config, "model") and hasattr(config.model, "config"):
        config = config.model.config
    elif isinstance(config, torch.nn.Module):
        config = config.config
    d = _lm_shape(config)["d"]
    tokens = vision.image_tokens
    k = d if dims is None else min(dims, d)
    pca = (batch_size * tokens * d * 8 * 2 + 4 * d * d * 8) if k < d else 0
    device = vision.weights + int((vision.vision + batch_size * tokens * d * _dtype_bytes(dtype) + pca) * overhead)
    element = tokens * k
    features = n_scenes * element * 4
    fit = max(28 * n_train, 24 * (n_scenes - n_train)) * element
    return {"image_tokens": tokens, "width": d, "dims": k, "device": device, "features": int(features * overhead),
            "fit": int(fit * overhead), "host": int((features + fit) * overhead)}


def largest_batch(free_bytes: int, *, include_weights: bool = True, limit: int = 1 << 16, **estimate_kwargs) -> int:
    """The largest batch size whose estimate fits in ``free_bytes`` (0 if not even one prompt fits).
    ``include_weights``: False when the weights already sit in memory (a loaded model)."""
    def need(b):
        est = estimate_memory(batch_size=b, **estimate_kwargs)
        return est.total if include_weights else est.running

    if need(1) > free_bytes:
        return 0
    low, high = 1, 2
    while high <= limit and need(high) <= free_bytes:
        low, high = high, high * 2
    high = min(high, limit + 1)
    while high - low > 1:  # need(low) fits, need(high) does not (or high is past the limit)
        mid = (low + high) // 2
        low, high = (mid, high) if need(mid) <= free_bytes else (low, mid)
    return low


def free_memory(device) -> int:
    """Bytes free for new tensors on ``device``: CUDA ``mem_get_info`` plus what torch's caching allocator
    holds unused; on the CPU the kernel's MemAvailable."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass

    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


# -- parameters against the loaded model -----------------------------------------------------------
def check_against(vlm, *, layer: int | None = None, batch_size: int | None = None, image_size: int | None = None,
                  steps: tuple[str, ...] = ("score_options",), text_tokens: int = 64, options: int = 4,
                  option_tokens: int = 1, max_new_tokens: int = 8, free_bytes: int | None = None,
                  notebook: str | None = None, cached_images: int = 0) -> dict:
    """Check notebook parameters against the loaded model; a one-line ``ParameterError`` on the first bad one.

    ``layer``: one of the model's LM layers, or -1 (:meth:`spatialkit.models.vlm.VLM.check_layer`).
    ``batch_size`` (with ``image_size``, default 224): every step in ``steps`` must fit in the free memory of the
    model's device (``free_bytes`` overrides the measurement; the weights already sit there); the error names
    the largest batch size that fits. Organism models (no HF config) skip the memory check. ``cached_images``:
    see :func:`estimate_memory` (``pin_train``).
    Returns what was checked: {"layer": ..., "image_tokens": ..., "estimates": [MemoryEstimate, ...]}.
    """
    where = f"{notebook}: " if notebook else ""
    out: dict = {}
    if layer is not None:
        try:
            out["layer"] = vlm.check_layer(layer)
        except ParameterError as err:
            raise ParameterError(where + str(err)) from None
    config = getattr(getattr(vlm, "model", None), "config", None)
    if batch_size is None or config is None or getattr(config, "model_type", None) not in (
            "qwen2_vl", "qwen2_5_vl", "qwen3_vl", "llava"):
        return out
    size = image_size or 224
    processor = getattr(getattr(vlm, "processor", None), "image_processor", None)
    bounds = {}
    if processor is not None and vlm.family != "llava":
        bounds = dict(min_pixels=processor.size["shortest_edge"], max_pixels=processor.size["longest_edge"])
    dtype = str(vlm.dtype).removeprefix("torch.")
    free = free_memory(vlm.device) if free_bytes is None else free_bytes
    params = sum(p.numel() for p in vlm.model.parameters())
    kwargs = dict(model_config=config, image_size=size, text_tokens=text_tokens, dtype=dtype, options=options,
                  option_tokens=option_tokens, max_new_tokens=max_new_tokens, params=params,
                  attn_implementation=getattr(vlm.lm_config, "_attn_implementation", "sdpa"),
                  cached_images=cached_images, **bounds)
    out["estimates"] = []
    for step in steps:
        est = estimate_memory(batch_size=batch_size, step=step, **kwargs)
        out["image_tokens"] = est.image_tokens
        out["estimates"].append(est)
        if est.running > free:
            best = largest_batch(free, include_weights=False, step=step, **kwargs)
            raise ParameterError(
                f"{where}parameter 'batch_size' = {batch_size} is invalid for {vlm.name} on {vlm.device}: {step} needs "
                f"~{est.running / GiB:.1f} GiB beyond the weights (KV cache {est.kv_cache / GiB:.1f}, activations "
                f"{est.lm_activations / GiB:.1f}, logits {est.logits / GiB:.1f}, vision {est.vision / GiB:.1f}) but "
                f"{free / GiB:.1f} GiB are free; largest that fits: {best}"
                + ("" if best else " (not even 1: a smaller image_size / max_pixels or dtype)"))
    return out


# -- published configs (no weights here: the config.json values as published) ----------------------
def published_config(name: str):
    """The config of a published checkpoint, written out from its hub config.json (for estimates offline):
    "Qwen2-VL-7B-Instruct", "Qwen2.5-VL-7B-Instruct", "Qwen3-VL-8B-Instruct", "llava-1.5-7b-hf"."""
    from transformers import LlavaConfig, Qwen2_5_VLConfig, Qwen2VLConfig, Qwen3VLConfig  # optional heavy dependency: only HF-model paths load transformers

    special = dict(image_token_id=151655, video_token_id=151656, vision_start_token_id=151652, vision_end_token_id=151653)
    qwen_text = dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                     num_key_value_heads=4, vocab_size=152064, max_position_embeddings=32768, tie_word_embeddings=False,
                     rope_parameters={"rope_type": "default", "mrope_section": [16, 24, 24], "rope_theta": 1e6})
    if name == "Qwen2-VL-7B-Instruct":
        return Qwen2VLConfig(text_config=qwen_text, vision_config=dict(
            depth=32, embed_dim=1280, hidden_size=3584, num_heads=16, mlp_ratio=4, patch_size=14, spatial_merge_size=2,
            temporal_patch_size=2), tie_word_embeddings=False, **special)
    if name == "Qwen2.5-VL-7B-Instruct":
        return Qwen2_5_VLConfig(text_config=qwen_text, vision_config=dict(
            depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=3584, patch_size=14,
            spatial_merge_size=2, temporal_patch_size=2, window_size=112, fullatt_block_indexes=[7, 15, 23, 31]),
            tie_word_embeddings=False, **special)
    if name == "Qwen3-VL-8B-Instruct":
        text = dict(hidden_size=4096, intermediate_size=12288, num_hidden_layers=36, num_attention_heads=32,
                    num_key_value_heads=8, head_dim=128, vocab_size=151936, max_position_embeddings=262144,
                    tie_word_embeddings=False,
                    rope_parameters={"rope_type": "default", "mrope_section": [24, 20, 20], "mrope_interleaved": True,
                                     "rope_theta": 5e6})
        return Qwen3VLConfig(text_config=text, vision_config=dict(
            depth=27, hidden_size=1152, intermediate_size=4304, num_heads=16, out_hidden_size=4096, patch_size=16,
            spatial_merge_size=2, temporal_patch_size=2, num_position_embeddings=2304, deepstack_visual_indexes=[8, 16, 24]),
            tie_word_embeddings=False, **special)
    if name == "llava-1.5-7b-hf":
        text = dict(model_type="llama", hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                    num_attention_heads=32, num_key_value_heads=32, vocab_size=32064, max_position_embeddings=4096)
        vision = dict(model_type="clip_vision_model", hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                      num_attention_heads=16, image_size=336, patch_size=14, projection_dim=768)
        return LlavaConfig(text_config=text, vision_config=vision, image_token_id=32000, projector_hidden_act="gelu",
                           vision_feature_layer=-2, vision_feature_select_strategy="default", image_seq_length=576)
    raise ValueError(f"no published config {name!r}; known: Qwen2-VL-7B-Instruct, Qwen2.5-VL-7B-Instruct, "
                     "Qwen3-VL-8B-Instruct, llava-1.5-7b-hf")


PUBLISHED_MODELS = ("Qwen2-VL-7B-Instruct", "Qwen2.5-VL-7B-Instruct", "Qwen3-VL-8B-Instruct", "llava-1.5-7b-hf")
