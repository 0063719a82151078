"""SyntheticStreets: a built-in procedural street-scene benchmark with a real domain shift.

No download needed: every image and label is rendered on the fly, deterministically, from
(domain, split, seed, index). Two domains show the same kind of scene - a street running to a
vanishing point, sidewalks, facades with windows, trees, sky, cars, persons, poles and traffic
signs - in two styles:

* ``"synthetic"`` (source, "video game"): flat saturated colours, clean aliased edges, hardly any
  texture, bright even lighting; a wide road, low camera (high horizon), few objects.
* ``"real"`` (target, "camera"): a duller palette (grey asphalt and concrete, brick, olive
  foliage, overcast skies, silver/black cars), per-image colour temperature and tint, lighting
  gradients, strong cast shadows, per-material texture, sensor noise, blur, low contrast and
  vignetting; a narrower road, higher camera (lower horizon), wider sidewalks, more cars, persons
  and poles, a small camera roll and sometimes the ego-vehicle hood (labelled 255 = ignore).

Both domains jitter colours per image and per object, so a network has to use shape and context.
The shift is mostly one of appearance (what domain adaptation can bridge) plus milder layout
statistics; shapes and the class/colour assignment stay learnable in both domains.

Tuning the shift: each domain is a pair of presets, `StyleParams` (appearance) and
`LayoutParams` (geometry). ``appearance_shift`` / ``layout_shift`` blend the target presets from
the source ones (0: no shift, 1: the full "real" preset, in between: linear; >1 extrapolates,
with care); ``style`` / ``layout`` replace a preset outright, e.g.
``SyntheticStreets("real", style=dataclasses.replace(REAL_STYLE, blur=(0.0, 0.0)))``.
The presets' fields are documented on the two classes.

Classes (train ids): road, sidewalk, building, vegetation, sky, car, person, pole, traffic sign
(person, pole and sign are small and rare: about 0.6 %, 1-1.7 % and 0.2-0.4 % of the pixels).
Scene statistics `version=2` (benchmark v2) makes them bigger and more frequent, so a network
can learn them on a CPU budget: about 2 %, 3-4 % and 2 % of the pixels (source / target),
still far below road (17-19 %) or building (38-42 %).

Code: `synthetic_scene.py` lays out and rasterises a scene into instance ids (geometry, layout
statistics); `synthetic_render.py` styles it into image + label (appearance); this module holds
the domain presets, `render_scene` and the `SyntheticStreets` dataset.
"""

from __future__ import annotations

import dataclasses
from typing import Literal, Optional

import numpy as np

from udaseg.data.base import SegmentationDataset
from udaseg.data.synthetic_render import StyleParams, render, rgb
from udaseg.data.synthetic_scene import PERSON, POLE, SIGN, SYNTHETIC_CLASSES, LayoutParams

__all__ = [
    "LAYOUTS", "REAL_LAYOUT", "REAL_LAYOUT_V2", "REAL_STYLE", "SYNTHETIC_CLASSES",
    "SYNTHETIC_LAYOUT", "SYNTHETIC_LAYOUT_V2", "SYNTHETIC_STYLE",
    "LayoutParams", "StyleParams", "SyntheticStreets", "domain_params", "render_scene",
]

Domain = Literal["synthetic", "real"]
Split = Literal["train", "val", "test"]
_DOMAIN_CODE = {"synthetic": 1, "real": 2}
_SPLIT_CODE = {"train": 11, "val": 12, "test": 13}

SYNTHETIC_STYLE = StyleParams(palette={
    "sky": rgb((80, 165, 245), (110, 190, 255), (60, 140, 235), (125, 200, 250)),
    "road": rgb((105, 100, 118), (120, 112, 128), (95, 95, 110), (118, 104, 120)),
    "marking": rgb((250, 250, 250), (245, 245, 235), (250, 225, 60), (250, 250, 250)),
    "sidewalk": rgb((205, 180, 150), (215, 195, 170), (195, 170, 170), (220, 200, 150)),
    "curb": rgb((175, 175, 180), (190, 185, 170)),
    "building": rgb((235, 145, 90), (240, 205, 115), (220, 120, 150), (150, 170, 225)),
    "foliage": rgb((55, 175, 55), (90, 200, 65), (45, 150, 80), (120, 205, 55)),
    "trunk": rgb((135, 85, 40), (120, 75, 45)),
    "car_body": rgb((225, 35, 35), (35, 85, 225), (245, 210, 35), (240, 240, 240),
                    (35, 35, 40), (40, 180, 80)),
    "car_glass": rgb((40, 55, 80), (60, 80, 110)),
    "tyre": rgb((25, 25, 25), (35, 30, 30)),
    "car_light": rgb((240, 30, 30), (250, 120, 20)),
    "skin": rgb((245, 195, 155), (205, 145, 100), (155, 100, 70), (235, 175, 135)),
    "clothes": rgb((225, 45, 45), (45, 75, 210), (55, 170, 65), (245, 200, 45),
                   (40, 40, 45), (245, 245, 245)),
    "pole": rgb((125, 125, 135), (100, 100, 115), (145, 145, 145), (90, 90, 95)),
    "sign": rgb((235, 30, 30), (30, 80, 225), (250, 210, 20), (245, 245, 245)),
    "hood": rgb((30, 30, 35), (50, 50, 60)),
    "window": rgb((60, 110, 175), (85, 145, 205), (50, 90, 150), (70, 120, 190)),
})

REAL_STYLE = StyleParams(
    palette={
        "sky": rgb((200, 206, 214), (165, 188, 215), (218, 212, 200), (145, 168, 200)),
        "road": rgb((72, 73, 76), (88, 86, 88), (60, 61, 64), (98, 94, 90)),
        "marking": rgb((200, 200, 195), (185, 185, 180), (195, 175, 95), (210, 210, 205)),
        "sidewalk": rgb((140, 135, 128), (158, 150, 142), (125, 121, 118), (168, 156, 138)),
        "curb": rgb((150, 150, 148), (130, 128, 125)),
        "building": rgb((140, 128, 114), (150, 92, 72), (182, 176, 165), (105, 101, 99)),
        "foliage": rgb((55, 75, 40), (78, 92, 45), (98, 92, 52), (44, 64, 46)),
        "trunk": rgb((72, 58, 44), (60, 52, 46)),
        "car_body": rgb((150, 150, 156), (40, 40, 45), (200, 200, 200), (45, 58, 90),
                        (112, 32, 30), (92, 96, 90)),
        "car_glass": rgb((28, 30, 35), (45, 50, 58)),
        "tyre": rgb((20, 20, 20), (30, 28, 28)),
        "car_light": rgb((165, 40, 32), (190, 110, 60)),
        "skin": rgb((200, 160, 130), (160, 120, 95), (120, 90, 70), (190, 150, 120)),
        "clothes": rgb((52, 52, 58), (82, 72, 62), (42, 52, 82), (122, 112, 102),
                       (150, 45, 42), (182, 182, 176)),
        "pole": rgb((80, 80, 80), (112, 110, 105), (62, 66, 62), (132, 126, 120)),
        "sign": rgb((172, 42, 40), (42, 72, 152), (202, 172, 42), (200, 200, 195)),
        "hood": rgb((25, 25, 28), (45, 45, 50)),
        "window": rgb((35, 40, 50), (52, 56, 66), (26, 30, 36), (72, 76, 86)),
    },
    object_jitter=0.12, brightness=(0.7, 1.15), contrast=(0.6, 0.85), saturation=(0.6, 0.95),
    hue_deg=6.0, temperature=(-0.15, 0.15), tint=(-0.06, 0.06), texture_fine=0.1,
    texture_coarse=0.14, sky_gradient=0.1, cloud_cover=(0.2, 0.9), facade_light=0.25, shadow=0.5,
    shadow_blur=1.5, light_gradient=0.35, vignette=0.35, blur=(0.5, 1.1), noise=(0.01, 0.03),
    windows=0.8,
)

SYNTHETIC_LAYOUT = LayoutParams()
REAL_LAYOUT = LayoutParams(
    horizon=(0.32, 0.42), vanishing_x=(0.38, 0.62), road_half_width=(0.26, 0.38),
    sidewalk_width=(0.35, 0.65), building_prob=0.75, building_height=(1.5, 4.5),
    building_length=(1.5, 5.0), far_scale=(0.08, 0.13), skyline_height=(1.5, 5.0), cars=(2, 7),
    persons=(1, 5), poles=(2, 5), trees=(1, 5), object_scale=(0.85, 1.0), crossing_prob=0.1,
    sign_prob=0.5, lamp_prob=0.4, roll_deg=2.0, hood_prob=0.3,
)


# Version 2 of the scene statistics: persons, poles and signs bigger (poles at least 2 px wide at
# 128x256) and more frequent, so a network can learn them at the CPU budget, while they stay the
# rare, small classes (about 2 %, 3-4 % and 2 % of the pixels against 17-19 % road).
_SMALL_OBJECTS_V2 = dict(person_height=0.6, person_depth=(0.3, 1.0), pole_width=0.09,
                         pole_min_px=2.0, pole_depth=(0.3, 1.2), sign_radius=(0.14, 0.2))
SYNTHETIC_LAYOUT_V2 = dataclasses.replace(SYNTHETIC_LAYOUT, persons=(1, 4), poles=(2, 4),
                                          sign_prob=0.6, **_SMALL_OBJECTS_V2)
REAL_LAYOUT_V2 = dataclasses.replace(REAL_LAYOUT, persons=(2, 6), poles=(3, 5), sign_prob=0.7,
                                     **_SMALL_OBJECTS_V2)
#: Scene-statistics version -> (synthetic layout, real layout).
LAYOUTS: dict[int, tuple[LayoutParams, LayoutParams]] = {
    1: (SYNTHETIC_LAYOUT, REAL_LAYOUT), 2: (SYNTHETIC_LAYOUT_V2, REAL_LAYOUT_V2)}


def domain_params(domain: Domain, appearance_shift: float = 1.0, layout_shift: float = 1.0,
                  version: int = 1) -> tuple[StyleParams, LayoutParams]:
    """Style and layout of a domain; the target is blended from the source by the shifts.
    `version` picks the scene statistics (`LAYOUTS`)."""
    if version not in LAYOUTS:
        raise ValueError(f"unknown scene version {version!r}; expected one of {list(LAYOUTS)}")
    source_layout, target_layout = LAYOUTS[version]
    if domain == "synthetic":
        return SYNTHETIC_STYLE, source_layout
    if domain != "real":
        raise ValueError(f"unknown domain {domain!r}; expected 'synthetic' or 'real'")
    style = REAL_STYLE if appearance_shift == 1.0 else \
        SYNTHETIC_STYLE.lerp(REAL_STYLE, appearance_shift)
    layout = target_layout if layout_shift == 1.0 else \
        source_layout.lerp(target_layout, layout_shift)
    return style, layout


def render_scene(domain: Domain, seed: int, height: int = 128, width: int = 256, *,
                 style: Optional[StyleParams] = None,
                 layout: Optional[LayoutParams] = None) -> tuple[np.ndarray, np.ndarray]:
    """Return (image HxWx3 uint8 RGB, label HxW uint8 train ids / 255).

    A pure function of its arguments. `style` / `layout` override the domain's presets.
    """
    if seed < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")
    default_style, default_layout = domain_params(domain)
    rng = np.random.default_rng(np.random.SeedSequence([seed, _DOMAIN_CODE[domain]]))
    return render(rng, default_style if style is None else style,
                  default_layout if layout is None else layout, height, width)


class SyntheticStreets(SegmentationDataset):
    """Procedural street scenes of one domain, rendered on the fly (see the module docstring).

    Args:
        domain: "synthetic" (source style) or "real" (target style).
        split: "train", "val" or "test"; splits (and domains, and seeds) never share scenes.
        num_images: dataset length. height, width: image size.
        seed: dataset seed; sample `index` is a pure function of (domain, split, seed, index).
        appearance_shift / layout_shift: strength of the real domain's shift (0 = none, 1 =
            the preset); ignored for the synthetic domain.
        style / layout: replace the domain's appearance / layout presets outright.
        with_labels: False to leave out "label" (an unlabelled target stream).
        version: scene statistics, 1 (the original: persons, poles and signs so small and
            rare that no CPU-budget model learns them) or 2 (bigger and more frequent, still
            the rare classes); see `LAYOUTS`.
    """

    class_names: tuple[str, ...] = SYNTHETIC_CLASSES
    has_labels: bool = True

    def __init__(self, domain: Domain = "synthetic", split: Split = "train",
                 num_images: int = 1000, height: int = 128, width: int = 256, seed: int = 0,
                 appearance_shift: float = 1.0, layout_shift: float = 1.0,
                 style: Optional[StyleParams] = None, layout: Optional[LayoutParams] = None,
                 with_labels: bool = True, version: Literal[1, 2] = 1) -> None:
        if domain not in _DOMAIN_CODE:
            raise ValueError(f"unknown domain {domain!r}; expected one of {list(_DOMAIN_CODE)}")
        if split not in _SPLIT_CODE:
            raise ValueError(f"unknown split {split!r}; expected one of {list(_SPLIT_CODE)}")
        if num_images < 1 or height < 16 or width < 16 or seed < 0:
            raise ValueError("need num_images >= 1, height and width >= 16 and seed >= 0")
        self.domain, self.split, self.num_images = domain, split, num_images
        self.height, self.width, self.seed = height, width, seed
        self.version = version
        preset_style, preset_layout = domain_params(domain, appearance_shift, layout_shift,
                                                    version)
        self.style = preset_style if style is None else style
        self.layout = preset_layout if layout is None else layout
        self.has_labels = with_labels
        self.eval_subsets: dict[str, list[int]] = {
            "mIoU": list(range(len(SYNTHETIC_CLASSES))), "mIoU-small": [PERSON, POLE, SIGN]}

    def image_seed(self, index: int) -> int:
        """The `render_scene` seed of sample `index`."""
        entropy = [self.seed, _SPLIT_CODE[self.split], _DOMAIN_CODE[self.domain], index]
        return int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0])

    def __len__(self) -> int:
        return self.num_images

    def __getitem__(self, index: int) -> dict:
        if not -self.num_images <= index < self.num_images:
            raise IndexError(f"index {index} out of range for {self.num_images} images")
        index %= self.num_images
        image, label = render_scene(self.domain, self.image_seed(index), self.height, self.width,
                                    style=self.style, layout=self.layout)
        sample = {"image": image, "name": f"{self.domain}_{self.split}_{self.seed}_{index:06d}"}
        if self.has_labels:
            sample["label"] = label
        return sample
