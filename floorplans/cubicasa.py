"""CubiCasa5k preprocessing: render a plan's ``model.svg`` walls into a density image.

    python -m floorplans.preprocess_cubicasa INPUT_DIR OUTPUT_DIR [--width 1024] [--border 30]
                                  [--doors free|wall] [--windows wall|free] [--keep-outside] [--sdf]

Every folder under ``INPUT_DIR`` holding a ``model.svg`` becomes ``OUTPUT_DIR/<same relative
path>/floor_img.png`` (and ``sdf.npy`` with ``--sdf``).

In CubiCasa5k's SVG, walls are ``<g class="Wall ...">`` groups whose direct ``<polygon points=...>``
children outline the wall; door and window openings are nested ``<g class="Door ...">`` /
``<g class="Window ...">`` groups whose first polygon outlines the opening.
"""

from __future__ import annotations

import argparse
import os
import re
import xml.etree.ElementTree as ET

import cv2
import numpy as np
from scipy import ndimage

from .io import save_floorplan

__all__ = ["parse_svg", "render_svg", "preprocess_plan", "preprocess_folder", "signed_distance_field"]

_NUM = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _classes(el) -> list:
    return (el.get("class") or "").split()


def _parse_transform(text):
    m = np.eye(3)
    if not text:
        return m
    for name, args in re.findall(r"(\w+)\s*\(([^)]*)\)", text):
        v = [float(a) for a in _NUM.findall(args)]
        t = np.eye(3)
        if name == "matrix" and len(v) == 6:
            t[:2, :] = [[v[0], v[2], v[4]], [v[1], v[3], v[5]]]
        elif name == "translate":
            t[0, 2] = v[0]
            t[1, 2] = v[1] if len(v) > 1 else 0.0
        elif name == "scale":
            t[0, 0] = v[0]
            t[1, 1] = v[1] if len(v) > 1 else v[0]
        elif name == "rotate":
            a = np.deg2rad(v[0])
            r = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
            if len(v) == 3:
                c = np.array([[1, 0, v[1]], [0, 1, v[2]], [0, 0, 1.0]])
                ci = np.array([[1, 0, -v[1]], [0, 1, -v[2]], [0, 0, 1.0]])
                r = c @ r @ ci
            t = r
        m = m @ t
    return m


def _points(el, m):
    v = [float(a) for a in _NUM.findall(el.get("points") or "")]
    if len(v) < 6:
        return None
    p = np.array(v[: len(v) // 2 * 2]).reshape(-1, 2)
    ph = np.concatenate([p, np.ones((len(p), 1))], axis=1) @ m.T
    return ph[:, :2]


def _size(root):
    w, h = root.get("width"), root.get("height")
    if w and h:
        return float(_NUM.findall(w)[0]), float(_NUM.findall(h)[0])
    vb = root.get("viewBox")
    if vb:
        v = [float(a) for a in _NUM.findall(vb)]
        return v[2], v[3]
    return None


def parse_svg(svg_path):
    """Polygons of a CubiCasa5k ``model.svg``: ``{"walls", "doors", "windows": [(n, 2) arrays], "size"}``.

    Coordinates are SVG user units (x right, y down) after group transforms. ``size`` is the SVG's
    (width, height), or the bounding box of all polygons when the SVG gives none.
    """
    root = ET.parse(os.fspath(svg_path)).getroot()
    out: dict = {"walls": [], "doors": [], "windows": []}

    def visit(el, m):
        m = m @ _parse_transform(el.get("transform"))
        cls = _classes(el)
        kind = None
        if _local(el.tag) == "g":
            if "Wall" in cls:
                kind = "walls"
            elif "Door" in cls:
                kind = "doors"
            elif "Window" in cls:
                kind = "windows"
        taken = False
        for ch in el:
            t = _local(ch.tag)
            if t == "polygon" and kind is not None:
                if kind != "walls" and taken:
                    continue
                p = _points(ch, m @ _parse_transform(ch.get("transform")))
                if p is not None:
                    out[kind].append(p)
                    taken = True
            elif t != "polygon":
                visit(ch, m)

    visit(root, np.eye(3))
    size = _size(root)
    if size is None:
        allp = np.concatenate(out["walls"] + out["doors"] + out["windows"] or [np.zeros((1, 2))])
        size = (float(allp[:, 0].max()), float(allp[:, 1].max()))
    out["size"] = size
    return out


def _fill(img, polys, value, scale, border):
    for p in polys:  # one call per polygon: overlapping polygons in one call would cancel out
        pts = np.round((p * scale + border) * 16).astype(np.int32)
        cv2.fillPoly(img, [pts], value, lineType=cv2.LINE_8, shift=4)


def render_svg(svg_path, width: int = 1024, border: int = 30, doors: str = "free", windows: str = "wall",
               fill_outside: bool = True) -> np.ndarray:
    """Render a CubiCasa5k ``model.svg`` into a float32 density image (1 = wall).

    The plan is scaled to ``width - 2 * border`` pixels wide (aspect ratio kept) and surrounded by
    ``border`` pixels. ``doors`` / ``windows`` are ``"wall"`` (openings drawn as wall) or ``"free"``
    (openings carved out of the walls). ``fill_outside`` marks the space outside the building as wall:
    the free space reachable from the image edge when every opening is closed.
    """
    for name, v in (("doors", doors), ("windows", windows)):
        if v not in ("wall", "free"):
            raise ValueError(f"{name} must be 'wall' or 'free', got {v!r}")
    data = parse_svg(svg_path)
    sw, sh = data["size"]
    width = int(width)
    scale = (width - 2 * border) / sw
    height = int(round(sh * scale)) + 2 * border
    closed = np.zeros((height, width), dtype=np.uint8)
    _fill(closed, data["walls"] + data["doors"] + data["windows"], 1, scale, border)
    img = np.zeros((height, width), dtype=np.uint8)
    _fill(img, data["walls"], 1, scale, border)
    for kind, mode in (("doors", doors), ("windows", windows)):
        _fill(img, data[kind], 1 if mode == "wall" else 0, scale, border)
    if fill_outside:
        labels, _ = ndimage.label(closed == 0)
        edge = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
        edge = edge[edge > 0]
        img[np.isin(labels, edge)] = 1
    return img.astype(np.float32)


def signed_distance_field(img, threshold: float = 0.5) -> np.ndarray:
    """Signed distance (pixels) to the wall boundary: positive in free space, negative inside walls."""
    wall = np.asarray(img) >= threshold
    out = ndimage.distance_transform_edt(~wall) - ndimage.distance_transform_edt(wall)
    return out.astype(np.float32)


def preprocess_plan(plan_dir, out_dir, width: int = 1024, border: int = 30, doors: str = "free",
                    windows: str = "wall", fill_outside: bool = True, sdf: bool = False) -> str:
    """Render ``plan_dir/model.svg`` to ``out_dir/floor_img.png`` (and ``sdf.npy``); returns the PNG path."""
    img = render_svg(os.path.join(plan_dir, "model.svg"), width=width, border=border, doors=doors,
                     windows=windows, fill_outside=fill_outside)
    os.makedirs(out_dir, exist_ok=True)
    png = os.path.join(out_dir, "floor_img.png")
    save_floorplan(png, img)
    if sdf:
        np.save(os.path.join(out_dir, "sdf.npy"), signed_distance_field(img))
    return png


def preprocess_folder(in_dir, out_dir, progress: bool = True, **options) -> list:
    """Preprocess every plan folder (one holding ``model.svg``) under ``in_dir`` into ``out_dir``."""
    plans = sorted(root for root, _, files in os.walk(in_dir) if "model.svg" in files)
    it = plans
    if progress:
        from tqdm import tqdm

        it = tqdm(plans, desc="plans", unit="plan")
    out = []
    for p in it:
        rel = os.path.relpath(p, in_dir)
        out.append(preprocess_plan(p, os.path.join(out_dir, rel), **options))
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description="Render CubiCasa5k model.svg plans into floor plan images.")
    ap.add_argument("input_dir")
    ap.add_argument("output_dir")
    ap.add_argument("--width", type=int, default=1024)
    ap.add_argument("--border", type=int, default=30)
    ap.add_argument("--doors", choices=["free", "wall"], default="free")
    ap.add_argument("--windows", choices=["free", "wall"], default="wall")
    ap.add_argument("--keep-outside", action="store_true", help="leave the space outside the building free")
    ap.add_argument("--sdf", action="store_true", help="also save the signed distance field as sdf.npy")
    a = ap.parse_args(argv)
    paths = preprocess_folder(a.input_dir, a.output_dir, width=a.width, border=a.border, doors=a.doors,
                              windows=a.windows, fill_outside=not a.keep_outside, sdf=a.sdf)
    print(f"wrote {len(paths)} floor plan images to {a.output_dir}")

