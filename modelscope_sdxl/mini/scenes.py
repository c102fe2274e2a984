"""The synthetic world of the mini model: flat shapes on flat backgrounds, their prompts and pixels.

One module defines the grammar, so the training script draws exactly what the
quality check later reads back:

    {a|an} [small|large] COLOUR SHAPE [at the POSITION | in the center] on {a|an} COLOUR background

e.g. "a red circle on a blue background", "a small green square at the top left
on a white background". The shape colour always differs from the background
colour. Without a size word the shape is medium; without a position it is in
the center.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

#: Colour words and the RGB values they are drawn with.
COLOURS: Dict[str, Tuple[int, int, int]] = {
    'red': (220, 30, 30),
    'green': (40, 170, 60),
    'blue': (30, 70, 220),
    'yellow': (245, 215, 40),
    'cyan': (20, 200, 215),
    'purple': (150, 40, 170),
    'white': (245, 245, 245),
    'black': (20, 20, 20),
}
SHAPES: Tuple[str, ...] = ('circle', 'square', 'triangle')
#: Size word -> radius (circle) / half side (square) as a share of the image side.
SIZES: Dict[Optional[str], float] = {'small': 0.12, None: 0.17, 'large': 0.23}
#: Position phrase -> centre (y, x) as shares of the image side; None is the center.
POSITIONS: Dict[Optional[str], Tuple[float, float]] = {
    None: (0.5, 0.5), 'center': (0.5, 0.5),
    'top left': (0.27, 0.27), 'top right': (0.27, 0.73),
    'bottom left': (0.73, 0.27), 'bottom right': (0.73, 0.73),
    'top': (0.27, 0.5), 'bottom': (0.73, 0.5), 'left': (0.5, 0.27), 'right': (0.5, 0.73),
}
#: Every word a prompt of this grammar uses (all single tokens of the mini model's tokenizer).
WORDS: Tuple[str, ...] = tuple(sorted(
    {'a', 'an', 'at', 'the', 'in', 'on', 'background', 'small', 'large', 'center'}
    | set(COLOURS) | set(SHAPES) | {w for p in POSITIONS if p for w in p.split()}))


@dataclass(frozen=True)
class Scene:
    colour: str
    shape: str
    background: str
    size: Optional[str] = None  # 'small', 'large' or None (medium)
    position: Optional[str] = None  # a key of POSITIONS; None and 'center' are the center

    def prompt(self) -> str:
        words = [_article(self.size or self.colour)]
        if self.size:
            words.append(self.size)
        words += [self.colour, self.shape]
        if self.position == 'center':
            words += ['in', 'the', 'center']
        elif self.position:
            words += ['at', 'the', self.position]
        words += ['on', _article(self.background), self.background, 'background']
        return ' '.join(words)

    def cell(self) -> Tuple[int, int]:
        """(row, column) of the 3x3 grid cell the shape's centre lies in."""
        y, x = POSITIONS[self.position]
        return int(y * 3), int(x * 3)


def _article(word: str) -> str:
    return 'an' if word[0] in 'aeiou' else 'a'


def random_scenes(rng: np.random.Generator, count: int) -> List[Scene]:
    """`count` scenes drawn uniformly from the grammar (position: the center twice as often)."""
    colours = list(COLOURS)
    sizes = list(SIZES)
    positions = list(POSITIONS)
    scenes = []
    for _ in range(count):
        colour, background = rng.choice(len(colours), size=2, replace=False)
        scenes.append(Scene(
            colour=colours[colour], background=colours[background], shape=SHAPES[rng.integers(len(SHAPES))],
            size=sizes[rng.integers(len(sizes))], position=positions[rng.integers(len(positions))]))
    return scenes


def render(scenes: Sequence[Scene], size: int = 64, rng: Optional[np.random.Generator] = None,
           jitter: bool = True) -> np.ndarray:
    """Draw scenes as RGB float32 images in [0, 1], shape (N, size, size, 3), with anti-aliased edges.

    With `jitter` (training data) the centre moves by up to 4% of the side, the size by +-12%
    and each colour channel by +-12 levels, so the model learns the words, not single images.
    """
    rng = rng if rng is not None else np.random.default_rng(0)
    n = len(scenes)
    coords = (np.arange(size, dtype=np.float32) + 0.5)
    yy, xx = np.meshgrid(coords, coords, indexing='ij')
    centre = np.array([POSITIONS[s.position] for s in scenes], dtype=np.float32) * size
    radius = np.array([SIZES[s.size] for s in scenes], dtype=np.float32) * size
    fg = np.array([COLOURS[s.colour] for s in scenes], dtype=np.float32)
    bg = np.array([COLOURS[s.background] for s in scenes], dtype=np.float32)
    if jitter:
        centre += rng.uniform(-0.04, 0.04, size=(n, 2)).astype(np.float32) * size
        radius *= rng.uniform(0.88, 1.12, size=n).astype(np.float32)
        fg = np.clip(fg + rng.uniform(-12, 12, size=fg.shape), 0, 255)
        bg = np.clip(bg + rng.uniform(-12, 12, size=bg.shape), 0, 255)
    dy = yy[None] - centre[:, 0, None, None]
    dx = xx[None] - centre[:, 1, None, None]
    r = radius[:, None, None]
    shape_ids = np.array([SHAPES.index(s.shape) for s in scenes])[:, None, None]
    circle = np.sqrt(dx * dx + dy * dy) - r
    square = np.maximum(np.abs(dx), np.abs(dy)) - 0.9 * r  # same area as a circle of radius ~r
    # Equilateral triangle pointing up, centred on its centroid, circumradius 1.2 r.
    inradius = 0.6 * r
    k = np.float32(np.sqrt(3) / 2)
    triangle = np.maximum.reduce([dy - inradius, -0.5 * dy + k * dx - inradius, -0.5 * dy - k * dx - inradius])
    sdf = np.where(shape_ids == 0, circle, np.where(shape_ids == 1, square, triangle))
    alpha = np.clip(0.5 - sdf, 0.0, 1.0)[..., None]
    image = alpha * fg[:, None, None, :] + (1 - alpha) * bg[:, None, None, :]
    return (image / 255.0).astype(np.float32)


def nearest_colour(rgb: np.ndarray) -> str:
    """The colour word whose RGB value is closest to `rgb` (0-255)."""
    names = list(COLOURS)
    table = np.array([COLOURS[c] for c in names], dtype=np.float32)
    return names[int(np.argmin(((table - np.asarray(rgb, dtype=np.float32)) ** 2).sum(axis=1)))]


#: Share of its bounding box each shape fills when drawn exactly (square 1, circle pi/4,
#: equilateral triangle 1/2): the "plain geometric reading" of a shape.
IDEAL_FILL: Dict[str, float] = {'square': 1.0, 'circle': float(np.pi / 4), 'triangle': 0.5}
#: Area of each shape in units of r^2 (r = SIZES' share times the side): circle pi r^2,
#: square (1.8 r)^2, triangle with inradius 0.6 r (render's shapes).
SHAPE_AREA: Dict[str, float] = {'circle': float(np.pi), 'square': 1.8 ** 2,
                                'triangle': float(3 * np.sqrt(3) * 0.6 ** 2)}


@dataclass(frozen=True)
class Reading:
    """What an image shows, read from its pixels alone."""
    background: str
    colour: Optional[str]  # None when no shape stands out from the background
    shape: Optional[str]
    cell: Optional[Tuple[int, int]]
    fill: Optional[float] = None  # share of its bounding box the shape fills
    area: Optional[float] = None  # the shape's area as a share of the image's
    stray_pixels: int = 0  # pixels in stray patches (see read_image)

    def fill_shape(self) -> Optional[str]:
        """The shape whose ideal fill ratio (IDEAL_FILL) is nearest to the one read."""
        if self.fill is None:
            return None
        return min(IDEAL_FILL, key=lambda k: abs(IDEAL_FILL[k] - self.fill))

    def size_word(self, shape: str) -> Optional[str]:
        """The size word (SIZES) nearest to the area read, for a shape of kind `shape`:
        boundaries at the geometric means of neighbouring sizes, so the +-12% size jitter of the
        training data stays inside its own class."""
        if self.area is None:
            return None
        r = float(np.sqrt(self.area / SHAPE_AREA[shape]))
        ordered = sorted(SIZES.items(), key=lambda kv: kv[1])
        for (word, share), (_, upper) in zip(ordered, ordered[1:]):
            if r < np.sqrt(share * upper):
                return word
        return ordered[-1][0]


def read_image(rgb: np.ndarray, min_pixels: int = 12) -> Reading:
    """Read background colour, shape colour, shape kind and 3x3 grid cell from an RGB uint8 image.

    Background: the median colour of the outermost two-pixel frame. Shape: the
    largest 8-connected region of pixels farther than 50 levels (RGB distance)
    from that background; its colour is their median, its cell the grid cell of
    their centroid, its kind from how much of its bounding box it fills (square
    above 0.91, circle above 0.65, triangle below; drawn exactly: 1.0, 0.69-0.86
    and 0.49-0.61). The fill ratio, the area and the pixels in stray patches are kept
    too (Reading.fill_shape, Reading.size_word).
    """
    import cv2

    img = np.asarray(rgb, dtype=np.float32)
    h, w, _ = img.shape
    frame = np.concatenate([img[:2].reshape(-1, 3), img[-2:].reshape(-1, 3),
                            img[2:-2, :2].reshape(-1, 3), img[2:-2, -2:].reshape(-1, 3)])
    bg_rgb = np.median(frame, axis=0)
    background = nearest_colour(bg_rgb)
    far = (np.sqrt(((img - bg_rgb) ** 2).sum(axis=-1)) > 50).astype(np.uint8)
    count, labels, stats, centroids = cv2.connectedComponentsWithStats(far, connectivity=8)
    if count < 2:
        return Reading(background, None, None, None)
    k = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    area = int(stats[k, cv2.CC_STAT_AREA])
    if area < min_pixels:
        return Reading(background, None, None, None)
    colour = nearest_colour(np.median(img[labels == k], axis=0))
    cx, cy = centroids[k]
    cell = (min(int(cy / h * 3), 2), min(int(cx / w * 3), 2))
    fill = area / float(stats[k, cv2.CC_STAT_WIDTH] * stats[k, cv2.CC_STAT_HEIGHT])
    shape = 'square' if fill > 0.91 else 'circle' if fill > 0.65 else 'triangle'
    stray = _stray_pixels(img, bg_rgb, np.median(img[labels == k], axis=0), labels, k, stats)
    return Reading(background, colour, shape, cell, fill=fill, area=area / float(h * w), stray_pixels=stray)


def _stray_pixels(img: np.ndarray, bg_rgb: np.ndarray, fg_rgb: np.ndarray, labels: np.ndarray, k: int,
                  stats: np.ndarray) -> int:
    """Pixels in stray patches: other regions that stand out from the background besides the
    shape, and pixels of a third colour -- farther than 60 RGB levels from every mix of the
    background and shape colours, so anti-aliased or soft edges do not count. Patches count from
    one pixel per 1,024 of the image (4 at 64 x 64) upwards."""
    import cv2

    h, w, _ = img.shape
    min_patch = max(2, (h * w) // 1024)
    seg = fg_rgb - bg_rgb
    t = np.clip(((img - bg_rgb) @ seg) / max(float(seg @ seg), 1e-6), 0.0, 1.0)
    off_mix = np.sqrt(((img - bg_rgb - t[..., None] * seg) ** 2).sum(axis=-1)) > 60
    stray = off_mix | ((labels > 0) & (labels != k))
    count, _, stray_stats, _ = cv2.connectedComponentsWithStats(stray.astype(np.uint8), connectivity=8)
    areas = stray_stats[1:, cv2.CC_STAT_AREA]
    return int(areas[areas >= min_patch].sum())
