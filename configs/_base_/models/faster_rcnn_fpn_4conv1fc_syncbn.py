# Faster R-CNN with FPN, the ResNeSt paper's detection recipe: SyncBN in the backbone, the FPN and
# the box head, whose RoI features go through 4 convs and 1 fc (Shared4Conv1FCBBoxHead). The
# backbone here (plain-stem ResNet-50) is replaced by each config's.
_base_ = 'mmdet::_base_/models/faster-rcnn_r50_fpn.py'
norm_cfg = dict(type='SyncBN', requires_grad=True)
model = dict(
    backbone=dict(
        _delete_=True,
        type='resnest_mm.ResNet',
        depth=50,
        out_indices=(0, 1, 2, 3),
        frozen_stages=1,
        norm_cfg=norm_cfg,
        norm_eval=False,
        style='pytorch'),
    neck=dict(norm_cfg=norm_cfg),
    roi_head=dict(
        bbox_head=dict(
            type='Shared4Conv1FCBBoxHead', conv_out_channels=256, norm_cfg=norm_cfg)))
