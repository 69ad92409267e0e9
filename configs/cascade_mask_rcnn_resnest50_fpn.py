# Cascade Mask R-CNN, FPN, ResNeSt-50 (radix 2, deep stem, avg-down): the official network and
# weights. The paper's recipe: SyncBN in backbone, FPN and heads (4conv1fc box head); mask
# training scales: shorter side in {640, 672, ..., 800}, 800 at test; 1x schedule; 16 images per
# iteration (8 GPUs x 2). ImageNet weights: resnest50-528c19ca.pth (where to get it:
# configs/README.md) in checkpoints/,
# or elsewhere with
#   --cfg-options model.backbone.init_cfg.checkpoint=PATH
_base_ = [
    '_base_/models/cascade_mask_rcnn_fpn_4conv1fc_syncbn.py',
    '_base_/datasets/coco_instance.py',
    '_base_/schedules/schedule_1x.py',
    '_base_/default_runtime.py',
]
model = dict(
    backbone=dict(
        type='resnest_mm.ResNeSt',
        depth=50,
        init_cfg=dict(type='Pretrained',
                      checkpoint='checkpoints/resnest50-528c19ca.pth')))
