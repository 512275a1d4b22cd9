"""Draws the demo's sample product images (flat PNGs, a few KB each) with the standard library.

Run ``python -m mailer.demo_data.make_images`` to regenerate ``mailer/demo_data/images/``.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

OUT_DIR = Path(__file__).resolve().parent / "images"
#: Side of the square product images, pixels (shown at 56 px and 140 px in the mails).
PRODUCT_SIDE_PX = 160
#: Size of the newsletter hero image, pixels.
HERO_SIZE_PX = (600, 260)


def _png(width: int, height: int, rows: list[bytes]) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    raw = b"".join(b"\x00" + r for r in rows)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))


def _inside(poly, x: float, y: float) -> bool:
    hit = False
    j = len(poly) - 1
    for i in range(len(poly)):
        xi, yi = poly[i]
        xj, yj = poly[j]
        if (yi > y) != (yj > y) and x < (xj - xi) * (y - yi) / (yj - yi) + xi:
            hit = not hit
        j = i
    return hit


def draw(width: int, height: int, background, shapes) -> bytes:
    """shapes: (colour, polygon in 0..1 units) or (colour, ("circle", cx, cy, r)), later on top."""
    rows = []
    for py in range(height):
        row = bytearray()
        for px in range(width):
            x, y = (px + 0.5) / width, (py + 0.5) / height
            colour = background
            for fill, shape in shapes:
                if shape[0] == "circle":
                    _, cx, cy, r = shape
                    if ((x - cx) * width) ** 2 + ((y - cy) * height) ** 2 <= (r * width) ** 2:
                        colour = fill
                elif _inside(shape, x, y):
                    colour = fill
            row += bytes(colour)
        rows.append(bytes(row))
    return _png(width, height, rows)


SHIRT = [(.3, .2), (.42, .16), (.5, .22), (.58, .16), (.7, .2), (.88, .36), (.78, .46), (.7, .4), (.7, .86),
         (.3, .86), (.3, .4), (.22, .46), (.12, .36)]
BEANIE = [(.22, .7), (.24, .48), (.34, .32), (.5, .26), (.66, .32), (.76, .48), (.78, .7)]
BEANIE_BAND = [(.2, .68), (.8, .68), (.8, .8), (.2, .8)]
TOTE = [(.24, .38), (.76, .38), (.8, .86), (.2, .86)]
TOTE_HANDLE = [(.34, .4), (.38, .18), (.62, .18), (.66, .4), (.6, .4), (.57, .24), (.43, .24), (.4, .4)]
SHOE = [(.12, .58), (.3, .5), (.5, .52), (.72, .6), (.88, .66), (.88, .74), (.12, .74)]
SOLE = [(.1, .72), (.9, .72), (.9, .78), (.1, .78)]
COAT = [(.32, .14), (.68, .14), (.86, .3), (.9, .8), (.78, .8), (.74, .42), (.74, .9), (.26, .9), (.26, .42),
        (.22, .8), (.1, .8), (.14, .3)]
COAT_LAPEL = [(.44, .14), (.5, .5), (.56, .14)]
SWEATER = [(.3, .18), (.7, .18), (.9, .4), (.9, .76), (.78, .76), (.74, .46), (.74, .86), (.26, .86), (.26, .46),
           (.22, .76), (.1, .76), (.1, .4)]
CABLE = [(.47, .22), (.53, .22), (.53, .86), (.47, .86)]
GLOVE = [(.3, .86), (.3, .46), (.24, .36), (.3, .32), (.38, .42), (.38, .2), (.44, .18), (.46, .36), (.48, .14),
         (.54, .14), (.56, .36), (.6, .18), (.66, .2), (.64, .4), (.7, .24), (.76, .26), (.7, .86)]
CUFF = [(.3, .76), (.7, .76), (.7, .86), (.3, .86)]

PRODUCTS = {
    "linen-shirt.png": ((226, 234, 222), [((124, 156, 120), SHIRT), ((98, 128, 96), [(.46, .2), (.5, .3), (.54, .2)])]),
    "merino-beanie.png": ((232, 228, 238), [((70, 74, 86), BEANIE), ((52, 56, 66), BEANIE_BAND),
                                             ((70, 74, 86), ("circle", .5, .25, .06))]),
    "canvas-tote.png": ((240, 232, 216), [((120, 92, 60), TOTE_HANDLE), ((214, 196, 160), TOTE)]),
    "rope-bracelet.png": ((222, 234, 240), [((15, 76, 92), ("circle", .5, .52, .3)),
                                             ((222, 234, 240), ("circle", .5, .52, .22)),
                                             ((227, 100, 20), ("circle", .5, .22, .06))]),
    "deck-shoes.png": ((236, 230, 222), [((120, 72, 40), SHOE), ((246, 244, 238), SOLE)]),
    "wool-overcoat.png": ((230, 230, 232), [((92, 84, 76), COAT), ((64, 58, 52), COAT_LAPEL)]),
    "cable-sweater.png": ((240, 236, 226), [((200, 186, 150), SWEATER), ((176, 160, 122), CABLE)]),
    "leather-gloves.png": ((238, 232, 226), [((110, 66, 40), GLOVE), ((84, 48, 28), CUFF)]),
}
HERO = ("harbour-hero.png", (196, 224, 236), [
    ((15, 76, 92), [(0, .62), (1, .62), (1, 1), (0, 1)]),
    ((246, 214, 120), ("circle", .8, .28, .05)),
    ((240, 236, 226), [(.2, .6), (.32, .6), (.3, .66), (.22, .66)]),
    ((255, 255, 255), [(.26, .58), (.26, .24), (.34, .56)]),
    ((227, 100, 20), [(.25, .58), (.25, .3), (.18, .56)]),
])


def main() -> None:
    OUT_DIR.mkdir(exist_ok=True)
    for name, (bg, shapes) in PRODUCTS.items():
        (OUT_DIR / name).write_bytes(draw(PRODUCT_SIDE_PX, PRODUCT_SIDE_PX, bg, shapes))
    name, bg, shapes = HERO
    (OUT_DIR / name).write_bytes(draw(*HERO_SIZE_PX, bg, shapes))


if __name__ == "__main__":
    main()
