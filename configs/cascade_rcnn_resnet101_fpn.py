# Cascade R-CNN, FPN, ResNet-101 baseline: the ResNet-50 baseline's recipe, input convention and
# style='caffe' (see cascade_rcnn_resnet50_fpn.py) with MSRA's ResNet-101 (detectron2's R-101.pkl).
# ImageNet weights: resnet101_msra-6cc46731.pth (where to get it: configs/README.md) in
# checkpoints/, or elsewhere with
#   --cfg-options model.backbone.init_cfg.checkpoint=PATH
_base_ = './cascade_rcnn_resnet50_fpn.py'
model = dict(
    backbone=dict(
        depth=101,
        init_cfg=dict(type='Pretrained',
                      checkpoint='checkpoints/resnet101_msra-6cc46731.pth')))
