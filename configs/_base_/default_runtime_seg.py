# Runtime of the segmentation configs: MMSegmentation's scope, resnest_mm's backbones, data sets
# and transforms. (The detection configs use default_runtime.py.)
default_scope = 'mmseg'
custom_imports = dict(imports=['resnest_mm.models', 'resnest_mm.datasets.ade'],
                      allow_failed_imports=False)
env_cfg = dict(
    cudnn_benchmark=True,
    mp_cfg=dict(mp_start_method='fork', opencv_num_threads=0),
    dist_cfg=dict(backend='nccl'))
vis_backends = [dict(type='LocalVisBackend')]
visualizer = dict(type='SegLocalVisualizer', vis_backends=vis_backends, name='visualizer')
log_processor = dict(by_epoch=False)
log_level = 'INFO'
load_from = None
resume = False
# Multi-scale + flip testing wraps the model in this and uses the data set's tta_pipeline
# (tools/test.py --tta).
tta_model = dict(type='SegTTAModel')
