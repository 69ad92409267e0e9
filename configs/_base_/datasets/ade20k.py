# ADE20K (SceneParsing, 150 classes) at data/ade/ADEChallengeData2016, MMSegmentation's layout:
#   images/{training,validation}/*.jpg, annotations/{training,validation}/*.png
# Label maps store 0 for "other" and 1..150 for the classes; reduce_zero_label (fixed by the data
# set class) turns them into 255 (ignored) and 0..149. CheckedADE20KDataset fails early, naming the
# path, when a folder or a label map is missing; CheckSegLabels names a label map with ids
# outside 0..149 and 255.
dataset_type = 'resnest_mm.CheckedADE20KDataset'
data_root = 'data/ade/ADEChallengeData2016'
num_classes = 150
crop_size = (512, 512)
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='resnest_mm.CheckSegLabels', num_classes=num_classes),
    # Scale jitter 0.5-2.0 around a 2048x512 box (short side ~512), then a 512x512 crop that
    # no single class fills more than 75% of.
    dict(type='RandomResize', scale=(2048, 512), ratio_range=(0.5, 2.0), keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PhotoMetricDistortion'),
    dict(type='PackSegInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(2048, 512), keep_ratio=True),
    # Annotations are loaded after Resize: the metric compares at the original resolution.
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='resnest_mm.CheckSegLabels', num_classes=num_classes),
    dict(type='PackSegInputs'),
]
# Multi-scale + flip testing (tools/test.py --tta): six scales of the original size, each with
# and without a horizontal flip; SegTTAModel averages the 12 predictions.
img_ratios = [0.5, 0.75, 1.0, 1.25, 1.5, 1.75]
tta_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='TestTimeAug',
         transforms=[
             [dict(type='Resize', scale_factor=r, keep_ratio=True) for r in img_ratios],
             [dict(type='RandomFlip', prob=0., direction='horizontal'),
              dict(type='RandomFlip', prob=1., direction='horizontal')],
             [dict(type='LoadAnnotations', reduce_zero_label=True)],
             [dict(type='resnest_mm.CheckSegLabels', num_classes=num_classes)],
             [dict(type='PackSegInputs')],
         ]),
]
train_dataloader = dict(
    batch_size=4,  # per GPU: 4 GPUs x 4 = 16 images per iteration
    num_workers=4,
    persistent_workers=True,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        data_prefix=dict(img_path='images/training', seg_map_path='annotations/training'),
        pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=1,
    num_workers=4,
    persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        data_prefix=dict(img_path='images/validation', seg_map_path='annotations/validation'),
        pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(type='IoUMetric', iou_metrics=['mIoU'])
test_evaluator = val_evaluator
