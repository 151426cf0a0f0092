"""The pinhole camera of the synthetic driving scenes: a camera above a flat ground plane, pitched about its x axis.

World frame: origin at the camera centre, X to the right, Y down, Z forward along the road; the ground is the
plane Y = ``height``. Camera frame: x right, y down, z along the optical axis. A positive ``pitch`` tilts the
optical axis down towards the road. Depth everywhere in this toolkit is the camera-frame z (what stereo disparity
measures: z = baseline * fx / disparity), so rays are scaled to unit camera z and the ray parameter *is* the depth.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# Cityscapes' stereo rig, the model of our camera: fx / image width and the baseline in metres.
CITYSCAPES_FX_PER_WIDTH = 2262.52 / 2048.0
CITYSCAPES_BASELINE = 0.209313


@dataclass(frozen=True)
class PinholeCamera:
    """Intrinsics and pose of a camera above the ground.

    Attributes:
        width: image width in pixels.
        height_px: image height in pixels.
        fx: focal length along x, pixels.
        fy: focal length along y, pixels.
        u0: principal point x, pixels (pixel centres at integer coordinates).
        v0: principal point y, pixels.
        height: camera height above the ground, metres.
        pitch: downward tilt of the optical axis, radians.
        baseline: stereo baseline used to express depth as disparity, metres.
    """

    width: int
    height_px: int
    fx: float
    fy: float
    u0: float
    v0: float
    height: float = 1.22
    pitch: float = 0.0
    baseline: float = CITYSCAPES_BASELINE

    def ray_directions(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """World-frame ray directions with unit camera-frame z, separable by construction (pitch only).

        Returns:
            dx (ndarray[W]): X component, a function of the column only.
            dy (ndarray[H]): Y component, a function of the row only.
            dz (ndarray[H]): Z component, a function of the row only.
        """
        a = (np.arange(self.width, dtype=np.float32) - np.float32(self.u0)) / np.float32(self.fx)
        b = (np.arange(self.height_px, dtype=np.float32) - np.float32(self.v0)) / np.float32(self.fy)
        cp, sp = np.float32(math.cos(self.pitch)), np.float32(math.sin(self.pitch))
        return a, b * cp + sp, cp - b * sp

    def world_to_camera(self, points: np.ndarray) -> np.ndarray:
        """Camera-frame coordinates of world points.

        Args:
            points (ndarray[N, 3]): X, Y, Z in the world frame.

        Returns:
            ndarray[N, 3]: x, y, z in the camera frame (z = depth).
        """
        cp, sp = math.cos(self.pitch), math.sin(self.pitch)
        x, y, z = points[:, 0], points[:, 1], points[:, 2]
        return np.stack([x, y * cp - z * sp, y * sp + z * cp], axis=1)

    def project(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Pixel coordinates and depth of world points.

        Args:
            points (ndarray[N, 3]): world points.

        Returns:
            uv (ndarray[N, 2]) pixel coordinates and depth (ndarray[N]) in metres.
        """
        cam = self.world_to_camera(points)
        z = cam[:, 2]
        with np.errstate(divide="ignore", invalid="ignore"):
            uv = np.stack([self.u0 + self.fx * cam[:, 0] / z, self.v0 + self.fy * cam[:, 1] / z], axis=1)
        return uv, z

    def horizon_row(self) -> float:
        """Image row of the horizon (where rays run parallel to the ground)."""
        return self.v0 - self.fy * math.tan(self.pitch)

    def depth_to_disparity(self, depth: np.ndarray) -> np.ndarray:
        """Disparity in pixels (0 where depth is 0) of this camera's stereo rig."""
        with np.errstate(divide="ignore"):
            return np.where(depth > 0, self.baseline * self.fx / np.maximum(depth, 1e-12), 0.0)

    def to_cityscapes_json(self) -> dict:
        """The camera as a Cityscapes ``camera/*.json`` dict (extrinsic pitch in radians, as in the dataset)."""
        return {"extrinsic": {"baseline": self.baseline, "pitch": self.pitch, "roll": 0.0, "yaw": 0.0,
                              "x": 0.0, "y": 0.0, "z": self.height},
                "intrinsic": {"fx": self.fx, "fy": self.fy, "u0": self.u0, "v0": self.v0}}

    def to_meta(self) -> dict:
        """Plain-data description kept in a sample's ``meta["camera"]``."""
        return {"fx": self.fx, "fy": self.fy, "u0": self.u0, "v0": self.v0, "baseline": self.baseline,
                "height": self.height, "pitch": self.pitch}

    @classmethod
    def cityscapes_like(cls, width: int, height_px: int, height: float = 1.22, pitch: float = 0.0,
                        focal_scale: float = 1.0) -> "PinholeCamera":
        """A camera with Cityscapes' field of view at ``width`` x ``height_px`` pixels."""
        f = CITYSCAPES_FX_PER_WIDTH * width * focal_scale
        return cls(width=width, height_px=height_px, fx=f, fy=f, u0=(width - 1) / 2.0, v0=(height_px - 1) / 2.0,
                   height=height, pitch=pitch)
