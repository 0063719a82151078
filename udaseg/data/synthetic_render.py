"""Appearance of the procedural street scenes: `StyleParams` and the styling pipeline.

`render` turns a rasterised `Scene` (instance ids, see `synthetic_scene.py`) into an RGB image
and a label map. Image and label share the instance map, so they always agree. Steps: per-object
palette colours with jitter, facade windows, per-material textures, sky gradient and clouds,
cast shadows, a lighting ramp and vignetting, a per-image colour transform (brightness, contrast,
saturation, hue, white balance), camera roll, the ego-vehicle hood, blur and sensor noise. All
full-image work is vectorised (cv2.LUT, separable grids, cropped precomputed noise banks).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field, fields

import cv2
import numpy as np

from udaseg.data.synthetic_scene import (
    FACADE_FRONT,
    FACADE_LEFT,
    FACADE_RIGHT,
    IGNORE,
    ROLE_CLASS,
    ROLES,
    LayoutParams,
    Scene,
    blend,
    build_scene,
)

_ROLE_TO_CLASS = np.array([ROLE_CLASS[r] for r in ROLES], np.uint8)
# Relative (fine grain, coarse blotch) texture strength per role; scaled by the style.
_ROLE_TEXTURE = np.array([{
    "sky": (0.05, 0.15), "road": (1.0, 0.7), "marking": (0.5, 0.4), "sidewalk": (0.9, 0.5),
    "curb": (0.6, 0.3), "building": (0.6, 0.7), "foliage": (1.6, 1.2), "trunk": (1.0, 0.5),
    "car_body": (0.15, 0.25), "car_glass": (0.1, 0.3), "tyre": (0.2, 0.2),
    "car_light": (0.1, 0.1), "skin": (0.2, 0.2), "clothes": (0.5, 0.4), "pole": (0.3, 0.4),
    "sign": (0.1, 0.2), "hood": (0.1, 0.3)}[r] for r in ROLES], np.float32)


def rgb(*colours: tuple[int, int, int]) -> np.ndarray:
    """8-bit RGB triples -> an (n, 3) float32 array in [0, 1]."""
    return np.asarray(colours, np.float32) / 255.0


@dataclass(frozen=True, eq=False)
class StyleParams:
    """Appearance of one domain. `(lo, hi)` pairs are per-image uniform ranges.

    Attributes:
        palette: RGB anchors in [0, 1] per material role (see `ROLES`, plus "window"); each
            object picks one anchor at random. Blending two styles needs equal anchor counts.
        object_jitter: std of the per-object multiplicative colour jitter (per channel).
        brightness / contrast / saturation: per-image multipliers (1 = unchanged).
        hue_deg: max per-image hue rotation (degrees).
        temperature / tint: per-image warm-cool (R vs B) and green-magenta channel gains.
        texture_fine / texture_coarse: strength of grain and blotch textures (per role scaled).
        sky_gradient: darkening of the sky towards the top; cloud_cover: fraction of cloudy sky.
        facade_light: brightness difference between the sunlit and the shaded street side.
        shadow: darkness of cast shadows (0 = none); shadow_blur: their softness (px at H=128).
        light_gradient: amplitude of a random linear lighting ramp across the image.
        vignette: darkening of the corners.
        blur: Gaussian blur sigma (px at H=128); noise: sensor noise std (in [0, 1] units).
        windows: chance that a building has windows.
    """

    palette: dict[str, np.ndarray]
    object_jitter: float = 0.1
    brightness: tuple[float, float] = (0.8, 1.2)
    contrast: tuple[float, float] = (0.9, 1.2)
    saturation: tuple[float, float] = (0.85, 1.3)
    hue_deg: float = 15.0
    temperature: tuple[float, float] = (-0.03, 0.03)
    tint: tuple[float, float] = (-0.02, 0.02)
    texture_fine: float = 0.03
    texture_coarse: float = 0.03
    sky_gradient: float = 0.25
    cloud_cover: tuple[float, float] = (0.0, 0.3)
    facade_light: float = 0.1
    shadow: float = 0.15
    shadow_blur: float = 0.0
    light_gradient: float = 0.05
    vignette: float = 0.0
    blur: tuple[float, float] = (0.0, 0.0)
    noise: tuple[float, float] = (0.0, 0.004)
    windows: float = 0.9
    _table: np.ndarray = field(init=False, repr=False)   # (roles + window, K, 3) anchors
    _counts: np.ndarray = field(init=False, repr=False)  # anchors per role

    def __post_init__(self) -> None:
        keys = ROLES + ("window",)
        k_max = max(len(self.palette[k]) for k in keys)
        table = np.zeros((len(keys), k_max, 3), np.float32)
        for i, key in enumerate(keys):
            table[i, :len(self.palette[key])] = self.palette[key]
        object.__setattr__(self, "_table", table)
        object.__setattr__(self, "_counts", np.array([len(self.palette[k]) for k in keys]))

    def lerp(self, other: StyleParams, t: float) -> StyleParams:
        """Blend towards `other` (t=0: self, t=1: other) field by field."""
        return type(self)(**{f.name: blend(getattr(self, f.name), getattr(other, f.name), t)
                             for f in fields(self) if f.init})


@functools.lru_cache(maxsize=8)
def _resources(height: int, width: int) -> dict[str, np.ndarray]:
    """Fixed texture/noise banks (2H x 2W, cropped at random offsets) and pixel grids."""
    rng = np.random.default_rng(np.random.SeedSequence(20_240_601))
    size = (2 * width, 2 * height)
    fine = cv2.GaussianBlur(rng.standard_normal(size[::-1], np.float32), (0, 0),
                            0.7 * height / 128)

    def octaves(*weights_by_period: tuple[int, float]) -> np.ndarray:
        out = np.zeros(size[::-1], np.float32)
        for period, weight in weights_by_period:  # period: feature size in px at H = 128
            cells = max(round(period * height / 128), 1)
            low = rng.standard_normal((max(2 * height // cells, 2), max(2 * width // cells, 2)),
                                      np.float32)
            out += weight * cv2.resize(low, size, interpolation=cv2.INTER_CUBIC)
        return out / out.std()

    banks = {"fine": fine / fine.std(),
             "coarse": octaves((3, 0.3), (6, 0.5), (12, 0.8), (24, 1.0)),
             "cloud": octaves((12, 0.4), (24, 0.8), (48, 1.0)),
             "noise": rng.standard_normal((2 * height, 2 * width, 3), np.float32)}
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    banks["x"], banks["y"] = xx / width - 0.5, yy / height - 0.5
    banks["r2"] = banks["x"] ** 2 + (banks["y"] * height / width) ** 2
    for bank in banks.values():  # shared by every call: never written
        bank.setflags(write=False)
    return banks


def _crop(rng: np.random.Generator, bank: np.ndarray, height: int, width: int) -> np.ndarray:
    oy, ox = rng.integers(0, height), rng.integers(0, width)
    return bank[oy:oy + height, ox:ox + width]


def _colour_matrix(rng: np.random.Generator, st: StyleParams) -> np.ndarray:
    """Per-image global colour transform: 3x4 (brightness, contrast, saturation, hue, WB)."""
    u = lambda r: float(rng.uniform(*r))  # noqa: E731
    luma = np.array([0.299, 0.587, 0.114], np.float32)
    sat = u(st.saturation)
    m = sat * np.eye(3, dtype=np.float32) + (1 - sat) * np.tile(luma, (3, 1))
    theta = math.radians(rng.uniform(-st.hue_deg, st.hue_deg))
    k = np.full((3, 3), 1 / 3, np.float32)   # rotation about the grey axis (Rodrigues)
    cross = np.array([[0, -1, 1], [1, 0, -1], [-1, 1, 0]], np.float32) / math.sqrt(3)
    rot = math.cos(theta) * np.eye(3) + math.sin(theta) * cross + (1 - math.cos(theta)) * k
    t, g = u(st.temperature), u(st.tint)
    gains = np.diag([1 + t, 1 + g, 1 - t]).astype(np.float32) * u(st.brightness)
    c = u(st.contrast)
    linear = c * gains @ rot.astype(np.float32) @ m
    return np.concatenate([linear, np.full((3, 1), (1 - c) * 0.45, np.float32)], 1)


def _lut(inst: np.ndarray, table: np.ndarray) -> np.ndarray:
    """table[inst] for a uint8 map and an (n,) or (n, C) table (cv2.LUT: fast)."""
    lut = np.zeros((256,) + table.shape[1:], table.dtype)
    lut[:len(table)] = table
    if lut.ndim == 1:
        return cv2.LUT(inst, lut)
    return cv2.merge([cv2.LUT(inst, np.ascontiguousarray(lut[:, c])) for c in range(lut.shape[1])])


_WINDOW_LUM = np.random.default_rng(7).uniform(0.75, 1.25, 64).astype(np.float32)


def _windows(rng: np.random.Generator, sc: Scene,
             facade: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Windows: a perspective-correct grid on the side facades, a screen grid on distant ones.

    On a side facade, depth depends on the column only and height above ground is separable,
    so everything is computed from per-row / per-column vectors. Returns (mask, brightness of
    the window pixels, one value per window).
    """
    H, W = facade.shape
    R, yh = sc.road_px, sc.yh
    y_far = min(int(yh + sc.far * (H - yh)) + 2, H)
    on = np.zeros((H, W), bool)
    cell = np.zeros((H, W), np.int32)
    for orient, sign in ((FACADE_LEFT, -1.0), (FACADE_RIGHT, 1.0), (FACADE_FRONT, 0.0)):
        period, floor = rng.uniform(0.45, 0.8), rng.uniform(0.4, 0.6)
        cols = np.arange(W, dtype=np.float32)
        y1 = H
        if sign:
            lo, hi = (0, min(int(sc.xv), W)) if sign < 0 else (max(int(sc.xv) + 1, 0), W)
            cols = cols[lo:hi]
            px_per_unit = np.maximum(np.float32(sign) * (cols - np.float32(sc.xv)),
                                     np.float32(0.5)) * np.float32(1 / sc.lb)
            along = np.float32(sc.focal / period) / px_per_unit
        else:
            lo, hi, y1 = 0, W, y_far
            px_per_unit = np.full(W, sc.far * R, np.float32)
            along = cols * np.float32(1 / (sc.far * R * period))
        along_i = np.floor(along)
        col_ok = ((along - along_i) > 0.35) & (px_per_unit * period > 2.5)
        if hi <= lo or not col_ok.any():
            continue
        rows = (np.float32(yh) - np.arange(y1, dtype=np.float32))[:, None]
        up = rows * (np.float32(1 / floor) / px_per_unit) + np.float32((H - yh) / (R * floor))
        up_i = np.floor(up)
        frac = up - up_i
        mask = (facade[:y1, lo:hi] == orient) & col_ok & (frac > 0.3) & (frac < 0.8) & (up > 1)
        on[:y1, lo:hi] |= mask
        cell[:y1, lo:hi] += up_i.astype(np.int32) * 7 + along_i.astype(np.int32) * 13 + orient
    return on, _WINDOW_LUM[cell[on] & 63]


def render(rng: np.random.Generator, st: StyleParams, lay: LayoutParams, height: int,
            width: int) -> tuple[np.ndarray, np.ndarray]:
    H, W, scale = height, width, height / 128.0
    sc: Scene = build_scene(rng, lay, H, W)
    res = _resources(H, W)
    inst, n = sc.inst, len(sc.roles)

    # Per-object colours: a palette anchor per object, jittered; facade lighting by sun side.
    anchor = (rng.random(n) * st._counts[sc.roles]).astype(np.int64)
    colours = st._table[sc.roles, anchor]
    colours = colours * (1 + st.object_jitter * rng.standard_normal((n, 3), np.float32)) \
        * (1 + st.object_jitter * rng.standard_normal((n, 1), np.float32))
    colours[sc.facade == FACADE_LEFT] *= 1 - st.facade_light * sc.sun
    colours[sc.facade == FACADE_RIGHT] *= 1 + st.facade_light * sc.sun
    image = _lut(inst, colours.astype(np.float32))

    has_windows = rng.random(n) < st.windows
    facade = _lut(inst, np.where(has_windows, sc.facade, 0).astype(np.uint8))
    on, lum = _windows(rng, sc, facade)
    win = st._table[-1, rng.integers(st._counts[-1])]
    if len(lum):
        image[on] = win * lum[:, None].astype(np.float32)

    # Textures (per material), sky gradient and clouds (sky lies above the street's far end).
    tex_gain = np.float32([st.texture_fine, st.texture_coarse]) * _ROLE_TEXTURE[sc.roles]
    mult = 1.0 + _lut(inst, tex_gain[:, 0].copy()) * _crop(rng, res["fine"], H, W)
    mult += _lut(inst, tex_gain[:, 1].copy()) * _crop(rng, res["coarse"], H, W)
    top_rows = min(int(sc.yh + sc.far * (H - sc.yh)) + 2, H)
    sky = (inst[:top_rows] == 0).astype(np.float32)
    top = np.clip(1.0 - np.arange(top_rows, dtype=np.float32) / max(sc.yh, 1.0), 0, 1)[:, None]
    mult[:top_rows] -= st.sky_gradient * top * sky
    cover = rng.uniform(*st.cloud_cover)
    if cover > 0:
        cloud = _crop(rng, res["cloud"], H, W)[:top_rows] - (1.0 - 2.0 * cover)
        cloud = cv2.cvtColor(np.clip(cloud * 0.8, 0, 0.85) * sky, cv2.COLOR_GRAY2RGB)
        image[:top_rows] += cloud * (np.float32(0.95) - image[:top_rows])

    # Shading: cast shadows, a lighting ramp and vignetting, as one multiplier.
    if st.shadow > 0 and sc.shadow.any():
        shadow = sc.shadow.astype(np.float32)
        if st.shadow_blur * scale > 0.3:
            shadow = cv2.GaussianBlur(shadow, (0, 0), st.shadow_blur * scale)
        mult *= 1.0 - st.shadow * shadow
    angle = rng.uniform(0, 2 * math.pi)
    mult *= 1.0 + st.light_gradient * (math.cos(angle) * res["x"] + math.sin(angle) * res["y"])
    if st.vignette > 0:
        mult *= 1.0 - st.vignette * res["r2"]
    image = cv2.transform(cv2.multiply(image, cv2.cvtColor(mult, cv2.COLOR_GRAY2RGB)),
                          _colour_matrix(rng, st))
    sigma = rng.uniform(*st.blur) * scale
    if sigma > 0.25:
        image = cv2.GaussianBlur(image, (0, 0), sigma)
    noise = rng.uniform(*st.noise)
    if noise > 0:
        image += noise * _crop(rng, res["noise"], H, W)
    np.clip(image, 0.0, 1.0, out=image)
    image = cv2.convertScaleAbs(image, alpha=255.0)

    label = _lut(inst, _ROLE_TO_CLASS[sc.roles])
    if sc.roll:
        rad = math.radians(abs(sc.roll))
        warp = cv2.getRotationMatrix2D((W / 2, H / 2), sc.roll,
                                       math.cos(rad) + (W / H) * math.sin(rad))
        image = cv2.warpAffine(image, warp, (W, H), flags=cv2.INTER_LINEAR,
                               borderMode=cv2.BORDER_REFLECT)
        label = cv2.warpAffine(label, warp, (W, H), flags=cv2.INTER_NEAREST,
                               borderMode=cv2.BORDER_REFLECT)
    if sc.hood:  # the ego vehicle's hood: camera-fixed, blurred with the optics, ignored
        y0 = max(int(H - sc.hood) - 1, 0)
        hood = np.zeros((H - y0, W), np.uint8)
        cv2.ellipse(hood, (round(W / 2), round(H + sc.hood * 2) - y0),
                    (round(W * 0.75), round(sc.hood * 3)), 0, 0, 360, 1, -1)
        ramp = np.linspace(0.9, 1.4, H - y0, dtype=np.float32)[:, None, None]
        shade = 255 * st._table[ROLES.index("hood"), 0] * ramp
        image[y0:][hood > 0] = np.broadcast_to(shade.clip(0, 255), (H - y0, W, 3))[hood > 0]
        label[y0:][hood > 0] = IGNORE
    return image, label
