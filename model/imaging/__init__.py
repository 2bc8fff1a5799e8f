"""Images in: formats, modes, EXIF orientation, resizing, device decoding, supports."""
