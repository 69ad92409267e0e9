"""A small synthetic instance data set in COCO's format and MMDetection's layout.

Each image holds one to four non-overlapping shapes (:data:`DEMO_CLASSES`) filled with a flat or
striped colour, on a textured background (smooth noise, stripes and a few flat-coloured clutter
blobs that are not objects). Every shape has its box, its polygon mask and its area, so the same
files serve the box (Faster/Cascade R-CNN) and the mask (Mask R-CNN) demos. The layout is COCO
2017's, so a detection config only changes ``data_root``::

    root/annotations/instances_train2017.json    root/train2017/demo_000000.jpg ...
    root/annotations/instances_val2017.json      root/val2017/demo_000000.jpg ...

Generation is deterministic in ``seed`` and the two splits use independent random streams, so the
validation images do not depend on ``num_train``.
"""
import glob
import json
import math
import os
import os.path as osp

import numpy as np

from ..models.checks import check_int

#: Category names; their COCO ids are 1, 2, 3.
DEMO_CLASSES = ('circle', 'square', 'triangle')
SPLITS = ('train2017', 'val2017')
_PREFIX = 'demo_'


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cell: int) -> np.ndarray:
    """Noise in [0, 1] varying over about ``cell`` pixels (a bilinearly upsampled grid)."""
    import cv2
    grid = rng.random((h // cell + 2, w // cell + 2)).astype(np.float32)
    return cv2.resize(grid, (w, h), interpolation=cv2.INTER_LINEAR)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    import cv2
    base = rng.uniform(40, 215, 3)
    tint = rng.uniform(-60, 60, 3)
    image = base + tint * _smooth_noise(rng, size, size, int(rng.integers(8, 32)))[..., None]
    if rng.random() < 0.5:  # stripes at a random angle and period
        yy, xx = np.mgrid[:size, :size]
        angle = rng.uniform(0, math.pi)
        phase = (xx * math.cos(angle) + yy * math.sin(angle)) * 2 * math.pi / rng.uniform(6, 20)
        image = image + rng.uniform(10, 30) * np.sin(phase)[..., None]
    image = np.ascontiguousarray(image, dtype=np.float32)
    # Clutter: flat blobs and lines that are not objects, so that colour edges alone are not
    # enough to find the shapes.
    for _ in range(int(rng.integers(0, 4))):
        colour = tuple(float(c) for c in rng.uniform(0, 255, 3))
        if rng.random() < 0.5:
            p1 = tuple(int(v) for v in rng.integers(0, size, 2))
            p2 = tuple(int(v) for v in rng.integers(0, size, 2))
            cv2.line(image, p1, p2, colour, int(rng.integers(1, 4)))
        else:
            centre = tuple(int(v) for v in rng.integers(0, size, 2))
            axes = tuple(int(v) for v in rng.integers(3, 8, 2))
            cv2.ellipse(image, centre, axes, float(rng.uniform(0, 180)), 0, 360, colour, -1)
    return image


def _polygon(rng: np.random.Generator, label: int, cx: float, cy: float, r: float
             ) -> np.ndarray:
    """The outline of a shape of class ``label`` (index into DEMO_CLASSES) as (N, 2) x, y."""
    rotation = rng.uniform(0, 2 * math.pi)
    if DEMO_CLASSES[label] == 'circle':
        angles = np.linspace(0, 2 * math.pi, 24, endpoint=False)
        rx, ry = r, r * rng.uniform(0.8, 1.0)
    elif DEMO_CLASSES[label] == 'square':
        angles = rotation + np.array([0.25, 0.75, 1.25, 1.75]) * math.pi
        rx = ry = r
    else:
        angles = rotation + np.array([0, 2 / 3, 4 / 3]) * math.pi
        rx = ry = r
    return np.stack([cx + rx * np.cos(angles), cy + ry * np.sin(angles)], axis=1)


def _overlaps(box: np.ndarray, boxes: list, margin: float) -> bool:
    for other in boxes:
        if (box[0] < other[2] + margin and other[0] < box[2] + margin
                and box[1] < other[3] + margin and other[1] < box[3] + margin):
            return True
    return False


def draw_image(rng: np.random.Generator, size: int, *, max_objects: int = 4
               ) -> tuple[np.ndarray, list[dict]]:
    """One RGB uint8 image and its objects (``label``, ``polygon`` (N, 2), ``bbox`` x1y1x2y2)."""
    import cv2
    image = _background(rng, size)
    objects: list[dict] = []
    boxes: list[np.ndarray] = []
    wanted = int(rng.integers(1, max_objects + 1))
    for _ in range(20 * wanted):  # rejection sampling of free space
        if len(objects) == wanted:
            break
        label = int(rng.integers(len(DEMO_CLASSES)))
        r = rng.uniform(0.08, 0.22) * size
        cx, cy = rng.uniform(r, size - r, 2)
        poly = _polygon(rng, label, cx, cy, r)
        box = np.concatenate([poly.min(0), poly.max(0)]).clip(0, size)
        if _overlaps(box, boxes, margin=2):
            continue
        colour = rng.uniform(0, 255, 3)
        # Keep the shape visible against the local background.
        local = image[int(box[1]):int(box[3]) + 1, int(box[0]):int(box[2]) + 1].reshape(-1, 3)
        if np.abs(colour - local.mean(0)).sum() < 90:
            colour = 255 - local.mean(0)
        mask = np.zeros((size, size), np.uint8)
        cv2.fillPoly(mask, [np.round(poly * 16).astype(np.int32)], 1, cv2.LINE_8, shift=4)
        fill = np.broadcast_to(colour, image.shape).astype(np.float32)
        if rng.random() < 0.3:  # striped fill
            yy = np.arange(size)[:, None, None]
            fill = fill * (0.75 + 0.25 * np.sign(np.sin(yy * 2 * math.pi / rng.uniform(4, 9))))
        image[mask > 0] = fill[mask > 0]
        boxes.append(box)
        objects.append(dict(label=label, polygon=poly.clip(0, size), bbox=box))
    image = image + rng.normal(0, 4, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8), objects


def _polygon_area(poly: np.ndarray) -> float:
    x, y = poly[:, 0], poly[:, 1]
    return float(abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))) / 2)


def make_demo_coco(root: str, *, num_train: int = 400, num_val: int = 100, seed: int = 0,
                   size: int = 128, max_objects: int = 4) -> str:
    """Write the synthetic COCO-format data set under ``root``.

    Images of an earlier run that this run does not rewrite (``demo_*`` beyond the new counts) are
    removed, so the folders match the annotation files; other files are left alone.

    Args:
        root: Output folder (created), e.g. ``data/demo_coco``.
        num_train: Training images.
        num_val: Validation images.
        seed: Random seed.
        size: Image height and width in pixels (>= 32).
        max_objects: Most objects in one image (>= 1).

    Returns:
        ``root``.

    Raises:
        ValueError: A count, the seed or the size is not valid.
    """
    import cv2
    check_int('make_demo_coco', 'num_train', num_train, 1)
    check_int('make_demo_coco', 'num_val', num_val, 1)
    check_int('make_demo_coco', 'seed', seed, 0)
    check_int('make_demo_coco', 'size', size, 32)
    check_int('make_demo_coco', 'max_objects', max_objects, 1)
    categories = [dict(id=i + 1, name=name, supercategory='shape')
                  for i, name in enumerate(DEMO_CLASSES)]
    os.makedirs(osp.join(root, 'annotations'), exist_ok=True)
    for stream, (split, count) in enumerate(zip(SPLITS, (num_train, num_val))):
        rng = np.random.default_rng([seed, stream])
        img_dir = osp.join(root, split)
        os.makedirs(img_dir, exist_ok=True)
        images, annotations, keep = [], [], set()
        for i in range(count):
            image, objects = draw_image(rng, size, max_objects=max_objects)
            name = f'{_PREFIX}{i:06d}.jpg'
            keep.add(name)
            cv2.imwrite(osp.join(img_dir, name), image[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 95])
            images.append(dict(id=i + 1, file_name=name, width=size, height=size))
            for obj in objects:
                x1, y1, x2, y2 = (round(float(v), 2) for v in obj['bbox'])
                annotations.append(dict(
                    id=len(annotations) + 1, image_id=i + 1, category_id=obj['label'] + 1,
                    bbox=[x1, y1, round(x2 - x1, 2), round(y2 - y1, 2)],
                    area=round(_polygon_area(obj['polygon']), 2), iscrowd=0,
                    segmentation=[[round(float(v), 2) for v in obj['polygon'].reshape(-1)]]))
        for path in glob.glob(osp.join(img_dir, _PREFIX + '*.jpg')):
            if osp.basename(path) not in keep:
                os.remove(path)
        info = dict(description=f'resnest_mm synthetic shapes ({split}, seed {seed})')
        with open(osp.join(root, 'annotations', f'instances_{split}.json'), 'w') as f:
            json.dump(dict(info=info, images=images, annotations=annotations,
                           categories=categories), f)
    return root
