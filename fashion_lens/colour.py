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


def filled_product_mask(pixels: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """The product's outline, holes filled: white parts of a garment (a logo, a sole) stay in, the
    background (white or any other, see images.separate_product) goes. A photo where nearly
    nothing is found keeps every pixel. `mask`: the product's pixels when already known."""
    from scipy import ndimage

    mask = product_mask(pixels) if mask is None else mask
    mask = ndimage.binary_fill_holes(ndimage.binary_closing(mask, iterations=2, border_value=0))
    return mask if mask.sum() >= 0.01 * mask.size else np.ones_like(mask)


def colour_descriptor(image: Image.Image, mask: np.ndarray | None = None) -> np.ndarray:
    """The colours of the product alone, as a soft L*a*b* histogram (4x8x8 bins), comparable by a dot product.

    Each pixel is shared between its neighbouring bins (no jumps at bin edges); the histogram is
    L1-normalised and square-rooted, so the dot product of two descriptors is their
    Bhattacharyya coefficient: 1 for the same colours, 0 for none in common. `mask`: the
    product's pixels when already known (images.separate_product).
    """
    pixels = np.asarray(image)
    lab = rgb_to_lab(pixels[filled_product_mask(pixels, mask)])
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
# sRGB's saturated blues lie at 290-306 degrees, and beyond the histogram's range they are read back
# at its (+60, -60) corner (315 degrees). Red ends at 42: sRGB red is at 40, the catalogue's orange
# garments at 42-47.
_HUE_NAMES = [(20, "pink"), (42, "red"), (70, "orange"), (105, "yellow"), (170, "green"),
              (215, "teal"), (316, "blue"), (342, "purple"), (360, "pink")]
# Beyond a* 60 the histogram reads a colour back at its edge, at a hue too large: sRGB's saturated
# reds (a* 63-80) at up to the (+60, +60) corner, 45 degrees. A colour read at that edge is red up to 47.
CLIPPED_A = 57
_CLIPPED_HUE_NAMES = [(20, "pink"), (47, "red")] + _HUE_NAMES[2:]
NEUTRAL_CHROMA = 10     # a*b* distance from grey under which a colour is a grey level
DARK_LIGHTNESS = 45     # L* under which a hue gets its dark name (navy, maroon, brown, ...)
MIN_COLOUR_SHARE = 0.05  # share of the product a colour name needs


def lab_colour_name(lightness: float, a: float, b: float, hue_names=_HUE_NAMES) -> str:
    """A plain colour word for an L*a*b* colour: 'navy', 'white', 'red', ... (`hue_names`: the hue table)."""
    if np.hypot(a, b) < NEUTRAL_CHROMA:  # unsaturated: a grey level
        for limit, name in ((20, "black"), (45, "dark grey"), (70, "grey"), (90, "light grey")):
            if lightness < limit:
                return name
        return "white"
    angle = float(np.degrees(np.arctan2(b, a)) % 360)
    name = next(name for limit, name in hue_names if angle < limit)
    if lightness < DARK_LIGHTNESS:
        name = {"blue": "navy", "red": "maroon", "orange": "brown", "yellow": "olive"}.get(name, "dark " + name)
    return name


def _bin_centres() -> np.ndarray:
    """The L*a*b* colour at the centre of each histogram bin, (bins, 3)."""
    axes = [low + np.arange(count) * (high - low) / (count - 1) for count, (low, high) in zip(LAB_BINS, LAB_RANGES)]
    return np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)


def _uphill_neighbours() -> np.ndarray:
    """For each bin, the indices of the bins around it (itself included), (bins, 27), -1 off the grid."""
    grid = np.arange(int(np.prod(LAB_BINS))).reshape(LAB_BINS)
    padded = np.pad(grid, 1, constant_values=-1)
    shifts = [padded[1 + dl:1 + dl + LAB_BINS[0], 1 + da:1 + da + LAB_BINS[1], 1 + db:1 + db + LAB_BINS[2]]
              for dl in (-1, 0, 1) for da in (-1, 0, 1) for db in (-1, 0, 1)]
    return np.stack(shifts, axis=-1).reshape(-1, 27)


_CENTRES, _NEIGHBOURS = _bin_centres(), _uphill_neighbours()


def colour_names(descriptor: np.ndarray, top: int = 2) -> list[str]:
    """The names of the `top` largest colours of a colour descriptor (e.g. ['navy', 'white']),
    largest first; a colour is named when it covers at least MIN_COLOUR_SHARE of the product.

    Each pixel's share is spread over the neighbouring bins, so the bins are first gathered into
    colours: each bin joins the fullest bin around it, up to a peak (mean shift on the histogram).
    A colour is named at the share-weighted mean of its bins' centres, which is the mean colour
    of its pixels; the coarse bins' own centres would call a mid red 'maroon' and a brown grey.
    """
    shares = np.asarray(descriptor, dtype=np.float64).ravel() ** 2  # undo the square root: each bin's share of pixels
    around = np.where(_NEIGHBOURS >= 0, shares[np.maximum(_NEIGHBOURS, 0)], -1.0)
    peak = _NEIGHBOURS[np.arange(len(shares)), np.argmax(around, axis=1)]  # the fullest bin around each bin
    for _ in range(int(np.sum(LAB_BINS))):  # follow the steps up to the peaks
        peak = peak[peak]
    totals: dict[str, float] = {}
    for top_bin in np.unique(peak[shares > 0]):
        members = np.flatnonzero((peak == top_bin) & (shares > 0))
        mean = shares[members] @ _CENTRES[members] / shares[members].sum()
        if np.hypot(mean[1], mean[2]) < NEUTRAL_CHROMA:  # a grey: each lightness level keeps its own name
            named = [(lab_colour_name(_CENTRES[i, 0], 0.0, 0.0), shares[i]) for i in members]
        else:
            hue_names = _CLIPPED_HUE_NAMES if mean[1] >= CLIPPED_A else _HUE_NAMES
            named = [(lab_colour_name(*mean, hue_names=hue_names), shares[members].sum())]
        for name, share in named:
            totals[name] = totals.get(name, 0.0) + share
    ranked = sorted(totals.items(), key=lambda item: (-item[1], item[0]))
    return [name for name, share in ranked if share >= MIN_COLOUR_SHARE][:top]



GRAYSCALE_TOLERANCE = 4  # JPEG rounding leaves the channels of a grey pixel a few levels apart at most


def colour_spread(image) -> int:
    """The largest gap between a pixel's R, G and B over the whole photo: about 0 for a photo without colour."""
    pixels = np.asarray(load_image(image), dtype=np.int16)
    return int((pixels.max(axis=2) - pixels.min(axis=2)).max())

