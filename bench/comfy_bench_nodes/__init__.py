"""Two ComfyUI nodes for ``bench/full_size_cpu.py``'s native-ComfyUI side (not part of the pack; loaded only by the
benchmark's own ComfyUI instance).

- ``MochiBenchRandomConditioning``: a core CONDITIONING of the T5-XXL shape Mochi takes, (1, 256, 4096) random
  features with the first ``valid_tokens`` tokens valid (``attention_mask``), since no T5 weights exist here;
- ``MochiBenchLatentSink``: an output node that takes the sampled LATENT, so the prompt runs without a VAE.
"""

from __future__ import annotations

import torch

T5_TOKENS = 256
T5_WIDTH = 4096


class MochiBenchRandomConditioning:
    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "valid_tokens": ("INT", {"default": 12, "min": 1, "max": T5_TOKENS}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 2**31 - 1}),
            }
        }

    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "make"
    CATEGORY = "Mochi/bench"

    def make(self, valid_tokens: int, seed: int) -> tuple[list]:
        """-> [[features (1, 256, 4096) float32, {"attention_mask": (1, 256) int64}]]"""
        g = torch.Generator().manual_seed(seed)
        feat = torch.randn(1, T5_TOKENS, T5_WIDTH, generator=g)
        mask = torch.zeros(1, T5_TOKENS, dtype=torch.long)
        mask[0, :valid_tokens] = 1
        return ([[feat, {"pooled_output": None, "attention_mask": mask}]],)


class MochiBenchLatentSink:
    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {"samples": ("LATENT",)}}

    RETURN_TYPES = ()
    FUNCTION = "sink"
    OUTPUT_NODE = True
    CATEGORY = "Mochi/bench"

    def sink(self, samples: dict) -> dict:
        x = samples["samples"]
        return {"ui": {"latent_shape": [list(x.shape)], "finite": [bool(torch.isfinite(x).all())]}}


NODE_CLASS_MAPPINGS = {
    "MochiBenchRandomConditioning": MochiBenchRandomConditioning,
    "MochiBenchLatentSink": MochiBenchLatentSink,
}
