"""Scans per second of ``Lidar2D.scan_many`` against one-beam-at-a-time references.

    python benchmarks/lidar_scan_rate.py [--poses 3000] [--plan paper|demo]

Settings of the published configs: 20 beams, beam length 0.2, 25 beam samples, 50 collision samples,
3 fine samples, border 30. References: "per beam" evaluates the map once per beam and stage (coarse
samples, fine samples, beam samples: three vectorized calls per beam); "per sample" walks each beam
one sample at a time and stops at the first hit (``Lidar2D.scan_reference``).
"""

import argparse
import os
import time

import numpy as np

import floorplans  # noqa: E402
from lidar import Lidar2D, random_free_poses  # noqa: E402


def scan_per_beam(lid: Lidar2D, pos):
    out = []
    for b in range(lid.num_beams):
        d = lid.directions[b]
        cd = lid.coarse_dists
        dens = lid.density(pos[0] + cd * d[0], pos[1] + cd * d[1])
        hit = np.nonzero(dens >= lid.threshold)[0]
        if len(hit):
            k = hit[0]
            prev = cd[k - 1] if k > 0 else 0.0
            fd = prev + (cd[k] - prev) * lid.fine_fracs
            fh = np.nonzero(lid.density(pos[0] + fd * d[0], pos[1] + fd * d[1]) >= lid.threshold)[0]
            d_hit = fd[fh[0]] if len(fh) else cd[k]
        else:
            d_hit = lid.max_range
        dist = d_hit * lid.beam_fracs
        x, y = pos[0] + dist * d[0], pos[1] + dist * d[1]
        out.append(np.stack([x, y, lid.density(x, y)], axis=1))
    return np.concatenate(out)


def best_of(fn, repeats):
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return min(ts)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--poses", type=int, default=3000)
    ap.add_argument("--ref-poses", type=int, default=40)
    ap.add_argument("--plan", default="paper", choices=["paper", "demo"])
    a = ap.parse_args()
    lid = Lidar2D(floorplans.shipped_plan_image(a.plan), num_beams=20, beam_length=0.2, beam_samps=25,
                  samp_distribution_factor=1.0, collision_samps=50, fine_samps=3, border_width=30)
    poses = random_free_poses(lid, a.poses, seed=0)
    lid.scan_many(poses[:10])
    t_vec = best_of(lambda: lid.scan_many(poses), 3)
    ref = poses[: a.ref_poses]
    t_beam = best_of(lambda: [scan_per_beam(lid, p) for p in ref], 2)
    t_samp = best_of(lambda: [lid.scan_reference(p) for p in ref[: max(1, a.ref_poses // 4)]], 1)
    np.testing.assert_allclose(scan_per_beam(lid, ref[0]), lid.scan(ref[0]), atol=1e-12)
    r_vec = a.poses / t_vec
    r_beam = len(ref) / t_beam
    r_samp = max(1, a.ref_poses // 4) / t_samp
    print(f"plan {a.plan} {lid.nx}x{lid.ny}, 20 beams x (50 collision + 3 fine + 25 beam) samples, "
          f"{os.cpu_count()} CPUs")
    print(f"scan_many ({a.poses} poses)      : {r_vec:10.0f} scans/s")
    print(f"reference, one beam at a time : {r_beam:10.1f} scans/s   speed-up {r_vec / r_beam:6.1f}x")
    print(f"reference, one sample at a time: {r_samp:10.1f} scans/s   speed-up {r_vec / r_samp:6.1f}x")


if __name__ == "__main__":
    main()
