"""A small synthetic data set in ADE20K's layout, for the segmentation demo and the tests.

Each image is a toy street scene drawn on textured regions: sky at the top, a wall behind,
buildings with window grids, round trees and a striped floor, plus a few flat-coloured triangles of
clutter. The label maps follow ADE20K's convention exactly: single-channel PNGs where 0 is
"other" (ignored once ``reduce_zero_label=True`` shifts the ids) and 1..5 are ADE20K's first five
classes, so ``ADE20KDataset`` (or ``resnest_mm.CheckedADE20KDataset``) reads them unchanged and a
``metainfo`` listing :data:`DEMO_CLASSES` keeps only those five::

    root/images/training/demo_00000.jpg      root/annotations/training/demo_00000.png
    root/images/validation/demo_00000.jpg    root/annotations/validation/demo_00000.png

Wall and building colours overlap on purpose, so telling them apart needs the window texture and
not only the colour.
"""
import glob
import os
import os.path as osp

import numpy as np

from ..models.checks import check_int

#: ADE20K's classes 1..5, in ADE20K's order: the label map value of class ``i`` is ``i + 1``.
DEMO_CLASSES = ('wall', 'building', 'sky', 'floor', 'tree')
WALL, BUILDING, SKY, FLOOR, TREE = 1, 2, 3, 4, 5
OTHER = 0  # ADE20K's "other objects": ignored in training and evaluation

SPLITS = ('training', 'validation')
_PREFIX = 'demo_'


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cell: int) -> np.ndarray:
    """Low-frequency noise in [0, 1]: a coarse random grid upsampled bilinearly."""
    import cv2
    coarse = rng.random((max(2, h // cell + 1), max(2, w // cell + 1))).astype(np.float32)
    return cv2.resize(coarse, (w, h), interpolation=cv2.INTER_LINEAR)


def _textures(rng: np.random.Generator, h: int, w: int) -> dict[int, np.ndarray]:
    """One full-frame RGB float texture per class, with this image's random colours."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    out = {}
    # Wall: flat pastel with fine grain.
    wall = rng.uniform(150, 215, 3)
    out[WALL] = wall + rng.normal(0, 5, (h, w, 3))
    # Building: a colour from the same range as the wall, with a grid of dark windows.
    bld = rng.uniform(140, 210, 3)
    period = int(rng.integers(7, 12))
    win = ((yy % period) < period // 2) & ((xx % period) < period // 2)
    out[BUILDING] = bld - win[..., None] * rng.uniform(60, 100) + rng.normal(0, 5, (h, w, 3))
    # Sky: a smooth vertical blue gradient.
    top, bottom = rng.uniform([60, 110, 190], [110, 160, 250]), rng.uniform(
        [150, 190, 220], [200, 230, 255])
    t = (yy / max(1, h - 1))[..., None]
    out[SKY] = top * (1 - t) + bottom * t + rng.normal(0, 2, (h, w, 3))
    # Floor: diagonal stripes of two brown shades.
    a, b = rng.uniform([110, 70, 30], [170, 120, 70]), rng.uniform([70, 40, 15], [120, 80, 45])
    stripe = (((xx + yy) // int(rng.integers(4, 8))) % 2)[..., None]
    out[FLOOR] = a * stripe + b * (1 - stripe) + rng.normal(0, 4, (h, w, 3))
    # Tree: green with blotches.
    g = rng.uniform([20, 90, 20], [70, 160, 70])
    out[TREE] = g * (0.6 + 0.8 * _smooth_noise(rng, h, w, 4))[..., None] + rng.normal(
        0, 6, (h, w, 3))
    return out


def draw_scene(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic scene: an RGB ``uint8`` image and its ADE20K-convention label map.

    Args:
        rng: Random generator (the scene is a pure function of its state).
        size: Height and width in pixels.

    Returns:
        ``(image, label)``: ``(size, size, 3)`` RGB and ``(size, size)`` ``uint8`` with values in
        ``{0, 1, ..., 5}``.
    """
    import cv2
    h = w = size
    label = np.full((h, w), WALL, np.uint8)
    horizon = int(rng.uniform(0.15, 0.35) * h)
    floor_top = int(rng.uniform(0.62, 0.8) * h)
    label[:horizon] = SKY
    label[floor_top:] = FLOOR
    for _ in range(int(rng.integers(1, 4))):
        bw = int(rng.uniform(0.15, 0.35) * w)
        x0 = int(rng.integers(-bw // 2, w - bw // 2))
        y0 = int(rng.uniform(0.08, 0.5) * h)
        label[y0:floor_top, max(0, x0):max(0, x0 + bw)] = BUILDING
    for _ in range(int(rng.integers(0, 3))):
        r = int(rng.uniform(0.08, 0.16) * w)
        cx, cy = int(rng.integers(0, w)), int(rng.uniform(0.35, 0.75) * h)
        cv2.circle(label, (cx, cy), r, TREE, thickness=-1)
    textures = _textures(rng, h, w)
    image = np.zeros((h, w, 3), np.float32)
    for cls, tex in textures.items():
        image[label == cls] = tex[label == cls]
    # Clutter drawn last, over everything: "other" in the label map, flat saturated colours.
    for _ in range(int(rng.integers(0, 3))):
        c = rng.integers(0, size, 2)
        pts = (c + rng.integers(-size // 8, size // 8 + 1, (3, 2))).astype(np.int32)
        cv2.fillPoly(label, [pts], OTHER)
        mask = np.zeros((h, w), np.uint8)
        cv2.fillPoly(mask, [pts], 1)
        image[mask > 0] = rng.choice([0, 255], 3) * 0.8 + 20
    image = np.clip(image + rng.normal(0, 3, image.shape), 0, 255).astype(np.uint8)
    return image, label


def make_demo_ade(root: str, *, num_train: int = 96, num_val: int = 24, seed: int = 0,
                  size: int = 128) -> str:
    """Write a synthetic ADE20K-format data set under ``root`` (deterministic in ``seed``).

    Files of an earlier run that this run does not rewrite (``demo_*`` beyond the new counts) are
    removed so that the folders hold exactly this data set; other files are left alone.

    Args:
        root: Output folder (created), e.g. ``data/demo_ade``.
        num_train: Training images.
        num_val: Validation images.
        seed: Random seed.
        size: Image height and width in pixels (>= 32).

    Returns:
        ``root``.

    Raises:
        ValueError: A count or the size is not valid.
    """
    import cv2
    check_int('make_demo_ade', 'num_train', num_train, 1)
    check_int('make_demo_ade', 'num_val', num_val, 1)
    check_int('make_demo_ade', 'size', size, 32)
    check_int('make_demo_ade', 'seed', seed, 0)
    # One independent stream per split, so num_train does not change the validation images.
    for split, count, stream in (('training', num_train, 0), ('validation', num_val, 1)):
        rng = np.random.default_rng([seed, stream])
        img_dir = osp.join(root, 'images', split)
        ann_dir = osp.join(root, 'annotations', split)
        os.makedirs(img_dir, exist_ok=True)
        os.makedirs(ann_dir, exist_ok=True)
        keep = set()
        for i in range(count):
            image, label = draw_scene(rng, size)
            name = f'{_PREFIX}{i:05d}'
            keep.add(name)
            cv2.imwrite(osp.join(img_dir, name + '.jpg'), image[..., ::-1],
                        [cv2.IMWRITE_JPEG_QUALITY, 95])
            cv2.imwrite(osp.join(ann_dir, name + '.png'), label)
        for path in glob.glob(osp.join(img_dir, _PREFIX + '*.jpg')) + glob.glob(
                osp.join(ann_dir, _PREFIX + '*.png')):
            if osp.splitext(osp.basename(path))[0] not in keep:
                os.remove(path)
    return root
