"""Floor plan images (float arrays in [0, 1], 1 = wall, 0 = free): a procedural generator, CubiCasa5k
preprocessing, and the plans shipped with the repository (``paper_plan/``, ``office_plan/``, ``demo_plan/``, each with
``floor_img.png`` and robot waypoints in ``minimal_overlap/``, ``some_overlap/``, ``tight_paths/``;
regenerate them with ``python -m planner.make_shipped_plans``).
"""

import os as _os

from .cubicasa import parse_svg, preprocess_folder, preprocess_plan, render_svg, signed_distance_field
from .generator import Door, FloorPlan, Room, free_components, generate_floorplan, generate_layout
from .io import load_floorplan, load_waypoints, save_floorplan

PACKAGE_DIR = _os.path.dirname(_os.path.abspath(__file__))
SHIPPED_PLANS = {"paper": "paper_plan", "office": "office_plan", "demo": "demo_plan"}
WAYPOINT_STYLES = ("minimal_overlap", "some_overlap", "tight_paths")


def shipped_plan_dir(name: str = "demo") -> str:
    """Folder of a shipped plan: ``"paper"`` (2100 x 1600 apartment), ``"office"`` (a second 2100 x 1600
    building, another seed) or ``"demo"`` (500 x 400)."""
    if name not in SHIPPED_PLANS:
        raise ValueError(f"unknown shipped plan {name!r}; choose from {sorted(SHIPPED_PLANS)}")
    return _os.path.join(PACKAGE_DIR, SHIPPED_PLANS[name])


def shipped_plan_image(name: str = "demo") -> str:
    """Path of a shipped plan's ``floor_img.png``."""
    return _os.path.join(shipped_plan_dir(name), "floor_img.png")


def shipped_waypoints(name: str = "demo", style: str = "tight_paths") -> list:
    """The 7 robots' (K, 2) normalized waypoint arrays of a shipped plan and style."""
    if style not in WAYPOINT_STYLES:
        raise ValueError(f"unknown waypoint style {style!r}; choose from {list(WAYPOINT_STYLES)}")
    return load_waypoints(_os.path.join(shipped_plan_dir(name), style))


__all__ = [
    "generate_floorplan",
    "generate_layout",
    "FloorPlan",
    "Room",
    "Door",
    "free_components",
    "load_floorplan",
    "save_floorplan",
    "load_waypoints",
    "parse_svg",
    "render_svg",
    "preprocess_plan",
    "preprocess_folder",
    "signed_distance_field",
    "shipped_plan_dir",
    "shipped_plan_image",
    "shipped_waypoints",
    "SHIPPED_PLANS",
    "WAYPOINT_STYLES",
]
