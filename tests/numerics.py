"""Float tolerances for the tests, each from an error model rather than from what one machine printed.

Why two runs of the same float32 code can differ: ATen and oneDNN choose kernels by CPU capability (AVX2 adds 8
float32 lanes at a time, AVX-512 16) and split reductions across threads, so a sum of many terms is added in a
different order on another machine, with another thread count, or for an input at another memory alignment. Each
float32 addition rounds with a relative error of at most u = 2**-24; a sum of ``terms`` values whose magnitudes add
up to at most ``scale`` therefore lies within ``(terms - 1) * u * scale`` of the exact sum whatever the order
(the classical worst-case bound of recursive summation), and two orders within twice that of each other.

A network chains such reductions, and with layer gains of order one (normalised activations, residual paths) the
deviations of ``depth`` chained reductions add. Bounding every one by its worst case gives
``2 * depth * terms * u * scale``, which is loose by orders of magnitude: rounding errors of successive additions are
independent and centred, so they add like a random walk (the statistical rounding-error model): the deviation of one
evaluation has a standard deviation of about ``sqrt(depth * terms) * u * scale``, the difference of two evaluations
``sqrt(2)`` times that, and :func:`reorder_tol` allows 6 standard deviations (for ~10^5 compared values the largest
of them stays below 5). Each test that uses it also checks that the mistake it guards against moves the result far
beyond it.

Where a test asserts bit equality instead, the two sides run the same kernels on the same values in the same order
by construction (same process, same shapes, same thread count, inputs in fresh 64-byte-aligned buffers); the test
says why next to the assert.
"""

from __future__ import annotations

import math

#: float32 unit roundoff (half the spacing of floats in [1, 2)).
U_FP32 = 2.0**-24
#: bfloat16 unit roundoff (8 significant bits).
U_BF16 = 2.0**-8


def reorder_tol(scale: float, terms: int, depth: int = 1, *, sds: float = 6.0) -> float:
    """Largest |a - b| expected between two float32 evaluations that differ only in summation order.

    ``scale``: bound on the magnitude of the values summed (for a network: of its activations and outputs);
    ``terms``: the longest reduction (a matmul's inner dimension, an attention's key count, a convolution's
    ``C_in * kernel volume``, a sampler's number of steps); ``depth``: how many reductions are chained from input to
    output. Returns ``sds * sqrt(2 * depth * terms) * u * scale`` (see the module docstring).
    """
    return sds * math.sqrt(2.0 * depth * terms) * U_FP32 * scale


#: The tiny DiT of the golden set and of ``mochi_core.testing`` (2 blocks, widths 96/48): outputs up to 1.84,
#: reductions of at most 256 terms (the SwiGLU hidden width; attention sums at most 77 keys, linears 96 inputs), 22
#: chained along the deepest path (embedders 4; per block 8: modulation, qkv, q.k, softmax, attention.v, projection,
#: w1, w2; final layer 2). 7.0e-5; the smallest deviation the golden set was checked to reveal moves it by 9.8e-3.
TINY_DIT_TOL = reorder_tol(scale=1.84, terms=256, depth=22)

#: A few Euler steps with CFG on that DiT: each step adds (sigma_i - sigma_i+1) * (uncond + cfg * (cond - uncond)),
#: whose error is at most (1 + 2 * cfg) DiT errors; the step sizes add up to 1, and an error of the latent feeds the
#: next steps with gain about 1, hence a factor 2. At cfg 4.5: 1.4e-3 (a wrong unconditional mask moves it by 1.16).
TINY_SAMPLER_TOL = 2 * (1 + 2 * 4.5) * TINY_DIT_TOL

#: The tiny VAE decoder (32 channels, 3x3x3 convolutions: 864 terms per output; about 16 convolutions and group
#: norms chained; outputs in [-1, 1]). 5.9e-5.
TINY_DECODER_TOL = reorder_tol(scale=1.0, terms=864, depth=16)

#: The tiny VAE encoder (up to 64 channels: 1728 terms per output, about 12 chained, mean and log-variance of order
#: 1). 7.3e-5.
TINY_ENCODER_TOL = reorder_tol(scale=1.0, terms=1728, depth=12)

#: The tiny T5 of ``mochi_core.testing.t5`` (2 layers, d_model 32, d_ff 64): outputs of order 1 after the final
#: norm (bound 4), reductions of at most 64 terms, about 16 chained (per layer: q, k, v, q.k, softmax, attention.v,
#: o, two gate projections, wo; the norms). 6.5e-5.
TINY_T5_TOL = reorder_tol(scale=4.0, terms=64, depth=16)
