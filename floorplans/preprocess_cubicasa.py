"""Render CubiCasa5k plans: ``python -m floorplans.preprocess_cubicasa INPUT_DIR OUTPUT_DIR [--width 1024]``."""

from floorplans.cubicasa import main

if __name__ == "__main__":
    main()
