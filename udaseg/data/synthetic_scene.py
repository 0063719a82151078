"""Geometry of the procedural street scenes behind `SyntheticStreets` (see `synthetic.py`).

`build_scene` lays out one scene from a `LayoutParams` and an RNG and rasterises it into an
*instance map*: every drawn primitive (a facade, a car body, a tyre, a person's head, ...) gets its
own uint8 id, and a table gives each id a material *role* (which fixes the class) and a facade
orientation. The styler in `synthetic.py` turns instance ids into colours and class ids, so the
image and the label come from the very same rasterisation and always agree.

Camera model: a pinhole camera over a flat ground plane. Lengths are in "units" of the road's
half width (~5 m). A ground row `y` below the horizon `yh` has scale `s = (y - yh) / (H - yh)`
(1 at the bottom row), and one unit there spans `s * R` pixels, `R` being the road half width in
pixels at the bottom row; depth is `f / (s * R)` units. A ground point at lateral offset `l`
(road edges at `l = +-1`, facades at `l = +-lb`) projects to `x = xv + l * s * R`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, fields

import cv2
import numpy as np

SYNTHETIC_CLASSES: tuple[str, ...] = (
    "road", "sidewalk", "building", "vegetation", "sky", "car", "person", "pole", "traffic sign",
)
ROAD, SIDEWALK, BUILDING, VEGETATION, SKY, CAR, PERSON, POLE, SIGN = range(9)
IGNORE = 255

# Material roles: each drawn primitive has one; a role fixes the class and the palette entry.
ROLE_CLASS: dict[str, int] = {
    "sky": SKY, "road": ROAD, "marking": ROAD, "sidewalk": SIDEWALK, "curb": SIDEWALK,
    "building": BUILDING, "foliage": VEGETATION, "trunk": VEGETATION, "car_body": CAR,
    "car_glass": CAR, "tyre": CAR, "car_light": CAR, "skin": PERSON, "clothes": PERSON,
    "pole": POLE, "sign": SIGN, "hood": IGNORE,
}
ROLES: tuple[str, ...] = tuple(ROLE_CLASS)
ROLE_INDEX: dict[str, int] = {role: i for i, role in enumerate(ROLES)}
FACADE_NONE, FACADE_LEFT, FACADE_RIGHT, FACADE_FRONT = range(4)


@dataclass(frozen=True)
class LayoutParams:
    """Layout statistics of one domain. `(lo, hi)` pairs are uniform sampling ranges, counts are
    rounded; probabilities are per image (or per side / per pole). Lengths in road half widths.

    Attributes:
        horizon: horizon row as a fraction of the image height.
        vanishing_x: vanishing point column as a fraction of the width.
        road_half_width: road half width at the bottom row, as a fraction of the width.
        sidewalk_width: sidewalk width (units); the facades stand at `1 + sidewalk_width`.
        building_prob: chance that a side is lined with buildings (else a hedge of trees).
        building_height: facade heights (units); `building_length`: facade lengths (units).
        far_scale: ground scale `s` where the street ends in a row of distant buildings.
        skyline_height: heights of the distant buildings (units).
        cars / persons / poles / trees: object counts; `object_scale`: size multiplier.
        person_height: person height (units at ground scale 1); `person_depth`: range of the
            ground scale persons stand at (log-uniform; larger = nearer and bigger).
        pole_width: pole width (units), never under `pole_min_px` pixels; `pole_depth`: as
            `person_depth`, for poles. `sign_radius`: traffic-sign radius range (units).
        crossing_prob: chance that a person stands on the road instead of a sidewalk.
        sign_prob: chance that a pole carries a traffic sign; `lamp_prob`: a lamp arm.
        roll_deg: max absolute camera roll; `hood_prob`: chance of an ego-vehicle hood (ignored).
    """

    horizon: tuple[float, float] = (0.40, 0.50)
    vanishing_x: tuple[float, float] = (0.42, 0.58)
    road_half_width: tuple[float, float] = (0.34, 0.46)
    sidewalk_width: tuple[float, float] = (0.25, 0.45)
    building_prob: float = 0.8
    building_height: tuple[float, float] = (1.2, 3.5)
    building_length: tuple[float, float] = (2.0, 6.0)
    far_scale: tuple[float, float] = (0.09, 0.14)
    skyline_height: tuple[float, float] = (1.0, 4.0)
    cars: tuple[float, float] = (1, 4)
    persons: tuple[float, float] = (0, 3)
    poles: tuple[float, float] = (1, 3)
    trees: tuple[float, float] = (0, 3)
    object_scale: tuple[float, float] = (1.0, 1.1)
    person_height: float = 0.45
    person_depth: tuple[float, float] = (0.18, 0.9)
    pole_width: float = 0.05
    pole_min_px: float = 1.0
    pole_depth: tuple[float, float] = (0.18, 1.2)
    sign_radius: tuple[float, float] = (0.08, 0.12)
    crossing_prob: float = 0.15
    sign_prob: float = 0.4
    lamp_prob: float = 0.3
    roll_deg: float = 0.0
    hood_prob: float = 0.0

    def lerp(self, other: LayoutParams, t: float) -> LayoutParams:
        """Blend towards `other` (t=0: self, t=1: other) field by field."""
        return type(self)(**{f.name: blend(getattr(self, f.name), getattr(other, f.name), t)
                             for f in fields(self)})


def blend(a, b, t: float):
    """(1 - t) * a + t * b through dicts, tuples and arrays."""
    if isinstance(a, dict):
        return {key: blend(a[key], b[key], t) for key in a}
    if isinstance(a, tuple):
        return tuple(blend(x, y, t) for x, y in zip(a, b, strict=True))
    return (1.0 - t) * np.asarray(a) + t * np.asarray(b) if isinstance(a, np.ndarray) \
        else (1.0 - t) * a + t * b


class _Draws:
    """Uniform draws from a generator, fetched in blocks: far cheaper than one call per draw."""

    def __init__(self, rng: np.random.Generator, block: int = 256) -> None:
        self.rng, self.block = rng, block
        self.buf: list[float] = rng.random(block).tolist()
        self.pos = 0

    def random(self) -> float:
        if self.pos == len(self.buf):
            self.buf, self.pos = self.rng.random(self.block).tolist(), 0
        self.pos += 1
        return self.buf[self.pos - 1]

    def uniform(self, lo: float, hi: float) -> float:
        return lo + (hi - lo) * self.random()

    def integers(self, lo: int, hi: int) -> int:  # lo..hi-1
        return min(lo + int(self.random() * (hi - lo)), hi - 1)

    def choice(self, options: tuple):
        return options[self.integers(0, len(options))]


@dataclass
class Scene:
    """A rasterised scene: instance ids plus per-instance tables and shading helpers."""

    inst: np.ndarray        # (H, W) uint8 instance ids
    roles: np.ndarray       # (n,) role index per instance
    facade: np.ndarray      # (n,) FACADE_* orientation per instance
    shadow: np.ndarray      # (H, W) uint8, 1 where a cast shadow falls
    xv: float
    yh: float
    road_px: float          # R: road half width (px) at the bottom row
    lb: float               # lateral position of the facades (units)
    focal: float            # focal length (px)
    far: float              # ground scale where the street ends (distant buildings)
    sun: int                # +1: sun on the left (right facades lit, left side shadowed)
    roll: float             # camera roll (degrees)
    hood: float             # ego-vehicle hood height (px); 0 for none


class _Canvas:
    """Rasterises primitives into the instance map, one new id per primitive."""

    def __init__(self, height: int, width: int) -> None:
        self.inst = np.zeros((height, width), np.uint8)
        self.shadow = np.zeros((height, width), np.uint8)
        self.roles: list[int] = [ROLE_INDEX["sky"]]
        self.facade: list[int] = [FACADE_NONE]

    def new(self, role: str, facade: int = FACADE_NONE) -> int:
        if len(self.roles) >= 255:
            raise RuntimeError("too many primitives in one scene")
        self.roles.append(ROLE_INDEX[role])
        self.facade.append(facade)
        return len(self.roles) - 1

    def poly(self, points, role: str, facade: int = FACADE_NONE) -> None:
        pts = np.array([(min(max(round(x), -99999), 99999), min(max(round(y), -99999), 99999))
                        for x, y in points], np.int32)
        cv2.fillPoly(self.inst, [pts], self.new(role, facade))

    def rect(self, x0: float, y0: float, x1: float, y1: float, role: str) -> None:
        # Thin objects keep at least one pixel of width/height.
        x0, x1 = round(x0), max(round(x1), round(x0) + 1)
        y0, y1 = round(y0), max(round(y1), round(y0) + 1)
        cv2.rectangle(self.inst, (x0, y0), (x1 - 1, y1 - 1), self.new(role), -1)

    def cast_shadow(self, cx: float, cy: float, ax: float, ay: float) -> None:
        cv2.ellipse(self.shadow, (round(cx), round(cy)), (max(round(ax), 1), max(round(ay), 1)),
                    0, 0, 360, 1, -1)

    def ellipse(self, cx: float, cy: float, ax: float, ay: float, role: str) -> None:
        cv2.ellipse(self.inst, (round(cx), round(cy)), (max(round(ax), 1), max(round(ay), 1)),
                    0, 0, 360, self.new(role), -1)


def build_scene(rng: np.random.Generator, p: LayoutParams, height: int, width: int) -> Scene:
    """Lay out and rasterise one street scene drawn from the layout statistics `p`."""
    draws = _Draws(rng)
    u = lambda r: draws.uniform(r[0], r[1])  # noqa: E731
    count = lambda r: draws.integers(round(r[0]), round(r[1]) + 1)  # noqa: E731
    H, W = height, width
    yh = u(p.horizon) * H
    xv = u(p.vanishing_x) * W
    R = u(p.road_half_width) * W
    lb = 1.0 + u(p.sidewalk_width)
    focal = 0.8 * W
    s_far = u(p.far_scale)
    obj_scale = u(p.object_scale)
    c = _Canvas(H, W)

    def gy(s):  # ground row at scale s
        return yh + s * (H - yh)

    def gx(lat, s):  # column of lateral offset `lat` at scale s
        return xv + lat * s * R

    def s_of_depth(depth):
        return focal / (depth * R)

    def ground_quad(l0, l1, s0, s1, role):
        c.poly([(gx(l0, s0), gy(s0)), (gx(l1, s0), gy(s0)),
                (gx(l1, s1), gy(s1)), (gx(l0, s1), gy(s1))], role)

    # Ground: sidewalks/curbs out to the facades, road on top, dashed centre line.
    s_near = 1.6
    ground_quad(-lb - 0.5, lb + 0.5, s_near, s_far, "sidewalk")
    ground_quad(-1.0, 1.0, s_near, s_far, "road")
    for side in (-1, 1):
        ground_quad(side * 1.0, side * 1.04, s_near, s_far, "curb")
    if draws.random() < 0.85:
        depth, d_far = s_of_depth(s_near) + u((0.0, 1.5)), s_of_depth(s_far)
        lane = u((-0.06, 0.06))
        while depth < d_far:
            ground_quad(lane - 0.02, lane + 0.02, s_of_depth(depth), s_of_depth(min(depth + 0.7,
                                                                                 d_far)), "marking")
            depth += 1.8

    # Distant buildings (frontal) closing the street at s_far, some trees among them.
    y_far, x = gy(s_far), -2.0
    while x < W:
        w = s_far * R * u((1.0, 3.5))
        h = s_far * R * u(p.skyline_height)
        if draws.random() < 0.8:
            c.poly([(x, y_far), (x + w, y_far), (x + w, y_far - h), (x, y_far - h)], "building",
                   FACADE_FRONT)
        else:
            c.ellipse(x + w / 2, y_far - h * 0.4, w / 2, h * 0.45, "foliage")
        x += w

    # The two sides: a row of facades (perspective quads), or a hedge of trees.
    d_far = s_of_depth(s_far)
    for side, orient in ((-1, FACADE_LEFT), (1, FACADE_RIGHT)):
        depth = s_of_depth(4.0)
        if draws.random() < p.building_prob:
            while depth < d_far:
                d1 = min(depth + u(p.building_length), d_far)
                h = u(p.building_height)
                s0, s1 = s_of_depth(depth), s_of_depth(d1)
                c.poly([(gx(side * lb, s0), gy(s0)), (gx(side * lb, s1), gy(s1)),
                        (gx(side * lb, s1), gy(s1) - h * s1 * R),
                        (gx(side * lb, s0), gy(s0) - h * s0 * R)], "building", orient)
                depth = d1
        else:
            h = u((0.6, 1.3))
            s0 = s_of_depth(depth)
            c.poly([(gx(side * lb, s0), gy(s0)), (gx(side * lb, s_far), gy(s_far)),
                    (gx(side * lb, s_far), gy(s_far) - h * s_far * R),
                    (gx(side * lb, s0), gy(s0) - h * s0 * R)], "foliage")
            while depth < d_far:
                s = s_of_depth(depth)
                r = u((0.4, 0.8)) * s * R
                c.ellipse(gx(side * (lb + 0.3), s), gy(s) - (h + 0.2) * s * R, r, r * 0.8,
                          "foliage")
                depth += u((1.0, 2.5))

    # Objects, drawn far to near. Each entry: (scale s, draw function).
    objects: list[tuple[float, Callable[[], None]]] = []

    def depth_scale(lo=0.16, hi=1.05):  # log-uniform scale: many small far objects
        return math.exp(draws.uniform(math.log(max(lo, s_far + 0.03)), math.log(hi)))

    def car(lat, s):
        w = 0.42 * obj_scale * u((0.9, 1.1)) * s * R
        cx, yb = gx(lat, s), gy(s)
        body_h, cab_h = w * u((0.38, 0.5)), w * u((0.3, 0.4))
        wheel_w, wheel_h = w * 0.16, w * 0.17
        for sx in (-1, 1):
            c.rect(cx + sx * w * 0.36 - wheel_w / 2, yb - wheel_h, cx + sx * w * 0.36 + wheel_w / 2,
                   yb, "tyre")
        if s > 0.3:
            c.cast_shadow(cx, yb, w * 0.6, w * 0.1)
        top = yb - wheel_h * 0.6 - body_h
        c.rect(cx - w / 2, top, cx + w / 2, yb - wheel_h * 0.6, "car_body")
        cab_top = top - cab_h
        c.poly([(cx - w * 0.45, top), (cx + w * 0.45, top), (cx + w * 0.33, cab_top),
                (cx - w * 0.33, cab_top)], "car_body")
        if w > 6:
            c.poly([(cx - w * 0.38, top - 1), (cx + w * 0.38, top - 1),
                    (cx + w * 0.3, cab_top + cab_h * 0.2), (cx - w * 0.3, cab_top + cab_h * 0.2)],
                   "car_glass")
            for sx in (-1, 1):
                c.rect(cx + sx * w * 0.4 - w * 0.06, top + body_h * 0.2,
                       cx + sx * w * 0.4 + w * 0.06, top + body_h * 0.4, "car_light")

    def person(lat, s):
        h = p.person_height * obj_scale * u((0.85, 1.1)) * s * R
        cx, yb = gx(lat, s), gy(s)
        bw = h * u((0.22, 0.3))
        if draws.random() < 0.5:
            c.rect(cx - bw * 0.45, yb - h * 0.5, cx - bw * 0.05, yb, "clothes")
            c.rect(cx + bw * 0.05, yb - h * 0.5, cx + bw * 0.45, yb, "clothes")
        else:
            c.poly([(cx - bw * 0.4, yb - h * 0.5), (cx + bw * 0.4, yb - h * 0.5),
                    (cx + bw * 0.55, yb), (cx - bw * 0.55, yb)], "clothes")
        c.ellipse(cx, yb - h * 0.66, bw / 2, h * 0.19, "clothes")
        c.ellipse(cx, yb - h * 0.9, h * 0.085, h * 0.1, "skin")

    def pole(side, s):
        lat = side * u((1.07, 1.2))
        h = u((1.0, 1.6)) * s * R
        pw = max(p.pole_width * s * R, p.pole_min_px)
        cx, yb = gx(lat, s), gy(s)
        c.rect(cx - pw / 2, yb - h, cx + pw / 2, yb, "pole")
        if draws.random() < p.lamp_prob:
            c.rect(min(cx, cx - side * 0.3 * s * R), yb - h, max(cx, cx - side * 0.3 * s * R),
                   yb - h + pw, "pole")
        if draws.random() < p.sign_prob:
            r = u(p.sign_radius) * s * R
            sy = yb - h * u((0.6, 0.85))
            shape = draws.integers(0, 3)
            if shape == 0:
                c.ellipse(cx, sy, r, r, "sign")
            elif shape == 1:
                c.rect(cx - r, sy - r, cx + r, sy + r, "sign")
            else:
                c.poly([(cx - r * 1.1, sy - r), (cx + r * 1.1, sy - r), (cx, sy + r)], "sign")

    def tree(side, s):
        lat = side * (lb - u((0.05, 0.3)))
        cx, yb = gx(lat, s), gy(s)
        h, r = u((0.9, 1.5)) * s * R, u((0.3, 0.5)) * s * R
        tw = max(0.06 * s * R, 1.0)
        c.rect(cx - tw / 2, yb - h, cx + tw / 2, yb, "trunk")
        c.ellipse(cx, yb - h, r, r * u((0.9, 1.3)), "foliage")
        if s > 0.3:
            c.cast_shadow(cx, yb, r, r * 0.15)

    for _ in range(count(p.cars)):
        lat = draws.choice((-0.5, 0.5, -0.82, 0.82)) + u((-0.08, 0.08))
        s = depth_scale()
        objects.append((s, lambda lat=lat, s=s: car(lat, s)))
    for _ in range(count(p.persons)):
        s = depth_scale(*p.person_depth)
        if draws.random() < p.crossing_prob:
            lat = u((-0.9, 0.9))
        else:
            lat = draws.choice((-1, 1)) * u((1.1, lb - 0.05))
        objects.append((s, lambda lat=lat, s=s: person(lat, s)))
    for _ in range(count(p.poles)):
        side, s = draws.choice((-1, 1)), depth_scale(*p.pole_depth)
        objects.append((s, lambda side=side, s=s: pole(side, s)))
    for _ in range(count(p.trees)):
        side, s = draws.choice((-1, 1)), depth_scale(0.15, 1.2)
        objects.append((s, lambda side=side, s=s: tree(side, s)))
    for _, draw in sorted(objects, key=lambda item: item[0]):
        draw()

    # Cast shadows of the sunlit side's facades across the sidewalk and part of the road.
    sun = 1 if draws.random() < 0.5 else -1
    if draws.random() < 0.6:
        reach = u((0.5, 1.8))
        lat0, lat1 = -sun * lb, -sun * (lb - reach)
        pts = [(gx(lat0, s_near), gy(s_near)), (gx(lat1, s_near), gy(s_near)),
               (gx(lat1, s_far), gy(s_far)), (gx(lat0, s_far), gy(s_far))]
        cv2.fillPoly(c.shadow, [np.round(np.asarray(pts)).astype(np.int32)], 1)

    roll = u((-p.roll_deg, p.roll_deg)) if p.roll_deg > 0 else 0.0
    hood = u((0.06, 0.1)) * H if draws.random() < p.hood_prob else 0.0
    return Scene(c.inst, np.asarray(c.roles, np.int64), np.asarray(c.facade, np.int64),
                 c.shadow, xv, yh, R, lb, focal, s_far, sun, roll, hood)
