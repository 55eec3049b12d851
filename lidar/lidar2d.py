"""Simulated 2D lidar on a floor plan image.

The map is a grey image with values in [0, 1] (1 = wall). Positions are in the lidar frame of
:mod:`lidar.coords`: pixel units centred on the image, ``x`` along columns, ``y`` along rows
(``y`` grows with the row index, row 0 at ``y = -ny/2``).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from .coords import lidar_to_pixel

__all__ = ["Lidar2D", "ScanError"]


class ScanError(ValueError):
    """A pose cannot be scanned: it lies inside a wall or outside the image."""


def _load_image(img_or_path) -> np.ndarray:
    if isinstance(img_or_path, np.ndarray):
        img = np.asarray(img_or_path, dtype=np.float64)
        if img.ndim == 3:
            img = img.mean(axis=2)
        if img.ndim != 2:
            raise ValueError(f"floor plan image must be 2D, got shape {img.shape}")
        return img.copy()
    from floorplans.io import load_floorplan

    return load_floorplan(img_or_path).astype(np.float64)


class Lidar2D:
    """A 2D lidar that scans a floor plan image.

    Args:
        img_or_path: floor plan as a 2D array with values in [0, 1] (1 = wall) or a path to an image
            (grey levels scaled to [0, 1]).
        num_beams: beams per scan, at angles ``-pi + 2 pi k / num_beams``.
        beam_length: beam length as a fraction of ``max(nx, ny)``.
        beam_samps: points returned per beam, from the robot to the hit (the whole beam when nothing
            is hit), at distances ``d_hit * t ** samp_distribution_factor`` for ``t`` uniform on [0, 1].
        samp_distribution_factor: exponent of the spacing above (1 = even spacing, > 1 = denser near
            the robot).
        collision_samps: coarse samples at distances ``L k / collision_samps``, ``k = 1..collision_samps``,
            used to find the first hit (density >= ``threshold``).
        fine_samps: samples evenly placed strictly between the last free coarse sample and the coarse
            hit; the first of them that hits (or else the coarse hit) is the hit point.
        border_width: pixels at the image edge that are set to wall.
        threshold: density at and above which a sample is a hit.
        chunk_size: poses processed together by :meth:`scan_many` (bounds memory).

    The density of the map at a point is the bicubic (cubic B-spline, interpolating) interpolation of
    the image, clipped to [0, 1]; points outside the image have density 1.

    Attributes:
        img: the (ny, nx) float64 image with its border set to wall.
        nx, ny: image width and height in pixels.
        xs, ys: lidar coordinates of the pixel centres along x (columns) and y (rows).
        angles: beam angles.
        max_range: beam length in pixels.
    """

    def __init__(
        self,
        img_or_path,
        num_beams: int,
        beam_length: float,
        beam_samps: int,
        samp_distribution_factor: float,
        collision_samps: int,
        fine_samps: int,
        border_width: int = 0,
        threshold: float = 0.5,
        chunk_size: int = 2048,
    ):
        img = _load_image(img_or_path)
        border_width = int(border_width)
        if border_width > 0:
            img[:border_width, :] = 1.0
            img[-border_width:, :] = 1.0
            img[:, :border_width] = 1.0
            img[:, -border_width:] = 1.0
        self.img = img
        self.ny, self.nx = img.shape
        self.num_beams = int(num_beams)
        self.beam_length = float(beam_length)
        self.max_range = self.beam_length * max(self.nx, self.ny)
        self.beam_samps = int(beam_samps)
        self.samp_distribution_factor = float(samp_distribution_factor)
        self.collision_samps = int(collision_samps)
        self.fine_samps = int(fine_samps)
        self.border_width = border_width
        self.threshold = float(threshold)
        self.chunk_size = int(chunk_size)
        if self.num_beams < 1 or self.beam_samps < 1 or self.collision_samps < 1 or self.fine_samps < 0:
            raise ValueError("num_beams, beam_samps and collision_samps must be >= 1, fine_samps >= 0")

        self.xs = np.arange(self.nx) + 0.5 - self.nx / 2.0
        self.ys = np.arange(self.ny) + 0.5 - self.ny / 2.0
        self.angles = -np.pi + 2.0 * np.pi * np.arange(self.num_beams) / self.num_beams
        self.directions = np.stack([np.cos(self.angles), np.sin(self.angles)], axis=1)
        self.coarse_dists = self.max_range * np.arange(1, self.collision_samps + 1) / self.collision_samps
        self.fine_fracs = np.arange(1, self.fine_samps + 1) / (self.fine_samps + 1)
        self.beam_fracs = np.linspace(0.0, 1.0, self.beam_samps) ** self.samp_distribution_factor
        self._coeffs = ndimage.spline_filter(self.img, order=3, mode="nearest")

    # ------------------------------------------------------------------ map
    @property
    def shape(self):
        return (self.ny, self.nx)

    def density(self, x, y) -> np.ndarray:
        """Map density at lidar coordinates (arrays of any matching shape); 1 outside the image."""
        x = np.asarray(x, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        x, y = np.broadcast_arrays(x, y)
        col = x + self.nx / 2.0 - 0.5
        row = y + self.ny / 2.0 - 0.5
        out = ndimage.map_coordinates(
            self._coeffs, [row.ravel(), col.ravel()], order=3, mode="nearest", prefilter=False
        ).reshape(x.shape)
        np.clip(out, 0.0, 1.0, out=out)
        outside = (np.abs(x) > self.nx / 2.0) | (np.abs(y) > self.ny / 2.0)
        out[outside] = 1.0
        return out

    def is_free(self, poses) -> np.ndarray:
        """Boolean mask of (K, 2) lidar poses that lie inside the image and in free space."""
        p = np.asarray(poses, dtype=np.float64).reshape(-1, 2)
        inside = (np.abs(p[:, 0]) <= self.nx / 2.0) & (np.abs(p[:, 1]) <= self.ny / 2.0)
        d = self.density(p[:, 0], p[:, 1])
        return inside & (d < self.threshold)

    def check_poses(self, poses) -> np.ndarray:
        p = np.asarray(poses, dtype=np.float64)
        if p.ndim == 1:
            p = p.reshape(1, -1)
        if p.ndim != 2 or p.shape[1] != 2:
            raise ValueError(f"poses must have shape (K, 2) or (2,), got {np.shape(poses)}")
        if not np.all(np.isfinite(p)):
            raise ScanError("pose coordinates must be finite")
        inside = (np.abs(p[:, 0]) <= self.nx / 2.0) & (np.abs(p[:, 1]) <= self.ny / 2.0)
        if not inside.all():
            k = int(np.argmin(inside))
            raise ScanError(
                f"pose {k} at (x={p[k, 0]:.3f}, y={p[k, 1]:.3f}) is outside the image "
                f"(x in [{-self.nx / 2}, {self.nx / 2}], y in [{-self.ny / 2}, {self.ny / 2}])"
            )
        d = self.density(p[:, 0], p[:, 1])
        bad = d >= self.threshold
        if bad.any():
            k = int(np.argmax(bad))
            r, c = lidar_to_pixel(p[k], self.shape)[0]
            raise ScanError(
                f"pose {k} at (x={p[k, 0]:.3f}, y={p[k, 1]:.3f}) (pixel row {r:.1f}, col {c:.1f}) is inside "
                f"a wall (density {d[k]:.3f} >= {self.threshold}); scanning from inside a wall is not possible"
            )
        return p

    # ---------------------------------------------------------------- scans
    def _hit_distances(self, p: np.ndarray):
        """Hit distance per (pose, beam), whether a beam hit, the coarse hit index and coarse data."""
        dirs = self.directions
        cd = self.coarse_dists
        # (k, B, C)
        cx = p[:, None, None, 0] + cd[None, None, :] * dirs[None, :, None, 0]
        cy = p[:, None, None, 1] + cd[None, None, :] * dirs[None, :, None, 1]
        cdens = self.density(cx, cy)
        hit = cdens >= self.threshold
        has_hit = hit.any(axis=2)
        first = np.where(has_hit, hit.argmax(axis=2), self.collision_samps - 1)
        d_coarse = cd[first]
        d_prev = np.where(first > 0, cd[np.maximum(first - 1, 0)], 0.0)
        d_hit = np.where(has_hit, d_coarse, self.max_range)
        if self.fine_samps > 0 and has_hit.any():
            kk, bb = np.nonzero(has_hit)
            fd = d_prev[kk, bb, None] + (d_coarse[kk, bb] - d_prev[kk, bb])[:, None] * self.fine_fracs[None, :]
            fx = p[kk, 0, None] + fd * dirs[bb, 0, None]
            fy = p[kk, 1, None] + fd * dirs[bb, 1, None]
            fhit = self.density(fx, fy) >= self.threshold
            any_f = fhit.any(axis=1)
            j = fhit.argmax(axis=1)
            d_hit[kk, bb] = np.where(any_f, fd[np.arange(len(j)), j], d_coarse[kk, bb])
        return d_hit, has_hit, first, cx, cy, cdens

    def _scan_chunk(self, p: np.ndarray, clipped: bool):
        d_hit, has_hit, first, cx, cy, cdens = self._hit_distances(p)
        k = len(p)
        if clipped:
            keep = np.arange(self.collision_samps)[None, None, :] <= first[:, :, None]
            pts = np.stack([cx[keep], cy[keep], cdens[keep]], axis=1)
            counts = keep.reshape(k, -1).sum(axis=1)
            return pts, counts
        dist = d_hit[:, :, None] * self.beam_fracs[None, None, :]
        dirs = self.directions
        bx = p[:, None, None, 0] + dist * dirs[None, :, None, 0]
        by = p[:, None, None, 1] + dist * dirs[None, :, None, 1]
        dens = self.density(bx, by)
        pts = np.stack([bx.ravel(), by.ravel(), dens.ravel()], axis=1)
        counts = np.full(k, self.num_beams * self.beam_samps, dtype=np.int64)
        return pts, counts

    def scan_many(self, poses, clipped: bool = False, round_density: bool = False, check: bool = True):
        """Scan from many poses in one vectorized pass.

        Args:
            poses: (K, 2) lidar ``(x, y)`` positions (or (2,) for one pose).
            clipped: if True, each beam returns its coarse collision samples up to and including the
                first hit (all of them when nothing is hit) instead of ``beam_samps`` points.
            round_density: round densities to 0/1 (at ``threshold``).
            check: raise :class:`ScanError` when a pose is outside the image or inside a wall.

        Returns:
            ``(points, ranges)``: ``points`` is an (M, 3) float64 array of ``(x, y, density)``, the scans
            of all poses stacked in pose order (beam-major inside a scan, robot to hit along a beam);
            ``ranges`` is a (K, 2) int64 array, rows ``ranges[k, 0]:ranges[k, 1]`` belong to pose ``k``.
        """
        p = self.check_poses(poses) if check else np.asarray(poses, dtype=np.float64).reshape(-1, 2)
        chunks, counts = [], []
        for s in range(0, len(p), max(1, self.chunk_size)):
            pts, cnt = self._scan_chunk(p[s : s + self.chunk_size], clipped)
            chunks.append(pts)
            counts.append(cnt)
        if chunks:
            points = np.concatenate(chunks, axis=0)
            counts = np.concatenate(counts)
        else:
            points = np.zeros((0, 3))
            counts = np.zeros(0, dtype=np.int64)
        ends = np.cumsum(counts)
        ranges = np.stack([ends - counts, ends], axis=1).astype(np.int64)
        if round_density:
            points[:, 2] = (points[:, 2] >= self.threshold).astype(np.float64)
        return points, ranges

    def scan(self, pos, clipped: bool = False, round_density: bool = False) -> np.ndarray:
        """Scan from one pose ((2,) or (1, 2) lidar ``(x, y)``); returns an (M, 3) array of (x, y, density)."""
        p = np.asarray(pos, dtype=np.float64).reshape(-1)
        if p.shape != (2,):
            raise ValueError(f"scan takes one pose of shape (2,) or (1, 2), got {np.shape(pos)}")
        points, _ = self.scan_many(p[None, :], clipped=clipped, round_density=round_density)
        return points

    def hit_distances(self, poses) -> np.ndarray:
        """(K, num_beams) distance from each pose to the refined hit of each beam (``max_range`` if none)."""
        p = self.check_poses(poses)
        return self._hit_distances(p)[0]

    def scan_reference(self, pos, clipped: bool = False, round_density: bool = False) -> np.ndarray:
        """One-beam-at-a-time, one-sample-at-a-time version of :meth:`scan` (for tests and benchmarks)."""
        p = self.check_poses(pos)[0]
        rows = []
        for b in range(self.num_beams):
            dx, dy = self.directions[b]
            hit_k = -1
            coarse = []
            for k in range(self.collision_samps):
                d = self.coarse_dists[k]
                x, y = p[0] + d * dx, p[1] + d * dy
                v = float(self.density(x, y))
                coarse.append((x, y, v))
                if v >= self.threshold:
                    hit_k = k
                    break
            if clipped:
                rows.extend(coarse)
                continue
            if hit_k < 0:
                d_hit = self.max_range
            else:
                d_hit = self.coarse_dists[hit_k]
                d_prev = self.coarse_dists[hit_k - 1] if hit_k > 0 else 0.0
                for f in self.fine_fracs:
                    d = d_prev + (self.coarse_dists[hit_k] - d_prev) * f
                    if float(self.density(p[0] + d * dx, p[1] + d * dy)) >= self.threshold:
                        d_hit = d
                        break
            for frac in self.beam_fracs:
                d = d_hit * frac
                x, y = p[0] + d * dx, p[1] + d * dy
                rows.append((x, y, float(self.density(x, y))))
        out = np.array(rows, dtype=np.float64).reshape(-1, 3)
        if round_density:
            out[:, 2] = (out[:, 2] >= self.threshold).astype(np.float64)
        return out
