# Mask R-CNN, FPN, ResNeXt-101 32x4d: plain stem, MMDetection's ImageNet weights. The paper's
# recipe: SyncBN in backbone, FPN and heads (4conv1fc box head); mask training scales: shorter
# side in {640, 672, ..., 800}, 800 at test; 1x schedule; 16 images per iteration (8 GPUs x 2).
# ImageNet weights: resnext101_32x4d-a5af3160.pth (where to get it: configs/README.md) in
# checkpoints/,
# or elsewhere with
#   --cfg-options model.backbone.init_cfg.checkpoint=PATH
_base_ = [
    '_base_/models/mask_rcnn_fpn_4conv1fc_syncbn.py',
    '_base_/datasets/coco_instance.py',
    '_base_/schedules/schedule_1x.py',
    '_base_/default_runtime.py',
]
model = dict(
    backbone=dict(
        type='resnest_mm.ResNeXt',
        depth=101,
        groups=32,
        base_width=4,
        init_cfg=dict(type='Pretrained',
                      checkpoint='checkpoints/resnext101_32x4d-a5af3160.pth')))
