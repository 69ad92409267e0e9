# DeepLabV3, ResNeXt-101 32x4d dilated to output stride 8, ADE20K 512x512, 160k iterations of
# 16 images (4 GPUs x 4). ResNeXt keeps its plain 7x7 stem: that is the network its ImageNet
# weights (MMDetection's open-mmlab://resnext101_32x4d) were trained as.
_base_ = './deeplabv3_resnet50_ade20k.py'
model = dict(
    backbone=dict(
        type='resnest_mm.ResNeXt',
        depth=101,
        groups=32,
        base_width=4,
        init_cfg=dict(type='Pretrained',
                      checkpoint='checkpoints/resnext101_32x4d-a5af3160.pth')))
