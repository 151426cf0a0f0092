"""Random driving-scene layouts: the road, what stands beside it and the road users, in world coordinates.

A layout is pure geometry and materials; ``render.py`` turns it into an image and exact labels. World frame as in
``camera.py``: X right, Y down, Z forward, the ground at Y = camera height. Every object is a union of axis-aligned
boxes and ellipsoids ("parts") standing on the ground at its sampled distance, so its size and image position follow
from the camera alone. Semantic classes are Cityscapes trainIds; object classes the 8 Cityscapes instance classes.
"""
from __future__ import annotations

import colorsys
import math
from dataclasses import dataclass, field

import numpy as np

from perception.data.synthetic.camera import PinholeCamera

# Cityscapes trainIds.
ROAD, SIDEWALK, BUILDING, WALL, FENCE, POLE, LIGHT, SIGN, VEGETATION, TERRAIN, SKY = range(11)
PERSON, RIDER, CAR, TRUCK, BUS, TRAIN, MOTORCYCLE, BICYCLE = range(11, 19)
GAP = -1  # no structure on this stretch of a side plane: rays pass through
BOX, ELLIPSOID = 0, 1


@dataclass
class SidePlane:
    """Structures on the vertical plane X = ``x`` beside the road, piecewise along Z.

    Attributes:
        x: plane position (negative on the left).
        z_edges (ndarray[S + 1]): segment boundaries along Z, increasing.
        kind (ndarray[S]): trainId of each segment (BUILDING, WALL, FENCE, VEGETATION) or GAP.
        top (ndarray[S]): Y of each segment's top edge (Y down: the ground is at camera height); +inf for a GAP,
            so that no ray hits it.
        mat (ndarray[S]): material index of each segment.
    """

    x: float
    z_edges: np.ndarray
    kind: np.ndarray
    top: np.ndarray
    mat: np.ndarray


@dataclass
class Lighting:
    """Shading and camera response of one scene."""

    face: np.ndarray  # [4] brightness of faces facing the camera (-Z), the left (-X), the right (+X), up (-Y)
    sun: np.ndarray  # [3] unit direction towards the sun, for ellipsoids
    ground: float
    exposure: float
    tint: np.ndarray  # [3] per-channel gain
    visibility: float  # haze: fraction exp(-depth / visibility) of the surface colour is kept
    noise: float  # sensor noise standard deviation (0..255 scale)
    blur: float  # Gaussian blur sigma in pixels (0 = none)
    texture: float  # amplitude of surface texture


@dataclass
class SceneLayout:
    """Everything a frame is rendered from.

    Attributes:
        camera: the camera at Z = 0.
        palette (ndarray[M, 3]): material colours, 0..255.
        zones (ndarray[4]): ground X boundaries: left verge | left sidewalk | road | right sidewalk | right verge.
        zone_kind (ndarray[5]), zone_mat (ndarray[5]): trainId and material of each ground zone.
        lines (ndarray[L, 3]): lane markings: X, dashed (0/1), material.
        sides: near and far planes of both sides.
        backdrop_z: Z of the buildings closing the street.
        skyline (ndarray[K + 1]), skyline_top (ndarray[K]), skyline_mat (ndarray[K]): backdrop segments along X.
        lo (ndarray[P, 3]), hi (ndarray[P, 3]): part bounds (boxes) or centre - radii / centre + radii (ellipsoids).
        shape (ndarray[P]): BOX or ELLIPSOID. part_kind (ndarray[P]): trainId. part_mat (ndarray[P]): material.
        part_instance (ndarray[P]): index into the instances, -1 for stuff (poles, trees, signs).
        emissive (ndarray[P]): unshaded parts (lamps).
        instance_kind (ndarray[K]): trainId of each instance. velocity (ndarray[K]): m/s along Z.
        sky (ndarray[2, 3]): sky colour at the horizon and at the top of the image.
        window_mat: material of building windows. window_size: (spacing along Z, floor height).
        light: lighting.
        dash: dash period (m) and the fraction painted.
        ego_lane: X bounds (left, right) of the lane the camera drives in: the drivable area's "direct" region.
    """

    camera: PinholeCamera
    palette: np.ndarray
    zones: np.ndarray
    zone_kind: np.ndarray
    zone_mat: np.ndarray
    lines: np.ndarray
    sides: list[SidePlane]
    backdrop_z: float
    skyline: np.ndarray
    skyline_top: np.ndarray
    skyline_mat: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    shape: np.ndarray
    part_kind: np.ndarray
    part_mat: np.ndarray
    part_instance: np.ndarray
    emissive: np.ndarray
    instance_kind: np.ndarray
    velocity: np.ndarray
    sky: np.ndarray
    window_mat: int
    window_size: tuple[float, float]
    light: Lighting
    dash: tuple[float, float] = (6.0, 0.5)  # dash period (m) and the fraction painted
    ego_lane: tuple[float, float] = (-1.75, 1.75)


@dataclass
class _Builder:
    """Accumulates materials and parts while a layout is sampled."""

    rng: np.random.Generator
    ground_y: float
    palette: list = field(default_factory=list)
    parts: list = field(default_factory=list)  # (lo, hi, shape, kind, mat, instance, emissive)
    instances: list = field(default_factory=list)  # (kind, velocity)

    def material(self, rgb) -> int:
        # np.minimum/np.maximum: np.clip's Python-level dispatch costs more than the colour itself here.
        self.palette.append(np.minimum(np.maximum(np.asarray(rgb, np.float32), np.float32(0)), np.float32(255)))
        return len(self.palette) - 1

    def jitter(self, rgb, amount: float = 12.0) -> int:
        return self.material(np.asarray(rgb, np.float32) + self.rng.normal(0, amount, 3))

    def hsv(self, h, s, v) -> int:
        return self.material(np.array(colorsys.hsv_to_rgb(h % 1.0, min(max(s, 0), 1), min(max(v, 0), 1))) * 255)

    def instance(self, kind: int, velocity: float) -> int:
        self.instances.append((kind, velocity))
        return len(self.instances) - 1

    def box(self, x: float, z: float, width: float, height: float, length: float, kind: int, mat: int,
            instance: int = -1, bottom: float = 0.0, emissive: bool = False) -> None:
        """A box centred at (x, z) on the ground plane, from ``bottom`` to ``bottom + height`` metres up."""
        y1 = self.ground_y - bottom
        lo = (x - width / 2, y1 - height, z - length / 2)
        hi = (x + width / 2, y1, z + length / 2)
        self.parts.append((lo, hi, BOX, kind, mat, instance, emissive))

    def ellipsoid(self, x: float, z: float, radii, centre_height: float, kind: int, mat: int,
                  instance: int = -1) -> None:
        c = np.array([x, self.ground_y - centre_height, z])
        r = np.asarray(radii, np.float64)
        self.parts.append((tuple(c - r), tuple(c + r), ELLIPSOID, kind, mat, instance, False))


# --- road users ---------------------------------------------------------------------------------------------------

def _vehicle_colour(b: _Builder) -> int:
    r = b.rng.random()
    if r < 0.25:
        return b.jitter((225, 225, 225), 10)  # white
    if r < 0.45:
        return b.jitter((35, 35, 38), 8)  # black
    if r < 0.65:
        return b.jitter((150, 152, 158), 12)  # silver / grey
    return b.hsv(b.rng.random(), b.rng.uniform(0.4, 0.9), b.rng.uniform(0.3, 0.85))


def _wheels(b: _Builder, x, z, width, length, inst, kind, radius=0.33, axle_frac=0.32) -> None:
    mat = b.jitter((20, 20, 22), 4)
    for dz in (-axle_frac * length, axle_frac * length):
        b.box(x, z + dz, width, 2 * radius, 2 * radius, kind, mat, inst)


def add_car(b: _Builder, x: float, z: float, velocity: float) -> None:
    inst = b.instance(CAR, velocity)
    w, l, h = b.rng.uniform(1.65, 1.95), b.rng.uniform(3.8, 4.9), b.rng.uniform(0.55, 0.8)
    paint, glass = _vehicle_colour(b), b.jitter((45, 55, 65), 10)
    b.box(x, z, w, h, l, CAR, paint, inst, bottom=0.28)
    cabin_h = b.rng.uniform(0.45, 0.65)
    b.box(x, z - 0.1 * l * b.rng.uniform(-1, 1), w * 0.88, cabin_h, l * b.rng.uniform(0.45, 0.6), CAR, glass, inst,
          bottom=0.28 + h)
    _wheels(b, x, z, w * 0.96, l, inst, CAR)


def add_truck(b: _Builder, x: float, z: float, velocity: float) -> None:
    inst = b.instance(TRUCK, velocity)
    w, l = b.rng.uniform(2.2, 2.5), b.rng.uniform(6.0, 9.0)
    cargo_h, cab_h, cab_l = b.rng.uniform(2.4, 3.2), b.rng.uniform(1.8, 2.2), 2.0
    cargo = b.jitter((200, 200, 200), 40)
    b.box(x, z + cab_l / 2, w, cargo_h, l - cab_l, TRUCK, cargo, inst, bottom=0.6)
    b.box(x, z - (l - cab_l) / 2, w * 0.95, cab_h, cab_l, TRUCK, _vehicle_colour(b), inst, bottom=0.5)
    _wheels(b, x, z, w * 0.9, l, inst, TRUCK, radius=0.5, axle_frac=0.38)


def add_bus(b: _Builder, x: float, z: float, velocity: float) -> None:
    inst = b.instance(BUS, velocity)
    w, l = 2.55, b.rng.uniform(10.0, 12.5)
    body, glass = b.hsv(b.rng.random(), b.rng.uniform(0.3, 0.9), b.rng.uniform(0.5, 0.95)), b.jitter((40, 50, 60))
    b.box(x, z, w, 1.2, l, BUS, body, inst, bottom=0.35)
    b.box(x, z, w * 0.99, 1.1, l * 0.98, BUS, glass, inst, bottom=1.55)
    b.box(x, z, w, 0.35, l, BUS, body, inst, bottom=2.65)
    _wheels(b, x, z, w * 0.92, l, inst, BUS, radius=0.5, axle_frac=0.35)


def _human(b: _Builder, x, z, kind, inst, bottom=0.0, seated=False, crossing=False) -> float:
    """Legs, torso and head; returns the top height. ``crossing`` turns the body to walk across the road."""
    scale = b.rng.uniform(0.9, 1.1)
    depth_w, side_w = 0.25 * scale, 0.42 * scale
    width, length = (depth_w, side_w) if crossing else (side_w, depth_w)
    legs_h = (0.45 if seated else 0.85) * scale
    b.box(x, z, width * 0.85, legs_h, length * 0.85, kind, b.jitter((40, 45, 70), 25), inst, bottom=bottom)
    torso_h = 0.62 * scale
    b.box(x, z, width, torso_h, length, kind, b.hsv(b.rng.random(), b.rng.uniform(0, 0.9), b.rng.uniform(0.2, 0.95)),
          inst, bottom=bottom + legs_h)
    skin = b.jitter(((230, 190, 160), (190, 140, 110), (120, 85, 60))[b.rng.integers(3)], 10)
    r = 0.11 * scale
    b.ellipsoid(x, z, (r, r * 1.15, r), bottom + legs_h + torso_h + r * 1.1, kind, skin, inst)
    return bottom + legs_h + torso_h + 2.2 * r


def add_person(b: _Builder, x: float, z: float, velocity: float, crossing: bool = False) -> None:
    _human(b, x, z, PERSON, b.instance(PERSON, velocity), crossing=crossing)


def add_cyclist(b: _Builder, x: float, z: float, velocity: float, motor: bool = False) -> None:
    """A bicycle (or motorcycle) and its rider: two instances, as in Cityscapes."""
    kind = MOTORCYCLE if motor else BICYCLE
    inst = b.instance(kind, velocity)
    length, radius = (1.9, 0.32) if motor else (1.7, 0.33)
    frame = _vehicle_colour(b)
    _wheels(b, x, z, 0.12 if motor else 0.05, length, inst, kind, radius=radius, axle_frac=0.3)
    if motor:
        b.box(x, z, 0.45, 0.55, length * 0.7, kind, frame, inst, bottom=0.35)
    else:
        b.box(x, z, 0.06, 0.45, length * 0.65, kind, frame, inst, bottom=0.45)
    _human(b, x, z - 0.1, RIDER, b.instance(RIDER, velocity), bottom=0.5 if motor else 0.55, seated=True)


# --- street furniture ----------------------------------------------------------------------------------------------

def add_pole(b: _Builder, x: float, z: float, side: int) -> None:
    """A pole, sometimes carrying a traffic sign or a traffic light facing the camera."""
    height = b.rng.uniform(3.0, 7.0)
    b.box(x, z, 0.14, height, 0.14, POLE, b.jitter((120, 120, 118), 20))
    r = b.rng.random()
    if r < 0.4:
        size = b.rng.uniform(0.5, 0.9)
        colour = ((200, 30, 30), (30, 70, 190), (230, 190, 30), (235, 235, 235))[b.rng.integers(4)]
        b.box(x, z - 0.1, size, size, 0.05, SIGN, b.jitter(colour, 15),
              bottom=min(height - size, b.rng.uniform(2.0, 3.0)))
    elif r < 0.65:
        bottom = min(height - 1.0, b.rng.uniform(2.5, 4.5))
        b.box(x, z - 0.15, 0.35, 0.95, 0.3, LIGHT, b.jitter((40, 40, 35), 10), bottom=bottom)
        lamp = b.rng.integers(3)
        colour = ((255, 60, 40), (255, 200, 40), (60, 255, 120))[lamp]
        b.box(x, z - 0.31, 0.2, 0.2, 0.02, LIGHT, b.material(colour), bottom=bottom + 0.68 - 0.3 * lamp,
              emissive=True)


def add_tree(b: _Builder, x: float, z: float) -> None:
    trunk = b.rng.uniform(1.5, 3.5)
    b.box(x, z, 0.3, trunk + 0.5, 0.3, VEGETATION, b.jitter((90, 70, 50), 15))
    r = b.rng.uniform(1.2, 3.0)
    leaf = b.material((b.rng.uniform(25, 80), b.rng.uniform(70, 140), b.rng.uniform(20, 60)))
    b.ellipsoid(x, z, (r, r * b.rng.uniform(0.8, 1.3), r), trunk + r, VEGETATION, leaf)


# --- the street ----------------------------------------------------------------------------------------------------

def _side_plane(b: _Builder, x: float, z_end: float, far: bool) -> SidePlane:
    """Segments along Z on one plane: buildings, walls, fences, hedges and gaps."""
    edges, kinds, tops, mats = [-1e4, -5.0], [GAP], [np.inf], [0]
    choices = (BUILDING, VEGETATION) if far else (BUILDING, BUILDING, WALL, FENCE, VEGETATION, GAP)
    while edges[-1] < z_end:
        kind = choices[b.rng.integers(len(choices))]
        edges.append(edges[-1] + b.rng.uniform(6.0, 30.0))
        if kind == BUILDING:
            height = b.rng.uniform(6.0, 28.0)
            mat = b.hsv(b.rng.uniform(0.0, 0.15), b.rng.uniform(0.0, 0.5), b.rng.uniform(0.35, 0.9))
        elif kind == WALL:
            height, mat = b.rng.uniform(1.0, 3.0), b.jitter((160, 150, 130), 30)
        elif kind == FENCE:
            height, mat = b.rng.uniform(1.0, 2.2), b.jitter((100, 100, 95), 30)
        elif kind == VEGETATION:
            height = b.rng.uniform(1.0, 3.0) if not far else b.rng.uniform(5.0, 15.0)
            mat = b.material((b.rng.uniform(20, 70), b.rng.uniform(60, 130), b.rng.uniform(15, 50)))
        else:
            height, mat = 0.0, 0
        kinds.append(kind)
        tops.append(b.ground_y - height if kind != GAP else np.inf)
        mats.append(mat)
    edges[-1] = 1e6  # the last segment runs on, so that every Z falls in one
    return SidePlane(x, np.array(edges, np.float32), np.array(kinds, np.int64), np.array(tops, np.float32),
                     np.array(mats, np.int64))


def _lighting(rng: np.random.Generator) -> Lighting:
    elevation, azimuth = rng.uniform(0.2, 1.2), rng.uniform(-math.pi, math.pi)
    sun = np.array([math.cos(elevation) * math.sin(azimuth), -math.sin(elevation),
                    -math.cos(elevation) * math.cos(azimuth)], np.float32)
    ambient = rng.uniform(0.45, 0.7)
    # Lambert on the four axis-aligned face normals a box can show: -Z (front), -X, +X, -Y (top).
    normals = np.array([[0, 0, -1], [-1, 0, 0], [1, 0, 0], [0, -1, 0]], np.float32)
    face = ambient + (1 - ambient) * np.clip(normals @ sun, 0, None)
    return Lighting(face=face.astype(np.float32), sun=sun, ground=float(face[3]),
                    exposure=rng.uniform(0.7, 1.25), tint=rng.uniform(0.9, 1.1, 3).astype(np.float32),
                    visibility=rng.uniform(150.0, 700.0), noise=rng.uniform(1.0, 6.0),
                    blur=rng.uniform(0.3, 0.9) if rng.random() < 0.5 else 0.0, texture=rng.uniform(0.03, 0.12))


def sample_layout(rng: np.random.Generator, width: int, height: int, travel: float = 0.0,
                  density: float = 1.0) -> SceneLayout:
    """A random street scene seen by a Cityscapes-like camera at ``width`` x ``height`` pixels.

    Args:
        rng: the scene's random generator (the scene is a pure function of its state).
        width: image width in pixels.
        height: image height in pixels.
        travel: metres the camera will drive forward (sequences): the street is made that much longer.
        density: multiplies the expected number of road users.
    """
    camera = PinholeCamera.cityscapes_like(width, height, height=rng.uniform(1.1, 1.7),
                                           pitch=math.radians(rng.uniform(-1.0, 3.0)),
                                           focal_scale=rng.uniform(0.95, 1.05))
    b = _Builder(rng, ground_y=camera.height)
    far = rng.uniform(60.0, 140.0) + travel

    # Ground: lanes around the camera, sidewalks, verges (terrain or more pavement).
    n_lanes, lane_w = int(rng.integers(2, 5)), rng.uniform(3.0, 3.7)
    ego = int(rng.integers(n_lanes))
    x_left = -(ego + 0.5) * lane_w + rng.uniform(-0.4, 0.4)
    x_right = x_left + n_lanes * lane_w
    walk_l, walk_r = rng.uniform(1.5, 4.5, 2)
    zones = np.array([x_left - walk_l, x_left, x_right, x_right + walk_r], np.float32)
    road = b.jitter((85, 85, 88), 15)
    walk = b.jitter(((150, 148, 145), (170, 150, 130), (140, 110, 100))[rng.integers(3)], 12)
    grass = b.material((rng.uniform(60, 110), rng.uniform(85, 130), rng.uniform(40, 70)))
    verge = [(TERRAIN, grass) if rng.random() < 0.5 else (SIDEWALK, walk) for _ in range(2)]
    zone_kind = np.array([verge[0][0], SIDEWALK, ROAD, SIDEWALK, verge[1][0]], np.int64)
    zone_mat = np.array([verge[0][1], walk, road, walk, verge[1][1]], np.int64)
    white = b.jitter((225, 225, 215), 10)
    lines = [(x_left + k * lane_w, 1.0, white) for k in range(1, n_lanes)]
    if rng.random() < 0.7:
        lines += [(x_left + 0.25, 0.0, white), (x_right - 0.25, 0.0, white)]

    # Sides: a near plane (buildings, walls, fences, hedges, gaps) and a far plane seen through the gaps.
    setback = rng.uniform(0.0, 6.0, 2)
    near_l, near_r = zones[0] - setback[0], zones[3] + setback[1]
    sides = [_side_plane(b, float(near_l), far, False), _side_plane(b, float(near_r), far, False),
             _side_plane(b, float(near_l - rng.uniform(5, 20)), far, True),
             _side_plane(b, float(near_r + rng.uniform(5, 20)), far, True)]
    skyline = np.cumsum(np.concatenate([[-400.0], rng.uniform(8.0, 30.0, 60)])).astype(np.float32)
    skyline_top = (camera.height - rng.uniform(6.0, 30.0, len(skyline) - 1)).astype(np.float32)
    skyline_mat = np.array([b.hsv(rng.uniform(0, 0.15), rng.uniform(0, 0.5), rng.uniform(0.35, 0.9))
                            for _ in range(len(skyline) - 1)], np.int64)

    # Street furniture along the kerbs and the verges.
    for side, kerb in ((0, zones[1] - 0.4), (1, zones[2] + 0.4)):
        z = rng.uniform(2.0, 20.0)
        while z < far - 5:
            add_pole(b, float(kerb), z, side)
            z += rng.uniform(12.0, 35.0)
        if rng.random() < 0.6:
            x_tree = (zones[0] - setback[0] / 2) if side == 0 else (zones[3] + setback[1] / 2)
            z = rng.uniform(3.0, 12.0)
            while z < far - 5:
                add_tree(b, float(x_tree), z)
                z += rng.uniform(6.0, 18.0)

    # Road users: vehicles per lane (on a two-way street the left lanes drive towards the camera), cyclists, people.
    n_oncoming = n_lanes // 2 if ego >= n_lanes // 2 and rng.random() < 0.7 else 0
    for lane in range(n_lanes):
        x_lane = x_left + (lane + 0.5) * lane_w
        oncoming = lane < n_oncoming
        z = rng.uniform(6.0, 25.0) if lane == ego else rng.uniform(-2.0, 15.0)
        while z < far - 10:
            if rng.random() < 0.45 * density:
                r = rng.random()
                speed = rng.uniform(3.0, 12.0) * (-1 if oncoming else 1)
                x = x_lane + rng.uniform(-0.4, 0.4)
                if r < 0.78:
                    add_car(b, x, z + 2.5, speed)
                elif r < 0.88:
                    add_truck(b, x, z + 4.5, speed)
                    z += 5
                elif r < 0.93:
                    add_bus(b, x, z + 6.0, speed)
                    z += 7
                else:
                    add_cyclist(b, x, z + 1.0, speed, motor=rng.random() < 0.5)
            z += rng.uniform(7.0, 20.0)
    for _ in range(rng.poisson(2.0 * density)):  # cyclists near the kerb
        x = (x_right - 0.8) if rng.random() < 0.5 else (x_left + 0.8)
        add_cyclist(b, x, rng.uniform(5.0, far - 10), rng.uniform(2.0, 6.0), motor=rng.random() < 0.3)
    for _ in range(rng.poisson(5.0 * density)):  # pedestrians on the sidewalks
        left = rng.random() < 0.5
        x = rng.uniform(zones[0] + 0.3, zones[1] - 0.3) if left else rng.uniform(zones[2] + 0.3, zones[3] - 0.3)
        add_person(b, x, rng.uniform(3.0, far - 10), rng.uniform(-1.5, 1.5))
    for _ in range(rng.poisson(0.7 * density)):  # crossing the road
        add_person(b, rng.uniform(x_left, x_right), rng.uniform(6.0, 40.0), 0.0, crossing=True)

    b.material((0, 0, 0))  # keeps the palette non-empty
    window = b.jitter((60, 75, 95), 20)
    light = _lighting(rng)
    horizon = np.array(colorsys.hsv_to_rgb(rng.uniform(0.55, 0.62), rng.uniform(0.0, 0.25), rng.uniform(0.75, 1.0)))
    zenith = np.array(colorsys.hsv_to_rgb(rng.uniform(0.55, 0.65), rng.uniform(0.1, 0.6), rng.uniform(0.55, 0.95)))
    parts = b.parts
    lo = np.array([p[0] for p in parts], np.float32).reshape(-1, 3)
    hi = np.array([p[1] for p in parts], np.float32).reshape(-1, 3)
    return SceneLayout(
        camera=camera, palette=np.stack(b.palette).astype(np.float32), zones=zones, zone_kind=zone_kind,
        zone_mat=zone_mat, lines=np.array(lines, np.float32).reshape(-1, 3), sides=sides, backdrop_z=far,
        skyline=skyline, skyline_top=skyline_top, skyline_mat=skyline_mat, lo=lo, hi=hi,
        shape=np.array([p[2] for p in parts], np.int64), part_kind=np.array([p[3] for p in parts], np.int64),
        part_mat=np.array([p[4] for p in parts], np.int64), part_instance=np.array([p[5] for p in parts], np.int64),
        emissive=np.array([p[6] for p in parts], bool),
        instance_kind=np.array([k for k, _ in b.instances], np.int64).reshape(-1),
        velocity=np.array([v for _, v in b.instances], np.float32).reshape(-1),
        sky=np.stack([horizon, zenith]).astype(np.float32) * 255, window_mat=window,
        window_size=(rng.uniform(2.5, 4.5), rng.uniform(2.8, 3.6)), light=light,
        dash=(rng.uniform(5.0, 12.0), rng.uniform(0.3, 0.6)),
        ego_lane=(float(x_left + ego * lane_w), float(x_left + (ego + 1) * lane_w)))
