# DeepLabV3, ResNeSt-50 (the paper's network: deep stem 64, avg-down, radix 2) dilated to output
# stride 8, ADE20K 512x512, 160k iterations of 16 images (4 GPUs x 4).
# Paper (PyTorch-Encoding, its own recipe): 45.12 mIoU.
_base_ = './deeplabv3_resnet50_ade20k.py'
model = dict(
    backbone=dict(
        type='resnest_mm.ResNeSt',
        depth=50,
        radix=2,
        # The official dilated ResNeSt keeps a stride-1 3x3 average pool in the first block of
        # each dilated stage; the paper's numbers and the official ImageNet weights come from
        # that network, so it is used here. Set False to fine-tune MMSegmentation's released
        # ResNeSt DeepLabV3 checkpoints, whose ResNeSt drops that pool.
        avd_in_dilated_stages=True,
        # The official ImageNet release (hash 528c19ca); loaded strictly, layout converted.
        init_cfg=dict(type='Pretrained', checkpoint='checkpoints/resnest50-528c19ca.pth')))
