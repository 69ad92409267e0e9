# DeepLabV3, Res2Net-101 26w4s v1b (deep stem, avg-down) dilated to output stride 8, ADE20K
# 512x512, 160k iterations of 16 images (4 GPUs x 4).
_base_ = './deeplabv3_resnet50_ade20k.py'
model = dict(
    backbone=dict(
        type='resnest_mm.Res2Net',
        depth=101,
        scales=4,
        base_width=26,
        # Official Res2Net-v1b: the last split is average-pooled (stride 1) in the first block of
        # every stage that does not downsample, the first and here the two dilated ones. The
        # official ImageNet weights were trained so; False = MMDetection's Res2Net.
        pool_first_stage=True,
        # The official v1b ImageNet release (hash 0812c246).
        init_cfg=dict(type='Pretrained',
                      checkpoint='checkpoints/res2net101_v1b_26w_4s-0812c246.pth')))
