# DeepLabV3 on a dilated deep-stem ResNet-50 (ResNetV1c), output stride 8, for ADE20K's 150 classes.
# The leaf configs swap the backbone; the heads stay. SyncBN as in the paper and MMSegmentation;
# tools/train.py falls back to BN in a single (non-distributed) process.
norm_cfg = dict(type='SyncBN', requires_grad=True)
data_preprocessor = dict(
    type='SegDataPreProcessor',
    mean=[123.675, 116.28, 103.53],  # ImageNet statistics in RGB, as the backbones were trained
    std=[58.395, 57.12, 57.375],
    bgr_to_rgb=True,
    pad_val=0,
    seg_pad_val=255,
    size=(512, 512))  # pads a batch of smaller crops to the crop size
model = dict(
    type='EncoderDecoder',
    data_preprocessor=data_preprocessor,
    backbone=dict(
        type='resnest_mm.ResNetV1c',
        depth=50,
        # Output stride 8: stages 3 and 4 keep stride 1 and dilate 2 and 4; the first block of
        # each dilated stage uses half the dilation (contract_dilation), as DeepLabV3 does.
        strides=(1, 2, 1, 1),
        dilations=(1, 1, 2, 4),
        contract_dilation=True,
        out_indices=(0, 1, 2, 3),
        norm_cfg=norm_cfg,
        norm_eval=False,  # BN statistics are trained (16 images per SyncBN batch)
        # ImageNet weights of MMSegmentation's open-mmlab://resnet50_v1c; any layout that
        # resnest_mm.checkpoint understands loads strictly (see configs/README.md).
        init_cfg=dict(type='Pretrained', checkpoint='checkpoints/resnet50_v1c-2cccc1ad.pth')),
    decode_head=dict(
        type='ASPPHead',
        in_channels=2048,
        in_index=3,
        channels=512,
        dilations=(1, 12, 24, 36),
        dropout_ratio=0.1,
        num_classes=150,  # ADE20K
        norm_cfg=norm_cfg,
        align_corners=False,
        loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0)),
    # Auxiliary FCN head on stage 3 (1024 channels); weight 0.4 as MMSegmentation (paper: 0.5).
    auxiliary_head=dict(
        type='FCNHead',
        in_channels=1024,
        in_index=2,
        channels=256,
        num_convs=1,
        concat_input=False,
        dropout_ratio=0.1,
        num_classes=150,  # ADE20K
        norm_cfg=norm_cfg,
        align_corners=False,
        loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=0.4)),
    train_cfg=dict(),
    # 'whole': one pass over the resized image. For sliding-window testing:
    # --cfg-options model.test_cfg.mode=slide model.test_cfg.crop_size="(512,512)"
    #   model.test_cfg.stride="(341,341)"
    test_cfg=dict(mode='whole'))
