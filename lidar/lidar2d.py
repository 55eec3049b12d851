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

_ZERO, _ONE, _SURE_HIT, _MAYBE_HIT = 1, 2, 4, 8


class ScanError(ValueError):
    """A pose cannot be scanned: it lies inside a wall or outside the image."""


def _as_image(img) -> np.ndarray:
    if not isinstance(img, np.ndarray):
        raise TypeError(f"floor plan image must be a numpy array (load a file with floorplans.io.load_floorplan), "
                        f"got {type(img).__name__}")
    img = np.asarray(img, dtype=np.float64)
    if img.ndim == 3:
        img = img.mean(axis=2)
    if img.ndim != 2:
        raise ValueError(f"floor plan image must be 2D, got shape {img.shape}")
    return img.copy()


class Lidar2D:
    """A 2D lidar that scans a floor plan image.

    Args:
        img: floor plan as a 2D array with values in [0, 1] (1 = wall); ``floorplans.io.load_floorplan``
            reads one from an image file.
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
        img,
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
        img = _as_image(img)
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
        # same construction as scipy's map_coordinates(img, order=3, mode="nearest"): edge padding, then
        # the cubic spline prefilter on the padded image
        self._pad = 12
        self._coeffs = ndimage.spline_filter(np.pad(self.img, self._pad, mode="edge"), order=3, mode="nearest")
        # Bounds of the spline over each pixel cell: the density at a point is a convex combination
        # (B-spline weights) of the 4 x 4 coefficients around it, so it is at most their maximum.
        # Entry [r + 1, c + 1] covers the points whose floor(row), floor(col) are (r, c), r in -1..ny-1.
        R, Cn, o = self.ny + 1, self.nx + 1, self._pad - 2

        def window(op):
            c = self._coeffs
            rows = op(op(c[o : o + R], c[o + 1 : o + 1 + R]), op(c[o + 2 : o + 2 + R], c[o + 3 : o + 3 + R]))
            return op(op(rows[:, o : o + Cn], rows[:, o + 1 : o + 1 + Cn]),
                      op(rows[:, o + 2 : o + 2 + Cn], rows[:, o + 3 : o + 3 + Cn]))

        cell_max = window(np.maximum)
        cell_min = window(np.minimum)
        cell_absmax = np.maximum(cell_max, -cell_min)
        # one byte per cell: which shortcut applies there
        code = np.zeros(cell_max.shape, dtype=np.uint8)
        code |= np.uint8(_ZERO) * (cell_absmax <= 1e-6)
        code |= np.uint8(_ONE) * (cell_min >= 1.0 - 1e-6)
        code |= np.uint8(_SURE_HIT) * (cell_min >= self.threshold + 1e-9)
        code |= np.uint8(_MAYBE_HIT) * (cell_max >= self.threshold - 1e-9)
        self._cell_code = code.ravel()

    # ------------------------------------------------------------------ map
    @property
    def shape(self):
        return (self.ny, self.nx)

    def _cells(self, x, y):
        """Inside-image mask and flat indices into the per-cell bound arrays."""
        inside = (np.abs(x) <= self.nx / 2.0) & (np.abs(y) <= self.ny / 2.0)
        # floor(row) + 1 and floor(col) + 1; truncation equals floor for the non-negative values of
        # points inside the image, points outside are masked anyway
        a = (y + (self.ny / 2.0 + 0.5)).astype(np.int64)
        b = (x + (self.nx / 2.0 + 0.5)).astype(np.int64)
        np.clip(a, 0, self.ny, out=a)
        np.clip(b, 0, self.nx, out=b)
        a *= self.nx + 1
        a += b
        return inside, a

    def _spline(self, x, y) -> np.ndarray:
        col = x + (self.nx / 2.0 - 0.5 + self._pad)
        row = y + (self.ny / 2.0 - 0.5 + self._pad)
        out = ndimage.map_coordinates(self._coeffs, [row, col], order=3, mode="nearest", prefilter=False)
        return np.clip(out, 0.0, 1.0, out=out)

    def density(self, x, y) -> np.ndarray:
        """Map density at lidar coordinates (arrays of any matching shape); 1 outside the image.

        Densities within 1e-6 of 0 (far from walls) or of 1 (deep inside walls) are returned as 0 or 1.
        """
        x, y, shape = _flat_coordinates(x, y)
        inside, idx = self._cells(x, y)
        out = np.zeros(x.shape, dtype=np.float64)
        code = self._cell_code.take(idx)
        one = ~inside | ((code & _ONE) > 0)
        nz = ~one & ((code & _ZERO) == 0)
        if nz.any():
            out[nz] = self._spline(x[nz], y[nz])
        out[one] = 1.0
        return out.reshape(shape)

    def hits(self, x, y) -> np.ndarray:
        """Boolean ``density(x, y) >= threshold``, evaluating the spline only near walls."""
        x, y, shape = _flat_coordinates(x, y)
        inside, idx = self._cells(x, y)
        code = self._cell_code.take(idx)
        out = ~inside | ((code & _SURE_HIT) > 0)
        maybe = ~out & ((code & _MAYBE_HIT) > 0)
        if maybe.any():
            out[maybe] = self._spline(x[maybe], y[maybe]) >= self.threshold
        return out.reshape(shape)

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
    def _hit_distances(self, p: np.ndarray, block: int = 10):
        """Hit distance per (pose, beam), whether each beam hit, and the index of its first coarse hit.

        Coarse samples are tested ``block`` at a time along the beams; beams that have hit drop out.
        """
        k, B, C = len(p), self.num_beams, self.collision_samps
        cd = self.coarse_dists
        px = np.repeat(p[:, 0], B)
        py = np.repeat(p[:, 1], B)
        dx = np.tile(self.directions[:, 0], k)
        dy = np.tile(self.directions[:, 1], k)
        first = np.full(k * B, C - 1, dtype=np.int64)
        has_hit = np.zeros(k * B, dtype=bool)
        active = np.arange(k * B)
        for s in range(0, C, block):
            c = cd[None, s : s + block]
            h = self.hits(px[active, None] + c * dx[active, None], py[active, None] + c * dy[active, None])
            got = h.any(axis=1)
            idx = active[got]
            first[idx] = s + h[got].argmax(axis=1)
            has_hit[idx] = True
            active = active[~got]
            if len(active) == 0:
                break
        d_coarse = cd[first]
        d_prev = np.where(first > 0, cd[np.maximum(first - 1, 0)], 0.0)
        d_hit = np.where(has_hit, d_coarse, self.max_range)
        if self.fine_samps > 0 and has_hit.any():
            hh = np.nonzero(has_hit)[0]
            fd = d_prev[hh, None] + (d_coarse[hh] - d_prev[hh])[:, None] * self.fine_fracs[None, :]
            fhit = self.hits(px[hh, None] + fd * dx[hh, None], py[hh, None] + fd * dy[hh, None])
            any_f = fhit.any(axis=1)
            j = fhit.argmax(axis=1)
            d_hit[hh] = np.where(any_f, fd[np.arange(len(j)), j], d_coarse[hh])
        return d_hit.reshape(k, B), has_hit.reshape(k, B), first.reshape(k, B)

    def _scan_chunk(self, p: np.ndarray, clipped: bool):
        d_hit, has_hit, first = self._hit_distances(p)
        k = len(p)
        dirs = self.directions
        if clipped:
            cd = self.coarse_dists
            keep = np.arange(self.collision_samps)[None, None, :] <= first[:, :, None]
            kx = (p[:, None, None, 0] + cd[None, None, :] * dirs[None, :, None, 0])[keep]
            ky = (p[:, None, None, 1] + cd[None, None, :] * dirs[None, :, None, 1])[keep]
            pts = np.stack([kx, ky, self.density(kx, ky)], axis=1)
            counts = keep.reshape(k, -1).sum(axis=1)
            return pts, counts
        dist = d_hit[:, :, None] * self.beam_fracs[None, None, :]
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
        chunks, chunk_counts = [], []
        for s in range(0, len(p), max(1, self.chunk_size)):
            pts, cnt = self._scan_chunk(p[s : s + self.chunk_size], clipped)
            chunks.append(pts)
            chunk_counts.append(cnt)
        if chunks:
            points = np.concatenate(chunks, axis=0)
            counts = np.concatenate(chunk_counts)
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


def _flat_coordinates(x, y) -> tuple[np.ndarray, np.ndarray, tuple[int, ...]]:
    """Broadcast x and y to one shape and flatten them (float64); also return that shape."""
    x, y = np.broadcast_arrays(np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64))
    return x.ravel(), y.ravel(), x.shape
