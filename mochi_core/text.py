"""T5 v1.1 text encoding for Mochi: tokenizer, encoder loading in every published layout, the official prompt rules.

Semantics of genmoai/mochi ``src/genmo/mochi_preview/pipelines.py`` (``T5ModelFactory``,
``get_conditioning_for_prompts``):

- tokenizer of ``google/t5-v1_1-xxl``: right padding to 256 tokens, EOS (id 1) appended, longer prompts truncated
  (the last kept token is the EOS), attention mask returned;
- an empty prompt (``""``) gets ids and mask zeroed, so it contributes no text token (the official unconditional
  branch; ComfyUI instead keeps one EOS token, which is not the same);
- the encoder is transformers' ``T5EncoderModel`` built from a configuration derived from the weight shapes
  (so a tiny T5 loads exactly like T5-XXL); its output ``last_hidden_state`` (after the final norm) is the feature.

Precision: the encoder computes in float32 by default on every device (the official code runs T5 in fp32 and
asserts fp32 features; T5 in fp16 overflows). Weights stay in their stored dtype (fp16, fp8, scaled fp8, the
GGUF block types of a ``.gguf`` file, the embedding included) or the requested ``storage_dtype`` and are cast
layer by layer on use (:mod:`mochi_core.ops`). ``dtype=torch.bfloat16``
is accepted on CUDA to save activation memory; ``float16`` is refused.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from . import ops, quants
from .errors import InvalidInputError, MissingBackendError, UnsupportedCheckpointError
from .finite import check_finite, verify_weights, weight_origin
from .formats.io import open_checkpoint
from .formats.t5 import T5Layout, T5Shape, inspect_t5
from .options import T5Options, renamed
from .precision import FLOAT8_DTYPES, dtype_name, storage_dtype_for

__all__ = ["MAX_T5_TOKENS", "T5Tokenizer", "TextEncoder", "find_tokenizer", "load_tokenizer", "load_text_encoder"]

logger = logging.getLogger(__name__)

#: Text tokens per prompt (official MAX_T5_TOKEN_LENGTH).
MAX_T5_TOKENS = 256
TOKENIZER_ENV = "MOCHI_T5_TOKENIZER"
_COMFY_SUBDIR = ("text_encoders", "t5_tokenizer")
_WHERE_TO_PUT_IT = (
    "pass tokenizer=<path> (CLI: --tokenizer PATH) pointing to the google/t5-v1_1-xxl tokenizer "
    "(a folder or file: tokenizer.json or spiece.model), or set the environment variable "
    f"{TOKENIZER_ENV}, or run inside ComfyUI, which bundles it in comfy/text_encoders/t5_tokenizer"
)

# ----------------------------------------------------------------------------------------------
# Tokenizer
# ----------------------------------------------------------------------------------------------


def _comfy_tokenizer_dirs() -> list[Path]:
    """Tokenizer folders of a ComfyUI already imported in this process (never imports ComfyUI)."""
    dirs: list[Path] = []
    comfy = sys.modules.get("comfy")
    for p in list(getattr(comfy, "__path__", []) or []):
        dirs.append(Path(p).joinpath(*_COMFY_SUBDIR))
    folder_paths = sys.modules.get("folder_paths")
    fp_file = getattr(folder_paths, "__file__", None)
    if fp_file:
        dirs.append(Path(fp_file).parent.joinpath("comfy", *_COMFY_SUBDIR))
    return dirs


def _tokenizer_file(path: Path) -> Path | None:
    if path.is_file():
        return path
    for name in ("tokenizer.json", "spiece.model"):
        if (path / name).is_file():
            return path / name
    return None


def find_tokenizer(tokenizer: str | os.PathLike[str] | None = None) -> Path:
    """The tokenizer file to use: ``tokenizer`` (file or folder), else ``$MOCHI_T5_TOKENIZER``, else the one
    bundled with the running ComfyUI. Raises :class:`InvalidInputError` saying where to put it."""
    env = os.environ.get(TOKENIZER_ENV)
    if tokenizer is not None:
        p = Path(tokenizer).expanduser()
        found = _tokenizer_file(p) if p.exists() else None
        problem = f"tokenizer={str(tokenizer)!r}: no tokenizer.json or spiece.model there; {_WHERE_TO_PUT_IT}"
    elif env:
        found = _tokenizer_file(Path(env).expanduser())
        problem = f"${TOKENIZER_ENV}={env!r} holds no tokenizer.json or spiece.model"
    else:
        dirs = (d for d in _comfy_tokenizer_dirs() if d.is_dir())
        found = next((f for f in map(_tokenizer_file, dirs) if f is not None), None)
        problem = f"no T5 tokenizer found: {_WHERE_TO_PUT_IT}"
    if found is None:
        raise InvalidInputError(problem)
    return found


class T5Tokenizer:
    """The T5 v1.1 SentencePiece tokenizer, from ``tokenizer.json`` (``tokenizers``) or ``spiece.model``.

    Call it with a list of prompts: returns ``(ids (B, L) int64, mask (B, L) bool, counts)`` where ``counts`` are
    the token counts before truncation (EOS included).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.eos_id = 1
        self.pad_id = 0
        eos = self._load_json() if self.path.suffix == ".json" else self._load_spiece()
        if eos is not None and eos >= 0:
            self.eos_id = int(eos)

    def _unreadable(self, exc: BaseException) -> InvalidInputError:
        return InvalidInputError(
            f"tokenizer file {str(self.path)!r} cannot be read ({type(exc).__name__}: {exc}); {_WHERE_TO_PUT_IT}"
        )

    def _load_json(self) -> int | None:
        """``tokenizer.json`` through the ``tokenizers`` package; returns the EOS id."""
        try:
            from tokenizers import Tokenizer
        except ImportError as exc:
            raise MissingBackendError(
                f"reading {self.path.name} needs the 'tokenizers' package (pip install tokenizers)"
            ) from exc
        try:
            self._tok = Tokenizer.from_file(str(self.path))
        # the tokenizers library reports a malformed file with a plain Exception (no subclass to catch)
        except Exception as exc:
            raise self._unreadable(exc) from exc
        self._tok.no_padding()
        self._tok.no_truncation()
        self._encode = lambda text: self._tok.encode(text, add_special_tokens=False).ids
        return self._tok.token_to_id("</s>")

    def _load_spiece(self) -> int | None:
        """``spiece.model`` through ``sentencepiece``; returns the EOS id."""
        try:
            import sentencepiece as spm
        except ImportError as exc:
            raise MissingBackendError(
                f"reading {self.path.name} needs the 'sentencepiece' package (pip install sentencepiece)"
            ) from exc
        try:
            self._sp = spm.SentencePieceProcessor(model_file=str(self.path))
        except (OSError, RuntimeError, ValueError) as exc:  # sentencepiece raises these on bad files
            raise self._unreadable(exc) from exc
        self._encode = lambda text: list(self._sp.encode(text))
        return int(self._sp.eos_id())

    def token_ids(self, text: str) -> list[int]:
        """Ids of ``text`` with the EOS appended, untruncated (official: ``tokenizer(text).input_ids``)."""
        return [int(i) for i in self._encode(text)] + [self.eos_id]

    def __call__(
        self, prompts: Sequence[str], max_length: int = MAX_T5_TOKENS
    ) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
        ids = torch.full((len(prompts), max_length), self.pad_id, dtype=torch.int64)
        mask = torch.zeros((len(prompts), max_length), dtype=torch.bool)
        counts: list[int] = []
        for b, text in enumerate(prompts):
            toks = self.token_ids(text)
            counts.append(len(toks))
            if len(toks) > max_length:
                logger.warning(
                    "prompt %d has %d T5 tokens; only the first %d are used (%d dropped, EOS kept)",
                    b,
                    len(toks),
                    max_length,
                    len(toks) - max_length,
                )
                toks = toks[: max_length - 1] + [self.eos_id]
            ids[b, : len(toks)] = torch.tensor(toks, dtype=torch.int64)
            mask[b, : len(toks)] = True
        return ids, mask, counts


def load_tokenizer(tokenizer: str | os.PathLike[str] | None = None) -> T5Tokenizer:
    """:class:`T5Tokenizer` from the location :func:`find_tokenizer` resolves."""
    return T5Tokenizer(find_tokenizer(tokenizer))


# ----------------------------------------------------------------------------------------------
# Encoder
# ----------------------------------------------------------------------------------------------


class _CastEmbedding(nn.Module):
    """Token embedding kept in its storage dtype; the looked-up rows are cast to the compute dtype.

    ``quant``: the rows are GGUF blocks (``weight`` uint8 (vocab, bytes per row)); only the looked-up rows are
    expanded (:func:`mochi_core.quants.dequantize`).
    """

    def __init__(self, weight: torch.Tensor, compute_dtype: torch.dtype, quant: str | None = None) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.compute_dtype = compute_dtype
        self.quant = quant
        self.width = 0
        if quant is not None:
            q = quants.quant_type(quant)
            self.width = weight.shape[1] // q.type_size * q.block_size

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """ids (B, L) -> (B, L, d_model) in the compute dtype."""
        rows = self.weight[ids.to(self.weight.device)].to(ids.device)
        if self.quant is not None:
            return quants.dequantize(rows, self.quant, (*ids.shape, self.width), self.compute_dtype)
        return rows.to(self.compute_dtype)


class _FeedForward(nn.Module):
    """T5 feed-forward without transformers' cast of the hidden state to ``wo``'s storage dtype.

    Gated (v1.1): wo(act(wi_0(x)) * wi_1(x)); plain (v1.0): wo(act(wi(x))). ``act`` is transformers' own
    (``gelu_new``, the tanh GELU, for v1.1).
    """

    def __init__(self, orig: nn.Module) -> None:
        super().__init__()
        self.gated = hasattr(orig, "wi_0")
        if self.gated:
            self.wi_0, self.wi_1 = orig.wi_0, orig.wi_1
        else:
            self.wi = orig.wi
        self.wo = orig.wo
        self.act = orig.act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gated:
            return self.wo(self.act(self.wi_0(x)) * self.wi_1(x))
        return self.wo(self.act(self.wi(x)))


def _build_model(shape: T5Shape) -> nn.Module:
    """An empty (meta-device) ``T5EncoderModel`` with cast-on-use Linears."""
    from transformers import T5Config, T5EncoderModel

    config = T5Config(**shape.config_kwargs(), attn_implementation="eager")
    with torch.device("meta"):
        model = T5EncoderModel(config)
    model.eval()
    ops.replace_linears(model)
    for block in model.encoder.block:
        ff_layer = block.layer[-1]
        ff_layer.DenseReluDense = _FeedForward(ff_layer.DenseReluDense)
    return model


def _resolve(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    mod_name, _, attr = name.rpartition(".")
    return model.get_submodule(mod_name), attr


class TextEncoder:
    """A loaded T5 encoder plus its tokenizer. ``encode(prompts)`` -> ``(feat (B, 256, D) float32, mask (B, 256) bool)``.

    Attributes: ``model`` (transformers ``T5EncoderModel``), ``tokenizer`` (:class:`T5Tokenizer` or None until
    needed), ``device``, ``dtype`` (compute dtype), ``shape`` (:class:`~mochi_core.formats.t5.T5Shape`),
    ``format_name`` (layout of the file it came from).
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: T5Tokenizer | None,
        *,
        device: torch.device,
        dtype: torch.dtype,
        shape: T5Shape,
        format_name: str = "",
        tokenizer_path: str | os.PathLike[str] | None = None,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.device = device
        self.dtype = dtype
        self.shape = shape
        self.format_name = format_name
        self._tokenizer_path = tokenizer_path

    @property
    def nbytes(self) -> int:
        """Bytes of the weights as stored."""
        return ops.weight_nbytes(self.model)

    def tokenize(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Official tokenization with the empty-prompt rule: ``(ids (B, 256) int64, mask (B, 256) bool)``."""
        if isinstance(prompts, str) or not all(isinstance(p, str) for p in prompts) or not prompts:
            raise InvalidInputError("prompts must be a non-empty list of strings")
        if self.tokenizer is None:
            self.tokenizer = load_tokenizer(self._tokenizer_path)
        ids, mask, _ = self.tokenizer(list(prompts), MAX_T5_TOKENS)
        for b, text in enumerate(prompts):
            if text == "":  # official: an empty prompt carries no text token at all
                ids[b] = 0
                mask[b] = False
        return ids, mask

    @torch.inference_mode()
    def encode(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """prompts (B strings) -> ``feat (B, 256, d_model)`` float32 on ``device``, ``mask (B, 256)`` bool.

        ``feat`` is T5's ``last_hidden_state``; rows of an empty prompt have an all-False mask.
        """
        ids, mask = self.tokenize(prompts)
        if int(ids.max()) >= self.shape.vocab_size:
            raise InvalidInputError(
                f"the tokenizer produced token id {int(ids.max())} but this T5 has a vocabulary of "
                f"{self.shape.vocab_size}: tokenizer and encoder do not match (use the google/t5-v1_1-xxl tokenizer)"
            )
        ids = ids.to(self.device)
        mask = mask.to(self.device)
        out = self.model(input_ids=ids, attention_mask=mask.to(torch.int64))
        verify_weights(self.model)  # first encode: a NaN/inf weight named by file and tensor (one host sync)
        feat = out.last_hidden_state.to(torch.float32)
        if not torch.isfinite(feat).all():
            raise InvalidInputError(_non_finite_message(self.dtype, self.format_name))
        return feat, mask


def _non_finite_message(dtype: torch.dtype, format_name: str) -> str:
    """Why T5 features can be NaN/inf, for the compute dtype actually used."""
    head = f"T5 produced non-finite (NaN or inf) features computing in {dtype_name(dtype)}"
    if dtype != torch.float32:
        return f"{head}: T5 overflows in reduced precision; load it with dtype='fp32' (the official precision)"
    fmt = f" ({format_name})" if format_name else ""
    return (
        f"{head}, the official precision, so the weights{fmt} hold NaN/inf or wrongly scaled values: the T5 file "
        "is damaged or not a T5 v1.1 XXL encoder; download it again or use another (e.g. t5xxl_fp16.safetensors)"
    )


def _install_linear(
    module: nn.Module,
    w: torch.Tensor,
    scale: torch.Tensor | None,
    target: torch.dtype,
    device: torch.device,
    origin: str,
) -> None:
    """Install one Linear weight in storage dtype ``target`` (fp8 targets are stored as scaled fp8); ``origin`` names
    it for the NaN/inf check of its first use."""
    if scale is not None and target == w.dtype:
        ops.set_weight(module, w.to(device), fmt="scaled_fp8", scale=scale.to(device), origin=origin)
        return
    if scale is not None:
        check_finite(scale, f"{origin} (its scale)")
        w = w.to(torch.float32) * scale.to(torch.float32)
    if target in FLOAT8_DTYPES and w.dtype != target:
        q, s = ops.quantize_scaled_fp8(w, target)
        ops.set_weight(module, q.to(device), fmt="scaled_fp8", scale=s.to(device), origin=origin)
        return
    ops.set_weight(module, w.to(device=device, dtype=target), origin=origin)


def load_text_encoder(
    path: str | os.PathLike[str],
    *,
    tokenizer: str | os.PathLike[str] | T5Tokenizer | None = None,
    device: str | torch.device = "cpu",
    compute_dtype: str | torch.dtype | None = None,
    storage_dtype: str | torch.dtype | None = None,
    options: T5Options | None = None,
    dtype: str | torch.dtype | None = None,
) -> TextEncoder:
    """Load a T5 v1.1 encoder from a Comfy ``t5xxl_fp16`` / ``t5xxl_fp8_e4m3fn`` / ``_scaled`` file, an HF sharded
    folder (or its ``*.index.json``), or the Comfy all-in-one file.

    ``compute_dtype`` (earlier name: ``dtype``): default float32; bfloat16 allowed; float16 refused (T5
    overflows). ``storage_dtype``: convert the Linear weights to this storage dtype (``fp8_*`` becomes scaled
    fp8); None keeps the file's storage. ``options``: device and dtypes already resolved
    (:class:`~mochi_core.options.T5Options`). ``tokenizer``: see :func:`find_tokenizer`; resolved at once, so a
    missing tokenizer fails before the weights are read.
    """
    if options is None:
        names: dict[str, str] = {}
        compute_dtype = renamed("dtype", dtype, "compute_dtype", compute_dtype, names)
        options = T5Options.resolve(
            device=device, compute_dtype=compute_dtype, storage_dtype=storage_dtype, names=names
        )
    dev, compute, requested = options.device, options.compute_dtype, options.storage_dtype
    tok = tokenizer if isinstance(tokenizer, T5Tokenizer) else load_tokenizer(tokenizer)
    with open_checkpoint(path) as ckpt:
        layout = inspect_t5(ckpt, path=str(path))
        model = _build_model(layout.shape)
        _install(model, ckpt, layout, requested, compute, dev)
    left = [n for n, p in model.named_parameters() if p.is_meta]
    if left:
        raise UnsupportedCheckpointError(f"{path}: T5 tensors not filled: {left[:3]}")
    enc = TextEncoder(model, tok, device=dev, dtype=compute, shape=layout.shape, format_name=layout.format_name)
    logger.info(
        "T5 encoder loaded: %s, compute %s, %.1f MB of weights on %s",
        layout.format_name,
        dtype_name(compute),
        enc.nbytes / 1e6,
        dev,
    )
    return enc


def _install(
    model: nn.Module,
    ckpt: object,
    layout: T5Layout,
    requested: torch.dtype | None,
    compute: torch.dtype,
    device: torch.device,
) -> None:
    for name, key in layout.keys.items():
        w = ckpt.get(key)  # type: ignore[attr-defined]
        origin = weight_origin(ckpt.infos[key].file, key)  # type: ignore[attr-defined]
        scale_key = layout.scales.get(name)
        scale = ckpt.get(scale_key).reshape(()) if scale_key else None  # type: ignore[attr-defined]
        qt = layout.quant.get(name)
        if qt is not None:
            shape = tuple(ckpt.infos[key].shape)  # type: ignore[attr-defined]
            if requested is None and quants.row_bytes(qt, shape[-1]) is not None and len(shape) == 2:
                if name == "shared.weight":  # looked up row by row: stays quantized
                    rows = w.reshape(shape[0], -1)
                    for start in range(0, shape[0], 4096):  # checked once here, in slices (no full fp32 copy)
                        part = rows[start : start + 4096]
                        check_finite(quants.dequantize(part, qt, (part.shape[0], shape[1])), origin)
                    model.set_input_embeddings(_CastEmbedding(rows.to(device), compute, qt))
                    continue
                module, attr = _resolve(model, name)
                if isinstance(module, ops.CastWeights) and attr == "weight":
                    if shape != tuple(module.weight.shape):
                        raise UnsupportedCheckpointError(f"{key}: shape {shape}, expected {tuple(module.weight.shape)}")
                    ops.set_weight(module, w.to(device), fmt=qt, shape=shape, origin=origin)  # the file's type
                    continue
            # converted storage asked for, or a tensor used as a whole (norm, bias, rows not whole blocks): fp32
            w = quants.dequantize(w, qt, shape)
        if name == "shared.weight":
            target = storage_dtype_for(name, w.dtype, requested)
            if scale is not None:
                w = w.to(torch.float32) * scale.to(torch.float32)
            embedding = w.to(device=device, dtype=target)
            check_finite(embedding, origin)  # read whole once here (0.26 GB at full size in fp16)
            model.set_input_embeddings(_CastEmbedding(embedding, compute))
            continue
        module, attr = _resolve(model, name)
        if isinstance(module, ops.CastWeights) and attr == "weight":
            if w.shape != module.weight.shape:
                raise UnsupportedCheckpointError(
                    f"{key}: shape {tuple(w.shape)}, expected {tuple(module.weight.shape)}"
                )
            _install_linear(module, w, scale, storage_dtype_for(name, w.dtype, requested), device, origin)
        else:
            # norms and the relative attention bias: small, held in the compute dtype (T5's layer norm casts
            # its output to a 16-bit weight's dtype, which must not drag the residual stream down).
            param = getattr(module, attr)
            if w.shape != param.shape:
                raise UnsupportedCheckpointError(f"{key}: shape {tuple(w.shape)}, expected {tuple(param.shape)}")
            w = w.to(torch.float32) * scale.to(torch.float32) if scale is not None else w
            value = w.to(device=device, dtype=compute)
            check_finite(value, origin)
            setattr(module, attr, nn.Parameter(value, requires_grad=False))
