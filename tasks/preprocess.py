"""Pixel preprocessing shared by training and the audit: the same bytes give the same tensor.

The models see one channel, letterboxed to a square, 8-bit min-max scaled, normalised with
mean 0.5 / std 0.5 (Mitsuyama et al. 2025). Training (models/train.py) and inference
(tasks/infer.py) both call these functions, so the two can never drift apart.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

MEAN = 0.5
STD = 0.5
# What this module (and dicom_io, which inverts MONOCHROME1) does to pixels, as a registry entry's
# `preprocessing` block states it. tasks/infer.py refuses an entry that states anything else: a
# model trained on other inputs would run silently wrong. Exporters write this block.
PREPROCESSING = {"letterbox": True, "scale": "minmax_uint8", "mean": MEAN, "std": STD, "invert_monochrome1": True}
CHANNELS = 1  # image channels a model is fed


# Share of pixels clipped at each end before min-max scaling of decoded DICOM pixels. Wavelet
# ringing of a reduced-resolution JPEG 2000 decode overshoots at the edges of saturated regions
# (WG04 RG2: max 997 reduced vs 894 full), and a plain min-max lets those few pixels set the scale;
# clipping 0.05 % per tail made reduced and full decodes agree (tests/test_reduced_decode.py).
TAIL_SHARE = 0.0005
# The tail quantiles come from a lattice of about this many pixels (every step-th row and column):
# 0.05 % of it is still ~30 pixels per tail, and np.quantile over it costs ~1.0 ms instead of ~2.6 ms
# over a whole 625x500 image. A power-of-two reduced decode and the full decode it stands for
# sample the same lattice (steps 2 and 8 for 625x500 and 2500x2000), so their scales agree.
QUANTILE_LATTICE_PIXELS = 62_500


def to_uint8(pixels: np.ndarray) -> np.ndarray:
    """Scale a 2-D array of any numeric dtype to uint8.

    uint8 input (the training images) is min-max scaled. Other dtypes (decoded DICOM pixels) are
    first clipped to their TAIL_SHARE and 1 - TAIL_SHARE quantiles, then min-max scaled. A constant
    image maps to zeros rather than dividing by zero.
    """
    arr = np.asarray(pixels)
    if arr.ndim != 2:
        raise ValueError(f"expected a 2-D image, got shape {arr.shape}")
    if arr.dtype == np.uint8:
        lo, hi = int(arr.min()), int(arr.max())
        if lo == 0 and hi == 255:
            return arr
    lo = float(np.min(arr))
    hi = float(np.max(arr))
    if not np.isfinite(lo) or not np.isfinite(hi) or hi <= lo:
        return np.zeros(arr.shape, dtype=np.uint8)
    if arr.dtype != np.uint8:
        step = max(1, int((arr.size / QUANTILE_LATTICE_PIXELS) ** 0.5))
        qlo, qhi = np.quantile(arr[::step, ::step], [TAIL_SHARE, 1.0 - TAIL_SHARE])
        if qhi > qlo:
            lo, hi = float(qlo), float(qhi)
    # In place on one float copy: the same float32 operations in the same order as
    # (arr - lo) * k -> rint -> clip, so results are bit-identical, at a third of the memory traffic.
    scaled = arr.astype(np.float32)
    scaled -= lo
    scaled *= 255.0 / (hi - lo)
    np.rint(scaled, out=scaled)
    np.clip(scaled, 0, 255, out=scaled)
    return scaled.astype(np.uint8)


def resize_longest(image_u8: np.ndarray, size: int) -> np.ndarray:
    """Resize so the longest side is ``size``, keeping the aspect ratio (Pillow bilinear, which is
    antialiased when it shrinks)."""
    if image_u8.dtype != np.uint8 or image_u8.ndim != 2:
        raise ValueError("expected a 2-D uint8 image")
    h, w = image_u8.shape
    scale = size / max(h, w)
    nh = max(1, min(size, int(round(h * scale))))
    nw = max(1, min(size, int(round(w * scale))))
    if (nh, nw) == (h, w):
        return image_u8
    return np.asarray(Image.fromarray(image_u8).resize((nw, nh), resample=Image.Resampling.BILINEAR))


def pad_square(resized_u8: np.ndarray, size: int) -> np.ndarray:
    """Centre an image whose longest side is ``size`` on a black ``size`` x ``size`` square."""
    nh, nw = resized_u8.shape
    out = np.zeros((size, size), dtype=np.uint8)
    top = (size - nh) // 2
    left = (size - nw) // 2
    out[top : top + nh, left : left + nw] = resized_u8
    return out


def letterbox(image_u8: np.ndarray, size: int) -> np.ndarray:
    """Resize the longest side to ``size`` keeping the aspect ratio, pad the rest with black.

    The image is centred; Pillow's bilinear resize is antialiased when it shrinks.
    """
    return pad_square(resize_longest(image_u8, size), size)


def normalize(letterboxed_u8: np.ndarray) -> np.ndarray:
    """uint8 [H, W] -> float32 [1, H, W] with the model's mean/std."""
    x = letterboxed_u8.astype(np.float32) / 255.0
    return ((x - MEAN) / STD)[None, :, :]


def model_input(pixels: np.ndarray, size: int) -> np.ndarray:
    """Any 2-D display-ready image (MONOCHROME2 polarity) -> float32 [1, size, size]."""
    return normalize(letterbox(to_uint8(pixels), size))


THUMBNAIL_SIDE = 192  # longest side of the review report's thumbnails


def thumbnail_jpeg(display_u8: np.ndarray, max_side: int = THUMBNAIL_SIDE, quality: int = 80) -> dict:
    """A small grayscale JPEG of the image as stored, for the review report."""
    img = Image.fromarray(display_u8)
    img.thumbnail((max_side, max_side), Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return {"width": img.width, "height": img.height, "jpeg": buf.getvalue()}


def rotate_to_orientation(upright: np.ndarray, orientation: str) -> np.ndarray:
    """Return how an upright image looks when stored with the given orientation label.

    ``orientation`` is the rotation by which the stored image differs from upright
    (docs/architecture.md, Vocabularies): ``rot90cw`` means the stored image is the upright one
    turned 90 degrees clockwise.
    """
    k = ORIENTATION_K[orientation]
    return np.ascontiguousarray(np.rot90(upright, k=k))


def correct_orientation(stored: np.ndarray, orientation: str) -> np.ndarray:
    """Undo :func:`rotate_to_orientation`: bring a stored image upright."""
    k = ORIENTATION_K[orientation]
    return np.ascontiguousarray(np.rot90(stored, k=-k))


# np.rot90 turns counter-clockwise for positive k.
ORIENTATION_K = {"upright": 0, "rot90cw": -1, "rot180": 2, "rot90ccw": 1}
