"""Ray casting of a scene layout into an image with exact depth, surface normal, semantic, instance and box labels.

Every pixel's ray is intersected with the ground, the side planes, the backdrop and every part; a z-buffer keeps
the nearest hit, so occlusion is exact and every label is a property of the surface the pixel sees. Because the
camera only pitches, ray directions are separable (X by column, Y and Z by row): the ground depth is a function of
the row, a side plane's of the column, and a box's slab intersections are outer combinations of 1-D arrays. Parts
are cast only inside their projected bounding rectangle. No per-pixel Python loops.

Normals come from the geometry too: every plane and box face is perpendicular to a world axis, so the z-buffer
keeps only which axis, and the normal is that axis pointing back along the ray (-sign of the ray's component);
ellipsoids keep their exact gradient per pixel. All are rotated into the camera frame at the end.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import cv2
import numpy as np

from perception.data.synthetic.scene import BOX, BUILDING, FENCE, PERSON, SKY, SceneLayout

NEAR = 0.3  # metres: parts closer than this to the camera plane are not drawn
DARK_FACE = 0.35  # brightness of faces seen from below
# Drivable-area codes, BDD100K's: the ego lane, the other lanes, everything else.
DRIVABLE_DIRECT, DRIVABLE_ALTERNATIVE, DRIVABLE_BACKGROUND = 0, 1, 2
# What the normal of a pixel's surface is: perpendicular to world X, Y or Z, curved (per pixel), or none (sky).
AXIS_X, AXIS_Y, AXIS_Z, CURVED, NO_SURFACE = 0, 1, 2, 3, 255


@dataclass
class Frame:
    """One rendered view with its exact labels.

    Attributes:
        image (ndarray[H, W, 3]): uint8 RGB.
        depth (ndarray[H, W]): float32 camera-frame z in metres; 0 for the sky (no measurement).
        normals (ndarray[H, W, 3]): float32 unit surface normals in the camera frame (x right, y down, z along the
            optical axis), pointing out of the surface towards the camera; 0 for the sky. The ground's is
            (0, -cos(pitch), -sin(pitch)): up, i.e. towards -y.
        semantic (ndarray[H, W]): uint8 Cityscapes trainIds (the generator labels every pixel).
        instance (ndarray[H, W]): int32 index of the visible instance, -1 for stuff.
        boxes (ndarray[N, 4]): float32 xyxy pixel boxes of the visible instances that pass the size filters.
        labels (ndarray[N]): int64 detection labels (trainId - 11: person .. bicycle).
        box_instance (ndarray[N]): int64 instance index of each box.
        instance_kind (ndarray[K]): int64 trainId of every instance of the layout.
        instance_kept (ndarray[K]): bool, whether the instance got a box.
        drivable (ndarray[H, W]): uint8 drivable area in BDD100K's convention: 0 direct (the visible road of the
            ego lane), 1 alternative (the other lanes of the road), 2 background (everything else).
        lanes (ndarray[H, W]): uint8 lane markings: 1 where a painted line is visible, 0 elsewhere.
    """

    image: np.ndarray
    depth: np.ndarray
    normals: np.ndarray
    semantic: np.ndarray
    instance: np.ndarray
    boxes: np.ndarray
    labels: np.ndarray
    box_instance: np.ndarray
    instance_kind: np.ndarray
    instance_kept: np.ndarray
    drivable: np.ndarray | None = None
    lanes: np.ndarray | None = None


@functools.lru_cache(maxsize=2)
def _noise_tiles(size: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """Fixed screen-space noise (per-channel white noise, and a smooth single-channel texture), cropped per frame."""
    rng = np.random.default_rng(12345)
    white = rng.standard_normal((size, 2 * size, 3)).astype(np.float32)
    smooth = cv2.GaussianBlur(rng.standard_normal((size, 2 * size)).astype(np.float32), (0, 0), 1.2)
    smooth = smooth / smooth.std() + cv2.resize(rng.standard_normal((size // 16, size // 8)).astype(np.float32),
                                                (2 * size, size), interpolation=cv2.INTER_CUBIC)
    return white, (smooth / smooth.std()).astype(np.float32)


def _crop_tile(tile: np.ndarray, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """A random ``height`` x ``width`` window of ``tile``, wrapping around when the tile is smaller."""
    th, tw = tile.shape[:2]
    if height <= th and width <= tw:
        r, c = int(rng.integers(th - height + 1)), int(rng.integers(tw - width + 1))
        return tile[r:r + height, c:c + width]
    r, c = int(rng.integers(th)), int(rng.integers(tw))
    rows, cols = (r + np.arange(height)) % th, (c + np.arange(width)) % tw
    return tile[rows[:, None], cols[None, :]]


class _Buffers:
    """The z-buffer and the per-pixel surface attributes it guards.

    Planes write their class and material per pixel; parts only write their index into ``part`` (resolved to
    class, material and instance once at the end), which keeps the inner loop over parts cheap. ``axis`` says
    which world axis the surface's normal lies along (``CURVED``: see ``curved``, the world-frame normals of
    ellipsoids).
    """

    def __init__(self, height: int, width: int, sky_mat: int) -> None:
        self.depth = np.full((height, width), np.inf, np.float32)
        self.kind = np.full((height, width), SKY, np.uint8)
        self.mat = np.broadcast_to(sky_mat + np.arange(height, dtype=np.int32)[:, None], (height, width)).copy()
        self.shade = np.ones((height, width), np.float32)
        self.part = np.full((height, width), -1, np.int32)
        self.axis = np.full((height, width), NO_SURFACE, np.uint8)
        self.curved = np.zeros((height, width, 3), np.float32)
        # The ground's drivable code and paint, kept where the ground stays the nearest surface (``ground``).
        self.ground = np.zeros((height, width), bool)
        self.drivable = np.full((height, width), DRIVABLE_BACKGROUND, np.uint8)
        self.paint = np.zeros((height, width), bool)

    def write(self, rows: slice, cols: slice, hit: np.ndarray, t, kind, mat, shade, axis: int) -> None:
        """Store a plane's attributes where ``hit`` (already depth-tested) is true inside the window."""
        np.copyto(self.depth[rows, cols], t, where=hit, casting="unsafe")
        np.copyto(self.kind[rows, cols], kind, where=hit, casting="unsafe")
        np.copyto(self.mat[rows, cols], mat, where=hit, casting="unsafe")
        np.copyto(self.shade[rows, cols], shade, where=hit, casting="unsafe")
        np.copyto(self.axis[rows, cols], axis, where=hit, casting="unsafe")
        np.copyto(self.ground[rows, cols], False, where=hit)

    def write_part(self, rows: slice, cols: slice, hit: np.ndarray, t, part: int, shade, axis,
                   normal: np.ndarray | None = None) -> None:
        """Store a part's hit; ``normal`` ([h, w, 3], world frame) for curved parts (``axis`` = ``CURVED``)."""
        np.copyto(self.depth[rows, cols], t, where=hit)
        np.copyto(self.part[rows, cols], part, where=hit, casting="unsafe")
        np.copyto(self.shade[rows, cols], shade, where=hit, casting="unsafe")
        np.copyto(self.axis[rows, cols], axis, where=hit, casting="unsafe")
        np.copyto(self.ground[rows, cols], False, where=hit)
        if normal is not None:
            np.copyto(self.curved[rows, cols], normal, where=hit[..., None])

    def normals(self, dx: np.ndarray, dy: np.ndarray, dz: np.ndarray, pitch: float) -> np.ndarray:
        """Unit camera-frame normals [H, W, 3] of the visible surfaces (0 where there is none).

        A plane or box face perpendicular to an axis faces the camera, so its normal is that axis pointing
        against the ray: -sign of the ray's component (dx by column; dy, dz by row; the world frame's X right,
        Y down, Z forward). World -> camera is the pitch rotation about x (``PinholeCamera.world_to_camera``).
        """
        cp, sp = math.cos(pitch), math.sin(pitch)
        rotate = np.array([[1, 0, 0], [0, cp, -sp], [0, sp, cp]], np.float32)  # applied as n @ rotate.T
        # Codes 2 * axis + (ray component > 0) for the six axis-aligned normals, 6 curved, 8 none: one gather.
        table = np.zeros((10, 3), np.float32)
        for a in (AXIS_X, AXIS_Y, AXIS_Z):
            table[2 * a, a], table[2 * a + 1, a] = 1.0, -1.0
        table = table @ rotate.T
        base = np.full(256, 8, np.uint8)
        base[[AXIS_X, AXIS_Y, AXIS_Z, CURVED]] = (2 * AXIS_X, 2 * AXIS_Y, 2 * AXIS_Z, 6)
        axis = self.axis
        code = np.take(base, axis)
        code += (axis == AXIS_X) & (dx > 0)[None, :]
        code += (axis == AXIS_Y) & (dy > 0)[:, None]
        code += (axis == AXIS_Z) & (dz > 0)[:, None]
        out = np.take(table, code, axis=0)
        curved = np.nonzero(axis == CURVED)
        if len(curved[0]):
            out[curved] = self.curved[curved] @ rotate.T
        return out

    def resolve_parts(self, layout: SceneLayout) -> np.ndarray:
        """Class and material of the pixels whose nearest surface is a part; returns the instance map."""
        on_part = self.part >= 0
        index = np.where(on_part, self.part, 0)
        if len(layout.part_kind):
            np.copyto(self.kind, np.take(layout.part_kind.astype(np.uint8), index), where=on_part)
            np.copyto(self.mat, np.take(layout.part_mat.astype(np.int32), index), where=on_part)
            return np.where(on_part, np.take(layout.part_instance.astype(np.int32), index), -1)
        return np.full(self.part.shape, -1, np.int32)


def _ground(layout: SceneLayout, buf: _Buffers, dx, dy, dz, cam_z: float) -> None:
    cam_h = layout.camera.height
    below = np.nonzero(dy > 1e-6)[0]
    if len(below) == 0:
        return
    r0 = int(below[0])
    t_row = cam_h / dy[r0:]  # [Hg] ground depth of each row
    x = t_row[:, None] * dx[None, :]  # [Hg, W] world X of the ground point
    zone = np.searchsorted(layout.zones, x)
    rows = slice(r0, None)
    buf.depth[rows] = t_row[:, None]
    buf.kind[rows] = np.take(layout.zone_kind.astype(np.uint8), zone)
    mat = np.take(layout.zone_mat.astype(np.int32), zone)
    period, duty = layout.dash
    dashes = ((t_row * dz[r0:] + cam_z) / period) % 1.0 < duty  # [Hg]
    on_road = zone == 2
    painted = np.zeros(x.shape, bool)
    for x_line, dashed, line_mat in layout.lines:
        paint = (np.abs(x - x_line) < 0.075) & on_road
        if dashed:
            paint &= dashes[:, None]
        mat[paint] = int(line_mat)
        painted |= paint
    buf.mat[rows] = mat
    buf.ground[rows] = True
    buf.paint[rows] = painted
    ego = (x >= layout.ego_lane[0]) & (x < layout.ego_lane[1])
    buf.drivable[rows] = np.where(on_road, np.where(ego, DRIVABLE_DIRECT, DRIVABLE_ALTERNATIVE),
                                  DRIVABLE_BACKGROUND)
    buf.shade[rows] = layout.light.ground
    buf.axis[rows] = AXIS_Y


def _side_planes(layout: SceneLayout, buf: _Buffers, dx, dy, dz, cam_z: float) -> None:
    cam = layout.camera
    cam_h = cam.height
    spacing, floor = layout.window_size
    for plane in layout.sides:
        tops = plane.top[np.isfinite(plane.top)]
        if len(tops) == 0:
            continue
        cols = np.nonzero(dx < -1e-6 if plane.x < 0 else dx > 1e-6)[0]
        t_col = (plane.x / dx[cols]).astype(np.float32)  # depth of the plane in each column
        ahead = t_col * dz.min() < layout.backdrop_z - cam_z  # beyond the backdrop nothing is visible
        cols, t_col = cols[ahead], t_col[ahead]
        if len(cols) == 0:
            continue
        # Rows where some column's hit point can lie between the lowest top and the ground (y grows with t
        # below the horizon and shrinks above it).
        t_lo, t_hi = t_col.min(), t_col.max()
        row_ok = ((dy <= 0) | (dy * t_lo <= cam_h)) & (dy * np.where(dy > 0, t_hi, t_lo) >= tops.min())
        rows = np.nonzero(row_ok)[0]
        if len(rows) == 0:
            continue
        rs, cs = slice(int(rows[0]), int(rows[-1]) + 1), slice(int(cols[0]), int(cols[-1]) + 1)
        y = dy[rs, None] * t_col[None, :]
        z = dz[rs, None] * t_col[None, :] + cam_z
        seg = np.searchsorted(plane.z_edges, z, side="right") - 1  # in range: the edges span all of Z
        hit = (y >= np.take(plane.top, seg)) & (y <= cam_h) & (t_col[None, :] < buf.depth[rs, cs])
        kind = np.take(plane.kind.astype(np.uint8), seg)
        if (plane.kind == FENCE).any():  # posts and rails; the rest of a fence is see-through
            is_fence = kind == FENCE
            height_above = cam_h - y
            solid = ((z / 2.5) % 1.0 < 0.05) | ((height_above / 0.45) % 1.0 < 0.2) | (height_above < 0.3)
            hit &= ~is_fence | solid
        mat = np.take(plane.mat.astype(np.int32), seg)
        if (plane.kind == BUILDING).any():
            # Windows are texture, not labels: the column's Z at the camera's height is close enough.
            col_on = ((t_col * dz[rs].mean() + cam_z) / spacing) % 1.0 < 0.45
            mat[_windows(y, cam_h, floor, col_on[None, :]) & (kind == BUILDING)] = layout.window_mat
        shade = layout.light.face[2] if plane.x < 0 else layout.light.face[1]  # the face that looks at the road
        buf.write(rs, cs, hit, t_col[None, :], kind, mat, shade, AXIS_X)


def _windows(y: np.ndarray, cam_h: float, floor: float, along: np.ndarray) -> np.ndarray:
    """Window pattern on a facade: floors of height ``floor`` above a ground floor, ``along`` the facade."""
    level = (cam_h - y) * (1.0 / floor)
    frac = level - np.floor(level)
    return along & (frac > 0.35) & (frac < 0.8) & (level > 0.8)


def _backdrop(layout: SceneLayout, buf: _Buffers, dx, dy, dz, cam_z: float) -> None:
    cam_h = layout.camera.height
    z_rel = layout.backdrop_z - cam_z
    t_row = np.where(dz > 1e-6, z_rel / np.maximum(dz, 1e-6), np.inf).astype(np.float32)  # [H]
    y_row = t_row * dy
    rows = np.nonzero((y_row <= cam_h) & (y_row >= layout.skyline_top.min()))[0]
    if len(rows) == 0:
        return
    rs = slice(int(rows[0]), int(rows[-1]) + 1)
    t = t_row[rs, None]
    x = t * dx[None, :]
    seg = np.clip(np.searchsorted(layout.skyline, x) - 1, 0, len(layout.skyline_top) - 1)
    y = y_row[rs, None]
    hit = (y >= np.take(layout.skyline_top, seg)) & (y <= cam_h) & (t < buf.depth[rs])
    spacing, floor = layout.window_size
    mat = np.take(layout.skyline_mat.astype(np.int32), seg)
    mat[_windows(y, cam_h, floor, (x / spacing) % 1.0 < 0.45)] = layout.window_mat
    buf.write(rs, slice(None), hit, np.broadcast_to(t, hit.shape), BUILDING, mat, layout.light.face[0], AXIS_Z)


def _part_windows(layout: SceneLayout, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Pixel windows [P, 4] (r0, r1, c0, c1) of the parts; empty (r0 == r1) when not in view."""
    cam = layout.camera
    corners = np.stack([np.stack([np.where(m & 1, hi[:, 0], lo[:, 0]), np.where(m & 2, hi[:, 1], lo[:, 1]),
                                  np.where(m & 4, hi[:, 2], lo[:, 2])], 1) for m in range(8)], 1)  # [P, 8, 3]
    uv, z = cam.project(corners.reshape(-1, 3))
    uv, z = uv.reshape(-1, 8, 2), z.reshape(-1, 8)
    behind = (z < NEAR).any(1)  # the projection of a part that crosses the camera plane is unbounded
    uv = np.where(behind[:, None, None], np.array([-1e9, 1e9])[None, None, :], uv)
    umin, umax = uv[..., 0].min(1), uv[..., 0].max(1)
    vmin, vmax = uv[..., 1].min(1), uv[..., 1].max(1)
    if behind.any():
        umin[behind], umax[behind], vmin[behind], vmax[behind] = -1, cam.width, -1, cam.height_px
    win = np.stack([np.floor(vmin), np.ceil(vmax) + 1, np.floor(umin), np.ceil(umax) + 1], 1)
    win = np.nan_to_num(win, nan=0.0, posinf=1e6, neginf=-1e6)
    win[:, :2] = np.clip(win[:, :2], 0, cam.height_px)
    win[:, 2:] = np.clip(win[:, 2:], 0, cam.width)
    win = win.astype(np.int64)
    gone = (z < NEAR).all(1)
    win[gone] = 0
    return win


@dataclass
class _Slabs:
    """Slab-test terms of all box parts at once: per column (x) and per row (y, z), [P, W] and [P, H]."""

    txn: np.ndarray  # entry distance through the x slab
    txf: np.ndarray  # exit distance through the x slab
    rn: np.ndarray  # entry through the y and z slabs
    rf: np.ndarray  # exit through the y and z slabs
    x_shade: np.ndarray  # [P, W] brightness of the side face a ray enters through
    r_shade: np.ndarray  # [P, H] brightness of the top / bottom / front face
    r_axis: np.ndarray  # [P, H] the axis of the face a ray enters through when not a side: AXIS_Y or AXIS_Z

    @classmethod
    def compute(cls, layout: SceneLayout, lo: np.ndarray, hi: np.ndarray, dx, dy, dz) -> "_Slabs":
        light = layout.light
        with np.errstate(divide="ignore", invalid="ignore"):
            ix, iy, iz = 1.0 / dx, 1.0 / dy, 1.0 / dz
            tx0, tx1 = lo[:, :1] * ix, hi[:, :1] * ix
            ty0, ty1 = lo[:, 1:2] * iy, hi[:, 1:2] * iy
            tz0, tz1 = lo[:, 2:] * iz, hi[:, 2:] * iz
        tyn, tzn = np.minimum(ty0, ty1), np.minimum(tz0, tz1)
        x_shade = np.broadcast_to(np.where(dx > 0, light.face[1], light.face[2]).astype(np.float32), tx0.shape)
        through_y = tyn > tzn
        r_shade = np.where(through_y, np.where(dy > 0, light.face[3], DARK_FACE)[None, :], light.face[0])
        r_axis = np.where(through_y, np.uint8(AXIS_Y), np.uint8(AXIS_Z))
        return cls(np.minimum(tx0, tx1), np.maximum(tx0, tx1), np.maximum(tyn, tzn),
                   np.minimum(np.maximum(ty0, ty1), np.maximum(tz0, tz1)), x_shade, r_shade.astype(np.float32),
                   r_axis)


def _cast_box(slabs: _Slabs, p: int, win) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Depth of the first hit (inf where the ray misses), shading and the axis of the face hit inside box part
    ``p``'s window."""
    r0, r1, c0, c1 = win
    txn, rn = slabs.txn[p, c0:c1][None, :], slabs.rn[p, r0:r1][:, None]
    t_near = np.maximum(txn, rn)
    miss = (t_near > np.minimum(slabs.txf[p, c0:c1][None, :], slabs.rf[p, r0:r1][:, None])) | (t_near <= 0)
    t_near[miss] = np.inf
    # The face the ray enters through: a side (x slab) or the top, bottom or front (y, z slabs).
    side = txn > rn
    shade = np.where(side, slabs.x_shade[p, c0:c1][None, :], slabs.r_shade[p, r0:r1][:, None])
    axis = np.where(side, np.uint8(AXIS_X), slabs.r_axis[p, r0:r1][:, None])
    return t_near, shade, axis


def _cast_ellipsoid(layout: SceneLayout, lo, hi, win, dx, dy, dz) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Depth of the first hit, Lambert shading and the unit world-frame normal inside an ellipsoid part's window."""
    r0, r1, c0, c1 = win
    light = layout.light
    # Scale to the unit sphere and solve |o + t a|^2 = 1 for the nearer root.
    centre, radii = (lo + hi) / 2, (hi - lo) / 2
    ax, ay, az = dx[c0:c1] / radii[0], dy[r0:r1] / radii[1], dz[r0:r1] / radii[2]
    o = -centre / radii
    a = (ax * ax)[None, :] + (ay * ay + az * az)[:, None]
    half_b = (o[0] * ax)[None, :] + (o[1] * ay + o[2] * az)[:, None]
    disc = half_b * half_b - a * (float(o @ o) - 1.0)
    with np.errstate(invalid="ignore"):
        t = (-half_b - np.sqrt(disc)) / a
    hit = (disc >= 0) & (t > 0)
    tf = np.where(hit, t, 0)
    # Lambert with the sun on the unit-sphere normal u = o + t * a, plus the ambient of the scene.
    ux, uy, uz = o[0] + tf * ax[None, :], o[1] + tf * ay[:, None], o[2] + tf * az[:, None]
    ndot = ux * light.sun[0] + uy * light.sun[1] + uz * light.sun[2]
    ambient = float(light.face.min())
    t[~hit] = np.inf
    # The ellipsoid's own normal is the gradient of |(p - c) / r|^2, along u / r (u scaled back by the radii).
    normal = np.stack([ux / radii[0], uy / radii[1], uz / radii[2]], axis=-1)
    normal /= np.maximum(np.linalg.norm(normal, axis=-1, keepdims=True), 1e-12)
    return (t.astype(np.float32), (ambient + (1 - ambient) * np.clip(ndot, 0, None)).astype(np.float32),
            normal.astype(np.float32))


def _parts(layout: SceneLayout, buf: _Buffers, dx, dy, dz, cam_z: float,
           time: float) -> tuple[np.ndarray, np.ndarray]:
    """Cast all parts into the z-buffer.

    Returns:
        coverage (ndarray[K]): pixels each instance would cover if nothing occluded it.
        windows (ndarray[K, 4]): r0, r1, c0, c1 enclosing each instance.
    """
    num_instances = len(layout.instance_kind)
    coverage = np.zeros(num_instances, np.int64)
    inst_win = np.zeros((num_instances, 4), np.int64)
    if len(layout.lo) == 0:
        return coverage, inst_win
    shift = np.zeros((len(layout.lo), 3), np.float32)
    shift[:, 2] = -cam_z
    moving = layout.part_instance >= 0
    shift[moving, 2] += layout.velocity[layout.part_instance[moving]] * time
    lo, hi = layout.lo + shift, layout.hi + shift
    wins = _part_windows(layout, lo, hi)
    visible = (wins[:, 0] < wins[:, 1]) & (wins[:, 2] < wins[:, 3])
    owned = visible & (layout.part_instance >= 0)
    if num_instances:
        inst_win[:, [0, 2]] = 1 << 30
        for col, reduce in ((0, np.minimum), (1, np.maximum), (2, np.minimum), (3, np.maximum)):
            reduce.at(inst_win[:, col], layout.part_instance[owned], wins[owned, col])
        inst_win[:, [0, 2]] = np.minimum(inst_win[:, [0, 2]], inst_win[:, [1, 3]])
    slabs = _Slabs.compute(layout, lo, hi, dx, dy, dz)
    current, cover = -1, None
    for p in np.nonzero(visible)[0][np.argsort(layout.part_instance[visible], kind="stable")]:
        r0, r1, c0, c1 = wins[p]
        if layout.shape[p] == BOX:
            (t, shade, axis), normal = _cast_box(slabs, p, wins[p]), None
        else:
            t, shade, normal = _cast_ellipsoid(layout, lo[p], hi[p], wins[p], dx, dy, dz)
            axis = CURVED
        hit = t < buf.depth[r0:r1, c0:c1]
        if layout.emissive[p]:
            shade = np.float32(1.0 / layout.light.exposure)
        buf.write_part(slice(r0, r1), slice(c0, c1), hit, t, p, shade, axis, normal)
        k = int(layout.part_instance[p])
        if k >= 0:  # the unoccluded footprint of the instance, for its visible fraction
            if k != current:
                if current >= 0:
                    coverage[current] = np.count_nonzero(cover)
                current = k
                R0, R1, C0, C1 = inst_win[k]
                cover = np.zeros((R1 - R0, C1 - C0), bool)
            R0, C0 = inst_win[k, 0], inst_win[k, 2]
            cover[r0 - R0:r1 - R0, c0 - C0:c1 - C0] |= np.isfinite(t)
    if current >= 0:
        coverage[current] = np.count_nonzero(cover)
    return coverage, inst_win


def _boxes(instance: np.ndarray, coverage: np.ndarray, windows: np.ndarray, min_pixels: int,
           min_visible: float) -> tuple[np.ndarray, np.ndarray]:
    """xyxy boxes around the visible pixels of the instances big and unoccluded enough; their instance indices."""
    boxes, owners = [], []
    for k in np.nonzero(coverage)[0]:
        r0, r1, c0, c1 = windows[k]
        visible = instance[r0:r1, c0:c1] == k
        count = int(np.count_nonzero(visible))
        if count < min_pixels or count < min_visible * coverage[k]:
            continue
        rows, cols = np.nonzero(visible.any(1))[0], np.nonzero(visible.any(0))[0]
        boxes.append((c0 + cols[0], r0 + rows[0], c0 + cols[-1] + 1, r0 + rows[-1] + 1))
        owners.append(k)
    return np.array(boxes, np.float32).reshape(-1, 4), np.array(owners, np.int64)


def _shade(layout: SceneLayout, buf: _Buffers, depth: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Colours: material x shading x texture, haze towards the horizon colour, exposure, tint, noise, blur."""
    cam, light = layout.camera, layout.light
    height, width = depth.shape
    rows = np.arange(height, dtype=np.float32)
    frac = np.clip((cam.horizon_row() - rows) / max(cam.horizon_row(), 1.0), 0, 1)[:, None]
    sky = layout.sky[0] * (1 - frac) + layout.sky[1] * frac  # [H, 3] gradient
    gain = (light.exposure * light.tint).astype(np.float32)
    palette = (np.concatenate([layout.palette, sky]) * gain).astype(np.float32)
    white, smooth = _noise_tiles()
    keep = np.exp(depth * np.float32(-1.0 / light.visibility))  # haze; the sky (depth 0) keeps its colour
    factor = buf.shade * keep
    factor *= 1.0 + light.texture * _crop_tile(smooth, height, width, rng)
    np.copyto(factor, np.float32(1.0), where=buf.kind == SKY)
    haze = np.float32(1.0) - keep
    horizon = layout.sky[0] * gain
    channels = []  # planar channels keep numpy's inner loops long
    for c in range(3):
        channel = np.take(np.ascontiguousarray(palette[:, c]), buf.mat)
        channel *= factor
        channel += haze * horizon[c]
        channels.append(channel)
    image = cv2.merge(channels)
    image += np.float32(light.noise) * _crop_tile(white, height, width, rng)
    if light.blur > 0:
        image = cv2.GaussianBlur(image, (0, 0), light.blur)
    np.clip(image, 0, 255, out=image)
    return image.astype(np.uint8)


def render_layout(layout: SceneLayout, cam_z: float = 0.0, time: float = 0.0, rng: np.random.Generator | None = None,
                  min_pixels: int = 16, min_visible: float = 0.1) -> Frame:
    """Render ``layout`` seen from Z = ``cam_z`` at ``time`` seconds (moving road users advance).

    Args:
        layout: the scene.
        cam_z: camera position along the road, metres.
        time: seconds since the layout's start (instances move by ``velocity * time``).
        rng: source of the sensor noise pattern (a fixed one when ``None``).
        min_pixels: an instance needs this many visible pixels for a box.
        min_visible: and at least this fraction of its unoccluded footprint visible.
    """
    rng = rng if rng is not None else np.random.default_rng(0)
    cam = layout.camera
    dx, dy, dz = cam.ray_directions()
    buf = _Buffers(cam.height_px, cam.width, sky_mat=len(layout.palette))
    _ground(layout, buf, dx, dy, dz, cam_z)
    _side_planes(layout, buf, dx, dy, dz, cam_z)
    _backdrop(layout, buf, dx, dy, dz, cam_z)
    coverage, windows = _parts(layout, buf, dx, dy, dz, cam_z, time)
    instance = buf.resolve_parts(layout)
    boxes, owners = _boxes(instance, coverage, windows, min_pixels, min_visible)
    kept = np.zeros(len(layout.instance_kind), bool)
    kept[owners] = True
    depth = np.where(buf.kind == SKY, 0, buf.depth).astype(np.float32)
    normals = buf.normals(dx, dy, dz, cam.pitch)
    image = _shade(layout, buf, depth, rng)
    labels = layout.instance_kind[owners] - PERSON
    # Drivable area and lanes only where the ground is what the pixel sees (a car on the road hides it).
    drivable = np.where(buf.ground, buf.drivable, DRIVABLE_BACKGROUND).astype(np.uint8)
    lanes = (buf.ground & buf.paint).astype(np.uint8)
    return Frame(image=image, depth=depth, normals=normals, semantic=buf.kind, instance=instance, boxes=boxes,
                 labels=labels.astype(np.int64), box_instance=owners, instance_kind=layout.instance_kind,
                 instance_kept=kept, drivable=drivable, lanes=lanes)
