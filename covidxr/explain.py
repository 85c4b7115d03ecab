"""Grad-CAM for the COVID-19 class, laid back onto the film the clinician looks at.

Grad-CAM (pytorch-grad-cam's `GradCAM`) weighs the last convolutional block's activations
(`CovidNet.cam_layer`) by the mean gradient of the positive-class logit, on the input the
network saw (the lung crop, or the whole film). The map is then put back where that input came
from in the film; an ensemble's networks' maps are averaged there.

Where it runs: the network's forward pass up to the CAM layer runs on ONNX Runtime (covidxr/runtime.py,
as predict()'s does), and pytorch-grad-cam differentiates only what follows it (the last BatchNorm,
the pooling and the linear head: a "tail" module whose input is the CAM layer's output). Grad-CAM's
weights are the mean gradient of the target logit over the CAM layer's output, which these few layers
determine, so the maps are the same as a full PyTorch pass gives, with no backward pass through the
network.

The networks' tails and their Grad-CAM objects live in covidxr/cam.py, imported on the first map: the
grad-cam library takes seconds to import, and the batch engines' workers never draw a map.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from .classifier import Classifier, Prediction
from .films import Film
from .overlay import blend_index, blend_table, jet, score_colours  # noqa: F401 - jet: re-exported
from .preprocess import box_slices, resize


@dataclass
class Explanation:
    prediction: Prediction      # the same numbers as classifier.predict([film])[0]
    heatmap: np.ndarray         # float32 at film.pixels' shape, [0, 1]; 0 = no attention


def place(crop_map: np.ndarray, box: tuple[float, float, float, float], shape: tuple[int, int]) -> np.ndarray:
    """Resize a crop-sized map into its box on a zero film of `shape`, then scale its max to 1."""
    out = np.zeros(shape, np.float32)
    rows, cols = box_slices(box, shape)
    out[rows, cols] = np.maximum(resize(crop_map, rows.stop - rows.start, cols.stop - cols.start), 0.0)
    top = float(out.max())
    return out / top if top > 0 else out


def explain(classifier: Classifier, film: Film, masked: bool = True) -> Explanation:
    """The prediction and the Grad-CAM map of the positive class for one film, from one forward pass
    per network: prepare -> each network's logits and map -> the maps laid back on the film -> the
    decision and the gate, as predict() makes them.

    Each network's map is computed on its input at the model's input size (the lung crop, or the whole
    film) and resized into that input's box on the film, zero outside the box, which the network never
    saw. Where a network's input was blanked outside the dilated lung mask (`View.blank_outside_lungs`),
    `masked` (the default) also multiplies its map by that mask: there was no film detail there to read,
    and attention drawn there is mostly the 6x6 grid's bilinear upsampling bleeding over the mask's edge
    (not always only that: the network can respond to the blank area's shape, which masking hides too).
    Where the input kept its surroundings, the map is never masked: that would hide where it looked.
    Pass masked=False for the raw maps. The networks' maps are averaged, each scaled to a maximum of 1
    first, so that every network's view counts equally. The result is scaled so that its maximum is 1;
    a map with no positive evidence stays all zero.
    """
    from . import cam as cams

    (inputs,) = classifier.prepare([film])
    target = cams.target(classifier.card.positive_index)
    logits, features, heatmap = [], None, np.zeros(film.pixels.shape, np.float32)
    side = classifier.card.input_size
    for i, (net, view, x) in enumerate(zip(classifier.nets, classifier.card.views, inputs.networks)):
        a = classifier.onnx(i).cam_activations(classifier.tensor([x]))
        with cams.pool(net, side).borrow() as cam, torch.inference_mode(False), torch.enable_grad():
            crop_map = cam(input_tensor=torch.from_numpy(a), targets=target)[0]  # a normal tensor, even if the
            # caller is in inference mode: its gradient is what Grad-CAM needs
            logits.append(cam.outputs.detach())
            features = cam.model.features if features is None else features
        if masked and view.blank_outside_lungs:  # only an input blanked there has nothing to show there
            crop_map = crop_map * x.mask
        heatmap += place(crop_map, x.box, film.pixels.shape)
    prediction = classifier.decide(film, inputs, torch.stack(logits).mean(0)[0], features[0])
    top = float(heatmap.max())
    return Explanation(prediction=prediction, heatmap=heatmap / top if top > 0 else heatmap)


def heatmap_image(heatmap: np.ndarray, width: int, height: int) -> Image.Image:
    """An 8-bit grayscale picture of the map at the film's own size (0 = no attention, 255 = most)."""
    im = Image.fromarray(np.ascontiguousarray(heatmap, dtype=np.float32), mode="F")
    if im.size != (width, height):
        im = im.resize((width, height), Image.BILINEAR)
    a = np.asarray(im, dtype=np.float32)
    return Image.fromarray((np.clip(a, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8), mode="L")


def overlay(pixels: np.ndarray, heatmap: np.ndarray, alpha: float = 0.5, score: float = 1.0) -> np.ndarray:
    """The film in gray with the map drawn over it in jet colours, as uint8 RGB at pixels' shape (covidxr.overlay
    says how: the colour's opacity is alpha x the map's value; alpha = 0 gives the plain film; the colour is
    jet(map x score), so that a film's score shows in its drawing: score 1 is the plain jet map)."""
    table = blend_table(alpha, None if score == 1.0 else score_colours(score))
    h = np.asarray(heatmap, np.float32)
    if h.shape != pixels.shape:
        h = resize(h, *pixels.shape)
    return table[blend_index(pixels, h)]


def lung_mass(heatmap: np.ndarray, mask: np.ndarray) -> float:
    """Share of the map's mass inside a lung mask (nonzero = lung; any size, resized to the map's).

    A map that lives on text markers, borders or the mediastinum scores low; a uniform map scores
    the lungs' share of the film. An all-zero map has no mass: NaN."""
    m = np.asarray(mask)
    if m.shape != heatmap.shape:
        m = np.asarray(Image.fromarray((m > 0).astype(np.uint8) * 255).resize(
            (heatmap.shape[1], heatmap.shape[0]), Image.NEAREST))
    total = float(heatmap.sum())
    return float(heatmap[m > 0].sum()) / total if total > 0 else float("nan")
