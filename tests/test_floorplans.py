import os

import cv2
import numpy as np
import pytest
from scipy import ndimage

import floorplans
from floorplans import (
    free_components,
    generate_floorplan,
    generate_layout,
    load_floorplan,
    render_svg,
    save_floorplan,
    signed_distance_field,
)
from lidar import Lidar2D, trajectory_from_waypoints
from planner import free_mask
from planner.make_shipped_plans import PLANS, STYLES, make_plan


@pytest.mark.parametrize("seed", range(20))
def test_generated_free_space_is_one_component(seed):
    opts = dict(num_rooms=6 + seed % 5, num_obstacles=seed % 4, outside_corner=bool(seed % 2),
                outside_margin=5 * (seed % 3))
    plan = generate_layout(320, 260, seed=seed, **opts)
    img = plan.image
    assert img.shape == (260, 320) and img.dtype == np.float32
    assert set(np.unique(img)) == {0.0, 1.0}
    assert free_components(img)[1] == 1
    # a robot narrower than the doors can reach all free space that is far enough from walls
    allowed = free_mask(img > 0.5, plan.door_width / 2 - 1.5)
    assert ndimage.label(allowed)[1] == 1
    assert (allowed.sum() > 0.3 * (img == 0).sum())
    # the image border is wall
    assert img[0].all() and img[-1].all() and img[:, 0].all() and img[:, -1].all()


def test_generator_is_seeded_and_has_requested_structure():
    a = generate_floorplan(400, 300, seed=5)
    b = generate_floorplan(400, 300, seed=5)
    c = generate_floorplan(400, 300, seed=6)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    plan = generate_layout(600, 500, seed=2, num_rooms=9, wall_thickness=6, door_width=30)
    rooms = [r for r in plan.rooms if r.kind == "room"]
    assert len(rooms) == 9 and sum(r.kind == "corridor" for r in plan.rooms) == 1
    for d in plan.doors:
        assert min(d.r1 - d.r0, d.c1 - d.c0) == 6 and max(d.r1 - d.r0, d.c1 - d.c0) == 30
        assert np.all(plan.image[d.r0:d.r1, d.c0:d.c1] == 0)
    import networkx as nx

    assert nx.is_connected(plan.room_graph())


def test_load_and_save_floorplan(tmp_path):
    img = generate_floorplan(120, 90, seed=0)
    save_floorplan(tmp_path / "p.png", img)
    raw = cv2.imread(str(tmp_path / "p.png"), cv2.IMREAD_UNCHANGED)
    assert raw.dtype == np.uint8 and raw.ndim == 2 and set(np.unique(raw)) == {0, 255}
    np.testing.assert_array_equal(load_floorplan(tmp_path / "p.png"), img)
    cv2.imwrite(str(tmp_path / "p16.png"), (img * 65535).astype(np.uint16))
    np.testing.assert_array_equal(load_floorplan(tmp_path / "p16.png"), img)
    rgb = np.stack([img * 255] * 3, axis=2).astype(np.uint8)
    cv2.imwrite(str(tmp_path / "rgb.png"), rgb)
    np.testing.assert_array_equal(load_floorplan(tmp_path / "rgb.png"), img)
    with pytest.raises(FileNotFoundError):
        load_floorplan(tmp_path / "missing.png")


@pytest.mark.parametrize("name", ["paper", "office", "demo"])
def test_shipped_plans_and_waypoints(name):
    folder = floorplans.shipped_plan_dir(name)
    img = load_floorplan(floorplans.shipped_plan_image(name))
    W, H = PLANS[name]["layout"]["width"], PLANS[name]["layout"]["height"]
    assert img.shape == (H, W) and set(np.unique(img)) == {0.0, 1.0}
    assert free_components(img)[1] == 1
    if name == "paper":
        plan = generate_layout(**PLANS[name]["layout"])
        assert 12 <= sum(r.kind == "room" for r in plan.rooms) <= 15
        assert 12 <= plan.wall_thickness <= 18 and 60 <= plan.door_width <= 90
        assert img[:40].all() and img[:, -40:].all()  # the outside of the building is wall
    lid = Lidar2D(img, 20, 0.2, 25, 1.0, 50, 3, border_width=30)
    for style in STYLES:
        files = sorted(os.listdir(os.path.join(folder, style)))
        assert files == [f"robot_{i}.npy" for i in range(7)]
        for w in floorplans.shipped_waypoints(name, style):
            assert w.ndim == 2 and w.shape[1] == 2 and len(w) >= 10 and w.dtype == np.float64
            assert np.abs(w).max() < 1.0
            assert np.array_equal(w[0], w[-1])
            traj = trajectory_from_waypoints(w, 30, img.shape)
            assert lid.is_free(traj).all()


def _regenerate_and_compare(name, tmp_path):
    make_plan(name, str(tmp_path), verbose=False)
    folder = PLANS[name]["folder"]
    new, old = tmp_path / folder, floorplans.shipped_plan_dir(name)
    np.testing.assert_array_equal(load_floorplan(new / "floor_img.png"), load_floorplan(os.path.join(old, "floor_img.png")))
    for style in STYLES:
        assert sorted(os.listdir(new / style)) == sorted(os.listdir(os.path.join(old, style)))
        for f in os.listdir(new / style):
            assert (new / style / f).read_bytes() == open(os.path.join(old, style, f), "rb").read(), f"{style}/{f}"


def test_shipped_demo_plan_is_reproducible(tmp_path):
    _regenerate_and_compare("demo", tmp_path)


def test_shipped_paper_plan_is_reproducible(tmp_path):
    _regenerate_and_compare("paper", tmp_path)


def test_shipped_office_plan_is_reproducible(tmp_path):
    _regenerate_and_compare("office", tmp_path)


SVG = """<?xml version="1.0" encoding="UTF-8"?>
<svg xmlns="http://www.w3.org/2000/svg" width="400" height="200">
 <g id="Model" class="Model">
  <g class="Floor">
   <g class="Space Kitchen"><polygon points="10,10 390,10 390,190 10,190"/></g>
   <g id="Wall" class="Wall External">
    <polygon points="0,0 400,0 400,10 0,10"/>
    <polygon points="0,190 400,190 400,200 0,200"/>
    <polygon points="0,0 10,0 10,200 0,200"/>
    <polygon points="390,0 400,0 400,200 390,200"/>
    <g class="Window Regular"><polygon points="300,0 340,0 340,10 300,10"/><polygon points="305,2 335,2 335,8 305,8"/></g>
   </g>
   <g id="Wall" class="Wall" transform="translate(5,0)">
    <polygon points="195,10 205,10 205,190 195,190"/>
    <g class="Door Swing"><polygon points="195,80 205,80 205,120 195,120"/></g>
   </g>
  </g>
 </g>
</svg>
"""


def test_cubicasa_rendering(tmp_path):
    plan = tmp_path / "plans" / "high_quality" / "17"
    plan.mkdir(parents=True)
    (plan / "model.svg").write_text(SVG)
    parsed = floorplans.parse_svg(plan / "model.svg")
    assert len(parsed["walls"]) == 5 and len(parsed["doors"]) == 1 and len(parsed["windows"]) == 1
    np.testing.assert_allclose(parsed["walls"][4][:, 0].min(), 200)  # group transform applied
    img = render_svg(plan / "model.svg", width=220, border=10, doors="free", windows="wall")
    # 400 x 200 units scaled to 200 px wide: 0.5 px per unit, plus a 10 px border
    assert img.shape == (120, 220)
    assert img[:10].all() and img[:, :10].all()  # the border (outside the building) is wall
    assert img[60, 60] == 0 and img[60, 160] == 0  # inside the two rooms
    assert img[12, 60] == 1 and img[60, 12] == 1  # external walls
    assert img[60, 111] == 0  # door opening carved out of the internal wall (x = 200..210 -> 110..115)
    assert img[20, 111] == 1  # internal wall away from the door
    assert img[12, 170] == 1  # window drawn as wall
    closed = render_svg(plan / "model.svg", width=220, border=10, doors="wall")
    assert closed[60, 111] == 1
    assert free_components(img)[1] == 1 and free_components(closed)[1] == 2
    opened = render_svg(plan / "model.svg", width=220, border=10, windows="free", fill_outside=False)
    assert opened[12, 170] == 0 and opened[5, 5] == 0
    sdf = signed_distance_field(img)
    assert sdf[60, 60] > 0 and sdf[12, 60] < 0
    assert sdf[60, 60] == pytest.approx(np.hypot(*(np.argwhere(img >= 0.5) - [60, 60]).T).min())
    # batch command over a folder of plans
    other = tmp_path / "plans" / "colorful" / "3"
    other.mkdir(parents=True)
    (other / "model.svg").write_text(SVG)
    from floorplans.cubicasa import main

    main([str(tmp_path / "plans"), str(tmp_path / "out"), "--width", "220", "--border", "10", "--sdf"])
    out = tmp_path / "out" / "high_quality" / "17" / "floor_img.png"
    np.testing.assert_array_equal(load_floorplan(out), img)
    assert (tmp_path / "out" / "colorful" / "3" / "sdf.npy").exists()


def test_generator_command_writes_png(tmp_path):
    from floorplans.generator import main

    main([str(tmp_path / "g.png"), "--width", "300", "--height", "200", "--seed", "3", "--obstacles", "2"])
    img = load_floorplan(tmp_path / "g.png")
    np.testing.assert_array_equal(img, generate_floorplan(300, 200, seed=3, num_obstacles=2))
