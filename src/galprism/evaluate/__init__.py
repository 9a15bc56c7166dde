"""Side-by-side evaluation of deblenders on simulated test cutouts with truth (``galprism evaluate``)."""
