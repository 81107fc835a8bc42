"""Colour: a histogram of the product's own colours, and plain names for them."""

from __future__ import annotations

import numpy as np
from PIL import Image

from .images import load_image, product_mask

COLOUR_DESCRIPTOR_VERSION = "lab-4x8x8-soft-filled-sqrt-v1"
LAB_BINS = (4, 8, 8)  # L* over 0..100, a* and b* over -60..60
LAB_RANGES = ((0.0, 100.0), (-60.0, 60.0), (-60.0, 60.0))


_LEVELS = np.arange(256, dtype=np.float32) / 255.0
_SRGB_TO_LINEAR = np.where(_LEVELS > 0.04045, ((_LEVELS + 0.055) / 1.055) ** 2.4, _LEVELS / 12.92).astype(np.float32)


def rgb_to_lab(pixels: np.ndarray) -> np.ndarray:
    """sRGB uint8 -> CIE L*a*b* (D65): distances there follow perceived colour differences."""
    linear = _SRGB_TO_LINEAR[np.asarray(pixels, dtype=np.uint8)]
    to_xyz = np.array([[0.412453, 0.357580, 0.180423], [0.212671, 0.715160, 0.072169],
                       [0.019334, 0.119193, 0.950227]], dtype=np.float32)
    xyz = linear @ to_xyz.T / np.array([0.950456, 1.0, 1.088754], dtype=np.float32)
    f = np.where(xyz > 0.008856, np.cbrt(xyz), 7.787 * xyz + 16 / 116)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], axis=-1)


def filled_product_mask(pixels: np.ndarray) -> np.ndarray:
    """The product's outline, holes filled: white parts of a garment (a logo, a sole) stay in, the
    background goes. A nearly all-white photo keeps every pixel."""
    from scipy import ndimage

    mask = ndimage.binary_fill_holes(ndimage.binary_closing(product_mask(pixels), iterations=2, border_value=0))
    return mask if mask.sum() >= 0.01 * mask.size else np.ones_like(mask)


def colour_descriptor(image: Image.Image) -> np.ndarray:
    """The colours of the product alone, as a soft L*a*b* histogram (4x8x8 bins), comparable by a dot product.

    Each pixel is shared between its neighbouring bins (no jumps at bin edges); the histogram is
    L1-normalised and square-rooted, so the dot product of two descriptors is their
    Bhattacharyya coefficient: 1 for the same colours, 0 for none in common.
    """
    pixels = np.asarray(image)
    lab = rgb_to_lab(pixels[filled_product_mask(pixels)])
    histogram = np.zeros(int(np.prod(LAB_BINS)), dtype=np.float64)
    positions, weights = [], []
    for channel, (count, (low, high)) in enumerate(zip(LAB_BINS, LAB_RANGES)):
        t = np.clip((lab[:, channel] - low) / (high - low) * (count - 1), 0, count - 1)
        lower = np.floor(t).astype(np.int64)
        positions.append((lower, np.minimum(lower + 1, count - 1)))
        weights.append((1 - (t - lower), t - lower))
    for corner in range(8):  # the 8 corners of the cell around each pixel (trilinear weights)
        bits = [(corner >> axis) & 1 for axis in range(3)]
        bin_index = (positions[0][bits[0]] * LAB_BINS[1] + positions[1][bits[1]]) * LAB_BINS[2] + positions[2][bits[2]]
        histogram += np.bincount(bin_index, weights[0][bits[0]] * weights[1][bits[1]] * weights[2][bits[2]],
                                 minlength=histogram.size)
    return np.sqrt(histogram / max(histogram.sum(), 1e-12)).astype(np.float32)



# Hue angles in the a*b* plane where each colour name ends (degrees, counter-clockwise from +a*).
_HUE_NAMES = [(20, "pink"), (45, "red"), (70, "orange"), (105, "yellow"), (170, "green"),
              (230, "teal"), (290, "blue"), (330, "purple"), (360, "pink")]


def lab_colour_name(lightness: float, a: float, b: float) -> str:
    """A plain colour word for an L*a*b* colour: 'navy', 'white', 'red', ..."""
    if np.hypot(a, b) < 15:  # unsaturated: a grey level
        for limit, name in ((20, "black"), (45, "dark grey"), (70, "grey"), (90, "light grey")):
            if lightness < limit:
                return name
        return "white"
    angle = float(np.degrees(np.arctan2(b, a)) % 360)
    name = next(name for limit, name in _HUE_NAMES if angle < limit)
    if lightness < 40:
        name = {"blue": "navy", "red": "maroon", "orange": "brown", "yellow": "olive"}.get(name, "dark " + name)
    return name


def colour_names(descriptor: np.ndarray, top: int = 2) -> list[str]:
    """The names of the `top` strongest colours of a colour descriptor (e.g. ['navy', 'white'])."""
    shares = np.asarray(descriptor, dtype=np.float64) ** 2  # undo the square root: each bin's share of pixels
    names: dict[str, float] = {}
    for bin_index in np.argsort(-shares):
        if shares[bin_index] < 0.05 or len(names) >= top:
            break
        l_bin, rest = divmod(int(bin_index), LAB_BINS[1] * LAB_BINS[2])
        a_bin, b_bin = divmod(rest, LAB_BINS[2])
        centre = [low + step * (high - low) / (count - 1)
                  for step, count, (low, high) in zip((l_bin, a_bin, b_bin), LAB_BINS, LAB_RANGES)]
        name = lab_colour_name(*centre)
        names[name] = names.get(name, 0.0) + shares[bin_index]
    return list(names)



GRAYSCALE_TOLERANCE = 4  # JPEG rounding leaves the channels of a grey pixel a few levels apart at most


def colour_spread(image) -> int:
    """The largest gap between a pixel's R, G and B over the whole photo: about 0 for a photo without colour."""
    pixels = np.asarray(load_image(image), dtype=np.int16)
    return int((pixels.max(axis=2) - pixels.min(axis=2)).max())

