"""``load_vae`` and the :class:`VAE` object: weight loading (every published layout), decode (whole, chunked,
tiled, memory-budgeted) and encode.

Semantics of genmoai/mochi ``pipelines.py`` (decode_latents / decode_latents_tiled_spatial: VAE-space latent in,
video in [-1, 1] out) and ``demos/test_encoder_decoder.py`` (Fourier features, then the encoder; posterior mean);
Weights are loaded tensor by tensor from a memory-mapped file into a model built on the
``meta`` device, so no two full copies exist; they keep their stored dtype (or ``dtype``) and are cast on use.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

import torch
from torch import nn

from .. import ops
from ..checks import check_tensor
from ..devices import check_device
from ..errors import InvalidInputError, UnsupportedCheckpointError
from ..finite import check_finite, weight_origin
from ..formats.io import Checkpoint, open_checkpoint
from ..formats.vae import mapped_shapes, vae_key_map
from ..options import VAE_COMPUTE, VAE_STORAGE, DecodeOptions, VAEOptions, renamed, resolve_dtype
from ..precision import FLOAT8_DTYPES, default_compute_dtype
from ..scalars import as_real
from .config import DecoderConfig, EncoderConfig
from .decoder import Decoder
from .encoder import Encoder
from .layers import GroupNormPerFrame, add_fourier_features
from .tiling import TilePlan, TileShare, choose_tiles, decode_working_set_bytes, tiled_decode

__all__ = ["VAE", "load_vae", "build_from_state_dict", "VAE_STORAGE_DTYPES", "check_vae_storage_dtype"]

log = logging.getLogger(__name__)

#: Storage dtypes the VAE may be converted to. No fp8: the VAE's convs have no per-tensor scales (an unscaled fp8
#: weight or bias loses too much), and the whole decoder is only 0.7 GB in bf16.
VAE_STORAGE_DTYPES = VAE_STORAGE.names


def check_vae_storage_dtype(dtype: str | torch.dtype | None, *, what: str = "dtype") -> torch.dtype | None:
    """The VAE storage conversion asked for (None / "auto": keep the file's); the one rule of
    :data:`mochi_core.options.VAE_STORAGE`."""
    return resolve_dtype(dtype, what=what, choice=VAE_STORAGE)  # type: ignore[return-value]


def _install(model: nn.Module, key: str, tensor: torch.Tensor) -> None:
    mod_name, _, attr = key.rpartition(".")
    mod = model.get_submodule(mod_name) if mod_name else model
    if attr == "weight" and isinstance(mod, ops.CastWeights):
        ops.set_weight(mod, tensor)
    else:
        setattr(mod, attr, nn.Parameter(tensor, requires_grad=False))


def _fill(
    model: nn.Module,
    fetch: Callable[[str], torch.Tensor],
    keys: list[str],
    *,
    what: str,
    path: str,
    device: torch.device,
    dtype: torch.dtype | None,
    origin: Callable[[str], str],
) -> None:
    expected = dict(model.named_parameters())
    missing = sorted(set(expected) - set(keys))
    extra = sorted(set(keys) - set(expected))
    if missing or extra:
        raise UnsupportedCheckpointError(
            f"{path}: {what} keys do not match the configuration inferred from its shapes "
            f"(missing {missing[:4]}, unexpected {extra[:4]})"
        )
    norm_params = {
        f"{n}.{p}" for n, m in model.named_modules() if isinstance(m, GroupNormPerFrame) for p in ("weight", "bias")
    }
    for key in keys:
        t = fetch(key)
        if tuple(t.shape) != tuple(expected[key].shape):
            raise UnsupportedCheckpointError(
                f"{path}: {what} tensor {key!r} has shape {tuple(t.shape)}, expected {tuple(expected[key].shape)}"
            )
        target = t.dtype
        if dtype is not None and t.is_floating_point() and key not in norm_params:
            target = dtype
        if key in norm_params and target in FLOAT8_DTYPES:
            target = torch.float32
        value = t.to(device=device, dtype=target)
        check_finite(value, origin(key))  # the VAE is small (0.9 GB at full size): every tensor, here
        _install(model, key, value)


def _origin(ckpt: Checkpoint, mapping: dict[str, list[str]]) -> Callable[[str], str]:
    """How messages name the file tensor(s) behind one of our keys."""

    def name(key: str) -> str:
        srcs = mapping[key]
        return weight_origin(ckpt.infos[srcs[0]].file, *srcs)

    return name


def _fetcher(ckpt: Checkpoint, mapping: dict[str, list[str]]) -> Callable[[str], torch.Tensor]:
    def fetch(key: str) -> torch.Tensor:
        srcs = mapping[key]
        if len(srcs) == 1:
            return ckpt.get(srcs[0])
        return torch.cat([ckpt.get(s) for s in srcs], dim=0)

    return fetch


class VAE:
    """Decoder (always) and encoder (when the file has one) with decode / encode entry points.

    Attributes: ``decoder``, ``encoder`` (or None), ``device``, ``dtype`` (compute dtype), ``storage_dtype``,
    ``layout`` (which file layout it came from), ``path``.
    """

    def __init__(
        self,
        decoder: Decoder | None,
        encoder: Encoder | None,
        *,
        device: torch.device,
        dtype: torch.dtype,
        layout: str = "official",
        path: str = "",
    ) -> None:
        self.decoder = decoder
        self.encoder = encoder
        self.device = device
        self.dtype = dtype
        self.layout = layout
        self.path = path

    # ------------------------------------------------------------------ housekeeping
    @property
    def storage_dtype(self) -> torch.dtype:
        model = self.decoder if self.decoder is not None else self.encoder
        assert model is not None
        return next(model.parameters()).dtype

    def to(self, device: torch.device | str, dtype: str | torch.dtype | None = None) -> VAE:
        """Move the weights to ``device`` (storage dtype kept) and optionally set the compute dtype (fp32, bf16,
        fp16). Both are validated before anything moves."""
        dev = check_device(device)
        compute = resolve_dtype(dtype, what="dtype", choice=VAE_COMPUTE, device=dev) if dtype is not None else None
        for m in (self.decoder, self.encoder):
            if m is not None:
                m.to(dev)
        self.device = dev
        if compute is not None:
            self.dtype = compute
        return self

    def weight_bytes(self) -> int:
        return sum(ops.weight_nbytes(m) for m in (self.decoder, self.encoder) if m is not None)

    def __repr__(self) -> str:
        return (
            f"VAE(layout={self.layout!r}, decoder={self.decoder is not None}, encoder={self.encoder is not None}, "
            f"device={self.device}, compute={self.dtype}, storage={self.storage_dtype})"
        )

    # ------------------------------------------------------------------ decode
    def _decoder_config(self) -> DecoderConfig:
        if self.decoder is None:
            raise InvalidInputError(f"{self.path or 'this VAE'}: the file has no decoder")
        return self.decoder.config

    def _check_latent(self, latent: torch.Tensor) -> None:
        sizes = (None, self._decoder_config().latent_dim, None, None, None)  # None: any non-empty size
        check_tensor("latent", latent, sizes, layout="(B, 12, T, H, W) in VAE space", finite=True)

    def _decode_config(self, latent_shape: tuple[int, ...]) -> DecoderConfig:
        cfg = self._decoder_config()
        shape = tuple(latent_shape) if isinstance(latent_shape, (tuple, list, torch.Size)) else None
        if (
            shape is None
            or len(shape) != 5
            or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in shape)
            or shape[1] != cfg.latent_dim
        ):
            raise InvalidInputError(
                f"latent_shape must be (B, {cfg.latent_dim}, T, H, W) with positive ints; got {latent_shape!r}"
            )
        return cfg

    def plan_decode(self, latent_shape: tuple[int, ...], memory_budget: int) -> TilePlan:
        """The tile plan :meth:`decode` would use for ``memory_budget`` bytes (raises DoesNotFitError)."""
        cfg = self._decode_config(latent_shape)
        budget = as_real("memory_budget", memory_budget, low=1, what="a positive number of bytes")
        return choose_tiles(tuple(latent_shape), int(budget), cfg, self.dtype)

    def working_set_bytes(self, latent_shape: tuple[int, ...], tile: TilePlan | int | tuple[int, ...]) -> int:
        """Estimated peak bytes of :meth:`decode` with ``tile`` (output accumulator included)."""
        cfg = self._decode_config(latent_shape)
        return decode_working_set_bytes(tuple(latent_shape), TilePlan.parse(tile), cfg, self.dtype)

    @torch.inference_mode()
    def decode(
        self,
        latent: torch.Tensor,
        *,
        memory_budget: int | None = None,
        tile: TilePlan | int | tuple[int, ...] | None = None,
        progress: Callable[[int, int], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
        share: TileShare | None = None,
        options: DecodeOptions | None = None,
    ) -> torch.Tensor | None:
        """latent (B, 12, T, H, W) in VAE space (un-normalised) -> video (B, 3, 6(T-1)+1, 8H, 8W) float32 in ~[-1, 1].

        memory_budget: bytes for the decode's working set (output included); tiles are chosen to fit, or
        DoesNotFitError is raised before any work, naming the minimum. tile: explicit TilePlan / frames per chunk /
        (frames, height, width[, overlap]) in latent units. Neither: one whole decode. progress(i, n) after each
        tile x chunk; should_stop() before each (raises MochiInterrupted). share: the tiles are spread over the
        ranks of a multi-process run (:mod:`mochi_core.parallel.vae`); only the root rank gets the video (others None).
        ``options``: memory_budget and tile already resolved (:class:`~mochi_core.options.DecodeOptions`).
        """
        self._check_latent(latent)
        assert self.decoder is not None
        opts = options or DecodeOptions.resolve(memory_budget=memory_budget, tile=tile)
        if opts.memory_budget is not None:
            plan = choose_tiles(tuple(latent.shape), opts.memory_budget, self.decoder.config, self.dtype)
        elif opts.tile is not None:
            plan = opts.tile
        else:
            plan = TilePlan(latent.shape[2], latent.shape[3], latent.shape[4], 0)
        z = latent.to(device=self.device, dtype=self.dtype)
        log.info("VAE decode %s with %s", tuple(latent.shape), plan)
        return tiled_decode(self.decoder, z, plan, progress=progress, should_stop=should_stop, share=share)

    # ------------------------------------------------------------------ encode
    @torch.inference_mode()
    def encode_distribution(self, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """video (B, 3, F, H, W) in [-1, 1], F = 6k+1, H and W multiples of 8 -> (mean, logvar), each
        (B, 12, k+1, H/8, W/8) float32 (Fourier features are added here)."""
        if self.encoder is None:
            raise InvalidInputError(
                f"{self.path or 'this VAE'}: the file has no encoder; load an encoder file to encode"
            )
        cfg = self.encoder.config
        check_tensor("video", video, (None, 3, None, None, None), layout="(B, 3, F, H, W) in [-1, 1]", finite=True)
        _, _, f, h, w = video.shape
        tf, sf = cfg.temporal_factor, cfg.spatial_factor
        if (f - 1) % tf or h % sf or w % sf:
            raise InvalidInputError(
                f"video frames must be {tf}k+1 and height/width multiples of {sf}; got F={f}, H={h}, W={w}"
            )
        x = add_fourier_features(video.to(self.device)).to(self.dtype)
        mean, logvar = self.encoder(x)
        return mean.float(), logvar.float()

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """video (B, 3, F, H, W) in [-1, 1] -> posterior mean (B, 12, (F-1)/6+1, H/8, W/8) in VAE space."""
        return self.encode_distribution(video)[0]


def _in_memory(key: str) -> str:
    return f"state dict, tensor {key}"


def build_from_state_dict(
    decoder_sd: dict[str, torch.Tensor] | None, encoder_sd: dict[str, torch.Tensor] | None, *, device: str = "cpu"
) -> VAE:
    """A VAE from official-name state dicts in memory (tests, conversions)."""
    dev = check_device(device)
    dec = enc = None
    if decoder_sd is not None:
        with torch.device("meta"):
            dec = Decoder(DecoderConfig.from_shapes({k: v.shape for k, v in decoder_sd.items()}))
        _fill(
            dec,
            decoder_sd.__getitem__,
            list(decoder_sd),
            what="decoder",
            path="state_dict",
            device=dev,
            dtype=None,
            origin=_in_memory,
        )
    if encoder_sd is not None:
        with torch.device("meta"):
            enc = Encoder(EncoderConfig.from_shapes({k: v.shape for k, v in encoder_sd.items()}))
        _fill(
            enc,
            encoder_sd.__getitem__,
            list(encoder_sd),
            what="encoder",
            path="state_dict",
            device=dev,
            dtype=None,
            origin=_in_memory,
        )
    return VAE(dec, enc, device=dev, dtype=default_compute_dtype(dev), layout="state_dict")


def load_vae(
    path: str | os.PathLike[str],
    *,
    device: str | torch.device = "cpu",
    storage_dtype: str | torch.dtype | None = None,
    compute_dtype: str | torch.dtype | None = None,
    options: VAEOptions | None = None,
    dtype: str | torch.dtype | None = None,
) -> VAE:
    """Load a Mochi VAE file (decoder and/or encoder; every published layout) into a :class:`VAE`.

    device: "cpu", "cuda", "cuda:N", ... (refused when not usable here). storage_dtype (earlier name: dtype):
    storage dtype for the weights, fp32 / bf16 / fp16 (None keeps the file's dtype; fp8 is refused: the VAE has no
    fp8 scales and is small). compute_dtype: dtype of activations, fp32 / bf16 / fp16 (default: float32 on CPU,
    bfloat16 on CUDA). ``options``: all three already resolved (:class:`~mochi_core.options.VAEOptions`). Every
    argument is checked before the file is opened. The configuration is inferred from tensor shapes. Refuses DiT /
    T5 files, unknown layouts, truncated files and pickles.
    """
    if options is None:
        names: dict[str, str] = {}
        storage_dtype = renamed("dtype", dtype, "storage_dtype", storage_dtype, names)
        options = VAEOptions.resolve(
            device=device, storage_dtype=storage_dtype, compute_dtype=compute_dtype, names=names
        )
    dev, storage, compute = options.device, options.storage_dtype, options.compute_dtype
    with open_checkpoint(path) as ckpt:
        kmap = vae_key_map(ckpt.keys(), path=str(path))
        dec = enc = None
        if kmap.decoder is not None:
            cfg = DecoderConfig.from_shapes(mapped_shapes(ckpt.infos, kmap.decoder))
            with torch.device("meta"):
                dec = Decoder(cfg)
            _fill(
                dec,
                _fetcher(ckpt, kmap.decoder),
                list(kmap.decoder),
                what="decoder",
                path=str(path),
                device=dev,
                dtype=storage,
                origin=_origin(ckpt, kmap.decoder),
            )
        if kmap.encoder is not None:
            ecfg = EncoderConfig.from_shapes(mapped_shapes(ckpt.infos, kmap.encoder))
            with torch.device("meta"):
                enc = Encoder(ecfg)
            _fill(
                enc,
                _fetcher(ckpt, kmap.encoder),
                list(kmap.encoder),
                what="encoder",
                path=str(path),
                device=dev,
                dtype=storage,
                origin=_origin(ckpt, kmap.encoder),
            )
    for m in (dec, enc):
        if m is not None:
            m.eval()
    log.info("loaded VAE %s (%s layout): decoder=%s encoder=%s", path, kmap.layout, dec is not None, enc is not None)
    return VAE(dec, enc, device=dev, dtype=compute, layout=kmap.layout, path=str(path))
