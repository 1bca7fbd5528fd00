"""Lasting work: kept images on disk (outputs.py), the SQLite library of images and conversations (library.py),
and reading other tools' PNGs for import (comfy.py). The engine never imports this package."""
