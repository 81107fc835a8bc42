"""Colour: the histogram of the product's own colours, and the plain names given to them."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from engine_support import product_photo
from PIL import Image, ImageDraw

from fashion_lens.colour import (
    GRAYSCALE_TOLERANCE,
    LAB_BINS,
    colour_descriptor,
    colour_names,
    colour_spread,
    lab_colour_name,
    rgb_to_lab,
)
from fashion_lens.evaluation import colour_name_agreement
from fashion_lens.feature_cache import photo_inputs
from fashion_lens.features import FeatureRecipe
from fashion_lens.images import load_image

RED, BLUE, WHITE, BLACK = (215, 35, 45), (40, 80, 170), (255, 255, 255), (20, 20, 20)


def patch(colour, size=(120, 160), box=(30, 40, 89, 119), background=WHITE):
    """A rectangle of `colour` on a white photo."""
    image = Image.new("RGB", size, background)
    ImageDraw.Draw(image).rectangle(box, fill=colour)
    return image


@pytest.mark.fast
def test_descriptors_are_unit_vectors_of_the_histogram_bins():
    for colour in (RED, BLUE, BLACK, (236, 236, 236)):
        descriptor = colour_descriptor(patch(colour))
        assert descriptor.shape == (int(np.prod(LAB_BINS)),) and descriptor.dtype == np.float32
        assert (descriptor >= 0).all()
        assert np.linalg.norm(descriptor) == pytest.approx(1.0, abs=1e-5)


@pytest.mark.fast
def test_the_dot_product_tells_same_colours_from_different_ones():
    red, blue = colour_descriptor(patch(RED)), colour_descriptor(patch(BLUE))
    other_red = colour_descriptor(product_photo(RED, size=(90, 120), variant=3))  # another shape, another size
    assert float(red @ red) == pytest.approx(1.0, abs=1e-5)
    assert float(red @ other_red) > 0.95
    assert float(red @ blue) < 0.05
    slightly_darker = colour_descriptor(patch((200, 32, 42)))
    assert float(red @ blue) < float(red @ slightly_darker) < 1.0  # the soft bins: no jump for a small change


@pytest.mark.fast
def test_the_white_background_is_ignored_but_white_inside_the_product_counts():
    red = colour_descriptor(patch(RED))
    on_a_wide_photo = colour_descriptor(patch(RED, size=(400, 160)))
    assert float(red @ on_a_wide_photo) > 0.999  # more background, same descriptor

    with_logo = patch(RED)
    ImageDraw.Draw(with_logo).rectangle((45, 60, 74, 99), fill=WHITE)  # a white logo, a quarter of the product
    logo = colour_descriptor(with_logo)
    white = colour_descriptor(patch((250, 250, 250), background=(250, 250, 250)))
    assert float(logo @ white) > 0.3  # the logo stays in: a hole inside the outline is filled
    assert float(red @ white) < 0.05


@pytest.mark.fast
def test_rgb_to_lab_gives_the_cie_reference_values():
    lab = rgb_to_lab(np.array([[255, 255, 255], [0, 0, 0], [255, 0, 0], [0, 0, 255], [128, 128, 128]], np.uint8))
    expected = [[100, 0, 0], [0, 0, 0], [53.24, 80.09, 67.20], [32.30, 79.19, -107.86], [53.59, 0, 0]]
    assert np.allclose(lab, expected, atol=0.1)


@pytest.mark.fast
@pytest.mark.parametrize("colour, name", [
    ((250, 250, 250), "white"), ((20, 20, 20), "black"), ((128, 128, 128), "grey"),
    ((230, 40, 50), "red"), ((250, 220, 0), "yellow"), ((255, 140, 0), "orange"), ((30, 160, 40), "green"),
])
def test_colour_names_name_the_strongest_colour_of_a_patch(colour, name):
    names = colour_names(colour_descriptor(patch(colour)))
    assert names[0] == name, names
    assert 1 <= len(names) <= 2


@pytest.mark.fast
def test_colour_names_of_a_two_colour_product_name_both_strongest_first():
    image = patch(BLACK)
    ImageDraw.Draw(image).rectangle((35, 65, 84, 94), fill=(250, 250, 250))  # a white band inside, a third of it
    assert colour_names(colour_descriptor(image)) == ["black", "white"]
    assert colour_names(colour_descriptor(image), top=1) == ["black"]


@pytest.mark.fast
def test_white_on_a_fifth_of_the_product_is_named():
    image = patch(BLACK)
    ImageDraw.Draw(image).rectangle((35, 70, 84, 89), fill=(250, 250, 250))  # 1000 of the product's 4800 pixels
    assert colour_names(colour_descriptor(image)) == ["black", "white"]


@pytest.mark.fast
@pytest.mark.parametrize("lightness, name", [(10, "black"), (30, "dark grey"), (60, "grey"), (80, "light grey"), (95, "white")])
def test_unsaturated_colours_are_named_by_their_lightness(lightness, name):
    assert lab_colour_name(lightness, 3.0, -4.0) == name


@pytest.mark.fast
@pytest.mark.parametrize("colour", [(0, 0, 255), (30, 60, 200), (40, 80, 170), (20, 40, 120)],
                         ids=["pure blue", "royal blue", "denim blue", "navy"])
def test_a_blue_product_is_named_blue_or_navy(colour):
    names = colour_names(colour_descriptor(patch(colour)))
    assert names[0] in ("blue", "navy"), names


@pytest.mark.fast
def test_the_lab_colour_of_srgb_blue_is_named_blue_or_navy():
    lightness, a, b = rgb_to_lab(np.array([0, 0, 255], np.uint8))
    assert lab_colour_name(lightness, a, b) in ("blue", "navy")


@pytest.mark.fast
@pytest.mark.parametrize("colour", [(255, 0, 0), (220, 20, 20)], ids=["pure red", "signal red"])
def test_a_saturated_red_product_is_named_red(colour):
    names = colour_names(colour_descriptor(patch(colour)))
    assert names[0] == "red", names


@pytest.mark.fast
@pytest.mark.parametrize("colour", [(255, 128, 0), (230, 90, 30), (200, 80, 40)],
                         ids=["srgb orange", "burnt orange", "rust orange"])
def test_an_orange_product_is_named_orange(colour):
    names = colour_names(colour_descriptor(patch(colour)))
    assert names[0] == "orange", names


def test_the_orange_products_of_the_catalogue_are_named_orange_and_the_red_ones_not(catalog):
    """On the real catalogue, through the feature cache's own path: most Orange-labelled products
    get the name orange, more of them first orange than first red, and Red-labelled products are
    called red (or maroon) far more often than orange."""
    products = catalog[catalog["Colour"].isin(["Orange", "Red"])]
    recipe = FeatureRecipe(backbone="mobilenet_v2")
    names = [colour_names(photo_inputs(load_image(path), recipe)[1]) for path in products["image_path"]]
    agreement = colour_name_agreement(products["Colour"], names)
    assert agreement.loc["Orange", "top2"] > 0.5, agreement
    first = {label: Counter(found[0] for found, own in zip(names, products["Colour"]) if own == label and found)
             for label in ("Orange", "Red")}
    assert first["Orange"]["orange"] > first["Orange"]["red"], first
    assert first["Red"]["red"] + first["Red"]["maroon"] > 5 * first["Red"]["orange"], first


@pytest.mark.fast
def test_colour_spread_tells_grey_photos_from_coloured_ones():
    grey = patch((90, 90, 90))
    assert colour_spread(grey) <= GRAYSCALE_TOLERANCE
    assert colour_spread(grey.convert("L")) == 0
    assert colour_spread(patch(RED)) == max(RED) - min(RED)
