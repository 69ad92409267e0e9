# CPU demo: DeepLabV3 on a dilated ResNeSt-14 at 1/8 width (trained from scratch) on the
# synthetic ADE20K-format data set of tools/make_demo_data.py (5 of ADE20K's classes, 128x128).
# Same model family, data set class, label checks and IoUMetric as the ADE20K configs; trains
# in under 2 minutes on 2 CPU cores (600 iterations) and reaches about 90 mIoU (configs/README.md).
#   python tools/make_demo_data.py --kind ade
#   python tools/train.py configs/demo/deeplabv3_resnest14-d8_demo-ade.py
_base_ = [
    '../_base_/models/deeplabv3_r50-d8.py',
    '../_base_/default_runtime_seg.py',
]
norm_cfg = dict(type='BN', requires_grad=True)  # one CPU process
num_classes = 5
crop_size = (64, 64)
model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(
        _delete_=True,
        type='resnest_mm.ResNeSt',
        depth=14,
        base_channels=8,  # an eighth of ResNeSt's width: stage outputs 32, 64, 128, 256
        base_width=8,  # 3x3 width per group at base_channels planes, scaled down with them
        strides=(1, 2, 1, 1),
        dilations=(1, 1, 2, 4),
        contract_dilation=True,
        out_indices=(0, 1, 2, 3),
        norm_cfg=norm_cfg,
        norm_eval=False,
        init_cfg=None),  # from scratch: no ImageNet weights for this width
    decode_head=dict(in_channels=256, channels=32, dilations=(1, 2, 4, 6),
                     num_classes=num_classes, norm_cfg=norm_cfg),
    auxiliary_head=dict(in_channels=128, channels=16, num_classes=num_classes,
                        norm_cfg=norm_cfg),
    # One pass over each 128x128 test image. Sliding windows need their size and step too:
    # --cfg-options model.test_cfg.mode=slide model.test_cfg.crop_size="(64,64)"
    # model.test_cfg.stride="(48,48)"
    test_cfg=dict(mode='whole'))

# Data: ADE20K's layout and conventions (0 = other/ignored, 1..5 = wall, building, sky, floor,
# tree); the metainfo keeps those five of ADE20K's classes.
dataset_type = 'resnest_mm.CheckedADE20KDataset'
data_root = 'data/demo_ade'
metainfo = dict(classes=('wall', 'building', 'sky', 'floor', 'tree'))
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='resnest_mm.CheckSegLabels', num_classes=num_classes),
    dict(type='RandomResize', scale=(128, 128), ratio_range=(0.75, 1.5), keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PhotoMetricDistortion'),
    dict(type='PackSegInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='resnest_mm.CheckSegLabels', num_classes=num_classes),
    dict(type='PackSegInputs'),
]
# tools/test.py --tta: three scales, each with and without a horizontal flip (SegTTAModel from
# the runtime base averages the six predictions).
tta_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='TestTimeAug',
         transforms=[
             [dict(type='Resize', scale_factor=r, keep_ratio=True) for r in (0.75, 1.0, 1.25)],
             [dict(type='RandomFlip', prob=0., direction='horizontal'),
              dict(type='RandomFlip', prob=1., direction='horizontal')],
             [dict(type='LoadAnnotations', reduce_zero_label=True)],
             [dict(type='resnest_mm.CheckSegLabels', num_classes=num_classes)],
             [dict(type='PackSegInputs')],
         ]),
]
train_dataloader = dict(
    batch_size=8,
    num_workers=1,
    persistent_workers=True,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        metainfo=metainfo,
        data_prefix=dict(img_path='images/training', seg_map_path='annotations/training'),
        pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=1,
    num_workers=1,
    persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        metainfo=metainfo,
        data_prefix=dict(img_path='images/validation', seg_map_path='annotations/validation'),
        pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(type='IoUMetric', iou_metrics=['mIoU'])
test_evaluator = val_evaluator

# Schedule: short, and Adam-style so that a from-scratch network gets somewhere in it.
max_iters = 600
optim_wrapper = dict(type='OptimWrapper',
                     optimizer=dict(type='AdamW', lr=3e-3, weight_decay=1e-4))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, begin=0, end=20, by_epoch=False),
    dict(type='PolyLR', eta_min=1e-5, power=0.9, begin=20, end=max_iters, by_epoch=False),
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=max_iters)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
default_hooks = dict(
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=20, log_metric_by_epoch=False),
    param_scheduler=dict(type='ParamSchedulerHook'),
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=max_iters),
    sampler_seed=dict(type='DistSamplerSeedHook'),
    visualization=dict(type='SegVisualizationHook'))
env_cfg = dict(cudnn_benchmark=False)
randomness = dict(seed=0)
