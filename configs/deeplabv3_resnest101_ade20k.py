# DeepLabV3, ResNeSt-101 (the paper's network: deep stem 128, avg-down, radix 2) dilated to output
# stride 8, ADE20K 512x512, 160k iterations of 16 images (4 GPUs x 4).
# Paper (PyTorch-Encoding): 46.91 mIoU; MMSegmentation's S-101 (without the dilated-stage pool):
# 45.71 single scale, 46.59 multi-scale + flip.
_base_ = './deeplabv3_resnet50_ade20k.py'
model = dict(
    backbone=dict(
        type='resnest_mm.ResNeSt',
        depth=101,
        radix=2,
        # Official dilated network (stride-1 average pool in the first block of each dilated
        # stage), which the paper's numbers come from. False = MMSegmentation's ResNeSt: use it
        # to fine-tune MMSegmentation's released ResNeSt DeepLabV3 checkpoints.
        avd_in_dilated_stages=True,
        # The official ImageNet release (hash 22405ba7).
        init_cfg=dict(type='Pretrained', checkpoint='checkpoints/resnest101-22405ba7.pth')))
