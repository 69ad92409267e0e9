# DeepLabV3, ResNet-50 (deep stem, V1c) dilated to output stride 8, ADE20K 512x512, 160k
# iterations of 16 images (4 GPUs x 4 images; lr 0.01 for 16 images, scale linearly otherwise).
# The baseline for the ResNeSt configs: MMSegmentation reports 42.66 mIoU (single scale) for it.
#   bash tools/dist_train.sh configs/deeplabv3_resnet50_ade20k.py 4
#   bash tools/dist_test.sh configs/deeplabv3_resnet50_ade20k.py CKPT 4 [--tta]
_base_ = [
    '_base_/models/deeplabv3_r50-d8.py',
    '_base_/datasets/ade20k.py',
    '_base_/default_runtime_seg.py',
    '_base_/schedules/schedule_160k.py',
]
