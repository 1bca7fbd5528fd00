"""Image files: safe loading of user images (loading.py), the A1111 `parameters` text (infotext.py), and the PNG
text chunks that carry a generation's settings out and back in (metadata.py)."""
