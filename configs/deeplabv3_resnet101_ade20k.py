# DeepLabV3, ResNet-101 (deep stem, V1c) dilated to output stride 8, ADE20K 512x512, 160k
# iterations of 16 images (4 GPUs x 4). MMSegmentation reports 45.0 mIoU for this recipe.
_base_ = './deeplabv3_resnet50_ade20k.py'
model = dict(
    backbone=dict(
        depth=101,
        # MMSegmentation's open-mmlab://resnet101_v1c ImageNet weights.
        init_cfg=dict(type='Pretrained', checkpoint='checkpoints/resnet101_v1c-e67eebb6.pth')))
