"""Write a procedural floor plan as PNG: ``python -m floorplans.make_floorplan OUT.png --width 500 --height 400``."""

from floorplans.generator import main

if __name__ == "__main__":
    main()
