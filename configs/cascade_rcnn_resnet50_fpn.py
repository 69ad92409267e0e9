# Cascade R-CNN, FPN, ResNet-50 baseline as the paper's detectron2 runs train it: plain 7x7 stem,
# MSRA's ImageNet weights (detectron2's R-50.pkl), which put the stride on the first 1x1 conv
# (style='caffe') and expect BGR images minus the BGR mean, unscaled (std 1). The paper's recipe:
# SyncBN in backbone, FPN and heads (4conv1fc box head); box training scales: shorter side
# 640..800, 800 at test; 1x schedule; 16 images per iteration (8 GPUs x 2). ImageNet weights:
# resnet50_msra-5891d200.pth (where to get it: configs/README.md) in checkpoints/, or elsewhere
# with
#   --cfg-options model.backbone.init_cfg.checkpoint=PATH
_base_ = [
    '_base_/models/cascade_rcnn_fpn_4conv1fc_syncbn.py',
    '_base_/datasets/coco_detection.py',
    '_base_/schedules/schedule_1x.py',
    '_base_/default_runtime.py',
]
model = dict(
    data_preprocessor=dict(
        mean=[103.530, 116.280, 123.675], std=[1.0, 1.0, 1.0], bgr_to_rgb=False),
    backbone=dict(
        type='resnest_mm.ResNet',
        depth=50,
        style='caffe',
        init_cfg=dict(type='Pretrained',
                      checkpoint='checkpoints/resnet50_msra-5891d200.pth')))
