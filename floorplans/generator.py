"""Procedural floor plans: a rectangular building split recursively into rooms around a corridor.

    python -m floorplans.make_floorplan OUT.png --width 500 --height 400 --seed 0 [--rooms 8] [--obstacles 3]

Images are float32 (height, width) arrays, 1 = wall, 0 = free. Rectangles are ``(r0, r1, c0, c1)``
half-open pixel ranges.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

__all__ = ["Room", "Door", "FloorPlan", "generate_layout", "generate_floorplan", "free_components"]


@dataclass
class Room:
    """A free rectangle of the plan; ``kind`` is "room" or "corridor"."""

    index: int
    r0: int
    r1: int
    c0: int
    c1: int
    kind: str = "room"

    @property
    def rect(self):
        return (self.r0, self.r1, self.c0, self.c1)

    @property
    def height(self):
        return self.r1 - self.r0

    @property
    def width(self):
        return self.c1 - self.c0

    @property
    def center(self):
        return ((self.r0 + self.r1 - 1) / 2.0, (self.c0 + self.c1 - 1) / 2.0)


@dataclass
class Door:
    """A gap in the wall between rooms ``a`` and ``b``; ``rect`` is the carved wall rectangle."""

    a: int
    b: int
    r0: int
    r1: int
    c0: int
    c1: int

    @property
    def center(self):
        return ((self.r0 + self.r1 - 1) / 2.0, (self.c0 + self.c1 - 1) / 2.0)


@dataclass
class FloorPlan:
    """A generated plan: the image plus the rooms, doors and obstacles it was drawn from."""

    image: np.ndarray
    rooms: list = field(default_factory=list)
    doors: list = field(default_factory=list)
    obstacles: list = field(default_factory=list)
    building: tuple = (0, 0, 0, 0)
    wall_thickness: int = 1
    door_width: int = 1

    def room_graph(self):
        """networkx graph of rooms joined by doors (edge attribute ``door``: index in ``doors``)."""
        import networkx as nx

        g = nx.Graph()
        for r in self.rooms:
            g.add_node(r.index, kind=r.kind, center=r.center)
        for i, d in enumerate(self.doors):
            g.add_edge(d.a, d.b, door=i)
        return g


def free_components(img, threshold: float = 0.5):
    """Label the free space (``img < threshold``) in 4-connected components; returns (labels, count)."""
    free = np.asarray(img) < threshold
    return ndimage.label(free)


def _split_candidates(rect, min_room, t):
    r0, r1, c0, c1 = rect
    out = []
    if (r1 - r0) >= 2 * min_room + t:
        out.append("h")
    if (c1 - c0) >= 2 * min_room + t:
        out.append("v")
    return out


def _adjacent(a, b, t, min_overlap):
    """Shared wall between free rects a and b (separated by exactly t pixels): returns
    ("h"|"v", wall_lo, wall_hi, ov_lo, ov_hi) or None."""
    ar0, ar1, ac0, ac1 = a
    br0, br1, bc0, bc1 = b
    for (x1, y0), (p0, p1, q0, q1) in (((ar1, br0), (ac0, ac1, bc0, bc1)), ((br1, ar0), (ac0, ac1, bc0, bc1))):
        if y0 - x1 == t:
            lo, hi = max(p0, q0), min(p1, q1)
            if hi - lo >= min_overlap:
                return ("h", x1, y0, lo, hi)
    for (x1, y0), (p0, p1, q0, q1) in (((ac1, bc0), (ar0, ar1, br0, br1)), ((bc1, ac0), (ar0, ar1, br0, br1))):
        if y0 - x1 == t:
            lo, hi = max(p0, q0), min(p1, q1)
            if hi - lo >= min_overlap:
                return ("v", x1, y0, lo, hi)
    return None


def generate_layout(
    width: int,
    height: int,
    seed: int = 0,
    num_rooms: int = 8,
    wall_thickness: int | None = None,
    door_width: int | None = None,
    corridor: bool = True,
    corridor_width: int | None = None,
    min_room_size: int | None = None,
    extra_door_prob: float = 0.35,
    num_obstacles: int = 0,
    obstacle_size: tuple | None = None,
    outside_margin: int = 0,
    outside_corner: bool = False,
) -> FloorPlan:
    """Generate a floor plan with its room/door structure (see :func:`generate_floorplan`): the building's
    interior cut into a corridor and rooms, one outside corner room dropped, doors on a spanning tree of the
    rooms' adjacency (plus every corridor edge and some extra), obstacles, and any unreachable pocket
    filled. The phases draw from one generator in this order, so a seed always gives the same plan."""
    width, height = int(width), int(height)
    rng = np.random.default_rng(seed)
    s = min(width, height)
    t = int(wall_thickness) if wall_thickness is not None else max(2, int(round(s / 110)))
    dw = int(door_width) if door_width is not None else max(4, int(round(s / 22)))
    cw = int(corridor_width) if corridor_width is not None else int(round(1.4 * dw))
    min_room = int(min_room_size) if min_room_size is not None else max(int(2.2 * dw), dw + 4 * t)
    m = int(outside_margin)
    b0r, b1r, b0c, b1c = m, height - m, m, width - m
    if min(b1r - b0r, b1c - b0c) < 2 * t + min_room:
        raise ValueError(f"image {width}x{height} is too small for rooms of {min_room} px with {t} px walls")
    interior = (b0r + t, b1r - t, b0c + t, b1c - t)

    leaves = _cut_rooms(interior, rng, num_rooms, corridor, cw, min_room, t)
    margin = t + max(2, dw // 8)
    adj = {}
    for i in range(len(leaves)):
        for j in range(i + 1, len(leaves)):
            a = _adjacent(leaves[i][0], leaves[j][0], t, dw + 2 * margin)
            if a is not None:
                adj[(i, j)] = a
    removed = _outside_corner_room(leaves, adj, interior, rng) if outside_corner else set()
    keep = [i for i in range(len(leaves)) if i not in removed]
    index = {old: new for new, old in enumerate(keep)}
    room_objs = [Room(index[i], *leaves[i][0], kind=leaves[i][1]) for i in keep]
    edges = [(i, j) for (i, j) in adj if i not in removed and j not in removed]
    chosen = _door_edges(edges, {i for i in keep if leaves[i][1] == "corridor"}, len(leaves), rng, extra_door_prob)

    img = np.ones((height, width), dtype=np.float32)
    for i in keep:
        r0, r1, c0, c1 = leaves[i][0]
        img[r0:r1, c0:c1] = 0.0
    doors = []
    for (i, j) in chosen:
        kind, w0, w1, lo, hi = adj[(i, j)]
        x = int(rng.integers(lo + margin, hi - margin - dw + 1))
        if kind == "h":
            img[w0:w1, x:x + dw] = 0.0
            doors.append(Door(index[i], index[j], w0, w1, x, x + dw))
        else:
            img[x:x + dw, w0:w1] = 0.0
            doors.append(Door(index[i], index[j], x, x + dw, w0, w1))
    obstacles = _place_obstacles(img, room_objs, rng, num_obstacles, obstacle_size, t, dw)
    labels, count = free_components(img)
    if count > 1:  # fill what no door reaches
        sizes = np.bincount(labels.ravel())
        sizes[0] = 0
        img[(labels != int(np.argmax(sizes))) & (labels > 0)] = 1.0
    return FloorPlan(image=img, rooms=room_objs, doors=doors, obstacles=obstacles,
                     building=(b0r, b1r, b0c, b1c), wall_thickness=t, door_width=dw)


def _cut_rooms(interior, rng, num_rooms: int, corridor: bool, cw: int, min_room: int,
               t: int) -> list[tuple[tuple[int, int, int, int], str]]:
    """(rect, kind) of the corridor (across the middle third of the interior's longer side) and the rooms:
    the largest splittable rectangle is split in two, by an orientation that follows its shape, until there
    are ``num_rooms`` rooms or none can be split."""
    leaves: list[tuple[tuple[int, int, int, int], str]] = []
    todo = [interior]
    if corridor:
        r0, r1, c0, c1 = interior
        if (c1 - c0) >= (r1 - r0):  # corridor runs along x, splits rows
            lo, hi = r0 + min_room + t, r1 - min_room - t - cw
            if hi > lo:
                p = int(rng.integers(lo + (hi - lo) // 3, lo + 2 * (hi - lo) // 3 + 1))
                leaves.append(((p, p + cw, c0, c1), "corridor"))
                todo = [(r0, p - t, c0, c1), (p + cw + t, r1, c0, c1)]
        else:
            lo, hi = c0 + min_room + t, c1 - min_room - t - cw
            if hi > lo:
                p = int(rng.integers(lo + (hi - lo) // 3, lo + 2 * (hi - lo) // 3 + 1))
                leaves.append(((r0, r1, p, p + cw), "corridor"))
                todo = [(r0, r1, c0, p - t), (r0, r1, p + cw + t, c1)]
    rooms = list(todo)
    while len(rooms) < num_rooms:
        areas = [(rr[1] - rr[0]) * (rr[3] - rr[2]) if _split_candidates(rr, min_room, t) else -1 for rr in rooms]
        k = int(np.argmax(areas))
        if areas[k] < 0:
            break
        r0, r1, c0, c1 = rooms.pop(k)
        cands = _split_candidates((r0, r1, c0, c1), min_room, t)
        if len(cands) == 2:
            ratio = (r1 - r0) / (c1 - c0)
            orient = "h" if rng.random() < ratio / (1.0 + ratio) else "v"
            if max(ratio, 1 / ratio) > 1.6:
                orient = "h" if ratio > 1 else "v"
        else:
            orient = cands[0]
        if orient == "h":
            p = int(rng.integers(r0 + min_room, r1 - min_room - t + 1))
            rooms[k:k] = [(r0, p, c0, c1), (p + t, r1, c0, c1)]
        else:
            p = int(rng.integers(c0 + min_room, c1 - min_room - t + 1))
            rooms[k:k] = [(r0, r1, c0, p), (r0, r1, p + t, c1)]
    return leaves + [(rr, "room") for rr in rooms]


def _outside_corner_room(leaves: list, adj: dict, interior, rng) -> set:
    """The one room in a corner of the building (corners in random order) whose removal leaves the rest
    connected: that corner becomes outside."""
    import networkx as nx

    g_adj = nx.Graph()
    g_adj.add_nodes_from(range(len(leaves)))
    g_adj.add_edges_from(adj)
    r0, r1, c0, c1 = interior
    corners = [(r0, c0), (r0, c1), (r1, c0), (r1, c1)]
    for ci in rng.permutation(4):
        cr, cc = corners[ci]
        for i, (rect, kind) in enumerate(leaves):
            if kind != "room":
                continue
            if (rect[0] == cr or rect[1] == cr) and (rect[2] == cc or rect[3] == cc):
                rest = g_adj.copy()
                rest.remove_node(i)
                if nx.is_connected(rest):
                    return {i}
                break
    return set()


def _door_edges(edges: list, corridor_ids: set, n: int, rng, extra_door_prob: float) -> list:
    """The adjacent pairs that get a door: a random spanning tree (Kruskal on shuffled edges), every
    corridor edge, and each other edge with ``extra_door_prob``; sorted."""
    parent = list(range(n))

    def find(x):
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    chosen = []
    for e_i in (rng.permutation(len(edges)) if edges else []):
        i, j = edges[e_i]
        ri, rj = find(i), find(j)
        if ri != rj:
            parent[ri] = rj
            chosen.append((i, j))
        elif i in corridor_ids or j in corridor_ids or rng.random() < extra_door_prob:
            chosen.append((i, j))
    return sorted(chosen)


def _place_obstacles(img: np.ndarray, rooms: list, rng, num_obstacles: int, obstacle_size, t: int, dw: int) -> list:
    """Up to ``num_obstacles`` boxes drawn into rooms (kept 1.3 door widths off walls and each other)."""
    obstacles: list = []
    if num_obstacles <= 0:
        return obstacles
    lo_sz, hi_sz = obstacle_size if obstacle_size is not None else (max(2, 2 * t), max(3, dw))
    keep_off = int(np.ceil(1.3 * dw))
    cand_rooms = [r for r in rooms if r.kind == "room"
                  and r.height > 2 * keep_off + hi_sz and r.width > 2 * keep_off + hi_sz]
    tries = 0
    while len(obstacles) < num_obstacles and cand_rooms and tries < 20 * num_obstacles:
        tries += 1
        r = cand_rooms[int(rng.integers(len(cand_rooms)))]
        h = int(rng.integers(lo_sz, hi_sz + 1))
        w = int(rng.integers(lo_sz, hi_sz + 1))
        rr = int(rng.integers(r.r0 + keep_off, r.r1 - keep_off - h + 1))
        cc = int(rng.integers(r.c0 + keep_off, r.c1 - keep_off - w + 1))
        clash = any(not (rr + h + keep_off <= o[0] or o[1] + keep_off <= rr or
                         cc + w + keep_off <= o[2] or o[3] + keep_off <= cc) for o in obstacles)
        if clash:
            continue
        img[rr:rr + h, cc:cc + w] = 1.0
        obstacles.append((rr, rr + h, cc, cc + w))
    return obstacles


def generate_floorplan(width: int, height: int, seed: int = 0, **options) -> np.ndarray:
    """A procedural floor plan image: float32 (height, width), 1 = wall, 0 = free.

    The building fills the image (less ``outside_margin`` pixels, which are wall) and is split
    recursively (binary space partition) into ``num_rooms`` rooms, around a central corridor along the
    longer axis when ``corridor``; walls are ``wall_thickness`` pixels thick. Doors of ``door_width``
    pixels join rooms along a random spanning tree of the room adjacency, every room next to the
    corridor, and other neighbours with probability ``extra_door_prob`` (so loops exist).
    ``outside_corner`` removes a corner room (the space outside the building, marked as wall);
    ``num_obstacles`` rectangles of ``obstacle_size`` (min, max) pixels are placed inside rooms, away
    from walls and doors. The free space is always one 4-connected component.

    Defaults scale with ``s = min(width, height)``: walls ``s/110``, doors ``s/22``, corridor 1.4 doors,
    rooms at least 2.2 doors wide.
    """
    return generate_layout(width, height, seed=seed, **options).image


def main(argv=None):
    """``python -m floorplans.make_floorplan OUT.png --width 500 --height 400 --seed 0 [--rooms 8] ...``"""
    import argparse

    from .io import save_floorplan

    ap = argparse.ArgumentParser(description="Write a procedural floor plan image (walls white) as PNG.")
    ap.add_argument("out")
    ap.add_argument("--width", type=int, default=500)
    ap.add_argument("--height", type=int, default=400)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rooms", type=int, default=8)
    ap.add_argument("--wall-thickness", type=int, default=None)
    ap.add_argument("--door-width", type=int, default=None)
    ap.add_argument("--no-corridor", action="store_true")
    ap.add_argument("--obstacles", type=int, default=0)
    ap.add_argument("--outside-margin", type=int, default=0)
    ap.add_argument("--outside-corner", action="store_true")
    a = ap.parse_args(argv)
    plan = generate_layout(a.width, a.height, seed=a.seed, num_rooms=a.rooms, wall_thickness=a.wall_thickness,
                           door_width=a.door_width, corridor=not a.no_corridor, num_obstacles=a.obstacles,
                           outside_margin=a.outside_margin, outside_corner=a.outside_corner)
    save_floorplan(a.out, plan.image)
    print(f"wrote {a.out}: {a.width}x{a.height}, {len(plan.rooms)} spaces, {len(plan.doors)} doors, "
          f"walls {plan.wall_thickness} px, doors {plan.door_width} px")

